//! One operation of the program run: its parameters read from the environment or
//! decoded from literals, the kernel called, the results checked against the types the
//! program declares.

use std::collections::HashMap;

use super::decode::{decode_value, tensor_ty};
use super::{kernels, round_f16, shape_fits, InterpError, Tensor, Val};
use crate::coreml::blob::BlobReader;
use crate::coreml::mil::DType;
use crate::coreml::proto::mil as pb;

/// One operation being executed.
pub(super) struct Exec<'a> {
    pub(super) env: &'a HashMap<String, Val>,
    pub(super) blobs: Option<&'a BlobReader<'a>>,
    pub(super) op: &'a pb::Operation,
}

impl Exec<'_> {
    fn name(&self) -> String {
        super::decode::op_name(self.op)
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

    pub(super) fn run(&self) -> Result<Vec<Val>, InterpError> {
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
            "add" | "sub" | "mul" | "real_div" => self.arith(kind)?,
            "conv" => self.conv()?,
            "reshape" => {
                let (dt, x) = self.float("x")?;
                (dt, k(kernels::reshape(&x, &self.ints("shape")?))?)
            }
            "transpose" => self.transpose()?,
            "concat" => self.concat()?,
            "layer_norm" => self.layer_norm()?,
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
            "gelu" => self.gelu()?,
            "silu" => {
                let (dt, x) = self.float("x")?;
                (dt, kernels::map(&x, kernels::silu))
            }
            "split" => return self.split(),
            "slice_by_index" => self.slice_by_index()?,
            "reduce_mean" => self.reduce_mean()?,
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

    fn arith(&self, kind: &str) -> Result<(DType, Tensor), InterpError> {
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
        Ok((dx, k2(kernels::binary(&x, &y, f), self)?))
    }

    fn conv(&self) -> Result<(DType, Tensor), InterpError> {
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
        Ok((
            dt,
            k2(kernels::conv2d(&x, &w, b.as_ref(), s, pad, d, g), self)?,
        ))
    }

    fn transpose(&self) -> Result<(DType, Tensor), InterpError> {
        let (dt, x) = self.float("x")?;
        // coremltools' passes write negative (from the end) axes.
        let r = x.rank() as i64;
        let perm = self
            .ints("perm")?
            .into_iter()
            .map(|a| usize::try_from(if a < 0 { a + r } else { a }))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| self.err("`perm` out of range"))?;
        Ok((dt, k2(kernels::transpose(&x, &perm), self)?))
    }

    fn concat(&self) -> Result<(DType, Tensor), InterpError> {
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
        Ok((dt, k2(kernels::concat(&ts, self.int("axis")?), self)?))
    }

    fn layer_norm(&self) -> Result<(DType, Tensor), InterpError> {
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
        Ok((
            dt,
            k2(
                kernels::layer_norm(&x, &axes, g.as_ref(), b.as_ref(), eps),
                self,
            )?,
        ))
    }

    fn gelu(&self) -> Result<(DType, Tensor), InterpError> {
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
        Ok((dt, kernels::map(&x, f)))
    }

    fn split(&self) -> Result<Vec<Val>, InterpError> {
        let (dt, x) = self.float("x")?;
        let a = self.int("axis")?;
        let ax = crate::coreml::mil::types::norm_axis(a, x.rank())
            .ok_or_else(|| self.err("bad axis"))?;
        let sizes = if self.has("split_sizes") {
            self.usizes("split_sizes")?
        } else {
            let n = self.int("num_splits")? as usize;
            if n == 0 || x.shape[ax] % n != 0 {
                return Err(self.err(format!("{} is not divisible into {n} splits", x.shape[ax])));
            }
            vec![x.shape[ax] / n; n]
        };
        let parts = k2(kernels::split(&x, &sizes, a), self)?;
        self.finish_many(parts.into_iter().map(|t| (dt, t)).collect())
    }

    fn slice_by_index(&self) -> Result<(DType, Tensor), InterpError> {
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
        Ok((
            dt,
            k2(kernels::slice_by_index(&x, &b, &e, &s, &bm, &em, &sm), self)?,
        ))
    }

    fn reduce_mean(&self) -> Result<(DType, Tensor), InterpError> {
        let (dt, x) = self.float("x")?;
        let axes = if self.has("axes") {
            self.ints("axes")?
        } else {
            (0..x.rank() as i64).collect()
        };
        let keep = self.has("keep_dims") && self.bool("keep_dims")?;
        Ok((dt, k2(kernels::reduce_mean(&x, &axes, keep), self)?))
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
