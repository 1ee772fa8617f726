//! `export`: a checkpoint folder in, a `.mlpackage` out, written atomically and with
//! byte-identical results for identical inputs.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::time::Instant;

use prost::Message;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::config::ModelConfig;
use crate::coreml::blob::BlobWriter;
use crate::coreml::compress::{self, CompressError, CompressOptions, CompressStats, Pipeline};
use crate::coreml::mil::{DType, ProgramBuilder};
use crate::coreml::package::{self, PackagePaths};
use crate::coreml::target::{Precision, Target};
use crate::coreml::vit::{self, EmitError, InputKind, Layout, OutputKind, VitOptions};
use crate::fsutil;

/// Descriptive metadata stored in the model (shown by Xcode and readable with
/// coremltools). `None` fields are left out.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExportMetadata {
    pub author: Option<String>,
    pub license: Option<String>,
    pub description: Option<String>,
    pub version: Option<String>,
    /// Defaults to the checkpoint's provenance source.
    pub base_model: Option<String>,
    /// Hash of merged adapters, when the weights are a fine-tune.
    pub adapters_hash: Option<String>,
    pub dataset: Option<String>,
    pub val_accuracy: Option<f64>,
    /// Further user-defined entries (they win over the ones above on equal keys).
    pub user_defined: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    pub precision: Precision,
    /// `None`: the lowest target that supports the other options.
    pub target: Option<Target>,
    pub input: InputKind,
    /// `None`: `classifier` when the model has a head, else `features`.
    pub output: Option<OutputKind>,
    /// fp16 multiArray inputs and outputs (needs iOS16); otherwise they are fp32 and
    /// the program casts at its edges.
    pub io_fp16: bool,
    /// `None`: the fused `scaled_dot_product_attention` op when the target has it
    /// (iOS18), matmul + softmax before. `Some(true)` requires iOS18.
    pub fused_attention: Option<bool>,
    pub metadata: ExportMetadata,
    /// Replace an existing package.
    pub force: bool,
    /// Compress the large linear and patch-embedding weights (the rest stays in
    /// `precision`). With fp32 precision the scales and palettes are fp32 too.
    pub compress: Option<CompressOptions>,
    /// How activations are laid out inside the program (outputs are the same).
    pub layout: Layout,
    /// Batch sizes a multiArray input accepts (Core ML's enumerated shapes); empty or
    /// `[1]`: one input at a time.
    pub batch_sizes: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("unsupported export options: {0}")]
    Unsupported(String),
    #[error("{path}: {msg}")]
    InvalidOutput { path: PathBuf, msg: String },
    #[error("{path}: already exists (pass --force to replace it)")]
    Exists { path: PathBuf },
    #[error("building the program: {0}")]
    Emit(#[from] EmitError),
    #[error(transparent)]
    Compress(#[from] CompressError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The options after defaults and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub target: Target,
    pub precision: Precision,
    pub input: InputKind,
    pub output: OutputKind,
    pub io_fp16: bool,
    pub fused_attention: bool,
    pub compress: Option<CompressOptions>,
    pub layout: Layout,
    /// Sorted, without duplicates; empty for a fixed batch of 1.
    pub batch_sizes: Vec<usize>,
}

/// The batch sizes after checks: sorted, unique, empty when only 1.
fn resolve_batches(
    sizes: &[usize],
    input: InputKind,
    output: OutputKind,
) -> Result<Vec<usize>, ExportError> {
    let mut v = sizes.to_vec();
    v.sort_unstable();
    v.dedup();
    if v.is_empty() || v == [1] {
        return Ok(Vec::new());
    }
    let bad = |m: &str| Err(ExportError::Unsupported(m.into()));
    if v.first() == Some(&0) {
        return bad("batch sizes must be at least 1");
    }
    if input == InputKind::Image {
        return bad(
            "image inputs take one image per prediction; batch sizes need `--input array` (a [N, 3, H, W] multiArray)",
        );
    }
    if output == OutputKind::Classifier {
        return bad(
            "a classifier returns one label per prediction; batch sizes need `--output logits` or `features`",
        );
    }
    Ok(v)
}

/// Applies defaults and rejects combinations Core ML cannot run.
pub fn resolve(opts: &ExportOptions, cfg: &ModelConfig) -> Result<Resolved, ExportError> {
    let unsupported = |m: String| Err(ExportError::Unsupported(m));
    let output = match opts.output {
        Some(o) => o,
        None if cfg.num_classes > 0 => OutputKind::Classifier,
        None => OutputKind::Features,
    };
    if output != OutputKind::Features && cfg.num_classes == 0 {
        return unsupported(format!(
            "`{}` output needs a classification head, and this model has none (num_classes = 0); use `features`",
            serde_json::to_value(output).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
        ));
    }
    if opts.io_fp16 && opts.input == InputKind::Image && output == OutputKind::Classifier {
        return unsupported(
            "fp16 I/O applies to multiArray features, and an image-in, classifier-out model has none".into(),
        );
    }
    // Each requirement: (minimum target, why).
    let mut needs: Vec<(Target, &str)> = Vec::new();
    if opts.io_fp16 {
        needs.push((Target::Ios16, "fp16 multiArray inputs/outputs"));
    }
    if opts.fused_attention == Some(true) {
        needs.push((Target::Ios18, "the fused scaled_dot_product_attention op"));
    }
    let compress_need = match &opts.compress {
        Some(c) => {
            c.validate()?;
            Some(c.min_target())
        }
        None => None,
    };
    let lowest = needs
        .iter()
        .map(|n| n.0)
        .chain(compress_need.as_ref().map(|n| n.0))
        .max()
        .unwrap_or(Target::Ios15);
    let target = match opts.target {
        None => lowest,
        Some(t) => {
            if let Some((need, why)) = compress_need.as_ref().filter(|n| t < n.0) {
                return unsupported(format!(
                    "{why} needs {need} or later (specification version {}), but the target is {t}; leave --target out or pass --target {need}",
                    need.spec_version()
                ));
            }
            if let Some((need, why)) = needs.iter().find(|n| t < n.0) {
                return unsupported(format!(
                    "{why} need {need} or later (specification version {}), but the target is {t}",
                    need.spec_version()
                ));
            }
            t
        }
    };
    let ane = opts.layout == Layout::Ane;
    if ane && opts.fused_attention == Some(true) {
        return unsupported(
            "the Neural Engine layout splits attention per head; it has no fused attention op"
                .into(),
        );
    }
    if ane && opts.compress.is_some() {
        return unsupported(
            "compressed weights are written for the standard layout only (the Neural Engine layout's 1x1 convolutions need 4-D compressed weights, not done yet)".into(),
        );
    }
    Ok(Resolved {
        target,
        precision: opts.precision,
        input: opts.input,
        output,
        io_fp16: opts.io_fp16,
        fused_attention: !ane && opts.fused_attention.unwrap_or(target >= Target::Ios18),
        compress: opts.compress.clone(),
        layout: opts.layout,
        batch_sizes: resolve_batches(&opts.batch_sizes, opts.input, output)?,
    })
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ExportTimings {
    pub load_ms: f64,
    /// Building the program, including converting and writing the weights.
    pub emit_ms: f64,
    /// Serializing and writing the model spec and manifest, renaming into place.
    pub finish_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub package: PathBuf,
    pub target: Target,
    pub spec_version: i32,
    pub opset: String,
    pub precision: Precision,
    pub input: InputKind,
    pub output: OutputKind,
    pub io_fp16: bool,
    pub fused_attention: bool,
    pub parameters: usize,
    pub model_bytes: u64,
    pub weights_bytes: u64,
    pub package_bytes: u64,
    pub blobs_stored: usize,
    pub blobs_deduplicated: usize,
    pub ops_total: usize,
    pub op_counts: BTreeMap<String, usize>,
    /// What compression did (`None` without `--compress`).
    pub compression: Option<CompressStats>,
    pub layout: Layout,
    /// Batch sizes the multiArray input accepts (empty: 1).
    pub batch_sizes: Vec<usize>,
    /// A static reading of what the program asks of the Neural Engine.
    pub neural_engine: crate::coreml::ane_report::AneReport,
    pub timings: ExportTimings,
}

impl fmt::Display for ExportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mb = |b: u64| b as f64 / 1e6;
        writeln!(f, "package        {}", self.package.display())?;
        writeln!(
            f,
            "target         {} (spec {}, opset {}), {}, input {:?}, output {:?}{}{}",
            self.target,
            self.spec_version,
            self.opset,
            self.precision,
            self.input,
            self.output,
            if self.io_fp16 { ", fp16 I/O" } else { "" },
            if self.fused_attention {
                ", fused attention"
            } else {
                ""
            },
        )?;
        writeln!(f, "parameters     {}", self.parameters)?;
        writeln!(
            f,
            "size           {:.2} MB (model {:.3} MB, weights {:.2} MB; {} blobs, {} deduplicated)",
            mb(self.package_bytes),
            mb(self.model_bytes),
            mb(self.weights_bytes),
            self.blobs_stored,
            self.blobs_deduplicated
        )?;
        if let Some(c) = &self.compression {
            writeln!(
                f,
                "compression    {}: {} tensors, {:.3} MB as fp16 -> {:.3} MB ({:.2}x); {}",
                c.method,
                c.tensors,
                mb(c.bytes_fp16),
                mb(c.bytes),
                c.bytes as f64 / c.bytes_fp16.max(1) as f64,
                c.settings
            )?;
            if !c.skipped.is_empty() {
                let more = c.skipped.len().saturating_sub(3);
                writeln!(
                    f,
                    "  {} kept uncompressed (shape): {}{}",
                    c.skipped.len(),
                    c.skipped[..c.skipped.len().min(3)].join(", "),
                    if more > 0 {
                        format!(", and {more} more")
                    } else {
                        String::new()
                    }
                )?;
            }
        }
        writeln!(
            f,
            "layout         {}{}",
            match self.layout {
                Layout::Standard => "standard",
                Layout::Ane => "ane (Neural Engine: [1, C, 1, T], 1x1 conv, attention per head)",
            },
            if self.batch_sizes.is_empty() {
                String::new()
            } else {
                format!("; batch sizes {:?}", self.batch_sizes)
            }
        )?;
        writeln!(f, "ops            {} in all", self.ops_total)?;
        for (k, v) in &self.op_counts {
            writeln!(f, "  {k:<30} {v:>6}")?;
        }
        write!(f, "{}", self.neural_engine)?;
        write!(
            f,
            "time           {:.1} ms (load {:.1}, emit {:.1}, finish {:.1})",
            self.timings.total_ms,
            self.timings.load_ms,
            self.timings.emit_ms,
            self.timings.finish_ms
        )
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Exports the checkpoint in `checkpoint_dir` to the package `out` (`NAME.mlpackage`).
/// The package is built in a temporary sibling and renamed into place; on error nothing
/// is left behind, and an existing package is replaced only with `opts.force`.
pub fn export(
    checkpoint_dir: &Path,
    out: &Path,
    opts: &ExportOptions,
) -> Result<ExportReport, ExportError> {
    let t0 = Instant::now();
    if out.extension().and_then(|e| e.to_str()) != Some("mlpackage") || out.file_stem().is_none() {
        return Err(ExportError::InvalidOutput {
            path: out.into(),
            msg: "the output must be a NAME.mlpackage path".into(),
        });
    }
    if out.exists() && !opts.force {
        return Err(ExportError::Exists { path: out.into() });
    }
    let ck = Checkpoint::load(checkpoint_dir)?;
    let resolved = resolve(opts, &ck.config)?;
    let load_ms = ms(t0);

    let mut inner: Option<ExportError> = None;
    let mut built: Option<(Written, f64)> = None;
    let res = fsutil::write_dir_atomically(out, opts.force, |tmp| {
        let t = Instant::now();
        match write_package(tmp, &ck, &resolved, &opts.metadata) {
            Ok(w) => {
                built = Some((w, ms(t)));
                Ok(())
            }
            Err(e) => {
                inner = Some(e);
                Err(io::Error::other("export failed"))
            }
        }
    });
    if let Err(source) = res {
        return Err(match inner {
            Some(e) => e,
            None if source.kind() == io::ErrorKind::AlreadyExists
                && out.exists()
                && !opts.force =>
            {
                ExportError::Exists { path: out.into() }
            }
            None => ExportError::Io {
                path: out.into(),
                source,
            },
        });
    }
    let (w, write_ms) = built.expect("set when the fill succeeded");
    let total_ms = ms(t0);
    Ok(ExportReport {
        package: out.to_path_buf(),
        target: resolved.target,
        spec_version: resolved.target.spec_version(),
        opset: resolved.target.opset().into(),
        precision: resolved.precision,
        input: resolved.input,
        output: resolved.output,
        io_fp16: resolved.io_fp16,
        fused_attention: resolved.fused_attention,
        parameters: ck.config.num_parameters(),
        model_bytes: w.model_bytes,
        weights_bytes: w.weights_bytes,
        package_bytes: w.model_bytes + w.weights_bytes + w.manifest_bytes,
        blobs_stored: w.blobs_stored,
        blobs_deduplicated: w.blobs_deduplicated,
        ops_total: w.op_counts.values().sum(),
        op_counts: w.op_counts,
        compression: w.compression,
        layout: resolved.layout,
        batch_sizes: resolved.batch_sizes.clone(),
        neural_engine: w.neural_engine,
        timings: ExportTimings {
            load_ms,
            emit_ms: w.emit_ms,
            finish_ms: (write_ms - w.emit_ms) + (total_ms - load_ms - write_ms),
            total_ms,
        },
    })
}

struct Written {
    model_bytes: u64,
    weights_bytes: u64,
    manifest_bytes: u64,
    blobs_stored: usize,
    blobs_deduplicated: usize,
    op_counts: BTreeMap<String, usize>,
    compression: Option<CompressStats>,
    neural_engine: crate::coreml::ane_report::AneReport,
    emit_ms: f64,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

use super::metadata::metadata;
pub use super::metadata::{
    compression_keys, BATCH_SIZES_KEY, LAYOUT_KEY, PRECISION_KEY, PREPROCESS_KEY,
};

fn write_package(
    root: &Path,
    ck: &Checkpoint,
    r: &Resolved,
    meta: &ExportMetadata,
) -> Result<Written, ExportError> {
    let t = Instant::now();
    let paths = PackagePaths::new(root);
    let wdir = paths.weights_dir();
    fs::create_dir_all(&wdir).map_err(io_at(&wdir))?;
    let wpath = paths.weight_file();
    let file = fs::File::create(&wpath).map_err(io_at(&wpath))?;
    let mut blobs =
        BlobWriter::new(BufWriter::with_capacity(1 << 20, file)).map_err(io_at(&wpath))?;

    let prec = match r.precision {
        Precision::Fp16 => DType::F16,
        Precision::Fp32 => DType::F32,
    };
    let vopts = VitOptions {
        precision: prec,
        io_dtype: if r.io_fp16 { DType::F16 } else { DType::F32 },
        input: r.input,
        output: r.output,
        fused_attention: r.fused_attention,
        layout: r.layout,
        flexible_batch: !r.batch_sizes.is_empty(),
    };
    let mut b = ProgramBuilder::new(r.target, &mut blobs);
    let (io, compression) = match &r.compress {
        None => (vit::emit_vit(&mut b, ck, &vopts)?, None),
        Some(c) => {
            let st = ck.tensors();
            let cands: Vec<compress::Candidate> = vit::compressible_weights(&ck.config, r.output)
                .into_iter()
                .filter_map(|name| {
                    let shape = st.tensor(&name).ok()?.shape().to_vec();
                    Some(compress::Candidate { name, shape })
                })
                .collect();
            let sel = compress::select(&cands, c)?;
            let items = sel
                .chosen
                .into_iter()
                .map(|c| {
                    let data = st
                        .tensor(&c.name)
                        .map_err(|e| EmitError::Tensor {
                            name: c.name.clone(),
                            msg: e.to_string(),
                        })?
                        .data();
                    Ok((c, data))
                })
                .collect::<Result<Vec<_>, EmitError>>()?;
            let skipped = sel
                .skipped
                .into_iter()
                .map(|(n, why)| format!("{n} ({why})"))
                .collect();
            let pipeline = Pipeline::new(items, c, prec, r.target, skipped);
            let (io, stats) =
                pipeline.run(|p| vit::emit_vit_compressed(&mut b, ck, &vopts, Some(p)));
            let io = io.map_err(|e| match e {
                EmitError::Compress(c) => ExportError::Compress(c),
                e => ExportError::Emit(e),
            })?;
            (io, Some(stats))
        }
    };
    let mut io = io;
    io.batch_sizes = r.batch_sizes.clone();
    let outputs: Vec<&str> = io.outputs.iter().map(|f| f.name.as_str()).collect();
    let mut built = b.finish(&outputs).map_err(EmitError::from)?;
    if !r.batch_sizes.is_empty() {
        crate::coreml::mil::batch::make_batch_flexible(&mut built.program)
            .map_err(EmitError::from)?;
    }
    let neural_engine = crate::coreml::ane_report::read(&built.program);
    let (w, stats) = blobs.finish().map_err(io_at(&wpath))?;
    // Flush errors surface here; like checkpoints, packages are not fsynced.
    w.into_inner().map_err(|e| io_at(&wpath)(e.into_error()))?;
    let emit_ms = ms(t);

    let model = package::model(
        r.target.spec_version(),
        &io,
        &metadata(meta, &ck.config, r, compression.as_ref()),
        built.program,
    );
    let bytes = model.encode_to_vec();
    let mpath = paths.model();
    fs::write(&mpath, &bytes).map_err(io_at(&mpath))?;
    let manifest = package::manifest(&bytes, &stats.digest);
    let man_path = paths.manifest();
    fs::write(&man_path, &manifest).map_err(io_at(&man_path))?;
    Ok(Written {
        model_bytes: bytes.len() as u64,
        weights_bytes: stats.bytes,
        manifest_bytes: manifest.len() as u64,
        blobs_stored: stats.stored,
        blobs_deduplicated: stats.deduplicated,
        op_counts: built.op_counts,
        compression,
        neural_engine,
        emit_ms,
    })
}
