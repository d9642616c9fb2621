//! The router and the edits, on a users file and config in a temporary directory.

use std::sync::Arc;

use bytes::Bytes;
use hyper::Method;
use serde_json::{json, Value};
use ss_config::CliArgs;
use ss_crypto::{Key, Method as Cipher};

use super::*;
use crate::users::Users;

const CIPHER: Cipher = Cipher::Blake3Aes128Gcm;

fn key(n: u8) -> String {
    Key::from_bytes(CIPHER, &[n; 16]).unwrap().to_base64()
}

/// An API over one server whose config has `inline` users in config.json and alice in its users file.
fn api(dir: &std::path::Path, inline: Value, token: Option<&str>) -> (Api, Arc<Users>) {
    let users_file = dir.join("users.json");
    std::fs::write(&users_file, json!([{"name": "alice", "password": key(1)}]).to_string()).unwrap();
    let config = json!({"server": "127.0.0.1", "server_port": 8388, "method": CIPHER.to_string(),
        "password": key(9), "users_file": users_file, "users": inline});
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let args = CliArgs { config: Some(path), ..CliArgs::default() };
    let loaded = ss_config::load(&args).unwrap();
    let list = loaded.servers[0].users.clone().unwrap();
    let users = Arc::new(Users::new(CIPHER, &list.users));
    let groups = vec![Group::new("8388".into(), vec![(0, users.clone())], list.file, args)];
    (Api::new(groups, token), users)
}

async fn call(api: &Api, method: Method, path: &str, body: &str) -> Reply {
    let (path, query) = match path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path, None),
    };
    api.respond(&method, path, query, Some(b"Bearer t"), Ok(Bytes::from(body.to_string()))).await
}

#[tokio::test]
async fn routes_statuses_and_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let (api, _) = api(dir.path(), json!([{"name": "bob", "password": key(2)}]), None);
    assert_eq!(call(&api, Method::GET, "/", "").await.body.unwrap()["apiVersion"], "v1");
    assert_eq!(call(&api, Method::GET, "/servers", "").await.body, Some(json!(["8388"])));
    let listed = call(&api, Method::GET, "/servers/8388/users", "").await;
    assert_eq!(
        listed.body,
        Some(json!({"users": [{"username": "bob", "uPSK": key(2)}, {"username": "alice", "uPSK": key(1)}]}))
    );
    assert_eq!(call(&api, Method::GET, "/users", "").await, listed, "one server: also at the root");
    let statuses = [
        (Method::GET, "/servers/1/users", "", 404),
        (Method::GET, "/nowhere", "", 404),
        (Method::PUT, "/users", "", 405),
        (Method::POST, "/stats", "", 405),
        (Method::GET, "/users/nobody", "", 404),
        (Method::DELETE, "/users/nobody", "", 404),
        (Method::POST, "/users", "{", 400),
        (Method::POST, "/users", "[]", 400),
        (Method::POST, "/users", r#"{"username": "", "uPSK": "x"}"#, 400),
        (Method::POST, "/users", r#"{"username": "a/b", "uPSK": "x"}"#, 400),
        (Method::PATCH, "/users/alice", r#"{"uPSK": 5}"#, 400),
    ];
    for (method, path, body, status) in statuses {
        assert_eq!(call(&api, method.clone(), path, body).await.status, status, "{method} {path} {body}");
    }
}

#[tokio::test]
async fn edits_go_through_the_users_file_and_the_config_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (api, _) = api(dir.path(), json!([{"name": "bob", "password": key(2)}]), None);
    let carol = json!({"username": "carol", "uPSK": key(3)}).to_string();
    assert_eq!(call(&api, Method::POST, "/users", &carol).await.status, 201);
    assert_eq!(call(&api, Method::POST, "/users", &carol).await.status, 409, "duplicate");
    let bob_again = json!({"username": "bob", "uPSK": key(4)}).to_string();
    assert_eq!(call(&api, Method::POST, "/users", &bob_again).await.status, 409, "an inline name");
    // The config's checks apply; a refused change leaves the file as it was.
    let before = std::fs::read_to_string(dir.path().join("users.json")).unwrap();
    let short = json!({"username": "dave", "uPSK": "AAAA"}).to_string();
    let refused = call(&api, Method::POST, "/users", &short).await;
    assert_eq!(refused.status, 400, "{refused:?}");
    let same = json!({"username": "dave", "uPSK": key(2)}).to_string();
    assert_eq!(call(&api, Method::POST, "/users", &same).await.status, 400, "bob's key");
    assert_eq!(std::fs::read_to_string(dir.path().join("users.json")).unwrap(), before);
    // Inline users are not the API's to change.
    assert_eq!(call(&api, Method::DELETE, "/users/bob", "").await.status, 409);
    let rekey = json!({"uPSK": key(5)}).to_string();
    assert_eq!(call(&api, Method::PATCH, "/users/bob", &rekey).await.status, 409);
    assert_eq!(call(&api, Method::PATCH, "/users/carol", &rekey).await.status, 204);
    assert_eq!(call(&api, Method::GET, "/users/carol", "").await.body.unwrap()["uPSK"], key(5));
    assert_eq!(call(&api, Method::DELETE, "/users/alice", "").await.status, 204);
    let names: Vec<Value> =
        serde_json::from_str::<Vec<Value>>(&std::fs::read_to_string(dir.path().join("users.json")).unwrap())
            .unwrap()
            .iter()
            .map(|user| user["name"].clone())
            .collect();
    assert_eq!(names, [json!("carol")]);
}

#[tokio::test]
async fn the_token_is_checked_before_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (api, _) = api(dir.path(), Value::Null, Some("t"));
    let ok = Ok(Bytes::new());
    assert_eq!(api.respond(&Method::GET, "/", None, None, ok.clone()).await.status, 401);
    assert_eq!(api.respond(&Method::GET, "/", None, Some(b"Bearer u"), ok.clone()).await.status, 401);
    assert_eq!(api.respond(&Method::GET, "/", None, Some(b"t"), ok.clone()).await.status, 401);
    assert_eq!(api.respond(&Method::GET, "/", None, Some(b"Bearer t"), ok).await.status, 200);
}

#[tokio::test]
async fn clear_resets_what_the_api_reports_not_the_totals() {
    let dir = tempfile::tempdir().unwrap();
    let (api, users) = api(dir.path(), Value::Null, None);
    let alice = users.current().users()[0].clone();
    alice.usages().iter().for_each(|usage| usage.udp_in(100, 100));
    let stats = call(&api, Method::GET, "/stats?clear=true", "").await.body.unwrap();
    assert_eq!((stats["uplinkBytes"].as_u64(), stats["uplinkPackets"].as_u64()), (Some(100), Some(1)));
    assert_eq!(stats["users"][0]["uplinkBytes"], 100);
    alice.usages().iter().for_each(|usage| usage.udp_in(5, 5));
    let stats = call(&api, Method::GET, "/stats", "").await.body.unwrap();
    assert_eq!(
        (stats["uplinkBytes"].as_u64(), stats["users"][0]["uplinkBytes"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(alice.usage().counts().client_to_proxy, 105, "the totals stay");
    assert_eq!(call(&api, Method::GET, "/users/alice", "").await.body.unwrap()["uplinkBytes"], 5);
    assert!(!wants_clear(Some("clear=false")) && wants_clear(Some("a=1&clear")));
}
