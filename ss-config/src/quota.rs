//! A user's traffic quota (`quota` of a `users` entry):
//!
//! ```text
//! "quota": {"bytes": 10737418240, "period": "month"}
//! "quota": {"bytes": 1073741824,  "period": "day"}
//! "quota": {"bytes": 53687091200, "period": {"from": "2026-12-01", "to": "2027-03-01"}}
//! ```
//!
//! `bytes` is what the user may move per period, both directions together; periods are UTC: a day
//! starts at 00:00, a month on its 1st at 00:00, a range at `from` 00:00 and ends at `to` 00:00
//! (exclusive). Outside a range the user has no quota at all (their connections are refused).

use serde::Deserialize;

use crate::ConfigError;

/// A quota as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RawQuota {
    /// `bytes` per period.
    pub bytes: Option<u64>,
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
                let (year, month, _) = civil_from_days(now / DAY);
                let next = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
                Some((days_from_civil(year, month, 1) * DAY, days_from_civil(next.0, next.1, 1) * DAY))
            }
            Period::Range { from, to } => (from..to).contains(&now).then_some((from, to)),
        }
    }
}

/// Checks `raw` (named `field` in errors).
pub fn check(field: &str, raw: &RawQuota) -> Result<Quota, ConfigError> {
    let error = |what: &str, message: String| ConfigError::field_error(format!("{field}.{what}"), message);
    let bytes = raw.bytes.ok_or_else(|| error("bytes", "missing".into()))?;
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

/// `YYYY-MM-DD` to Unix seconds at 00:00 UTC.
fn parse_date(text: &str) -> Option<u64> {
    let mut parts = text.trim().splitn(3, '-');
    let year: u64 = parts.next()?.parse().ok()?;
    let month: u64 = parts.next()?.parse().ok()?;
    let day: u64 = parts.next()?.parse().ok()?;
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || day == 0 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    // A day past the month's end would land in the next month: refuse it.
    (civil_from_days(days) == (year, month, day)).then_some(days * DAY)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (year >= 1970): Howard Hinnant's algorithm.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date of `days` since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
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
        assert_eq!(parse_date("2028-02-29").map(|s| civil_from_days(s / DAY)), Some((2028, 2, 29)));
    }

    #[test]
    fn bad_quotas_name_their_field() {
        for (text, field) in [
            (r#"{"period":"day"}"#, "q.bytes"),
            (r#"{"bytes":1}"#, "q.period"),
            (r#"{"bytes":1,"period":"week"}"#, "q.period"),
            (r#"{"bytes":1,"period":{"from":"2026-02-30","to":"2026-03-01"}}"#, "q.period.from"),
            (r#"{"bytes":1,"period":{"from":"2026-03-01","to":"2026-03-01"}}"#, "q.period.to"),
        ] {
            let error = check("q", &raw(text)).unwrap_err().to_string();
            assert!(error.contains(field), "{text}: {error}");
        }
    }
}
