//! Statistics of the harness's raw timings, as the report schema defines them.
//!
//! Percentiles interpolate linearly between the two closest ranks (Hyndman and Fan's
//! definition 7, NumPy's default): for n sorted samples and a fraction p, position
//! h = (n - 1) p, value x[floor h] + (h - floor h)(x[floor h + 1] - x[floor h]). So p = 0 is
//! the minimum, p = 1 the maximum, and one sample is every percentile of itself.

use super::report::{BatchResult, Latency};

pub fn mean(samples: &[f64]) -> Option<f64> {
    (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64)
}

/// Sample standard deviation (n - 1); 0 for one sample.
pub fn std_dev(samples: &[f64]) -> Option<f64> {
    let m = mean(samples)?;
    if samples.len() == 1 {
        return Some(0.0);
    }
    let squares: f64 = samples.iter().map(|x| (x - m) * (x - m)).sum();
    Some((squares / (samples.len() - 1) as f64).sqrt())
}

/// Percentile `p` (0..=1) of samples sorted ascending.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(0.0..=1.0).contains(&p) {
        return None;
    }
    let h = (sorted.len() - 1) as f64 * p;
    let lower = h.floor() as usize;
    let upper = (lower + 1).min(sorted.len() - 1);
    Some(sorted[lower] + (h - lower as f64) * (sorted[upper] - sorted[lower]))
}

/// The latency summary of single-prediction times; `None` for no samples or any that is
/// not a finite, non-negative time (a clock problem the report must not hide as numbers).
pub fn latency(samples: &[f64]) -> Option<Latency> {
    if samples.iter().any(|s| !s.is_finite() || *s < 0.0) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let p = |q| percentile_sorted(&sorted, q);
    Some(Latency {
        count: u32::try_from(sorted.len()).ok()?,
        mean_ms: mean(&sorted)?,
        std_ms: std_dev(&sorted)?,
        min_ms: *sorted.first()?,
        p50_ms: p(0.5)?,
        p90_ms: p(0.9)?,
        p99_ms: p(0.99)?,
        max_ms: *sorted.last()?,
    })
}

/// Sequential single predictions per second at this mean latency.
pub fn images_per_second(mean_ms: f64) -> f64 {
    if mean_ms > 0.0 {
        1000.0 / mean_ms
    } else {
        0.0
    }
}

/// One batch size: its timed calls, or the error the harness recorded.
pub fn batch(size: u32, calls_ms: Option<&[f64]>, error: Option<&str>) -> BatchResult {
    let failed = |e: &str| BatchResult {
        batch_size: size,
        iterations: None,
        mean_batch_ms: None,
        images_per_s: None,
        error: Some(e.to_string()),
    };
    if let Some(e) = error {
        return failed(e);
    }
    let calls = calls_ms.unwrap_or_default();
    match mean(calls).filter(|m| *m > 0.0 && m.is_finite()) {
        Some(m) => BatchResult {
            batch_size: size,
            iterations: u32::try_from(calls.len()).ok(),
            mean_batch_ms: Some(m),
            images_per_s: Some(f64::from(size) * 1000.0 / m),
            error: None,
        },
        None => failed("batch calls took no measurable time"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_closest_ranks_like_numpy() {
        // numpy.percentile([1, 2, 3, 4], [50, 90, 99]) = 2.5, 3.7, 3.97
        let l = latency(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((l.min_ms, l.max_ms, l.count), (1.0, 4.0, 4));
        assert!((l.p50_ms - 2.5).abs() < 1e-12);
        assert!((l.p90_ms - 3.7).abs() < 1e-12);
        assert!((l.p99_ms - 3.97).abs() < 1e-12);
        assert!((l.mean_ms - 2.5).abs() < 1e-12);
        // Sample standard deviation: sqrt(5/3).
        assert!((l.std_ms - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn one_sample_is_every_percentile_and_no_samples_no_latency() {
        let l = latency(&[7.5]).unwrap();
        assert_eq!((l.p50_ms, l.p99_ms, l.std_ms), (7.5, 7.5, 0.0));
        assert!(latency(&[]).is_none());
        assert!(latency(&[1.0, f64::NAN]).is_none());
        assert!(percentile_sorted(&[1.0], 1.5).is_none());
    }

    #[test]
    fn batches_give_images_per_second_or_keep_their_error() {
        let b = batch(8, Some(&[20.0, 20.0, 20.0]), None);
        assert_eq!((b.iterations, b.mean_batch_ms), (Some(3), Some(20.0)));
        assert_eq!(b.images_per_s, Some(400.0));
        assert_eq!(
            batch(8, None, Some("out of memory")).error.as_deref(),
            Some("out of memory")
        );
        assert!(batch(1, Some(&[0.0]), None).error.is_some());
        assert_eq!(images_per_second(4.0), 250.0);
    }
}
