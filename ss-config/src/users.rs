//! The users of a multi-user server entry: `users` in the config (top level for the libev form, or per
//! `servers[]` entry) and `users_file`, a JSON list of the same shape that ss-server re-reads on SIGHUP.
//!
//! ```text
//! "users": [ {"name": "alice", "password": "<base64 uPSK, or a password for classic methods>"}, ... ]
//! "users_file": "/etc/shadowsocks/users.json"        (the file: [ {"name": ..., "password": ...}, ... ])
//! ```
//!
//! A user may also have a quota, rate limits and connection limits ([`crate::limits`]).
//!
//! Names are labels (logs, accounting); each user's `password` becomes a key as the entry's method
//! reads passwords: a base64 PSK of exactly the key length for 2022 methods, EVP_BytesToKey for classic
//! ones. With users, the entry's own `password` is the server's identity PSK (iPSK) for the AES 2022
//! methods; classic methods and 2022-blake3-chacha20-poly1305 have no identity key, so there it must be
//! left out (every client uses its user's key). Both lists are joined, inline users first.
//!
//! Refused with an error naming the field: a missing or empty name or password, a key of the wrong
//! length, two users of one name, and two users whose keys are equal (a server could not tell them
//! apart; for classic methods two passwords give the same key only if they are equal).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use ss_crypto::{Key, Method};

use crate::limits::Limits;
use crate::ConfigError;

/// One user as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RawUser {
    /// `name`: a label.
    pub name: Option<String>,
    /// `password`: the user's key (base64 PSK) or password.
    pub password: Option<String>,
    /// `quota` (ours): bytes per period ([`crate::quota`]).
    pub quota: Option<crate::quota::RawQuota>,
    /// `rate_limit` (ours): bytes per second up and down ([`crate::limits`]).
    pub rate_limit: Option<crate::limits::RawRate>,
    /// `max_connections` (ours): TCP connections at once.
    pub max_connections: Option<u32>,
    /// `max_devices` (ours): client IP addresses at once.
    pub max_devices: Option<u32>,
}

/// One checked user of a server entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEntry {
    /// The user's name (unique within the entry).
    pub name: String,
    /// The user's key (uPSK for 2022 methods, the password-derived key for classic ones).
    pub key: Key,
    /// The user's quota, rate and connection limits ([`crate::limits`]).
    pub limits: Limits,
}

impl UserEntry {
    /// A user without limits.
    pub fn new(name: impl Into<String>, key: Key) -> UserEntry {
        UserEntry { name: name.into(), key, limits: Limits::default() }
    }
}

/// The users of one entry, checked, and the file they partly came from (re-read on reload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserList {
    /// Every user, inline ones first.
    pub users: Vec<UserEntry>,
    /// `users_file`, if any.
    pub file: Option<PathBuf>,
}

/// Whether `method` identifies users by a SIP023 identity header (else by trial decryption).
pub fn uses_identity_headers(method: Method) -> bool {
    ss_crypto::identity::supports_identity_headers(method)
}

/// Reads a users file: a JSON list of `{"name", "password"}` objects.
pub fn read_users_file(path: &Path) -> Result<Vec<RawUser>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    parse_users_json(&text, path)
}

/// Parses the text of a users file; `origin` names it in errors.
pub fn parse_users_json(text: &str, origin: &Path) -> Result<Vec<RawUser>, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str(text).map_err(|error| ConfigError::json(&error, origin))
}

/// Checks `inline` users (named `{prefix}users[i]` in errors) and the users of `file` (named
/// `<file>[i]`) for `method`.
pub fn check_users(
    method: Method,
    prefix: &str,
    inline: &[RawUser],
    file: Option<&Path>,
) -> Result<UserList, ConfigError> {
    let from_file = match file {
        Some(path) => read_users_file(path)?,
        None => Vec::new(),
    };
    let file_label = file.map(|path| path.display().to_string()).unwrap_or_default();
    let labelled =
        inline.iter().enumerate().map(|(index, user)| (format!("{prefix}users[{index}]"), user)).chain(
            from_file.iter().enumerate().map(|(index, user)| (format!("{file_label}[{index}]"), user)),
        );
    let mut users = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    let mut fields: Vec<String> = Vec::new();
    for (field, raw) in labelled {
        let user = check_user(method, &field, raw)?;
        if let Some(first) = names.insert(user.name.clone(), field.clone()) {
            let message = format!("the name {:?} is already used by {first}", user.name);
            return Err(ConfigError::field_error(format!("{field}.name"), message));
        }
        if let Some(at) = users.iter().position(|other: &UserEntry| other.key == user.key) {
            let message = format!("the same key as {}: the server could not tell them apart", fields[at]);
            return Err(ConfigError::field_error(format!("{field}.password"), message));
        }
        users.push(user);
        fields.push(field);
    }
    Ok(UserList { users, file: file.map(Path::to_path_buf) })
}

fn check_user(method: Method, field: &str, raw: &RawUser) -> Result<UserEntry, ConfigError> {
    let name = raw.name.as_deref().map(str::trim).unwrap_or_default();
    if name.is_empty() {
        return Err(ConfigError::field_error(format!("{field}.name"), "missing or empty"));
    }
    let password = raw.password.as_deref().unwrap_or_default();
    if password.is_empty() {
        return Err(ConfigError::field_error(format!("{field}.password"), "missing or empty"));
    }
    let key = Key::from_config_password(method, password)
        .map_err(|error| ConfigError::field_error(format!("{field}.password"), error.to_string()))?;
    let limits = crate::limits::check(field, raw)?;
    Ok(UserEntry { name: name.to_string(), key, limits })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const BOB: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

    fn user(name: &str, password: &str) -> RawUser {
        RawUser { name: Some(name.into()), password: Some(password.into()), ..RawUser::default() }
    }

    #[test]
    fn users_become_keys_of_the_method() {
        let list = check_users(Method::Blake3Aes256Gcm, "", &[user("alice", ALICE), user("bob", BOB)], None)
            .unwrap();
        assert_eq!(list.users[1].name, "bob");
        assert_eq!(list.users[1].key, Key::from_base64(Method::Blake3Aes256Gcm, BOB).unwrap());
        let classic = check_users(Method::Aes128Gcm, "", &[user("carol", "a password")], None).unwrap();
        assert_eq!(classic.users[0].key, Key::from_password(Method::Aes128Gcm, "a password").unwrap());
    }

    #[test]
    fn bad_users_are_refused_naming_the_field() {
        let method = Method::Blake3Aes256Gcm;
        let cases: [(&[RawUser], &str, &str); 5] = [
            (&[user("a", ALICE), user("a", BOB)], "servers[0].users[1].name", "already used"),
            (&[user("a", ALICE), user("b", ALICE)], "servers[0].users[1].password", "same key"),
            (&[user("a", "AAAA")], "servers[0].users[0].password", "must be 32 bytes"),
            (&[user(" ", ALICE)], "servers[0].users[0].name", "missing"),
            (
                &[RawUser { name: Some("a".into()), password: None, ..RawUser::default() }],
                "servers[0].users[0].password",
                "missing",
            ),
        ];
        for (users, field, words) in cases {
            let error = check_users(method, "servers[0].", users, None).unwrap_err();
            assert_eq!(error.field(), Some(field), "{error}");
            assert!(error.to_string().contains(words), "{error}");
        }
        let classic = [user("a", "same"), user("b", "same")];
        let error = check_users(Method::Aes256Gcm, "", &classic, None).unwrap_err();
        assert_eq!(error.field(), Some("users[1].password"), "equal passwords give equal keys");
    }

    fn load(json: &str) -> Result<crate::Config, ConfigError> {
        let raw = crate::RawConfig::from_json(json, Path::new("config.json"))?;
        crate::Config::from_raw(raw, &crate::CliArgs::default())
    }

    #[test]
    fn the_example_config_has_an_ipsk_and_two_users() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.users.example.json");
        let text = std::fs::read_to_string(example).unwrap();
        let config = load(&text).unwrap();
        let entry = &config.servers[0];
        let names: Vec<&str> = entry.users.as_ref().unwrap().users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        let bob = &entry.users.as_ref().unwrap().users[1].limits;
        assert_eq!((bob.rate_up, bob.rate_down), (Some(2 << 20), Some(10 << 20)));
        assert_eq!((bob.max_connections, bob.max_devices), (Some(64), Some(3)));
        assert_eq!(
            bob.quota.map(|quota| (quota.bytes, quota.period)),
            Some((100 << 30, crate::quota::Period::Month))
        );
        let ipsk = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=";
        assert_eq!(
            entry.key,
            Key::from_base64(Method::Blake3Aes256Gcm, ipsk).unwrap(),
            "password is the iPSK"
        );
    }

    #[test]
    fn methods_without_identity_headers_take_users_but_no_server_password() {
        let users = r#""users":[{"name":"a","password":"first secret"},{"name":"b","password":"second"}]"#;
        let top = r#""server":"127.0.0.1","server_port":8388,"method":"aes-256-gcm""#;
        let config = load(&format!("{{{top},{users}}}")).unwrap();
        assert_eq!(config.servers[0].users.as_ref().unwrap().users.len(), 2);
        let error = load(&format!(r#"{{{top},{users},"password":"x"}}"#)).unwrap_err();
        assert_eq!(error.field(), Some("password"), "{error}");
        assert!(error.to_string().contains("no server key"), "{error}");
        let error = load(&format!(r#"{{{top},"users":[]}}"#)).unwrap_err();
        assert_eq!(error.field(), Some("users"), "{error}");
        // AES 2022 needs the iPSK.
        let aes = r#""server":"127.0.0.1","server_port":8388,"method":"2022-blake3-aes-256-gcm""#;
        let alice = format!(r#""users":[{{"name":"a","password":"{ALICE}"}}]"#);
        let error = load(&format!("{{{aes},{alice}}}")).unwrap_err();
        assert_eq!(error.field(), Some("password"), "{error}");
        assert!(error.to_string().contains("iPSK"), "{error}");
    }

    #[test]
    fn a_client_password_may_be_an_identity_chain() {
        let ipsk = "AQIDBAUGBwgJCgsMDQ4PEA==";
        let upsk = "ERITFBUWFxgZGhscHR4fIA==";
        let json = format!(
            r#"{{"server":"127.0.0.1","server_port":1,"method":"2022-blake3-aes-128-gcm","password":"{ipsk}:{upsk}"}}"#
        );
        let entry = load(&json).unwrap().servers.remove(0);
        assert_eq!(entry.identity_keys, [Key::from_base64(Method::Blake3Aes128Gcm, ipsk).unwrap()]);
        assert_eq!(entry.key, Key::from_base64(Method::Blake3Aes128Gcm, upsk).unwrap());
        // ChaCha20 has no identity headers: the chain is not a key.
        let json = json.replace("2022-blake3-aes-128-gcm", "2022-blake3-chacha20-poly1305");
        assert_eq!(load(&json).unwrap_err().field(), Some("password"));
    }

    #[test]
    fn a_users_file_is_joined_after_the_inline_users() {
        let dir = std::env::temp_dir().join(format!("ss-config-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.json");
        std::fs::write(&path, format!(r#"[{{"name":"bob","password":"{BOB}"}}]"#)).unwrap();
        let list = check_users(Method::Blake3Aes256Gcm, "", &[user("alice", ALICE)], Some(&path)).unwrap();
        let names: Vec<&str> = list.users.iter().map(|user| user.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob"]);
        assert_eq!(list.file.as_deref(), Some(path.as_path()));
        std::fs::write(&path, format!(r#"[{{"name":"alice","password":"{BOB}"}}]"#)).unwrap();
        let error =
            check_users(Method::Blake3Aes256Gcm, "", &[user("alice", ALICE)], Some(&path)).unwrap_err();
        assert!(error.to_string().contains("users.json[0].name"), "{error}");
        std::fs::write(&path, "[{").unwrap();
        let error = check_users(Method::Blake3Aes256Gcm, "", &[], Some(&path)).unwrap_err();
        assert!(matches!(error, ConfigError::Json { .. }), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
