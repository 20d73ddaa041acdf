//! Protocol dispatch: per connection, detect the protocol from its first
//! payload (through the registry), feed its parser, and turn the stream
//! into [`Flow`] for correlation. A connection that speaks nothing sonde
//! parses, or whose parser gives up, is released: a [`Command`] asks the
//! kernel to stop copying its payload.
use foldhash::{HashMap, HashMapExt};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::{
    registry::{self, REGISTRY},
    ParserStats, Protocol, Record, SegTime, Segment, Side,
};
use crate::{
    connections::{ConnInfo, StreamEvent},
    event::{Direction, Role},
    metadata::SharedStore,
};

/// What correlation consumes, in stream order per connection.
#[derive(Debug, Clone)]
pub enum Flow {
    /// A traced connection opened.
    Opened(ConnInfo),
    /// A relay's connection whose endpoints are known (open, or tuple).
    RelayKnown(ConnInfo),
    /// A connection's first payload arrived (its tuple may have been
    /// resolved since its open).
    Detected(ConnInfo),
    Record(ConnInfo, Record),
    /// The connection closed; records its close completed come first.
    Closed(ConnInfo),
    /// A thread of `pid` wrote to a connection in tick `tick` (causality:
    /// the request whose input opened that tick did something).
    Wrote {
        pid: u32,
        tid: u32,
        tick: u32,
    },
    /// A thread (not a goroutine) wrote a call on client connection `conn`
    /// of a protocol whose requests are answered, or read on it (`egress`
    /// false): causality sees threads that multiplex their calls.
    ClientIo {
        pid: u32,
        tid: u32,
        conn: u64,
        egress: bool,
    },
    /// Bytes moved on a followed pipe: a hand-off between the processes of
    /// a service (`correlation/handoff.rs`).
    Pipe(PipeIo),
    /// Trace context the kernel named for one of the connection's
    /// syscalls; it comes before that syscall's own record.
    Context(ConnInfo, crate::event::ContextRecord),
    /// Go: the goroutine that wrote on the connection handed a value to
    /// another, waiting on a channel, in the same run.
    HandOff(ConnInfo, crate::event::HandOffRecord),
}

/// One read or write on a followed pipe.
#[derive(Debug, Clone)]
pub struct PipeIo {
    pub conn: ConnInfo,
    pub inode: u64,
    pub at: SegTime,
    pub egress: bool,
    /// Bytes moved.
    pub bytes: u64,
    /// The first of them, as captured (up to [`PIPE_HEAD`]).
    pub head: Vec<u8>,
}

/// Bytes of each pipe read or write kept to check that a read returns what
/// the matched write put in.
pub const PIPE_HEAD: usize = 64;

/// The one backward edge, to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop copying this connection's payload, and reporting its calls but
    /// for the writes causality may need (`sock_flags::QUIET`).
    Release { conn: u64, pid: u32, fd: i32 },
    /// Copy up to the ceiling on this connection: its protocol is framed.
    CopyWhole { conn: u64, pid: u32, fd: i32 },
    /// Process `pid` sent TLS records sonde cannot read: look for its TLS
    /// library again (it may have loaded it since it was inspected).
    FindTls { pid: u32 },
}

/// What is never traced.
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    /// Processes, by comm or executable name.
    pub processes: Vec<String>,
    /// Kubernetes namespaces (needs pod metadata; a pod not yet known when
    /// its first connection opens is traced until it is).
    pub namespaces: Vec<String>,
}

/// Counters per registered protocol (same order as the registry).
#[derive(Debug, Default)]
pub struct ProtocolCounters {
    pub connections: AtomicU64,
    pub records: AtomicU64,
    pub parse_errors: AtomicU64,
    pub unpaired: AtomicU64,
    /// Connections the parser gave up on (released).
    pub gave_up: AtomicU64,
}

#[derive(Debug)]
pub struct DispatchStats {
    pub protocols: Vec<ProtocolCounters>,
    /// Connections released because no parser recognised them.
    pub unrecognised: AtomicU64,
    /// Parsers dropped because parser memory went over its budget.
    pub over_budget: AtomicU64,
    /// Parser heap bytes held now (approximate).
    pub parser_bytes: AtomicU64,
    /// TLS connections whose plaintext came from the library's calls.
    pub tls_decrypted: AtomicU64,
    /// TLS connections whose records reached user space encrypted: their
    /// process's TLS library is not hooked (Java, Go without symbols,
    /// rustls, GnuTLS, or a library loaded after the connection began).
    pub tls_opaque: AtomicU64,
}

impl Default for DispatchStats {
    fn default() -> Self {
        DispatchStats {
            protocols: REGISTRY
                .iter()
                .map(|_| ProtocolCounters::default())
                .collect(),
            unrecognised: AtomicU64::new(0),
            over_budget: AtomicU64::new(0),
            parser_bytes: AtomicU64::new(0),
            tls_decrypted: AtomicU64::new(0),
            tls_opaque: AtomicU64::new(0),
        }
    }
}

enum State {
    Detecting,
    Parsing {
        proto: usize,
        parser: Box<dyn Protocol>,
        bytes: usize,
    },
    Released,
    /// A followed pipe: never parsed, its moves go to correlation.
    Pipe,
}

/// Default global budget for parser state.
pub const PARSER_BUDGET: usize = 256 << 20;

pub struct Dispatcher {
    conns: HashMap<u64, State>,
    /// Relay processes (docker-proxy): never parsed; correlation pairs
    /// their connections.
    relays: Vec<String>,
    excluded: Exclusions,
    metadata: Option<SharedStore>,
    budget: usize,
    used: usize,
    /// The records one segment makes, on their way to flows: one vector
    /// reused for every segment (one grown per segment was an allocation
    /// per read and write).
    records: Vec<Record>,
    pub stats: std::sync::Arc<DispatchStats>,
}

impl Dispatcher {
    pub fn new(
        relays: Vec<String>,
        excluded: Exclusions,
        metadata: Option<SharedStore>,
        budget: usize,
    ) -> Dispatcher {
        Dispatcher {
            conns: HashMap::new(),
            relays,
            excluded,
            metadata,
            budget,
            used: 0,
            records: Vec::new(),
            stats: Default::default(),
        }
    }

    /// Connections tracked (cleaned on close).
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    pub fn on_event(
        &mut self,
        ev: StreamEvent,
        flows: &mut Vec<Flow>,
        commands: &mut Vec<Command>,
    ) {
        match ev {
            StreamEvent::Open(c) => {
                tracing::debug!(conn = c.id, pid = c.pid, fd = c.fd, role = ?c.role, tuple = ?c.tuple, "open");
                self.drop_state(c.id);
                if c.role == Role::Pipe {
                    if c.process.named(&self.relays) || self.is_excluded(&c) {
                        self.release(&c, commands);
                    } else {
                        self.conns.insert(c.id, State::Pipe);
                    }
                    return;
                }
                self.conns.insert(c.id, State::Detecting);
                // Never parsed: a relay's bytes are its peers', and excluded
                // processes are invisible (not even as a graph peer).
                if c.process.named(&self.relays) {
                    self.release(&c, commands);
                    flows.push(Flow::RelayKnown(c));
                } else if self.is_excluded(&c) {
                    self.release(&c, commands);
                } else {
                    flows.push(Flow::Opened(c));
                }
            }
            StreamEvent::Tuple(c) => {
                if c.process.named(&self.relays) {
                    flows.push(Flow::RelayKnown(c));
                }
            }
            StreamEvent::Context(c, r) => flows.push(Flow::Context(c, r)),
            StreamEvent::HandOff(c, r) => flows.push(Flow::HandOff(c, r)),
            StreamEvent::Data(c, d) => {
                if d.direction == Direction::Egress && d.tick != 0 && d.task == 0 {
                    flows.push(Flow::Wrote {
                        pid: c.pid,
                        tid: d.tid,
                        tick: d.tick,
                    });
                }
                if c.role == Role::Pipe {
                    if matches!(self.conns.get(&c.id), Some(State::Pipe)) {
                        let head = d.payload[..d.payload.len().min(PIPE_HEAD)].to_vec();
                        flows.push(Flow::Pipe(PipeIo {
                            inode: c.pipe.unwrap_or(0),
                            at: SegTime {
                                enter_ns: d.enter_ns,
                                exit_ns: d.exit_ns,
                                tid: if d.task == 0 { d.tid } else { d.task },
                                tick: if d.task == 0 { d.tick } else { 0 },
                                lineage: d.lineage,
                                py_task: d.py_task,
                            },
                            egress: d.direction == Direction::Egress,
                            bytes: d.bytes,
                            head,
                            conn: c,
                        }));
                    }
                    return;
                }
                // A goroutine stands for its thread: Go moves goroutines
                // between threads, so a thread's tick says nothing there.
                let (tid, tick) = match d.task {
                    0 => (d.tid, d.tick),
                    task => (task, 0),
                };
                let seg = Segment {
                    data: &d.payload,
                    total: d.bytes,
                    enter_ns: d.enter_ns,
                    exit_ns: d.exit_ns,
                    tid,
                    tick,
                    lineage: d.lineage,
                    py_task: d.py_task,
                };
                let (pid, conn, client) = (c.pid, c.id, c.role == Role::Client);
                self.on_data(c, d.direction, seg, flows, commands);
                let answered = || match self.conns.get(&conn) {
                    Some(State::Parsing { proto, .. }) => REGISTRY[*proto].answered,
                    _ => false,
                };
                if client && d.task == 0 && !d.payload.is_empty() && answered() {
                    flows.push(Flow::ClientIo {
                        pid,
                        tid: d.tid,
                        conn,
                        egress: d.direction == Direction::Egress,
                    });
                }
            }
            StreamEvent::Close(c, ts) => {
                self.close_parser(&c, ts, flows);
                flows.push(Flow::Closed(c));
            }
        }
        self.stats.parser_bytes.store(self.used as u64, Relaxed);
    }

    fn on_data(
        &mut self,
        c: ConnInfo,
        dir: Direction,
        seg: Segment<'_>,
        flows: &mut Vec<Flow>,
        commands: &mut Vec<Command>,
    ) {
        let side = Side::of(c.role, dir);
        let state = self.conns.entry(c.id).or_insert(State::Detecting);
        if let State::Detecting = state {
            if seg.data.is_empty() {
                return; // nothing to detect on (quiet socket or sendfile)
            }
            // A peek at a TLS record's first bytes, before the handshake
            // (nginx tells HTTPS from HTTP by one byte), or a handshake
            // record read before the library's calls named the socket (a
            // memory BIO's first read: agent-ebpf/src/tls.rs): whether
            // the rest comes as plaintext or as records decides. Records
            // past the handshake are opaque.
            if super::tls_record_prefix(seg.data)
                || (!c.tls && super::tls_handshake_record(seg.data))
            {
                return;
            }
            flows.push(Flow::Detected(c.clone()));
            if c.tls {
                self.stats.tls_decrypted.fetch_add(1, Relaxed);
            }
            // The far end of the agent's own traffic (a local OTLP collector)
            // is never parsed.
            match registry::detect(c.role, dir, seg.data) {
                Some(proto) if !c.peer_is_agent => {
                    self.stats.protocols[proto]
                        .connections
                        .fetch_add(1, Relaxed);
                    *state = State::Parsing {
                        proto,
                        parser: (REGISTRY[proto].new)(),
                        bytes: 0,
                    };
                    if REGISTRY[proto].whole_frames {
                        commands.push(Command::CopyWhole {
                            conn: c.id,
                            pid: c.pid,
                            fd: c.fd,
                        });
                    }
                }
                _ => {
                    tracing::debug!(target: "sonde_unrecognised", conn = c.id, pid = c.pid, fd = c.fd, role = ?c.role, ?dir, head = ?String::from_utf8_lossy(&seg.data[..seg.data.len().min(24)]), "unrecognised");
                    self.stats.unrecognised.fetch_add(1, Relaxed);
                    self.opaque_tls(&c, seg.data, commands);
                    return self.release(&c, commands);
                }
            }
        }
        let State::Parsing {
            proto,
            parser,
            bytes,
        } = state
        else {
            return;
        };
        let proto = *proto;
        tracing::debug!(conn = c.id, protocol = REGISTRY[proto].name, side = ?side, bytes = seg.total, "data");
        let mut records = std::mem::take(&mut self.records);
        let res = parser.feed(side, seg, &mut records);
        let stats = parser.take_stats();
        let now = parser.heap_bytes();
        self.used = self.used + now - *bytes;
        *bytes = now;
        self.account(proto, stats, records.len());
        flows.extend(records.drain(..).map(|r| Flow::Record(c.clone(), r)));
        self.records = records;
        if let Err(why) = res {
            tracing::debug!(conn = c.id, protocol = REGISTRY[proto].name, %why, "parser gave up");
            self.stats.protocols[proto].gave_up.fetch_add(1, Relaxed);
            self.opaque_tls(&c, seg.data, commands);
            self.stop_parsing(&c, seg.exit_ns, flows, commands);
        } else if self.used > self.budget {
            // The connection that grew past the budget loses its parser:
            // bounded memory beats one connection's spans.
            self.stats.over_budget.fetch_add(1, Relaxed);
            self.stop_parsing(&c, seg.exit_ns, flows, commands);
        }
    }

    fn account(&self, proto: usize, s: ParserStats, records: usize) {
        let p = &self.stats.protocols[proto];
        if records > 0 {
            p.records.fetch_add(records as u64, Relaxed);
        }
        if s != ParserStats::default() {
            p.parse_errors.fetch_add(s.parse_errors, Relaxed);
            p.unpaired.fetch_add(s.unpaired, Relaxed);
        }
    }

    fn drop_state(&mut self, conn: u64) {
        if let Some(State::Parsing { bytes, .. }) = self.conns.remove(&conn) {
            self.used -= bytes;
        }
    }

    /// Releases a parsed connection, ending what its parser held open (a
    /// consumer's deliveries) as a close would: nothing downstream waits on
    /// a parser that is gone.
    fn stop_parsing(
        &mut self,
        c: &ConnInfo,
        at_ns: u64,
        flows: &mut Vec<Flow>,
        commands: &mut Vec<Command>,
    ) {
        self.close_parser(c, at_ns, flows);
        self.release(c, commands);
    }

    /// Ends a connection's parser at `at_ns`: what it still held comes out
    /// as records, and its memory is returned to the budget.
    fn close_parser(&mut self, c: &ConnInfo, at_ns: u64, flows: &mut Vec<Flow>) {
        let Some(State::Parsing {
            proto,
            mut parser,
            bytes,
        }) = self.conns.remove(&c.id)
        else {
            return;
        };
        let mut records = vec![];
        let at = SegTime {
            enter_ns: at_ns,
            exit_ns: at_ns,
            ..Default::default()
        };
        parser.close(at, &mut records);
        self.account(proto, parser.take_stats(), records.len());
        self.used -= bytes;
        flows.extend(records.into_iter().map(|r| Flow::Record(c.clone(), r)));
    }

    /// Counts a connection whose bytes are TLS records (ciphertext: the
    /// kernel reports none for a hooked library), and asks for its
    /// process's libraries to be looked at again.
    fn opaque_tls(&self, c: &ConnInfo, data: &[u8], commands: &mut Vec<Command>) {
        if !c.tls && super::tls_record(data) {
            self.stats.tls_opaque.fetch_add(1, Relaxed);
            commands.push(Command::FindTls { pid: c.pid });
        }
    }

    fn release(&mut self, c: &ConnInfo, commands: &mut Vec<Command>) {
        tracing::debug!(conn = c.id, pid = c.pid, fd = c.fd, role = ?c.role, tuple = ?c.tuple, "release");
        self.drop_state(c.id);
        self.conns.insert(c.id, State::Released);
        commands.push(Command::Release {
            conn: c.id,
            pid: c.pid,
            fd: c.fd,
        });
    }

    fn is_excluded(&self, c: &ConnInfo) -> bool {
        let p = &c.process;
        p.named(&self.excluded.processes)
            || (!self.excluded.namespaces.is_empty()
                && self
                    .namespace(c)
                    .is_some_and(|ns| self.excluded.namespaces.contains(&ns)))
    }

    /// The Kubernetes namespace of a connection's pod, if known.
    fn namespace(&self, c: &ConnInfo) -> Option<String> {
        let store = self
            .metadata
            .as_ref()?
            .read()
            .unwrap_or_else(|e| e.into_inner());
        store
            .pod(c.process.container_id.as_deref()?)
            .map(|(pod, _)| pod.namespace.clone())
    }
}
