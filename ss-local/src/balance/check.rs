//! The quiet checks: the task that asks the balancer which servers are due ([`Balancer::due_checks`])
//! and checks each, and the check itself.
//!
//! A check looks like the start of an ordinary connection: a TCP connect to the server and a
//! Shadowsocks request for `check_target` with no payload (with the usual random padding of 2022
//! methods), then a half-close. A target that sees the client end its side answers or closes; either
//! comes back through the server as a first byte or an EOF. The time to that, plus the connect, is the
//! sample. A refused or reset connection, or silence until the connect timeout, is a failure. Nothing is
//! sent to a fixed, recognisable address: the target is the user's (`check_target`).

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rand_core::OsRng;
use ss_crypto::{Address, Encryptor, Salt};
use ss_net::stream::EncryptWriter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Balancer, Outcome, ServerId};
use crate::Server;

/// How often the task asks whether a check is due. Only the balancer's answer puts anything on the wire:
/// an idle client with every server up sends nothing.
const TICK: Duration = Duration::from_secs(1);

/// Runs checks as they fall due until `shutdown`; `servers` gives the current list each time.
pub(crate) async fn run_checks<F>(
    balancer: Arc<Balancer>,
    servers: F,
    socket: ss_net::SocketOptions,
    limit: Duration,
    shutdown: CancellationToken,
) where
    F: Fn() -> Vec<Server> + Send + 'static,
{
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            Some(_) = running.join_next(), if !running.is_empty() => continue,
        }
        for server in balancer.due_checks(&servers()) {
            let (balancer, socket, target) = (balancer.clone(), socket, balancer.policy.check_target.clone());
            running.spawn(async move {
                let outcome = check(&server, &target, &socket, limit).await;
                debug!(server = %ServerId::of(&server), ?outcome, "server checked");
                balancer.report(&ServerId::of(&server), outcome);
            });
        }
    }
}

/// One check of `server`: connect, request `target` with no payload, half-close, wait for a byte or
/// EOF; all within `limit`.
pub(crate) async fn check(
    server: &Server,
    target: &Address,
    socket: &ss_net::SocketOptions,
    limit: Duration,
) -> Outcome {
    let started = Instant::now();
    match timeout(limit, exchange(server, target, socket)).await {
        Ok(Ok(())) => Outcome::Answered(started.elapsed()),
        Ok(Err(error)) => {
            debug!(server = %ServerId::of(server), %error, "check failed");
            Outcome::Failed
        }
        Err(_) => Outcome::Failed,
    }
}

async fn exchange(server: &Server, target: &Address, socket: &ss_net::SocketOptions) -> io::Result<()> {
    let stream = server.connect_tcp(socket).await?;
    let (mut read, write) = stream.into_split();
    let salt = Salt::random(server.method, &mut OsRng);
    let padding = crate::connection::padding(true);
    let mut writer =
        EncryptWriter::new(write, Encryptor::request(server.method, &server.key, salt, target, &padding));
    writer.flush().await?;
    writer.shutdown().await?;
    // A byte (of the response's salt) or an EOF: the server relayed the target's answer either way.
    let _byte_or_eof = read.read(&mut [0u8; 1]).await?;
    Ok(())
}
