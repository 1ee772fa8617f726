//! `pipeline run`: every stage from a TOML config.

use std::path::PathBuf;

use anyhow::{Context, Result};

use mlx_coreml_pipeline as lib;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The run configuration (TOML: [run], [convert], [train], [export], [verify], [bench]).
    config: PathBuf,
    /// Override a setting: --set train.epochs=3 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// Redo this stage and everything after it, even if unchanged.
    #[arg(long, value_parser = ["convert", "train", "merge", "export", "verify", "bench"])]
    from: Option<String>,
    /// Where MLX trains: auto (the GPU when MLX's CUDA build and an NVIDIA GPU are
    /// there, else the CPU), cpu or gpu.
    #[arg(long, default_value = "auto")]
    device: lib::backend::DeviceChoice,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

impl RunArgs {
    pub fn run(self) -> Result<()> {
        super::use_device(self.device, self.quiet)?;
        let r = lib::run::run(&self.config, &self.set, self.from.as_deref(), self.quiet)
            .with_context(|| format!("running {}", self.config.display()))?;
        for s in &r.stages {
            outln!("{:<8} {:<20} {}", s.stage, s.status, s.summary);
        }
        outln!("package: {}", r.package.display());
        outln!("summary: {}", r.run.join("summary.md").display());
        Ok(())
    }
}
