//! A static reading of what a program asks of the Neural Engine, from the MIL alone:
//! op counts, and the things Apple documents as keeping work off the ANE or wasting it
//! (tensors above rank 4, dimensions over 16384, fp32 ops, fp16 last axes that are not
//! a multiple of 32 elements / 64 bytes, ops that run on the CPU). It is a reading of
//! the file, not a measurement: where each op really runs is measured on a Mac
//! (`MLComputePlan`, `pipeline bench`, `pipeline verify --runtime coreml`).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::coreml::mil::DType;
use crate::coreml::proto::mil as pb;

/// The ANE compiler's largest spatial dimension.
pub const MAX_DIM: u64 = 16384;
/// fp16 elements in the ANE's 64-byte line.
pub const LINE_FP16: u64 = 32;

/// Op types that Core ML runs outside the Neural Engine whatever the model, and why.
const ELSEWHERE: &[(&str, &str)] = &[(
    "classify",
    "builds the label and the probability dictionary on the CPU",
)];

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AneReport {
    /// Every non-const op by type.
    pub ops_by_type: BTreeMap<String, usize>,
    pub ops: usize,
    /// Values of rank above 4 (op output names).
    pub rank_above_4: Vec<String>,
    /// Values with a dimension over 16384: (name, shape).
    pub dims_over_16384: Vec<(String, Vec<u64>)>,
    /// Non-const ops computing in fp32 (the ANE computes fp16 only).
    pub fp32_ops: Vec<String>,
    /// fp16 values whose last axis is not a multiple of 32 elements: (name, last axis).
    pub unaligned_last_axis: Vec<(String, u64)>,
    /// Ops of types known to run elsewhere: (name, type, why).
    pub known_elsewhere: Vec<(String, String, String)>,
}

fn dims(vt: &pb::ValueType) -> Option<(i32, Vec<Option<u64>>)> {
    let pb::value_type::Type::TensorType(t) = vt.r#type.as_ref()? else {
        return None;
    };
    let d = t
        .dimensions
        .iter()
        .map(|d| match &d.dimension {
            Some(pb::dimension::Dimension::Constant(c)) => Some(c.size),
            _ => None,
        })
        .collect();
    Some((t.data_type, d))
}

/// Reads the `main` function of `program`.
pub fn read(program: &pb::Program) -> AneReport {
    let mut r = AneReport::default();
    let Some(f) = program.functions.get("main") else {
        return r;
    };
    let Some(block) = f.block_specializations.values().next() else {
        return r;
    };
    for op in &block.operations {
        if op.r#type == "const" || op.r#type.starts_with("constexpr_") {
            continue;
        }
        r.ops += 1;
        *r.ops_by_type.entry(op.r#type.clone()).or_default() += 1;
        let name = op
            .outputs
            .first()
            .map(|o| o.name.clone())
            .unwrap_or_default();
        if let Some((_, why)) = ELSEWHERE.iter().find(|(t, _)| *t == op.r#type) {
            r.known_elsewhere
                .push((name.clone(), op.r#type.clone(), (*why).to_string()));
        }
        let mut fp32 = false;
        for o in &op.outputs {
            let Some((dt, shape)) = o.r#type.as_ref().and_then(dims) else {
                continue;
            };
            if shape.len() > 4 {
                r.rank_above_4.push(o.name.clone());
            }
            if shape.iter().flatten().any(|&d| d > MAX_DIM) {
                r.dims_over_16384.push((
                    o.name.clone(),
                    shape.iter().map(|d| d.unwrap_or(0)).collect(),
                ));
            }
            if dt == DType::F32.code() {
                fp32 = true;
            }
            if dt == DType::F16.code() {
                if let Some(Some(last)) = shape.last() {
                    if last % LINE_FP16 != 0 {
                        r.unaligned_last_axis.push((o.name.clone(), *last));
                    }
                }
            }
        }
        if fp32 {
            r.fp32_ops.push(name);
        }
    }
    r
}

fn list<T>(
    f: &mut fmt::Formatter<'_>,
    what: &str,
    v: &[T],
    show: impl Fn(&T) -> String,
) -> fmt::Result {
    if v.is_empty() {
        return writeln!(f, "  {what}: none");
    }
    let shown: Vec<String> = v.iter().take(4).map(show).collect();
    let more = v.len().saturating_sub(4);
    writeln!(
        f,
        "  {what}: {} ({}{})",
        v.len(),
        shown.join(", "),
        if more > 0 {
            format!(", and {more} more")
        } else {
            String::new()
        }
    )
}

impl fmt::Display for AneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "neural engine  static reading of the program (placement is measured on a Mac):"
        )?;
        let types: Vec<String> = self
            .ops_by_type
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(f, "  {} ops: {}", self.ops, types.join(", "))?;
        list(f, "tensors above rank 4", &self.rank_above_4, |s| s.clone())?;
        list(
            f,
            "dimensions over 16384",
            &self.dims_over_16384,
            |(n, s)| format!("{n} {s:?}"),
        )?;
        list(f, "fp32 ops (not on the ANE)", &self.fp32_ops, |s| {
            s.clone()
        })?;
        list(
            f,
            "fp16 last axes not a multiple of 32 (64 bytes)",
            &self.unaligned_last_axis,
            |(n, d)| format!("{n}: {d}"),
        )?;
        list(
            f,
            "ops known to run elsewhere",
            &self.known_elsewhere,
            |(n, t, _)| format!("{n} ({t})"),
        )
    }
}

/// The reading of a whole model (`None` when it is not an ML Program).
pub fn of_model(model: &crate::coreml::proto::spec::Model) -> Option<AneReport> {
    match &model.r#type {
        Some(crate::coreml::proto::spec::model::Type::MlProgram(p)) => Some(read(p)),
        _ => None,
    }
}
