//! `pipeline predict`: top-k classes from a checkpoint or a package.

use std::path::PathBuf;

use anyhow::{Context, Result};

use mlx_coreml_pipeline as lib;

use super::Runtime;

#[derive(clap::Args)]
pub struct PredictArgs {
    /// Checkpoint folder with a classification head (MLX forward).
    #[arg(long, short, conflicts_with = "package")]
    model: Option<PathBuf>,
    /// An exported .mlpackage (our interpreter); or give it as the first path.
    #[arg(long)]
    package: Option<PathBuf>,
    /// Image files (PNG, JPEG, WebP, BMP). A leading .mlpackage is taken as --package.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Classes to show per image.
    #[arg(long, short = 'k', default_value_t = 5)]
    top_k: usize,
    /// JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Where a package runs: `interp` (our interpreter, any platform) or `coreml`
    /// (Core ML itself; macOS, built with `--features coreml`).
    #[arg(long, value_enum, default_value = "interp")]
    runtime: Runtime,
    /// The compute-unit setting for `--runtime coreml`: cpu, gpu, ane or all.
    #[arg(long, default_value = "all")]
    compute_units: String,
}

impl PredictArgs {
    pub fn run(self) -> Result<()> {
        let PredictArgs {
            model,
            package,
            mut images,
            top_k,
            json,
            runtime,
            compute_units,
        } = self;
        let predictor = match (model, package) {
            (Some(m), _) => lib::predict::Predictor::Model(m),
            (None, Some(p)) => lib::predict::Predictor::Package(p),
            (None, None) if images.first().is_some_and(|p| lib::predict::is_package(p)) => {
                lib::predict::Predictor::Package(images.remove(0))
            }
            (None, None) => anyhow::bail!(
                "predict needs --model DIR (a checkpoint) or a PKG.mlpackage before the images"
            ),
        };
        let on = match runtime {
            Runtime::Interp => lib::predict::PackageRuntime::Interpreter,
            Runtime::Coreml => {
                let units = lib::coreml_runtime::parse_units(&compute_units)?;
                match units.as_slice() {
                    [u] => lib::predict::PackageRuntime::CoreMl(*u),
                    _ => anyhow::bail!(
                        "--compute-units: one setting for predict (cpu, gpu, ane or all)"
                    ),
                }
            }
        };
        let r = lib::predict::predict_on(&predictor, &images, top_k, on).context("predicting")?;
        if json {
            outln!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            out!("{r}");
        }
        Ok(())
    }
}
