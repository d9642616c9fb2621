//! The configuration shared by `ss-local` and `ss-server`: shadowsocks-libev's JSON config file and
//! command line, checked once into a typed [`Config`].
//!
//! ```text
//!   config.json --serde--> RawConfig --+
//!                                      +-- Config::from_raw --> Config  (Method, Key, u16, Duration)
//!   argv -------clap-----> CliArgs ----+   command line wins
//! ```
//!
//! `ss://` server URLs (SIP002) are read and written by [`parse_ss_url`] and [`format_ss_url`], and
//! taken on the command line by `--server-url`; [`ServerEntry::to_url`] and [`share`] give
//! `--print-url` its links and QR codes. ss-local's `online_config` (SIP008) is checked into
//! [`OnlineConfig`], which also reads the fetched documents ([`OnlineConfig::parse_document`]).
//!
//! After [`load`] (or [`Config::from_raw`]) nothing re-parses strings. Every error is one line that
//! names the field or the file position:
//!
//! ```text
//! method: unknown method "x"; supported methods: aes-128-gcm, ...
//! server_port: "abc" is not a port number (1-65535)
//! password: missing (set "password" in the config or -k)
//! config.json:3:23: expected `,` or `}`
//! ```
//!
//! A binary flattens [`CliArgs`] into its own clap parser, keeps clap's `-h/--help` and `-V/--version`
//! (`#[command(version)]`), and parses with [`parse_for`] so that the other binary's flags are refused:
//!
//! ```no_run
//! use clap::Parser;
//!
//! #[derive(Parser)]
//! #[command(name = "ss-local", version, about = "Shadowsocks local")]
//! struct Cli {
//!     #[command(flatten)]
//!     config: ss_config::CliArgs,
//! }
//!
//! let cli: Cli = ss_config::parse_for(ss_config::Binary::Local);
//! match ss_config::load(&cli.config) {
//!     Ok(config) => println!("{} server(s)", config.servers.len()),
//!     Err(error) => eprintln!("ss-local: {error}"),
//! }
//! ```

#![warn(missing_docs)]

use std::path::PathBuf;

pub mod acl;
mod balance;
mod cli;
mod config;
mod entry;
pub mod limits;
mod locals;
pub mod man;
mod online;
pub mod quota;
mod raw;
mod servers;
pub mod share;
mod url;
pub mod users;

pub use balance::{Balance, RawBalancer, Strategy, Weights};
pub use cli::{parse_for, try_parse_for, Binary, CliArgs};
pub use config::{Config, LogLevel, ReplaySnapshot};
pub use entry::{Mode, Plugin, ServerEntry};
pub use locals::{Forward, Local, Protocol, TcpRedir};
pub use online::{DocumentError, OnlineConfig, OnlineServers, RawOnlineConfig};
pub use raw::{NumberOrString, RawConfig, RawLocal, RawServer};
pub use url::{format_ss_url, parse_ss_url, ServerUrl, UrlError};

/// Reads the config file named by `-c` (if any), lays the command line over it and checks the result.
///
/// `--password-file` and `--password-env` are read here and count as `-k`. A config file that holds a
/// password or key and is readable by group or others adds a warning to [`Config::warnings`].
pub fn load(args: &CliArgs) -> Result<Config, ConfigError> {
    let raw = match &args.config {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    let mut warnings = Vec::new();
    if let Some(path) = &args.config {
        if !raw.ignored_keys.is_empty() {
            warnings.push(format!(
                "{}: no setting takes these keys, so they are ignored: {}",
                path.display(),
                raw.ignored_keys.join(", ")
            ));
        }
        if raw.holds_a_secret() && readable_by_others(path) {
            warnings.push(format!(
                "{} holds a password and can be read by other users: chmod 600 {}",
                path.display(),
                path.display()
            ));
        }
    }
    let args = with_password_from_elsewhere(args)?;
    let mut config = Config::from_raw(raw, &args)?;
    config.warnings.extend(warnings);
    Ok(config)
}

/// `args` with the password of `--password-file` or `--password-env` in `-k`'s place.
fn with_password_from_elsewhere(args: &CliArgs) -> Result<CliArgs, ConfigError> {
    let mut args = args.clone();
    if let Some(path) = &args.password_file {
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigError::field_error("--password-file", format!("{}: {error}", path.display()))
        })?;
        let password = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if password.is_empty() {
            return Err(ConfigError::field_error(
                "--password-file",
                format!("{}: the first line is empty", path.display()),
            ));
        }
        args.password = Some(password.to_owned());
    } else if let Some(name) = &args.password_env {
        match std::env::var(name) {
            Ok(password) if !password.is_empty() => args.password = Some(password),
            _ => return Err(ConfigError::field_error("--password-env", format!("{name} is not set"))),
        }
    }
    Ok(args)
}

#[cfg(unix)]
fn readable_by_others(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|metadata| metadata.permissions().mode() & 0o044 != 0)
}

#[cfg(not(unix))]
fn readable_by_others(_: &std::path::Path) -> bool {
    false
}

/// Why the configuration was refused. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The config file is not valid JSON, or a value has the wrong JSON type.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What serde_json said, without its own location suffix.
        message: String,
    },
    /// A value is missing or wrong.
    #[error("{field}: {message}")]
    Field {
        /// The config key, as written in the file (`server_port`, `servers[1].password`).
        field: String,
        /// What is wrong and, where it helps, how to fix it.
        message: String,
    },
}

impl ConfigError {
    /// The config key a [`ConfigError::Field`] is about.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Field { field, .. } => Some(field),
            ConfigError::Read { .. } | ConfigError::Json { .. } => None,
        }
    }

    pub(crate) fn field_error(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Field { field: one_line(field.into()), message: one_line(message.into()) }
    }

    /// A JSON error in the file `origin`, its location up front (`config.json:3:17: expected ...`):
    /// serde_json appends " at line L column C", which is cut.
    pub(crate) fn json(error: &serde_json::Error, origin: &std::path::Path) -> ConfigError {
        let full = error.to_string();
        let message = match full.rfind(" at line ") {
            Some(at) if error.line() > 0 => full[..at].to_string(),
            _ => full,
        };
        ConfigError::Json {
            path: origin.to_path_buf(),
            line: error.line(),
            column: error.column(),
            message: one_line(message),
        }
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`): messages quote values from the file, and
/// a newline in one must not split the message or forge a log line.
pub(crate) fn one_line(text: String) -> String {
    if !text.contains(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.json")
    }

    #[test]
    fn example_config_parses_and_only_its_placeholder_password_is_refused() {
        let raw = RawConfig::from_file(&example_path()).unwrap();
        assert_eq!(raw.method.as_deref(), Some("2022-blake3-aes-256-gcm"));
        let args = CliArgs { config: Some(example_path()), ..CliArgs::default() };
        match load(&args) {
            Ok(config) => assert_eq!(config.servers.len(), 1),
            Err(error) => {
                assert_eq!(error.field(), Some("password"), "{error}");
                assert!(error.to_string().contains("--generate-key"), "{error}");
            }
        }
    }

    #[test]
    fn example_config_loads_with_a_real_key_on_the_command_line() {
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let args = CliArgs { config: Some(example_path()), key: Some(key.into()), ..CliArgs::default() };
        let config = load(&args).unwrap();
        assert_eq!(config.servers[0].host, "127.0.0.1");
        assert_eq!(config.servers[0].port, 8388);
        assert_eq!(config.local_port, Some(1080));
        assert_eq!(config.mode, Mode::TcpAndUdp);
    }

    #[test]
    fn plugin_example_configs_load_with_a_real_key() {
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        for (file, command, options) in [
            ("config.plugin-server.example.json", "obfs-server", "obfs=tls"),
            ("config.plugin-local.example.json", "obfs-local", "obfs=tls;obfs-host=www.example.com"),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
            let args = CliArgs { config: Some(path), key: Some(key.into()), ..CliArgs::default() };
            let config = load(&args).unwrap();
            let plugin = config.servers[0].plugin.clone().unwrap();
            assert_eq!((plugin.command.as_str(), plugin.options.as_deref()), (command, Some(options)));
            assert_eq!((plugin.mode, config.mode), (Mode::TcpOnly, Mode::TcpAndUdp), "{file}");
        }
    }

    #[test]
    fn missing_file_names_the_file() {
        let args = CliArgs { config: Some(PathBuf::from("/nonexistent/ss.json")), ..CliArgs::default() };
        let error = load(&args).unwrap_err();
        assert!(matches!(error, ConfigError::Read { .. }));
        assert!(error.to_string().starts_with("/nonexistent/ss.json: "), "{error}");
    }

    #[test]
    fn command_line_alone_is_enough() {
        let args = CliArgs {
            server: vec!["example.com".into()],
            server_port: Some(8388),
            password: Some("a long and varied password 1234".into()),
            method: Some("aes-256-gcm".into()),
            ..CliArgs::default()
        };
        let config = load(&args).unwrap();
        assert_eq!(config.servers[0].host, "example.com");
        assert!(!config.servers[0].password_is_weak);
    }

    #[test]
    fn field_errors_are_one_line() {
        let error = load(&CliArgs::default()).unwrap_err();
        assert_eq!(error.field(), Some("server"));
        assert!(!error.to_string().contains('\n'));
        // Found by the config_json fuzz target: values are quoted as written, control characters too.
        let raw = r#"{"server":"s","server_port":1,"password":"p","method":"x\ny\u001b"}"#;
        let raw = RawConfig::from_json(raw, Path::new("c.json")).unwrap();
        let error = Config::from_raw(raw, &CliArgs::default()).unwrap_err().to_string();
        assert!(error.starts_with(r#"method: unknown method "x\ny\u{1b}"; supported"#), "{error}");
        for json in [r#"{"fast_open":"a\nb"}"#, r#"{"servers":[{"a\nb":1}],"locals":"\n"}"#] {
            let error = RawConfig::from_json(json, Path::new("c.json")).unwrap_err().to_string();
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn the_password_can_come_from_a_file_or_the_environment() {
        let dir = std::env::temp_dir().join(format!("ss-config-password-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "from the file, long enough\nsecond line ignored\n").unwrap();
        let base = CliArgs {
            server: vec!["s".into()],
            server_port: Some(1),
            method: Some("aes-256-gcm".into()),
            ..CliArgs::default()
        };
        let from_file = load(&CliArgs { password_file: Some(file.clone()), ..base.clone() }).unwrap();
        let expected =
            ss_crypto::Key::from_password(ss_crypto::Method::Aes256Gcm, "from the file, long enough");
        assert_eq!(from_file.servers[0].key, expected.unwrap());

        std::env::set_var("SS_CONFIG_TEST_PASSWORD", "from the environment");
        let from_env =
            load(&CliArgs { password_env: Some("SS_CONFIG_TEST_PASSWORD".into()), ..base.clone() }).unwrap();
        let expected = ss_crypto::Key::from_password(ss_crypto::Method::Aes256Gcm, "from the environment");
        assert_eq!(from_env.servers[0].key, expected.unwrap());

        let missing = load(&CliArgs { password_file: Some(dir.join("nope")), ..base.clone() }).unwrap_err();
        assert_eq!(missing.field(), Some("--password-file"));
        let unset = load(&CliArgs { password_env: Some("SS_CONFIG_TEST_UNSET".into()), ..base }).unwrap_err();
        assert_eq!(unset.to_string(), "--password-env: SS_CONFIG_TEST_UNSET is not set");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn a_config_file_readable_by_others_with_a_password_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ss-config-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.json");
        let set_mode = |mode| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let args = CliArgs { config: Some(file.clone()), ..CliArgs::default() };

        std::fs::write(
            &file,
            r#"{"server":"s","server_port":1,"password":"a long password 1234","method":"aes-128-gcm"}"#,
        )
        .unwrap();
        set_mode(0o644);
        let warnings = load(&args).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("chmod 600") && warnings[0].contains("config.json"), "{warnings:?}");
        set_mode(0o600);
        assert!(load(&args).unwrap().warnings.is_empty());

        // No secret in the file (the password comes from the command line): nothing to warn about.
        std::fs::write(&file, r#"{"server":"s","server_port":1,"method":"aes-128-gcm"}"#).unwrap();
        set_mode(0o644);
        let args = CliArgs { password: Some("a long password 1234".into()), ..args };
        assert!(load(&args).unwrap().warnings.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_no_setting_takes_are_one_warning_naming_them() {
        let dir = std::env::temp_dir().join(format!("ss-config-ignored-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.json");
        std::fs::write(
            &file,
            r#"{"server":"s","server_port":1,"method":"aes-128-gcm","sever_port":2,"dscp":{}}"#,
        )
        .unwrap();
        let args = CliArgs {
            config: Some(file),
            password: Some("a long password 1234".into()),
            ..CliArgs::default()
        };
        let warnings = load(&args).unwrap().warnings;
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].ends_with("no setting takes these keys, so they are ignored: sever_port, dscp"),
            "{warnings:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
