//! What the standard and the Neural Engine block emitters share: a block's sizes and
//! names, the fused q/k/v split, layer scale and the MLP activation. The layouts differ only in the
//! channel axis these work along (last in `[1, T, D]`, 1 in `[1, C, 1, T]`).

use super::{EmitError, Emitter};
use crate::config::{MlpKind, ModelConfig};
use crate::coreml::mil::{GeluMode, Var};

/// Block `i`'s sizes and the prefix of its weights' and ops' names.
pub(super) struct BlockScope {
    /// Hidden size.
    pub d: usize,
    /// Heads.
    pub h: usize,
    /// Head size.
    pub hd: usize,
    /// Tokens.
    pub t: usize,
    /// `blocks.{i}`.
    pub pre: String,
}

impl BlockScope {
    pub fn new(cfg: &ModelConfig, i: usize) -> Self {
        BlockScope {
            d: cfg.hidden_size,
            h: cfg.num_heads,
            hd: cfg.head_dim(),
            t: cfg.num_tokens(),
            pre: format!("blocks.{i}"),
        }
    }

    /// The op name for `{pre}.{s}`, made a MIL identifier.
    pub fn id(&self, s: &str) -> String {
        crate::coreml::mil::types::ident(&format!("{}.{s}", self.pre))
    }
}

impl Emitter<'_, '_, '_> {
    /// The fused `qkv` projection split along `axis` into q, k and v of `d` channels each.
    pub(super) fn split_qkv(
        &mut self,
        sc: &BlockScope,
        qkv: &Var,
        axis: i64,
    ) -> Result<(Var, Var, Var), EmitError> {
        let d = sc.d;
        let mut parts = self
            .b
            .split(&sc.id("attn.qkv_split"), qkv, &[d, d, d], axis)?
            .into_iter();
        let (Some(q), Some(k), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
            unreachable!("split into three")
        };
        Ok((q, k, v))
    }

    /// The MLP's activation of `fc1`'s output `f1`; packed SwiGLU's halves lie along
    /// `axis`.
    pub(super) fn mlp_act(
        &mut self,
        sc: &BlockScope,
        f1: &Var,
        axis: i64,
    ) -> Result<Var, EmitError> {
        let id = |s: &str| sc.id(s);
        Ok(match self.cfg.mlp {
            MlpKind::Gelu => self.b.gelu(&id("mlp.act"), f1, GeluMode::Exact)?,
            MlpKind::SwigluPacked => {
                let hm = self.cfg.mlp_hidden;
                let parts = self.b.split(&id("mlp.fc1_split"), f1, &[hm, hm], axis)?;
                // The first half is the gate.
                let gate = self.b.silu(&id("mlp.act"), &parts[0])?;
                self.b.mul(&id("mlp.gated"), &gate, &parts[1])?
            }
        })
    }

    /// A residual branch's output `o` times layer scale `{pre}.{ls}` (stored as
    /// `shape`) when the model has layer scale; `o` itself otherwise.
    pub(super) fn layer_scale(
        &mut self,
        sc: &BlockScope,
        ls: &str,
        o: Var,
        shape: Option<&[usize]>,
    ) -> Result<Var, EmitError> {
        if !self.cfg.layer_scale {
            return Ok(o);
        }
        let g = self.weight(&format!("{}.{ls}", sc.pre), shape)?;
        Ok(self.b.mul(&sc.id(&format!("{ls}_mul")), &o, &g)?)
    }
}
