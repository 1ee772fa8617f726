//! An interpreter of exactly the MIL we emit, reading a package back from disk: the
//! model spec through our prost types, weights from `weight.bin` by offset with the
//! blob checks Core ML does. Arithmetic is float32; every value the program declares
//! as fp16 is rounded to fp16 after the op that makes it, as Core ML's fp16 storage
//! would.

pub mod constexpr;
mod decode;
mod exec;
pub mod kernels;
pub mod tensor;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;
use serde::Serialize;

use crate::coreml::blob::{BlobError, BlobReader};
use crate::coreml::mil::{DType, TensorTy};
use crate::coreml::package::{PackagePaths, MANIFEST};
use crate::coreml::proto::{mil as pb, spec};
use decode::{decode_value, tensor_ty};
use exec::Exec;
pub use tensor::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum InterpError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Package { path: PathBuf, msg: String },
    #[error("{0}")]
    Blob(#[from] BlobError),
    #[error("malformed program: {0}")]
    Program(String),
    #[error("op `{op}` ({kind}): {msg}")]
    Op {
        op: String,
        kind: String,
        msg: String,
    },
    #[error("op type `{0}` is not one this interpreter runs")]
    UnsupportedOp(String),
    #[error("missing input `{0}`")]
    MissingInput(String),
    #[error("unknown input `{0}`")]
    UnknownInput(String),
    #[error("input `{name}` has shape {got:?}, the model takes {want:?}")]
    InputShape {
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
}

/// An output value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Output {
    Tensor(Tensor),
    /// A `classify` label.
    Label(String),
    /// `classify` probabilities, in class order.
    Probabilities(Vec<(String, f64)>),
}

impl Output {
    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Output::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Val {
    Float { dtype: DType, t: Tensor },
    Int { shape: Vec<usize>, v: Vec<i64> },
    Bool { shape: Vec<usize>, v: Vec<bool> },
    Str(String),
    StrList(Vec<String>),
    Label(String),
    Probs(Vec<(String, f64)>),
}

/// A package opened for running.
pub struct Package {
    pub path: PathBuf,
    pub model: spec::Model,
    weights: Vec<u8>,
    /// The outputs of the program's `constexpr_*` ops (compressed weights), decoded
    /// when the package is opened.
    decoded: HashMap<String, Val>,
}

fn round_f16(t: &mut Tensor) {
    tensor::round_to_f16(&mut t.data);
}

impl Package {
    /// The model spec alone (`Manifest.json`'s root entry), without the weights: what a
    /// caller that only reads the description or metadata needs.
    pub fn read_spec(path: &Path) -> Result<spec::Model, InterpError> {
        let perr = |msg: String| InterpError::Package {
            path: path.to_path_buf(),
            msg,
        };
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| InterpError::Io { path: p, source }
        };
        let man_path = path.join(MANIFEST);
        let man: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&man_path).map_err(io(&man_path))?)
                .map_err(|e| perr(format!("Manifest.json: {e}")))?;
        let root = man["rootModelIdentifier"]
            .as_str()
            .ok_or_else(|| perr("Manifest.json has no rootModelIdentifier".into()))?;
        let rel = man["itemInfoEntries"][root]["path"]
            .as_str()
            .ok_or_else(|| {
                perr(format!(
                    "Manifest.json has no entry for the root model {root}"
                ))
            })?;
        let model_path = path.join("Data").join(rel);
        let bytes = fs::read(&model_path).map_err(io(&model_path))?;
        spec::Model::decode(bytes.as_slice()).map_err(|e| perr(format!("model.mlmodel: {e}")))
    }

    /// Reads `Manifest.json` (root model entry), the model spec and the weight file.
    pub fn open(path: &Path) -> Result<Package, InterpError> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| InterpError::Io { path: p, source }
        };
        let model = Self::read_spec(path)?;
        let wpath = PackagePaths::new(path).weight_file();
        let weights = if wpath.exists() {
            fs::read(&wpath).map_err(io(&wpath))?
        } else {
            Vec::new()
        };
        let mut pkg = Package {
            path: path.to_path_buf(),
            model,
            weights,
            decoded: HashMap::new(),
        };
        if let Ok((_, block)) = pkg.main() {
            pkg.decoded = constexpr::decode(block, &pkg.weights)?;
        }
        Ok(pkg)
    }

    fn main(&self) -> Result<(&pb::Function, &pb::Block), InterpError> {
        let Some(spec::model::Type::MlProgram(p)) = &self.model.r#type else {
            return Err(InterpError::Program("not an ML Program".into()));
        };
        let f = p
            .functions
            .get("main")
            .ok_or_else(|| InterpError::Program("no `main` function".into()))?;
        let b = f
            .block_specializations
            .get(&f.opset)
            .ok_or_else(|| InterpError::Program(format!("no block for opset {}", f.opset)))?;
        Ok((f, b))
    }

    /// Names and types of the program's inputs.
    pub fn inputs(&self) -> Result<Vec<(String, TensorTy)>, InterpError> {
        let (f, _) = self.main()?;
        f.inputs
            .iter()
            .map(|nv| Ok((nv.name.clone(), tensor_ty(nv.r#type.as_ref())?)))
            .collect()
    }

    /// The batch sizes an input accepts, from the description's enumerated shapes
    /// (`None`: only the shape the program declares).
    pub fn batch_sizes(&self, input: &str) -> Option<Vec<usize>> {
        use crate::coreml::proto::spec::array_feature_type::ShapeFlexibility;
        use crate::coreml::proto::spec::feature_type::Type;
        let d = self.model.description.as_ref()?;
        let f = d.input.iter().find(|f| f.name == input)?;
        let Some(Type::MultiArrayType(a)) = f.r#type.as_ref()?.r#type.as_ref() else {
            return None;
        };
        match a.shape_flexibility.as_ref()? {
            ShapeFlexibility::EnumeratedShapes(e) => Some(
                e.shapes
                    .iter()
                    .filter_map(|s| s.shape.first().map(|b| *b as usize))
                    .collect(),
            ),
            _ => None,
        }
    }

    fn accepts_batch(&self, input: &str, shape: &[usize]) -> bool {
        match (self.batch_sizes(input), shape.first()) {
            (Some(sizes), Some(b)) => sizes.contains(b),
            _ => true,
        }
    }

    pub fn output_names(&self) -> Result<Vec<String>, InterpError> {
        Ok(self.main()?.1.outputs.clone())
    }

    /// The class names of the program's `classify` op, in the order of its
    /// probabilities; `None` when the program has no `classify` (not a classifier).
    pub fn class_labels(&self) -> Result<Option<Vec<String>>, InterpError> {
        let (_, block) = self.main()?;
        let Some(op) = block.operations.iter().find(|op| op.r#type == "classify") else {
            return Ok(None);
        };
        let bad = |m: &str| InterpError::Program(format!("`classify`: {m}"));
        let value = op
            .inputs
            .get("classes")
            .and_then(|a| a.arguments.first())
            .and_then(|b| match &b.binding {
                Some(pb::argument::binding::Binding::Value(v)) => Some(v),
                _ => None,
            })
            .ok_or_else(|| bad("`classes` is not a literal"))?;
        match decode_value(value, None)? {
            Val::StrList(c) => Ok(Some(c)),
            _ => Err(bad("`classes` is not a list of strings")),
        }
    }

    /// Runs `main` on the given inputs (image inputs take `[1, 3, H, W]` 0..255 values).
    pub fn run(&self, inputs: &[(&str, Tensor)]) -> Result<BTreeMap<String, Output>, InterpError> {
        let (f, block) = self.main()?;
        let blobs = if self.weights.is_empty() {
            None
        } else {
            Some(BlobReader::new(&self.weights)?)
        };
        for (name, _) in inputs {
            if !f.inputs.iter().any(|i| i.name == *name) {
                return Err(InterpError::UnknownInput(name.to_string()));
            }
        }
        let mut env: HashMap<String, Val> = HashMap::new();
        for nv in &f.inputs {
            let ty = tensor_ty(nv.r#type.as_ref())?;
            let (_, t) = inputs
                .iter()
                .find(|(n, _)| *n == nv.name)
                .ok_or_else(|| InterpError::MissingInput(nv.name.clone()))?;
            if !shape_fits(&t.shape, &ty.shape) || !self.accepts_batch(&nv.name, &t.shape) {
                return Err(InterpError::InputShape {
                    name: nv.name.clone(),
                    got: t.shape.clone(),
                    want: ty.shape,
                });
            }
            let mut t = t.clone();
            if ty.dtype == DType::F16 {
                round_f16(&mut t);
            }
            env.insert(nv.name.clone(), Val::Float { dtype: ty.dtype, t });
        }
        for op in &block.operations {
            if constexpr::is_constexpr(op) {
                for nv in &op.outputs {
                    let v = self.decoded.get(&nv.name).ok_or_else(|| {
                        InterpError::Program(format!("`{}` was not decoded", nv.name))
                    })?;
                    env.insert(nv.name.clone(), v.clone());
                }
                continue;
            }
            let outs = Exec {
                env: &env,
                blobs: blobs.as_ref(),
                op,
            }
            .run()?;
            for (nv, v) in op.outputs.iter().zip(outs) {
                env.insert(nv.name.clone(), v);
            }
        }
        let mut result = BTreeMap::new();
        for name in &block.outputs {
            let v = env
                .remove(name)
                .ok_or_else(|| InterpError::Program(format!("output `{name}` is never defined")))?;
            let out = match v {
                Val::Float { t, .. } => Output::Tensor(t),
                Val::Label(s) => Output::Label(s),
                Val::Probs(p) => Output::Probabilities(p),
                _ => {
                    return Err(InterpError::Program(format!(
                        "output `{name}` is not a tensor or classifier result"
                    )))
                }
            };
            result.insert(name.clone(), out);
        }
        Ok(result)
    }
}

/// Opens a package and runs it once.
pub fn run_package(
    pkg: &Path,
    inputs: &[(&str, Tensor)],
) -> Result<BTreeMap<String, Output>, InterpError> {
    Package::open(pkg)?.run(inputs)
}

/// A dimension of any size in a [`TensorTy`] the interpreter reads (a flexible batch).
pub const ANY: usize = 0;

/// Whether a tensor of `shape` fits the declared `want` (where [`ANY`] fits any size).
pub fn shape_fits(shape: &[usize], want: &[usize]) -> bool {
    shape.len() == want.len() && shape.iter().zip(want).all(|(s, w)| *w == ANY || s == w)
}
