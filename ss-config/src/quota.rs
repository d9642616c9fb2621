//! A user's traffic quota (`quota` of a `users` entry):
//!
//! ```text
//! "quota": {"bytes": 10737418240, "period": "month"}
//! "quota": {"bytes": 1073741824,  "period": "day"}
//! "quota": {"bytes": 53687091200, "period": {"from": "2026-12-01", "to": "2027-03-01"}}
//! ```
//!
//! `bytes` (a number, or a size such as `"10 GiB"` or `"500MB"`, [`crate::limits::RawSize`]) is what
//! the user may move per period: what the server sends, to targets and to the client, both directions
//! together. Periods are UTC: a day starts at 00:00, a month on its 1st at 00:00, a range at `from`
//! 00:00 and ends at `to` 00:00 (exclusive). Outside its range a user has nothing to spend (their
//! connections are refused).

use serde::Deserialize;
use time::{Date, Month, OffsetDateTime};

use crate::limits::RawSize;
use crate::ConfigError;

/// A quota as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RawQuota {
    /// `bytes` per period.
    pub bytes: Option<RawSize>,
    /// `period`: `"day"`, `"month"` or `{"from": "YYYY-MM-DD", "to": "YYYY-MM-DD"}`.
    pub period: Option<RawPeriod>,
}

/// A period as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawPeriod {
    /// `"day"` or `"month"`.
    Named(String),
    /// A fixed range of dates.
    Range {
        /// First day (UTC).
        from: String,
        /// The day after the last (UTC).
        to: String,
    },
}

/// A checked quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Bytes per period, both directions together.
    pub bytes: u64,
    /// When the count starts again.
    pub period: Period,
}

/// The period of a [`Quota`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A UTC day.
    Day,
    /// A UTC calendar month.
    Month,
    /// `[from, to)`, Unix seconds.
    Range {
        /// Start, Unix seconds.
        from: u64,
        /// End (exclusive), Unix seconds.
        to: u64,
    },
}

const DAY: u64 = 86_400;

impl Period {
    /// The period `now` (Unix seconds) falls in, as `[start, end)`; `None` outside a range.
    pub fn bounds(&self, now: u64) -> Option<(u64, u64)> {
        match *self {
            Period::Day => {
                let start = now - now % DAY;
                Some((start, start + DAY))
            }
            Period::Month => {
                let today = OffsetDateTime::from_unix_timestamp(i64::try_from(now).ok()?).ok()?.date();
                let first = today.replace_day(1).ok()?;
                let start = unix_midnight(first)?;
                // December has 31 days: counted rather than dated, since January of the year after 9999
                // is past the dates the `time` crate represents (a property test found 9999-12).
                let end = match first.month() {
                    Month::December => start + 31 * DAY,
                    month => unix_midnight(Date::from_calendar_date(first.year(), month.next(), 1).ok()?)?,
                };
                Some((start, end))
            }
            Period::Range { from, to } => (from..to).contains(&now).then_some((from, to)),
        }
    }
}

/// Unix seconds of `date` at 00:00 UTC (`None` before 1970).
fn unix_midnight(date: Date) -> Option<u64> {
    u64::try_from(date.midnight().assume_utc().unix_timestamp()).ok()
}

/// Checks `raw` (named `field` in errors).
pub fn check(field: &str, raw: &RawQuota) -> Result<Quota, ConfigError> {
    let error = |what: &str, message: String| ConfigError::field_error(format!("{field}.{what}"), message);
    let bytes = match &raw.bytes {
        None => return Err(error("bytes", "missing".into())),
        Some(size) => size.bytes().map_err(|message| error("bytes", message))?,
    };
    let period = match &raw.period {
        None => return Err(error("period", "missing (\"day\", \"month\" or {\"from\", \"to\"})".into())),
        Some(RawPeriod::Named(name)) if name == "day" => Period::Day,
        Some(RawPeriod::Named(name)) if name == "month" => Period::Month,
        Some(RawPeriod::Named(name)) => {
            return Err(error(
                "period",
                format!("{name:?} is not \"day\", \"month\" or {{\"from\", \"to\"}}"),
            ))
        }
        Some(RawPeriod::Range { from, to }) => {
            let from = parse_date(from)
                .ok_or_else(|| error("period.from", format!("{from:?} is not YYYY-MM-DD")))?;
            let to = parse_date(to).ok_or_else(|| error("period.to", format!("{to:?} is not YYYY-MM-DD")))?;
            if to <= from {
                return Err(error("period.to", "not after from".into()));
            }
            Period::Range { from, to }
        }
    };
    Ok(Quota { bytes, period })
}

/// `YYYY-MM-DD` (1970 or later) to Unix seconds at 00:00 UTC; `None` for anything else, a 30 February
/// included.
fn parse_date(text: &str) -> Option<u64> {
    let mut parts = text.trim().splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    let date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    unix_midnight(date)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawQuota {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn days_months_and_ranges() {
        // 2026-11-28 13:00 UTC.
        let now = 1_795_870_800;
        let day = check("q", &raw(r#"{"bytes":5,"period":"day"}"#)).unwrap();
        assert_eq!(day.period.bounds(now), Some((1_795_824_000, 1_795_910_400)));
        let month = check("q", &raw(r#"{"bytes":5,"period":"month"}"#)).unwrap();
        assert_eq!(parse_date("2026-11-01"), Some(1_793_491_200));
        assert_eq!(month.period.bounds(now), Some((1_793_491_200, parse_date("2026-12-01").unwrap())));
        let december = parse_date("2026-12-15").unwrap();
        assert_eq!(month.period.bounds(december).map(|b| b.1), parse_date("2027-01-01"));
        let range =
            check("q", &raw(r#"{"bytes":5,"period":{"from":"2026-11-01","to":"2026-11-29"}}"#)).unwrap();
        assert_eq!(range.period.bounds(now), Some((1_793_491_200, parse_date("2026-11-29").unwrap())));
        assert_eq!(range.period.bounds(parse_date("2026-11-29").unwrap()), None, "the end is exclusive");
        assert_eq!(parse_date("2028-02-29"), Some(parse_date("2028-03-01").unwrap() - DAY), "a leap day");
        assert_eq!(parse_date("2027-02-29"), None);
        assert_eq!(parse_date("1969-12-31"), None, "before 1970");
        // The last month the calendar has: its end is past the `time` crate's last date.
        let december_9999 = parse_date("9999-12-01").unwrap();
        assert_eq!(Period::Month.bounds(december_9999 + 5), Some((december_9999, december_9999 + 31 * DAY)));
        let december_2026 = parse_date("2026-12-01").unwrap();
        assert_eq!(
            Period::Month.bounds(december_2026),
            Some((december_2026, parse_date("2027-01-01").unwrap()))
        );
        let sized = check("q", &raw(r#"{"bytes":"10 MiB","period":"day"}"#)).unwrap();
        assert_eq!(sized.bytes, 10 << 20);
    }

    proptest::proptest! {
        /// Every instant up to the year 9999 lies in one day and one month that start at midnight UTC
        /// (a month on its 1st) and end where the next begins.
        #[test]
        fn every_instant_lies_in_its_day_and_month(now in 0u64..253_402_300_799) {
            for period in [Period::Day, Period::Month] {
                let (start, end) = period.bounds(now).unwrap();
                proptest::prop_assert!(start <= now && now < end);
                proptest::prop_assert_eq!(start % DAY, 0);
                proptest::prop_assert_eq!(end % DAY, 0);
                if end < 253_402_300_799 {
                    proptest::prop_assert_eq!(period.bounds(end).unwrap().0, end, "the next period starts at the end");
                }
            }
            let (month_start, month_end) = Period::Month.bounds(now).unwrap();
            proptest::prop_assert!((28 * DAY..=31 * DAY).contains(&(month_end - month_start)));
        }
    }

    #[test]
    fn bad_quotas_name_their_field() {
        for (text, field) in [
            (r#"{"period":"day"}"#, "q.bytes"),
            (r#"{"bytes":1}"#, "q.period"),
            (r#"{"bytes":1,"period":"week"}"#, "q.period"),
            (r#"{"bytes":"ten","period":"day"}"#, "q.bytes"),
            (r#"{"bytes":1,"period":{"from":"2026-02-30","to":"2026-03-01"}}"#, "q.period.from"),
            (r#"{"bytes":1,"period":{"from":"2026-03-01","to":"2026-03-01"}}"#, "q.period.to"),
        ] {
            let error = check("q", &raw(text)).unwrap_err().to_string();
            assert!(error.contains(field), "{text}: {error}");
        }
    }
}
