//! Service-graph metrics (Tempo servicegraph / Jaeger dependencies style):
//! one edge per client call, completed by its stitched server's half.
use foldhash::HashMap;
use std::{collections::VecDeque, sync::Arc};

use crate::{
    connections::ConnInfo,
    metrics::{self, Labels, Registry},
    spans::Resource,
};

/// Bound on halves waiting for their other half.
const MAX_PENDING: usize = 65536;
/// How long a half waits. The two records of one hop are a syscall apart
/// (the server's last write, the client's read of it), so a half older
/// than this lost its partner: a dropped record, or a peer that is not on
/// this node after all.
const WAIT_NS: u64 = 10_000_000_000;

/// The half of a stitched hop that came first.
enum Half {
    /// A server span, by its parent (the client span id).
    Server {
        server: Arc<Resource>,
        secs: f64,
        failed: bool,
    },
    /// A client span whose request a server on this node read, by its own
    /// span id: its edge is recorded with the server's half, or without it
    /// once the wait is over.
    Client {
        client: Arc<Resource>,
        fallback: Peer,
        kind: &'static str,
        secs: f64,
        failed: bool,
    },
}

/// The server side of an edge a client half waits with: a service known
/// on this node (shared, not copied per call), else the peer's address.
enum Peer {
    Service(Arc<Resource>),
    Address(String),
}

impl Peer {
    fn name(&self) -> &str {
        match self {
            Peer::Service(r) => &r.service_name,
            Peer::Address(a) => a,
        }
    }
}

/// Halves of stitched pairs, by the client span id, until the other half
/// completes. The server's record usually enters the ring first, but not
/// always: its last write may exit after the client has read the response.
#[derive(Default)]
pub struct Pending {
    waiting: HashMap<[u8; 8], (Half, u64)>,
    /// Ids in the order their halves came, with when (CLOCK_MONOTONIC ns).
    order: VecDeque<([u8; 8], u64)>,
    /// Server halves dropped unpaired: too old, or too many waiting.
    pub evicted: u64,
}

impl Pending {
    pub fn entries(&self) -> usize {
        self.waiting.len()
    }

    /// A server span with a parent finished at `at_ns`.
    pub fn server_done(
        &mut self,
        reg: &mut Registry,
        parent: [u8; 8],
        server: &Arc<Resource>,
        (secs, failed): (f64, bool),
        at_ns: u64,
    ) {
        self.expire(reg, at_ns);
        if let Some((
            Half::Client {
                client,
                kind,
                secs: client_secs,
                failed: client_failed,
                ..
            },
            _,
        )) = self.waiting.remove(&parent)
        {
            record_edge(
                reg,
                &client,
                &server.service_name,
                paired_kind(kind),
                failed || client_failed,
                client_secs,
                Some(secs),
            );
            return;
        }
        self.wait(
            parent,
            Half::Server {
                server: server.clone(),
                secs,
                failed,
            },
            at_ns,
        );
    }

    /// A client span finished at `at_ns`: one edge to the server process it
    /// was stitched to, else (uninstrumented peer) to the process known to
    /// serve the other end on this node, else to the peer's address.
    /// `server_read`: a server on this node read its request, so that
    /// server's half is awaited if it has not come.
    #[allow(clippy::too_many_arguments)]
    pub fn client_done(
        &mut self,
        reg: &mut Registry,
        c: &ConnInfo,
        span_id: [u8; 8],
        (secs, failed): (f64, bool),
        client: &Arc<Resource>,
        peer: Option<&Arc<Resource>>,
        kind: &'static str,
        (server_read, at_ns): (bool, u64),
    ) {
        self.expire(reg, at_ns);
        if let Some((
            Half::Server {
                server,
                secs: server_secs,
                failed: server_failed,
            },
            _,
        )) = self.waiting.remove(&span_id)
        {
            record_edge(
                reg,
                client,
                &server.service_name,
                paired_kind(kind),
                server_failed || failed,
                secs,
                Some(server_secs),
            );
            return;
        }
        let fallback = match peer {
            Some(r) => Peer::Service(r.clone()),
            None => Peer::Address(
                c.remote()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "unknown".into()),
            ),
        };
        if server_read {
            self.wait(
                span_id,
                Half::Client {
                    client: client.clone(),
                    fallback,
                    kind,
                    secs,
                    failed,
                },
                at_ns,
            );
        } else {
            record_edge(reg, client, fallback.name(), kind, failed, secs, None);
        }
    }

    fn wait(&mut self, id: [u8; 8], half: Half, at_ns: u64) {
        self.waiting.insert(id, (half, at_ns));
        self.order.push_back((id, at_ns));
        // Completed halves leave stale order entries: keep them bounded too.
        if self.order.len() > 2 * MAX_PENDING.max(self.waiting.len()) {
            let live = &self.waiting;
            self.order
                .retain(|(p, t)| live.get(p).is_some_and(|h| h.1 == *t));
        }
    }

    /// Ends the waits longer than `WAIT_NS` at `now_ns`, and the oldest
    /// while over the bound: a server half is dropped (counted), a client
    /// half's edge is recorded without the server's side.
    pub fn expire(&mut self, reg: &mut Registry, now_ns: u64) {
        while let Some(&(id, t)) = self.order.front() {
            if t.saturating_add(WAIT_NS) >= now_ns && self.waiting.len() < MAX_PENDING {
                break;
            }
            self.order.pop_front();
            // Only if it is still that half (not completed, not replaced).
            if self.waiting.get(&id).is_none_or(|h| h.1 != t) {
                continue;
            }
            match self.waiting.remove(&id) {
                Some((Half::Server { .. }, _)) => self.evicted += 1,
                // Its server is on this node (it read the request): the
                // same series as the paired edges, less the server's time.
                Some((
                    Half::Client {
                        client,
                        fallback,
                        kind,
                        secs,
                        failed,
                    },
                    _,
                )) => record_edge(
                    reg,
                    &client,
                    fallback.name(),
                    paired_kind(kind),
                    failed,
                    secs,
                    None,
                ),
                None => {}
            }
        }
    }
}

/// The edge kind of a stitched pair: a plain request between two services
/// has none (Tempo's convention), a database keeps its own.
fn paired_kind(kind: &'static str) -> &'static str {
    if kind == "database" {
        kind
    } else {
        ""
    }
}

/// One request over a service-graph edge, recorded on the client's resource.
pub fn record_edge(
    reg: &mut Registry,
    client: &Arc<Resource>,
    server: &str,
    kind: &str,
    failed: bool,
    client_secs: f64,
    server_secs: Option<f64>,
) {
    let mut labels: Labels = smallvec::smallvec![
        ("client", client.service_name.as_str().into()),
        ("server", server.into()),
    ];
    if !kind.is_empty() {
        labels.push(("connection_type", kind.into()));
    }
    let values = [
        (&metrics::GRAPH_REQUESTS, Some(1.0)),
        (&metrics::GRAPH_FAILED, failed.then_some(1.0)),
        (&metrics::GRAPH_CLIENT_SECONDS, Some(client_secs)),
        (&metrics::GRAPH_SERVER_SECONDS, server_secs),
    ];
    let values = values.into_iter().filter_map(|(i, v)| Some((i, v?)));
    reg.record_all(values, client, labels);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::{Role, SocketTuple},
        metrics::prometheus::render,
    };

    fn resource(name: &str) -> Arc<Resource> {
        Arc::new(Resource {
            service_name: name.into(),
            service_namespace: None,
            attributes: vec![],
        })
    }

    fn edges(reg: &Registry) -> String {
        render(reg, &[])
            .lines()
            .filter(|l| l.starts_with("traces_service_graph_request"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn server_halves_whose_client_never_completes_expire_and_are_counted() {
        let mut reg = Registry::new(0);
        let mut p = Pending::default();
        p.server_done(&mut reg, [1; 8], &resource("a"), (0.1, false), 1_000);
        p.server_done(&mut reg, [2; 8], &resource("b"), (0.1, false), 2_000);
        p.waiting.remove(&[2; 8]); // its client completed
        p.server_done(
            &mut reg,
            [3; 8],
            &resource("c"),
            (0.1, false),
            1_000 + WAIT_NS,
        );
        assert_eq!((p.entries(), p.evicted), (2, 0), "within the wait");
        p.server_done(
            &mut reg,
            [4; 8],
            &resource("d"),
            (0.1, false),
            2_001 + WAIT_NS,
        );
        assert_eq!(
            p.evicted, 1,
            "the first expired; the completed one is not counted"
        );
        assert!(!p.waiting.contains_key(&[1; 8]) && p.waiting.contains_key(&[3; 8]));
    }

    /// The client's record may come first: its edge waits for the server's
    /// half, and is recorded whole once it comes, or without it at the end
    /// of the wait.
    #[test]
    fn client_half_first_waits_for_its_server() {
        let mut reg = Registry::new(0);
        let mut p = Pending::default();
        let (web, api) = (resource("web"), resource("api"));
        let c = ConnInfo {
            id: 7,
            pid: 1,
            fd: 3,
            role: Role::Client,
            tuple: Some(SocketTuple {
                local: "10.0.0.1:5000".parse().unwrap(),
                remote: "10.0.0.2:80".parse().unwrap(),
            }),
            process: Default::default(),
            opened_ns: 1,
            preexisting: false,
            peer_is_agent: false,
            opened_by: (0, 0),
            tls: false,
            pipe: None,
        };
        p.client_done(
            &mut reg,
            &c,
            [1; 8],
            (0.2, false),
            &web,
            Some(&api),
            "virtual_node",
            (true, 1_000),
        );
        p.client_done(
            &mut reg,
            &c,
            [2; 8],
            (0.2, false),
            &web,
            Some(&api),
            "virtual_node",
            (true, 1_000),
        );
        assert_eq!(edges(&reg), "", "both wait");
        p.server_done(&mut reg, [1; 8], &resource("api"), (0.1, true), 2_000);
        let text = edges(&reg);
        assert!(text.contains("traces_service_graph_request_total{service_name=\"web\",client=\"web\",server=\"api\"} 1"), "{text}");
        assert!(text.contains("traces_service_graph_request_failed_total{service_name=\"web\",client=\"web\",server=\"api\"} 1"), "{text}");
        assert!(text.contains("traces_service_graph_request_server_seconds_count{service_name=\"web\",client=\"web\",server=\"api\"} 1"), "{text}");
        // The second's server half never comes: recorded without it.
        p.expire(&mut reg, 1_001 + WAIT_NS);
        let text = edges(&reg);
        assert!(text.contains("traces_service_graph_request_total{service_name=\"web\",client=\"web\",server=\"api\"} 2"), "{text}");
        assert!(text.contains("traces_service_graph_request_server_seconds_count{service_name=\"web\",client=\"web\",server=\"api\"} 1"), "{text}");
        assert_eq!((p.entries(), p.evicted), (0, 0));
        // A client whose request no server here read is recorded at once.
        p.client_done(
            &mut reg,
            &c,
            [3; 8],
            (0.2, false),
            &web,
            None,
            "virtual_node",
            (false, 2_000 + WAIT_NS),
        );
        assert!(edges(&reg).contains("traces_service_graph_request_total{service_name=\"web\",client=\"web\",connection_type=\"virtual_node\",server=\"10.0.0.2:80\"} 1"), "{}", edges(&reg));
    }
}
