//! Running the Swift harness: build `swift/` in release mode, run `coreml-bench` on a
//! package, compute the report from its raw measurements, write it and draw the chart
//! next to it. Only macOS has Core ML;
//! elsewhere [`bench_package`] says so and points at rendering an existing report.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::chart::{render_chart, Chart};
use super::report::{BenchReport, ComputeUnits};
use super::BenchError;

/// What `coreml-bench` is asked to measure; `Default` matches its own defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchOptions {
    pub compute_units: Vec<ComputeUnits>,
    pub warmup: u32,
    pub iterations: u32,
    pub batch_sizes: Vec<u32>,
    pub images: Vec<PathBuf>,
    /// A `coreml-bench-reference` JSON (see [`super::ReferenceFile`]).
    pub reference: Option<PathBuf>,
    /// Where the report goes; default [`default_json_path`].
    pub json: Option<PathBuf>,
    /// The Swift package; default `swift/` of this source tree.
    pub swift_package: Option<PathBuf>,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            compute_units: ComputeUnits::ALL.to_vec(),
            warmup: 20,
            iterations: 200,
            batch_sizes: vec![1, 8],
            images: Vec::new(),
            reference: None,
            json: None,
            swift_package: None,
        }
    }
}

impl BenchOptions {
    /// The checks `coreml-bench` would make, done before a (slow) Swift build.
    fn check(&self) -> Result<(), BenchError> {
        let bad = |m: &str| Err(BenchError::Options(m.to_string()));
        if self.compute_units.is_empty() {
            return bad("give at least one compute-unit setting (cpu, gpu, ane, all)");
        }
        if self.iterations == 0 {
            return bad("iterations must be at least 1");
        }
        if self.batch_sizes.contains(&0) {
            return bad("batch sizes must be at least 1");
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct BenchOutcome {
    pub report: BenchReport,
    pub json: PathBuf,
    pub chart: Chart,
}

/// `runs/m.mlpackage` -> `runs/m.bench.json` (like `pipeline verify`'s `m.verify.json`).
pub fn default_json_path(package: &Path) -> PathBuf {
    package.with_extension("bench.json")
}

/// The harness's raw measurements beside the report: `m.bench.json` -> `m.bench.raw.json`.
pub fn raw_path_for(json: &Path) -> PathBuf {
    json.with_extension("raw.json")
}

/// The chart beside a report: `m.bench.json` -> `m.bench.png`.
pub fn chart_path_for(json: &Path) -> PathBuf {
    json.with_extension("png")
}

fn join<T: ToString>(items: &[T]) -> String {
    items.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

/// The arguments of `coreml-bench` for these options (after the program name).
pub fn coreml_bench_args(package: &Path, json: &Path, opts: &BenchOptions) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        package.into(),
        "--compute-units".into(),
        join(&opts.compute_units).into(),
        "--warmup".into(),
        opts.warmup.to_string().into(),
        "--iterations".into(),
        opts.iterations.to_string().into(),
    ];
    if !opts.batch_sizes.is_empty() {
        args.push("--batch".into());
        args.push(join(&opts.batch_sizes).into());
    }
    // One `--image=FILE` each: a file name starting with `-` cannot be taken for an option.
    for image in &opts.images {
        let mut arg = OsString::from("--image=");
        arg.push(image);
        args.push(arg);
    }
    if let Some(r) = &opts.reference {
        args.push("--reference".into());
        args.push(r.into());
    }
    args.push("--json".into());
    args.push(json.into());
    args
}

/// Benchmarks `package` with `coreml-bench` (macOS only), then reads the report and
/// writes its chart next to it.
/// `opts` with the batch sizes a package was exported for (`export --batch`, recorded in
/// its metadata) added, so the harness times the stacked batches an app would send.
pub fn with_package_batches(package: &Path, opts: &BenchOptions) -> BenchOptions {
    let mut o = opts.clone();
    // The description is enough: the weights stay on disk.
    let listed = crate::coreml::interp::Package::read_spec(package)
        .ok()
        .and_then(|model| {
            model
                .description
                .as_ref()?
                .metadata
                .as_ref()?
                .user_defined
                .get(crate::coreml::export::BATCH_SIZES_KEY)
                .cloned()
        })
        .unwrap_or_default();
    for b in listed
        .split(',')
        .filter_map(|b| b.trim().parse::<u32>().ok())
    {
        if !o.batch_sizes.contains(&b) {
            o.batch_sizes.push(b);
        }
    }
    o.batch_sizes.sort_unstable();
    o
}

pub fn bench_package(package: &Path, opts: &BenchOptions) -> Result<BenchOutcome, BenchError> {
    opts.check()?;
    if !cfg!(target_os = "macos") {
        return Err(BenchError::Unsupported(format!(
            "cannot benchmark {}: Core ML needs macOS (this is {}). Run the benchmark on a Mac, \
             or render an existing report with `--report FILE.json`.",
            package.display(),
            std::env::consts::OS
        )));
    }
    let swift = opts
        .swift_package
        .clone()
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("swift"));
    let exe = build_harness(&swift)?;
    let json = opts
        .json
        .clone()
        .unwrap_or_else(|| default_json_path(package));
    // The harness writes raw measurements; the report is computed here from them.
    let raw = raw_path_for(&json);
    let opts = &with_package_batches(package, opts);
    run(Command::new(&exe).args(coreml_bench_args(package, &raw, opts)))?;
    let reference = opts
        .reference
        .as_deref()
        .map(super::ReferenceFile::read)
        .transpose()?;
    let report = super::raw::report_from_raw(&raw, reference.as_ref())?;
    write_report(&report, &json)?;
    let chart = render_chart(&report, &chart_path_for(&json))?;
    Ok(BenchOutcome {
        report,
        json,
        chart,
    })
}

/// Writes the report (schema v1) atomically: a reader never sees half of one.
fn write_report(report: &BenchReport, path: &Path) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(report).map_err(|e| BenchError::Invalid {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    crate::fsutil::write_file_atomically(path, text.as_bytes()).map_err(|source| BenchError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// `swift build -c release` and the path of the built `coreml-bench`.
fn build_harness(swift: &Path) -> Result<PathBuf, BenchError> {
    let build = |extra: &[&str]| {
        let mut c = Command::new("swift");
        c.args(["build", "-c", "release", "--package-path"])
            .arg(swift)
            .args(extra);
        c
    };
    run(&mut build(&[]))?;
    let out = build(&["--show-bin-path"])
        .output()
        .map_err(|e| tool_error(&build(&["--show-bin-path"]), e.to_string()))?;
    if !out.status.success() {
        return Err(tool_error(
            &build(&["--show-bin-path"]),
            out.status.to_string(),
        ));
    }
    let bin = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(Path::new(&bin).join("coreml-bench"))
}

fn tool_error(cmd: &Command, status: String) -> BenchError {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    BenchError::Tool {
        command: words.join(" "),
        status,
    }
}

/// Runs a command with inherited stdout/stderr, so its progress and errors show.
fn run(cmd: &mut Command) -> Result<(), BenchError> {
    let status = cmd.status().map_err(|e| tool_error(cmd, e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(tool_error(cmd, status.to_string()))
    }
}
