//! Service-graph metrics (Tempo servicegraph / Jaeger dependencies style):
//! one edge per client call, completed by its stitched server's half.
use std::{collections::HashMap, sync::Arc};

use crate::{
    connections::ConnInfo,
    metrics::{self, Labels, Registry},
    spans::Resource,
};

/// Bound on server halves waiting for their client half.
const MAX_PENDING: usize = 65536;

/// Server halves of stitched pairs, by their parent (the client span id),
/// until the client half completes: (server service, seconds, failed).
#[derive(Default)]
pub struct Pending {
    by_parent: HashMap<[u8; 8], (String, f64, bool)>,
    /// Halves dropped because too many waited (their clients are off-node).
    pub evicted: u64,
}

impl Pending {
    pub fn entries(&self) -> usize {
        self.by_parent.len()
    }

    /// A server span with a parent finished.
    pub fn pend(&mut self, parent: [u8; 8], service: String, secs: f64, failed: bool) {
        if self.by_parent.len() >= MAX_PENDING && !self.by_parent.contains_key(&parent) {
            self.evicted += self.by_parent.len() as u64;
            self.by_parent.clear();
        }
        self.by_parent.insert(parent, (service, secs, failed));
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
            Some((svc, secs, failed)) => (svc, Some(secs), failed, if kind == "database" { kind } else { "" }),
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
