//! Agreement between two sets of outputs: a compute unit against `cpu`, or against the
//! `--reference` file. Outputs are flattened per example in one order on both sides:
//! multiarrays row-major, class probabilities by class label (the harness's dictionaries
//! have no order of their own, so both sides are sorted by label).

use std::collections::BTreeMap;

use super::report::{Agreement, AgreementBaseline, OutputComparison};
use super::ReferenceFile;

/// One example's outputs, by name.
pub type ExampleOutputs = BTreeMap<String, Vec<f32>>;

/// Outputs whose argmax is a class: top-1 agreement is reported for these.
const CLASS_SCORES: [&str; 2] = ["logits", "classLabel_probs"];

/// Index of the largest value (the first on ties); NaN never wins, so a NaN output
/// disagrees with any finite one.
fn argmax(values: &[f32]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, v) in values.iter().enumerate() {
        if v.is_nan() || best.is_some_and(|b| values[b] >= *v) {
            continue;
        }
        best = Some(i);
    }
    best
}

/// Compares every output both sides have, in name order.
pub fn compare(
    candidate: &[ExampleOutputs],
    baseline: &[ExampleOutputs],
    name: AgreementBaseline,
) -> Result<Agreement, String> {
    if candidate.len() != baseline.len() {
        return Err(format!(
            "{} examples against {} in the baseline",
            candidate.len(),
            baseline.len()
        ));
    }
    let (Some(first_c), Some(first_b)) = (candidate.first(), baseline.first()) else {
        return Err("no examples to compare".into());
    };
    let shared = first_c.keys().filter(|k| first_b.contains_key(*k));
    let outputs = shared
        .map(|output| compare_output(output, candidate, baseline))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Agreement {
        baseline: name,
        examples: u32::try_from(baseline.len()).map_err(|e| e.to_string())?,
        outputs,
    })
}

fn compare_output(
    output: &str,
    candidate: &[ExampleOutputs],
    baseline: &[ExampleOutputs],
) -> Result<OutputComparison, String> {
    let (mut max_diff, mut scale, mut elements, mut agreeing) = (0f32, 0f32, 0u64, 0usize);
    let empty = Vec::new();
    for (i, (c, b)) in candidate.iter().zip(baseline).enumerate() {
        let (c, b) = (
            c.get(output).unwrap_or(&empty),
            b.get(output).unwrap_or(&empty),
        );
        if c.len() != b.len() {
            return Err(format!(
                "`{output}`, example {i}: {} values against {} in the baseline",
                c.len(),
                b.len()
            ));
        }
        for (x, y) in c.iter().zip(b) {
            // Callers refuse non-finite outputs first (JSON cannot carry NaN).
            max_diff = max_diff.max((x - y).abs());
            scale = scale.max(y.abs());
        }
        elements += c.len() as u64;
        agreeing += usize::from(argmax(c) == argmax(b));
    }
    let class_scores = CLASS_SCORES.contains(&output);
    Ok(OutputComparison {
        output: output.to_string(),
        elements,
        max_abs_diff: f64::from(max_diff),
        baseline_max_abs: f64::from(scale),
        top1_agreement: class_scores.then(|| agreeing as f64 / baseline.len() as f64),
    })
}

/// The reference file's expected outputs per example, `classLabel_probs` reordered from
/// `class_labels` order to label order (the order the raw dictionaries are sorted into).
pub fn expected_outputs(reference: &ReferenceFile) -> Vec<ExampleOutputs> {
    let examples = reference.outputs.values().next().map_or(0, |t| t.shape[0]);
    (0..examples)
        .map(|i| {
            let mut out = ExampleOutputs::new();
            for (name, t) in &reference.outputs {
                let per = t.data.len() / t.shape[0];
                let values = t.data[i * per..(i + 1) * per].to_vec();
                let values = match (name.as_str(), &reference.class_labels) {
                    ("classLabel_probs", Some(labels)) => by_label(labels, &values),
                    _ => values,
                };
                out.insert(name.clone(), values);
            }
            out
        })
        .collect()
}

/// `values[i]` belongs to `labels[i]`; returns them in label order.
pub fn by_label(labels: &[String], values: &[f32]) -> Vec<f32> {
    let mut pairs: Vec<(&String, f32)> = labels.iter().zip(values.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    pairs.into_iter().map(|(_, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(name: &str, v: &[f32]) -> ExampleOutputs {
        BTreeMap::from([(name.to_string(), v.to_vec())])
    }

    #[test]
    fn differences_scale_and_top1_per_output() {
        let base = [ex("logits", &[1.0, 3.0]), ex("logits", &[2.0, -4.0])];
        let cand = [ex("logits", &[1.5, 3.0]), ex("logits", &[1.0, 1.5])];
        let a = compare(&cand, &base, AgreementBaseline::Cpu).unwrap();
        let o = &a.outputs[0];
        assert_eq!(
            (o.elements, o.max_abs_diff, o.baseline_max_abs),
            (4, 5.5, 4.0)
        );
        assert_eq!(o.top1_agreement, Some(0.5));
        // Features have no top-1.
        let f = compare(
            &[ex("embedding", &[1.0])],
            &[ex("embedding", &[1.0])],
            AgreementBaseline::Cpu,
        );
        assert_eq!(f.unwrap().outputs[0].top1_agreement, None);
    }

    #[test]
    fn nan_never_wins_the_argmax_and_mismatched_sizes_are_errors() {
        assert_eq!(argmax(&[f32::NAN, 0.0]), Some(1));
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), None);
        let one = [ex("logits", &[1.0])];
        assert!(compare(&one, &[ex("logits", &[1.0, 2.0])], AgreementBaseline::Cpu).is_err());
        assert!(compare(&[], &one, AgreementBaseline::Cpu).is_err());
    }

    #[test]
    fn labels_order_probabilities() {
        let labels = ["b".to_string(), "a".to_string()];
        assert_eq!(by_label(&labels, &[0.9, 0.1]), vec![0.1, 0.9]);
    }
}
