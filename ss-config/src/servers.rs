//! The server list: libev's `server` (one host or several sharing one port, method and password) and
//! shadowsocks-rust's `servers` array, turned into [`ServerEntry`]s with a typed method and key.
//!
//! Where each setting comes from, first match wins:
//!
//! ```text
//!   host        -s (replaces the file's lists)  > "server" / servers[i].server
//!   port        "host:port" in the host > -p > servers[i].server_port > "server_port"
//!   method      -m > servers[i].method > "method"
//!   credential  --key / -k > servers[i].key / .password > "key" / "password"   (key wins over password)
//!   plugin      --plugin > servers[i].plugin > "plugin"; options: --plugin-opts > the plugin's own level
//! ```
//!
//! A plugin comes whole from one level: an entry that names a `plugin` takes `plugin_opts`,
//! `plugin_args` and `plugin_mode` from the entry only (a different plugin would not understand the top
//! level's options); an entry without one gets the top level's plugin. An empty `plugin` means none.
//!
//! The servers of `--server-url` come last, whole: the flags above do not touch them, and each has the
//! plugin of its own URL, if any. This module turns them into entries ([`ServerUrl::to_entry`]); `url.rs`
//! is only the `ss://` codec.
//!
//! A `server` value is read by the crate's one `host:port` reader (`entry::split_host_port`, which
//! `ss://` URLs use too): `host`, `host:port`, `[v6]`, `[v6]:port`, or a bare IPv6 address without a
//! port; the port is 1-65535 in digits.

use ss_crypto::{is_weak_password, Key, Method};

use crate::entry::{split_host_port, HostPortError, Mode, Plugin, ServerEntry};
use crate::raw::{RawConfig, RawServer};
use crate::url::{parse_ss_url, ServerUrl};
use crate::users::{check_users, uses_identity_headers, RawUser};
use crate::{CliArgs, ConfigError};

/// Builds the server list, `urls` last; at least one entry or an error.
pub(crate) fn resolve(
    raw: &RawConfig,
    args: &CliArgs,
    urls: &[ServerUrl],
) -> Result<Vec<ServerEntry>, ConfigError> {
    let cli_credential = Credential::of("", args.key.as_deref(), args.password.as_deref());
    let file_credential = Credential::of("", raw.key.as_deref(), raw.password.as_deref());
    let top = Settings {
        port: match (args.server_port, &raw.server_port) {
            (Some(port), _) => Some(port),
            (None, Some(port)) => Some(port.port("server_port")?),
            (None, None) => None,
        },
        method: method("method", args.method.as_deref().or(raw.method.as_deref()))?,
        credential: cli_credential.clone().or(file_credential),
        plugin: top_plugin(raw, args)?,
        users: Users::of("", raw.users.as_deref(), raw.users_file.as_deref()),
    };
    let hosts = if args.server.is_empty() { raw.server.as_deref().unwrap_or_default() } else { &args.server };
    let mut entries = Vec::new();
    for host in hosts {
        entries.push(top.entry("", host)?);
    }
    for (index, server) in file_servers(raw, args).iter().enumerate() {
        let prefix = format!("servers[{index}].");
        let Some(host) = &server.server else {
            return Err(ConfigError::field_error(format!("{prefix}server"), "missing"));
        };
        let own_port = match &server.server_port {
            Some(port) => Some(port.port(&format!("{prefix}server_port"))?),
            None => None,
        };
        let settings = Settings {
            port: args.server_port.or(own_port).or(top.port),
            method: match (&args.method, &server.method) {
                (None, Some(name)) => method(&format!("{prefix}method"), Some(name))?,
                _ => top.method,
            },
            credential: cli_credential
                .clone()
                .or(Credential::of(&prefix, server.key.as_deref(), server.password.as_deref()))
                .or(top.credential.clone()),
            plugin: entry_plugin(&prefix, server, args, &top.plugin)?,
            users: Users::of(&prefix, server.users.as_deref(), server.users_file.as_deref())
                .or(top.users.clone()),
        };
        let mut entry = settings.entry(&prefix, host)?;
        entry.weights = crate::balance::weights(&prefix, server)?;
        entry.tag = server.remarks.clone().filter(|tag| !tag.is_empty());
        entries.push(entry);
    }
    entries.extend(urls.iter().map(ServerUrl::to_entry));
    // With an online config, the servers may all come from it.
    if entries.is_empty() && raw.online_config.is_none() {
        let message = "missing (set \"server\" in the config, -s or --server-url)";
        return Err(ConfigError::field_error("server", message));
    }
    Ok(entries)
}

/// The `timeout` the `servers` entries agree on, if any gives one.
pub(crate) fn shared_timeout(raw: &RawConfig, args: &CliArgs) -> Result<Option<u64>, ConfigError> {
    shared(raw, args, "timeout", |prefix, server| {
        server.timeout.as_ref().map(|secs| secs.seconds(&format!("{prefix}timeout"))).transpose()
    })
}

/// The top level's plugin, with `--plugin` / `--plugin-opts` laid over it.
fn top_plugin(raw: &RawConfig, args: &CliArgs) -> Result<Option<Plugin>, ConfigError> {
    let fields = PluginFields {
        command: args.plugin.as_deref().or(raw.plugin.as_deref()),
        options: args.plugin_opts.as_deref().or(raw.plugin_opts.as_deref()),
        args: raw.plugin_args.as_deref(),
        mode: raw.plugin_mode.as_deref(),
    };
    fields.check("")
}

/// A `servers` entry's plugin: its own when it names one (and `--plugin` does not override), else `top`.
fn entry_plugin(
    prefix: &str,
    server: &RawServer,
    args: &CliArgs,
    top: &Option<Plugin>,
) -> Result<Option<Plugin>, ConfigError> {
    let (Some(command), None) = (server.plugin.as_deref(), &args.plugin) else {
        if server.plugin.is_none() && (server.plugin_opts.is_some() || server.plugin_args.is_some()) {
            let field = if server.plugin_opts.is_some() { "plugin_opts" } else { "plugin_args" };
            let message =
                "set, but this entry has no \"plugin\" (the top level's plugin has its own options)";
            return Err(ConfigError::field_error(format!("{prefix}{field}"), message));
        }
        return Ok(top.clone());
    };
    let fields = PluginFields {
        command: Some(command),
        options: args.plugin_opts.as_deref().or(server.plugin_opts.as_deref()),
        args: server.plugin_args.as_deref(),
        mode: server.plugin_mode.as_deref(),
    };
    fields.check(prefix)
}

/// One level's plugin keys, as written.
struct PluginFields<'a> {
    command: Option<&'a str>,
    options: Option<&'a str>,
    args: Option<&'a [String]>,
    mode: Option<&'a str>,
}

impl PluginFields<'_> {
    /// The plugin these keys describe; `prefix` names the level in errors (`""`, `servers[1].`).
    fn check(&self, prefix: &str) -> Result<Option<Plugin>, ConfigError> {
        let mode = match self.mode {
            Some(mode) => Mode::parse_field(&format!("{prefix}plugin_mode"), mode)?,
            None => Mode::TcpOnly,
        };
        let options = self.options.filter(|options| !options.is_empty()).map(str::to_string);
        match self.command {
            // An empty plugin switches a configured one off, as in libev.
            Some(command) if command.trim().is_empty() => Ok(None),
            Some(command) => Ok(Some(Plugin {
                command: command.to_string(),
                options,
                args: self.args.map(<[String]>::to_vec).unwrap_or_default(),
                mode,
            })),
            None if options.is_some() || self.args.is_some() => {
                let field = if options.is_some() { "plugin_opts" } else { "plugin_args" };
                let message = "set, but no plugin is (set \"plugin\" or --plugin)";
                Err(ConfigError::field_error(format!("{prefix}{field}"), message))
            }
            None => Ok(None),
        }
    }
}

/// Settings that apply to a host, after precedence.
struct Settings<'a> {
    port: Option<u16>,
    method: Option<Method>,
    credential: Option<Credential<'a>>,
    plugin: Option<Plugin>,
    users: Option<Users<'a>>,
}

/// The `users` and `users_file` of one level, with the prefix that names them.
#[derive(Clone)]
struct Users<'a> {
    prefix: String,
    inline: &'a [RawUser],
    file: Option<&'a std::path::Path>,
}

impl<'a> Users<'a> {
    fn of(
        prefix: &str,
        inline: Option<&'a [RawUser]>,
        file: Option<&'a std::path::Path>,
    ) -> Option<Users<'a>> {
        (inline.is_some() || file.is_some()).then(|| Users {
            prefix: prefix.to_string(),
            inline: inline.unwrap_or_default(),
            file,
        })
    }
}

/// A base64 key or a password, with the field it came from.
#[derive(Clone)]
struct Credential<'a> {
    field: String,
    text: &'a str,
    is_key: bool,
}

impl Settings<'_> {
    /// `prefix` is `""` for the top-level form, `servers[i].` for an entry.
    fn entry(&self, prefix: &str, host: &str) -> Result<ServerEntry, ConfigError> {
        let (host, own_port) = config_host_port(host)
            .map_err(|message| ConfigError::field_error(format!("{prefix}server"), message))?;
        let port = own_port.or(self.port).ok_or_else(|| {
            let hint = "missing (set \"server_port\" in the config, -p, or \"host:port\" in \"server\")";
            ConfigError::field_error(format!("{prefix}server_port"), hint)
        })?;
        let method = self.method.ok_or_else(|| {
            let hint = "missing (set \"method\" in the config or -m; e.g. 2022-blake3-aes-256-gcm, or \
                        chacha20-ietf-poly1305 as shadowsocks-libev assumes)";
            ConfigError::field_error(format!("{prefix}method"), hint)
        })?;
        if let Some(users) = &self.users {
            return self.multi_user_entry(prefix, host, port, method, users);
        }
        let Some(credential) = &self.credential else {
            let hint = "missing (set \"password\" in the config or -k)";
            return Err(ConfigError::field_error(format!("{prefix}password"), hint));
        };
        if credential.text.is_empty() {
            return Err(ConfigError::field_error(credential.field.as_str(), "empty"));
        }
        let field_error = |error: ss_crypto::KeyError| {
            ConfigError::field_error(credential.field.as_str(), error.to_string())
        };
        let chain = credential_chain(method, credential);
        let (identity_keys, key) = match chain {
            Some((ipsks, upsk)) => {
                let ipsks = ipsks.map(|text| Key::from_base64(method, text)).collect::<Result<_, _>>();
                (ipsks.map_err(field_error)?, Key::from_base64(method, upsk).map_err(field_error)?)
            }
            None if credential.is_key => {
                (Vec::new(), Key::from_base64(method, credential.text).map_err(field_error)?)
            }
            None => (Vec::new(), Key::from_config_password(method, credential.text).map_err(field_error)?),
        };
        let password_is_weak = !credential.is_key && !method.is_2022() && is_weak_password(credential.text);
        // What a link carries: not an identity chain (SIP002 has no form for it), nor a classic raw key.
        let password = match (method.is_2022(), credential.is_key) {
            _ if !identity_keys.is_empty() => None,
            (true, _) => Some(key.to_base64()),
            (false, false) => Some(credential.text.to_string()),
            (false, true) => None,
        };
        let plugin = self.plugin.clone();
        let users = None;
        Ok(ServerEntry {
            host,
            port,
            method,
            key,
            password_is_weak,
            plugin,
            users,
            identity_keys,
            weights: crate::Weights::default(),
            password,
            tag: None,
        })
    }

    /// An entry with `users`: the credential is the iPSK of an AES 2022 method and must be absent for
    /// the methods without identity headers (their users are found by trial decryption).
    fn multi_user_entry(
        &self,
        prefix: &str,
        host: String,
        port: u16,
        method: Method,
        users: &Users<'_>,
    ) -> Result<ServerEntry, ConfigError> {
        let list = check_users(method, &users.prefix, users.inline, users.file)?;
        let key = match (&self.credential, uses_identity_headers(method)) {
            (Some(credential), true) => Key::from_base64(method, credential.text)
                .map_err(|error| ConfigError::field_error(credential.field.as_str(), error.to_string()))?,
            (None, true) => {
                let hint = "missing: with users, the password is the server's identity PSK (iPSK)";
                return Err(ConfigError::field_error(format!("{prefix}password"), hint));
            }
            (Some(credential), false) => {
                let message = format!(
                    "with users, {method} has no server key (no identity headers): remove it, each client \
                     uses its user's password"
                );
                return Err(ConfigError::field_error(credential.field.as_str(), message));
            }
            (None, false) => match list.users.first() {
                // Never used to open a stream: every stream is opened with the key of its user.
                Some(first) => first.key.clone(),
                None => {
                    let message = "no user at all (add users, or users to the users_file)";
                    return Err(ConfigError::field_error(format!("{}users", users.prefix), message));
                }
            },
        };
        let plugin = self.plugin.clone();
        let users = Some(list);
        Ok(ServerEntry {
            host,
            port,
            method,
            key,
            password_is_weak: false,
            plugin,
            users,
            identity_keys: Vec::new(),
            weights: crate::Weights::default(),
            password: None,
            tag: None,
        })
    }
}

impl<'a> Credential<'a> {
    /// The key if given, else the password; fields are named `{prefix}key` / `{prefix}password`.
    fn of(prefix: &str, key: Option<&'a str>, password: Option<&'a str>) -> Option<Credential<'a>> {
        match (key, password) {
            (Some(text), _) => Some(Credential { field: format!("{prefix}key"), text, is_key: true }),
            (None, Some(text)) => {
                Some(Credential { field: format!("{prefix}password"), text, is_key: false })
            }
            (None, None) => None,
        }
    }
}

/// A client's `iPSK:...:uPSK` chain (shadowsocks-rust's form; AES 2022 methods only): the iPSKs and the
/// uPSK. `None` for a plain key or password.
fn credential_chain<'a>(
    method: Method,
    credential: &Credential<'a>,
) -> Option<(impl Iterator<Item = &'a str>, &'a str)> {
    if !uses_identity_headers(method) {
        return None;
    }
    let (ipsks, upsk) = credential.text.rsplit_once(':')?;
    Some((ipsks.split(':'), upsk))
}

fn method(field: &str, name: Option<&str>) -> Result<Option<Method>, ConfigError> {
    let Some(name) = name else { return Ok(None) };
    name.trim()
        .parse()
        .map(Some)
        .map_err(|error: ss_crypto::MethodError| ConfigError::field_error(field, error.to_string()))
}

/// The servers of `--server-url`, in order. Errors name the flag (and which one, if there are several).
pub(crate) fn cli_servers(args: &CliArgs) -> Result<Vec<ServerUrl>, ConfigError> {
    let count = args.server_url.len();
    let parse = |(index, text): (usize, &String)| {
        let flag = match count {
            1 => "--server-url".to_string(),
            _ => format!("--server-url #{}", index + 1),
        };
        parse_ss_url(text).map_err(|error| ConfigError::field_error(flag, error.to_string()))
    };
    args.server_url.iter().enumerate().map(parse).collect()
}

impl ServerUrl {
    /// The server as the config holds it (the tag is not part of an entry).
    pub fn to_entry(&self) -> ServerEntry {
        ServerEntry {
            host: self.host.clone(),
            port: self.port,
            method: self.method(),
            key: self.key().clone(),
            password_is_weak: !self.method().is_2022() && is_weak_password(self.password()),
            plugin: self.plugin.clone(),
            users: None,
            identity_keys: Vec::new(),
            weights: crate::Weights::default(),
            password: Some(self.password().to_string()),
            tag: self.tag.clone(),
        }
    }
}

impl ServerEntry {
    /// The server as an `ss://` URL ([`ServerUrl::to_entry`] gives it back), or why it has none. The
    /// plugin's `plugin_args` and `plugin_mode` have no place in a URL and are left out.
    pub fn to_url(&self) -> Result<ServerUrl, &'static str> {
        if self.users.is_some() {
            return Err("a multi-user entry has no one link (each user has their own key)");
        }
        if !self.identity_keys.is_empty() {
            return Err("an identity-key chain (iPSK:uPSK) has no SIP002 link form");
        }
        let password =
            self.password.clone().ok_or("a classic method given by its raw key has no link form")?;
        let mut url = ServerUrl::new(self.host.clone(), self.port, self.method, password)
            .map_err(|_| "the host or password cannot be written in a link")?;
        url.plugin =
            self.plugin.as_ref().map(|plugin| Plugin::new(plugin.command.clone(), plugin.options.clone()));
        url.tag = self.tag.clone();
        Ok(url)
    }
}

/// A `server` value: [`split_host_port`], with a host required and the message quoting the value.
fn config_host_port(text: &str) -> Result<(String, Option<u16>), String> {
    let text = text.trim();
    match split_host_port(text) {
        Ok(("", _)) => Err(format!("{text:?} has no host")),
        Ok((host, port)) => Ok((host.to_string(), port)),
        Err(HostPortError::UnclosedBracket) => Err(format!("{text:?} has an unclosed '['")),
        Err(HostPortError::NotIpv6(host)) => {
            Err(format!("{text:?}: {host:?} in brackets is not an IPv6 address"))
        }
        Err(HostPortError::AfterBracket(_) | HostPortError::Port(_)) => {
            Err(format!("{text:?} does not end in a port number (1-65535)"))
        }
    }
}

/// shadowsocks-rust's `servers` entries, unless `-s` replaced the file's servers.
fn file_servers<'a>(raw: &'a RawConfig, args: &CliArgs) -> &'a [RawServer] {
    match &raw.servers {
        Some(servers) if args.server.is_empty() => servers,
        _ => &[],
    }
}

/// The one value of a global setting that `servers` entries may also carry; they must agree.
fn shared<T: PartialEq>(
    raw: &RawConfig,
    args: &CliArgs,
    name: &str,
    value_of: impl Fn(&str, &RawServer) -> Result<Option<T>, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    let mut found: Option<(usize, T)> = None;
    for (index, server) in file_servers(raw, args).iter().enumerate() {
        let Some(value) = value_of(&format!("servers[{index}]."), server)? else { continue };
        match &found {
            None => found = Some((index, value)),
            Some((first, seen)) if *seen != value => {
                let message = format!(
                    "differs from servers[{first}].{name}; it applies to every server, so set \"{name}\" once \
                     at the top level"
                );
                return Err(ConfigError::field_error(format!("servers[{index}].{name}"), message));
            }
            Some(_) => {}
        }
    }
    Ok(found.map(|(_, value)| value))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::Config;

    const PSK_128: &str = "AAECAwQFBgcICQoLDA0ODw==";
    const STRONG: &str = "a long and varied password 1234";

    fn servers(json: &str) -> Result<Vec<ServerEntry>, ConfigError> {
        servers_with(json, &CliArgs::default())
    }

    fn servers_with(json: &str, args: &CliArgs) -> Result<Vec<ServerEntry>, ConfigError> {
        let raw = RawConfig::from_json(json, Path::new("config.json"))?;
        Config::from_raw(raw, args).map(|config| config.servers)
    }

    fn error(json: &str) -> String {
        servers(json).unwrap_err().to_string()
    }

    #[test]
    fn server_array_gives_one_entry_per_host() {
        let entries = servers(&format!(
            r#"{{"server":["::","0.0.0.0","[::1]","h:9000"],"server_port":8388,"password":"{STRONG}",
                "method":"aes-128-gcm"}}"#
        ))
        .unwrap();
        let hosts: Vec<_> = entries.iter().map(|entry| (entry.host.as_str(), entry.port)).collect();
        assert_eq!(hosts, [("::", 8388), ("0.0.0.0", 8388), ("::1", 8388), ("h", 9000)]);
        assert!(entries.iter().all(|entry| entry.key == entries[0].key && !entry.password_is_weak));
    }

    #[test]
    fn shadowsocks_rust_servers_fall_back_to_the_top_level() {
        let entries = servers(&format!(
            r#"{{"password":"{STRONG}","method":"aes-256-gcm","server_port":1,
                "servers":[{{"address":"a","port":2,"method":"2022-blake3-aes-128-gcm","password":"{PSK_128}"}},
                           {{"server":"b"}}]}}"#
        ))
        .unwrap();
        assert_eq!(
            (entries[0].host.as_str(), entries[0].port, entries[0].method),
            ("a", 2, Method::Blake3Aes128Gcm)
        );
        assert_eq!(entries[0].key, Key::from_base64(Method::Blake3Aes128Gcm, PSK_128).unwrap());
        assert_eq!(
            (entries[1].host.as_str(), entries[1].port, entries[1].method),
            ("b", 1, Method::Aes256Gcm)
        );
        assert_eq!(entries[1].key, Key::from_password(Method::Aes256Gcm, STRONG).unwrap());
    }

    #[test]
    fn server_flag_replaces_the_files_servers() {
        let json = format!(
            r#"{{"servers":[{{"server":"a","server_port":1,"password":"{STRONG}","method":"aes-128-gcm","timeout":5}},
                                  {{"server":"b","server_port":1,"password":"{STRONG}","method":"aes-128-gcm","timeout":6}}]}}"#
        );
        assert!(error(&json).starts_with("servers[1].timeout: differs from servers[0].timeout"));
        let args = CliArgs {
            server: vec!["c".into()],
            server_port: Some(3),
            password: Some(STRONG.into()),
            method: Some("aes-128-gcm".into()),
            ..CliArgs::default()
        };
        let entries = servers_with(&json, &args).unwrap();
        assert_eq!(entries.iter().map(|entry| entry.host.as_str()).collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn key_wins_over_password() {
        let entries = servers(&format!(
            r#"{{"server":"s","server_port":1,"password":"weak","key":"{PSK_128}","method":"aes-128-gcm"}}"#
        ))
        .unwrap();
        assert_eq!(entries[0].key, Key::from_base64(Method::Aes128Gcm, PSK_128).unwrap());
        assert!(!entries[0].password_is_weak);
    }

    #[test]
    fn methods_are_checked() {
        let unknown = error(r#"{"server":"s","server_port":1,"password":"p","method":"x"}"#);
        assert!(unknown.starts_with("method: unknown method \"x\"; supported methods: "), "{unknown}");
        assert!(unknown.contains("chacha20-ietf-poly1305"), "{unknown}");
        let insecure = error(r#"{"server":"s","server_port":1,"password":"p","method":"rc4-md5"}"#);
        assert!(insecure.starts_with("method: method \"rc4-md5\" is refused"), "{insecure}");
        let in_entry =
            error(r#"{"servers":[{"server":"s","server_port":1,"password":"p","method":"aes-128-cfb"}]}"#);
        assert!(in_entry.starts_with("servers[0].method: "), "{in_entry}");
        let missing = error(r#"{"server":"s","server_port":1,"password":"p"}"#);
        assert!(missing.starts_with("method: missing (set \"method\" in the config or -m"), "{missing}");
    }

    #[test]
    fn missing_and_empty_values_name_their_field() {
        assert_eq!(
            error(r#"{"server":"s","server_port":1,"method":"aes-128-gcm"}"#),
            "password: missing (set \"password\" in the config or -k)"
        );
        assert_eq!(
            error(r#"{"server":"s","server_port":1,"password":"","method":"aes-128-gcm"}"#),
            "password: empty"
        );
        assert_eq!(
            error(r#"{"password":"p","method":"aes-128-gcm"}"#),
            "server: missing (set \"server\" in the config, -s or --server-url)"
        );
        assert!(error(r#"{"server":"s","password":"p","method":"aes-128-gcm"}"#)
            .starts_with("server_port: missing"));
        assert_eq!(
            error(r#"{"servers":[{"port":1}],"password":"p","method":"aes-128-gcm"}"#),
            "servers[0].server: missing"
        );
    }

    #[test]
    fn bad_ports() {
        for (port, shown) in
            [("0", "0"), ("70000", "70000"), ("\"abc\"", "\"abc\""), ("-1", "-1"), ("\"\"", "\"\"")]
        {
            let json =
                format!(r#"{{"server":"s","server_port":{port},"password":"p","method":"aes-128-gcm"}}"#);
            assert_eq!(error(&json), format!("server_port: {shown} is not a port number (1-65535)"));
        }
        let json = r#"{"servers":[{"server":"s","port":"abc"}],"password":"p","method":"aes-128-gcm"}"#;
        assert_eq!(error(json), "servers[0].server_port: \"abc\" is not a port number (1-65535)");
        let json = r#"{"server":"s:0","password":"p","method":"aes-128-gcm"}"#;
        assert_eq!(error(json), "server: \"s:0\" does not end in a port number (1-65535)");
    }

    #[test]
    fn keys_for_2022_methods_must_be_base64_of_the_right_length() {
        let json = |password: &str| {
            format!(
                r#"{{"server":"s","server_port":1,"password":"{password}","method":"2022-blake3-aes-256-gcm"}}"#
            )
        };
        let not_base64 = error(&json("correct horse battery staple!"));
        assert!(
            not_base64.starts_with("password: the key for 2022-blake3-aes-256-gcm is not valid base64"),
            "{not_base64}"
        );
        let wrong_length = error(&json(PSK_128));
        assert!(
            wrong_length.starts_with("password: the key for 2022-blake3-aes-256-gcm must be 32 bytes"),
            "{wrong_length}"
        );
        let key_field = error(r#"{"server":"s","server_port":1,"key":"!!","method":"aes-128-gcm"}"#);
        assert!(key_field.starts_with("key: "), "{key_field}");
    }

    #[test]
    fn server_values_with_a_bad_address_name_the_field() {
        let json = |server: &str| format!(r#"{{"server":"{server}","password":"p","method":"aes-128-gcm"}}"#);
        assert_eq!(error(&json("[::1")), r#"server: "[::1" has an unclosed '['"#);
        assert_eq!(error(&json(":8388")), r#"server: ":8388" has no host"#);
        assert_eq!(error(&json("[h]:1")), r#"server: "[h]:1": "h" in brackets is not an IPv6 address"#);
        assert_eq!(error(&json("[::1]x")), r#"server: "[::1]x" does not end in a port number (1-65535)"#);
        assert_eq!(error(&json("h:+80")), r#"server: "h:+80" does not end in a port number (1-65535)"#);
        let hosts = servers(r#"{"server":[" fe80::1 ","[::1]:9"],"server_port":1,"password":"a long and varied password 1234","method":"aes-128-gcm"}"#).unwrap();
        let hosts: Vec<_> = hosts.iter().map(|entry| (entry.host.as_str(), entry.port)).collect();
        assert_eq!(hosts, [("fe80::1", 1), ("::1", 9)]);
    }

    #[test]
    fn weak_passwords_are_flagged_for_classic_methods_only() {
        let weak =
            servers(r#"{"server":"s","server_port":1,"password":"barfoo!","method":"aes-128-gcm"}"#).unwrap();
        assert!(weak[0].password_is_weak);
        let psk = format!(
            r#"{{"server":"s","server_port":1,"password":"{PSK_128}","method":"2022-blake3-aes-128-gcm"}}"#
        );
        assert!(!servers(&psk).unwrap()[0].password_is_weak);
    }
}
