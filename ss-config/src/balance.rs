//! The `balancer` object and the per-server weights: how ss-local picks among several servers.
//!
//! ```text
//! "balancer": { "strategy": "fastest",            failover (default) | fastest | round-robin | random
//!               "check_target": "example.com:443", where checks send their request
//!               "tolerance_ms": 50, "tolerance_percent": 20 },   fastest's switching margin
//! "servers": [ { ..., "weight": 2 } | { ..., "tcp_weight": 2, "udp_weight": 0.5 } ]
//! ```
//!
//! `tcp_weight` / `udp_weight` are shadowsocks-rust's per-server keys; `weight` sets both. Weights are
//! positive numbers, relative to each other (default 1). shadowsocks-rust's own `balancer` keys
//! (`max_server_rtt`, `check_interval`, `check_best_interval`) parse but take no effect, and the start-up
//! warning about keys no setting takes names them: checks here run only when needed (see ss-local's
//! `balance.rs`).

use std::time::Duration;

use serde::Deserialize;

use crate::entry::split_host_port;
use crate::raw::{NumberOrString, RawServer};
use crate::ConfigError;

/// How ss-local picks the server for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The first server in configured order that is not down (the default).
    #[default]
    Failover,
    /// The server with the lowest score, switching only beyond the tolerance.
    Fastest,
    /// Servers in turn, in proportion to their weights.
    RoundRobin,
    /// A random server, with probability in proportion to its weight.
    Random,
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(name: &str) -> Result<Strategy, String> {
        match name.trim() {
            "failover" => Ok(Strategy::Failover),
            "fastest" => Ok(Strategy::Fastest),
            "round-robin" | "round_robin" => Ok(Strategy::RoundRobin),
            "random" => Ok(Strategy::Random),
            other => Err(format!("unknown strategy {other:?} (failover, fastest, round-robin or random)")),
        }
    }
}

/// The `balancer` object as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct RawBalancer {
    /// `strategy`.
    pub strategy: Option<String>,
    /// `check_target`: `host:port`.
    pub check_target: Option<String>,
    /// `tolerance_ms`: fastest's absolute switching margin.
    pub tolerance_ms: Option<NumberOrString>,
    /// `tolerance_percent`: fastest's relative switching margin.
    pub tolerance_percent: Option<NumberOrString>,
}

/// The checked `balancer` object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Balance {
    /// The strategy.
    pub strategy: Strategy,
    /// Where checks send their request (host, port); `None`: the built-in default.
    pub check_target: Option<(String, u16)>,
    /// Fastest's absolute switching margin, if set.
    pub tolerance: Option<Duration>,
    /// Fastest's relative switching margin (0.2 for 20%), if set.
    pub tolerance_ratio: Option<f64>,
}

/// A server's shares under round-robin and random.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// Share of TCP connections.
    pub tcp: f64,
    /// Share of UDP associations.
    pub udp: f64,
}

impl Default for Weights {
    fn default() -> Weights {
        Weights { tcp: 1.0, udp: 1.0 }
    }
}

impl Balance {
    /// Checks the `balancer` object; errors name the field.
    pub(crate) fn from_raw(raw: Option<&RawBalancer>) -> Result<Balance, ConfigError> {
        let Some(raw) = raw else { return Ok(Balance::default()) };
        let strategy = match &raw.strategy {
            Some(name) => {
                name.parse().map_err(|message| ConfigError::field_error("balancer.strategy", message))?
            }
            None => Strategy::default(),
        };
        let check_target = match &raw.check_target {
            None => None,
            Some(text) => match split_host_port(text.trim()) {
                Ok((host, Some(port))) if !host.is_empty() => Some((host.to_string(), port)),
                _ => {
                    let message = format!("{text:?} is not host:port");
                    return Err(ConfigError::field_error("balancer.check_target", message));
                }
            },
        };
        let tolerance = match &raw.tolerance_ms {
            None => None,
            Some(ms) => match ms.parse::<u64>() {
                Some(ms) if ms <= 60_000 => Some(Duration::from_millis(ms)),
                _ => return Err(ConfigError::field_error("balancer.tolerance_ms", "must be 0 to 60000")),
            },
        };
        let tolerance_ratio = match &raw.tolerance_percent {
            None => None,
            Some(percent) => match percent.parse::<f64>() {
                Some(percent) if (0.0..=1000.0).contains(&percent) => Some(percent / 100.0),
                _ => return Err(ConfigError::field_error("balancer.tolerance_percent", "must be 0 to 1000")),
            },
        };
        Ok(Balance { strategy, check_target, tolerance, tolerance_ratio })
    }
}

/// A `servers` entry's weights (`weight`, `tcp_weight`, `udp_weight`); `prefix` names the entry.
pub(crate) fn weights(prefix: &str, server: &RawServer) -> Result<Weights, ConfigError> {
    let one = |field: &str, value: &Option<NumberOrString>| -> Result<Option<f64>, ConfigError> {
        let Some(value) = value else { return Ok(None) };
        match value.parse::<f64>() {
            Some(weight) if weight.is_finite() && weight > 0.0 => Ok(Some(weight)),
            _ => Err(ConfigError::field_error(
                format!("{prefix}{field}"),
                format!("{value} is not a positive number"),
            )),
        }
    };
    let both = one("weight", &server.weight)?.unwrap_or(1.0);
    Ok(Weights {
        tcp: one("tcp_weight", &server.tcp_weight)?.unwrap_or(both),
        udp: one("udp_weight", &server.udp_weight)?.unwrap_or(both),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balance(json: &str) -> Result<Balance, ConfigError> {
        let raw: RawBalancer = serde_json::from_str(json).unwrap();
        Balance::from_raw(Some(&raw))
    }

    #[test]
    fn the_balancer_object() {
        assert_eq!(Balance::from_raw(None).unwrap(), Balance::default());
        let checked = balance(
            r#"{"strategy":"fastest","check_target":"[::1]:8443","tolerance_ms":"80","tolerance_percent":10,
                "max_server_rtt":5,"check_interval":10}"#,
        )
        .unwrap();
        assert_eq!(checked.strategy, Strategy::Fastest);
        assert_eq!(checked.check_target, Some(("::1".to_string(), 8443)));
        assert_eq!(checked.tolerance, Some(Duration::from_millis(80)));
        assert_eq!(checked.tolerance_ratio, Some(0.1));
        let error = balance(r#"{"strategy":"best"}"#).unwrap_err().to_string();
        assert!(error.contains("balancer.strategy") && error.contains("round-robin"), "{error}");
        let error = balance(r#"{"check_target":"example.com"}"#).unwrap_err().to_string();
        assert!(error.contains("balancer.check_target"), "{error}");
    }

    #[test]
    fn weights_of_an_entry() {
        let entry = |json: &str| -> RawServer { serde_json::from_str(json).unwrap() };
        assert_eq!(weights("", &entry("{}")).unwrap(), Weights::default());
        assert_eq!(weights("", &entry(r#"{"weight":2}"#)).unwrap(), Weights { tcp: 2.0, udp: 2.0 });
        let both = entry(r#"{"weight":2,"tcp_weight":0.5,"udp_weight":"3"}"#);
        assert_eq!(weights("", &both).unwrap(), Weights { tcp: 0.5, udp: 3.0 });
        let error = weights("servers[1].", &entry(r#"{"tcp_weight":0}"#)).unwrap_err().to_string();
        assert!(error.contains("servers[1].tcp_weight"), "{error}");
    }
}
