//! The `pipeline` command: one subcommand per stage, each a thin call into the library.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use mlx_coreml_pipeline as lib;

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
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    Convert {
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
    },
    /// Describe a checkpoint: architecture, parameter counts, tensors.
    Inspect {
        /// Checkpoint folder.
        dir: PathBuf,
        /// List every tensor with its shape.
        #[arg(long)]
        tensors: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
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
    Embed {
        /// Checkpoint folder.
        #[arg(long, short)]
        model: PathBuf,
        /// Safetensors file with pre-normalised [N, 3, H, W] pixels.
        #[arg(long, conflicts_with = "images")]
        pixels: Option<PathBuf>,
        /// Image files.
        images: Vec<PathBuf>,
        /// Output safetensors file.
        #[arg(long, short)]
        out: PathBuf,
        /// Images per forward pass.
        #[arg(long, default_value_t = 16)]
        batch: usize,
    },
    /// Class names and probabilities for images, from a checkpoint or an exported package.
    #[command(
        long_about = "Top-k classes with probabilities per image. With --model DIR (a \
        checkpoint with a head) the MLX forward runs; with a PKG.mlpackage our interpreter \
        runs the package's own program (its classifier probabilities, or the softmax of a \
        logits output), preparing each image as the package's metadata says (resize the \
        shorter side, centre-crop, and for multiArray inputs normalise). Core ML itself \
        will run it on a Mac once the macOS runtime path exists. A backbone without a head, \
        a package with only features, or an unreadable image is an error naming it."
    )]
    Predict {
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
    },
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
    Train(TrainArgs),
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
    Launch {
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
    },
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
    Merge {
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
    },
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
    Run(RunArgs),
    /// Benchmark a package with Core ML on CPU, GPU and Neural Engine (macOS), or render a report.
    #[command(
        long_about = "On macOS: builds the Swift harness in swift/ (swift build -c \
        release) and runs it on the package: compile and load times, latency percentiles, \
        throughput, batch throughput, the compute plan (which ops leave the Neural Engine) \
        and agreement between compute units. Writes NAME.bench.json and a bar chart \
        NAME.bench.png and prints a table per compute unit. Elsewhere, --report FILE.json \
        renders an existing report."
    )]
    Bench(BenchArgs),
    /// Write a Core ML package (.mlpackage) from a checkpoint, without Python or coremltools.
    #[command(
        long_about = "Write an ML Program .mlpackage directly: our protobuf schema, \
        MIL program and weight blob. The deployment target defaults to the lowest that \
        supports the options (iOS18 uses the fused attention op). Written to a temporary \
        path and renamed; an existing package is replaced only with --force."
    )]
    Export(ExportArgs),
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
    Verify {
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
    },
}

/// `pipeline verify --runtime`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Runtime {
    Interp,
    Coreml,
}

#[derive(clap::Args)]
struct BenchArgs {
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
    #[arg(long, default_value = "1,8")]
    batch: String,
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
        let units = self
            .compute_units
            .split(',')
            .map(|u| {
                serde_json::from_value::<lib::bench::ComputeUnits>(serde_json::Value::String(
                    u.trim().to_string(),
                ))
                .with_context(|| format!("--compute-units: `{u}` is not cpu, gpu, ane or all"))
            })
            .collect::<Result<Vec<_>>>()?;
        let batch_sizes = self
            .batch
            .split(',')
            .map(|b| {
                b.trim()
                    .parse::<u32>()
                    .with_context(|| format!("--batch: `{b}` is not a number"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(lib::bench::BenchOptions {
            compute_units: units,
            warmup: self.warmup,
            iterations: self.iterations,
            batch_sizes,
            images: self.image.clone(),
            reference: self.reference.clone(),
            json: self.json.clone(),
            swift_package: None,
        })
    }
}

#[derive(clap::Args)]
struct RunArgs {
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

#[derive(clap::Args)]
struct ExportArgs {
    /// Checkpoint folder.
    model: PathBuf,
    /// Output package, NAME.mlpackage.
    #[arg(long, short)]
    out: PathBuf,
    /// fp16 (default) or fp32.
    #[arg(long, default_value = "fp16")]
    precision: lib::coreml::Precision,
    /// iOS15, iOS16, iOS17 or iOS18 (default: lowest that supports the options).
    #[arg(long)]
    target: Option<lib::coreml::Target>,
    /// image (RGB, preprocessing built in) or array (normalised float multiArray).
    #[arg(long, default_value = "image", value_parser = ["image", "array"])]
    input: String,
    /// classifier, logits or features (default: classifier with a head, else features).
    #[arg(long, value_parser = ["classifier", "logits", "features"])]
    output: Option<String>,
    /// fp16 multiArray inputs/outputs (iOS16+).
    #[arg(long)]
    io_fp16: bool,
    #[arg(long)]
    author: Option<String>,
    #[arg(long)]
    license: Option<String>,
    #[arg(long)]
    description: Option<String>,
    #[arg(long)]
    version: Option<String>,
    /// Extra metadata entries KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    /// Replace an existing package.
    #[arg(long)]
    force: bool,
    /// Compress the large linear and patch-embedding weights: int8 (per-output-channel
    /// symmetric, iOS16+), palette8/palette6/palette4/palette2 (k-means palettes of
    /// 256/64/16/4 entries, iOS16+) or int4 (per-block symmetric, iOS18+). The Neural
    /// Engine wants per-channel int8 or palettes; per-block int4 is meant for Mac GPUs.
    /// Everything else stays fp16 (with --precision fp32: fp32, scales and palettes too).
    #[arg(
        long,
        value_name = "METHOD",
        value_parser = ["int8", "int4", "palette8", "palette6", "palette4", "palette2"]
    )]
    compress: Option<String>,
    /// Palettes: one palette per group of N output channels instead of one per tensor
    /// (iOS18+).
    #[arg(long, value_name = "N", requires = "compress")]
    group_size: Option<usize>,
    /// int4: input channels per scale [default: 32].
    #[arg(long, value_name = "N", requires = "compress")]
    block_size: Option<usize>,
    /// Compress only weights with more than N elements.
    #[arg(long, value_name = "N", default_value_t = lib::coreml::compress::DEFAULT_MIN_ELEMENTS)]
    compress_min_elements: usize,
    /// Activation layout inside the program: `standard` ([1, T, D] tokens, linear
    /// layers, as a PyTorch trace gives) or `ane` (Apple's Neural Engine recipe:
    /// [1, C, 1, T] activations, 1x1 convolutions, attention split per head, LayerNorm
    /// over channels, nothing above rank 4). Inputs and outputs are the same either way.
    /// Export prints a static reading of what the package asks of the Neural Engine;
    /// where ops really run is measured on a Mac (MLComputePlan, `pipeline bench`).
    #[arg(long, default_value = "standard", value_parser = ["standard", "ane"])]
    layout: String,
    /// Batch sizes a multiArray input accepts, e.g. `1,8,16` (Core ML's enumerated
    /// shapes; needs `--input array` and logits or features output).
    #[arg(
        long,
        value_name = "N,N,...",
        value_delimiter = ',',
        default_value = "1"
    )]
    batch: Vec<usize>,
}

impl ExportArgs {
    fn options(&self) -> Result<lib::coreml::ExportOptions> {
        use lib::coreml::{ExportMetadata, ExportOptions, InputKind, OutputKind};
        let mut user_defined = std::collections::BTreeMap::new();
        for kv in &self.meta {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--meta `{kv}` is not KEY=VALUE"))?;
            user_defined.insert(k.to_string(), v.to_string());
        }
        Ok(ExportOptions {
            precision: self.precision,
            target: self.target,
            input: if self.input == "array" {
                InputKind::Array
            } else {
                InputKind::Image
            },
            output: self.output.as_deref().map(|o| match o {
                "classifier" => OutputKind::Classifier,
                "logits" => OutputKind::Logits,
                _ => OutputKind::Features,
            }),
            io_fp16: self.io_fp16,
            metadata: ExportMetadata {
                author: self.author.clone(),
                license: self.license.clone(),
                description: self.description.clone(),
                version: self.version.clone(),
                user_defined,
                ..Default::default()
            },
            force: self.force,
            compress: match &self.compress {
                None => None,
                Some(m) => Some(lib::coreml::compress::CompressOptions {
                    method: m.parse()?,
                    group_size: self.group_size,
                    block_size: self.block_size,
                    min_elements: self.compress_min_elements,
                    threads: 0,
                }),
            },
            layout: if self.layout == "ane" {
                lib::coreml::vit::Layout::Ane
            } else {
                lib::coreml::vit::Layout::Standard
            },
            batch_sizes: self.batch.clone(),
            ..Default::default()
        })
    }
}

#[cfg(feature = "mlx")]
#[derive(clap::Args)]
struct TrainArgs {
    /// Base checkpoint folder.
    #[arg(long, short, required_unless_present = "resume")]
    model: Option<PathBuf>,
    /// Training data: image folder, .csv, .json or .jsonl.
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Where MLX trains: auto (the GPU when MLX's CUDA build and an NVIDIA GPU are
    /// there, else the CPU), cpu or gpu.
    #[arg(long, default_value = "auto")]
    device: lib::backend::DeviceChoice,
    /// Validation data (default: DATA/val for folders).
    #[arg(long)]
    val_data: Option<PathBuf>,
    /// Run folder for everything the run writes.
    #[arg(long, short, required_unless_present = "resume")]
    out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint, with its saved settings.
    #[arg(long, conflicts_with_all = ["model", "data", "out"])]
    resume: Option<PathBuf>,
    /// Start over in an existing run folder.
    #[arg(long)]
    force: bool,
    /// lora or full.
    #[arg(long, default_value = "lora", value_parser = ["lora", "full"])]
    mode: String,
    #[arg(long, default_value_t = 8)]
    rank: usize,
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f32,
    /// all, attention, mlp, or a list such as attn.qkv,mlp.fc1.
    #[arg(long, default_value = "all")]
    targets: String,
    /// Also train LayerNorm parameters (LoRA mode).
    #[arg(long)]
    train_norms: bool,
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f32,
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    /// cosine, linear or constant (after warm-up).
    #[arg(long, default_value = "cosine")]
    schedule: lib::train::Schedule,
    /// Clip gradients to this global norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f32,
    /// Recompute block activations in the backward pass: much less memory, some more time.
    #[arg(long)]
    grad_checkpoint: bool,
    /// float32, or bfloat16 (bf16 activations and matmuls with float32 master weights,
    /// optimizer state and loss; for GPUs: on the CPU bf16 is many times slower).
    #[arg(long, default_value = "float32")]
    precision: lib::train::Precision,
    /// Evaluate every N steps (0 = every epoch).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Save the resumable checkpoint every N steps (0 = every epoch).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
    /// val_top1 or val_loss: which evaluation picks best/.
    #[arg(long, default_value = "val_top1", value_parser = ["val_top1", "val_loss"])]
    best_metric: String,
    /// Stop after N evaluations without improvement (0 = off).
    #[arg(long, default_value_t = 0)]
    early_stopping: usize,
    /// Stop after N optimizer steps (0 = all epochs).
    #[arg(long, default_value_t = 0)]
    max_steps: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image decoding threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// CPU training: cores to spread each batch over, as parts of a few images computed at
    /// once (0 = every available core, 1 = whole batches on one stream). Ignored on a GPU.
    #[arg(long, default_value_t = 0)]
    cpu_threads: usize,
    /// No random resized crop / flip.
    #[arg(long)]
    no_augment: bool,
    /// fail (default) or skip unreadable images.
    #[arg(long, default_value = "fail", value_parser = ["fail", "skip"])]
    bad_images: String,
    /// Data-parallel training: auto (join the group MLX's launch variables describe:
    /// MLX_RANK + MLX_HOSTFILE for ring, MLX_RANK + MLX_WORLD_SIZE + NCCL_HOST_IP +
    /// NCCL_PORT for NCCL), off (ignore them), or any/ring/mpi/nccl.
    #[arg(long, default_value = "auto")]
    distributed: lib::distributed::Choice,
    /// Every training setting as JSON (how `pipeline run` hands its settings to the ranks
    /// it launches); the setting flags are then ignored.
    #[arg(long, hide = true)]
    settings: Option<PathBuf>,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

#[cfg(feature = "mlx")]
impl TrainArgs {
    fn config(&self) -> lib::train::TrainConfig {
        use lib::train::*;
        TrainConfig {
            data: self.data.clone().unwrap_or_default(),
            val_data: self.val_data.clone(),
            mode: if self.mode == "full" {
                Mode::Full
            } else {
                Mode::Lora
            },
            lora: LoraConfig {
                rank: self.rank,
                alpha: self.alpha,
                dropout: self.lora_dropout,
                targets: self.targets.clone(),
            },
            train_norms: self.train_norms,
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            weight_decay: self.weight_decay,
            warmup_steps: self.warmup_steps,
            schedule: self.schedule,
            clip_norm: self.clip_norm,
            grad_checkpoint: self.grad_checkpoint,
            precision: self.precision,
            eval_every: self.eval_every,
            save_every: self.save_every,
            best_metric: if self.best_metric == "val_loss" {
                BestMetric::ValLoss
            } else {
                BestMetric::ValTop1
            },
            early_stopping: self.early_stopping,
            max_steps: self.max_steps,
            seed: self.seed,
            workers: self.workers,
            cpu_threads: self.cpu_threads,
            augment: !self.no_augment,
            bad_images: if self.bad_images == "skip" {
                BadImagePolicy::Skip
            } else {
                BadImagePolicy::Fail
            },
            // `pipeline launch` starts ranks; a `train` process is one of them.
            ranks: 1,
        }
    }
}

/// Moves onto MLX's CUDA build when the device choice asks for a GPU (re-executing this
/// program), then makes the device MLX's default.
#[cfg(feature = "mlx")]
fn use_device(choice: lib::backend::DeviceChoice, quiet: bool) -> Result<()> {
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

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        // `{:#}` prints the whole context chain on one line: "converting X: file: problem".
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Convert {
            source,
            out,
            force,
            revision,
            list_presets,
            image_size,
        } => {
            if list_presets {
                for p in lib::convert::preset::PRESETS {
                    let params = p.config().num_parameters();
                    println!("{:<22} {:>8.1}M  {}", p.name, params as f64 / 1e6, p.about);
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
            println!(
                "converted {} ({}): {} tensors, {:.2}M parameters -> {} in {:.2}s",
                r.source,
                r.family,
                r.tensors,
                r.parameters as f64 / 1e6,
                r.out.display(),
                r.seconds
            );
            if !r.dropped.is_empty() {
                println!("dropped (training-only): {}", r.dropped.join(", "));
            }
        }
        Command::Inspect { dir, tensors, json } => {
            let i = lib::inspect::inspect(&dir)
                .with_context(|| format!("inspecting {}", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                print!("{}", i.display(tensors));
            }
        }
        #[cfg(feature = "mlx")]
        Command::Embed {
            model,
            pixels,
            images,
            out,
            batch,
        } => {
            let input = match pixels {
                Some(p) => lib::embed::EmbedInput::Pixels(p),
                None => lib::embed::EmbedInput::Images(images),
            };
            let r = lib::embed::embed(&model, &input, &out, batch)
                .with_context(|| format!("embedding with {}", model.display()))?;
            println!(
                "embedded {} inputs -> {}: last_hidden_state {:?}, pooled {:?}{}",
                r.count,
                r.out.display(),
                r.tokens_shape,
                r.pooled_shape,
                r.logits_shape
                    .map(|s| format!(", logits {s:?}"))
                    .unwrap_or_default()
            );
        }
        Command::Predict {
            model,
            package,
            mut images,
            top_k,
            json,
            runtime,
            compute_units,
        } => {
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
            let r =
                lib::predict::predict_on(&predictor, &images, top_k, on).context("predicting")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{r}");
            }
        }
        #[cfg(feature = "mlx")]
        Command::Train(args) => {
            use_device(args.device, args.quiet)?;
            let cfg = match &args.settings {
                Some(p) => lib::train::TrainConfig::from_json_file(p)?,
                None => args.config(),
            };
            let (model, out, resume) = match &args.resume {
                Some(run) => (PathBuf::new(), run.clone(), true),
                None => (
                    args.model.clone().expect("required"),
                    args.out.clone().expect("required"),
                    false,
                ),
            };
            let group = lib::distributed::Group::join(args.distributed)
                .context("joining the data-parallel group")?;
            let r = lib::train::train_in_group(
                &model, &out, &cfg, resume, args.force, args.quiet, &group,
            )
            .with_context(|| match group.is_distributed() {
                true => format!("rank {}: training into {}", group.rank(), out.display()),
                false => format!("training into {}", out.display()),
            })?;
            println!(
                "trained {} steps in {:.1}s ({:.2} img/s, {:.1}% waiting for data){}",
                r.steps,
                r.seconds,
                r.images_per_second,
                100.0 * r.data_wait_fraction,
                r.final_eval
                    .as_ref()
                    .map(|e| format!("; val top-1 {:.2}%, loss {:.4}", 100.0 * e.top1, e.loss))
                    .unwrap_or_default()
            );
            if r.skipped_images > 0 {
                println!("skipped {} unreadable images", r.skipped_images);
            }
            println!(
                "output: {}  (summary: {})",
                r.output.display(),
                r.run.join("summary.md").display()
            );
        }
        #[cfg(feature = "mlx")]
        Command::Merge {
            base,
            adapters,
            out,
            force,
        } => {
            let r = lib::merge::merge(&base, &adapters, &out, force).with_context(|| {
                format!("merging {} into {}", adapters.display(), base.display())
            })?;
            println!(
                "merged {} adapted layers{} ({}) -> {}; max |adapter - merged| on a probe batch of {}: {:.2e}",
                r.layers_merged,
                if r.replaced.is_empty() { String::new() } else { format!(" and {} trained tensors", r.replaced.len()) },
                r.adapters_format,
                r.out.display(),
                r.probe_batch,
                r.max_abs_diff
            );
        }
        #[cfg(feature = "mlx")]
        Command::Run(args) => {
            use_device(args.device, args.quiet)?;
            let r = lib::run::run(&args.config, &args.set, args.from.as_deref(), args.quiet)
                .with_context(|| format!("running {}", args.config.display()))?;
            for s in &r.stages {
                println!("{:<8} {:<20} {}", s.stage, s.status, s.summary);
            }
            println!("package: {}", r.package.display());
            println!("summary: {}", r.run.join("summary.md").display());
        }
        Command::Launch {
            ranks,
            hosts,
            backend,
            quiet,
            command,
        } => {
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
        }
        #[cfg(feature = "mlx")]
        Command::Doctor => {
            lib::backend::prepare(lib::backend::DeviceChoice::Auto)?;
            lib::backend::select(lib::backend::DeviceChoice::Auto)?;
            for (k, v) in lib::backend::doctor() {
                println!("{:<17} {v}", format!("{k}:"));
            }
            println!("{:<17} {}", "core ml:", lib::coreml_runtime::availability());
        }
        Command::Bench(args) => {
            if let Some(path) = &args.report {
                let report = lib::bench::load_report(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                print!("{report}");
                let png = lib::bench::chart_path_for(path);
                let chart = lib::bench::render_chart(&report, &png)?;
                println!("{chart}");
            } else {
                let pkg = args.package.clone().expect("required");
                let opts = args.options()?;
                let out = lib::bench::bench_package(&pkg, &opts)
                    .with_context(|| format!("benchmarking {}", pkg.display()))?;
                print!("{}", out.report);
                println!("{}", out.chart);
                println!("report: {}", out.json.display());
            }
        }
        Command::Export(args) => {
            let opts = args.options()?;
            let r = lib::coreml::export(&args.model, &args.out, &opts)
                .with_context(|| format!("exporting {}", args.model.display()))?;
            println!("{r}");
        }
        Command::Verify {
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
        } => {
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
            println!("{r}");
            let json = json.unwrap_or_else(|| package.with_extension("verify.json"));
            lib::verify::write_json(&r, &json)?;
            println!("report: {}", json.display());
            if let Some(p) = &reference_out {
                println!("reference for coreml-bench: {}", p.display());
            }
            if !r.pass {
                anyhow::bail!(
                    "{} does not pass ({})",
                    package.display(),
                    r.rule.describe()
                );
            }
        }
    }
    Ok(())
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
    println!("{r}");
    let json = json.unwrap_or_else(|| lib::coreml_runtime::verify::default_json_path(package));
    lib::coreml_runtime::verify::write_json(&r, &json)?;
    println!("report: {}", json.display());
    if !r.pass {
        anyhow::bail!("{} does not pass on Core ML", package.display());
    }
    Ok(())
}
