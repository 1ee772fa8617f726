//! `pipeline embed`: features, pooled output and logits of a checkpoint, saved as safetensors.

use std::path::PathBuf;

use anyhow::{Context, Result};

use mlx_coreml_pipeline as lib;

#[derive(clap::Args)]
pub struct EmbedArgs {
    /// Checkpoint folder.
    #[arg(long, short)]
    model: PathBuf,
    /// Safetensors file with pre-normalised [N, 3, H, W] pixels.
    #[arg(long, conflicts_with = "images")]
    pixels: Option<PathBuf>,
    /// Image files.
    images: Vec<PathBuf>,
    /// Output safetensors file.
    #[arg(long, short)]
    out: PathBuf,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    batch: usize,
}

impl EmbedArgs {
    pub fn run(self) -> Result<()> {
        let EmbedArgs {
            model,
            pixels,
            images,
            out,
            batch,
        } = self;
        let input = match pixels {
            Some(p) => lib::embed::EmbedInput::Pixels(p),
            None => lib::embed::EmbedInput::Images(images),
        };
        let r = lib::embed::embed(&model, &input, &out, batch)
            .with_context(|| format!("embedding with {}", model.display()))?;
        outln!(
            "embedded {} inputs -> {}: last_hidden_state {:?}, pooled {:?}{}",
            r.count,
            r.out.display(),
            r.tokens_shape,
            r.pooled_shape,
            r.logits_shape
                .map(|s| format!(", logits {s:?}"))
                .unwrap_or_default()
        );
        Ok(())
    }
}
