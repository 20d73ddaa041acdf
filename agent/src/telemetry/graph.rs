//! Service-graph metrics (Tempo servicegraph / Jaeger dependencies style):
//! one edge per client call, completed by its stitched server's half.
use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use crate::{
    connections::ConnInfo,
    metrics::{self, Labels, Registry},
    spans::Resource,
};

/// Bound on server halves waiting for their client half.
const MAX_PENDING: usize = 65536;
/// How long a server half waits: its client's response is read right after
/// the server wrote it, so a half older than this lost its client half
/// (a dropped record, or a client that is not on this node after all).
const WAIT_NS: u64 = 10_000_000_000;

/// Server halves of stitched pairs, by their parent (the client span id),
/// until the client half completes: (server service, seconds, failed, when).
#[derive(Default)]
pub struct Pending {
    by_parent: HashMap<[u8; 8], (String, f64, bool, u64)>,
    /// Parents in the order their halves came, with when (CLOCK_MONOTONIC ns).
    order: VecDeque<([u8; 8], u64)>,
    /// Halves dropped unpaired: too old, or too many waiting.
    pub evicted: u64,
}

impl Pending {
    pub fn entries(&self) -> usize {
        self.by_parent.len()
    }

    /// A server span with a parent finished at `at_ns`.
    pub fn pend(&mut self, parent: [u8; 8], service: String, secs: f64, failed: bool, at_ns: u64) {
        self.expire(at_ns);
        self.by_parent.insert(parent, (service, secs, failed, at_ns));
        self.order.push_back((parent, at_ns));
        // Completed halves leave stale order entries: keep them bounded too.
        if self.order.len() > 2 * MAX_PENDING.max(self.by_parent.len()) {
            let live = &self.by_parent;
            self.order.retain(|(p, t)| live.get(p).is_some_and(|h| h.3 == *t));
        }
    }

    /// Drops the halves that waited longer than `WAIT_NS` at `now_ns`, and
    /// the oldest while over the bound.
    pub fn expire(&mut self, now_ns: u64) {
        while let Some(&(p, t)) = self.order.front() {
            if t.saturating_add(WAIT_NS) >= now_ns && self.by_parent.len() < MAX_PENDING {
                break;
            }
            self.order.pop_front();
            // Only if it is still that half (not completed, not replaced).
            if self.by_parent.get(&p).is_some_and(|h| h.3 == t) {
                self.by_parent.remove(&p);
                self.evicted += 1;
            }
        }
    }

    /// A client span finished: one edge to the server process it was
    /// stitched to, else (uninstrumented peer) to the process known to serve
    /// the other end on this node, else to the peer's address.
    #[allow(clippy::too_many_arguments)]
    pub fn client_done(
        &mut self,
        reg: &mut Registry,
        c: &ConnInfo,
        span_id: [u8; 8],
        (secs, failed): (f64, bool),
        client: &Arc<Resource>,
        peer: Option<&Resource>,
        kind: &str,
    ) {
        let (server, server_secs, server_failed, kind) = match self.by_parent.remove(&span_id) {
            Some((svc, secs, failed, _)) => (svc, Some(secs), failed, if kind == "database" { kind } else { "" }),
            None => {
                let peer = peer.map(|r| r.service_name.clone());
                let server = peer.or_else(|| c.remote().map(|p| p.to_string())).unwrap_or_else(|| "unknown".into());
                (server, None, false, kind)
            }
        };
        record_edge(reg, client, server, kind, server_failed || failed, secs, server_secs);
    }
}

/// One request over a service-graph edge, recorded on the client's resource.
pub fn record_edge(reg: &mut Registry, client: &Arc<Resource>, server: String, kind: &str, failed: bool, client_secs: f64, server_secs: Option<f64>) {
    let mut labels: Labels = vec![("client", client.service_name.clone()), ("server", server)];
    if !kind.is_empty() {
        labels.push(("connection_type", kind.to_string()));
    }
    reg.record(&metrics::GRAPH_REQUESTS, client, labels.clone(), 1.0);
    if failed {
        reg.record(&metrics::GRAPH_FAILED, client, labels.clone(), 1.0);
    }
    reg.record(&metrics::GRAPH_CLIENT_SECONDS, client, labels.clone(), client_secs);
    if let Some(s) = server_secs {
        reg.record(&metrics::GRAPH_SERVER_SECONDS, client, labels, s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_whose_client_never_completes_expire_and_are_counted() {
        let mut p = Pending::default();
        p.pend([1; 8], "a".into(), 0.1, false, 1_000);
        p.pend([2; 8], "b".into(), 0.1, false, 2_000);
        p.by_parent.remove(&[2; 8]); // its client completed
        p.pend([3; 8], "c".into(), 0.1, false, 1_000 + WAIT_NS);
        assert_eq!((p.entries(), p.evicted), (2, 0), "within the wait");
        p.pend([4; 8], "d".into(), 0.1, false, 2_001 + WAIT_NS);
        assert_eq!(p.evicted, 1, "the first expired; the completed one is not counted");
        assert!(!p.by_parent.contains_key(&[1; 8]) && p.by_parent.contains_key(&[3; 8]));
    }
}
