//! The Prometheus endpoint both binaries serve when `metrics` / `--metrics` is set: `GET /metrics`
//! answers the registry in the Prometheus text format (version 0.0.4), encoded by prometheus-client;
//! any other method or path gets 404.
//!
//! It is reachable by whoever can reach its address, so it is built to cost the proxy nothing when
//! abused: at most [`Bounds::max_connections`] connections are served at once (further ones wait in
//! the backlog), a client that has not sent its request headers within [`Bounds::header_timeout`] is
//! dropped, a connection lives at most [`Bounds::connection_timeout`], and each connection answers
//! one request (no keep-alive). Everything it reports is read at scrape time, on this task: the relay
//! path never waits for it.
//!
//! On a unix socket path a stale socket file left by an earlier run is replaced (one that a process
//! still listens on is an error), and the file is removed at shutdown; any other kind of file at that
//! path is an error.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use ss_config::MetricsAddress;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The only path served.
pub const PATH: &str = "/metrics";

/// How much a client may take of the endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time from accept within which the request headers must have arrived.
    pub header_timeout: Duration,
    /// Longest life of a connection, answer included.
    pub connection_timeout: Duration,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            max_connections: 8,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
        }
    }
}

/// A bound metrics listener: TCP, or a unix socket (with its path, removed at shutdown).
#[derive(Debug)]
pub enum MetricsListener {
    /// `ADDR:PORT`.
    Tcp(TcpListener),
    /// A unix socket path.
    #[cfg(unix)]
    Unix(tokio::net::UnixListener, PathBuf),
}

impl MetricsListener {
    /// Binds `addr`.
    pub async fn bind(addr: &MetricsAddress) -> io::Result<MetricsListener> {
        match addr {
            MetricsAddress::Tcp(addr) => Ok(MetricsListener::Tcp(TcpListener::bind(addr).await?)),
            #[cfg(unix)]
            MetricsAddress::Unix(path) => {
                remove_stale_socket(path)?;
                Ok(MetricsListener::Unix(tokio::net::UnixListener::bind(path)?, path.clone()))
            }
            #[cfg(not(unix))]
            MetricsAddress::Unix(_) => {
                Err(io::Error::new(io::ErrorKind::Unsupported, "unix sockets need a unix system"))
            }
        }
    }

    /// The TCP address bound (port 0 resolved); `None` for a unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            MetricsListener::Tcp(listener) => listener.local_addr().ok(),
            #[cfg(unix)]
            MetricsListener::Unix(..) => None,
        }
    }
}

/// `--check`: whether `addr` could be served, touching nothing a running server uses. A TCP address is
/// bound and returned (hold it until the check ends, so a clash with another listener shows); for a
/// unix socket the directory must exist and no process may be serving on the path.
pub async fn check_address(addr: &MetricsAddress) -> io::Result<Option<TcpListener>> {
    match addr {
        MetricsAddress::Tcp(addr) => Ok(Some(TcpListener::bind(addr).await?)),
        MetricsAddress::Unix(path) => {
            let parent = path.parent().filter(|dir| !dir.as_os_str().is_empty());
            if parent.is_some_and(|dir| !dir.is_dir()) {
                return Err(io::Error::new(io::ErrorKind::NotFound, "its directory does not exist"));
            }
            #[cfg(unix)]
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process serves on this socket",
                ));
            }
            Ok(None)
        }
    }
}

/// `--check`'s step for the `metrics` key, one for both binaries: `addr` checked ([`check_address`]) and
/// reported; a bound TCP listener is returned, to be held until the check ends.
pub async fn check(report: &mut crate::check::Report, addr: Option<&MetricsAddress>) -> Option<TcpListener> {
    let addr = addr?;
    let checked = report.check(&format!("metrics {addr}"), check_address(addr).await);
    checked.inspect(|_| report.note(format!("metrics: GET /metrics on {addr}"))).flatten()
}

/// Serves `registry` on `listener` with the default [`Bounds`] until `shutdown`.
pub async fn serve(listener: MetricsListener, registry: Arc<Registry>, shutdown: CancellationToken) {
    serve_with(listener, registry, Bounds::default(), shutdown).await;
}

/// [`serve`] with the given bounds.
pub async fn serve_with(
    listener: MetricsListener,
    registry: Arc<Registry>,
    bounds: Bounds,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok(Accepted::Tcp(stream)) => {
                tokio::spawn(serve_connection(stream, registry.clone(), bounds, permit));
            }
            #[cfg(unix)]
            Ok(Accepted::Unix(stream)) => {
                tokio::spawn(serve_connection(stream, registry.clone(), bounds, permit));
            }
            Err(error) => {
                // Out of descriptors, most likely: wait rather than spin; the proxy matters more.
                tracing::warn!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    #[cfg(unix)]
    if let MetricsListener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

/// The answer to one request: the metrics for `GET /metrics`, 404 for anything else.
pub fn respond<B>(request: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    if request.method() != Method::GET || request.uri().path() != PATH {
        return status(StatusCode::NOT_FOUND, "not found; metrics are at GET /metrics\n");
    }
    let mut text = String::new();
    if let Err(error) = prometheus_text::encode(&mut text, registry) {
        tracing::warn!(%error, "metrics could not be encoded");
        return status(StatusCode::INTERNAL_SERVER_ERROR, "metrics could not be encoded\n");
    }
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(prometheus_text::CONTENT_TYPE));
    response
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    #[cfg(unix)]
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &MetricsListener) -> io::Result<Accepted> {
    match listener {
        MetricsListener::Tcp(listener) => Ok(Accepted::Tcp(listener.accept().await?.0)),
        #[cfg(unix)]
        MetricsListener::Unix(listener, _) => Ok(Accepted::Unix(listener.accept().await?.0)),
    }
}

/// One connection, one request, within the bounds; the permit is its place among the connections.
async fn serve_connection<S>(
    stream: S,
    registry: Arc<Registry>,
    bounds: Bounds,
    _permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = respond(&request, &registry);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(bounds.connection_timeout, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "metrics connection failed"),
        Err(_) => tracing::debug!("metrics connection timed out"),
    }
}

fn status(code: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = code;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Removes a socket file left at `path` by an earlier run; leaves anything else for bind to refuse. A
/// socket someone still listens on (another instance) is an error: taking it over would hide that one.
#[cfg(unix)]
fn remove_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process serves on this socket",
                ));
            }
            std::fs::remove_file(path)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
