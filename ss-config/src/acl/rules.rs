//! One compiled list of an ACL file (`[bypass_list]`, `[proxy_list]`, ...): the rule lines sorted into
//! the cheapest structure that answers them.
//!
//! ```text
//!   1.2.3.4, 10.0.0.0/8, ::1, fc00::/7  -> prefix tables (iprange: a trie per family)
//!   ||example.com, (^|\.)example\.com$  -> suffix set (the name and each parent, one hash lookup each)
//!   |example.com, ^example\.com$        -> exact set
//!   anything else                       -> one RegexSet over the lower-cased name
//! ```
//!
//! The two regex spellings that only say "this domain and its subdomains" or "exactly this name" are by
//! far the most common lines in the large lists people load (gfwlist conversions); keeping them out of
//! the RegexSet is what keeps both its compile time and each lookup small.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use iprange::IpRange;
use regex::{RegexSet, RegexSetBuilder};

/// What one rule line is, once classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Rule {
    /// An address or a CIDR block.
    Net(IpNet),
    /// A domain and all its subdomains (lower case, no trailing dot).
    Suffix(String),
    /// Exactly this host name (lower case, no trailing dot).
    Exact(String),
    /// A regular expression on the host name.
    Regex(String),
}

impl Rule {
    /// Classifies one trimmed, non-empty rule line. Regexes are not compiled here: the caller checks them.
    pub(super) fn classify(line: &str) -> Rule {
        if let Ok(ip) = line.parse::<IpAddr>() {
            return Rule::Net(IpNet::from(ip.to_canonical()));
        }
        if let Ok(net) = line.parse::<IpNet>() {
            return Rule::Net(net.trunc());
        }
        if let Some(domain) = line.strip_prefix("||") {
            return Rule::Suffix(normalize(domain));
        }
        if let Some(domain) = line.strip_prefix('|') {
            return Rule::Exact(normalize(domain));
        }
        if let Some(domain) = line.strip_prefix(r"(^|\.)").and_then(|rest| rest.strip_suffix('$')) {
            if let Some(domain) = unescape_domain(domain) {
                return Rule::Suffix(domain);
            }
        }
        if let Some(domain) = line.strip_prefix('^').and_then(|rest| rest.strip_suffix('$')) {
            if let Some(domain) = unescape_domain(domain) {
                return Rule::Exact(domain);
            }
        }
        Rule::Regex(line.to_owned())
    }
}

/// A compiled list.
#[derive(Debug, Clone, Default)]
pub(super) struct RuleSet {
    ipv4: IpRange<Ipv4Net>,
    ipv6: IpRange<Ipv6Net>,
    suffixes: HashSet<String>,
    exact: HashSet<String>,
    regexes: Option<RegexSet>,
}

/// A list's rules before compilation; regexes are already known to compile one by one.
#[derive(Debug, Default)]
pub(super) struct RuleSetBuilder {
    set: RuleSet,
    regexes: Vec<String>,
    /// The same patterns, to answer [`RuleSetBuilder::holds`] without a scan per line.
    known_regexes: HashSet<String>,
}

impl RuleSetBuilder {
    /// Adds one classified rule.
    pub(super) fn add(&mut self, rule: Rule) {
        match rule {
            Rule::Net(IpNet::V4(net)) => {
                self.set.ipv4.add(net);
            }
            Rule::Net(IpNet::V6(net)) => {
                self.set.ipv6.add(net);
            }
            Rule::Suffix(domain) => {
                self.set.suffixes.insert(domain);
            }
            Rule::Exact(name) => {
                self.set.exact.insert(name);
            }
            Rule::Regex(pattern) => {
                if self.known_regexes.insert(pattern.clone()) {
                    self.regexes.push(pattern);
                }
            }
        }
    }

    /// Whether this list already holds exactly this host rule (to warn about a name in two lists).
    pub(super) fn holds(&self, rule: &Rule) -> bool {
        match rule {
            Rule::Suffix(domain) => self.set.suffixes.contains(domain),
            Rule::Exact(name) => self.set.exact.contains(name),
            Rule::Regex(pattern) => self.known_regexes.contains(pattern),
            Rule::Net(_) => false,
        }
    }

    /// Compiles the list. Every regex compiled alone already, so the set only fails on its size limit,
    /// which is reported as the error.
    pub(super) fn build(mut self) -> Result<RuleSet, regex::Error> {
        self.set.ipv4.simplify();
        self.set.ipv6.simplify();
        if !self.regexes.is_empty() {
            let set = RegexSetBuilder::new(&self.regexes)
                .case_insensitive(true)
                .size_limit(REGEX_SET_SIZE_LIMIT)
                .dfa_size_limit(REGEX_SET_SIZE_LIMIT)
                .build()?;
            self.set.regexes = Some(set);
        }
        Ok(self.set)
    }
}

/// Room for thousands of real regexes (regex's default is 10 MiB); an ACL file is trusted local input,
/// but not unbounded.
const REGEX_SET_SIZE_LIMIT: usize = 256 << 20;

impl RuleSet {
    /// Whether any IP rule is in this list (a name needs resolving only to test those).
    pub(super) fn has_ip_rules(&self) -> bool {
        !self.ipv4.is_empty() || !self.ipv6.is_empty()
    }

    /// The list as data.
    pub(super) fn rules(&self) -> super::ListRules {
        let sorted = |set: &HashSet<String>| {
            let mut list: Vec<String> = set.iter().cloned().collect();
            list.sort_unstable();
            list
        };
        let mut nets: Vec<IpNet> = self.ipv4.iter().map(IpNet::V4).collect();
        nets.extend(self.ipv6.iter().map(IpNet::V6));
        super::ListRules {
            suffixes: sorted(&self.suffixes),
            exact: sorted(&self.exact),
            regexes: self.regexes.as_ref().map(|set| set.patterns().to_vec()).unwrap_or_default(),
            nets,
        }
    }

    /// Whether an address is in this list. IPv4-mapped IPv6 addresses count as IPv4.
    pub(super) fn matches_ip(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(ip) => self.ipv4.contains(&ip),
            IpAddr::V6(ip) => self.ipv6.contains(&ip),
        }
    }

    /// Whether a host name (any case, trailing dot or not) is in this list. An address written as a name
    /// is tested against the IP rules only, as both peers do.
    pub(super) fn matches_host(&self, host: &str) -> bool {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.matches_ip(ip);
        }
        if host.starts_with('[') {
            let inner = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = inner.parse::<Ipv6Addr>() {
                return self.matches_ip(IpAddr::V6(ip));
            }
        }
        let name = normalize(host);
        if self.exact.contains(&name) || self.matches_suffix(&name) {
            return true;
        }
        self.regexes.as_ref().is_some_and(|set| set.is_match(&name))
    }

    fn matches_suffix(&self, name: &str) -> bool {
        if self.suffixes.is_empty() {
            return false;
        }
        let mut rest = name;
        loop {
            if self.suffixes.contains(rest) {
                return true;
            }
            match rest.split_once('.') {
                Some((_, parent)) => rest = parent,
                None => return false,
            }
        }
    }
}

/// Lower case without a trailing dot: how names are stored and looked up.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// `example\.com` -> `example.com` when the text is nothing but an escaped domain name; `None` when it
/// holds any other regex syntax, so the line stays a regex.
fn unescape_domain(escaped: &str) -> Option<String> {
    let name = escaped.replace(r"\.", ".");
    let plain = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !name.starts_with('.')
        && !name.contains("..");
    // An unescaped '.' in the original is regex "any character", not a label separator.
    let dots_escaped = escaped.matches('.').count() == escaped.matches(r"\.").count();
    (plain && dots_escaped).then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(lines: &[&str]) -> RuleSet {
        let mut builder = RuleSetBuilder::default();
        for line in lines {
            builder.add(Rule::classify(line));
        }
        builder.build().unwrap()
    }

    #[test]
    fn lines_are_classified_by_their_cheapest_structure() {
        let net = |text: &str| Rule::Net(text.parse().unwrap());
        assert_eq!(Rule::classify("1.2.3.4"), net("1.2.3.4/32"));
        assert_eq!(Rule::classify("10.1.2.3/8"), net("10.0.0.0/8"));
        assert_eq!(Rule::classify("::ffff:1.2.3.4"), net("1.2.3.4/32"));
        assert_eq!(Rule::classify("fc00::/7"), net("fc00::/7"));
        assert_eq!(Rule::classify("||Example.COM."), Rule::Suffix("example.com".into()));
        assert_eq!(Rule::classify("|a.example.com"), Rule::Exact("a.example.com".into()));
        assert_eq!(Rule::classify(r"(^|\.)google\.com$"), Rule::Suffix("google.com".into()));
        assert_eq!(Rule::classify(r"^www\.google\.com$"), Rule::Exact("www.google.com".into()));
        // An unescaped dot is "any character": it must stay a regex.
        assert_eq!(Rule::classify(r"(^|\.)google.com$"), Rule::Regex(r"(^|\.)google.com$".into()));
        assert_eq!(Rule::classify(r"^ad[0-9]+\.x$"), Rule::Regex(r"^ad[0-9]+\.x$".into()));
        assert_eq!(Rule::classify("example.com"), Rule::Regex("example.com".into()));
    }

    #[test]
    fn suffix_exact_regex_and_ip_lookups() {
        let set = set(&["||example.com", "|only.example.org", r"^ads?\d+\.", "10.0.0.0/8", "2001:db8::/32"]);
        assert!(set.matches_host("example.com") && set.matches_host("A.B.Example.Com."));
        assert!(!set.matches_host("notexample.com") && !set.matches_host("example.com.evil"));
        assert!(set.matches_host("only.example.org") && !set.matches_host("x.only.example.org"));
        assert!(set.matches_host("AD12.tracker.net") && !set.matches_host("bad12.tracker.net"));
        assert!(
            set.matches_ip("10.200.0.1".parse().unwrap()) && !set.matches_ip("11.0.0.1".parse().unwrap())
        );
        assert!(set.matches_ip("::ffff:10.0.0.1".parse().unwrap()), "IPv4-mapped counts as IPv4");
        assert!(set.matches_host("2001:db8::5") && set.matches_host("[2001:db8::5]"));
        assert!(!set.matches_host("10.0.0.1.example.net"));
        assert!(set.has_ip_rules() && !self::set(&["||a.b"]).has_ip_rules());
    }
}
