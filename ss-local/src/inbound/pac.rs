//! The PAC file served on the local port at `/proxy.pac`: browsers given
//! `http://127.0.0.1:<port>/proxy.pac` as their automatic proxy configuration send everything through
//! the port, SOCKS5 first (names resolved by the server), HTTP as the fallback.
//!
//! The addresses in it are the local end of the connection that fetched it, so a port listening on
//! every address hands each client the address it reached.

use std::net::SocketAddr;

/// The `Content-Type` browsers expect for a PAC file.
pub(crate) const CONTENT_TYPE: &str = "application/x-ns-proxy-autoconfig";

/// The path the PAC file is served at.
pub(crate) const PATH: &str = "/proxy.pac";

/// The PAC file for a port reached at `local`.
pub(crate) fn script(local: SocketAddr) -> String {
    format!(
        "// ss-local: everything through {local}, SOCKS5 (remote DNS) first, HTTP as the fallback.\n\
         function FindProxyForURL(url, host) {{\n  return \"SOCKS5 {local}; PROXY {local}\";\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_names_the_port_for_both_protocols() {
        let script = script("127.0.0.1:1080".parse().unwrap());
        assert!(script.contains("function FindProxyForURL(url, host)"));
        assert!(script.contains("return \"SOCKS5 127.0.0.1:1080; PROXY 127.0.0.1:1080\";"));
        assert!(super::script("[::1]:8080".parse().unwrap()).contains("SOCKS5 [::1]:8080; PROXY [::1]:8080"));
    }
}
