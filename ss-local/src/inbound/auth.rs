//! Authentication on the local port: the user table both SOCKS5 username/password (RFC 1929) and HTTP
//! `Proxy-Authorization: Basic` check against, and its file.
//!
//! The file is shadowsocks-rust's `socks5_auth_config_path` form:
//!
//! ```text
//! { "password": { "users": [ { "user_name": "alice", "password": "secret" }, ... ] } }
//! ```
//!
//! Comparison is constant-time in the contents: every entry is compared, and each comparison looks at
//! every byte (`subtle`), so timing says nothing about which user or how much of a password matched.
//! Only the lengths may show.

use std::path::Path;

use base64::Engine as _;
use subtle::ConstantTimeEq;

/// The users allowed on the local port.
#[derive(Clone)]
pub struct Users {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why the users file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not JSON of the expected shape.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The error.
        source: serde_json::Error,
    },
    /// No user listed: authentication would refuse everyone.
    #[error("{0}: no users in password.users")]
    Empty(String),
    /// A user name or password longer than RFC 1929 allows (255 bytes) or an empty user name.
    #[error("{0}: user names must be 1 to 255 bytes and passwords at most 255")]
    BadLength(String),
}

#[derive(serde::Deserialize)]
struct File {
    password: PasswordSection,
}

#[derive(serde::Deserialize)]
struct PasswordSection {
    users: Vec<FileUser>,
}

#[derive(serde::Deserialize)]
struct FileUser {
    user_name: String,
    password: String,
}

impl Users {
    /// A table of `(user, password)` pairs.
    pub fn new<U: Into<Vec<u8>>, P: Into<Vec<u8>>>(pairs: impl IntoIterator<Item = (U, P)>) -> Users {
        Users { entries: pairs.into_iter().map(|(user, password)| (user.into(), password.into())).collect() }
    }

    /// Reads a `socks5_auth_config_path` file.
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| UsersError::Read { path: name.clone(), source })?;
        Users::from_json(&text, &name)
    }

    /// Parses the file's text; `name` is for error messages.
    pub fn from_json(text: &str, name: &str) -> Result<Users, UsersError> {
        let file: File = serde_json::from_str(text)
            .map_err(|source| UsersError::Parse { path: name.to_owned(), source })?;
        if file.password.users.is_empty() {
            return Err(UsersError::Empty(name.to_owned()));
        }
        let fits = |user: &FileUser| (1..=255).contains(&user.user_name.len()) && user.password.len() <= 255;
        if !file.password.users.iter().all(fits) {
            return Err(UsersError::BadLength(name.to_owned()));
        }
        Ok(Users::new(file.password.users.into_iter().map(|user| (user.user_name, user.password))))
    }

    /// Whether `user` with `password` is allowed. Looks at every entry whatever the outcome.
    pub fn check(&self, user: &[u8], password: &[u8]) -> bool {
        let mut allowed = subtle::Choice::from(0);
        for (known_user, known_password) in &self.entries {
            allowed |= known_user.as_slice().ct_eq(user) & known_password.as_slice().ct_eq(password);
        }
        allowed.into()
    }

    /// Checks an HTTP `Proxy-Authorization` value (`Basic base64(user:password)`); anything else fails.
    pub fn check_basic(&self, header: Option<&[u8]>) -> bool {
        let Some(header) = header else { return false };
        let Some(encoded) = strip_basic(header) else { return false };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii()) else {
            return false;
        };
        let Some(colon) = decoded.iter().position(|&byte| byte == b':') else { return false };
        self.check(&decoded[..colon], &decoded[colon + 1..])
    }
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users").field("count", &self.entries.len()).finish_non_exhaustive()
    }
}

/// The credentials part of `Basic <credentials>`, the scheme matched case-insensitively.
fn strip_basic(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    let (scheme, rest) = header.split_at_checked(6)?;
    scheme.eq_ignore_ascii_case(b"basic ").then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        Users::new([("alice", "secret"), ("bob", "")])
    }

    #[test]
    fn only_listed_pairs_pass() {
        let users = users();
        assert!(users.check(b"alice", b"secret"));
        assert!(users.check(b"bob", b""));
        assert!(!users.check(b"alice", b"secret2"));
        assert!(!users.check(b"alice", b""));
        assert!(!users.check(b"bob", b"secret"));
        assert!(!users.check(b"", b""));
    }

    #[test]
    fn basic_headers() {
        let users = users();
        let header = |text: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(text));
        assert!(users.check_basic(Some(header("alice:secret").as_bytes())));
        assert!(users.check_basic(Some(b"basic YWxpY2U6c2VjcmV0")));
        assert!(!users.check_basic(Some(header("alice:wrong").as_bytes())));
        assert!(!users.check_basic(Some(header("alicesecret").as_bytes())));
        assert!(!users.check_basic(Some(b"Bearer abc")));
        assert!(!users.check_basic(Some(b"Basic !!!")));
        assert!(!users.check_basic(Some(b"Basic")));
        assert!(!users.check_basic(None));
    }

    #[test]
    fn the_shadowsocks_rust_file_form() {
        let users = Users::from_json(
            r#"{"password":{"users":[{"user_name":"alice","password":"secret"},{"user_name":"bob","password":"pw"}]}}"#,
            "auth.json",
        )
        .unwrap();
        assert!(users.check(b"bob", b"pw") && users.check(b"alice", b"secret"));
        assert!(matches!(Users::from_json(r#"{"password":{"users":[]}}"#, "f"), Err(UsersError::Empty(_))));
        assert!(matches!(Users::from_json("{}", "f"), Err(UsersError::Parse { .. })));
        let long =
            format!(r#"{{"password":{{"users":[{{"user_name":"{}","password":""}}]}}}}"#, "u".repeat(256));
        assert!(matches!(Users::from_json(&long, "f"), Err(UsersError::BadLength(_))));
    }
}
