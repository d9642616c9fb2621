//! What `--print-url` prints: each configured server's SIP002 `ss://` link and, with `--qr`, the link
//! as a QR code drawn with Unicode half blocks, two modules per character cell.
//!
//! The QR code is drawn for a terminal with a dark background: light modules (and the quiet zone
//! around the code) are blocks, dark modules are spaces, so a phone camera sees dark-on-light.
//!
//! ```text
//! ss://MjAyMi1ibGFrZTMtYWVzLTEyOC1nY206...@example.com:8388#Tokyo
//! █████████████████████████████████
//! ██ ▄▄▄▄▄ █▀▄ ▄█▄▀▀█▀ ▀█ ▄▄▄▄▄ ██
//! ...
//! ```
//!
//! A server has no link when its method is a classic one given by its raw `key` (links carry the
//! password), and its plugin's `plugin_args` / `plugin_mode` are not part of a link.

use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;

use crate::ServerEntry;

/// One server's link, or why it has none (the message starts with the server's `host:port`).
#[derive(Debug)]
pub struct SharedServer {
    /// The link (`ss://...`) or the reason there is none.
    pub link: Result<String, String>,
    /// The link as a QR code in half blocks, when asked for and the link fits a QR code.
    pub qr: Option<String>,
}

/// The links of `servers`, in order, each with its QR code when `qr` is set.
pub fn share(servers: &[ServerEntry], qr: bool) -> Vec<SharedServer> {
    servers
        .iter()
        .map(|entry| {
            let link = entry
                .to_url()
                .map(|url| url.to_string())
                .map_err(|why| format!("{}:{}: {why}", entry.host, entry.port));
            let qr = match (&link, qr) {
                (Ok(link), true) => qr_code(link),
                _ => None,
            };
            SharedServer { link, qr }
        })
        .collect()
}

/// Prints each link (and QR code) to stdout, and to stderr why a server has none and a note when a
/// link names an unspecified address (ss-server's `0.0.0.0` or `::`, which a client cannot dial).
/// Returns whether every server had a link.
pub fn print(servers: &[ServerEntry], qr: bool) -> bool {
    let mut all = true;
    for (entry, shared) in servers.iter().zip(share(servers, qr)) {
        match shared.link {
            Ok(link) => println!("{link}"),
            Err(why) => {
                eprintln!("no link for {why}");
                all = false;
                continue;
            }
        }
        if entry.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
            eprintln!(
                "note: {} is the listen address; put the server's public name or address in the link",
                entry.host
            );
        }
        match shared.qr {
            Some(drawing) => println!("{drawing}"),
            None if qr => eprintln!("the link is too long for a QR code"),
            None => {}
        }
    }
    all
}

/// `text` as a QR code in Unicode half blocks (light modules as blocks), with the standard quiet zone;
/// `None` if it is too long for any QR code.
pub fn qr_code(text: &str) -> Option<String> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    let drawing = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build();
    Some(drawing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drawing_is_square_in_modules_and_two_modules_per_line() {
        let drawing = qr_code("ss://YWVzLTEyOC1nY206dGVzdA@192.168.100.1:8888#Example1").unwrap();
        let lines: Vec<&str> = drawing.lines().collect();
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|line| line.chars().count() == width), "{drawing}");
        // Modules: width columns, and two per line (the last line may hold only one).
        assert!(lines.len() * 2 == width || lines.len() * 2 == width + 1, "{width} x {}", lines.len());
        // Version 1 is 21 modules, each version 4 more; the quiet zone is 4 modules each side.
        assert_eq!((width - 8 - 21) % 4, 0, "{width}");
        assert!(drawing.chars().all(|c| " ▀▄█\n".contains(c)), "{drawing}");
        // The quiet zone is light: blocks all along the first line.
        assert!(lines[0].chars().all(|c| c == '█'), "{drawing}");
    }

    #[test]
    fn a_text_too_long_for_a_qr_code_has_none() {
        assert!(qr_code(&"x".repeat(8000)).is_none());
    }
}
