//! ACL files (shadowsocks-libev / shadowsocks-rust syntax) compiled into an [`Acl`]: pure, no I/O
//! beyond [`Acl::load`] reading the file, used by both binaries.
//!
//! ```text
//! # comment                       lines before any section go to the bypass list
//! [proxy_all]                     default: proxy (alias [accept_all]); [bypass_all] / [reject_all]
//! [bypass_list]                   alias [black_list]: connect directly (ss-local) / refuse the client (ss-server)
//! 192.168.0.0/16
//! ||cn                            the domain and all its subdomains
//! [proxy_list]                    alias [white_list]: through the server (ss-local) / admit the client
//! |www.example.com                exactly this name
//! (^|\.)google\.com$              a regex on the host name (this common form is stored as ||google.com)
//! [outbound_block_list]           ss-server: targets it never connects to
//! [outbound_allow_list]           ss-server: targets allowed even under [outbound_block_all], and the
//!                                 only way to reach private addresses through an ACL
//! [outbound_block_all] / [outbound_allow_all]   the server's default for other targets (allow)
//! ```
//!
//! Precedence (libev's): the bypass list is tried before the proxy list, for names and for addresses
//! alike. A name that matches both lists is bypassed, and [`HostRoute::Decided`] says so, so the caller
//! can warn. shadowsocks-rust tries the proxy list first for names; a file written for it that lists a
//! name in both lists therefore routes differently here, and the warning points at it.
//!
//! Bad lines (non-UTF-8 text, non-ASCII, longer than [`MAX_LINE`], a regex that does not compile, an
//! unknown section) are skipped, each with a warning naming its line; they never make the file fail.

mod rules;

use std::net::IpAddr;
use std::path::Path;

use rules::{Rule, RuleSet, RuleSetBuilder};

/// Longest rule line kept; longer ones are skipped with a warning (host names are at most 253).
pub const MAX_LINE: usize = 2048;

/// At most this many warnings are kept per file; the rest are counted in one last line.
const MAX_WARNINGS: usize = 100;

/// A compiled ACL.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    bypass_all: bool,
    bypass: RuleSet,
    proxy: RuleSet,
    outbound_block_all: bool,
    outbound_block: RuleSet,
    outbound_allow: RuleSet,
}

/// What ss-local does with a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through the Shadowsocks server.
    Proxy,
    /// Directly from ss-local.
    Bypass,
}

/// The answer for a target given by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRoute {
    /// The host rules decided. `in_both` is set when the name matched the bypass and the proxy list.
    Decided {
        /// Where the connection goes.
        route: Route,
        /// The name is in both lists (bypass won).
        in_both: bool,
    },
    /// No host rule matched, and the list that could overturn the default has IP rules: resolve the
    /// name and ask [`Acl::route_ip`].
    ResolveFirst,
}

/// One list's rules as data, for writing them in another language (ss-local's PAC file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRules {
    /// Domains matched with all their subdomains (lower case), sorted.
    pub suffixes: Vec<String>,
    /// Names matched exactly (lower case), sorted.
    pub exact: Vec<String>,
    /// Regular expressions on the host name (matched case-insensitively), in file order.
    pub regexes: Vec<String>,
    /// Address blocks, merged where they overlap.
    pub nets: Vec<ipnet::IpNet>,
}

/// An ACL file that could not be used at all (bad lines only give warnings).
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A list's regexes together exceed the compiled-size limit.
    #[error("the regexes of [{list}] are too large together: {source}")]
    TooLarge {
        /// The list.
        list: &'static str,
        /// Why.
        source: regex::Error,
    },
    /// An error in a named file.
    #[error("{path}: {source}")]
    InFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        source: Box<AclError>,
    },
}

/// A parsed file: the rules and the warnings about skipped lines.
#[derive(Debug)]
pub struct Parsed {
    /// The compiled rules.
    pub acl: Acl,
    /// One line per skipped line or doubtful rule, e.g. `line 7: not ASCII, skipped`.
    pub warnings: Vec<String>,
}

impl Acl {
    /// Reads and compiles the ACL file at `path`; warnings name `path` and the line.
    pub fn load(path: &Path) -> Result<Parsed, AclError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| AclError::Read { path: shown.clone(), source })?;
        let mut parsed = Acl::parse(&bytes)
            .map_err(|error| AclError::InFile { path: shown.clone(), source: Box::new(error) })?;
        for warning in &mut parsed.warnings {
            *warning = format!("{shown}: {warning}");
        }
        Ok(parsed)
    }

    /// Compiles an ACL from the file's bytes (not necessarily UTF-8: bad lines are skipped).
    pub fn parse(bytes: &[u8]) -> Result<Parsed, AclError> {
        let mut builder = Builder::default();
        for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
            builder.line(index + 1, line);
        }
        builder.finish()
    }

    /// Where ss-local sends a connection to this name, by host rules alone when they suffice.
    pub fn route_host(&self, host: &str) -> HostRoute {
        let bypass = self.bypass.matches_host(host);
        let proxy = self.proxy.matches_host(host);
        if bypass || proxy {
            let route = if bypass { Route::Bypass } else { Route::Proxy };
            return HostRoute::Decided { route, in_both: bypass && proxy };
        }
        // Resolving leaks the name to the local resolver: do it only when an IP rule could change the
        // answer, i.e. the list opposite to the default has IP rules.
        let overturning = if self.bypass_all { &self.proxy } else { &self.bypass };
        if overturning.has_ip_rules() {
            return HostRoute::ResolveFirst;
        }
        HostRoute::Decided { route: self.default_route(), in_both: false }
    }

    /// Whether targets no list names are bypassed (`[bypass_all]`) rather than proxied.
    pub fn bypasses_by_default(&self) -> bool {
        self.bypass_all
    }

    /// The bypass list's rules and the proxy list's, in that order (the order they are tried in).
    pub fn route_lists(&self) -> (ListRules, ListRules) {
        (self.bypass.rules(), self.proxy.rules())
    }

    /// Where ss-local sends a connection to this address (bypass list first).
    pub fn route_ip(&self, ip: IpAddr) -> Route {
        if self.bypass.matches_ip(ip) {
            Route::Bypass
        } else if self.proxy.matches_ip(ip) {
            Route::Proxy
        } else {
            self.default_route()
        }
    }

    /// ss-server: whether a client from this address is served. Listed in the bypass (black) list: no;
    /// under `[reject_all]`: only when in the proxy (white) list.
    pub fn admits_client(&self, ip: IpAddr) -> bool {
        self.route_ip(ip) == Route::Proxy
    }

    /// ss-server: whether a target name is blocked by host rules (before resolving it). The allow list
    /// wins over the block list.
    pub fn blocks_host(&self, host: &str) -> bool {
        if self.outbound_allow.matches_host(host) {
            return false;
        }
        self.outbound_block_all || self.outbound_block.matches_host(host)
    }

    /// ss-server: whether a resolved target address is blocked. The allow list wins.
    pub fn blocks_ip(&self, ip: IpAddr) -> bool {
        if self.outbound_allow.matches_ip(ip) {
            return false;
        }
        self.outbound_block_all || self.outbound_block.matches_ip(ip)
    }

    /// ss-server: whether the operator's `[outbound_allow_list]` names this address explicitly, the only
    /// thing that lets an ACL open a private address.
    pub fn explicitly_allows_ip(&self, ip: IpAddr) -> bool {
        self.outbound_allow.matches_ip(ip)
    }

    fn default_route(&self) -> Route {
        if self.bypass_all {
            Route::Bypass
        } else {
            Route::Proxy
        }
    }
}

/// The list rule lines go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum List {
    Bypass,
    Proxy,
    OutboundBlock,
    OutboundAllow,
    /// After an unknown section header: lines are skipped.
    Unknown,
}

#[derive(Debug, Default)]
struct Builder {
    current: Option<List>,
    acl: Acl,
    bypass: RuleSetBuilder,
    proxy: RuleSetBuilder,
    outbound_block: RuleSetBuilder,
    outbound_allow: RuleSetBuilder,
    warnings: Vec<String>,
    more_warnings: usize,
}

impl Builder {
    fn line(&mut self, number: usize, raw: &[u8]) {
        let Ok(text) = std::str::from_utf8(raw) else {
            return self.warn(number, "not UTF-8, skipped");
        };
        let line = text.trim();
        if line.is_empty() || line.starts_with('#') {
            return;
        }
        if line.len() > MAX_LINE {
            return self.warn(number, &format!("longer than {MAX_LINE} bytes, skipped"));
        }
        if !line.is_ascii() {
            return self.warn(number, "not ASCII (write names in punycode), skipped");
        }
        if let Some(section) = line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
            return self.section(number, section);
        }
        let list = self.current.unwrap_or(List::Bypass);
        let rule = Rule::classify(line);
        if matches!(&rule, Rule::Suffix(name) | Rule::Exact(name) if name.is_empty()) {
            return self.warn(number, "no domain after | or ||, skipped");
        }
        if let Rule::Regex(pattern) = &rule {
            if let Err(error) = regex::Regex::new(pattern) {
                let first = error.to_string().lines().last().unwrap_or_default().to_owned();
                return self.warn(number, &format!("not a valid regex ({first}), skipped"));
            }
        }
        let other = match list {
            List::Bypass => Some(&self.proxy),
            List::Proxy => Some(&self.bypass),
            _ => None,
        };
        if other.is_some_and(|other| other.holds(&rule)) {
            self.warn(number, "this host rule is in both [bypass_list] and [proxy_list]; bypass wins");
        }
        match list {
            List::Bypass => self.bypass.add(rule),
            List::Proxy => self.proxy.add(rule),
            List::OutboundBlock => self.outbound_block.add(rule),
            List::OutboundAllow => self.outbound_allow.add(rule),
            List::Unknown => {}
        }
    }

    fn section(&mut self, number: usize, name: &str) {
        let list = match name {
            "proxy_all" | "accept_all" => return self.acl.bypass_all = false,
            "bypass_all" | "reject_all" => return self.acl.bypass_all = true,
            "outbound_block_all" => return self.acl.outbound_block_all = true,
            "outbound_allow_all" => return self.acl.outbound_block_all = false,
            "bypass_list" | "black_list" => List::Bypass,
            "proxy_list" | "white_list" => List::Proxy,
            "outbound_block_list" => List::OutboundBlock,
            "outbound_allow_list" => List::OutboundAllow,
            _ => {
                self.warn(number, &format!("unknown section [{name}]; its lines are skipped"));
                List::Unknown
            }
        };
        self.current = Some(list);
    }

    fn warn(&mut self, number: usize, what: &str) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(format!("line {number}: {what}"));
        } else {
            self.more_warnings += 1;
        }
    }

    fn finish(mut self) -> Result<Parsed, AclError> {
        let build = |list: &'static str, builder: RuleSetBuilder| {
            builder.build().map_err(|source| AclError::TooLarge { list, source })
        };
        self.acl.bypass = build("bypass_list", self.bypass)?;
        self.acl.proxy = build("proxy_list", self.proxy)?;
        self.acl.outbound_block = build("outbound_block_list", self.outbound_block)?;
        self.acl.outbound_allow = build("outbound_allow_list", self.outbound_allow)?;
        if self.more_warnings > 0 {
            self.warnings.push(format!("... and {} more skipped lines", self.more_warnings));
        }
        Ok(Parsed { acl: self.acl, warnings: self.warnings })
    }
}

#[cfg(test)]
mod tests;
