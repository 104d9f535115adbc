//! Money and spend periods. Integer micro-units only; time in Unix milliseconds.
//!
//! Every computation here and in the rest of the tenant layer is checked or saturating: an
//! `i64` that wraps in a release build would turn a huge charge into a negative one and let
//! spend pass a cap. Products and exact sums go through `i128`; sums bounded by caps
//! (at most 10^18, below `i64::MAX`) saturate.

use chrono::{DateTime, Datelike, TimeZone, Utc};

/// What `hourly_price_micros` costs for `seconds`: `ceil(price × seconds / 3600)`.
pub fn cost(hourly_price_micros: i64, seconds: i64) -> i64 {
    let numerator = i128::from(hourly_price_micros.max(0)) * i128::from(seconds.max(0));
    let micros = (numerator + 3_599) / 3_600;
    i64::try_from(micros).unwrap_or(i64::MAX)
}

/// Whole seconds from `from_ms` to `to_ms`, rounded up (a runner that lived 1.2 s is charged
/// 2 s).
pub fn seconds_between(from_ms: i64, to_ms: i64) -> i64 {
    let ms = to_ms.saturating_sub(from_ms).max(0);
    ms / 1_000 + i64::from(ms % 1_000 != 0)
}

/// The reservation of a lease: its price for its whole TTL.
pub fn reservation(hourly_price_micros: i64, ttl_s: i64) -> i64 {
    cost(hourly_price_micros, ttl_s)
}

/// The charge of a lease: its price for its runner's life, granted to destroyed.
pub fn charge(hourly_price_micros: i64, granted_at_ms: i64, destroyed_at_ms: i64) -> i64 {
    cost(
        hourly_price_micros,
        seconds_between(granted_at_ms, destroyed_at_ms),
    )
}

/// A UTC spend period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    /// `day` or `month`.
    pub fn parse(text: &str) -> Option<Period> {
        match text {
            "day" => Some(Period::Day),
            "month" => Some(Period::Month),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }

    /// The period containing `at_ms`: `[start, end)` in Unix ms.
    pub fn bounds(self, at_ms: i64) -> (i64, i64) {
        let at: DateTime<Utc> = DateTime::from_timestamp_millis(at_ms).unwrap_or_default();
        let date = at.date_naive();
        let (start, end) = match self {
            Period::Day => {
                let start = date.and_hms_opt(0, 0, 0).expect("BUG: midnight exists");
                (start, start + chrono::Duration::days(1))
            }
            Period::Month => {
                let start = date
                    .with_day(1)
                    .expect("BUG: day 1 exists")
                    .and_hms_opt(0, 0, 0)
                    .expect("BUG: midnight exists");
                let (year, month) = if date.month() == 12 {
                    (date.year() + 1, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                let end = chrono::NaiveDate::from_ymd_opt(year, month, 1)
                    .expect("BUG: first of a month exists")
                    .and_hms_opt(0, 0, 0)
                    .expect("BUG: midnight exists");
                (start, end)
            }
        };
        (
            Utc.from_utc_datetime(&start).timestamp_millis(),
            Utc.from_utc_datetime(&end).timestamp_millis(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Costs round up to the micro and time rounds up to the second.
    #[test]
    fn rounding() {
        assert_eq!(cost(3_600, 1), 1);
        assert_eq!(cost(1_000, 1), 1); // 0.277… rounds up
        assert_eq!(cost(1_000_000, 1_800), 500_000);
        assert_eq!(cost(0, 86_400), 0);
        assert_eq!(seconds_between(0, 1), 1);
        assert_eq!(seconds_between(0, 1_000), 1);
        assert_eq!(seconds_between(0, 1_001), 2);
        assert_eq!(seconds_between(5, 5), 0);
        assert_eq!(charge(3_600_000, 0, 2_500), 3_000);
        assert_eq!(cost(i64::MAX, i64::MAX), i64::MAX);
        // Times from both ends of the range: no overflow, no negative durations.
        assert_eq!(seconds_between(i64::MIN, i64::MAX), i64::MAX / 1_000 + 1);
        assert_eq!(seconds_between(i64::MAX, i64::MIN), 0);
        assert_eq!(charge(i64::MAX, i64::MIN, i64::MAX), i64::MAX);
    }

    /// Periods are UTC days and months.
    #[test]
    fn periods() {
        // 2026-11-27T13:14:15Z
        let at = 1_795_785_255_000;
        let (start, end) = Period::Day.bounds(at);
        assert_eq!(start, 1_795_737_600_000); // 2026-11-27T00:00Z
        assert_eq!(end - start, 86_400_000);
        let (start, end) = Period::Month.bounds(at);
        assert_eq!(start, 1_793_491_200_000); // 2026-11-01T00:00Z
        assert_eq!(end, 1_796_083_200_000); // 2026-12-01T00:00Z
        let (_, end) = Period::Month.bounds(1_796_083_200_000 + 1);
        assert_eq!(end, 1_798_761_600_000); // 2027-01-01T00:00Z
    }
}
