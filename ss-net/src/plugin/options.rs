//! `SS_PLUGIN_OPTIONS`: the plugin's options as one string, `key=value` pairs joined by `;` (SIP003).
//!
//! ```text
//!   obfs=http;obfs-host=example.com          two pairs
//!   server;tls;host=a\;b.example             flags without a value; a `;` inside a value, escaped
//! ```
//!
//! Inside a key or a value, `;`, `=` and `\` are written with a backslash before them, so any key and
//! value survive [`encode`] then [`decode`]. `plugin_opts` in a config file is already in this form and
//! is passed to the plugin unchanged; these functions are for building it from parts and checking it.

/// Joins `pairs` into one options string; a `None` value gives a bare key (a flag such as `tls`).
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, Option<V>)]) -> String {
    let mut out = String::new();
    for (index, (key, value)) in pairs.iter().enumerate() {
        if index > 0 {
            out.push(';');
        }
        escape_into(&mut out, key.as_ref());
        if let Some(value) = value {
            out.push('=');
            escape_into(&mut out, value.as_ref());
        }
    }
    out
}

/// Splits an options string into `(key, value)` pairs, undoing the escapes; a bare key has no value.
/// Never fails: a trailing lone backslash stands for itself, an empty pair (`a;;b`) is skipped, and a
/// second unescaped `=` belongs to the value (`k=a=b` is `k` = `a=b`), as plugins read it.
pub fn decode(options: &str) -> Vec<(String, Option<String>)> {
    let mut pairs = Vec::new();
    let mut key = String::new();
    let mut value: Option<String> = None;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        let c = match c {
            '\\' => chars.next().unwrap_or('\\'),
            ';' => {
                let (done_key, done_value) = (std::mem::take(&mut key), value.take());
                if !done_key.is_empty() || done_value.is_some() {
                    pairs.push((done_key, done_value));
                }
                continue;
            }
            '=' if value.is_none() => {
                value = Some(String::new());
                continue;
            }
            c => c,
        };
        value.as_mut().unwrap_or(&mut key).push(c);
    }
    if !key.is_empty() || value.is_some() {
        pairs.push((key, value));
    }
    pairs
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        if matches!(c, ';' | '=' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn owned(pairs: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        pairs.iter().map(|(key, value)| (key.to_string(), value.map(str::to_string))).collect()
    }

    #[test]
    fn plugin_option_strings_as_written_in_configs() {
        assert_eq!(
            decode("obfs=http;obfs-host=example.com"),
            owned(&[("obfs", Some("http")), ("obfs-host", Some("example.com"))])
        );
        assert_eq!(
            decode("server;tls;host=a\\;b.example;path=/x\\=y\\\\"),
            owned(&[
                ("server", None),
                ("tls", None),
                ("host", Some("a;b.example")),
                ("path", Some("/x=y\\"))
            ])
        );
        assert_eq!(decode("k=a=b;;v=;"), owned(&[("k", Some("a=b")), ("v", Some(""))]));
        assert_eq!(decode("end\\"), owned(&[("end\\", None)]));
        assert_eq!(decode(""), owned(&[]));
    }

    #[test]
    fn encoding_escapes_the_three_special_characters() {
        let pairs = [("host", Some("a;b=c\\d")), ("tls", None)];
        assert_eq!(encode(&pairs), "host=a\\;b\\=c\\\\d;tls");
    }

    proptest! {
        #[test]
        fn any_keys_and_values_round_trip(
            pairs in proptest::collection::vec(("[a-z;=\\\\ é-]{1,8}", proptest::option::of("[a-z;=\\\\/ é-]{0,8}")), 0..6)
        ) {
            prop_assert_eq!(decode(&encode(&pairs)), pairs);
        }

        #[test]
        fn decode_takes_any_string(text in "\\PC{0,40}") {
            let _ = decode(&text);
        }
    }
}
