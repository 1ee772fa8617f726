//! Operations that move or retype data without computing on it.

use super::{axis, same_float, shape_err, type_err};
use crate::coreml::mil::builder::{Arg, MilError, ProgramBuilder};
use crate::coreml::mil::types::{DType, TensorTy, Var};

impl ProgramBuilder<'_> {
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
}
