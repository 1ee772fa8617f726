//! The wall clock in words, for titles and summaries ("2026-12-01 10:45 UTC"), without
//! a date-time dependency.

use std::time::{SystemTime, UNIX_EPOCH};

/// (year, month, day) of a count of days since 1970-01-01 (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    // Shift to eras of 400 years starting 0000-03-01, where leap days fall last.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `seconds` since the Unix epoch as "YYYY-MM-DD HH:MM UTC".
pub fn utc_minutes(seconds: i64) -> String {
    let (y, m, d) = civil(seconds.div_euclid(86_400));
    let s = seconds.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        s / 3600,
        s % 3600 / 60
    )
}

/// Now, as [`utc_minutes`] writes it.
pub fn now_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    utc_minutes(secs)
}

#[cfg(test)]
mod tests {
    use super::utc_minutes;

    #[test]
    fn known_instants() {
        assert_eq!(utc_minutes(0), "1970-01-01 00:00 UTC");
        // `date -u -d @951782400` (a leap day) and `@1796121900`.
        assert_eq!(utc_minutes(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_minutes(1_796_121_900), "2026-12-01 10:45 UTC");
        assert_eq!(utc_minutes(-86_400), "1969-12-31 00:00 UTC");
    }
}
