//! Typed constructors for the MIL operations we emit. Each checks its operands'
//! shapes and element types, infers the output type, and writes every optional
//! parameter explicitly as a const operand (Core ML's validator is not available off
//! a Mac, so nothing is left to defaults).

use super::builder::{Arg, MilError, ProgramBuilder};
use super::types::{broadcast, norm_axis, DType, TensorTy, Var};
use super::value;
use crate::coreml::target::Target;

fn shape_err(op: &str, kind: &'static str, msg: String) -> MilError {
    MilError::Shape {
        op: op.into(),
        kind,
        msg,
    }
}

fn type_err(op: &str, kind: &'static str, msg: String) -> MilError {
    MilError::Type {
        op: op.into(),
        kind,
        msg,
    }
}

/// All operands float and of one dtype (iOS15 type domains tie them together).
fn same_float(op: &str, kind: &'static str, vars: &[&Var]) -> Result<DType, MilError> {
    let d = vars[0].dtype();
    if !d.is_float() || d == DType::F64 {
        return Err(type_err(
            op,
            kind,
            format!("`{}` is {d}, expected fp16 or fp32", vars[0].name),
        ));
    }
    for v in &vars[1..] {
        if v.dtype() != d {
            return Err(type_err(
                op,
                kind,
                format!("`{}` is {}, `{}` is {d}", v.name, v.dtype(), vars[0].name),
            ));
        }
    }
    Ok(d)
}

fn axis(op: &str, kind: &'static str, a: i64, rank: usize) -> Result<usize, MilError> {
    norm_axis(a, rank)
        .ok_or_else(|| shape_err(op, kind, format!("axis {a} out of range for rank {rank}")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    RealDiv,
}

impl BinaryOp {
    pub fn kind(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::RealDiv => "real_div",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeluMode {
    Exact,
    Tanh,
}

/// Padding of a 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvPad {
    Valid,
    /// Explicit `[top, bottom, left, right]`.
    Custom([usize; 4]),
}

impl ProgramBuilder<'_> {
    /// 2-D convolution, NCHW input, weight `[O, I/groups, kh, kw]`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &mut self,
        name: &str,
        x: &Var,
        weight: &Var,
        bias: &Var,
        strides: [usize; 2],
        pad: ConvPad,
        dilations: [usize; 2],
        groups: usize,
    ) -> Result<Var, MilError> {
        const K: &str = "conv";
        let dt = same_float(name, K, &[x, weight, bias])?;
        let (xs, ws) = (x.shape(), weight.shape());
        if xs.len() != 4 || ws.len() != 4 {
            return Err(shape_err(
                name,
                K,
                format!("x {xs:?} and weight {ws:?} must be rank 4"),
            ));
        }
        if groups == 0 || xs[1] % groups != 0 || ws[0] % groups != 0 || ws[1] * groups != xs[1] {
            return Err(shape_err(
                name,
                K,
                format!("x has {} channels, weight {ws:?}, groups {groups}", xs[1]),
            ));
        }
        if bias.shape() != [ws[0]] {
            return Err(shape_err(
                name,
                K,
                format!("bias {:?} for {} outputs", bias.shape(), ws[0]),
            ));
        }
        if strides.contains(&0) || dilations.contains(&0) {
            return Err(shape_err(
                name,
                K,
                "strides and dilations must be positive".into(),
            ));
        }
        let p = match pad {
            ConvPad::Valid => [0; 4],
            ConvPad::Custom(p) => p,
        };
        let mut out = vec![xs[0], ws[0], 0, 0];
        for i in 0..2 {
            let extent = xs[2 + i] + p[2 * i] + p[2 * i + 1];
            let k = dilations[i] * (ws[2 + i] - 1) + 1;
            if ws[2 + i] == 0 || extent < k {
                return Err(shape_err(
                    name,
                    K,
                    format!("kernel {ws:?} larger than input {xs:?}"),
                ));
            }
            out[2 + i] = (extent - k) / strides[i] + 1;
        }
        let s = self.param_ints(name, "strides", &[strides[0] as i64, strides[1] as i64])?;
        let pt = self.param_str(
            name,
            "pad_type",
            match pad {
                ConvPad::Valid => "valid",
                ConvPad::Custom(_) => "custom",
            },
        )?;
        let pv = self.param_ints(name, "pad", &p.map(|v| v as i64))?;
        let d = self.param_ints(
            name,
            "dilations",
            &[dilations[0] as i64, dilations[1] as i64],
        )?;
        let g = self.param_int(name, "groups", groups as i64)?;
        self.op1(
            K,
            name,
            vec![
                ("x", Arg::Var(x)),
                ("weight", Arg::Var(weight)),
                ("bias", Arg::Var(bias)),
                ("strides", Arg::Var(&s)),
                ("pad_type", Arg::Var(&pt)),
                ("pad", Arg::Var(&pv)),
                ("dilations", Arg::Var(&d)),
                ("groups", Arg::Var(&g)),
            ],
            TensorTy::new(dt, out),
        )
    }

    pub fn reshape(&mut self, name: &str, x: &Var, shape: &[usize]) -> Result<Var, MilError> {
        if shape.iter().product::<usize>() != x.ty.numel() {
            return Err(shape_err(
                name,
                "reshape",
                format!("{:?} cannot be reshaped to {shape:?}", x.shape()),
            ));
        }
        let s = self.param_ints(
            name,
            "shape",
            &shape.iter().map(|&v| v as i64).collect::<Vec<_>>(),
        )?;
        self.op1(
            "reshape",
            name,
            vec![("x", Arg::Var(x)), ("shape", Arg::Var(&s))],
            TensorTy::new(x.dtype(), shape),
        )
    }

    pub fn transpose(&mut self, name: &str, x: &Var, perm: &[usize]) -> Result<Var, MilError> {
        let mut seen = vec![false; x.rank()];
        if perm.len() != x.rank()
            || perm
                .iter()
                .any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true))
        {
            return Err(shape_err(
                name,
                "transpose",
                format!("{perm:?} is not a permutation of rank {}", x.rank()),
            ));
        }
        let out: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
        let p = self.param_ints(
            name,
            "perm",
            &perm.iter().map(|&v| v as i64).collect::<Vec<_>>(),
        )?;
        self.op1(
            "transpose",
            name,
            vec![("x", Arg::Var(x)), ("perm", Arg::Var(&p))],
            TensorTy::new(x.dtype(), out),
        )
    }

    pub fn concat(&mut self, name: &str, values: &[&Var], ax: i64) -> Result<Var, MilError> {
        const K: &str = "concat";
        let first = values
            .first()
            .ok_or_else(|| shape_err(name, K, "no values".into()))?;
        let dt = same_float(name, K, values)?;
        let a = axis(name, K, ax, first.rank())?;
        let mut out = first.shape().to_vec();
        out[a] = 0;
        for v in values {
            let ok = v.rank() == first.rank()
                && (0..v.rank()).all(|i| i == a || v.shape()[i] == first.shape()[i]);
            if !ok {
                return Err(shape_err(
                    name,
                    K,
                    format!(
                        "{:?} does not match {:?} outside axis {ax}",
                        v.shape(),
                        first.shape()
                    ),
                ));
            }
            out[a] += v.shape()[a];
        }
        let axv = self.param_int(name, "axis", ax)?;
        let il = self.param_bool(name, "interleave", false)?;
        self.op1(
            K,
            name,
            vec![
                ("values", Arg::Vars(values.to_vec())),
                ("axis", Arg::Var(&axv)),
                ("interleave", Arg::Var(&il)),
            ],
            TensorTy::new(dt, out),
        )
    }

    /// Elementwise binary op with numpy broadcasting.
    pub fn binary(&mut self, op: BinaryOp, name: &str, x: &Var, y: &Var) -> Result<Var, MilError> {
        let dt = same_float(name, op.kind(), &[x, y])?;
        let out = broadcast(x.shape(), y.shape()).ok_or_else(|| {
            shape_err(
                name,
                op.kind(),
                format!("{:?} and {:?} do not broadcast", x.shape(), y.shape()),
            )
        })?;
        self.op1(
            op.kind(),
            name,
            vec![("x", Arg::Var(x)), ("y", Arg::Var(y))],
            TensorTy::new(dt, out),
        )
    }

    pub fn add(&mut self, name: &str, x: &Var, y: &Var) -> Result<Var, MilError> {
        self.binary(BinaryOp::Add, name, x, y)
    }

    pub fn mul(&mut self, name: &str, x: &Var, y: &Var) -> Result<Var, MilError> {
        self.binary(BinaryOp::Mul, name, x, y)
    }

    /// Layer normalisation over the trailing `axes` (gamma and beta shaped like them).
    pub fn layer_norm(
        &mut self,
        name: &str,
        x: &Var,
        axes: &[i64],
        gamma: &Var,
        beta: &Var,
        epsilon: f32,
    ) -> Result<Var, MilError> {
        const K: &str = "layer_norm";
        let dt = same_float(name, K, &[x, gamma, beta])?;
        let mut norm_shape = Vec::new();
        for &a in axes {
            norm_shape.push(x.shape()[axis(name, K, a, x.rank())?]);
        }
        if gamma.shape() != norm_shape || beta.shape() != norm_shape {
            return Err(shape_err(
                name,
                K,
                format!(
                    "gamma {:?} / beta {:?} must be {norm_shape:?}",
                    gamma.shape(),
                    beta.shape()
                ),
            ));
        }
        let ax = self.param_ints(name, "axes", axes)?;
        let eps = self.param_float(name, "epsilon", dt, epsilon)?;
        self.op1(
            K,
            name,
            vec![
                ("x", Arg::Var(x)),
                ("axes", Arg::Var(&ax)),
                ("gamma", Arg::Var(gamma)),
                ("beta", Arg::Var(beta)),
                ("epsilon", Arg::Var(&eps)),
            ],
            x.ty.clone(),
        )
    }

    /// `x @ weight.T + bias`, weight `[out, in]`.
    pub fn linear(
        &mut self,
        name: &str,
        x: &Var,
        weight: &Var,
        bias: &Var,
    ) -> Result<Var, MilError> {
        const K: &str = "linear";
        let dt = same_float(name, K, &[x, weight, bias])?;
        let ws = weight.shape();
        if ws.len() != 2
            || x.rank() == 0
            || x.shape()[x.rank() - 1] != ws[1]
            || bias.shape() != [ws[0]]
        {
            return Err(shape_err(
                name,
                K,
                format!("x {:?}, weight {ws:?}, bias {:?}", x.shape(), bias.shape()),
            ));
        }
        let mut out = x.shape().to_vec();
        *out.last_mut().expect("rank checked") = ws[0];
        self.op1(
            K,
            name,
            vec![
                ("x", Arg::Var(x)),
                ("weight", Arg::Var(weight)),
                ("bias", Arg::Var(bias)),
            ],
            TensorTy::new(dt, out),
        )
    }

    /// Batched matrix product over the last two axes (batch axes broadcast).
    pub fn matmul(
        &mut self,
        name: &str,
        x: &Var,
        y: &Var,
        transpose_x: bool,
        transpose_y: bool,
    ) -> Result<Var, MilError> {
        const K: &str = "matmul";
        let dt = same_float(name, K, &[x, y])?;
        let (xs, ys) = (x.shape(), y.shape());
        if xs.len() < 2 || ys.len() < 2 {
            return Err(shape_err(name, K, format!("{xs:?} @ {ys:?}: rank below 2")));
        }
        let (xr, xc) = (xs[xs.len() - 2], xs[xs.len() - 1]);
        let (yr, yc) = (ys[ys.len() - 2], ys[ys.len() - 1]);
        let (m, kx) = if transpose_x { (xc, xr) } else { (xr, xc) };
        let (ky, n) = if transpose_y { (yc, yr) } else { (yr, yc) };
        let batch = broadcast(&xs[..xs.len() - 2], &ys[..ys.len() - 2]);
        let (Some(mut out), true) = (batch, kx == ky) else {
            return Err(shape_err(
                name,
                K,
                format!("{xs:?} (transposed: {transpose_x}) @ {ys:?} (transposed: {transpose_y})"),
            ));
        };
        out.extend([m, n]);
        let tx = self.param_bool(name, "transpose_x", transpose_x)?;
        let ty = self.param_bool(name, "transpose_y", transpose_y)?;
        self.op1(
            K,
            name,
            vec![
                ("x", Arg::Var(x)),
                ("y", Arg::Var(y)),
                ("transpose_x", Arg::Var(&tx)),
                ("transpose_y", Arg::Var(&ty)),
            ],
            TensorTy::new(dt, out),
        )
    }

    pub fn softmax(&mut self, name: &str, x: &Var, ax: i64) -> Result<Var, MilError> {
        same_float(name, "softmax", &[x])?;
        axis(name, "softmax", ax, x.rank())?;
        let a = self.param_int(name, "axis", ax)?;
        self.op1(
            "softmax",
            name,
            vec![("x", Arg::Var(x)), ("axis", Arg::Var(&a))],
            x.ty.clone(),
        )
    }

    pub fn gelu(&mut self, name: &str, x: &Var, mode: GeluMode) -> Result<Var, MilError> {
        same_float(name, "gelu", &[x])?;
        let m = self.param_str(
            name,
            "mode",
            match mode {
                GeluMode::Exact => "EXACT",
                GeluMode::Tanh => "TANH_APPROXIMATION",
            },
        )?;
        self.op1(
            "gelu",
            name,
            vec![("x", Arg::Var(x)), ("mode", Arg::Var(&m))],
            x.ty.clone(),
        )
    }

    pub fn silu(&mut self, name: &str, x: &Var) -> Result<Var, MilError> {
        same_float(name, "silu", &[x])?;
        self.op1("silu", name, vec![("x", Arg::Var(x))], x.ty.clone())
    }

    /// Splits along `axis` into pieces of the given sizes; outputs are `{name}_{i}`.
    pub fn split(
        &mut self,
        name: &str,
        x: &Var,
        sizes: &[usize],
        ax: i64,
    ) -> Result<Vec<Var>, MilError> {
        const K: &str = "split";
        let a = axis(name, K, ax, x.rank())?;
        if sizes.is_empty() || sizes.iter().sum::<usize>() != x.shape()[a] {
            return Err(shape_err(
                name,
                K,
                format!(
                    "sizes {sizes:?} do not add up to {} (axis {ax} of {:?})",
                    x.shape()[a],
                    x.shape()
                ),
            ));
        }
        let ss = self.param_ints(
            name,
            "split_sizes",
            &sizes.iter().map(|&v| v as i64).collect::<Vec<_>>(),
        )?;
        let av = self.param_int(name, "axis", ax)?;
        let outs: Vec<Var> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let mut shape = x.shape().to_vec();
                shape[a] = s;
                Var {
                    name: format!("{name}_{i}"),
                    ty: TensorTy::new(x.dtype(), shape),
                }
            })
            .collect();
        self.push_op(
            K,
            name,
            vec![
                ("x", Arg::Var(x)),
                ("split_sizes", Arg::Var(&ss)),
                ("axis", Arg::Var(&av)),
            ],
            outs.iter()
                .map(|v| (v.name.clone(), v.ty.to_proto()))
                .collect(),
        )?;
        Ok(outs)
    }

    /// `x[begin:end:stride]` per axis (non-negative bounds, no masks applied), with the
    /// axes flagged in `squeeze` removed.
    pub fn slice_by_index(
        &mut self,
        name: &str,
        x: &Var,
        begin: &[usize],
        end: &[usize],
        squeeze: &[bool],
    ) -> Result<Var, MilError> {
        const K: &str = "slice_by_index";
        let r = x.rank();
        if begin.len() != r || end.len() != r || squeeze.len() != r {
            return Err(shape_err(name, K, format!("bounds for rank {r}")));
        }
        let mut out = Vec::new();
        for i in 0..r {
            if begin[i] >= end[i] || end[i] > x.shape()[i] || (squeeze[i] && end[i] - begin[i] != 1)
            {
                return Err(shape_err(
                    name,
                    K,
                    format!(
                        "axis {i}: {}..{} of {:?} (squeeze {})",
                        begin[i],
                        end[i],
                        x.shape(),
                        squeeze[i]
                    ),
                ));
            }
            if !squeeze[i] {
                out.push(end[i] - begin[i]);
            }
        }
        let to64 = |v: &[usize]| v.iter().map(|&x| x as i64).collect::<Vec<_>>();
        let b = self.param_ints(name, "begin", &to64(begin))?;
        let e = self.param_ints(name, "end", &to64(end))?;
        let s = self.param_ints(name, "stride", &vec![1; r])?;
        let bm = self.param_bools(name, "begin_mask", &vec![false; r])?;
        let em = self.param_bools(name, "end_mask", &vec![false; r])?;
        let sm = self.param_bools(name, "squeeze_mask", squeeze)?;
        self.op1(
            K,
            name,
            vec![
                ("x", Arg::Var(x)),
                ("begin", Arg::Var(&b)),
                ("end", Arg::Var(&e)),
                ("stride", Arg::Var(&s)),
                ("begin_mask", Arg::Var(&bm)),
                ("end_mask", Arg::Var(&em)),
                ("squeeze_mask", Arg::Var(&sm)),
            ],
            TensorTy::new(x.dtype(), out),
        )
    }

    pub fn reduce_mean(
        &mut self,
        name: &str,
        x: &Var,
        axes: &[i64],
        keep_dims: bool,
    ) -> Result<Var, MilError> {
        const K: &str = "reduce_mean";
        same_float(name, K, &[x])?;
        let mut reduced = vec![false; x.rank()];
        for &a in axes {
            reduced[axis(name, K, a, x.rank())?] = true;
        }
        let out: Vec<usize> = (0..x.rank())
            .filter_map(|i| match (reduced[i], keep_dims) {
                (false, _) => Some(x.shape()[i]),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect();
        let ax = self.param_ints(name, "axes", axes)?;
        let kd = self.param_bool(name, "keep_dims", keep_dims)?;
        self.op1(
            K,
            name,
            vec![
                ("x", Arg::Var(x)),
                ("axes", Arg::Var(&ax)),
                ("keep_dims", Arg::Var(&kd)),
            ],
            TensorTy::new(x.dtype(), out),
        )
    }

    pub fn cast(&mut self, name: &str, x: &Var, to: DType) -> Result<Var, MilError> {
        let dn = to
            .cast_name()
            .ok_or_else(|| type_err(name, "cast", format!("cannot cast to {to}")))?;
        let d = self.param_str(name, "dtype", dn)?;
        self.op1(
            "cast",
            name,
            vec![("x", Arg::Var(x)), ("dtype", Arg::Var(&d))],
            TensorTy::new(to, x.shape()),
        )
    }

    /// `softmax(q @ k^T / sqrt(E)) @ v` in one op (iOS18 and later).
    pub fn scaled_dot_product_attention(
        &mut self,
        name: &str,
        q: &Var,
        k: &Var,
        v: &Var,
    ) -> Result<Var, MilError> {
        const K: &str = "scaled_dot_product_attention";
        if self.target < Target::Ios18 {
            return Err(MilError::Target {
                kind: K,
                needs: Target::Ios18,
                target: self.target,
            });
        }
        let dt = same_float(name, K, &[q, k, v])?;
        let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
        let r = qs.len();
        let ok = r >= 3
            && ks.len() == r
            && vs.len() == r
            && qs[..r - 2] == ks[..r - 2]
            && ks[..r - 2] == vs[..r - 2]
            && qs[r - 1] == ks[r - 1]
            && ks[r - 2] == vs[r - 2];
        if !ok {
            return Err(shape_err(
                name,
                K,
                format!("query {qs:?}, key {ks:?}, value {vs:?}"),
            ));
        }
        let mut out = qs.to_vec();
        out[r - 1] = vs[r - 1];
        self.op1(
            K,
            name,
            vec![
                ("query", Arg::Var(q)),
                ("key", Arg::Var(k)),
                ("value", Arg::Var(v)),
            ],
            TensorTy::new(dt, out),
        )
    }

    /// `classify`: the label with the highest probability and a label -> probability
    /// dictionary. `probabilities` must be fp32 with one entry per class.
    pub fn classify(
        &mut self,
        label_name: &str,
        probs_name: &str,
        probabilities: &Var,
        classes: &[String],
    ) -> Result<(), MilError> {
        const K: &str = "classify";
        if probabilities.dtype() != DType::F32 {
            return Err(type_err(
                label_name,
                K,
                format!("probabilities are {}, need fp32", probabilities.dtype()),
            ));
        }
        if probabilities.ty.numel() != classes.len() || classes.is_empty() {
            return Err(shape_err(
                label_name,
                K,
                format!(
                    "{} classes for probabilities {:?}",
                    classes.len(),
                    probabilities.shape()
                ),
            ));
        }
        self.push_op(
            K,
            label_name,
            vec![
                ("probabilities", Arg::Var(probabilities)),
                // The class list is a literal bound to the parameter, not a const op.
                ("classes", Arg::Value(value::string_list(classes))),
            ],
            vec![
                (label_name.into(), TensorTy::scalar(DType::Str).to_proto()),
                (probs_name.into(), value::dict_type(DType::Str, DType::F64)),
            ],
        )
    }
}
