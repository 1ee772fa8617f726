use mlx_rs::{error::Exception, macros::ModuleParameters, module::Param, ops, Array};

/// `y = x W^T + b` with PyTorch's `[out, in]` weight, plus an optional LoRA adapter
/// `scale * (x A^T) B^T` (A `[r, in]`, B `[out, r]`). The weight is optional so that
/// layouts without a layer (fused vs separate q/k/v, no head) leave it empty.
#[derive(Debug, Clone, ModuleParameters)]
#[module(root = mlx_rs)]
pub struct Linear {
    #[param]
    pub weight: Param<Option<Array>>,
    #[param]
    pub bias: Param<Option<Array>>,
    #[param]
    pub lora_a: Param<Option<Array>>,
    #[param]
    pub lora_b: Param<Option<Array>>,
    /// alpha / rank.
    pub lora_scale: f32,
    /// Dropout probability on the adapter's input while training.
    pub lora_dropout: f32,
    /// Set per step by the trainer while training (a seed derived from the run seed, the
    /// step and the layer), so dropout masks are reproducible and resumable. None: no dropout.
    pub dropout_seed: Option<u64>,
    /// The same as `dropout_seed` as an MLX key array (`random::key(seed)`), which takes
    /// precedence: a compiled step passes the keys in as inputs, so a traced function
    /// draws each step's own masks instead of the first step's.
    pub dropout_key: Option<Array>,
}

impl Linear {
    pub fn new(weight: Option<Array>, bias: Option<Array>) -> Self {
        Linear {
            weight: Param::new(weight),
            bias: Param::new(bias),
            lora_a: Param::new(None),
            lora_b: Param::new(None),
            lora_scale: 0.0,
            lora_dropout: 0.0,
            dropout_seed: None,
            dropout_key: None,
        }
    }

    pub fn empty() -> Self {
        Linear::new(None, None)
    }

    pub fn is_present(&self) -> bool {
        self.weight.value.is_some()
    }

    pub fn has_lora(&self) -> bool {
        self.lora_a.value.is_some()
    }

    /// `[out, in]`.
    pub fn dims(&self) -> Option<(i32, i32)> {
        self.weight.value.as_ref().map(|w| {
            let s = w.shape();
            (s[0], s[1..].iter().product())
        })
    }

    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        let w = self
            .weight
            .value
            .as_ref()
            .ok_or_else(|| Exception::custom("linear layer has no weight"))?;
        // addmm folds the bias (and below, the adapter) into the matmul's output pass
        // instead of separate elementwise passes over [B, T, out].
        let mut y = match self.bias.value.as_ref() {
            // On GPUs the bias's gradient is a matrix product (see `param_grads`).
            Some(b) if !super::gelu::on_cpu() && super::param_grads::enabled() => {
                super::param_grads::linear(x, w, b)?
            }
            Some(b) => ops::addmm(b, x, w.t(), None, None)?,
            None => ops::matmul(x, w.t())?,
        };
        if let (Some(a), Some(b)) = (self.lora_a.value.as_ref(), self.lora_b.value.as_ref()) {
            let key = match (&self.dropout_key, self.dropout_seed) {
                _ if self.lora_dropout <= 0.0 => None,
                (Some(k), _) => Some(k.clone()),
                (None, Some(seed)) => Some(mlx_rs::random::key(seed)?),
                (None, None) => None,
            };
            let x = match key {
                Some(key) => dropout(x, self.lora_dropout, &key)?,
                None => x.clone(),
            };
            if super::gelu::on_cpu() {
                let low = ops::matmul(&x, a.t())?;
                y = ops::addmm(&y, &low, b.t(), self.lora_scale, None)?;
            } else {
                // As 2-D products: MLX differentiates a batched `[B, T, in] @ [in, r]` by
                // one product per image and a column sum over the batch, which its CUDA
                // reduction runs on a handful of blocks (6.6 ms of a 33 ms ViT-B/16 LoRA
                // step at batch 64); flattened, each adapter gradient is one GEMM.
                let shape = y.shape().to_vec();
                let (k, n) = (x.dim(-1), y.dim(-1));
                let x2 = x.reshape(&[-1, k])?;
                let low = ops::matmul(&x2, a.t())?;
                y = ops::addmm(&y.reshape(&[-1, n])?, &low, b.t(), self.lora_scale, None)?
                    .reshape(&shape)?;
            }
        }
        Ok(y)
    }

    /// Folds the adapter into the weight (`W + scale * B A`) and removes it: the layer
    /// then computes the same function as a plain linear layer.
    pub fn merge_lora(&mut self) -> Result<(), Exception> {
        let (Some(a), Some(b)) = (self.lora_a.value.take(), self.lora_b.value.take()) else {
            return Ok(());
        };
        let w = self
            .weight
            .value
            .as_ref()
            .ok_or_else(|| Exception::custom("LoRA on a layer without weight"))?;
        let delta = ops::matmul(&b, &a)?.multiply(mlx_rs::array!(self.lora_scale))?;
        let merged = w.add(delta.reshape(w.shape())?)?;
        merged.eval()?;
        self.weight.value = Some(merged);
        Ok(())
    }
}

/// Inverted dropout: zero with probability p, scale the rest by 1 / (1 - p).
fn dropout(x: &Array, p: f32, key: &Array) -> Result<Array, Exception> {
    let keep_p = mlx_rs::array!(1.0 - p);
    let keep = mlx_rs::random::bernoulli(&keep_p, x.shape(), key)?;
    // Constants in x's dtype: a float32 scalar would promote bf16 activations.
    let dt = x.dtype();
    ops::select(
        &keep,
        x.multiply(mlx_rs::array!(1.0 / (1.0 - p)).as_dtype(dt)?)?,
        mlx_rs::array!(0.0f32).as_dtype(dt)?,
    )
}
