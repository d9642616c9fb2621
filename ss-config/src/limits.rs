//! A user's limits: keys of a `users` entry (ours; neither peer has them), all optional:
//!
//! ```text
//! {"name": "alice", "password": "...",
//!  "quota": {"bytes": "50 GiB", "period": "month"},      bytes per period (crate::quota)
//!  "rate_limit": {"up": "1 MiB", "down": "4 MiB"},       bytes per second, either may be left out
//!  "max_connections": 32,                                TCP connections at once
//!  "max_devices": 3}                                     client IP addresses at once (TCP or UDP)
//! ```
//!
//! Sizes are a number of bytes or a string with a unit ([`RawSize`]): `"500 kB"` is 500,000 bytes,
//! `"500 KiB"` 512,000; `k`, `M`, `G` are decimal, `Ki`, `Mi`, `Gi` binary. "up" is what the client
//! sends (client to target), "down" what it receives.

use serde::Deserialize;

use crate::quota::{self, Quota, RawQuota};
use crate::users::RawUser;
use crate::ConfigError;

/// A number of bytes as written: `1048576` or `"1 MiB"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    /// A plain number of bytes.
    Bytes(u64),
    /// A number with a unit, parsed by the `bytesize` crate.
    Text(String),
}

impl RawSize {
    /// The number of bytes, or why the text is not a size.
    pub fn bytes(&self) -> Result<u64, String> {
        match self {
            RawSize::Bytes(bytes) => Ok(*bytes),
            RawSize::Text(text) => text
                .trim()
                .parse::<bytesize::ByteSize>()
                .map(|size| size.as_u64())
                .map_err(|_| format!("{text:?} is not a size (a number of bytes, or e.g. \"10 MiB\")")),
        }
    }
}

/// `rate_limit` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    /// Bytes per second from the client.
    pub up: Option<RawSize>,
    /// Bytes per second to the client.
    pub down: Option<RawSize>,
}

/// A user's checked limits; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes per period.
    pub quota: Option<Quota>,
    /// Bytes per second from the client.
    pub rate_up: Option<u64>,
    /// Bytes per second to the client.
    pub rate_down: Option<u64>,
    /// TCP connections at once.
    pub max_connections: Option<u32>,
    /// Distinct client IP addresses at once.
    pub max_devices: Option<u32>,
}

/// Checks the limits of `raw` (named `field` in errors: `users[2]`).
pub fn check(field: &str, raw: &RawUser) -> Result<Limits, ConfigError> {
    let quota = raw.quota.as_ref().map(|quota: &RawQuota| quota::check(&format!("{field}.quota"), quota));
    let rates = raw.rate_limit.clone().unwrap_or_default();
    let rate = |size: Option<RawSize>, direction: &str| -> Result<Option<u64>, ConfigError> {
        let name = format!("{field}.rate_limit.{direction}");
        let Some(size) = size else { return Ok(None) };
        match size.bytes() {
            Ok(0) => {
                Err(ConfigError::field_error(name, "0 bytes per second: leave the key out for no limit"))
            }
            Ok(bytes) => Ok(Some(bytes)),
            Err(message) => Err(ConfigError::field_error(name, message)),
        }
    };
    let count = |value: Option<u32>, key: &str| match value {
        Some(0) => Err(ConfigError::field_error(format!("{field}.{key}"), "0 would refuse every connection")),
        other => Ok(other),
    };
    Ok(Limits {
        quota: quota.transpose()?,
        rate_up: rate(rates.up, "up")?,
        rate_down: rate(rates.down, "down")?,
        max_connections: count(raw.max_connections, "max_connections")?,
        max_devices: count(raw.max_devices, "max_devices")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(json: &str) -> Result<Limits, ConfigError> {
        let raw: RawUser = serde_json::from_str(json).unwrap();
        check("users[0]", &raw)
    }

    #[test]
    fn sizes_rates_and_counts() {
        let checked = limits(
            r#"{"rate_limit":{"up":"1 MiB","down":2000000},"max_connections":8,"max_devices":2,
                "quota":{"bytes":"1.5 GB","period":"month"}}"#,
        )
        .unwrap();
        assert_eq!((checked.rate_up, checked.rate_down), (Some(1 << 20), Some(2_000_000)));
        assert_eq!((checked.max_connections, checked.max_devices), (Some(8), Some(2)));
        assert_eq!(checked.quota.map(|quota| quota.bytes), Some(1_500_000_000));
        assert_eq!(limits("{}").unwrap(), Limits::default(), "no key, no limit");
        assert_eq!(RawSize::Text("500 kB".into()).bytes(), Ok(500_000));
        assert_eq!(RawSize::Text("500KiB".into()).bytes(), Ok(512_000));
    }

    proptest::proptest! {
        /// Any text is a size or a one-line refusal; a number with a unit is that many units.
        #[test]
        fn any_size_text_parses_or_is_refused(text in "[0-9. ]{0,12}[kKmMgGtTiIbB ]{0,4}|\\PC{0,40}") {
            if let Err(message) = RawSize::Text(text.clone()).bytes() {
                let quoted = format!("{text:?}");
                let names_it = message.contains(&quoted) && !message.contains('\n');
                proptest::prop_assert!(names_it, "{}", message);
            }
        }

        #[test]
        fn whole_numbers_with_units_multiply(n in 0u64..1_000_000, unit in 0usize..6) {
            let (suffix, factor) = [("", 1), (" kB", 1_000), ("MB", 1_000_000), (" KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)][unit];
            proptest::prop_assert_eq!(RawSize::Text(format!("{n}{suffix}")).bytes(), Ok(n * factor));
        }
    }

    #[test]
    fn bad_limits_name_their_field() {
        for (json, field) in [
            (r#"{"rate_limit":{"up":"fast"}}"#, "users[0].rate_limit.up"),
            (r#"{"rate_limit":{"down":0}}"#, "users[0].rate_limit.down"),
            (r#"{"max_connections":0}"#, "users[0].max_connections"),
            (r#"{"max_devices":0}"#, "users[0].max_devices"),
            (r#"{"quota":{"bytes":"1 parsec","period":"day"}}"#, "users[0].quota.bytes"),
        ] {
            let error = limits(json).unwrap_err();
            assert_eq!(error.field(), Some(field), "{json}: {error}");
        }
    }
}
