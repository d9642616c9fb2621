//! The strategies: which of the servers that are up a new connection of one kind (TCP or UDP) tries
//! first. Each kind keeps its own [`Choice`]: its current server (`failover`, `fastest`) and its
//! round-robin credits, all keyed by server identity.

use std::collections::HashMap;

use rand_core::{OsRng, RngCore};
use tracing::info;

use super::{score_of, Health, Kind, Policy, ServerId, Strategy};
use crate::Server;

/// One kind's choice state.
#[derive(Debug, Default)]
pub(super) struct Choice {
    /// The server `failover` or `fastest` picked last, to notice (and log) a change.
    current: Option<ServerId>,
    /// Smooth weighted round-robin: each server's credit.
    credit: HashMap<ServerId, f64>,
}

impl Choice {
    /// The index (into `servers`) of the server to try first among `up` (indices of servers not
    /// down, in list order); `None` when every server is down.
    pub(super) fn pick(
        &mut self,
        policy: &Policy,
        kind: Kind,
        servers: &[Server],
        ids: &[ServerId],
        up: &[usize],
        health: &HashMap<ServerId, Health>,
    ) -> Option<usize> {
        let first = *up.first()?;
        let picked = match policy.strategy {
            Strategy::Failover => first,
            Strategy::Fastest => self.fastest(policy, ids, up, health),
            Strategy::RoundRobin => self.round_robin(kind, servers, ids, up),
            Strategy::Random => random(kind, servers, up),
        };
        let sticky = matches!(policy.strategy, Strategy::Failover | Strategy::Fastest);
        if sticky && self.current.as_ref() != Some(&ids[picked]) {
            let to = &ids[picked];
            match &self.current {
                Some(from) => {
                    info!(?kind, %from, %to, score_ms = ?score_ms(health, to), "chosen server changed")
                }
                None => info!(?kind, server = %to, "chosen server"),
            }
            self.current = Some(to.clone());
        }
        Some(picked)
    }

    /// The best-scored server, unless the current one is up and within the tolerance of it.
    fn fastest(
        &self,
        policy: &Policy,
        ids: &[ServerId],
        up: &[usize],
        health: &HashMap<ServerId, Health>,
    ) -> usize {
        // `min_by` keeps the first of equals: list order breaks ties and orders unmeasured servers.
        let best = up
            .iter()
            .copied()
            .min_by(|&a, &b| score_of(health, &ids[a]).total_cmp(&score_of(health, &ids[b])))
            .unwrap_or(up[0]);
        let current = self.current.as_ref().and_then(|id| up.iter().copied().find(|&i| &ids[i] == id));
        let Some(current) = current else { return best };
        let (now, other) = (score_of(health, &ids[current]), score_of(health, &ids[best]));
        if !now.is_finite() {
            return best;
        }
        let margin = (policy.tolerance.as_secs_f64() * 1000.0).max(policy.tolerance_ratio * now);
        if other < now - margin {
            best
        } else {
            current
        }
    }

    /// Smooth weighted round-robin: every pick adds each server's weight to its credit and takes the
    /// richest, which pays the total back; servers come in proportion to their weights, interleaved.
    fn round_robin(&mut self, kind: Kind, servers: &[Server], ids: &[ServerId], up: &[usize]) -> usize {
        self.credit.retain(|id, _| ids.contains(id));
        let mut total = 0.0;
        let mut richest = (up[0], f64::NEG_INFINITY);
        for &i in up {
            let weight = weight(kind, &servers[i]);
            total += weight;
            let credit = self.credit.entry(ids[i].clone()).or_insert(0.0);
            *credit += weight;
            if *credit > richest.1 {
                richest = (i, *credit);
            }
        }
        if let Some(credit) = self.credit.get_mut(&ids[richest.0]) {
            *credit -= total;
        }
        richest.0
    }
}

/// A server drawn at random among `up`, in proportion to the weights.
fn random(kind: Kind, servers: &[Server], up: &[usize]) -> usize {
    let total: f64 = up.iter().map(|&i| weight(kind, &servers[i])).sum();
    let mut draw = (OsRng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
    for &i in up {
        draw -= weight(kind, &servers[i]);
        if draw < 0.0 {
            return i;
        }
    }
    up[up.len() - 1]
}

/// A server's weight for `kind`; anything not positive counts as a tiny weight, never as none.
fn weight(kind: Kind, server: &Server) -> f64 {
    let weight = match kind {
        Kind::Tcp => server.tcp_weight,
        Kind::Udp => server.udp_weight,
    };
    if weight.is_finite() && weight > 0.0 {
        weight
    } else {
        f64::MIN_POSITIVE
    }
}

fn score_ms(health: &HashMap<ServerId, Health>, id: &ServerId) -> Option<u64> {
    health.get(id).and_then(|h| h.score).map(|s| s.round() as u64)
}
