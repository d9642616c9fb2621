//! A loopback HTTP page server and a one-request HTTP client, for the tests that fetch a page through the
//! proxy (the binaries, interop and browser tests).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::STEP;

/// A minimal HTTP/1 server on 127.0.0.1 that serves one HTML page at `/` (404 for any other path) and
/// counts the requests for that page. Stops when dropped.
#[derive(Debug)]
pub struct PageServer {
    /// Where it listens.
    pub addr: SocketAddr,
    page_requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    /// How many requests for `/` were answered so far.
    pub fn page_requests(&self) -> usize {
        self.page_requests.load(Ordering::SeqCst)
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a [`PageServer`] serving `html`.
pub async fn page_server(html: &str) -> PageServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind page server");
    let addr = listener.local_addr().expect("page server address");
    let page_requests = Arc::new(AtomicUsize::new(0));
    let counter = page_requests.clone();
    let html: Arc<str> = html.into();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (counter, html) = (counter.clone(), html.clone());
            tokio::spawn(async move {
                let _ = tokio::time::timeout(STEP, serve_page(stream, &html, &counter)).await;
            });
        }
    });
    PageServer { addr, page_requests, task }
}

/// Sends `GET /` with `Host: host` on `stream` and returns the body of a `200` response.
pub async fn http_get(mut stream: TcpStream, host: &str) -> std::io::Result<String> {
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let response = String::from_utf8_lossy(&response);
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other(format!("no HTTP header in {response:?}")));
    };
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(std::io::Error::other(format!("HTTP status line {:?}", head.lines().next())));
    }
    Ok(body.to_owned())
}

/// Answers one request and closes: the page for `GET /`, 404 otherwise.
async fn serve_page(mut stream: TcpStream, html: &str, page_requests: &AtomicUsize) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.lines().next().and_then(|line| line.split(' ').nth(1)).unwrap_or_default();
    let (status, body) = if path == "/" {
        page_requests.fetch_add(1, Ordering::SeqCst);
        ("200 OK", html)
    } else {
        ("404 Not Found", "not found")
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
