//! The standard layout: `[1, T, D]` tokens, `linear` projections, heads by reshape and
//! transpose, what a PyTorch trace gives (and coremltools writes from timm).

use super::block::BlockScope;
use super::{edge, names, Body, EmitError, Emitter, VitOptions};
use crate::config::{Pooling, QkvLayout};
use crate::coreml::mil::{FloatSource, ProgramBuilder, Var};

impl Emitter<'_, '_, '_> {
    /// Patch tokens, the blocks, the final norm and pooling in the standard layout.
    pub(super) fn standard_body(
        &mut self,
        x: &Var,
        opts: &VitOptions,
        features: bool,
        cast_out: bool,
    ) -> Result<Body, EmitError> {
        let cfg = self.cfg;
        let mut x = self.embeddings(x, opts.flexible_batch)?;
        for i in 0..cfg.num_layers {
            x = self.block(i, &x, opts.fused_attention)?;
        }
        // The final norm is the `tokens` output when features are asked for.
        let g = self.weight("norm.weight", None)?;
        let bt = self.weight("norm.bias", None)?;
        let norm_name = if features {
            edge(names::TOKENS, cast_out)
        } else {
            "final_norm".to_string()
        };
        let tokens = self
            .b
            .layer_norm(&norm_name, &x, &[-1], &g, &bt, cfg.norm_eps)?;
        let pooled_name = if features {
            edge(names::EMBEDDING, cast_out)
        } else {
            "pooled".to_string()
        };
        let pooled = self.pool(&pooled_name, &tokens)?;
        Ok(Body {
            tokens,
            pooled,
            pooled4: None,
        })
    }

    /// `[1, T, D]` normed tokens -> `[1, pooled_dim]` named `name`, as [`Pooling`]
    /// documents.
    fn pool(&mut self, name: &str, normed: &Var) -> Result<Var, EmitError> {
        let cfg = self.cfg;
        let (d, t, p) = (cfg.hidden_size, cfg.num_tokens(), cfg.num_prefix_tokens());
        let cls = |b: &mut ProgramBuilder<'_>, n: &str| {
            b.slice_by_index(n, normed, &[0, 0, 0], &[1, 1, d], &[false, true, false])
        };
        let mean = |b: &mut ProgramBuilder<'_>, n: &str| {
            let patches = b.slice_by_index(
                "patch_tokens_final",
                normed,
                &[0, p, 0],
                &[1, t, d],
                &[false; 3],
            )?;
            b.reduce_mean(n, &patches, &[1], false)
        };
        Ok(match cfg.pooling {
            Pooling::Cls => cls(self.b, name)?,
            Pooling::Mean => mean(self.b, name)?,
            Pooling::ClsMean => {
                let c = cls(self.b, "pooled_cls")?;
                let m = mean(self.b, "pooled_patch_mean")?;
                self.b.concat(name, &[&c, &m], -1)?
            }
        })
    }

    /// Patch embedding, class/register tokens and position embeddings -> `[1, T, D]`.
    fn embeddings(&mut self, x: &Var, flexible_batch: bool) -> Result<Var, EmitError> {
        let cfg = self.cfg;
        let (d, g, n) = (cfg.hidden_size, cfg.grid(), cfg.num_patches());
        let r = cfg.num_register_tokens;
        let conv = self.patch_conv(x)?;
        let flat = self.b.reshape("patch_embed_flat", &conv, &[1, d, g * g])?;
        let patches = self.b.transpose("patch_embed_tokens", &flat, &[0, 2, 1])?;

        // Position rows: `pos_embed_prefix` leading rows for the first prefix tokens,
        // then one per patch.
        let prefix = cfg.pos_embed_prefix;
        let (pos_bytes, _) = self.raw("pos_embed")?;
        let patch_pos = FloatSource::LeBytes(&pos_bytes[prefix * d * 4..]);
        let pos = self
            .b
            .const_float("pos_embed_patches", self.dt, &[1, n, d], patch_pos)?;
        let patches = self.b.add("patch_embed_pos", &patches, &pos)?;

        let lead = self.prefix_token_values()?;
        let lead = self.constant("prefix_tokens", &[1, 1 + r, d], &lead)?;
        let lead = if flexible_batch {
            self.batched_like("prefix_tokens", &patches, &lead, 1)?
        } else {
            lead
        };
        Ok(self.b.concat("embed_tokens", &[&lead, &patches], 1)?)
    }

    fn block(&mut self, i: usize, x: &Var, fused_attention: bool) -> Result<Var, EmitError> {
        let cfg = self.cfg;
        let sc = BlockScope::new(cfg, i);
        let (d, h, hd, t, pre) = (sc.d, sc.h, sc.hd, sc.t, &sc.pre);
        let id = |s: &str| sc.id(s);

        let hn = self.layer_norm(&format!("{pre}.norm1"), x)?;
        let (q, k, v) = match cfg.qkv {
            QkvLayout::Fused => {
                let qkv = self.linear(&format!("{pre}.attn.qkv"), &hn, 3 * d, cfg.qkv_bias)?;
                self.split_qkv(&sc, &qkv, -1)?
            }
            QkvLayout::Separate => (
                self.linear(&format!("{pre}.attn.q"), &hn, d, cfg.qkv_bias)?,
                self.linear(&format!("{pre}.attn.k"), &hn, d, cfg.qkv_bias)?,
                self.linear(&format!("{pre}.attn.v"), &hn, d, cfg.qkv_bias)?,
            ),
        };
        // [1, T, D] -> [1, H, T, hd]: heads are contiguous hd-sized slices.
        let mut heads = Vec::with_capacity(3);
        for (n, y) in [("q", &q), ("k", &k), ("v", &v)] {
            let r = self
                .b
                .reshape(&id(&format!("attn.{n}_heads")), y, &[1, t, h, hd])?;
            heads.push(
                self.b
                    .transpose(&id(&format!("attn.{n}_bhtd")), &r, &[0, 2, 1, 3])?,
            );
        }
        let (q, k, v) = (&heads[0], &heads[1], &heads[2]);
        let o = if fused_attention {
            self.b
                .scaled_dot_product_attention(&id("attn.sdpa"), q, k, v)?
        } else {
            let scale = self.constant(&id("attn.scale"), &[], &[1.0 / (hd as f32).sqrt()])?;
            let qs = self.b.mul(&id("attn.q_scaled"), q, &scale)?;
            let s = self.b.matmul(&id("attn.scores"), &qs, k, false, true)?;
            let p = self.b.softmax(&id("attn.probs"), &s, -1)?;
            self.b.matmul(&id("attn.context"), &p, v, false, false)?
        };
        let o = self.b.transpose(&id("attn.merge_t"), &o, &[0, 2, 1, 3])?;
        let o = self.b.reshape(&id("attn.merge"), &o, &[1, t, d])?;
        let o = self.linear(&format!("{pre}.attn.proj"), &o, d, true)?;
        let o = self.layer_scale(&sc, "ls1", o, None)?;
        let x = self.b.add(&id("residual1"), x, &o)?;

        let hn = self.layer_norm(&format!("{pre}.norm2"), &x)?;
        let f1 = self.linear(&format!("{pre}.mlp.fc1"), &hn, cfg.fc1_out(), true)?;
        let act = self.mlp_act(&sc, &f1, -1)?;
        let f2 = self.linear(&format!("{pre}.mlp.fc2"), &act, d, true)?;
        let f2 = self.layer_scale(&sc, "ls2", f2, None)?;
        Ok(self.b.add(&id("residual2"), &x, &f2)?)
    }
}
