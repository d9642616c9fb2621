//! Where the management API listens and how it answers: HTTP/1.1 (hyper) on a TCP address or a unix
//! socket path (anything with a `/` or without a `:`), at most [`MAX_CONNECTIONS`] connections at once,
//! each given [`HEADER_TIMEOUT`] to send its request headers and [`MAX_BODY`](super::MAX_BODY) bytes of
//! body.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use super::Api;

/// Connections served at once; more wait in the backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// Time a client has to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The API's bound socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A unix socket, whose file is removed when the API stops.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// Binds `address`. TCP needs a token (`has_token`); a stale socket file is replaced.
    pub async fn bind(address: &str, has_token: bool) -> anyhow::Result<Listener> {
        check(address, has_token)?;
        if is_path(address) {
            let path = PathBuf::from(address);
            use std::os::unix::fs::FileTypeExt as _;
            if std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.file_type().is_socket()) {
                let _ = std::fs::remove_file(&path);
            }
            let listener = UnixListener::bind(&path)
                .with_context(|| format!("binding the management API on {}", path.display()))?;
            // Only our user may connect, whatever the umask: the socket is the API's only guard.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("making {} private", path.display()))?;
            return Ok(Listener::Unix(listener, path));
        }
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the management API on {address}"))?;
        Ok(Listener::Tcp(listener))
    }

    /// What it is bound to, for the log.
    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(listener) => match listener.local_addr() {
                Ok(addr) => addr.to_string(),
                Err(_) => "TCP".into(),
            },
            Listener::Unix(_, path) => path.display().to_string(),
        }
    }
}

/// Whether `address` is a unix socket path: it has a `/` or no `:`.
fn is_path(address: &str) -> bool {
    address.contains('/') || !address.contains(':')
}

/// The rule a start and `--check` apply: a TCP address needs a token.
pub fn check(address: &str, has_token: bool) -> anyhow::Result<()> {
    if !is_path(address) && !has_token {
        anyhow::bail!(
            "api {address}: a TCP address needs api_token (--api-token); without one, use a unix socket path"
        );
    }
    Ok(())
}

/// Serves `api` on `listener` until `shutdown`; open connections are then dropped.
pub async fn serve(listener: Listener, api: Arc<Api>, shutdown: CancellationToken) {
    tracing::info!(address = %listener.describe(), "management API listening");
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.len() >= MAX_CONNECTIONS {
            tokio::select! {
                () = shutdown.cancelled() => return finish(&listener),
                _ = connections.join_next() => {}
            }
        }
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok(Accepted::Tcp(stream)) => connections.spawn(connection(stream, api.clone())),
            Ok(Accepted::Unix(stream)) => connections.spawn(connection(stream, api.clone())),
            Err(error) => {
                tracing::warn!(%error, "management API: accept failed");
                // Out of descriptors, most likely: give the connections time to end.
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                continue;
            }
        };
    }
    finish(&listener);
}

fn finish(listener: &Listener) {
    if let Listener::Unix(_, path) = listener {
        let _ = std::fs::remove_file(path);
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Tcp(listener) => listener.accept().await.map(|(stream, _)| Accepted::Tcp(stream)),
        Listener::Unix(listener, _) => listener.accept().await.map(|(stream, _)| Accepted::Unix(stream)),
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(stream: S, api: Arc<Api>) {
    let service = hyper::service::service_fn(move |request| {
        let api = api.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(&api, request).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "management API connection ended");
    }
}

async fn answer(api: &Api, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, super::MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => Err(format!("request body not read: {error}")),
    };
    let authorization = parts.headers.get(hyper::header::AUTHORIZATION).map(|value| value.as_bytes());
    let reply = api.respond(&parts.method, parts.uri.path(), parts.uri.query(), authorization, body).await;
    if reply.status >= 400 {
        tracing::debug!(status = reply.status, method = %parts.method, path = parts.uri.path(), "management API");
    }
    let mut response = Response::new(Full::new(match &reply.body {
        Some(body) => Bytes::from(body.to_string()),
        None => Bytes::new(),
    }));
    *response.status_mut() =
        hyper::StatusCode::from_u16(reply.status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    if reply.body.is_some() {
        headers
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
    }
    if reply.status == 401 {
        headers.insert(hyper::header::WWW_AUTHENTICATE, hyper::header::HeaderValue::from_static("Bearer"));
    }
    response
}
