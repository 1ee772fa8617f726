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
        checkpoint), inspect, embed (run a checkpoint with MLX)."
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
        } => {
            if list_presets {
                for p in lib::convert::preset::PRESETS {
                    let params = p.config().num_parameters();
                    println!("{:<22} {:>8.1}M  {}", p.name, params as f64 / 1e6, p.about);
                }
                return Ok(());
            }
            let (source, out) = (source.expect("required"), out.expect("required"));
            let opts = lib::convert::ConvertOptions { force, revision };
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
    }
    Ok(())
}
