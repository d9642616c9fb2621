//! The Shadowsocks Server Management API v1 over HTTP (`api`, `--api`), as shadowsocks-go and sing-box's
//! `ssm-api` serve it: a panel lists, adds, re-keys and removes the users of a multi-user server and reads
//! their traffic, without a restart.
//!
//! ```text
//! GET    /                      {"server":"ss-rs 0.1.0","apiVersion":"v1"}
//! GET    /servers               ["8388", ...]             the managed servers, named by port
//! GET    /servers/NAME          {"server":...,"apiVersion":"v1"}
//! GET    /servers/NAME/users    {"users":[{"username":"alice","uPSK":"..."}]}
//! POST   /servers/NAME/users    {"username":"carol","uPSK":"..."}  -> 201 (the user), 409 if the name exists
//! GET    /servers/NAME/users/U  {"username","uPSK","uplinkBytes","downlinkBytes","uplinkPackets",
//!                                "downlinkPackets","tcpSessions","udpSessions"}
//! PATCH  /servers/NAME/users/U  {"uPSK":"..."}            -> 204
//! DELETE /servers/NAME/users/U                            -> 204; the user's connections end at once
//! GET    /servers/NAME/stats[?clear=true]  the traffic fields for the server and "users":[{"username",...}]
//! ```
//!
//! A server is the multi-user entries of one port (one per host in `server`); with only one, its paths
//! are served at the root as well (`/users`, `/stats`, ...), where a panel made for a single server
//! expects them. Uplink is client to server, downlink server to client, payload bytes; packets are UDP
//! datagrams; sessions are TCP connections and UDP associations since the usage store began.
//! Errors are `{"error":"..."}`: 400 for a malformed body or a change the config's checks refuse (a key of
//! the wrong length, a key another user has), 401 without the token, 404 for an unknown server or user,
//! 405 for a method a path does not take, 409 for a duplicate name or a user written in config.json.
//! How changes are saved: [`group`].
//!
//! Where: [`serve`]. On TCP the API requires `api_token` as `Authorization: Bearer TOKEN` and will not
//! start without one; a unix socket is guarded by its file permissions (the token is required there too
//! if one is set).

pub mod group;
pub mod serve;
pub mod users_file;

use bytes::Bytes;
use hyper::Method;
use serde::Deserialize;
use serde_json::{json, Value};

pub use group::Group;

/// Largest request body read.
pub const MAX_BODY: usize = 64 * 1024;

/// An answer: status and JSON body (none for 204).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Option<Value>,
}

impl Reply {
    /// 200 with `body`.
    pub fn ok(body: Value) -> Reply {
        Reply { status: 200, body: Some(body) }
    }

    /// 201 with `body`.
    pub fn created(body: Value) -> Reply {
        Reply { status: 201, body: Some(body) }
    }

    /// 204.
    pub fn empty() -> Reply {
        Reply { status: 204, body: None }
    }

    /// `status` with `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Reply {
        Reply { status, body: Some(json!({ "error": message.into() })) }
    }
}

/// The API: the managed servers and the token.
#[derive(Debug)]
pub struct Api {
    groups: Vec<Group>,
    /// BLAKE3 of the token: comparing hashes takes the same time whatever the guess.
    token: Option<blake3::Hash>,
}

#[derive(Deserialize)]
struct NewUser {
    username: String,
    #[serde(rename = "uPSK")]
    upsk: String,
}

#[derive(Deserialize)]
struct NewKey {
    #[serde(rename = "uPSK")]
    upsk: String,
}

impl Api {
    /// An API over `groups`, requiring `token` if given.
    pub fn new(groups: Vec<Group>, token: Option<&str>) -> Api {
        Api { groups, token: token.map(|token| blake3::hash(token.as_bytes())) }
    }

    /// Whether a token is required.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Answers one request. `authorization` is the header's value; `body` the request body, or why it
    /// could not be read.
    pub async fn respond(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        authorization: Option<&[u8]>,
        body: Result<Bytes, String>,
    ) -> Reply {
        if let Some(token) = &self.token {
            let given = authorization.and_then(|value| value.strip_prefix(b"Bearer "));
            if given.is_none_or(|given| blake3::hash(given) != *token) {
                return Reply::error(401, "missing or wrong bearer token");
            }
        }
        let segments: Vec<String> = path
            .split('/')
            .filter(|segment| !segment.is_empty())
            .map(|segment| percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned())
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        match segments.as_slice() {
            [] => only_get(method, info),
            ["servers"] => {
                let names: Vec<&str> = self.groups.iter().map(Group::name).collect();
                only_get(method, || Reply::ok(json!(names)))
            }
            ["servers", name, rest @ ..] => match self.groups.iter().find(|group| group.name() == *name) {
                Some(group) => route(group, method, rest, query, body).await,
                None => Reply::error(404, "server not found"),
            },
            rest => match self.groups.as_slice() {
                [group] => route(group, method, rest, query, body).await,
                _ => Reply::error(404, "not found (several servers: use /servers/NAME/...)"),
            },
        }
    }
}

/// The paths under one server.
async fn route(
    group: &Group,
    method: &Method,
    rest: &[&str],
    query: Option<&str>,
    body: Result<Bytes, String>,
) -> Reply {
    match (rest, method) {
        ([], _) => only_get(method, info),
        (["stats"], _) => only_get(method, || group.stats(wants_clear(query))),
        (["users"], &Method::GET) => group.list(),
        (["users"], &Method::POST) => match parse::<NewUser>(body) {
            Ok(user) if valid_name(&user.username) && !user.upsk.is_empty() => {
                group.add(&user.username, &user.upsk).await
            }
            Ok(_) => {
                Reply::error(400, "username and uPSK must be non-empty (and the name without / or spaces)")
            }
            Err(reply) => reply,
        },
        (["users", name], &Method::GET) => group.get(name),
        (["users", name], &Method::PATCH) => match parse::<NewKey>(body) {
            Ok(key) if !key.upsk.is_empty() => group.update(name, &key.upsk).await,
            Ok(_) => Reply::error(400, "uPSK must be non-empty"),
            Err(reply) => reply,
        },
        (["users", name], &Method::DELETE) => group.delete(name).await,
        (["users"] | ["users", _], _) => Reply::error(405, "method not allowed"),
        _ => Reply::error(404, "not found"),
    }
}

fn info() -> Reply {
    Reply::ok(json!({"server": concat!("ss-rs ", env!("CARGO_PKG_VERSION")), "apiVersion": "v1"}))
}

fn only_get(method: &Method, answer: impl FnOnce() -> Reply) -> Reply {
    match *method {
        Method::GET => answer(),
        _ => Reply::error(405, "method not allowed"),
    }
}

/// `clear`, `clear=` or `clear=true` (shadowsocks-go's reading).
fn wants_clear(query: Option<&str>) -> bool {
    query.is_some_and(|query| query.split('&').any(|pair| matches!(pair, "clear" | "clear=" | "clear=true")))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.trim() == name && !name.contains('/')
}

fn parse<T: serde::de::DeserializeOwned>(body: Result<Bytes, String>) -> Result<T, Reply> {
    let body = body.map_err(|why| Reply::error(400, why))?;
    serde_json::from_slice(&body).map_err(|error| Reply::error(400, format!("malformed JSON body: {error}")))
}

#[cfg(test)]
mod tests;
