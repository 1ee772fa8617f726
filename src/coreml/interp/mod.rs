//! An interpreter of exactly the MIL we emit, reading a package back from disk: the
//! model spec through our prost types, weights from `weight.bin` by offset with the
//! blob checks Core ML does. Arithmetic is float32; every value the program declares
//! as fp16 is rounded to fp16 after the op that makes it, as Core ML's fp16 storage
//! would.

pub mod constexpr;
pub mod kernels;
pub mod tensor;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;
use serde::Serialize;

use crate::coreml::blob::{BlobDType, BlobError, BlobReader};
use crate::coreml::mil::{DType, TensorTy};
use crate::coreml::package::{PackagePaths, MANIFEST};
use crate::coreml::proto::{mil as pb, spec};
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

fn tensor_ty(vt: Option<&pb::ValueType>) -> Result<TensorTy, InterpError> {
    let Some(pb::ValueType {
        r#type: Some(pb::value_type::Type::TensorType(t)),
    }) = vt
    else {
        return Err(InterpError::Program("expected a tensor type".into()));
    };
    let dtype = DType::from_proto(t.data_type)
        .ok_or_else(|| InterpError::Program(format!("unsupported data type {}", t.data_type)))?;
    if t.rank != t.dimensions.len() as i64 {
        return Err(InterpError::Program(
            "tensor rank does not match its dimensions".into(),
        ));
    }
    let shape = t
        .dimensions
        .iter()
        .map(|d| match &d.dimension {
            Some(pb::dimension::Dimension::Constant(c)) => Ok(c.size as usize),
            // A flexible batch (see `mil::batch`): any size, written 0 here.
            Some(pb::dimension::Dimension::Unknown(u)) if !u.variadic => Ok(ANY),
            _ => Err(InterpError::Program(
                "variadic dimensions are not supported".into(),
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(TensorTy { dtype, shape })
}

fn decode_value(v: &pb::Value, blobs: Option<&BlobReader<'_>>) -> Result<Val, InterpError> {
    use pb::tensor_value::Value as TV;
    use pb::value::immediate_value::Value as IV;
    let bad = |m: &str| InterpError::Program(m.to_string());
    // A list of string scalars: `classify`'s classes.
    if let Some(pb::ValueType {
        r#type: Some(pb::value_type::Type::ListType(_)),
    }) = &v.r#type
    {
        let Some(pb::value::Value::ImmediateValue(pb::value::ImmediateValue {
            value: Some(IV::List(l)),
        })) = &v.value
        else {
            return Err(bad("list value without list data"));
        };
        let items = l
            .values
            .iter()
            .map(|x| match decode_value(x, blobs)? {
                Val::Str(s) => Ok(s),
                _ => Err(bad("only lists of strings are supported")),
            })
            .collect::<Result<_, _>>()?;
        return Ok(Val::StrList(items));
    }
    let ty = tensor_ty(v.r#type.as_ref())?;
    let n = ty.numel();
    let float = |data: Vec<f32>| -> Result<Val, InterpError> {
        if data.len() != n {
            return Err(bad("value does not fill its declared shape"));
        }
        Ok(Val::Float {
            dtype: ty.dtype,
            t: Tensor {
                shape: ty.shape.clone(),
                data,
            },
        })
    };
    match &v.value {
        Some(pb::value::Value::ImmediateValue(pb::value::ImmediateValue {
            value: Some(IV::Tensor(pb::TensorValue { value: Some(tv) })),
        })) => match (ty.dtype, tv) {
            (DType::F32, TV::Floats(f)) => float(f.values.clone()),
            (DType::F16, TV::Bytes(b)) => float(f16_from_le(&b.values)),
            (DType::I32, TV::Ints(i)) if i.values.len() == n => Ok(Val::Int {
                shape: ty.shape,
                v: i.values.iter().map(|&x| x as i64).collect(),
            }),
            (DType::I64, TV::LongInts(i)) if i.values.len() == n => Ok(Val::Int {
                shape: ty.shape,
                v: i.values.clone(),
            }),
            (DType::Bool, TV::Bools(b)) if b.values.len() == n => Ok(Val::Bool {
                shape: ty.shape,
                v: b.values.clone(),
            }),
            (DType::Str, TV::Strings(s)) if s.values.len() == 1 && n == 1 => {
                Ok(Val::Str(s.values[0].clone()))
            }
            (d, _) => Err(InterpError::Program(format!(
                "immediate value of type {d} in the wrong field or size"
            ))),
        },
        Some(pb::value::Value::BlobFileValue(bf)) => {
            let blobs =
                blobs.ok_or_else(|| bad("blob value but the package has no weight file"))?;
            if bf.file_name != crate::coreml::blob::WEIGHT_FILE_REF {
                return Err(InterpError::Program(format!(
                    "blob file {} is not ours",
                    bf.file_name
                )));
            }
            let (bd, size) = match ty.dtype {
                DType::F16 => (BlobDType::F16, 2),
                DType::F32 => (BlobDType::F32, 4),
                d => return Err(InterpError::Program(format!("blob of type {d}"))),
            };
            let bytes = blobs.read(bf.offset, bd, (n * size) as u64)?;
            match bd {
                BlobDType::F16 => float(f16_from_le(bytes)),
                _ => float(crate::checkpoint::le_f32(bytes)),
            }
        }
        _ => Err(bad("value without data")),
    }
}

fn f16_from_le(b: &[u8]) -> Vec<f32> {
    tensor::f16_le_to_f32(b)
}

/// One operation being executed.
struct Exec<'a> {
    env: &'a HashMap<String, Val>,
    blobs: Option<&'a BlobReader<'a>>,
    op: &'a pb::Operation,
}

impl Exec<'_> {
    fn name(&self) -> String {
        match self
            .op
            .attributes
            .get("name")
            .map(|v| decode_value(v, None))
        {
            Some(Ok(Val::Str(s))) => s,
            _ => self
                .op
                .outputs
                .first()
                .map(|o| o.name.clone())
                .unwrap_or_default(),
        }
    }

    fn err(&self, msg: impl Into<String>) -> InterpError {
        InterpError::Op {
            op: self.name(),
            kind: self.op.r#type.clone(),
            msg: msg.into(),
        }
    }

    /// Every value bound to a parameter (literals decoded).
    fn all(&self, param: &str) -> Result<Vec<std::borrow::Cow<'_, Val>>, InterpError> {
        let arg = self
            .op
            .inputs
            .get(param)
            .ok_or_else(|| self.err(format!("missing parameter `{param}`")))?;
        arg.arguments
            .iter()
            .map(|b| match &b.binding {
                Some(pb::argument::binding::Binding::Name(n)) => self
                    .env
                    .get(n)
                    .map(std::borrow::Cow::Borrowed)
                    .ok_or_else(|| self.err(format!("`{n}` is not defined"))),
                Some(pb::argument::binding::Binding::Value(v)) => {
                    decode_value(v, self.blobs).map(std::borrow::Cow::Owned)
                }
                None => Err(self.err(format!("empty binding for `{param}`"))),
            })
            .collect()
    }

    fn one(&self, param: &str) -> Result<std::borrow::Cow<'_, Val>, InterpError> {
        let mut v = self.all(param)?;
        if v.len() != 1 {
            return Err(self.err(format!("`{param}` takes one value, got {}", v.len())));
        }
        Ok(v.remove(0))
    }

    fn has(&self, param: &str) -> bool {
        self.op.inputs.contains_key(param)
    }

    fn float(&self, param: &str) -> Result<(DType, Tensor), InterpError> {
        match &*self.one(param)? {
            Val::Float { dtype, t } => Ok((*dtype, t.clone())),
            _ => Err(self.err(format!("`{param}` is not a float tensor"))),
        }
    }

    fn opt_float(&self, param: &str) -> Result<Option<Tensor>, InterpError> {
        if self.has(param) {
            Ok(Some(self.float(param)?.1))
        } else {
            Ok(None)
        }
    }

    fn ints(&self, param: &str) -> Result<Vec<i64>, InterpError> {
        match &*self.one(param)? {
            Val::Int { v, .. } => Ok(v.clone()),
            _ => Err(self.err(format!("`{param}` is not an integer tensor"))),
        }
    }

    fn int(&self, param: &str) -> Result<i64, InterpError> {
        match &*self.one(param)? {
            Val::Int { v, shape } if shape.is_empty() => Ok(v[0]),
            _ => Err(self.err(format!("`{param}` is not an integer scalar"))),
        }
    }

    fn bools(&self, param: &str) -> Result<Vec<bool>, InterpError> {
        match &*self.one(param)? {
            Val::Bool { v, .. } => Ok(v.clone()),
            _ => Err(self.err(format!("`{param}` is not a bool tensor"))),
        }
    }

    fn bool(&self, param: &str) -> Result<bool, InterpError> {
        match &*self.one(param)? {
            Val::Bool { v, shape } if shape.is_empty() => Ok(v[0]),
            _ => Err(self.err(format!("`{param}` is not a bool scalar"))),
        }
    }

    fn string(&self, param: &str) -> Result<String, InterpError> {
        match &*self.one(param)? {
            Val::Str(s) => Ok(s.clone()),
            _ => Err(self.err(format!("`{param}` is not a string"))),
        }
    }

    fn scalar_f(&self, param: &str) -> Result<f32, InterpError> {
        let (_, t) = self.float(param)?;
        if t.numel() != 1 {
            return Err(self.err(format!("`{param}` is not a scalar")));
        }
        Ok(t.data[0])
    }

    fn usizes(&self, param: &str) -> Result<Vec<usize>, InterpError> {
        self.ints(param)?
            .into_iter()
            .map(|v| usize::try_from(v).map_err(|_| self.err(format!("negative `{param}`"))))
            .collect()
    }

    fn run(&self) -> Result<Vec<Val>, InterpError> {
        let kind = self.op.r#type.as_str();
        if kind == "const" {
            let v = self
                .op
                .attributes
                .get("val")
                .ok_or_else(|| self.err("const without `val`"))?;
            return Ok(vec![decode_value(v, self.blobs)?]);
        }
        let k = |r: Result<Tensor, String>| r.map_err(|m| self.err(m));
        // (natural dtype of the result, value) for single-output float ops.
        let (dtype, t) = match kind {
            "add" | "sub" | "mul" | "real_div" => {
                let (dx, x) = self.float("x")?;
                let (dy, y) = self.float("y")?;
                if dx != dy {
                    return Err(self.err(format!("x is {dx}, y is {dy}")));
                }
                let f: fn(f32, f32) -> f32 = match kind {
                    "add" => |a, b| a + b,
                    "sub" => |a, b| a - b,
                    "mul" => |a, b| a * b,
                    _ => |a, b| a / b,
                };
                (dx, k(kernels::binary(&x, &y, f))?)
            }
            "conv" => {
                let (dt, x) = self.float("x")?;
                let (_, w) = self.float("weight")?;
                let b = self.opt_float("bias")?;
                let s = self.usizes("strides")?;
                let d = self.usizes("dilations")?;
                let pad = match self.string("pad_type")?.as_str() {
                    "valid" => [0; 4],
                    "custom" => {
                        let p = self.usizes("pad")?;
                        p.try_into()
                            .map_err(|_| self.err("pad must have 4 values"))?
                    }
                    other => return Err(self.err(format!("pad_type `{other}` is not supported"))),
                };
                let (Ok(s), Ok(d)) = (<[usize; 2]>::try_from(s), <[usize; 2]>::try_from(d)) else {
                    return Err(self.err("strides and dilations need 2 values"));
                };
                let g = self.int("groups")? as usize;
                (dt, k(kernels::conv2d(&x, &w, b.as_ref(), s, pad, d, g))?)
            }
            "reshape" => {
                let (dt, x) = self.float("x")?;
                (dt, k(kernels::reshape(&x, &self.ints("shape")?))?)
            }
            "transpose" => {
                let (dt, x) = self.float("x")?;
                // coremltools' passes write negative (from the end) axes.
                let r = x.rank() as i64;
                let perm = self
                    .ints("perm")?
                    .into_iter()
                    .map(|a| usize::try_from(if a < 0 { a + r } else { a }))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| self.err("`perm` out of range"))?;
                (dt, k(kernels::transpose(&x, &perm))?)
            }
            "concat" => {
                if self.has("interleave") && self.bool("interleave")? {
                    return Err(self.err("interleave is not supported"));
                }
                let vals = self.all("values")?;
                let mut ts = Vec::new();
                let mut dt = None;
                for v in &vals {
                    match &**v {
                        Val::Float { dtype, t } => {
                            if dt.is_some_and(|d| d != *dtype) {
                                return Err(self.err("values of mixed types"));
                            }
                            dt = Some(*dtype);
                            ts.push(t);
                        }
                        _ => return Err(self.err("values must be float tensors")),
                    }
                }
                let dt = dt.ok_or_else(|| self.err("no values"))?;
                (dt, k(kernels::concat(&ts, self.int("axis")?))?)
            }
            "layer_norm" => {
                let (dt, x) = self.float("x")?;
                let axes = if self.has("axes") {
                    self.ints("axes")?
                } else {
                    (0..x.rank() as i64).collect()
                };
                let eps = if self.has("epsilon") {
                    self.scalar_f("epsilon")?
                } else {
                    1e-5
                };
                let g = self.opt_float("gamma")?;
                let b = self.opt_float("beta")?;
                (
                    dt,
                    k(kernels::layer_norm(&x, &axes, g.as_ref(), b.as_ref(), eps))?,
                )
            }
            "linear" => {
                let (dt, x) = self.float("x")?;
                let (_, w) = self.float("weight")?;
                let b = self.opt_float("bias")?;
                (dt, k(kernels::linear(&x, &w, b.as_ref()))?)
            }
            "matmul" => {
                let (dt, x) = self.float("x")?;
                let (_, y) = self.float("y")?;
                let tx = self.has("transpose_x") && self.bool("transpose_x")?;
                let ty = self.has("transpose_y") && self.bool("transpose_y")?;
                (dt, k(kernels::matmul(&x, &y, tx, ty))?)
            }
            "softmax" => {
                let (dt, x) = self.float("x")?;
                let a = if self.has("axis") {
                    self.int("axis")?
                } else {
                    -1
                };
                (dt, k(kernels::softmax(&x, a))?)
            }
            "gelu" => {
                let (dt, x) = self.float("x")?;
                let mode = if self.has("mode") {
                    self.string("mode")?
                } else {
                    "EXACT".into()
                };
                let f = match mode.as_str() {
                    "EXACT" => kernels::gelu_exact,
                    "TANH_APPROXIMATION" => kernels::gelu_tanh,
                    m => return Err(self.err(format!("gelu mode `{m}` is not supported"))),
                };
                (dt, kernels::map(&x, f))
            }
            "silu" => {
                let (dt, x) = self.float("x")?;
                (dt, kernels::map(&x, kernels::silu))
            }
            "split" => {
                let (dt, x) = self.float("x")?;
                let a = self.int("axis")?;
                let ax = crate::coreml::mil::types::norm_axis(a, x.rank())
                    .ok_or_else(|| self.err("bad axis"))?;
                let sizes = if self.has("split_sizes") {
                    self.usizes("split_sizes")?
                } else {
                    let n = self.int("num_splits")? as usize;
                    if n == 0 || x.shape[ax] % n != 0 {
                        return Err(
                            self.err(format!("{} is not divisible into {n} splits", x.shape[ax]))
                        );
                    }
                    vec![x.shape[ax] / n; n]
                };
                let parts = k2(kernels::split(&x, &sizes, a), self)?;
                return self.finish_many(parts.into_iter().map(|t| (dt, t)).collect());
            }
            "slice_by_index" => {
                let (dt, x) = self.float("x")?;
                let r = x.rank();
                let b = self.ints("begin")?;
                let e = self.ints("end")?;
                let s = if self.has("stride") {
                    self.ints("stride")?
                } else {
                    vec![1; r]
                };
                let bm = if self.has("begin_mask") {
                    self.bools("begin_mask")?
                } else {
                    vec![false; r]
                };
                let em = if self.has("end_mask") {
                    self.bools("end_mask")?
                } else {
                    vec![false; r]
                };
                let sm = if self.has("squeeze_mask") {
                    self.bools("squeeze_mask")?
                } else {
                    vec![false; r]
                };
                (
                    dt,
                    k(kernels::slice_by_index(&x, &b, &e, &s, &bm, &em, &sm))?,
                )
            }
            "reduce_mean" => {
                let (dt, x) = self.float("x")?;
                let axes = if self.has("axes") {
                    self.ints("axes")?
                } else {
                    (0..x.rank() as i64).collect()
                };
                let keep = self.has("keep_dims") && self.bool("keep_dims")?;
                (dt, k(kernels::reduce_mean(&x, &axes, keep))?)
            }
            "cast" => {
                let (_, x) = self.float("x")?;
                let to = self.string("dtype")?;
                let dt = DType::from_cast_name(&to)
                    .filter(|d| d.is_float())
                    .ok_or_else(|| self.err(format!("cast to `{to}` is not supported")))?;
                (dt, x)
            }
            "scaled_dot_product_attention" => {
                let (dt, q) = self.float("query")?;
                let (_, kk) = self.float("key")?;
                let (_, v) = self.float("value")?;
                let m = self.opt_float("attn_mask")?;
                (dt, k(kernels::sdpa(&q, &kk, &v, m.as_ref()))?)
            }
            "classify" => return self.classify(),
            other => return Err(InterpError::UnsupportedOp(other.to_string())),
        };
        self.finish_many(vec![(dtype, t)])
    }

    /// Checks results against the declared output types and applies fp16 storage.
    fn finish_many(&self, vals: Vec<(DType, Tensor)>) -> Result<Vec<Val>, InterpError> {
        if vals.len() != self.op.outputs.len() {
            return Err(self.err(format!(
                "{} results for {} declared outputs",
                vals.len(),
                self.op.outputs.len()
            )));
        }
        let mut out = Vec::with_capacity(vals.len());
        for ((dtype, mut t), nv) in vals.into_iter().zip(&self.op.outputs) {
            let ty = tensor_ty(nv.r#type.as_ref())?;
            if ty.dtype != dtype || !shape_fits(&t.shape, &ty.shape) {
                return Err(self.err(format!(
                    "output `{}` is declared {ty}, computed {dtype}{:?}",
                    nv.name, t.shape
                )));
            }
            if dtype == DType::F16 {
                round_f16(&mut t);
            }
            out.push(Val::Float { dtype, t });
        }
        Ok(out)
    }

    fn classify(&self) -> Result<Vec<Val>, InterpError> {
        let (dt, p) = self.float("probabilities")?;
        if dt != DType::F32 {
            return Err(self.err("probabilities must be fp32"));
        }
        let classes = match &*self.one("classes")? {
            Val::StrList(c) => c.clone(),
            _ => return Err(self.err("classes must be a list of strings")),
        };
        if classes.len() != p.numel() || classes.is_empty() || self.op.outputs.len() != 2 {
            return Err(self.err(format!(
                "{} classes for {} probabilities",
                classes.len(),
                p.numel()
            )));
        }
        // First maximum wins, as an argmax does.
        let best = p
            .data
            .iter()
            .enumerate()
            .fold(0, |bi, (i, &v)| if v > p.data[bi] { i } else { bi });
        let probs = classes
            .iter()
            .cloned()
            .zip(p.data.iter().map(|&v| v as f64))
            .collect();
        Ok(vec![Val::Label(classes[best].clone()), Val::Probs(probs)])
    }
}

fn k2<T>(r: Result<T, String>, e: &Exec<'_>) -> Result<T, InterpError> {
    r.map_err(|m| e.err(m))
}
