//! Operations that compute: convolution, norms, products, activations, reductions,
//! attention and the classifier's output.

use super::{axis, same_float, shape_err, type_err, BinaryOp, ConvPad, GeluMode};
use crate::coreml::mil::builder::{Arg, MilError, ProgramBuilder};
use crate::coreml::mil::types::{broadcast, DType, TensorTy, Var};
use crate::coreml::mil::value;
use crate::coreml::target::Target;

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
