//! Manual pages for `ss-local(1)` and `ss-server(1)`, made from the command line's own definition.
//!
//! The options section is clap's (`clap_mangen`), so it cannot drift from `--help`; the sections a
//! manual page needs beyond it (the config file, signals, environment, files, exit status, examples)
//! are written here, in roff through the `roff` crate. `--man-page` prints the page; the Debian
//! package ships `packaging/man/*.1`, which a test compares with what the binaries print now
//! (`scripts/update-man-pages.sh` writes them anew).

use clap::{Command, CommandFactory};
use roff::{bold, roman, Roff};

use crate::cli::Binary;

/// One part of a section: a paragraph, or a term with its explanation (an indented list entry).
enum Part {
    Para(&'static str),
    Term(&'static str, &'static str),
}

use Part::{Para, Term};

/// The manual page of `binary`, whose parser is `P` (the binary's `Args`), in roff.
pub fn man_page<P: CommandFactory>(binary: Binary) -> Vec<u8> {
    let command: Command = binary.command(P::command()).name(binary.name());
    let man = clap_mangen::Man::new(command)
        .section("1")
        .source(format!("ss-rs {}", env!("CARGO_PKG_VERSION")))
        .manual("User Commands");
    let mut page = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = render(&man, binary, &mut page);
    page
}

/// Prints the manual page of `binary` to stdout (`--man-page`); the exit code says whether it was written.
pub fn print<P: CommandFactory>(binary: Binary) -> std::process::ExitCode {
    use std::io::Write as _;
    match std::io::stdout().write_all(&man_page::<P>(binary)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}

fn render(man: &clap_mangen::Man, binary: Binary, page: &mut Vec<u8>) -> std::io::Result<()> {
    man.render_title(page)?;
    man.render_name_section(page)?;
    man.render_synopsis_section(page)?;
    section("DESCRIPTION", description(binary)).to_writer(page)?;
    man.render_options_section(page)?;
    for (title, parts) in sections(binary) {
        section(title, parts).to_writer(page)?;
    }
    man.render_version_section(page)
}

fn section(title: &str, parts: &[Part]) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", [title]);
    for part in parts {
        match part {
            Para(text) => roff.control("PP", []).text([roman(*text)]),
            Term(term, text) => roff.control("TP", []).text([bold(*term)]).text([roman(*text)]),
        };
    }
    roff
}

fn description(binary: Binary) -> &'static [Part] {
    match binary {
        Binary::Local => &[
            Para(
                "ss-local is the client side of Shadowsocks. Programs on this machine connect to it as a \
                 SOCKS5, SOCKS4/4a or HTTP proxy (one port speaks all three), or through tunnels to fixed \
                 targets and transparent proxying (Linux); it encrypts each connection and UDP datagram to a \
                 Shadowsocks server, or connects directly where an ACL bypasses the target.",
            ),
            Para(
                "It takes shadowsocks-libev's flags and config keys (and shadowsocks-rust's servers[] and \
                 locals[] forms), so existing configs run unchanged, and speaks the AEAD and AEAD-2022 \
                 methods with shadowsocks-libev and shadowsocks-rust servers. Several servers can be given: \
                 a balancer chooses among them by health and latency.",
            ),
        ],
        Binary::Server => &[
            Para(
                "ss-server is the server side of Shadowsocks. It decrypts each client connection and UDP \
                 datagram, checks it (authentication, replay, target policy, ACL, user limits), resolves \
                 the target and relays both ways. Clients that fail any check get no answer at all, the \
                 same whatever they sent.",
            ),
            Para(
                "It takes shadowsocks-libev's flags and config keys (and shadowsocks-rust's servers[] \
                 form), serves clients of shadowsocks-libev and shadowsocks-rust with the AEAD and \
                 AEAD-2022 methods, and can serve many users on one port with per-user accounting, \
                 quotas and rate limits.",
            ),
        ],
    }
}

fn sections(binary: Binary) -> Vec<(&'static str, &'static [Part])> {
    let (signals, files, examples): (&'static [Part], &'static [Part], &'static [Part]) = match binary {
        Binary::Local => (LOCAL_SIGNALS, LOCAL_FILES, LOCAL_EXAMPLES),
        Binary::Server => (SERVER_SIGNALS, SERVER_FILES, SERVER_EXAMPLES),
    };
    vec![
        ("CONFIGURATION", CONFIGURATION),
        ("SIGNALS", signals),
        ("ENVIRONMENT", ENVIRONMENT),
        ("FILES", files),
        ("EXIT STATUS", EXIT_STATUS),
        ("EXAMPLES", examples),
        ("SEE ALSO", SEE_ALSO),
    ]
}

const CONFIGURATION: &[Part] = &[
    Para(
        "The config file (-c) is shadowsocks-libev's JSON: server, server_port, password, method, \
         local_address, local_port, timeout, mode, plugin, plugin_opts, acl, nameserver and the rest of its \
         keys, or shadowsocks-rust's servers[] list. One file can serve both programs: each reads the keys \
         it uses. Flags given on the command line win over the file. Keys that are not understood are named \
         in one warning at start. The README (/usr/share/doc/ss-rs/README.md in the package) lists every \
         key, with examples in /usr/share/doc/ss-rs/examples.",
    ),
    Para("--check loads the config exactly as a start does and reports every problem it finds, then exits."),
];

const ENVIRONMENT: &[Part] = &[
    Term("RUST_LOG", "Log filter (e.g. debug, or ss_server=debug); wins over -v and the config's log level."),
    Term(
        "STATE_DIRECTORY",
        "Where state is kept (the usage store, the replay-filter snapshot); set by systemd's \
         StateDirectory=. Else $XDG_STATE_HOME/ss-rs, else ~/.local/state/ss-rs.",
    ),
    Term("NOTIFY_SOCKET", "Set by systemd for Type=notify: readiness and reloads are reported to it."),
];

const LOCAL_SIGNALS: &[Part] = &[
    Term("SIGHUP", "Re-reads the ACL file (a broken file keeps the rules in force and logs why)."),
    Term(
        "SIGTERM, SIGINT",
        "Stops accepting, lets open connections finish for a short drain time, then exits.",
    ),
];

const SERVER_SIGNALS: &[Part] = &[
    Term(
        "SIGHUP",
        "Re-reads the ACL file and the users file: users that stay keep their connections, removed users' \
         connections end, limits are set anew. A file that does not load keeps what is in force and logs why.",
    ),
    Term(
        "SIGTERM, SIGINT",
        "Stops accepting, lets open connections finish for a short drain time, saves the usage store and \
         the replay filter, then exits.",
    ),
];

const LOCAL_FILES: &[Part] = &[
    Term("/etc/ss-rs/NAME.json", "The config of the systemd units ss-local@NAME and ss-local-redir@NAME."),
    Term("/usr/share/doc/ss-rs/examples/", "Example configs."),
];

const SERVER_FILES: &[Part] = &[
    Term("/etc/ss-rs/NAME.json", "The config of the systemd unit ss-server@NAME."),
    Term(
        "$STATE_DIRECTORY/usage.sqlite3",
        "Per-user traffic counters and quota use of multi-user servers (SQLite), kept across restarts.",
    ),
    Term(
        "$STATE_DIRECTORY/replay-PORT.snapshot",
        "The classic methods' replay filter, saved across restarts.",
    ),
    Term("/usr/share/doc/ss-rs/examples/", "Example configs, among them a multi-user one."),
];

const EXIT_STATUS: &[Part] = &[
    Term("0", "Stopped by a signal after a clean shutdown, or --check, --print-url or --generate-key succeeded."),
    Term("1", "A failure after the config was read (a port in use, a plugin that cannot start), or --check found problems."),
    Term("2", "The command line or the config file is wrong; the message names the flag or key."),
];

const LOCAL_EXAMPLES: &[Part] = &[
    Term("ss-local -c /etc/ss-rs/client.json", "Runs with a libev config."),
    Term(
        "ss-local -s example.org -p 8388 -m 2022-blake3-aes-256-gcm -k KEY -l 1080",
        "A SOCKS5 and HTTP proxy on 127.0.0.1:1080 through one server.",
    ),
    Term(
        "curl -x socks5h://127.0.0.1:1080 https://example.org/",
        "Fetches a page through it (SOCKS5, remote DNS).",
    ),
    Term(
        "curl -x http://127.0.0.1:1080 https://example.org/",
        "The same through the HTTP proxy on the same port.",
    ),
    Term(
        "chromium --proxy-pac-url=http://127.0.0.1:1080/proxy.pac",
        "A browser set up by the PAC file it serves.",
    ),
    Term(
        "ss-local -c client.json -u -l 5353 -L 8.8.8.8:53",
        "A tunnel (libev's ss-tunnel): DNS over UDP and TCP to 8.8.8.8 through the server.",
    ),
    Term(
        "ss-local -c client.json -u -b 0.0.0.0 -l 12345 --protocol redir --tcp-redir tproxy",
        "Transparent proxying (libev's ss-redir) for traffic a firewall rule sends to port 12345.",
    ),
];

const SERVER_EXAMPLES: &[Part] = &[
    Term("ss-server --generate-key -m 2022-blake3-aes-256-gcm", "Prints a fresh key for the method."),
    Term("ss-server --check -c /etc/ss-rs/server.json", "Checks a config before starting it."),
    Term("ss-server -c /etc/ss-rs/server.json --print-url --qr", "Shows the ss:// link to give to clients."),
    Term("systemctl enable --now ss-server@server", "Runs /etc/ss-rs/server.json as a service."),
];

const SEE_ALSO: &[Part] = &[Para(
    "ss-local(1), ss-server(1), systemd.exec(5); the README in /usr/share/doc/ss-rs. The Shadowsocks \
     protocol: https://shadowsocks.org/doc/aead.html and SIP022 (AEAD-2022).",
)];

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    #[command(name = "ss-test", version)]
    struct Cli {
        #[command(flatten)]
        args: crate::CliArgs,
    }

    fn page(binary: Binary) -> String {
        String::from_utf8(man_page::<Cli>(binary)).expect("roff is text")
    }

    #[test]
    fn each_page_has_its_name_its_own_flags_and_every_section() {
        let server = page(Binary::Server);
        assert!(server.starts_with(".ie"), "a roff page: {}", &server[..80]);
        assert!(server.contains(".TH ss-server 1"), "titled for its binary");
        for heading in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SIGNALS", "EXIT STATUS", "SEE ALSO"] {
            let quoted = format!(".SH \"{heading}\"");
            assert!(server.contains(&format!(".SH {heading}\n")) || server.contains(&quoted), "{heading}");
        }
        assert!(server.contains("allow\\-private\\-targets"), "the server's own flag");
        assert!(!server.contains("local\\-port"), "ss-local's flag is left out");
        assert!(!server.contains("man\\-page"), "hidden flags stay hidden");
        let local = page(Binary::Local);
        assert!(local.contains(".TH ss-local 1") && local.contains("local\\-port"));
        assert!(!local.contains("allow\\-private\\-targets"));
    }
}
