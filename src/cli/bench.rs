//! `pipeline bench`: Core ML on each compute unit (macOS), or a saved report rendered.

use std::path::PathBuf;

use anyhow::{Context, Result};

use mlx_coreml_pipeline as lib;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The .mlpackage to benchmark (macOS).
    #[arg(required_unless_present = "report")]
    package: Option<PathBuf>,
    /// Render an existing report, or compute it from the harness's raw file
    /// (NAME.bench.raw.json), as table and chart instead of running; any platform.
    #[arg(long, conflicts_with = "package")]
    report: Option<PathBuf>,
    /// Compute units: cpu, gpu, ane, all (comma-separated).
    #[arg(long, default_value = "cpu,gpu,ane,all")]
    compute_units: String,
    #[arg(long, default_value_t = 20)]
    warmup: u32,
    #[arg(long, default_value_t = 200)]
    iterations: u32,
    /// Batch sizes for batch predictions (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch: Vec<u32>,
    /// Images to predict on (default: a synthetic input).
    #[arg(long, num_args = 1..)]
    image: Vec<PathBuf>,
    /// Reference outputs to compare every unit with.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Report path (default: NAME.bench.json next to the package).
    #[arg(long)]
    json: Option<PathBuf>,
}

impl BenchArgs {
    fn options(&self) -> Result<lib::bench::BenchOptions> {
        // The same list `verify --runtime coreml` takes, with the same errors.
        let units = lib::coreml_runtime::parse_units(&self.compute_units)?;
        Ok(lib::bench::BenchOptions {
            compute_units: units,
            warmup: self.warmup,
            iterations: self.iterations,
            batch_sizes: self.batch.clone(),
            images: self.image.clone(),
            reference: self.reference.clone(),
            json: self.json.clone(),
            swift_package: None,
        })
    }

    pub fn run(self) -> Result<()> {
        if let Some(path) = &self.report {
            let report = lib::bench::load_report(path)
                .with_context(|| format!("reading {}", path.display()))?;
            out!("{report}");
            let png = lib::bench::chart_path_for(path);
            let chart = lib::bench::render_chart(&report, &png)?;
            outln!("{chart}");
        } else {
            let pkg = self.package.clone().expect("required");
            let opts = self.options()?;
            let out = lib::bench::bench_package(&pkg, &opts)
                .with_context(|| format!("benchmarking {}", pkg.display()))?;
            out!("{}", out.report);
            outln!("{}", out.chart);
            outln!("report: {}", out.json.display());
        }
        Ok(())
    }
}
