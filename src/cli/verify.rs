//! `pipeline verify`: a package against its checkpoint or saved references, with our interpreter or Core ML.

use std::path::PathBuf;

use anyhow::{Context, Result};

use mlx_coreml_pipeline as lib;

use super::Runtime;

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The .mlpackage to check.
    package: PathBuf,
    /// Checkpoint it was exported from (reference computed with MLX).
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Saved reference inputs/outputs (safetensors).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Images to compare on (needs --model for preprocessing).
    #[arg(long, num_args = 1..)]
    images: Vec<PathBuf>,
    /// Probe batch size when no images or reference are given.
    #[arg(long, default_value_t = 4)]
    probe: usize,
    /// JSON report path (default: next to the package, NAME.verify.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the inputs and reference outputs compared against as a
    /// `coreml-bench --reference FILE.json` file (the package's feature names).
    #[arg(long, value_name = "FILE.json")]
    reference_out: Option<PathBuf>,
    /// Labelled images (a folder with class subfolders, or the train stage's CSV /
    /// JSON lists; the validation split of a train/val folder): top-1 of the package
    /// and of the model (--model) on them, and their agreement.
    #[arg(long, value_name = "DATA")]
    data: Option<PathBuf>,
    /// Use at most this many images of --data (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Compressed packages are judged by accuracy, not by the fp16 error thresholds:
    /// with --data, the package's top-1 may be at most this many points below the
    /// model's.
    #[arg(long, default_value_t = 1.0)]
    max_top1_drop: f64,
    /// Compressed packages without --data: the least fraction of inputs on which
    /// the package's top-1 agrees with the model's.
    #[arg(long, default_value_t = 0.95)]
    min_agreement: f64,
    /// Where the package runs: `interp` (our MIL interpreter, any platform) or
    /// `coreml` (Core ML itself on each --compute-units setting; macOS, built with
    /// `--features coreml`), compared with the model, the interpreter and `cpu`.
    #[arg(long, value_enum, default_value = "interp")]
    runtime: Runtime,
    /// Settings for --runtime coreml: cpu, gpu, ane, all (comma-separated).
    #[arg(long, default_value = "cpu,gpu,ane,all")]
    compute_units: String,
    /// Run the package on this many inputs at a time: a batch size it was exported
    /// with (`export --batch`); a last smaller group runs one input at a time.
    #[arg(long, default_value_t = 1)]
    batch: usize,
}

impl VerifyArgs {
    pub fn run(self) -> Result<()> {
        let VerifyArgs {
            package,
            model,
            reference,
            images,
            probe,
            json,
            reference_out,
            data,
            limit,
            max_top1_drop,
            min_agreement,
            runtime,
            compute_units,
            batch,
        } = self;
        let opts = lib::verify::VerifyOptions {
            model,
            reference,
            images,
            probe,
            seed: 0,
            reference_out: reference_out.clone(),
            data,
            limit,
            compressed: lib::coreml::verify::CompressedRules {
                max_top1_drop,
                min_agreement,
                ..Default::default()
            },
            batch,
        };
        if runtime == Runtime::Coreml {
            return verify_coreml(&package, &opts, &compute_units, json);
        }
        let r = lib::verify::verify(&package, &opts)
            .with_context(|| format!("verifying {}", package.display()))?;
        outln!("{r}");
        let json = json.unwrap_or_else(|| package.with_extension("verify.json"));
        lib::verify::write_json(&r, &json)?;
        outln!("report: {}", json.display());
        if let Some(p) = &reference_out {
            outln!("reference for coreml-bench: {}", p.display());
        }
        if !r.pass {
            anyhow::bail!(
                "{} does not pass ({})",
                package.display(),
                r.rule.describe()
            );
        }
        Ok(())
    }
}

/// `pipeline verify --runtime coreml`: Core ML on each setting against the model, our
/// interpreter and `cpu`; table, JSON, exit 1 when a setting fails.
fn verify_coreml(
    package: &std::path::Path,
    opts: &lib::verify::VerifyOptions,
    units: &str,
    json: Option<PathBuf>,
) -> Result<()> {
    let units = lib::coreml_runtime::parse_units(units)?;
    let r = lib::coreml_runtime::verify::verify_coreml(package, opts, &units)
        .with_context(|| format!("verifying {} with Core ML", package.display()))?;
    outln!("{r}");
    let json = json.unwrap_or_else(|| lib::coreml_runtime::verify::default_json_path(package));
    lib::coreml_runtime::verify::write_json(&r, &json)?;
    outln!("report: {}", json.display());
    if !r.pass {
        anyhow::bail!("{} does not pass on Core ML", package.display());
    }
    Ok(())
}
