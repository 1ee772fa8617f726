//! `pipeline convert`: a transformers / timm checkpoint, hub repo or preset into our checkpoint.

use std::path::PathBuf;

use anyhow::{Context, Result};

use mlx_coreml_pipeline as lib;

#[derive(clap::Args)]
pub struct ConvertArgs {
    /// Folder, Hugging Face repo id, or preset:NAME.
    #[arg(required_unless_present = "list_presets")]
    source: Option<String>,
    /// Output checkpoint folder.
    #[arg(long, short, required_unless_present = "list_presets")]
    out: Option<PathBuf>,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
    /// Hub revision (branch, tag or commit) for repo ids.
    #[arg(long)]
    revision: Option<String>,
    /// List the presets and exit.
    #[arg(long)]
    list_presets: bool,
    /// Working input size: resample the position grid to it (e.g. 224 for DINOv2's 518).
    #[arg(long)]
    image_size: Option<usize>,
}

impl ConvertArgs {
    pub fn run(self) -> Result<()> {
        let ConvertArgs {
            source,
            out,
            force,
            revision,
            list_presets,
            image_size,
        } = self;
        if list_presets {
            for p in lib::convert::preset::PRESETS {
                let params = p.config().num_parameters();
                outln!("{:<22} {:>8.1}M  {}", p.name, params as f64 / 1e6, p.about);
            }
            return Ok(());
        }
        let (source, out) = (source.expect("required"), out.expect("required"));
        let opts = lib::convert::ConvertOptions {
            force,
            revision,
            image_size,
        };
        let r = lib::convert::convert(&source, &out, &opts)
            .with_context(|| format!("converting {source}"))?;
        outln!(
            "converted {} ({}): {} tensors, {:.2}M parameters -> {} in {:.2}s",
            r.source,
            r.family,
            r.tensors,
            r.parameters as f64 / 1e6,
            r.out.display(),
            r.seconds
        );
        if !r.dropped.is_empty() {
            outln!("dropped (training-only): {}", r.dropped.join(", "));
        }
        Ok(())
    }
}
