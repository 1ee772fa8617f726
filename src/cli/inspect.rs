//! `pipeline inspect`: what a checkpoint holds.

use std::path::PathBuf;

use anyhow::{Context, Result};

use mlx_coreml_pipeline as lib;

#[derive(clap::Args)]
pub struct InspectArgs {
    /// Checkpoint folder.
    dir: PathBuf,
    /// List every tensor with its shape.
    #[arg(long)]
    tensors: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl InspectArgs {
    pub fn run(self) -> Result<()> {
        let InspectArgs { dir, tensors, json } = self;
        let i =
            lib::inspect::inspect(&dir).with_context(|| format!("inspecting {}", dir.display()))?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&i)?);
        } else {
            out!("{}", i.display(tensors));
        }
        Ok(())
    }
}
