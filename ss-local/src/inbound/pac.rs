//! The PAC file served on the local port at `/proxy.pac`: browsers given
//! `http://127.0.0.1:<port>/proxy.pac` as their automatic proxy configuration send everything through
//! the port, SOCKS5 first (names resolved by the server), HTTP as the fallback.
//!
//! With an ACL (`--acl`) the file carries its bypass and proxy lists and answers as ss-local routes:
//!
//! ```text
//! IP literal ─▶ bypass nets ─▶ DIRECT, proxy nets ─▶ the port, else the default
//! name       ─▶ bypass names (exact, domain and subdomains, regexes) ─▶ DIRECT, proxy names ─▶ the port,
//!               else: only when the list that could overturn the default has nets, dnsResolve(host)
//!               and its nets; else the default ([proxy_all]: the port, [bypass_all]: DIRECT)
//! ```
//!
//! PAC's `isInNet` knows IPv4 only, so IPv6 blocks are left out of the file (ss-local still applies them
//! to what reaches the port). Regexes go to JavaScript's `RegExp` (case-insensitive); one JavaScript
//! cannot compile is skipped rather than breaking the file.
//!
//! The addresses in it are the local end of the connection that fetched it, so a port listening on
//! every address hands each client the address it reached.

use std::net::SocketAddr;

use ss_config::acl::{Acl, ListRules};

/// The `Content-Type` browsers expect for a PAC file.
pub(crate) const CONTENT_TYPE: &str = "application/x-ns-proxy-autoconfig";

/// The path the PAC file is served at.
pub(crate) const PATH: &str = "/proxy.pac";

/// The PAC file for a port reached at `local`, routing by `acl` when there is one.
pub(crate) fn script(local: SocketAddr, acl: Option<&Acl>) -> String {
    let Some(acl) = acl else {
        return format!(
            "// ss-local: everything through {local}, SOCKS5 (remote DNS) first, HTTP as the fallback.\n\
             function FindProxyForURL(url, host) {{\n  return \"SOCKS5 {local}; PROXY {local}\";\n}}\n"
        );
    };
    let (bypass, proxy) = acl.route_lists();
    format!(
        "// ss-local: the ACL's routes; proxied targets through {local}, SOCKS5 first, HTTP as the fallback.\n\
         var PROXY = \"SOCKS5 {local}; PROXY {local}\";\n\
         var BYPASS_ALL = {bypass_all};\n\
         var BYPASS = {bypass};\n\
         var PROXIED = {proxy};\n\
         {ROUTING}",
        bypass_all = acl.bypasses_by_default(),
        bypass = list(&bypass),
        proxy = list(&proxy),
    )
}

/// One list as a JavaScript expression: `rules(suffixes, exact, regexes, nets)`.
fn list(rules: &ListRules) -> String {
    let set = |names: &[String]| {
        let object: serde_json::Map<String, serde_json::Value> =
            names.iter().map(|name| (name.clone(), serde_json::Value::from(1))).collect();
        serde_json::Value::Object(object).to_string()
    };
    let nets: Vec<[String; 2]> = rules
        .nets
        .iter()
        .filter_map(|net| match net {
            ipnet::IpNet::V4(net) => Some([net.network().to_string(), net.netmask().to_string()]),
            ipnet::IpNet::V6(_) => None,
        })
        .collect();
    format!(
        "rules({}, {}, {}, {})",
        set(&rules.suffixes),
        set(&rules.exact),
        serde_json::Value::from(rules.regexes.clone()),
        serde_json::json!(nets)
    )
}

/// The fixed part: the helpers and `FindProxyForURL`, in the order ss-local routes (route.rs).
const ROUTING: &str = r#"
function rules(suffixes, exact, patterns, nets) {
  var regexes = [];
  for (var i = 0; i < patterns.length; i++) {
    try { regexes.push(new RegExp(patterns[i], "i")); } catch (e) {}
  }
  return { suffixes: suffixes, exact: exact, regexes: regexes, nets: nets };
}
function has(object, key) { return Object.prototype.hasOwnProperty.call(object, key); }
function nameIn(list, host) {
  if (has(list.exact, host)) return true;
  for (var name = host; ; ) {
    if (has(list.suffixes, name)) return true;
    var dot = name.indexOf(".");
    if (dot < 0) break;
    name = name.substring(dot + 1);
  }
  for (var i = 0; i < list.regexes.length; i++) {
    if (list.regexes[i].test(host)) return true;
  }
  return false;
}
function addressIn(list, ip) {
  for (var i = 0; i < list.nets.length; i++) {
    if (isInNet(ip, list.nets[i][0], list.nets[i][1])) return true;
  }
  return false;
}
function byDefault() { return BYPASS_ALL ? "DIRECT" : PROXY; }
function FindProxyForURL(url, host) {
  host = host.toLowerCase();
  if (host.charAt(host.length - 1) == ".") host = host.substring(0, host.length - 1);
  if (/^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$/.test(host)) {
    if (addressIn(BYPASS, host)) return "DIRECT";
    if (addressIn(PROXIED, host)) return PROXY;
    return byDefault();
  }
  if (nameIn(BYPASS, host)) return "DIRECT";
  if (nameIn(PROXIED, host)) return PROXY;
  // Resolving here leaks the name to the local resolver: only when a net could change the answer.
  var overturning = BYPASS_ALL ? PROXIED : BYPASS;
  if (overturning.nets.length > 0) {
    var ip = dnsResolve(host);
    if (ip && addressIn(BYPASS, ip)) return "DIRECT";
    if (ip && addressIn(PROXIED, ip)) return PROXY;
  }
  return byDefault();
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_names_the_port_for_both_protocols() {
        let script = script("127.0.0.1:1080".parse().unwrap(), None);
        assert!(script.contains("function FindProxyForURL(url, host)"));
        assert!(script.contains("return \"SOCKS5 127.0.0.1:1080; PROXY 127.0.0.1:1080\";"));
        let v6 = super::script("[::1]:8080".parse().unwrap(), None);
        assert!(v6.contains("SOCKS5 [::1]:8080; PROXY [::1]:8080"));
    }

    #[test]
    fn an_acl_becomes_its_lists_in_javascript() {
        let acl =
            Acl::parse(b"[proxy_all]\n[bypass_list]\n||cn\n|a.example\n^rx\"[0-9]+$\n10.0.0.0/8\nfc00::/7\n")
                .unwrap()
                .acl;
        let script = script("127.0.0.1:1080".parse().unwrap(), Some(&acl));
        assert!(script.contains("var PROXY = \"SOCKS5 127.0.0.1:1080; PROXY 127.0.0.1:1080\";"));
        assert!(script.contains("var BYPASS_ALL = false;"));
        assert!(
            script.contains(r#"var BYPASS = rules({"cn":1}, {"a.example":1}, ["^rx\"[0-9]+$"], [["10.0.0.0","255.0.0.0"]]);"#),
            "{script}"
        );
        assert!(script.contains("var PROXIED = rules({}, {}, [], []);"));
        assert!(!script.contains("fc00"), "IPv6 blocks are left out");
    }
}
