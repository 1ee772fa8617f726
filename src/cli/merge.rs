//! `pipeline merge`: adapters (ours or PEFT's) folded into their base.

use std::path::PathBuf;

use anyhow::{Context, Result};

use mlx_coreml_pipeline as lib;

#[derive(clap::Args)]
pub struct MergeArgs {
    /// Base checkpoint (converted with `pipeline convert`) the adapters were trained on.
    #[arg(long)]
    base: PathBuf,
    /// Adapter folder: RUN/adapters, RUN/best, or a PEFT LoRA folder.
    #[arg(long)]
    adapters: PathBuf,
    /// Output checkpoint folder.
    #[arg(long, short)]
    out: PathBuf,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
}

impl MergeArgs {
    pub fn run(self) -> Result<()> {
        let MergeArgs {
            base,
            adapters,
            out,
            force,
        } = self;
        let r = lib::merge::merge(&base, &adapters, &out, force)
            .with_context(|| format!("merging {} into {}", adapters.display(), base.display()))?;
        outln!(
                "merged {} adapted layers{} ({}) -> {}; max |adapter - merged| on a probe batch of {}: {:.2e}",
                r.layers_merged,
                if r.replaced.is_empty() { String::new() } else { format!(" and {} trained tensors", r.replaced.len()) },
                r.adapters_format,
                r.out.display(),
                r.probe_batch,
                r.max_abs_diff
            );
        Ok(())
    }
}
