//! Evaluation metrics from logits: loss, top-1, top-5, per-class accuracy, confusion.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct EvalMetrics {
    pub loss: f64,
    pub top1: f64,
    /// Only with 5 or more classes.
    pub top5: Option<f64>,
    pub per_class_accuracy: Vec<f64>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<u64>>,
    pub count: u64,
}

/// Accumulates predictions batch by batch.
pub struct Evaluator {
    classes: usize,
    loss_sum: f64,
    top1: u64,
    top5: u64,
    count: u64,
    confusion: Vec<Vec<u64>>,
}

impl Evaluator {
    pub fn new(classes: usize) -> Self {
        Evaluator {
            classes,
            loss_sum: 0.0,
            top1: 0,
            top5: 0,
            count: 0,
            confusion: vec![vec![0; classes]; classes],
        }
    }

    /// `logits` is `[n, classes]` row-major.
    pub fn add(&mut self, logits: &[f32], labels: &[u32]) {
        let k = self.classes;
        for (row, &label) in logits.chunks_exact(k).zip(labels) {
            let label = label as usize;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let lse = f64::from(max)
                + row
                    .iter()
                    .map(|v| f64::from(v - max).exp())
                    .sum::<f64>()
                    .ln();
            self.loss_sum += lse - f64::from(row[label]);
            let target = row[label];
            // Rank = how many classes score strictly higher (ties count in our favour).
            let rank = row.iter().filter(|v| **v > target).count();
            let pred = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |b, (i, v)| if *v > b.1 { (i, *v) } else { b },
                )
                .0;
            self.top1 += u64::from(rank == 0);
            self.top5 += u64::from(rank < 5);
            self.confusion[label][pred] += 1;
            self.count += 1;
        }
    }

    /// The loss sum and the counts (top-1, top-5, images, then the confusion matrix row
    /// by row): what ranks that each evaluated a part add up.
    pub fn totals(&self) -> (f64, Vec<u64>) {
        let mut counts = vec![self.top1, self.top5, self.count];
        counts.extend(self.confusion.iter().flatten());
        (self.loss_sum, counts)
    }

    /// Replaces the totals by `loss_sum` and `counts` laid out as [`Evaluator::totals`].
    pub fn set_totals(&mut self, loss_sum: f64, counts: &[u64]) {
        let k = self.classes;
        if counts.len() != 3 + k * k {
            return;
        }
        self.loss_sum = loss_sum;
        (self.top1, self.top5, self.count) = (counts[0], counts[1], counts[2]);
        for (row, chunk) in self.confusion.iter_mut().zip(counts[3..].chunks_exact(k)) {
            row.copy_from_slice(chunk);
        }
    }

    pub fn finish(self) -> EvalMetrics {
        let n = self.count.max(1) as f64;
        let per_class = self
            .confusion
            .iter()
            .enumerate()
            .map(|(i, row)| {
                let total: u64 = row.iter().sum();
                if total == 0 {
                    0.0
                } else {
                    row[i] as f64 / total as f64
                }
            })
            .collect();
        EvalMetrics {
            loss: self.loss_sum / n,
            top1: self.top1 as f64 / n,
            top5: (self.classes >= 5).then(|| self.top5 as f64 / n),
            per_class_accuracy: per_class,
            confusion: self.confusion,
            count: self.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_by_hand() {
        let mut e = Evaluator::new(3);
        // Sample 0: label 0 predicted 0. Sample 1: label 2 predicted 1.
        e.add(&[2.0, 1.0, 0.0, 0.0, 3.0, 1.0], &[0, 2]);
        let m = e.finish();
        assert_eq!(m.top1, 0.5);
        assert_eq!(
            m.confusion,
            vec![vec![1, 0, 0], vec![0, 0, 0], vec![0, 1, 0]]
        );
        assert_eq!(m.per_class_accuracy, vec![1.0, 0.0, 0.0]);
        assert!(m.top5.is_none());
        let lse = |r: [f64; 3]| r.iter().map(|v| v.exp()).sum::<f64>().ln();
        let want = ((lse([2.0, 1.0, 0.0]) - 2.0) + (lse([0.0, 3.0, 1.0]) - 1.0)) / 2.0;
        assert!((m.loss - want).abs() < 1e-9);
    }
}
