//! The program builder: defines function inputs, constants and operations with their
//! types, and assembles the `Program` message. Large constants go straight to a
//! [`BlobSink`] as they are defined, so building a program streams the weights.

use std::collections::{BTreeMap, HashSet};

use half::f16;

use crate::coreml::blob::{BlobDType, BlobSink};
use crate::coreml::proto::mil as pb;
use crate::coreml::target::Target;

use super::types::{ident, DType, TensorTy, Var};
use super::value;

/// Constants with fewer elements than this are written inline, larger ones to the blob
/// file (as coremltools does).
pub const INLINE_LIMIT: usize = 10;

/// Float constant data: values in memory or little-endian f32 bytes borrowed from a
/// memory-mapped checkpoint (converted while writing, never copied whole).
#[derive(Debug, Clone, Copy)]
pub enum FloatSource<'a> {
    Values(&'a [f32]),
    LeBytes(&'a [u8]),
}

impl FloatSource<'_> {
    pub fn len(&self) -> usize {
        match self {
            FloatSource::Values(v) => v.len(),
            FloatSource::LeBytes(b) => b.len() / 4,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MilError {
    #[error("`{op}` ({kind}): {msg}")]
    Shape {
        op: String,
        kind: &'static str,
        msg: String,
    },
    #[error("`{op}` ({kind}): {msg}")]
    Type {
        op: String,
        kind: &'static str,
        msg: String,
    },
    #[error("`{name}` is defined twice")]
    Duplicate { name: String },
    #[error("`{name}` is used but not defined")]
    Undefined { name: String },
    #[error("`{kind}` needs {needs} or later; this program targets {target}")]
    Target {
        kind: &'static str,
        needs: Target,
        target: Target,
    },
    #[error("writing weights: {0}")]
    Io(#[from] std::io::Error),
}

/// An operation argument.
pub enum Arg<'a> {
    Var(&'a Var),
    /// Several variables (a tuple input such as `concat`'s `values`).
    Vars(Vec<&'a Var>),
    /// A literal bound directly to the parameter.
    Value(pb::Value),
}

/// A finished program with what the report needs.
pub struct BuiltProgram {
    pub program: pb::Program,
    pub op_counts: BTreeMap<String, usize>,
}

pub struct ProgramBuilder<'s> {
    pub(crate) target: Target,
    sink: &'s mut dyn BlobSink,
    inputs: Vec<Var>,
    ops: Vec<pb::Operation>,
    names: HashSet<String>,
    op_counts: BTreeMap<String, usize>,
    scratch: Vec<u8>,
}

impl<'s> ProgramBuilder<'s> {
    pub fn new(target: Target, sink: &'s mut dyn BlobSink) -> Self {
        ProgramBuilder {
            target,
            sink,
            inputs: Vec::new(),
            ops: Vec::new(),
            names: HashSet::new(),
            op_counts: BTreeMap::new(),
            scratch: Vec::new(),
        }
    }

    pub fn target(&self) -> Target {
        self.target
    }

    fn define(&mut self, name: &str) -> Result<(), MilError> {
        if name != ident(name) {
            return Err(MilError::Type {
                op: name.into(),
                kind: "name",
                msg: "not a MIL identifier ([A-Za-z_][A-Za-z0-9_@]*)".into(),
            });
        }
        if !self.names.insert(name.to_string()) {
            return Err(MilError::Duplicate { name: name.into() });
        }
        Ok(())
    }

    pub(crate) fn define_name(&mut self, name: &str) -> Result<(), MilError> {
        self.define(name)
    }

    pub(crate) fn sink_mut(&mut self) -> &mut dyn BlobSink {
        &mut *self.sink
    }

    /// Appends a finished operation (its outputs already defined), counted as `kind`.
    pub(crate) fn push_raw_op(&mut self, op: pb::Operation, kind: &str) {
        self.ops.push(op);
        *self.op_counts.entry(kind.into()).or_default() += 1;
    }

    fn check_defined(&self, v: &Var) -> Result<(), MilError> {
        if self.names.contains(&v.name) {
            Ok(())
        } else {
            Err(MilError::Undefined {
                name: v.name.clone(),
            })
        }
    }

    /// A function input.
    pub fn input(&mut self, name: &str, ty: TensorTy) -> Result<Var, MilError> {
        self.define(name)?;
        let v = Var {
            name: name.into(),
            ty,
        };
        self.inputs.push(v.clone());
        Ok(v)
    }

    fn push_const(&mut self, name: &str, ty: TensorTy, val: pb::Value) -> Result<Var, MilError> {
        self.define(name)?;
        let mut attributes = BTreeMap::new();
        attributes.insert("name".to_string(), value::string(name));
        attributes.insert("val".to_string(), val);
        self.ops.push(pb::Operation {
            r#type: "const".into(),
            inputs: BTreeMap::new(),
            outputs: vec![pb::NamedValueType {
                name: name.into(),
                r#type: Some(ty.to_proto()),
            }],
            blocks: Vec::new(),
            attributes,
        });
        *self.op_counts.entry("const".into()).or_default() += 1;
        Ok(Var {
            name: name.into(),
            ty,
        })
    }

    /// A float constant stored as `dtype` (fp16 or fp32): inline when small, else in
    /// the weight file.
    pub fn const_float(
        &mut self,
        name: &str,
        dtype: DType,
        shape: &[usize],
        src: FloatSource<'_>,
    ) -> Result<Var, MilError> {
        let ty = TensorTy::new(dtype, shape);
        let n = ty.numel();
        if src.len() != n {
            return Err(MilError::Shape {
                op: name.into(),
                kind: "const",
                msg: format!("{} values for shape {shape:?}", src.len()),
            });
        }
        let inline = n < INLINE_LIMIT;
        let val = match dtype {
            DType::F32 => {
                if inline {
                    value::f32s(shape, to_f32_vec(src))
                } else {
                    let offset = match src {
                        FloatSource::LeBytes(b) => self.sink.put(BlobDType::F32, b)?,
                        FloatSource::Values(v) => {
                            self.scratch.clear();
                            self.scratch.reserve(v.len() * 4);
                            for x in v {
                                self.scratch.extend_from_slice(&x.to_le_bytes());
                            }
                            self.sink.put(BlobDType::F32, &self.scratch)?
                        }
                    };
                    value::blob(&ty, offset)
                }
            }
            DType::F16 => {
                let mut bytes = std::mem::take(&mut self.scratch);
                f16_le_bytes(src, &mut bytes);
                let val = if inline {
                    value::f16_bytes(shape, bytes.clone())
                } else {
                    let offset = self.sink.put(BlobDType::F16, &bytes)?;
                    value::blob(&ty, offset)
                };
                self.scratch = bytes;
                val
            }
            other => {
                return Err(MilError::Type {
                    op: name.into(),
                    kind: "const",
                    msg: format!("float data stored as {other}"),
                })
            }
        };
        self.push_const(name, ty, val)
    }

    pub fn const_i32(&mut self, name: &str, shape: &[usize], v: &[i32]) -> Result<Var, MilError> {
        let ty = TensorTy::new(DType::I32, shape);
        if ty.numel() != v.len() {
            return Err(MilError::Shape {
                op: name.into(),
                kind: "const",
                msg: format!("{} values for shape {shape:?}", v.len()),
            });
        }
        // Integer parameters are small; always inline.
        self.push_const(name, ty, value::i32s(shape, v.to_vec()))
    }

    pub fn const_bool(&mut self, name: &str, shape: &[usize], v: &[bool]) -> Result<Var, MilError> {
        let ty = TensorTy::new(DType::Bool, shape);
        if ty.numel() != v.len() {
            return Err(MilError::Shape {
                op: name.into(),
                kind: "const",
                msg: format!("{} values for shape {shape:?}", v.len()),
            });
        }
        self.push_const(name, ty, value::bools(shape, v.to_vec()))
    }

    pub fn const_str(&mut self, name: &str, s: &str) -> Result<Var, MilError> {
        self.push_const(name, TensorTy::scalar(DType::Str), value::string(s))
    }

    /// A 1-D int32 parameter constant named after its op.
    pub(crate) fn param_ints(&mut self, op: &str, param: &str, v: &[i64]) -> Result<Var, MilError> {
        let vals: Vec<i32> = v
            .iter()
            .map(|&x| {
                i32::try_from(x).map_err(|_| MilError::Type {
                    op: op.into(),
                    kind: "const",
                    msg: format!("{param} value {x} does not fit int32"),
                })
            })
            .collect::<Result<_, _>>()?;
        self.const_i32(&format!("{op}_{param}"), &[vals.len()], &vals)
    }

    pub(crate) fn param_int(&mut self, op: &str, param: &str, v: i64) -> Result<Var, MilError> {
        let x = i32::try_from(v).map_err(|_| MilError::Type {
            op: op.into(),
            kind: "const",
            msg: format!("{param} value {v} does not fit int32"),
        })?;
        self.const_i32(&format!("{op}_{param}"), &[], &[x])
    }

    pub(crate) fn param_bool(&mut self, op: &str, param: &str, v: bool) -> Result<Var, MilError> {
        self.const_bool(&format!("{op}_{param}"), &[], &[v])
    }

    pub(crate) fn param_bools(
        &mut self,
        op: &str,
        param: &str,
        v: &[bool],
    ) -> Result<Var, MilError> {
        self.const_bool(&format!("{op}_{param}"), &[v.len()], v)
    }

    pub(crate) fn param_str(&mut self, op: &str, param: &str, v: &str) -> Result<Var, MilError> {
        self.const_str(&format!("{op}_{param}"), v)
    }

    /// A float scalar parameter of the given dtype.
    pub(crate) fn param_float(
        &mut self,
        op: &str,
        param: &str,
        dtype: DType,
        v: f32,
    ) -> Result<Var, MilError> {
        self.const_float(
            &format!("{op}_{param}"),
            dtype,
            &[],
            FloatSource::Values(&[v]),
        )
    }

    /// Appends an operation whose outputs have the given names and types.
    pub(crate) fn push_op(
        &mut self,
        kind: &'static str,
        name: &str,
        inputs: Vec<(&str, Arg<'_>)>,
        outputs: Vec<(String, pb::ValueType)>,
    ) -> Result<(), MilError> {
        let mut map = BTreeMap::new();
        for (param, arg) in inputs {
            let bindings = match arg {
                Arg::Var(v) => {
                    self.check_defined(v)?;
                    vec![name_binding(&v.name)]
                }
                Arg::Vars(vs) => {
                    let mut b = Vec::with_capacity(vs.len());
                    for v in vs {
                        self.check_defined(v)?;
                        b.push(name_binding(&v.name));
                    }
                    b
                }
                Arg::Value(val) => vec![pb::argument::Binding {
                    binding: Some(pb::argument::binding::Binding::Value(val)),
                }],
            };
            map.insert(
                param.to_string(),
                pb::Argument {
                    arguments: bindings,
                },
            );
        }
        for (out, _) in &outputs {
            self.define(out)?;
        }
        let mut attributes = BTreeMap::new();
        attributes.insert("name".to_string(), value::string(name));
        self.ops.push(pb::Operation {
            r#type: kind.into(),
            inputs: map,
            outputs: outputs
                .into_iter()
                .map(|(name, ty)| pb::NamedValueType {
                    name,
                    r#type: Some(ty),
                })
                .collect(),
            blocks: Vec::new(),
            attributes,
        });
        *self.op_counts.entry(kind.into()).or_default() += 1;
        Ok(())
    }

    /// Appends a single-output op whose output variable carries the op's name.
    pub(crate) fn op1(
        &mut self,
        kind: &'static str,
        name: &str,
        inputs: Vec<(&str, Arg<'_>)>,
        out: TensorTy,
    ) -> Result<Var, MilError> {
        self.push_op(kind, name, inputs, vec![(name.to_string(), out.to_proto())])?;
        Ok(Var {
            name: name.into(),
            ty: out,
        })
    }

    /// Assembles the program: one function `main` returning `outputs`.
    pub fn finish(self, outputs: &[&str]) -> Result<BuiltProgram, MilError> {
        for o in outputs {
            if !self.names.contains(*o) {
                return Err(MilError::Undefined {
                    name: o.to_string(),
                });
            }
        }
        let opset = self.target.opset().to_string();
        let block = pb::Block {
            inputs: Vec::new(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            operations: self.ops,
            attributes: BTreeMap::new(),
        };
        let function = pb::Function {
            inputs: self
                .inputs
                .iter()
                .map(|v| pb::NamedValueType {
                    name: v.name.clone(),
                    r#type: Some(v.ty.to_proto()),
                })
                .collect(),
            opset: opset.clone(),
            block_specializations: [(opset, block)].into_iter().collect(),
            attributes: BTreeMap::new(),
        };
        Ok(BuiltProgram {
            program: pb::Program {
                version: 1,
                functions: [("main".to_string(), function)].into_iter().collect(),
                doc_string: String::new(),
                attributes: BTreeMap::new(),
            },
            op_counts: self.op_counts,
        })
    }
}

fn name_binding(name: &str) -> pb::argument::Binding {
    pb::argument::Binding {
        binding: Some(pb::argument::binding::Binding::Name(name.into())),
    }
}

fn to_f32_vec(src: FloatSource<'_>) -> Vec<f32> {
    match src {
        FloatSource::Values(v) => v.to_vec(),
        FloatSource::LeBytes(b) => crate::checkpoint::le_f32(b),
    }
}

/// Converts float data to fp16 little-endian bytes into `out` (cleared first), in
/// blocks so that the hardware conversion in `half` can be used without a second
/// full-size buffer.
pub fn f16_le_bytes(src: FloatSource<'_>, out: &mut Vec<u8>) {
    use half::slice::HalfFloatSliceExt;
    const BLOCK: usize = 4096;
    out.clear();
    out.reserve(src.len() * 2);
    let mut f32buf = [0f32; BLOCK];
    let mut f16buf = [f16::ZERO; BLOCK];
    let mut emit = |vals: &[f32], out: &mut Vec<u8>| {
        let h = &mut f16buf[..vals.len()];
        h.convert_from_f32_slice(vals);
        let start = out.len();
        out.resize(start + 2 * h.len(), 0);
        for (d, x) in out[start..].chunks_exact_mut(2).zip(h.iter()) {
            d.copy_from_slice(&x.to_bits().to_le_bytes());
        }
    };
    match src {
        FloatSource::Values(v) => {
            for chunk in v.chunks(BLOCK) {
                emit(chunk, out);
            }
        }
        FloatSource::LeBytes(b) => {
            for chunk in b.chunks(BLOCK * 4) {
                let n = chunk.len() / 4;
                for (dst, c) in f32buf[..n].iter_mut().zip(chunk.chunks_exact(4)) {
                    *dst = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                emit(&f32buf[..n], out);
            }
        }
    }
}
