//! Plain HTTP proxying: a client connection whose first request is not a CONNECT is served by hyper,
//! and each absolute-URI request (`GET http://host/path`) is sent on toward its target through the
//! server, in origin form (`GET /path`), over one upstream connection per target that is reused while the
//! client keeps its connection (at most [`MAX_UPSTREAMS`] at once).
//!
//! Hop-by-hop headers (RFC 9110 section 7.6.1) are removed both ways: `Connection` and the headers it names,
//! `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding` and `Upgrade`. hyper then frames each
//! body itself, so a chunked body stays chunked (or becomes sized) on either side. A WebSocket
//! handshake (`Upgrade` with `Connection: upgrade`) keeps those two headers; after `101` the two upgraded
//! connections are copied into each other.
//!
//! Also served here: the PAC file (`/proxy.pac` asked of the port itself), `407` when authentication is on
//! and the credentials are wrong, `400` for a request that is not absolute-form `http://`, `502` when the
//! server or target cannot be reached and `504` when connecting timed out. A slow client is bounded by
//! the handshake timeout for each request head.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioIo, TokioTimer};
use ss_crypto::Address;
use ss_net::stream::{DecryptReader, EncryptWriter};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use super::{http, pac};
use crate::connection;
use crate::route::Router;
use crate::Settings;

/// Most idle upstream connections one client connection keeps; past it, closed ones go first, then
/// any one.
pub(crate) const MAX_UPSTREAMS: usize = 16;

type Body = BoxBody<Bytes, hyper::Error>;

/// A byte stream toward a target: through the server (encrypted) or direct (bypassed by the ACL).
trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// Serves a client connection whose bytes so far are `head`, until the client closes it.
pub(crate) async fn serve(
    client: TcpStream,
    head: Vec<u8>,
    settings: Arc<Settings>,
    router: Option<Arc<Router>>,
) {
    let local = client.local_addr().ok();
    let (read, write) = client.into_split();
    let io = TokioIo::new(tokio::io::join(io::Cursor::new(head).chain(read), write));
    let header_timeout = settings.handshake_timeout;
    let proxy = Arc::new(Proxy { settings, router, local, upstreams: Mutex::new(HashMap::new()) });
    let service = hyper::service::service_fn(move |request| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(proxy.handle(request).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(http::MAX_HEAD)
        .serve_connection(io, service)
        .with_upgrades()
        .await;
    if let Err(error) = served {
        debug!(%error, "HTTP connection ended");
    }
}

/// One client connection's proxying state.
struct Proxy {
    settings: Arc<Settings>,
    router: Option<Arc<Router>>,
    local: Option<SocketAddr>,
    /// Idle upstream connections by target (lower-case host, port).
    upstreams: Mutex<HashMap<(String, u16), SendRequest<Incoming>>>,
}

impl Proxy {
    async fn handle(&self, mut request: Request<Incoming>) -> Response<Body> {
        if request.uri().path() == pac::PATH && self.is_own(request.uri()) {
            return match self.local {
                Some(local) => {
                    let acl = self.router.as_ref().map(|router| router.acl());
                    text(StatusCode::OK, pac::CONTENT_TYPE, pac::script(local, acl.as_deref()))
                }
                None => status(StatusCode::INTERNAL_SERVER_ERROR, "local address unknown"),
            };
        }
        if let Some(users) = &self.settings.users {
            let credentials = request.headers().get(header::PROXY_AUTHORIZATION).map(HeaderValue::as_bytes);
            if !users.check_basic(credentials) {
                debug!("HTTP proxy authentication failed");
                let mut response =
                    status(StatusCode::PROXY_AUTHENTICATION_REQUIRED, "proxy authentication required");
                response
                    .headers_mut()
                    .insert(header::PROXY_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"ss-local\""));
                return response;
            }
        }
        let (host, port) = match (request.uri().scheme_str(), request.uri().authority()) {
            (Some("http"), Some(authority)) => {
                (authority.host().to_owned(), authority.port_u16().unwrap_or(80))
            }
            _ => {
                return status(
                    StatusCode::BAD_REQUEST,
                    "expected an absolute http:// URI (CONNECT for others)",
                )
            }
        };
        let Some(target) = http::address_of(&host, port) else {
            return status(StatusCode::BAD_REQUEST, "bad host in the request URI");
        };
        let upgrade = wants_upgrade(request.headers());
        if let Err(problem) = to_origin_form(&mut request, &host, port) {
            return status(StatusCode::BAD_REQUEST, problem);
        }
        strip_hop_by_hop(request.headers_mut(), upgrade);
        let key = (host.to_ascii_lowercase(), port);
        let mut sender = match self.sender(&key, &target).await {
            Ok(sender) => sender,
            Err(error) => {
                debug!(%target, %error, "upstream unreachable");
                return status(
                    StatusCode::from_u16(http::status_for(&error)).unwrap_or(StatusCode::BAD_GATEWAY),
                    "",
                );
            }
        };
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let mut response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(error) => {
                debug!(%target, %error, "upstream request failed");
                return status(StatusCode::BAD_GATEWAY, "");
            }
        };
        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        match client_upgrade {
            Some(client_upgrade) if switched => {
                let upstream_upgrade = hyper::upgrade::on(&mut response);
                tokio::spawn(tunnel(client_upgrade, upstream_upgrade));
            }
            _ => self.keep(key, sender),
        }
        strip_hop_by_hop(response.headers_mut(), switched);
        response.map(BodyExt::boxed)
    }

    /// Whether `uri` asks for the port itself: origin form, or an absolute URI naming the local address.
    fn is_own(&self, uri: &Uri) -> bool {
        let Some(authority) = uri.authority() else { return true };
        let Some(local) = self.local else { return false };
        let port_matches = authority.port_u16().unwrap_or(80) == local.port();
        let host = authority.host();
        port_matches
            && (host.eq_ignore_ascii_case("localhost")
                || matches!(http::address_of(host, local.port()), Some(Address::Ip(addr)) if addr.ip() == local.ip()))
    }

    /// An upstream connection to `target` ready for a request: the idle one, else a new one.
    async fn sender(&self, key: &(String, u16), target: &Address) -> io::Result<SendRequest<Incoming>> {
        let idle = self.upstreams.lock().ok().and_then(|mut upstreams| upstreams.remove(key));
        if let Some(mut sender) = idle {
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let stream = open_upstream(&self.settings, self.router.as_deref(), target).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(io::Error::other)?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                debug!(%error, "upstream HTTP connection ended");
            }
        });
        Ok(sender)
    }

    /// Keeps `sender` for the next request to the same target.
    fn keep(&self, key: (String, u16), sender: SendRequest<Incoming>) {
        let Ok(mut upstreams) = self.upstreams.lock() else { return };
        if upstreams.len() >= MAX_UPSTREAMS {
            let closed: Vec<_> =
                upstreams.iter().filter(|(_, s)| s.is_closed()).map(|(k, _)| k.clone()).collect();
            for key in closed {
                upstreams.remove(&key);
            }
            if let Some(victim) =
                upstreams.keys().next().cloned().filter(|_| upstreams.len() >= MAX_UPSTREAMS)
            {
                upstreams.remove(&victim);
            }
        }
        upstreams.insert(key, sender);
    }
}

/// Opens a stream to `target`: directly when the ACL bypasses it, else through the first server that answers.
async fn open_upstream(
    settings: &Settings,
    router: Option<&Router>,
    target: &Address,
) -> io::Result<Box<dyn Duplex>> {
    if let Some(router) = router {
        if let Some(direct) = connection::bypass(router, target, settings).await {
            return Ok(Box::new(direct?));
        }
    }
    // The balancer hears of servers that cannot be reached (in connect_any); the first byte of a
    // forwarded request is not watched, as hyper owns the read half.
    let servers = settings.current_servers();
    let (upstream, server, _watch) = connection::connect_any(&servers, settings).await?;
    let (read, write) = upstream.into_split();
    let (encryptor, decryptor) = connection::request_ciphers(server, target, false);
    let writer = EncryptWriter::new(write, encryptor);
    let reader = DecryptReader::new(read, decryptor);
    Ok(Box::new(tokio::io::join(reader, writer)))
}

/// Rewrites an absolute-form request line to origin form, adding `Host` when the client left it out.
/// `Err` names what is wrong, for a 400.
fn to_origin_form(request: &mut Request<Incoming>, host: &str, port: u16) -> Result<(), &'static str> {
    let path = request.uri().path_and_query().map_or("/", |path| path.as_str());
    let origin: Uri = path.parse().map_err(|_| "bad request path")?;
    *request.uri_mut() = origin;
    if !request.headers().contains_key(header::HOST) {
        let value = if port == 80 { host.to_owned() } else { format!("{host}:{port}") };
        let value = HeaderValue::from_str(&value).map_err(|_| "bad host")?;
        request.headers_mut().insert(header::HOST, value);
    }
    Ok(())
}

/// Whether the request is a protocol upgrade (WebSocket): an `Upgrade` header named by `Connection`.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|token| token.eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers; with `upgrade`, keeps `Upgrade` and says `Connection: upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    let fixed = [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ];
    for name in fixed {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The comma-separated tokens of every `Connection` header.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Copies between the client's and the target's upgraded connections until both are done.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(client), Ok(upstream)) => (client, upstream),
        (Err(error), _) | (_, Err(error)) => return debug!(%error, "upgrade failed"),
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        debug!(%error, "upgraded connection ended");
    }
}

fn status(code: StatusCode, detail: &str) -> Response<Body> {
    let body = if detail.is_empty() { code.canonical_reason().unwrap_or("") } else { detail };
    text(code, "text/plain", format!("{body}\n"))
}

fn text(code: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| {
                (HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap())
            })
            .collect()
    }

    #[test]
    fn hop_by_hop_headers_go_end_to_end_ones_stay() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eDp5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "X-Sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-type", "text/html"),
            ("x-token", "abc"),
        ]);
        strip_hop_by_hop(&mut map, false);
        let mut left: Vec<_> = map.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-token"]);
    }

    #[test]
    fn websocket_upgrades_keep_upgrade_and_connection() {
        let mut map =
            headers(&[("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", "k")]);
        assert!(wants_upgrade(&map));
        strip_hop_by_hop(&mut map, true);
        assert_eq!(map.get("upgrade").unwrap(), "websocket");
        assert_eq!(map.get("connection").unwrap(), "upgrade");
        assert_eq!(map.get("sec-websocket-key").unwrap(), "k");
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])), "Upgrade not named by Connection");
    }
}
