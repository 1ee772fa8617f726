use mlx_rs::{error::Exception, macros::ModuleParameters, module::Param, ops, Array};

/// `y = x W^T + b` with PyTorch's `[out, in]` weight. The weight is optional so that
/// layouts that do not have a layer (fused vs separate q/k/v, no head) leave it empty.
#[derive(Debug, Clone, ModuleParameters)]
#[module(root = mlx_rs)]
pub struct Linear {
    #[param]
    pub weight: Param<Option<Array>>,
    #[param]
    pub bias: Param<Option<Array>>,
}

impl Linear {
    pub fn empty() -> Self {
        Linear {
            weight: Param::new(None),
            bias: Param::new(None),
        }
    }

    pub fn is_present(&self) -> bool {
        self.weight.value.is_some()
    }

    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let w = self
            .weight
            .value
            .as_ref()
            .ok_or_else(|| Exception::custom("linear layer has no weight"))?;
        let y = ops::matmul(x, w.t())?;
        match self.bias.value.as_ref() {
            Some(b) => y.add(b),
            None => Ok(y),
        }
    }
}
