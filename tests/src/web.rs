//! A recording HTTP/1.1 target for the HTTP-proxy tests: keep-alive, every request head kept, bodies
//! read by `Content-Length` or chunked framing, and files served from a directory (a dumb-HTTP git
//! repository).
//!
//! Answers: a file under the root when the path names one; otherwise `200` with a body naming the path
//! (`path=/...`), sent chunked when the path contains `chunked`. Counts accepted connections, so a test
//! can tell whether a proxy reused one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::STEP;

/// One request as the target saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The request head, request line and headers, as text.
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// A running target; stops when dropped.
#[derive(Debug)]
pub struct WebTarget {
    /// Where it listens (127.0.0.1).
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebTarget {
    /// Starts a target serving files under `root` (if any).
    pub async fn start(root: Option<PathBuf>) -> WebTarget {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind web target");
        let addr = listener.local_addr().expect("web target address");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let (record, count) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (record, root) = (record.clone(), root.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(STEP * 3, serve(stream, record, root)).await;
                });
            }
        });
        WebTarget { addr, seen, connections, task }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// The requests whose request line contains `needle`.
    pub fn seen_with(&self, needle: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|seen| seen.head.lines().next().unwrap_or("").contains(needle))
            .collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(
    mut stream: TcpStream,
    seen: Arc<Mutex<Vec<Seen>>>,
    root: Option<PathBuf>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(end) = read_until(&mut stream, &mut buf, b"\r\n\r\n").await? else { return Ok(()) };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let lower = head.to_ascii_lowercase();
        let body = if lower.contains("\r\ntransfer-encoding: chunked") {
            read_chunked(&mut stream, &mut buf).await?
        } else {
            let len = lower
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < len {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Ok(());
                }
            }
            buf.drain(..len).collect()
        };
        let path = head.split(' ').nth(1).unwrap_or("").to_owned();
        seen.lock().expect("seen").push(Seen { head, body });
        let file_path = path.split('?').next().unwrap_or("").trim_start_matches('/');
        let file = root.as_ref().map(|root| root.join(file_path));
        let response = match file.filter(|file| file.is_file()) {
            Some(file) => {
                let content = std::fs::read(file)?;
                let mut response =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", content.len()).into_bytes();
                response.extend_from_slice(&content);
                response
            }
            None if root.is_some() => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            None if path.contains("chunked") => {
                let text = format!("path={path}\n");
                let (a, b) = text.split_at(text.len() / 2);
                format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Target: yes\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
                    a.len(),
                    b.len()
                )
                .into_bytes()
            }
            None => {
                let text = format!("path={path}\n");
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n{text}", text.len()).into_bytes()
            }
        };
        stream.write_all(&response).await?;
    }
}

/// Reads until `needle` is in `buf`; its offset, or `None` at EOF.
async fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    needle: &[u8],
) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(at) = buf.windows(needle.len()).position(|window| window == needle) {
            return Ok(Some(at));
        }
        if buf.len() > 1 << 20 || stream.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let Some(end) = read_until(stream, buf, b"\r\n").await? else { return Ok(body) };
        let size_line = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 2);
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            let _ = read_until(stream, buf, b"\r\n").await?;
            buf.drain(..2.min(buf.len()));
            return Ok(body);
        }
        while buf.len() < size + 2 {
            if stream.read_buf(buf).await? == 0 {
                return Ok(body);
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}
