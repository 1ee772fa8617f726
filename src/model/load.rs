use mlx_rs::{module::Param, Array};

use super::{block::Norm, Attention, Block, Linear, Mlp, Vit};
use crate::checkpoint::Checkpoint;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("MLX: {0}")]
    Mlx(#[from] mlx_rs::error::Exception),
}

fn shape_i32(shape: &[usize]) -> Vec<i32> {
    shape.iter().map(|d| *d as i32).collect()
}

/// Builds the MLX model from a loaded checkpoint (whose tensors were validated against
/// the config at load time, so every lookup here succeeds).
pub fn from_checkpoint(ck: &Checkpoint) -> Result<Vit, ModelError> {
    let st = ck.tensors();
    let array = |name: &str| -> Array {
        let view = st.tensor(name).expect("validated checkpoint");
        let data = crate::checkpoint::le_f32(view.data());
        let a = Array::from_slice(&data, &shape_i32(view.shape()));
        ck.release(view.data());
        a
    };
    let opt = |name: &str| -> Option<Array> { st.tensor(name).ok().map(|_| array(name)) };
    let linear =
        |name: &str| Linear::new(opt(&format!("{name}.weight")), opt(&format!("{name}.bias")));
    let norm = |name: &str| Norm {
        weight: Param::new(array(&format!("{name}.weight"))),
        bias: Param::new(array(&format!("{name}.bias"))),
    };
    let c = &ck.config;
    let blocks = (0..c.num_layers)
        .map(|i| {
            let b = format!("blocks.{i}");
            Block {
                norm1: norm(&format!("{b}.norm1")),
                attn: Attention {
                    qkv: linear(&format!("{b}.attn.qkv")),
                    q: linear(&format!("{b}.attn.q")),
                    k: linear(&format!("{b}.attn.k")),
                    v: linear(&format!("{b}.attn.v")),
                    proj: linear(&format!("{b}.attn.proj")),
                    num_heads: c.num_heads as i32,
                },
                ls1: Param::new(opt(&format!("{b}.ls1"))),
                norm2: norm(&format!("{b}.norm2")),
                mlp: Mlp {
                    fc1: linear(&format!("{b}.mlp.fc1")),
                    fc2: linear(&format!("{b}.mlp.fc2")),
                    kind: c.mlp,
                },
                ls2: Param::new(opt(&format!("{b}.ls2"))),
                eps: c.norm_eps,
            }
        })
        .collect();
    Ok(Vit {
        patch_embed: linear("patch_embed"),
        cls_token: Param::new(array("cls_token")),
        reg_tokens: Param::new(opt("reg_tokens")),
        pos_embed: Param::new(array("pos_embed")),
        blocks,
        norm: norm("norm"),
        head: linear("head"),
        config: c.clone(),
        grad_checkpoint: false,
        compute_dtype: mlx_rs::Dtype::Float32,
        dropout_seed: None,
    })
}
