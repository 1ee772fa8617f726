//! Round tick values for an axis and their labels.

/// A step of 1, 2 or 5 times a power of ten that gives about `target` intervals over
/// `lo..hi`, and the ticks it puts at or around the range (first at or below `lo`, last
/// at or above `hi`).
pub fn nice(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let (lo, hi) = if lo.is_finite() && hi.is_finite() {
        (lo.min(hi), lo.max(hi))
    } else {
        (0.0, 1.0)
    };
    let span = if hi > lo {
        hi - lo
    } else if lo != 0.0 {
        lo.abs()
    } else {
        1.0
    };
    let raw = span / target.max(1) as f64;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * power);
    let first = (lo / step + 1e-9).floor();
    let mut last = (hi / step - 1e-9).ceil();
    if last <= first {
        last = first + 1.0;
    }
    let ticks = (first as i64..=last as i64)
        .map(|k| k as f64 * step)
        .collect();
    (ticks, step)
}

/// A tick's label: as many decimals as the step needs; scientific for tiny or huge values.
pub fn label(v: f64, step: f64) -> String {
    let v = if v.abs() < step * 1e-6 { 0.0 } else { v };
    let step_exp = step.abs().log10().floor() as i32;
    if v == 0.0 && step < 1e-3 {
        return "0".into();
    }
    if v != 0.0 && (step < 1e-3 || v.abs() >= 1e6) {
        let v_exp = v.abs().log10().floor() as i32;
        let digits = (v_exp - step_exp).clamp(0, 4) as usize;
        let s = format!("{v:.digits$e}");
        // 2.50e-4 -> 2.5e-4
        match s.split_once('e') {
            Some((m, e)) if m.contains('.') => {
                format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.'))
            }
            _ => s,
        }
    } else {
        let decimals = (-step_exp).max(0) as usize;
        format!("{v:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_steps_cover_the_range() {
        let (t, s) = nice(0.0, 2.31, 5);
        assert_eq!(s, 0.5);
        assert_eq!(t, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
        // 0.55 over 5 intervals is 0.11: the next round step is 0.2.
        let (t, s) = nice(0.37, 0.92, 5);
        assert_eq!(s, 0.2);
        assert!((t[0] - 0.2).abs() < 1e-12 && (t.last().unwrap() - 1.0).abs() < 1e-12);
        let (t, _) = nice(5.0, 5.0, 5);
        assert!(t.len() >= 2 && t[0] <= 5.0 && *t.last().unwrap() >= 5.0);
    }

    #[test]
    fn labels_read_as_a_person_writes_them() {
        assert_eq!(label(1.5, 0.5), "1.5");
        assert_eq!(label(40.0, 20.0), "40");
        assert_eq!(label(0.30000000000000004, 0.1), "0.3");
        assert_eq!(label(3e-4, 1e-4), "3e-4");
        assert_eq!(label(2.5e-4, 5e-5), "2.5e-4");
        assert_eq!(label(1e-17, 1e-4), "0");
        assert_eq!(label(2_000_000.0, 500_000.0), "2e6");
    }
}
