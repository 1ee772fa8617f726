//! What an export writes into the model's metadata: the user's descriptive fields and
//! the facts other stages and apps read back (precision, layout, batch sizes,
//! preprocessing, compression, tool version).

use std::collections::BTreeMap;

use super::compress::CompressStats;
use super::export::{ExportMetadata, Resolved};
use super::package::ModelMetadata;
use super::vit::Layout;
use crate::config::ModelConfig;

/// Metadata key holding the weight precision, so `verify` can pick its thresholds.
pub const PRECISION_KEY: &str = "precision";

/// Metadata key naming the Neural Engine layout (absent for the standard layout).
pub const LAYOUT_KEY: &str = "layout";

/// Metadata key listing the batch sizes a multiArray input accepts ("1,8,16").
pub const BATCH_SIZES_KEY: &str = "batch_sizes";

/// Metadata key holding the checkpoint's evaluation preprocessing as JSON (mean, std,
/// `resize_shorter`), so an app, or `pipeline predict` on the package alone, can prepare
/// images as the model was trained to see them.
pub const PREPROCESS_KEY: &str = "preprocess";

/// Metadata keys describing compressed weights.
pub mod compression_keys {
    /// The method (`int8`, `int4`, `palette8`, ...).
    pub const METHOD: &str = "compression";
    /// The method's settings in words.
    pub const SETTINGS: &str = "compression_settings";
    /// How many weights were compressed.
    pub const TENSORS: &str = "compression_tensors";
    /// Their size as fp16, bytes.
    pub const BYTES_FP16: &str = "compression_weight_bytes_fp16";
    /// Their size compressed (data, scales, palettes), bytes.
    pub const BYTES: &str = "compression_weight_bytes";
}

pub(super) fn metadata(
    meta: &ExportMetadata,
    cfg: &ModelConfig,
    r: &Resolved,
    compression: Option<&CompressStats>,
) -> ModelMetadata {
    let precision = r.precision;
    let mut ud = BTreeMap::new();
    let base = meta
        .base_model
        .clone()
        .unwrap_or_else(|| cfg.provenance.source.clone());
    if !base.is_empty() {
        ud.insert("base_model".to_string(), base);
    }
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            ud.insert(k.to_string(), v.clone());
        }
    };
    put("adapters_hash", &meta.adapters_hash);
    put("dataset", &meta.dataset);
    put("val_accuracy", &meta.val_accuracy.map(|a| format!("{a}")));
    ud.insert(PRECISION_KEY.into(), precision.to_string());
    ud.insert(
        PREPROCESS_KEY.into(),
        serde_json::to_string(&cfg.preprocess).expect("preprocess is plain data"),
    );
    if r.layout == Layout::Ane {
        ud.insert(LAYOUT_KEY.into(), "ane".into());
    }
    if !r.batch_sizes.is_empty() {
        let list: Vec<String> = r.batch_sizes.iter().map(|b| b.to_string()).collect();
        ud.insert(BATCH_SIZES_KEY.into(), list.join(","));
    }
    if let Some(c) = compression {
        use compression_keys as k;
        ud.insert(k::METHOD.into(), c.method.to_string());
        ud.insert(k::SETTINGS.into(), c.settings.clone());
        ud.insert(k::TENSORS.into(), c.tensors.to_string());
        ud.insert(k::BYTES_FP16.into(), c.bytes_fp16.to_string());
        ud.insert(k::BYTES.into(), c.bytes.to_string());
    }
    ud.insert(
        "tool_version".into(),
        concat!(env!("CARGO_PKG_NAME"), " ", env!("CARGO_PKG_VERSION")).into(),
    );
    ud.extend(
        meta.user_defined
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    ModelMetadata {
        short_description: meta.description.clone().unwrap_or_default(),
        version: meta.version.clone().unwrap_or_default(),
        author: meta.author.clone().unwrap_or_default(),
        license: meta.license.clone().unwrap_or_default(),
        user_defined: ud,
    }
}
