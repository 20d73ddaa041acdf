//! RED metrics, aggregated once and rendered twice: as Prometheus text for
//! `/metrics` and as OTLP for the metrics exporter.
//!
//! OTel SDKs tie a meter provider to one resource; sonde reports for every
//! process on the node, each with its own resource, so it aggregates here.
pub mod prometheus;

use std::{
    borrow::Cow,
    hash::{BuildHasher, Hash, Hasher},
    sync::{Arc, Mutex},
};

use hashbrown::hash_map::EntryRef;
use smallvec::SmallVec;

use crate::spans::{Resource, Value};

/// Semconv default buckets for HTTP durations, in seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Semconv buckets for database call durations, in seconds.
pub const DB_DURATION_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];
/// Buckets for body sizes, in bytes.
pub const SIZE_BUCKETS: &[f64] = &[
    0.0,
    100.0,
    1000.0,
    10_000.0,
    100_000.0,
    1_000_000.0,
    10_000_000.0,
    100_000_000.0,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstrumentKind {
    Histogram,
    /// Monotonic sum; each record adds its value.
    Counter,
}

/// A histogram or counter instrument.
#[derive(Debug)]
pub struct Instrument {
    pub kind: InstrumentKind,
    /// OTel name, e.g. `http.server.request.duration`.
    pub name: &'static str,
    /// Prometheus base name, e.g. `http_server_request_duration_seconds`.
    pub prom_name: &'static str,
    pub unit: &'static str,
    pub description: &'static str,
    pub buckets: &'static [f64],
}

pub const HTTP_SERVER_DURATION: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "http.server.request.duration",
    prom_name: "http_server_request_duration_seconds",
    unit: "s",
    description: "Duration of HTTP server requests.",
    buckets: DURATION_BUCKETS,
};
pub const HTTP_CLIENT_DURATION: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "http.client.request.duration",
    prom_name: "http_client_request_duration_seconds",
    unit: "s",
    description: "Duration of HTTP client requests.",
    buckets: DURATION_BUCKETS,
};
/// Milliseconds, as the RPC semantic conventions define these two.
pub const RPC_DURATION_BUCKETS: &[f64] = &[
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];
pub const RPC_SERVER_DURATION: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "rpc.server.duration",
    prom_name: "rpc_server_duration_milliseconds",
    unit: "ms",
    description: "Duration of RPCs served (gRPC).",
    buckets: RPC_DURATION_BUCKETS,
};
pub const RPC_CLIENT_DURATION: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "rpc.client.duration",
    prom_name: "rpc_client_duration_milliseconds",
    unit: "ms",
    description: "Duration of RPCs made (gRPC).",
    buckets: RPC_DURATION_BUCKETS,
};
pub const DB_CLIENT_DURATION: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "db.client.operation.duration",
    prom_name: "db_client_operation_duration_seconds",
    unit: "s",
    description: "Duration of database client operations.",
    buckets: DB_DURATION_BUCKETS,
};
pub const MESSAGING_CLIENT_DURATION: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "messaging.client.operation.duration",
    prom_name: "messaging_client_operation_duration_seconds",
    unit: "s",
    description: "Duration of messaging operations (publish, get).",
    buckets: DB_DURATION_BUCKETS,
};
pub const MESSAGING_PROCESS_DURATION: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "messaging.process.duration",
    prom_name: "messaging_process_duration_seconds",
    unit: "s",
    description: "Duration of processing a delivered message, delivery to acknowledgement.",
    buckets: DB_DURATION_BUCKETS,
};
/// Where the time goes: a request's duration minus the time its calls
/// covered (`telemetry/self_time.rs`). Downstream time is the RED duration
/// minus this.
pub const REQUEST_SELF_DURATION: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "sonde.request.self.duration",
    prom_name: "sonde_request_self_duration_seconds",
    unit: "s",
    description: "Time of a served HTTP request or processed message not covered by the \
        calls it made (its duration minus the union of its calls' intervals).",
    buckets: DURATION_BUCKETS,
};
pub const MESSAGING_SENT: Instrument = Instrument {
    kind: InstrumentKind::Counter,
    name: "messaging.client.sent.messages",
    prom_name: "messaging_client_sent_messages_total",
    unit: "{message}",
    description: "Messages published.",
    buckets: &[],
};
pub const MESSAGING_CONSUMED: Instrument = Instrument {
    kind: InstrumentKind::Counter,
    name: "messaging.client.consumed.messages",
    prom_name: "messaging_client_consumed_messages_total",
    unit: "{message}",
    description: "Messages delivered to consumers or fetched.",
    buckets: &[],
};
/// Service graph (Tempo servicegraph / Jaeger dependencies style) buckets.
pub const GRAPH_BUCKETS: &[f64] = &[0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8];
pub const GRAPH_REQUESTS: Instrument = Instrument {
    kind: InstrumentKind::Counter,
    name: "traces_service_graph_request_total",
    prom_name: "traces_service_graph_request_total",
    unit: "{request}",
    description: "Requests between two services (an edge of the service graph).",
    buckets: &[],
};
pub const GRAPH_FAILED: Instrument = Instrument {
    kind: InstrumentKind::Counter,
    name: "traces_service_graph_request_failed_total",
    prom_name: "traces_service_graph_request_failed_total",
    unit: "{request}",
    description: "Failed requests between two services.",
    buckets: &[],
};
pub const GRAPH_CLIENT_SECONDS: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "traces_service_graph_request_client_seconds",
    prom_name: "traces_service_graph_request_client_seconds",
    unit: "s",
    description: "Edge request duration seen by the client.",
    buckets: GRAPH_BUCKETS,
};
pub const GRAPH_SERVER_SECONDS: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "traces_service_graph_request_server_seconds",
    prom_name: "traces_service_graph_request_server_seconds",
    unit: "s",
    description: "Edge request duration seen by the server.",
    buckets: GRAPH_BUCKETS,
};
pub const HTTP_SERVER_REQUEST_SIZE: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "http.server.request.body.size",
    prom_name: "http_server_request_body_size_bytes",
    unit: "By",
    description: "Size of HTTP server request bodies.",
    buckets: SIZE_BUCKETS,
};
pub const HTTP_SERVER_RESPONSE_SIZE: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "http.server.response.body.size",
    prom_name: "http_server_response_body_size_bytes",
    unit: "By",
    description: "Size of HTTP server response bodies.",
    buckets: SIZE_BUCKETS,
};
pub const HTTP_CLIENT_REQUEST_SIZE: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "http.client.request.body.size",
    prom_name: "http_client_request_body_size_bytes",
    unit: "By",
    description: "Size of HTTP client request bodies.",
    buckets: SIZE_BUCKETS,
};
pub const HTTP_CLIENT_RESPONSE_SIZE: Instrument = Instrument {
    kind: InstrumentKind::Histogram,
    name: "http.client.response.body.size",
    prom_name: "http_client_response_body_size_bytes",
    unit: "By",
    description: "Size of HTTP client response bodies.",
    buckets: SIZE_BUCKETS,
};

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative); one more than the bounds (+Inf).
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    fn record(&mut self, bounds: &[f64], v: f64) {
        if bounds.is_empty() {
            // A counter: only sum and count.
            self.sum += v;
            self.count += 1;
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len() + 1];
        }
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// One attribute of a record: borrowed from the record or static where it
/// can be (methods, versions, routes), so that a record of a series that
/// exists allocates nothing.
pub type Label<'a> = (&'static str, Cow<'a, str>);

/// A record's attributes, on the stack.
pub type Labels<'a> = SmallVec<[Label<'a>; 8]>;

/// A series' attributes as stored, sorted by key.
pub type StoredLabels = Vec<(&'static str, String)>;

/// The series of one attribute set: a resource instance and its labels.
/// A record of several instruments (a request's duration and sizes) finds
/// its set once. Hashes as `set`, the hash of (instance, labels), which a
/// record computes from borrowed parts ([`SetRef`]).
#[derive(Debug)]
struct SetKey {
    instance: Box<str>,
    labels: StoredLabels,
    set: u64,
}

/// A set's key as a record holds it: nothing owned.
struct SetRef<'a> {
    instance: &'a str,
    labels: &'a [Label<'a>],
    set: u64,
}

impl Hash for SetKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.set.hash(h);
    }
}

impl Hash for SetRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.set.hash(h);
    }
}

impl PartialEq for SetKey {
    fn eq(&self, o: &SetKey) -> bool {
        self.set == o.set && self.instance == o.instance && self.labels == o.labels
    }
}
impl Eq for SetKey {}

impl From<&SetRef<'_>> for SetKey {
    fn from(r: &SetRef<'_>) -> SetKey {
        SetKey {
            instance: r.instance.into(),
            labels: r.labels.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            set: r.set,
        }
    }
}

impl hashbrown::Equivalent<SetKey> for SetRef<'_> {
    fn equivalent(&self, k: &SetKey) -> bool {
        self.set == k.set
            && self.instance == &*k.instance
            && self.labels.len() == k.labels.len()
            && self
                .labels
                .iter()
                .zip(&k.labels)
                .all(|((a, x), (b, y))| a == b && x == y)
    }
}

#[derive(Debug)]
struct Series {
    instrument: &'static Instrument,
    hist: Histogram,
    /// Last record, for expiry.
    updated: std::time::Instant,
}

#[derive(Debug)]
struct SeriesSet {
    resource: Arc<Resource>,
    /// One per instrument recorded with these attributes.
    series: SmallVec<[Series; 4]>,
}

/// All series, cumulative since `start_unix_ns`.
#[derive(Debug)]
pub struct Registry {
    /// Unordered: a record is a hash lookup; [`Registry::each`] sorts.
    sets: hashbrown::HashMap<SetKey, SeriesSet, foldhash::fast::RandomState>,
    /// Series in all sets.
    series: usize,
    pub start_unix_ns: u64,
    /// Series beyond this are refused (and counted), bounding memory.
    max_series: usize,
    pub refused_series: u64,
    /// Series removed after their TTL without a record (pod churn must not
    /// fill `max_series`).
    pub expired_series: u64,
}

/// Default: a series not recorded for this long is removed.
pub const SERIES_TTL: std::time::Duration = std::time::Duration::from_secs(600);

pub type SharedRegistry = Arc<Mutex<Registry>>;

/// The resource instance a series belongs to: `service.instance.id`, else
/// the service name. Borrowed: this runs for every record.
fn instance_of(r: &Resource) -> &str {
    r.attributes
        .iter()
        .find(|(k, _)| k == "service.instance.id")
        .and_then(|(_, v)| match v {
            Value::Str(s) => Some(s.as_ref()),
            _ => None,
        })
        .unwrap_or(&r.service_name)
}

impl Registry {
    pub fn new(start_unix_ns: u64) -> Registry {
        Registry {
            sets: hashbrown::HashMap::default(),
            series: 0,
            start_unix_ns,
            max_series: 50_000,
            refused_series: 0,
            expired_series: 0,
        }
    }

    pub fn shared(start_unix_ns: u64) -> SharedRegistry {
        Arc::new(Mutex::new(Registry::new(start_unix_ns)))
    }

    pub fn record(
        &mut self,
        inst: &'static Instrument,
        resource: &Arc<Resource>,
        labels: Labels<'_>,
        v: f64,
    ) {
        self.record_all([(inst, v)], resource, labels)
    }

    /// Records one value per instrument, all with the same attributes (a
    /// request's duration and sizes): the labels are sorted and their set
    /// found once, and only a set seen for the first time copies them.
    pub fn record_all(
        &mut self,
        values: impl IntoIterator<Item = (&'static Instrument, f64)>,
        resource: &Arc<Resource>,
        mut labels: Labels<'_>,
    ) {
        labels.sort_unstable();
        let instance = instance_of(resource);
        let set = {
            let mut h = self.sets.hasher().build_hasher();
            instance.hash(&mut h);
            for (k, v) in &labels {
                k.hash(&mut h);
                v.as_ref().hash(&mut h);
            }
            h.finish()
        };
        let key = SetRef {
            instance,
            labels: &labels,
            set,
        };
        let full = self.series >= self.max_series;
        let values = values.into_iter();
        let set = match self.sets.entry_ref(&key) {
            EntryRef::Occupied(o) => o.into_mut(),
            EntryRef::Vacant(_) if full => {
                self.refused_series += values.count() as u64;
                return;
            }
            EntryRef::Vacant(e) => e.insert_with_key(
                SetKey::from(&key),
                SeriesSet {
                    resource: resource.clone(),
                    series: SmallVec::new(),
                },
            ),
        };
        let now = std::time::Instant::now();
        for (inst, v) in values {
            let series = match set
                .series
                .iter()
                .position(|s| s.instrument.name == inst.name)
            {
                Some(i) => &mut set.series[i],
                None if self.series >= self.max_series => {
                    self.refused_series += 1;
                    continue;
                }
                None => {
                    self.series += 1;
                    set.series.push(Series {
                        instrument: inst,
                        hist: Histogram::default(),
                        updated: now,
                    });
                    set.series.last_mut().expect("pushed")
                }
            };
            series.hist.record(inst.buckets, v);
            series.updated = now;
        }
    }

    /// Removes the series not recorded within `ttl` of `now`. A series that
    /// comes back starts again from zero (a counter reset to consumers).
    pub fn expire(&mut self, now: std::time::Instant, ttl: std::time::Duration) {
        let before = self.series;
        let mut left = 0;
        self.sets.retain(|_, set| {
            set.series
                .retain(|s| now.saturating_duration_since(s.updated) < ttl);
            left += set.series.len();
            !set.series.is_empty()
        });
        self.series = left;
        self.expired_series += (before - left) as u64;
    }

    pub fn len(&self) -> usize {
        self.series
    }

    pub fn is_empty(&self) -> bool {
        self.series == 0
    }

    /// Every series as (instrument, resource, labels, histogram), ordered
    /// by instrument, instance and labels (so exports are stable from one
    /// to the next).
    pub fn each(
        &self,
    ) -> impl Iterator<
        Item = (
            &'static Instrument,
            &Arc<Resource>,
            &StoredLabels,
            &Histogram,
        ),
    > {
        let mut all: Vec<(&SetKey, &SeriesSet, &Series)> = self
            .sets
            .iter()
            .flat_map(|(k, set)| set.series.iter().map(move |s| (k, set, s)))
            .collect();
        all.sort_unstable_by(|a, b| {
            (a.2.instrument.name, &a.0.instance, &a.0.labels, a.0.set).cmp(&(
                b.2.instrument.name,
                &b.0.instance,
                &b.0.labels,
                b.0.set,
            ))
        });
        all.into_iter()
            .map(|(k, set, s)| (s.instrument, &set.resource, &k.labels, &s.hist))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(name: &str) -> Arc<Resource> {
        Arc::new(Resource {
            service_name: name.into(),
            service_namespace: None,
            attributes: vec![],
        })
    }

    #[test]
    fn series_expire_after_their_ttl_and_free_room_under_the_limit() {
        let mut r = Registry::new(0);
        r.max_series = 2;
        r.record(
            &HTTP_SERVER_DURATION,
            &resource("old-pod"),
            Labels::new(),
            0.1,
        );
        r.record(&HTTP_SERVER_DURATION, &resource("live"), Labels::new(), 0.1);
        r.record(
            &HTTP_SERVER_DURATION,
            &resource("new-pod"),
            Labels::new(),
            0.1,
        );
        assert_eq!(
            (r.len(), r.refused_series),
            (2, 1),
            "full: the new pod's series is refused"
        );
        use std::time::Duration;
        let later = std::time::Instant::now() + Duration::from_secs(30);
        r.expire(later, Duration::from_secs(60));
        assert_eq!(
            (r.len(), r.expired_series),
            (2, 0),
            "within the TTL nothing expires"
        );
        r.expire(later + Duration::from_secs(60), Duration::from_secs(60));
        assert_eq!((r.len(), r.expired_series), (0, 2));
        r.record(
            &HTTP_SERVER_DURATION,
            &resource("new-pod"),
            Labels::new(),
            0.1,
        );
        assert_eq!(r.len(), 1, "room again");
    }
}
