//! The Neural Engine layout (Apple's recipe for transformers on the ANE): activations
//! as `[1, C, 1, T]` (channels on axis 1, the sequence on the last axis), every
//! projection a 1x1 `conv`, LayerNorm over axis 1, attention split per head along the
//! channels. Per head, q, k and v are `[1, hd, 1, T]` slices; swapping the two middle
//! axes (one of them has size 1, so no data moves) gives `[1, 1, hd, T]`, and two
//! matmuls with transposed operands give the scores `[1, 1, Tq, Tk]` and the context
//! `[1, 1, hd, T]` without a reshape. Nothing has rank above 4 and no `linear` remains;
//! only the outputs are brought back to the standard layout's names and shapes.

use super::block::BlockScope;
use super::{edge, names, Body, EmitError, Emitter, VitOptions};
use crate::config::{Pooling, QkvLayout};
use crate::coreml::mil::{ConvPad, Var};

/// `[rows, cols]` row-major values transposed to `[cols, rows]`.
fn transposed(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

impl Emitter<'_, '_, '_> {
    /// `{prefix}.weight` `[out, in]` as a 1x1 convolution of `[1, in, 1, T]`.
    pub(super) fn conv1x1(
        &mut self,
        prefix: &str,
        name: &str,
        x: &Var,
        out: usize,
        bias: bool,
    ) -> Result<Var, EmitError> {
        let cin = x.shape()[1];
        let w = self.weight(&format!("{prefix}.weight"), Some(&[out, cin, 1, 1]))?;
        let b = if bias {
            self.weight(&format!("{prefix}.bias"), None)?
        } else {
            let n = crate::coreml::mil::types::ident(&format!("{prefix}.bias"));
            self.constant(&n, &[out], &vec![0.0; out])?
        };
        let name = crate::coreml::mil::types::ident(name);
        Ok(self
            .b
            .conv2d(&name, x, &w, &b, [1, 1], ConvPad::Valid, [1, 1], 1)?)
    }

    fn channel_norm(&mut self, prefix: &str, name: &str, x: &Var) -> Result<Var, EmitError> {
        let g = self.weight(&format!("{prefix}.weight"), None)?;
        let bt = self.weight(&format!("{prefix}.bias"), None)?;
        let name = crate::coreml::mil::types::ident(name);
        Ok(self
            .b
            .layer_norm(&name, x, &[1], &g, &bt, self.cfg.norm_eps)?)
    }

    /// Patch embedding, prefix tokens and positions as `[1, D, 1, T]`.
    fn ane_embeddings(&mut self, x: &Var, flexible_batch: bool) -> Result<Var, EmitError> {
        let cfg = self.cfg;
        let (d, n, r) = (cfg.hidden_size, cfg.num_patches(), cfg.num_register_tokens);
        let conv = self.patch_conv(x)?;
        // [1, D, g, g] -> [1, D, 1, N]: row-major patches, as the standard layout's order.
        let patches = self.b.reshape("patch_embed_seq", &conv, &[1, d, 1, n])?;
        let prefix = cfg.pos_embed_prefix;
        let pos_all = self.values("pos_embed")?;
        let pos = transposed(&pos_all[prefix * d..], n, d);
        let pos = self.constant("pos_embed_patches", &[1, d, 1, n], &pos)?;
        let patches = self.b.add("patch_embed_pos", &patches, &pos)?;

        let lead = transposed(&self.prefix_token_values()?, 1 + r, d);
        let lead = self.constant("prefix_tokens", &[1, d, 1, 1 + r], &lead)?;
        let lead = if flexible_batch {
            self.batched_like("prefix_tokens", &patches, &lead, 3)?
        } else {
            lead
        };
        Ok(self.b.concat("embed_tokens", &[&lead, &patches], 3)?)
    }

    /// One head's attention on `[1, hd, 1, T]` slices; returns `[1, hd, 1, T]`.
    fn ane_head(&mut self, id: &str, q: &Var, k: &Var, v: &Var) -> Result<Var, EmitError> {
        let swap = [0, 2, 1, 3];
        let qt = self.b.transpose(&format!("{id}_q"), q, &swap)?;
        let kt = self.b.transpose(&format!("{id}_k"), k, &swap)?;
        let vt = self.b.transpose(&format!("{id}_v"), v, &swap)?;
        // [hd, Tq]^T [hd, Tk] = [Tq, Tk]; softmax over the keys.
        let s = self
            .b
            .matmul(&format!("{id}_scores"), &qt, &kt, true, false)?;
        let p = self.b.softmax(&format!("{id}_probs"), &s, -1)?;
        // [hd, Tk] [Tq, Tk]^T = [hd, Tq].
        let c = self
            .b
            .matmul(&format!("{id}_context"), &vt, &p, false, true)?;
        Ok(self.b.transpose(&format!("{id}_out"), &c, &swap)?)
    }

    fn ane_block(&mut self, i: usize, x: &Var) -> Result<Var, EmitError> {
        let cfg = self.cfg;
        let sc = BlockScope::new(cfg, i);
        let (d, h, hd, t, pre) = (sc.d, sc.h, sc.hd, sc.t, &sc.pre);
        let id = |s: &str| sc.id(s);
        let hn = self.channel_norm(&format!("{pre}.norm1"), &id("norm1"), x)?;
        let (q, k, v) = match cfg.qkv {
            QkvLayout::Fused => {
                let qkv = self.conv1x1(
                    &format!("{pre}.attn.qkv"),
                    &id("attn.qkv"),
                    &hn,
                    3 * d,
                    cfg.qkv_bias,
                )?;
                self.split_qkv(&sc, &qkv, 1)?
            }
            QkvLayout::Separate => {
                let mut out = Vec::with_capacity(3);
                for n in ["q", "k", "v"] {
                    out.push(self.conv1x1(
                        &format!("{pre}.attn.{n}"),
                        &id(&format!("attn.{n}")),
                        &hn,
                        d,
                        cfg.qkv_bias,
                    )?);
                }
                let v = out.pop().expect("three");
                let k = out.pop().expect("three");
                (out.pop().expect("three"), k, v)
            }
        };
        let scale = self.constant(&id("attn.scale"), &[], &[1.0 / (hd as f32).sqrt()])?;
        let q = self.b.mul(&id("attn.q_scaled"), &q, &scale)?;
        let mut heads = Vec::with_capacity(h);
        for j in 0..h {
            let (b, e) = ([0, j * hd, 0, 0], [1, (j + 1) * hd, 1, t]);
            let keep = [false; 4];
            let hid = id(&format!("attn.h{j}"));
            let qh = self
                .b
                .slice_by_index(&format!("{hid}_qs"), &q, &b, &e, &keep)?;
            let kh = self
                .b
                .slice_by_index(&format!("{hid}_ks"), &k, &b, &e, &keep)?;
            let vh = self
                .b
                .slice_by_index(&format!("{hid}_vs"), &v, &b, &e, &keep)?;
            heads.push(self.ane_head(&hid, &qh, &kh, &vh)?);
        }
        let refs: Vec<&Var> = heads.iter().collect();
        let o = self.b.concat(&id("attn.heads"), &refs, 1)?;
        let o = self.conv1x1(&format!("{pre}.attn.proj"), &id("attn.proj"), &o, d, true)?;
        let o = self.layer_scale(&sc, "ls1", o, Some(&[1, d, 1, 1]))?;
        let x = self.b.add(&id("residual1"), x, &o)?;

        let hn = self.channel_norm(&format!("{pre}.norm2"), &id("norm2"), &x)?;
        let f1 = self.conv1x1(
            &format!("{pre}.mlp.fc1"),
            &id("mlp.fc1"),
            &hn,
            cfg.fc1_out(),
            true,
        )?;
        let act = self.mlp_act(&sc, &f1, 1)?;
        let f2 = self.conv1x1(&format!("{pre}.mlp.fc2"), &id("mlp.fc2"), &act, d, true)?;
        let f2 = self.layer_scale(&sc, "ls2", f2, Some(&[1, d, 1, 1]))?;
        Ok(self.b.add(&id("residual2"), &x, &f2)?)
    }

    /// `[1, D, 1, T]` normed tokens -> `[1, pooled_dim, 1, 1]`.
    fn ane_pool(&mut self, normed: &Var) -> Result<Var, EmitError> {
        let cfg = self.cfg;
        let (d, t, p) = (cfg.hidden_size, cfg.num_tokens(), cfg.num_prefix_tokens());
        let keep = [false; 4];
        let cls = |e: &mut Self, n: &str| {
            e.b.slice_by_index(n, normed, &[0, 0, 0, 0], &[1, d, 1, 1], &keep)
        };
        let mean = |e: &mut Self, n: &str| {
            let patches = e.b.slice_by_index(
                "patch_tokens_final",
                normed,
                &[0, 0, 0, p],
                &[1, d, 1, t],
                &keep,
            )?;
            e.b.reduce_mean(n, &patches, &[3], true)
        };
        Ok(match cfg.pooling {
            Pooling::Cls => cls(self, "pooled4")?,
            Pooling::Mean => mean(self, "pooled4")?,
            Pooling::ClsMean => {
                let c = cls(self, "pooled_cls")?;
                let m = mean(self, "pooled_patch_mean")?;
                self.b.concat("pooled4", &[&c, &m], 1)?
            }
        })
    }

    /// The whole body in the Neural Engine layout; the outputs' shapes as the standard's.
    pub(super) fn ane_body(
        &mut self,
        x: &Var,
        opts: &VitOptions,
        features: bool,
        cast_out: bool,
    ) -> Result<Body, EmitError> {
        let cfg = self.cfg;
        let (d, t) = (cfg.hidden_size, cfg.num_tokens());
        let mut x = self.ane_embeddings(x, opts.flexible_batch)?;
        for i in 0..cfg.num_layers {
            x = self.ane_block(i, &x)?;
        }
        let normed = self.channel_norm("norm", "final_norm", &x)?;
        let pooled4 = self.ane_pool(&normed)?;
        let pooled_name = if features {
            edge(names::EMBEDDING, cast_out)
        } else {
            "pooled".to_string()
        };
        let pooled = self
            .b
            .reshape(&pooled_name, &pooled4, &[1, cfg.pooled_dim()])?;
        let tokens = if features {
            let seq = self.b.reshape("final_norm_seq", &normed, &[1, d, t])?;
            self.b
                .transpose(&edge(names::TOKENS, cast_out), &seq, &[0, 2, 1])?
        } else {
            normed
        };
        Ok(Body {
            tokens,
            pooled,
            pooled4: Some(pooled4),
        })
    }
}
