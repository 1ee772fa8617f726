//! The subcommands: one module each, holding its arguments and the one library call it
//! makes; this module names them and dispatches.

use anyhow::Result;
use clap::{Parser, Subcommand};

#[cfg(feature = "mlx")]
use mlx_coreml_pipeline as lib;

/// `println!` for a command's output. Rust starts with SIGPIPE ignored, and we keep it so
/// (a SIGPIPE from one of MLX's ring-backend sockets would kill a training rank), so
/// printing into a closed pipe (`pipeline convert --list-presets | head`) is a write
/// error, which `println!` turns into a panic. Its reader has gone: the command ends
/// quietly instead.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::print_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for a command's output (see [`outln`]).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::print_out(format_args!($($arg)*))
    };
}

/// Writes to standard output; a closed pipe ends the process with success, any other
/// write error with an error.
pub(crate) fn print_out(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to standard output: {e}");
        std::process::exit(1);
    }
}

mod bench;
mod convert;
#[cfg(feature = "mlx")]
mod embed;
mod export;
mod inspect;
mod launch;
#[cfg(feature = "mlx")]
mod merge;
mod predict;
#[cfg(feature = "mlx")]
mod run;
#[cfg(feature = "mlx")]
mod train;
mod verify;

#[derive(Parser)]
#[command(
    name = "pipeline",
    version,
    about = "Vision Transformers from pretrained weights to benchmarked Core ML models",
    long_about = "Vision Transformers from pretrained weights to benchmarked Core ML models.\n\n\
        Stages: convert (transformers / timm checkpoints or presets into this tool's \
        checkpoint), train (LoRA or full fine-tuning with MLX), merge (fold adapters), \
        export (write a Core ML .mlpackage), verify (check it without a Mac); plus \
        inspect and embed."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Convert a transformers or timm ViT checkpoint (or a preset) into a checkpoint folder.
    #[command(
        long_about = "Convert a Vision Transformer into this tool's checkpoint \
        (model.json + model.safetensors, float32).\n\n\
        SOURCE is one of:\n  \
        - a local folder with config.json and model.safetensors (transformers \
        ViTModel / ViTForImageClassification / Dinov2Model / Dinov2WithRegistersModel, \
        or timm VisionTransformer as written by save_for_hf)\n  \
        - a Hugging Face repo id such as owkin/phikon (downloaded into the Hugging \
        Face cache; honours HF_HOME, HF_TOKEN and HF_HUB_OFFLINE=1)\n  \
        - preset:NAME for a randomly initialised architecture (see --list-presets)\n\n\
        Every source tensor must be used and every model tensor filled; otherwise \
        nothing is written and the error lists the names."
    )]
    Convert(convert::ConvertArgs),
    /// Describe a checkpoint: architecture, parameter counts, tensors.
    Inspect(inspect::InspectArgs),
    /// Run a checkpoint on images or pixel tensors and save features, pooled output and logits.
    #[cfg(feature = "mlx")]
    #[command(
        long_about = "Run a checkpoint with MLX and write a safetensors file with \
        `last_hidden_state` [N, T, D], `pooled` [N, D] and, for classifiers, `logits` [N, K].\n\n\
        Images are decoded (PNG, JPEG, WebP, BMP), resized so the shorter side matches \
        the checkpoint's preprocessing, centre-cropped and normalised with its mean/std. \
        --pixels takes already-normalised NCHW float tensors instead (the tensor named \
        pixel_values, or the file's only tensor); other sizes than the native one \
        resample the position grid."
    )]
    Embed(embed::EmbedArgs),
    /// Class names and probabilities for images, from a checkpoint or an exported package.
    #[command(
        long_about = "Top-k classes with probabilities per image. With --model DIR (a \
        checkpoint with a head) the MLX forward runs; with a PKG.mlpackage our interpreter \
        runs the package's own program (its classifier probabilities, or the softmax of a \
        logits output), preparing each image as the package's metadata says (resize the \
        shorter side, centre-crop, and for multiArray inputs normalise); with --runtime \
        coreml, Core ML itself runs it (macOS). A backbone without a head, \
        a package with only features, or an unreadable image is an error naming it."
    )]
    Predict(predict::PredictArgs),
    /// Fine-tune a checkpoint with LoRA (default) or fully, on an image folder, CSV or JSON list.
    #[cfg(feature = "mlx")]
    #[command(
        long_about = "Fine-tune with MLX. Data: an image folder with train/ and val/ \
        (class = subfolder), a CSV (image_path,label; paths relative to the CSV) or a \
        JSON / JSONL list of {\"image\", \"label\"}. LoRA goes on all linear layers by \
        default; a new classification head is trained when the classes differ from the \
        base's. The run folder gets adapters/ (or model/ for --mode full, plus PEFT's \
        layout for PyTorch users under adapters/peft*/ for transformers/timm bases: \
        peft/ with transformers 5 or timm module names, peft-transformers4/ with the classic \
        names, -classifier twins carrying the head for a backbone base; each with a README of \
        the Python lines that load it), best/, checkpoint/ \
        (resumable with --resume), metrics.jsonl, curves.png and summary.md/json."
    )]
    Train(train::TrainArgs),
    /// Start the ranks of a data-parallel training run (MLX's ring or NCCL backend).
    #[command(
        long_about = "Start N ranks of `pipeline train` as one data-parallel run over MLX's \
        distributed layer, the way mlx.launch does: on this host on free loopback ports, or \
        N per host of an mlx.launch hostfile ([{\"ssh\": \"host\", \"ips\": [\"10.0.0.2\"]}], \
        started over ssh, same binary path and working folder everywhere). --batch-size \
        stays the global batch (it must divide by the ranks); rank 0 writes the run folder. \
        Every output line is prefixed with its rank; when one rank fails the others are \
        stopped and launch exits with its status.\n\n\
        Example: pipeline launch -n 2 -- train --model base --data data --out run"
    )]
    Launch(launch::LaunchArgs),
    /// Which MLX library and device training would use, and what is missing for a GPU.
    #[cfg(feature = "mlx")]
    Doctor,
    /// Fold LoRA adapters into their base and write a plain checkpoint.
    #[cfg(feature = "mlx")]
    #[command(
        long_about = "Fold LoRA adapters into their base and write a plain checkpoint, ready \
        for export. --adapters takes our adapters (RUN/adapters, RUN/best; checked against \
        the base's content hash) or a PEFT LoRA folder trained in PyTorch on the base you \
        converted (adapter_config.json + adapter_model.safetensors; transformers 4 or 5 or \
        timm module names, r, lora_alpha, use_rslora, a modules_to_save head or norms). \
        What cannot be folded is refused with the key or setting named: DoRA, bias other \
        than \"none\", other PEFT types, per-module rank/alpha patterns, LoRA outside the \
        linear layers, shapes of another base, pickled .bin adapters."
    )]
    Merge(merge::MergeArgs),
    /// Run every stage from a TOML config: convert, train, merge, export, verify, bench.
    #[cfg(feature = "mlx")]
    #[command(
        long_about = "Run every stage into one run folder: the converted model, \
        training run (adapters, curves, metrics), merged model, model.mlpackage, \
        verify.json, reference.json (for coreml-bench --reference) and summary.md/json. \
        A stage whose inputs did not change (settings and content hashes of what it reads) \
        is not redone; an interrupted training resumes. \
        Unknown keys in the config are errors with their line. See examples/quickstart.toml."
    )]
    Run(run::RunArgs),
    /// Benchmark a package with Core ML on CPU, GPU and Neural Engine (macOS), or render a report.
    #[command(
        long_about = "On macOS: builds the Swift harness in swift/ (swift build -c \
        release) and runs it on the package: compile and load times, latency percentiles, \
        throughput, batch throughput, the compute plan (which ops leave the Neural Engine) \
        and agreement between compute units. Writes NAME.bench.json and a bar chart \
        NAME.bench.png and prints a table per compute unit. Elsewhere, --report FILE.json \
        renders an existing report."
    )]
    Bench(bench::BenchArgs),
    /// Write a Core ML package (.mlpackage) from a checkpoint, without Python or coremltools.
    #[command(
        long_about = "Write an ML Program .mlpackage directly: our protobuf schema, \
        MIL program and weight blob. The deployment target defaults to the lowest that \
        supports the options (iOS18 uses the fused attention op). Written to a temporary \
        path and renamed; an existing package is replaced only with --force."
    )]
    Export(export::ExportArgs),
    /// Check a package against its checkpoint (MLX) or saved reference outputs, with our MIL interpreter.
    #[command(
        long_about = "Runs the package through our interpreter of the MIL ops we emit \
        (float32 arithmetic, fp16 values rounded as Core ML stores them) and compares with \
        the MLX forward of --model, or with --reference outputs (a safetensors file with \
        pixel_values and last_hidden_state / pooled / logits, as `pipeline embed` writes). \
        Inputs: --images, the reference's pixels, or a seeded probe batch. Fails (exit 1) \
        beyond the thresholds: fp32 max abs error under 1e-4 of the output scale; fp16 \
        relative error under 1e-2 and 100% top-1 agreement. --reference-out FILE.json \
        writes those inputs and reference outputs for `coreml-bench --reference` (swift/), \
        to compare Core ML on a Mac with the same reference."
    )]
    Verify(verify::VerifyArgs),
}

/// `--runtime` of `pipeline verify` and `pipeline predict`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    Interp,
    Coreml,
}

impl Command {
    pub fn run(self) -> Result<()> {
        match self {
            Command::Convert(a) => a.run(),
            Command::Inspect(a) => a.run(),
            #[cfg(feature = "mlx")]
            Command::Embed(a) => a.run(),
            Command::Predict(a) => a.run(),
            #[cfg(feature = "mlx")]
            Command::Train(a) => a.run(),
            Command::Launch(a) => a.run(),
            #[cfg(feature = "mlx")]
            Command::Doctor => doctor(),
            #[cfg(feature = "mlx")]
            Command::Merge(a) => a.run(),
            #[cfg(feature = "mlx")]
            Command::Run(a) => a.run(),
            Command::Bench(a) => a.run(),
            Command::Export(a) => a.run(),
            Command::Verify(a) => a.run(),
        }
    }
}

/// An error and its causes on one line, "converting X: file: problem". The library's
/// errors print their cause themselves ("{path}: {source}") and also name it as their
/// `source()`, so a cause whose text already ends the line is not repeated (anyhow's
/// `{:#}` would print "file: No such file or directory: No such file or directory").
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// `pipeline doctor`.
#[cfg(feature = "mlx")]
fn doctor() -> Result<()> {
    lib::backend::prepare(lib::backend::DeviceChoice::Auto)?;
    lib::backend::select(lib::backend::DeviceChoice::Auto)?;
    for (k, v) in lib::backend::doctor() {
        outln!("{:<17} {v}", format!("{k}:"));
    }
    outln!("{:<17} {}", "core ml:", lib::coreml_runtime::availability());
    Ok(())
}

/// Moves onto MLX's CUDA build when the device choice asks for a GPU (re-executing this
/// program), then makes the device MLX's default.
#[cfg(feature = "mlx")]
pub(super) fn use_device(choice: lib::backend::DeviceChoice, quiet: bool) -> Result<()> {
    lib::backend::prepare(choice)?;
    let ty = lib::backend::select(choice)?;
    if !quiet {
        let name = lib::backend::gpu_name().filter(|_| matches!(ty, mlx_rs::DeviceType::Gpu));
        eprintln!(
            "device: {}{}",
            format!("{ty:?}").to_lowercase(),
            name.map(|n| format!(" ({n})")).unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::one_line;

    /// An error that prints its cause and also returns it from `source()`, as the
    /// library's `#[error("{path}: {source}")]` variants do.
    #[derive(Debug)]
    struct Io(std::io::Error);

    impl std::fmt::Display for Io {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "m/model.json: {}", self.0)
        }
    }

    impl std::error::Error for Io {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_already_printed_are_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Io(io)).context("converting m");
        assert_eq!(one_line(&e), "converting m: m/model.json: no such file");
        // Plain context chains keep every level.
        let e = anyhow::anyhow!("bad header").context("reading a.safetensors");
        assert_eq!(one_line(&e), "reading a.safetensors: bad header");
        assert_eq!(format!("{e:#}"), one_line(&e));
    }
}
