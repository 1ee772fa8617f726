//! `verify`: runs a package in our interpreter on reference inputs and compares its
//! outputs with reference outputs (plain f32 arrays from anywhere: saved fixtures, the
//! MLX model, a test's own forward).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::coreml::interp::{InterpError, Output, Package, Tensor};
use crate::coreml::target::Precision;
use crate::coreml::vit::names;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Interp(#[from] InterpError),
    #[error("reference: {0}")]
    Reference(String),
}

/// Pass thresholds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Thresholds {
    /// Largest allowed `max abs error / max abs reference value`.
    pub max_relative_error: f64,
    /// Smallest allowed fraction of rows whose argmax agrees (class scores only).
    pub min_top1_agreement: f64,
}

impl Thresholds {
    pub fn for_precision(p: Precision) -> Self {
        match p {
            // fp32: max abs error under 1e-4 of the output scale.
            Precision::Fp32 => Thresholds {
                max_relative_error: 1e-4,
                min_top1_agreement: 1.0,
            },
            Precision::Fp16 => Thresholds {
                max_relative_error: 1e-2,
                min_top1_agreement: 1.0,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputCheck {
    /// The reference's name.
    pub reference: String,
    /// The package output it was compared with.
    pub output: String,
    pub elements: usize,
    pub max_abs_error: f64,
    /// Max abs value of the reference: the output scale.
    pub reference_scale: f64,
    /// `max_abs_error / reference_scale`.
    pub relative_error: f64,
    /// For class scores: fraction of rows whose argmax agrees.
    pub top1_agreement: Option<f64>,
    /// Disagreeing rows whose reference top-2 scores are closer than twice the observed
    /// max abs error: ties the package's precision cannot order. They are reported and
    /// not counted against the top-1 requirement.
    pub top1_ties: usize,
    pub pass: bool,
}

/// Which rule decided `pass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Every output within the precision's error thresholds (uncompressed packages).
    Thresholds,
    /// Compressed, labelled data: the package's top-1 at most `max_top1_drop` points
    /// below the reference model's on the same images.
    Top1Drop,
    /// Compressed, no labels: the package's top-1 agrees with the reference model's on
    /// at least `min_agreement` of the examples.
    Agreement,
    /// Compressed, no class scores (a features package): relative error under
    /// `compressed_max_relative_error`.
    CompressedError,
}

impl Rule {
    pub fn describe(self) -> &'static str {
        match self {
            Rule::Thresholds => "error thresholds of the precision",
            Rule::Top1Drop => "compressed: top-1 on labelled data against the model's",
            Rule::Agreement => "compressed: top-1 agreement with the model (no labels given)",
            Rule::CompressedError => "compressed features: loose relative error",
        }
    }
}

/// Top-1 of the package and of the reference model on labelled examples.
#[derive(Debug, Clone, Serialize)]
pub struct AccuracyCheck {
    pub examples: usize,
    /// Fractions in 0..1.
    pub package_top1: f64,
    pub reference_top1: f64,
    /// Fraction of examples where both predict the same class.
    pub agreement: f64,
}

/// How compressed packages are judged (uncompressed ones use `Thresholds`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CompressedRules {
    /// Points of top-1 the package may lose on labelled data.
    pub max_top1_drop: f64,
    /// Fraction of top-1 agreement without labels.
    pub min_agreement: f64,
    /// Relative error allowed for a compressed package without class scores.
    pub max_relative_error: f64,
}

impl Default for CompressedRules {
    fn default() -> Self {
        CompressedRules {
            max_top1_drop: 1.0,
            min_agreement: 0.95,
            max_relative_error: 0.1,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub package: PathBuf,
    pub precision: Precision,
    /// Examples run (the reference batch size).
    pub examples: usize,
    pub thresholds: Thresholds,
    /// The rule that decided `pass`.
    pub rule: Rule,
    /// The package's weight compression (its metadata), when it has one.
    pub compression: Option<String>,
    /// Top-1 on labelled data, when labels were given.
    pub accuracy: Option<AccuracyCheck>,
    pub outputs: Vec<OutputCheck>,
    pub pass: bool,
    /// A static reading of what the package asks of the Neural Engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub neural_engine: Option<crate::coreml::ane_report::AneReport>,
}

/// Row-wise argmax of class scores, `classes` per row.
pub fn predictions(scores: &[f32], classes: usize) -> Vec<usize> {
    scores.chunks(classes.max(1)).map(argmax).collect()
}

impl VerifyReport {
    /// Judges a compressed package by accuracy instead of the error thresholds:
    /// `accuracy` when labels were given, else top-1 agreement of the class scores, else
    /// a loose relative error. The per-output checks stay in the report as measurements.
    pub fn judge_compressed(&mut self, compression: String, rules: &CompressedRules) {
        self.compression = Some(compression);
        let finite = self.outputs.iter().all(|o| !o.relative_error.is_nan());
        let (rule, pass) = if let Some(a) = &self.accuracy {
            (
                Rule::Top1Drop,
                a.package_top1 * 100.0 >= a.reference_top1 * 100.0 - rules.max_top1_drop,
            )
        } else if let Some(agree) = self.outputs.iter().find_map(|o| o.top1_agreement) {
            (Rule::Agreement, agree >= rules.min_agreement)
        } else {
            (
                Rule::CompressedError,
                self.outputs
                    .iter()
                    .all(|o| o.relative_error < rules.max_relative_error),
            )
        };
        self.rule = rule;
        self.pass = pass && finite;
    }

    /// Adds labelled accuracy; for an uncompressed package the thresholds still decide.
    pub fn with_accuracy(mut self, a: AccuracyCheck) -> Self {
        self.accuracy = Some(a);
        self
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({}, {} examples; pass: relative error < {:.0e}, top-1 >= {:.0}%)",
            self.package.display(),
            self.precision,
            self.examples,
            self.thresholds.max_relative_error,
            self.thresholds.min_top1_agreement * 100.0
        )?;
        writeln!(
            f,
            "{:<20} {:<18} {:>9} {:>12} {:>10} {:>12} {:>7}  result",
            "reference", "output", "elements", "max abs err", "scale", "rel err", "top-1"
        )?;
        for o in &self.outputs {
            writeln!(
                f,
                "{:<20} {:<18} {:>9} {:>12.3e} {:>10.3} {:>12.3e} {:>7}  {}",
                o.reference,
                o.output,
                o.elements,
                o.max_abs_error,
                o.reference_scale,
                o.relative_error,
                o.top1_agreement
                    .map(|a| format!("{:.0}%", a * 100.0))
                    .unwrap_or_else(|| "-".into()),
                if o.pass { "ok" } else { "FAIL" }
            )?;
            if o.top1_ties > 0 {
                writeln!(
                    f,
                    "  {} top-1 disagreement(s) on near-ties (reference top-2 gap < 2x max abs error), not counted",
                    o.top1_ties
                )?;
            }
        }
        if let Some(c) = &self.compression {
            writeln!(f, "compressed weights: {c}")?;
        }
        if let Some(a) = &self.accuracy {
            writeln!(
                f,
                "top-1 on {} labelled images: package {:.2}%, model {:.2}% ({:+.2} points), agreement {:.2}%",
                a.examples,
                a.package_top1 * 100.0,
                a.reference_top1 * 100.0,
                (a.package_top1 - a.reference_top1) * 100.0,
                a.agreement * 100.0
            )?;
        }
        writeln!(f, "judged by: {}", self.rule.describe())?;
        write!(f, "{}", if self.pass { "PASS" } else { "FAIL" })
    }
}

/// Softmax over each row of `classes` values: what a classifier's probabilities are
/// compared with when the reference holds logits.
pub(crate) fn softmax_rows(x: &[f32], classes: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(classes) {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

/// Difference between the two largest scores of a row.
fn top2_gap(row: &[f32]) -> f64 {
    let (mut a, mut b) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for &v in row {
        let v = f64::from(v);
        if v > a {
            b = a;
            a = v;
        } else if v > b {
            b = v;
        }
    }
    a - b
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(0, |bi, (i, &v)| if v > row[bi] { i } else { bi })
}

/// Runs `pkg` on each example of `reference_inputs` (a batch `[N, ...]` of what the
/// package takes as `[1, ...]`, or exactly its input shape) and compares with
/// `reference_outputs` (`[N, ...]`, named as the package's outputs; `logits` is also
/// accepted for a classifier, compared through a softmax with its probabilities, and
/// `pooled` / `last_hidden_state` name `embedding` / `tokens`).
pub fn verify_against(
    pkg: &Path,
    reference_inputs: &[(String, Tensor)],
    reference_outputs: &[(String, Tensor)],
    precision: Precision,
) -> Result<VerifyReport, VerifyError> {
    let run = run_examples(pkg, reference_inputs)?;
    let th = Thresholds::for_precision(precision);
    let checks = compare(&run.outputs, reference_outputs, &th)?;
    let pass = checks.iter().all(|c| c.pass);
    Ok(VerifyReport {
        package: pkg.to_path_buf(),
        precision,
        examples: run.examples,
        thresholds: th,
        rule: Rule::Thresholds,
        compression: None,
        accuracy: None,
        outputs: checks,
        pass,
        neural_engine: None,
    })
}

/// What a package gave for a batch of examples: each output's values, examples
/// concatenated (class probabilities in class order).
pub struct ExampleOutputs {
    pub examples: usize,
    pub outputs: std::collections::BTreeMap<String, Vec<f32>>,
}

/// Runs `pkg` once per example of `reference_inputs`.
pub fn run_examples(
    pkg: &Path,
    reference_inputs: &[(String, Tensor)],
) -> Result<ExampleOutputs, VerifyError> {
    run_examples_batched(pkg, reference_inputs, 1)
}

/// The examples of `reference_inputs` (stacked on axis 0) in batches of `batch`, a size
/// the package accepts; a last, smaller batch runs one example at a time.
pub fn run_examples_batched(
    pkg: &Path,
    reference_inputs: &[(String, Tensor)],
    batch: usize,
) -> Result<ExampleOutputs, VerifyError> {
    let package = Package::open(pkg)?;
    let want = package.inputs()?;
    let mut examples = None;
    for (name, t) in reference_inputs {
        let (_, ty) = want
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| VerifyError::Reference(format!("the package has no input `{name}`")))?;
        let batchable = ty.shape[0] == 1 || ty.shape[0] == crate::coreml::interp::ANY;
        let n = if t.shape == ty.shape {
            1
        } else if t.rank() == ty.rank()
            && batchable
            && crate::coreml::interp::shape_fits(&t.shape[1..], &ty.shape[1..])
        {
            t.shape[0]
        } else {
            return Err(VerifyError::Reference(format!(
                "input `{name}` is {:?}, the package takes {:?}",
                t.shape, ty.shape
            )));
        };
        if batch > 1 {
            let sizes = package.batch_sizes(name).unwrap_or_else(|| vec![1]);
            if !sizes.contains(&batch) {
                return Err(VerifyError::Reference(format!(
                    "the package's input `{name}` takes batches of {sizes:?}, not {batch}"
                )));
            }
        }
        if examples.is_some_and(|e| e != n) {
            return Err(VerifyError::Reference(
                "inputs have different batch sizes".into(),
            ));
        }
        examples = Some(n);
    }
    let examples = examples.ok_or_else(|| VerifyError::Reference("no inputs".into()))?;
    let batch = batch.max(1);

    // Outputs of every example, concatenated per output name.
    let mut got: std::collections::BTreeMap<String, Vec<f32>> = Default::default();
    let mut start = 0;
    while start < examples {
        let n = if examples - start >= batch { batch } else { 1 };
        let inputs: Vec<(&str, Tensor)> = reference_inputs
            .iter()
            .map(|(name, t)| {
                let item = if examples == 1 {
                    t.clone()
                } else {
                    t.batch_range(start, start + n).expect("batch checked")
                };
                (name.as_str(), item)
            })
            .collect();
        for (name, out) in package.run(&inputs)? {
            let vals: Vec<f32> = match out {
                Output::Tensor(t) => t.data,
                Output::Probabilities(p) => p.into_iter().map(|(_, v)| v as f32).collect(),
                Output::Label(_) => continue,
            };
            got.entry(name).or_default().extend(vals);
        }
        start += n;
    }
    Ok(ExampleOutputs {
        examples,
        outputs: got,
    })
}

/// Compares a run's outputs with reference outputs under thresholds `th`.
pub fn compare(
    got: &std::collections::BTreeMap<String, Vec<f32>>,
    reference_outputs: &[(String, Tensor)],
    th: &Thresholds,
) -> Result<Vec<OutputCheck>, VerifyError> {
    let mut checks = Vec::new();
    for (rname, rt) in reference_outputs {
        let alias = match rname.as_str() {
            "pooled" => names::EMBEDDING,
            "last_hidden_state" => names::TOKENS,
            n => n,
        };
        let (oname, reference, class_scores) = if got.contains_key(alias) {
            (alias.to_string(), rt.data.clone(), alias == names::LOGITS)
        } else if alias == names::LOGITS && got.contains_key(names::PROBS) {
            let classes = *rt.shape.last().unwrap_or(&1);
            (
                names::PROBS.to_string(),
                softmax_rows(&rt.data, classes),
                true,
            )
        } else {
            return Err(VerifyError::Reference(format!(
                "the package has no output for reference `{rname}`"
            )));
        };
        let g = &got[&oname];
        if g.len() != reference.len() {
            return Err(VerifyError::Reference(format!(
                "`{rname}` has {} values, the package gave {} for `{oname}`",
                reference.len(),
                g.len()
            )));
        }
        let max_abs_error = g
            .iter()
            .zip(&reference)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .fold(0.0, f64::max);
        let scale = reference.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
        let relative_error = max_abs_error / if scale > 0.0 { scale } else { 1.0 };
        let mut ties = 0usize;
        let mut decisive = None;
        let top1 = class_scores.then(|| {
            let classes = *rt.shape.last().unwrap_or(&1);
            let rows = reference.len() / classes.max(1);
            let mut agree = 0usize;
            for r in 0..rows {
                let (gr, rr) = (
                    &g[r * classes..(r + 1) * classes],
                    &reference[r * classes..(r + 1) * classes],
                );
                if argmax(gr) == argmax(rr) {
                    agree += 1;
                } else if top2_gap(rr) < 2.0 * max_abs_error {
                    ties += 1;
                }
            }
            decisive = Some((agree + ties) as f64 / rows.max(1) as f64);
            agree as f64 / rows.max(1) as f64
        });
        let pass = relative_error < th.max_relative_error
            && !relative_error.is_nan()
            && decisive.is_none_or(|a| a >= th.min_top1_agreement);
        checks.push(OutputCheck {
            reference: rname.clone(),
            output: oname,
            elements: reference.len(),
            max_abs_error,
            reference_scale: scale,
            relative_error,
            top1_agreement: top1,
            top1_ties: ties,
            pass,
        });
    }
    if checks.is_empty() {
        return Err(VerifyError::Reference("no reference outputs".into()));
    }
    Ok(checks)
}
