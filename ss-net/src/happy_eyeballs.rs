//! Happy Eyeballs (RFC 8305, section 5): connecting to a name with several addresses without waiting a
//! whole connect timeout for each dead one.
//!
//! ```text
//! order: families alternate, the preferred one (ipv6_first ? IPv6 : IPv4) first
//! t=0       attempt 1 (IPv6) ───x refused: attempt 2 starts at once
//! t=40 ms   attempt 2 (IPv4) ──────────────────────────── (no answer) ─ dropped
//! t=290 ms  attempt 3 (IPv6) ─────────── connected ─▶ wins; attempts still running are dropped (closed)
//! ```
//!
//! Each attempt starts [`ATTEMPT_DELAY`] after the previous one started, or at once when an attempt
//! fails. The first to connect wins. The caller bounds the whole race with its connect timeout; the
//! addresses given must already have passed the caller's policy (ss-server checks every candidate
//! before any is dialled).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

/// RFC 8305's recommended "Connection Attempt Delay".
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Orders `addresses` for the race: families alternate, starting with IPv6 when `ipv6_first`, else
/// IPv4; within a family the resolver's order stands.
pub fn interleave(addresses: &[SocketAddr], ipv6_first: bool) -> Vec<SocketAddr> {
    let (mut first, mut second): (Vec<_>, Vec<_>) =
        addresses.iter().copied().partition(|addr| addr.is_ipv6() == ipv6_first);
    first.reverse();
    second.reverse();
    let mut ordered = Vec::with_capacity(addresses.len());
    while !first.is_empty() || !second.is_empty() {
        ordered.extend(first.pop());
        ordered.extend(second.pop());
    }
    ordered
}

/// Races `attempt` over `addresses` (already in order, see [`interleave`]) and returns the first
/// connection with its address. Fails with the last attempt's error when all fail, `NotFound` when
/// there is no address.
pub async fn race<S, F, Fut>(addresses: &[SocketAddr], mut attempt: F) -> io::Result<(S, SocketAddr)>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = io::Result<S>>,
{
    let mut waiting = addresses.iter().copied();
    let mut running = FuturesUnordered::new();
    let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    let start = |addr: SocketAddr, attempt: &mut F| {
        let connecting = attempt(addr);
        async move { (addr, connecting.await) }
    };
    match waiting.next() {
        Some(addr) => running.push(start(addr, &mut attempt)),
        None => return Err(last_error),
    }
    let delay = tokio::time::sleep(ATTEMPT_DELAY);
    tokio::pin!(delay);
    loop {
        let more = waiting.len() > 0;
        tokio::select! {
            finished = running.next(), if !running.is_empty() => match finished {
                Some((addr, Ok(stream))) => return Ok((stream, addr)),
                Some((addr, Err(error))) => {
                    tracing::debug!(%addr, %error, "connection attempt failed");
                    last_error = error;
                    // A failure need not wait out the delay: the next address starts now.
                    match waiting.next() {
                        Some(next) => {
                            running.push(start(next, &mut attempt));
                            delay.as_mut().reset(tokio::time::Instant::now() + ATTEMPT_DELAY);
                        }
                        None if running.is_empty() => return Err(last_error),
                        None => {}
                    }
                }
                None => return Err(last_error),
            },
            () = &mut delay, if more => {
                if let Some(next) = waiting.next() {
                    running.push(start(next, &mut attempt));
                }
                delay.as_mut().reset(tokio::time::Instant::now() + ATTEMPT_DELAY);
            }
        }
    }
}

#[cfg(test)]
mod tests;
