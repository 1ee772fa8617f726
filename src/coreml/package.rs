//! The `.mlpackage` folder: `Manifest.json`, the serialized `Model` and the weight
//! file, plus the model description (typed inputs/outputs, metadata).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::coreml::mil::DType;
use crate::coreml::proto::{mil as milpb, spec};
use crate::coreml::vit::{Feature, FeatureKind, VitIo};

pub const MANIFEST: &str = "Manifest.json";
/// Relative to the package root.
pub const DATA_DIR: &str = "Data/com.apple.CoreML";
pub const MODEL_FILE: &str = "model.mlmodel";
pub const WEIGHTS_DIR: &str = "weights";
pub const WEIGHT_FILE: &str = "weight.bin";

const AUTHOR: &str = "com.apple.CoreML";

/// Where the parts of a package live.
pub struct PackagePaths {
    pub root: PathBuf,
}

impl PackagePaths {
    pub fn new(root: &Path) -> Self {
        PackagePaths {
            root: root.to_path_buf(),
        }
    }
    pub fn manifest(&self) -> PathBuf {
        self.root.join(MANIFEST)
    }
    pub fn data(&self) -> PathBuf {
        self.root.join(DATA_DIR)
    }
    pub fn model(&self) -> PathBuf {
        self.data().join(MODEL_FILE)
    }
    pub fn weights_dir(&self) -> PathBuf {
        self.data().join(WEIGHTS_DIR)
    }
    pub fn weight_file(&self) -> PathBuf {
        self.weights_dir().join(WEIGHT_FILE)
    }
}

/// Model-level metadata as Core ML stores it.
#[derive(Debug, Clone, Default)]
pub struct ModelMetadata {
    pub short_description: String,
    pub version: String,
    pub author: String,
    pub license: String,
    pub user_defined: BTreeMap<String, String>,
}

fn feature(f: &Feature) -> spec::FeatureDescription {
    use spec::feature_type::Type;
    let ty = match &f.kind {
        FeatureKind::Image { width, height } => Type::ImageType(spec::ImageFeatureType {
            width: *width as i64,
            height: *height as i64,
            color_space: spec::image_feature_type::ColorSpace::Rgb as i32,
            size_flexibility: None,
        }),
        FeatureKind::Array { shape, dtype } => Type::MultiArrayType(spec::ArrayFeatureType {
            shape: shape.iter().map(|&d| d as i64).collect(),
            data_type: match dtype {
                DType::F16 => spec::array_feature_type::ArrayDataType::Float16,
                DType::I32 => spec::array_feature_type::ArrayDataType::Int32,
                DType::F64 => spec::array_feature_type::ArrayDataType::Double,
                _ => spec::array_feature_type::ArrayDataType::Float32,
            } as i32,
            shape_flexibility: None,
        }),
        FeatureKind::Label => Type::StringType(spec::StringFeatureType {}),
        FeatureKind::Probabilities => Type::DictionaryType(spec::DictionaryFeatureType {
            key_type: Some(spec::dictionary_feature_type::KeyType::StringKeyType(
                spec::StringFeatureType {},
            )),
        }),
    };
    spec::FeatureDescription {
        name: f.name.clone(),
        short_description: f.description.clone(),
        r#type: Some(spec::FeatureType {
            r#type: Some(ty),
            is_optional: false,
        }),
    }
}

/// A multiArray input that takes each of `batches` on axis 0 (Core ML's enumerated
/// shapes; the declared shape stays batch 1, the default). No batches: unchanged.
fn flexible(mut f: spec::FeatureDescription, batches: &[usize]) -> spec::FeatureDescription {
    use spec::array_feature_type::{EnumeratedShapes, Shape, ShapeFlexibility};
    use spec::feature_type::Type;
    if batches.is_empty() {
        return f;
    }
    if let Some(Type::MultiArrayType(a)) = f.r#type.as_mut().and_then(|t| t.r#type.as_mut()) {
        if let Some(d) = a.shape.first_mut() {
            *d = batches[0] as i64;
        }
        let shapes = batches
            .iter()
            .map(|&b| {
                let mut shape = a.shape.clone();
                if let Some(d) = shape.first_mut() {
                    *d = b as i64;
                }
                Shape { shape }
            })
            .collect();
        a.shape_flexibility = Some(ShapeFlexibility::EnumeratedShapes(EnumeratedShapes {
            shapes,
        }));
    }
    f
}

/// With a flexible batch an output's shape follows the input's, so it is left out of the
/// description (as coremltools does for shapes it cannot state).
fn batch_free(mut f: spec::FeatureDescription, flexible: bool) -> spec::FeatureDescription {
    use spec::feature_type::Type;
    if flexible {
        if let Some(Type::MultiArrayType(a)) = f.r#type.as_mut().and_then(|t| t.r#type.as_mut()) {
            a.shape.clear();
        }
    }
    f
}

/// The complete `Model` message of an ML Program.
pub fn model(
    spec_version: i32,
    io: &VitIo,
    meta: &ModelMetadata,
    program: milpb::Program,
) -> spec::Model {
    let (predicted, probs) = io.classifier.clone().unwrap_or_default();
    spec::Model {
        specification_version: spec_version,
        description: Some(spec::ModelDescription {
            input: io
                .inputs
                .iter()
                .map(|f| flexible(feature(f), &io.batch_sizes))
                .collect(),
            output: io
                .outputs
                .iter()
                .map(|f| batch_free(feature(f), !io.batch_sizes.is_empty()))
                .collect(),
            predicted_feature_name: predicted,
            predicted_probabilities_name: probs,
            metadata: Some(spec::Metadata {
                short_description: meta.short_description.clone(),
                version_string: meta.version.clone(),
                author: meta.author.clone(),
                license: meta.license.clone(),
                user_defined: meta.user_defined.clone(),
            }),
            ..Default::default()
        }),
        is_updatable: false,
        r#type: Some(spec::model::Type::MlProgram(program)),
    }
}

/// A UUID-formatted identifier derived from a hash (so two exports of the same model
/// get the same manifest). Marked as version 8 ("custom") with the RFC variant bits.
pub fn content_uuid(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = crate::checkpoint::hex(&b).to_uppercase();
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// `Manifest.json` text with a fixed key order. Identifiers derive from the model bytes
/// and the weights digest.
pub fn manifest(model_bytes: &[u8], weights_digest: &[u8]) -> String {
    let model_hash = Sha256::digest(model_bytes);
    let model_id = content_uuid(&[b"model.mlmodel", &model_hash, weights_digest]);
    let weights_id = content_uuid(&[b"weights", weights_digest, &model_hash]);
    let entry = |desc: &str, name: &str, path: &str| {
        serde_json::json!({
            "author": AUTHOR,
            "description": desc,
            "name": name,
            "path": path,
        })
    };
    let mut entries = serde_json::Map::new();
    entries.insert(
        model_id.clone(),
        entry(
            "CoreML Model Specification",
            MODEL_FILE,
            "com.apple.CoreML/model.mlmodel",
        ),
    );
    entries.insert(
        weights_id,
        entry(
            "CoreML Model Weights",
            WEIGHTS_DIR,
            "com.apple.CoreML/weights",
        ),
    );
    let mut root = serde_json::Map::new();
    root.insert("fileFormatVersion".into(), "1.0.0".into());
    root.insert("itemInfoEntries".into(), serde_json::Value::Object(entries));
    root.insert("rootModelIdentifier".into(), model_id.into());
    serde_json::to_string_pretty(&serde_json::Value::Object(root)).expect("json serialises") + "\n"
}
