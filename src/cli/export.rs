//! `pipeline export`: a checkpoint written as a Core ML package.

use std::path::PathBuf;

use anyhow::{Context, Result};

use mlx_coreml_pipeline as lib;

#[derive(clap::Args)]
pub struct ExportArgs {
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

    pub fn run(self) -> Result<()> {
        let opts = self.options()?;
        let r = lib::coreml::export(&self.model, &self.out, &opts)
            .with_context(|| format!("exporting {}", self.model.display()))?;
        outln!("{r}");
        Ok(())
    }
}
