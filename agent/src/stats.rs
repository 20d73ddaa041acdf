//! Health counters of the user-space stages. Every drop is counted at the
//! place it happens; the kernel's own counters live in `probes::KernelStats`.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct Stats {
    /// Records read from the ring buffer.
    pub ringbuf_records: AtomicU64,
    /// Records that failed to decode (never expected; a bug if non-zero).
    pub decode_errors: AtomicU64,
    /// Events dropped because the reader -> connection table channel was full.
    pub reader_channel_drops: AtomicU64,
    /// Events dropped because the connection table -> consumer channel was full.
    pub stream_channel_drops: AtomicU64,
    /// Data on sockets the table could not place (fd gone before lookup).
    pub unresolved_sockets: AtomicU64,
    /// Sockets looked up in /proc because the kernel's record lacked their
    /// tuple or proof of TCP (an accept without a sockaddr where BTF is
    /// missing, data before its open record).
    pub proc_lookups: AtomicU64,
    /// Connections found by the startup /proc scan.
    pub preexisting_connections: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connections_closed: AtomicU64,
    /// Connections found closed by the sweep (their close record was lost).
    pub swept_closes: AtomicU64,
    /// Pipe ends followed (`connections/pipes.rs`), and pipe fds or
    /// processes forgotten at that index's bounds.
    pub pipes_followed: AtomicU64,
    pub pipes_forgotten: AtomicU64,
    /// Connections and listeners in the table now (a gauge).
    pub table_entries: AtomicU64,
    /// Go binaries given the goroutine probes (`probes/goruntime.rs`).
    pub go_attached: AtomicU64,
    /// Go binaries left without them: unsupported build (version,
    /// architecture), stripped runtime symbols, or a kernel refusal.
    pub go_unsupported: AtomicU64,
    pub go_stripped: AtomicU64,
    pub go_failed: AtomicU64,
    /// Python processes whose threads' contexts are followed
    /// (`probes/python.rs`), and those left to the thread rules (a CPython
    /// release without a known layout, or a walk that did not check out).
    pub python_followed: AtomicU64,
    pub python_unsupported: AtomicU64,
    /// libuv executables (Node.js) whose loop phases start ticks
    /// (`probes/libuv.rs`), and those the kernel refused them.
    pub libuv_attached: AtomicU64,
    pub libuv_failed: AtomicU64,
    /// TLS library files (`probes/tls.rs`): given the plaintext probes,
    /// without the OpenSSL symbols, or refused by the kernel.
    pub tls_attached: AtomicU64,
    pub tls_no_symbols: AtomicU64,
    pub tls_failed: AtomicU64,
    /// New processes not inspected for a Go runtime or a TLS library (the
    /// queue was full).
    pub process_notices_dropped: AtomicU64,
    /// Processes gone or exiting when first looked up in /proc (their
    /// records were read after their exit began): named from the kernel's copy at their
    /// exec (executable, command line, OTel variables), or, without one (a
    /// process older than the agent, or a dropped record), by the kernel's
    /// command name alone.
    pub processes_gone_named_at_exec: AtomicU64,
    pub processes_gone: AtomicU64,
    /// Exec records not held: too many exec'd processes not yet looked up.
    pub exec_records_dropped: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct StatsSnapshot {
    pub ringbuf_records: u64,
    pub decode_errors: u64,
    pub reader_channel_drops: u64,
    pub stream_channel_drops: u64,
    pub unresolved_sockets: u64,
    pub proc_lookups: u64,
    pub preexisting_connections: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub table_entries: u64,
    pub swept_closes: u64,
    pub pipes_followed: u64,
    pub pipes_forgotten: u64,
    pub go_attached: u64,
    pub go_unsupported: u64,
    pub go_stripped: u64,
    pub go_failed: u64,
    pub python_followed: u64,
    pub python_unsupported: u64,
    pub libuv_attached: u64,
    pub libuv_failed: u64,
    pub tls_attached: u64,
    pub tls_no_symbols: u64,
    pub tls_failed: u64,
    pub process_notices_dropped: u64,
    pub processes_gone_named_at_exec: u64,
    pub processes_gone: u64,
    pub exec_records_dropped: u64,
}

impl Stats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            ringbuf_records: self.ringbuf_records.load(Relaxed),
            decode_errors: self.decode_errors.load(Relaxed),
            reader_channel_drops: self.reader_channel_drops.load(Relaxed),
            stream_channel_drops: self.stream_channel_drops.load(Relaxed),
            unresolved_sockets: self.unresolved_sockets.load(Relaxed),
            proc_lookups: self.proc_lookups.load(Relaxed),
            preexisting_connections: self.preexisting_connections.load(Relaxed),
            connections_opened: self.connections_opened.load(Relaxed),
            connections_closed: self.connections_closed.load(Relaxed),
            table_entries: self.table_entries.load(Relaxed),
            swept_closes: self.swept_closes.load(Relaxed),
            pipes_followed: self.pipes_followed.load(Relaxed),
            pipes_forgotten: self.pipes_forgotten.load(Relaxed),
            go_attached: self.go_attached.load(Relaxed),
            go_unsupported: self.go_unsupported.load(Relaxed),
            go_stripped: self.go_stripped.load(Relaxed),
            go_failed: self.go_failed.load(Relaxed),
            python_followed: self.python_followed.load(Relaxed),
            python_unsupported: self.python_unsupported.load(Relaxed),
            libuv_attached: self.libuv_attached.load(Relaxed),
            libuv_failed: self.libuv_failed.load(Relaxed),
            tls_attached: self.tls_attached.load(Relaxed),
            tls_no_symbols: self.tls_no_symbols.load(Relaxed),
            tls_failed: self.tls_failed.load(Relaxed),
            process_notices_dropped: self.process_notices_dropped.load(Relaxed),
            processes_gone_named_at_exec: self.processes_gone_named_at_exec.load(Relaxed),
            processes_gone: self.processes_gone.load(Relaxed),
            exec_records_dropped: self.exec_records_dropped.load(Relaxed),
        }
    }
}
