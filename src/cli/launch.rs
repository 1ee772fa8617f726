//! `pipeline launch`: the ranks of a data-parallel training run.

use std::path::PathBuf;

use anyhow::{Context, Result};

use mlx_coreml_pipeline as lib;

#[derive(clap::Args)]
pub struct LaunchArgs {
    /// Ranks (per host with --hosts).
    #[arg(short = 'n', long, default_value_t = 2)]
    ranks: usize,
    /// mlx.launch hostfile of remote hosts (JSON).
    #[arg(long)]
    hosts: Option<PathBuf>,
    /// ring (TCP; CPUs and Macs) or nccl (NVIDIA GPUs).
    #[arg(long, default_value = "ring")]
    backend: lib::launch::LaunchBackend,
    /// No `launch:` lines of our own.
    #[arg(long)]
    quiet: bool,
    /// The command each rank runs: `train ARGS...`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

impl LaunchArgs {
    pub fn run(self) -> Result<()> {
        let LaunchArgs {
            ranks,
            hosts,
            backend,
            quiet,
            command,
        } = self;
        let opts = lib::launch::LaunchOptions {
            ranks,
            hosts,
            backend,
            args: command,
            program: std::env::current_exe().context("finding this program")?,
            quiet,
        };
        if let Err(e) = lib::launch::launch(&opts) {
            eprintln!("error: {e}");
            std::process::exit(e.exit_code());
        }
        Ok(())
    }
}
