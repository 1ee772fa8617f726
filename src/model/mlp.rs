use mlx_rs::{error::Exception, macros::ModuleParameters, Array};

use super::Linear;
use crate::config::MlpKind;

#[derive(Debug, Clone, ModuleParameters)]
#[module(root = mlx_rs)]
pub struct Mlp {
    #[param]
    pub fc1: Linear,
    #[param]
    pub fc2: Linear,
    pub kind: MlpKind,
}

impl Mlp {
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let h = self.fc1.forward(x)?;
        let h = match self.kind {
            MlpKind::Gelu => super::gelu::gelu(&h)?,
            MlpKind::SwigluPacked => {
                // First half is the gate (timm SwiGLUPacked, DINOv2 SwiGLU).
                let parts = mlx_rs::ops::split_equal(&h, 2, -1)?;
                mlx_rs::nn::silu(&parts[0])?.multiply(&parts[1])?
            }
        };
        self.fc2.forward(&h)
    }
}
