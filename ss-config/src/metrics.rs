//! Where the Prometheus endpoint listens (`metrics` key, `--metrics` flag): a TCP address or a unix
//! socket path. Off unless given.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::ConfigError;

/// The address of the metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddress {
    /// `ADDR:PORT` (`127.0.0.1:9100`, `[::1]:9100`); port 0 picks a free one.
    Tcp(SocketAddr),
    /// A unix socket path (anything with a `/`, e.g. `/run/ss-rs/metrics.sock`).
    Unix(PathBuf),
}

impl MetricsAddress {
    /// Reads `text`: an IP address with a port, or a path containing `/`.
    pub fn parse(text: &str) -> Result<MetricsAddress, ConfigError> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(MetricsAddress::Tcp(addr));
        }
        if text.contains('/') {
            return Ok(MetricsAddress::Unix(PathBuf::from(text)));
        }
        Err(ConfigError::field_error(
            "metrics",
            format!("{text:?} is neither ADDR:PORT (e.g. 127.0.0.1:9100) nor a unix socket path"),
        ))
    }
}

impl fmt::Display for MetricsAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetricsAddress::Tcp(addr) => write!(f, "{addr}"),
            MetricsAddress::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_a_path_or_a_one_line_error() {
        assert_eq!(
            MetricsAddress::parse("127.0.0.1:9100").unwrap(),
            MetricsAddress::Tcp("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(
            MetricsAddress::parse("[::1]:0").unwrap(),
            MetricsAddress::Tcp("[::1]:0".parse().unwrap())
        );
        assert_eq!(
            MetricsAddress::parse("/run/ss/metrics.sock").unwrap(),
            MetricsAddress::Unix("/run/ss/metrics.sock".into())
        );
        let error = MetricsAddress::parse("localhost:9100").unwrap_err().to_string();
        assert!(error.starts_with("metrics:") && !error.contains('\n'), "{error}");
    }
}
