//! Values crossing the Core ML boundary as plain bytes: inputs packed into the layout an
//! `MLMultiArray` or a 32BGRA `CVPixelBuffer` holds, outputs decoded from a multiarray's
//! buffer (any element type, any strides) or a class-probability dictionary. No Apple
//! API here, so all of it is tested on Linux; `macos.rs` only copies these bytes in and out.

use half::f16;

use super::CoreMlError;

/// `MLMultiArrayDataType`s a ViT package uses (float16, float32), plus the two Core ML
/// may hand back for other models (float64, int32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    F16,
    F32,
    F64,
    I32,
}

impl ElementType {
    pub fn size(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 | Self::I32 => 4,
            Self::F64 => 8,
        }
    }

    /// The name the bench report uses (`data_type`).
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "float16",
            Self::F32 => "float32",
            Self::F64 => "float64",
            Self::I32 => "int32",
        }
    }

    /// From `MLMultiArrayDataType`'s raw value: `0x10000 | bits` for floats,
    /// `0x20000 | bits` for integers (Apple's header defines them so).
    pub fn from_core_ml(raw: isize) -> Option<Self> {
        match raw {
            0x10010 => Some(Self::F16),
            0x10020 => Some(Self::F32),
            0x10040 => Some(Self::F64),
            0x20020 => Some(Self::I32),
            _ => None,
        }
    }

    pub fn core_ml_raw(self) -> isize {
        match self {
            Self::F16 => 0x10010,
            Self::F32 => 0x10020,
            Self::F64 => 0x10040,
            Self::I32 => 0x20020,
        }
    }
}

/// One input as Core ML takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum InputValue {
    /// Row-major elements of `dtype`, native (little-endian) byte order.
    MultiArray {
        shape: Vec<usize>,
        dtype: ElementType,
        bytes: Vec<u8>,
    },
    /// 8-bit RGB planes `[3, height, width]` (0..255, rounded and clamped), written into
    /// a 32BGRA pixel buffer by [`write_bgra`].
    Image {
        width: usize,
        height: usize,
        rgb_planes: Vec<u8>,
    },
}

/// `values` as a row-major multiarray buffer of `dtype`.
pub fn pack_multiarray(values: &[f32], dtype: ElementType) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * dtype.size());
    for &v in values {
        match dtype {
            ElementType::F16 => out.extend_from_slice(&f16::from_f32(v).to_le_bytes()),
            ElementType::F32 => out.extend_from_slice(&v.to_le_bytes()),
            ElementType::F64 => out.extend_from_slice(&f64::from(v).to_le_bytes()),
            // Integer inputs are indices: round to nearest, as a cast would truncate.
            ElementType::I32 => out.extend_from_slice(&(v.round() as i32).to_le_bytes()),
        }
    }
    out
}

/// 0..255 planes `[3, H, W]` as bytes, rounded and clamped: what a pixel buffer can hold
/// (the same rounding `coreml-bench` applies to reference images).
pub fn image_planes(values: &[f32], width: usize, height: usize) -> Result<Vec<u8>, CoreMlError> {
    if values.len() != 3 * width * height {
        return Err(CoreMlError::Input(format!(
            "an image input of {width}x{height} takes {} values (3 planes), got {}",
            3 * width * height,
            values.len()
        )));
    }
    Ok(values
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect())
}

/// Writes RGB planes into a 32BGRA buffer of `height` rows of `row_bytes` (Core Video
/// may pad rows beyond `4 * width`). Alpha is opaque.
pub fn write_bgra(
    planes: &[u8],
    width: usize,
    height: usize,
    dst: &mut [u8],
    row_bytes: usize,
) -> Result<(), CoreMlError> {
    let plane = width * height;
    if planes.len() != 3 * plane || row_bytes < 4 * width || dst.len() < row_bytes * height {
        return Err(CoreMlError::Input(format!(
            "pixel buffer of {} bytes ({row_bytes} per row) cannot hold a {width}x{height} image",
            dst.len()
        )));
    }
    for y in 0..height {
        let row = &mut dst[y * row_bytes..y * row_bytes + 4 * width];
        for x in 0..width {
            let i = y * width + x;
            let px = &mut row[4 * x..4 * x + 4];
            px[0] = planes[2 * plane + i];
            px[1] = planes[plane + i];
            px[2] = planes[i];
            px[3] = 255;
        }
    }
    Ok(())
}

/// Reads a multiarray's buffer into row-major f32s. `strides` are in elements, as
/// `MLMultiArray.strides` gives them: outputs of the GPU and the Neural Engine are often
/// padded (the last axis rounded up), so walking the shape with strides is required.
pub fn decode_multiarray(
    bytes: &[u8],
    dtype: ElementType,
    shape: &[usize],
    strides: &[usize],
) -> Result<Vec<f32>, CoreMlError> {
    if shape.len() != strides.len() {
        return Err(CoreMlError::Output(format!(
            "multiarray shape {shape:?} and strides {strides:?} differ in rank"
        )));
    }
    let count: usize = shape.iter().product();
    if count == 0 {
        return Ok(Vec::new());
    }
    let last = shape
        .iter()
        .zip(strides)
        .map(|(d, s)| (d - 1) * s)
        .sum::<usize>();
    if (last + 1) * dtype.size() > bytes.len() {
        return Err(CoreMlError::Output(format!(
            "multiarray {shape:?} with strides {strides:?} reaches past its {} bytes",
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(count);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..count {
        let offset: usize = index.iter().zip(strides).map(|(i, s)| i * s).sum();
        out.push(read_element(bytes, dtype, offset));
        // Odometer increment, last axis fastest: row-major order.
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Ok(out)
}

fn read_element(bytes: &[u8], dtype: ElementType, offset: usize) -> f32 {
    let at = offset * dtype.size();
    let b = &bytes[at..at + dtype.size()];
    match dtype {
        ElementType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
        ElementType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        ElementType::F64 => {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }
        ElementType::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
    }
}

/// One output as Core ML gave it.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputValue {
    MultiArray {
        shape: Vec<usize>,
        data: Vec<f32>,
    },
    /// A classifier's class -> probability dictionary, in no particular order.
    Probabilities(Vec<(String, f64)>),
    /// A classifier's predicted label.
    Label(String),
    Number(f64),
}

/// Probabilities in `labels` order (the package's class order, which our interpreter and
/// the reference use): Core ML's dictionary has none of its own.
pub fn order_probabilities(
    probs: &[(String, f64)],
    labels: &[String],
) -> Result<Vec<f32>, CoreMlError> {
    if probs.len() != labels.len() {
        return Err(CoreMlError::Output(format!(
            "the classifier gave {} probabilities for {} class labels",
            probs.len(),
            labels.len()
        )));
    }
    labels
        .iter()
        .map(|label| {
            probs
                .iter()
                .find(|(l, _)| l == label)
                .map(|(_, p)| *p as f32)
                .ok_or_else(|| {
                    CoreMlError::Output(format!("no probability for class label `{label}`"))
                })
        })
        .collect()
}

/// A prediction's numeric outputs as flat f32s by name, the form `coreml::verify::compare`
/// takes: multiarrays row-major, probabilities in `labels` order; labels are left out
/// (the probabilities carry the same decision in comparable form).
pub fn flatten(
    outputs: &[(String, OutputValue)],
    labels: Option<&[String]>,
) -> Result<Vec<(String, Vec<f32>)>, CoreMlError> {
    let mut flat = Vec::new();
    for (name, value) in outputs {
        let values = match value {
            OutputValue::MultiArray { data, .. } => data.clone(),
            OutputValue::Probabilities(p) => {
                let labels = labels.ok_or_else(|| {
                    CoreMlError::Output(format!(
                        "`{name}` is a probability dictionary but the model names no class labels"
                    ))
                })?;
                order_probabilities(p, labels)?
            }
            OutputValue::Number(x) => vec![*x as f32],
            OutputValue::Label(_) => continue,
        };
        flat.push((name.clone(), values));
    }
    Ok(flat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp16_and_fp32_round_trip_through_their_buffers() {
        let values = [0.0f32, 1.5, -2.25, 65504.0, 1e-3];
        for dtype in [ElementType::F16, ElementType::F32, ElementType::F64] {
            let bytes = pack_multiarray(&values, dtype);
            assert_eq!(bytes.len(), values.len() * dtype.size());
            let back = decode_multiarray(&bytes, dtype, &[5], &[1]).unwrap();
            for (a, b) in values.iter().zip(&back) {
                let tol = if dtype == ElementType::F16 {
                    1e-3 * a.abs().max(1.0)
                } else {
                    0.0
                };
                assert!((a - b).abs() <= tol, "{dtype:?}: {a} -> {b}");
            }
        }
    }

    #[test]
    fn padded_strides_are_walked_in_row_major_order() {
        // A [2, 3] array whose rows are padded to 4 elements, as the Neural Engine does.
        let padded = [1.0f32, 2.0, 3.0, 99.0, 4.0, 5.0, 6.0, 99.0];
        let bytes = pack_multiarray(&padded, ElementType::F32);
        let got = decode_multiarray(&bytes, ElementType::F32, &[2, 3], &[4, 1]).unwrap();
        assert_eq!(got, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        // Transposed strides read columns.
        let got = decode_multiarray(&bytes, ElementType::F32, &[3, 2], &[1, 4]).unwrap();
        assert_eq!(got, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    #[test]
    fn buffers_too_short_for_their_strides_are_errors() {
        let bytes = pack_multiarray(&[1.0, 2.0], ElementType::F32);
        let err = decode_multiarray(&bytes, ElementType::F32, &[2, 2], &[2, 1]).unwrap_err();
        assert!(err.to_string().contains("reaches past"), "{err}");
        assert!(decode_multiarray(&bytes, ElementType::F32, &[2], &[1, 1]).is_err());
    }

    #[test]
    fn images_become_bgra_rows_with_padding() {
        // 2x1 image: planes R = [255, 0], G = [0, 0], B = [10.4, 300] (rounded, clamped).
        let planes = image_planes(&[255.0, 0.0, 0.0, 0.0, 10.4, 300.0], 2, 1).unwrap();
        assert_eq!(planes, vec![255, 0, 0, 0, 10, 255]);
        let mut buf = vec![7u8; 12];
        write_bgra(&planes, 2, 1, &mut buf, 12).unwrap();
        // Pixel 0 is R 255, G 0, B 10; pixel 1 is pure blue.
        assert_eq!(&buf[..8], &[10, 0, 255, 255, 255, 0, 0, 255]);
        assert_eq!(&buf[8..], &[7, 7, 7, 7], "padding is left alone");
        assert!(write_bgra(&planes, 2, 1, &mut buf, 4).is_err());
        assert!(image_planes(&[0.0; 5], 2, 1).is_err());
    }

    #[test]
    fn probabilities_follow_the_label_order() {
        let probs = vec![("b".to_string(), 0.7), ("a".to_string(), 0.3)];
        let labels = ["a".to_string(), "b".to_string()];
        assert_eq!(
            order_probabilities(&probs, &labels).unwrap(),
            vec![0.3, 0.7]
        );
        let wrong = ["a".to_string(), "c".to_string()];
        assert!(order_probabilities(&probs, &wrong).is_err());
        let outputs = vec![
            ("classLabel".to_string(), OutputValue::Label("b".into())),
            (
                "classLabel_probs".to_string(),
                OutputValue::Probabilities(probs),
            ),
        ];
        let flat = flatten(&outputs, Some(&labels)).unwrap();
        assert_eq!(flat, vec![("classLabel_probs".to_string(), vec![0.3, 0.7])]);
        assert!(flatten(&outputs, None).is_err());
    }

    #[test]
    fn core_ml_data_type_values_map_both_ways() {
        for t in [
            ElementType::F16,
            ElementType::F32,
            ElementType::F64,
            ElementType::I32,
        ] {
            assert_eq!(ElementType::from_core_ml(t.core_ml_raw()), Some(t));
        }
        assert_eq!(ElementType::from_core_ml(0x20008), None);
    }
}
