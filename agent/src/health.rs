//! The agent's own health series (`sonde_*`), read at each scrape. Every
//! drop and eviction of every stage is one `sonde_dropped_total{stage}`
//! series, so that generated = exported + counted drops can be checked.
use std::sync::{atomic::Ordering::Relaxed, Arc};

use crate::{
    export::batch::ExportStats,
    metrics::{prometheus::HealthMetric, SharedRegistry},
    pipeline::PipelineStats,
    probes::KernelStats,
    protocols::registry::REGISTRY,
    stats::Stats,
};

const DROPS: &str = "Events and entries dropped or evicted, by the stage that dropped them.";

pub fn health_fn(
    stats: Arc<Stats>,
    kernel: Arc<KernelStats>,
    pipeline: Arc<PipelineStats>,
    export: Arc<ExportStats>,
    registry: SharedRegistry,
) -> Arc<dyn Fn() -> Vec<HealthMetric> + Send + Sync> {
    Arc::new(move || {
        let k = kernel.read();
        let u = stats.snapshot();
        let d = pipeline.drops();
        let counts = pipeline.counts();
        let t = pipeline.telemetry();
        let (graph_evicted, resources_evicted, self_time_evicted) = pipeline.telemetry_drops();
        let disp = &pipeline.dispatch;
        let (refused_series, expired_series) = registry
            .lock()
            .map(|r| (r.refused_series, r.expired_series))
            .unwrap_or_else(|e| (e.get_ref().refused_series, e.get_ref().expired_series));
        let metric = |name, help, kind, labels: Vec<(&'static str, &str)>, v: u64| HealthMetric {
            name,
            help,
            kind,
            labels: labels
                .into_iter()
                .map(|(a, b)| (a, b.to_string()))
                .collect(),
            value: v as f64,
        };
        let c = |name, help, labels, v| metric(name, help, "counter", labels, v);
        const PY_PROCS: &str = "CPython processes, by whether the context each thread runs in (its asyncio task) is followed.";
        const LIBUV_BINS: &str = "libuv executables of traced processes (Node.js), by whether the probes on their loop's check and timer phases are attached.";
        const TLS_LIBS: &str =
            "TLS library files of traced processes, by whether the plaintext probes are attached.";
        const PROCS_GONE: &str = "Processes that had exited or were exiting when first looked up in /proc (their records were read after their exit began), by what named them: the kernel's copy of their exec (executable, command line, OTEL_SERVICE_NAME), or only their command name (a process older than the agent, or a dropped exec record).";
        const TLS_CONNS: &str = "TLS connections seen: decrypted through the library's calls, or left opaque, by reason.";
        let drop = |stage: &'static str, v: u64| {
            c("sonde_dropped_total", DROPS, vec![("stage", stage)], v)
        };
        let probes = kernel.programs.runtime();
        let mut m = vec![
            c("sonde_kernel_events_total", "Records the kernel wrote to the ring buffer.", vec![], k.events),
            c("sonde_events_read_total", "Records user space read from the ring buffer.", vec![], u.ringbuf_records),
            drop("ringbuf", k.ringbuf_drops),
            drop("kernel_orphan_exit", k.orphan_exits),
            drop("kernel_map_full", k.map_full),
            drop("reader_channel", u.reader_channel_drops),
            drop("stream_channel", u.stream_channel_drops),
            drop("parser_memory", disp.over_budget.load(Relaxed)),
            drop("in_flight", d.in_flight),
            drop("stitch_queue", d.stitch_queue),
            drop("stitch_full", d.stitch_full),
            drop("late_partner", d.late_partners_missed),
            drop("nat_cache", d.nat_cache),
            drop("node_ips", d.node_ips),
            drop("server_index", d.server_index),
            drop("held_early", d.held_early),
            drop("deliveries", d.deliveries),
            drop("continuity_index", d.continuity),
            drop("tick_marks", d.tick_marks),
            drop("handoffs", d.handoffs),
            drop("kernel_contexts", d.kernel_contexts),
            drop("graph_pending", graph_evicted),
            drop("resource_cache", resources_evicted),
            drop("self_time_pending", self_time_evicted),
            drop("kernel_commands", pipeline.commands_dropped.load(Relaxed)),
            drop("export_queue", export.spans_dropped_queue.load(Relaxed)),
            drop("export_failed", export.spans_dropped_failed.load(Relaxed)),
            drop("metric_series_limit", refused_series),
            c("sonde_metric_series_expired_total", "Metric series removed after their TTL without updates.", vec![], expired_series),
            c("sonde_kernel_read_faults_total", "Faults copying user memory in the kernel.", vec![], k.read_faults),
            c("sonde_kernel_map_full_total", "Kernel map inserts refused.", vec![], k.map_full),
            c("sonde_kernel_goroutine_writes_evicted_total", "Goroutines' kept client writes (followed past their run to their reply) overwritten in the kernel's table by another goroutine's, both ways of its set being held (also how the writes of goroutines that are gone are reclaimed): if one still waited for its reply, its call is placed by other evidence or stays a root.", vec![], k.go_writes_evicted),
            c("sonde_kernel_goroutine_handoffs_lost_total", "Goroutine hand-offs (a channel send to a waiting goroutine) overwritten in the kernel's table by another's before their receiver ran: that receiver's calls are placed by other evidence or stay roots.", vec![], k.go_handoffs_lost),
            c("sonde_kernel_python_origins_evicted_total", "Python contexts whose origin (the context they were copied from) was overwritten in the kernel's table by another context's that hashes to the same slot (also how the contexts of exited processes are reclaimed): a child task's calls whose creator is lost stay roots unless their own task answers.", vec![], k.py_origins_evicted),
            c("sonde_kernel_goroutines_evicted_total", "Ways of the kernel's goroutine table given to a new goroutine from the one created longest ago, its set being full (also how the goroutines of exited processes are reclaimed): a goroutine that still runs loses its origin, and its calls are placed by other evidence or stay roots.", vec![], k.go_evicted),
            c("sonde_kernel_quiet_calls_skipped_total", "Calls on released sockets (a protocol sonde does not parse, or the end of a connection it does not parse, such as a database server's) that the kernel left unreported, as the agent asked: only their writes that may follow a request's input are reported. Not a loss.", vec![], k.quiet_skipped),
            c("sonde_decode_errors_total", "Ring buffer records that failed to decode.", vec![], u.decode_errors),
            c("sonde_unrecognised_connections_total", "Connections no parser recognised (payload copy stopped).", vec![], disp.unrecognised.load(Relaxed)),
            metric("sonde_parser_memory_bytes", "Heap bytes held by protocol parsers (approximate).", "gauge", vec![], disp.parser_bytes.load(Relaxed)),
            metric("sonde_connection_table_entries", "Connections, listeners and pending accepts in the connection table.", "gauge", vec![], u.table_entries),
            c("sonde_http_exchanges_total", "HTTP request/response pairs seen.", vec![], t.http_exchanges),
            c("sonde_db_calls_total", "Database calls seen.", vec![], t.db_calls),
            c("sonde_messaging_operations_total", "Messaging operations seen.", vec![], t.messaging_ops),
            c("sonde_late_partners_total", "Server requests stitched to a client record that arrived after them.", vec![("outcome", "adopted")], counts.late_partners_adopted),
            c("sonde_late_partners_total", "Server requests stitched to a client record that arrived after them.", vec![("outcome", "missed")], d.late_partners_missed),
            c("sonde_partner_waits_expired_total", "Server requests from a client on this node, and deliveries of a publish seen on this node, whose client's or publish's record did not come within the wait (1 s): they went out as roots.", vec![], counts.partners_not_come),
            c("sonde_partnerless_connections_total", "Server connections from a client on this node whose client's records do not come (an untraced process, the agent, an opaque connection): their requests stopped waiting for them.", vec![], counts.partnerless),
            c("sonde_nat_resolved_total", "Server connections matched to their client through conntrack (DNAT).", vec![], counts.nat_resolved),
            c("sonde_handoffs_unmatched_total", "Pipe reads (pre-fork pool tasks) matched to no write: a lost or late record; their calls stay roots.", vec![], counts.handoffs_unmatched),
            c("sonde_spans_sampled_out_total", "Spans not exported by sampling decision.", vec![], t.spans_sampled_out),
            c("sonde_spans_exported_total", "Spans accepted by the OTLP backend.", vec![], export.spans_exported.load(Relaxed)),
            c("sonde_export_failures_total", "Failed OTLP export attempts.", vec![("signal", "traces")], export.trace_export_failures.load(Relaxed)),
            c("sonde_export_failures_total", "Failed OTLP export attempts.", vec![("signal", "metrics")], export.metric_export_failures.load(Relaxed)),
            c("sonde_connections_opened_total", "TCP connections tracked.", vec![], u.connections_opened),
            c("sonde_connections_closed_total", "TCP connections closed.", vec![], u.connections_closed),
            c("sonde_swept_closes_total", "Connections found closed by the periodic sweep (their close record was lost).", vec![], u.swept_closes),
            c("sonde_pipes_followed_total", "Pipe ends followed between the processes of a service (pre-fork pools).", vec![], u.pipes_followed),
            c("sonde_pipes_forgotten_total", "Pipe fds or processes forgotten at the pipe index's bounds.", vec![], u.pipes_forgotten),
            c("sonde_unresolved_sockets_total", "Sockets whose tuple could not be found.", vec![], u.unresolved_sockets),
            c("sonde_processes_gone_total", PROCS_GONE, vec![("named_from", "exec_record")], u.processes_gone_named_at_exec),
            c("sonde_processes_gone_total", PROCS_GONE, vec![("named_from", "command_name")], u.processes_gone),
            c("sonde_proc_socket_lookups_total", "Sockets looked up in /proc because the kernel's record lacked their tuple (an accept without a sockaddr on a kernel without BTF, data before its open record): a lookup that comes after the socket closed leaves it unresolved.", vec![], u.proc_lookups),
            c("sonde_go_binaries_total", "Go executables of traced processes, by whether the goroutine probes are attached.", vec![("outcome", "attached")], u.go_attached),
            c("sonde_go_binaries_total", "Go executables of traced processes, by whether the goroutine probes are attached.", vec![("outcome", "unsupported")], u.go_unsupported),
            c("sonde_go_binaries_total", "Go executables of traced processes, by whether the goroutine probes are attached.", vec![("outcome", "stripped")], u.go_stripped),
            c("sonde_go_binaries_total", "Go executables of traced processes, by whether the goroutine probes are attached.", vec![("outcome", "failed")], u.go_failed),
            c("sonde_python_processes_total", PY_PROCS, vec![("outcome", "followed")], u.python_followed),
            c("sonde_python_processes_total", PY_PROCS, vec![("outcome", "unsupported")], u.python_unsupported),
            c("sonde_libuv_binaries_total", LIBUV_BINS, vec![("outcome", "attached")], u.libuv_attached),
            c("sonde_libuv_binaries_total", LIBUV_BINS, vec![("outcome", "failed")], u.libuv_failed),
            c("sonde_tls_libraries_total", TLS_LIBS, vec![("outcome", "attached")], u.tls_attached),
            c("sonde_tls_libraries_total", TLS_LIBS, vec![("outcome", "no_symbols")], u.tls_no_symbols),
            c("sonde_tls_libraries_total", TLS_LIBS, vec![("outcome", "failed")], u.tls_failed),
            c("sonde_tls_connections_total", TLS_CONNS, vec![("outcome", "decrypted")], disp.tls_decrypted.load(Relaxed)),
            c("sonde_tls_connections_total", TLS_CONNS, vec![("outcome", "opaque"), ("reason", "library_not_hooked")], disp.tls_opaque.load(Relaxed)),
            drop("tls_no_socket", k.tls_no_socket),
            drop("process_notices", u.process_notices_dropped),
            drop("exec_records", u.exec_records_dropped),
        ];
        for ((outcome, _), n) in crate::probes::INJECT_OUTCOMES.iter().zip(k.injections) {
            m.push(c(
                "sonde_traceparent_injections_total",
                "Requests of traced processes that could carry a traceparent, by what the kernel did: injected, or why not.",
                vec![("outcome", outcome)],
                n,
            ));
        }
        for (agreed, n) in [
            ("true", counts.injected_agreed),
            ("false", counts.injected_disagreed),
        ] {
            m.push(c(
                "sonde_traceparent_injected_calls_total",
                "Injected client calls, by whether the kernel's parent and causality's agree (if not, the remote half is a separate trace).",
                vec![("agreed", agreed)],
                n,
            ));
        }
        for (why, n) in crate::correlation::Ambiguity::ALL
            .iter()
            .zip(counts.ambiguous)
        {
            m.push(c(
                "sonde_calls_ambiguous_total",
                "Client calls left as roots because several requests in flight could have made them, by why.",
                vec![("reason", why.as_str())],
                n,
            ));
        }
        for (index, n) in crate::pipeline::ENTRY_INDEXES.iter().zip(&pipeline.entries) {
            m.push(metric(
                "sonde_pipeline_entries",
                "Entries held by the pipeline's indexes.",
                "gauge",
                vec![("index", index)],
                n.load(Relaxed),
            ));
        }
        for (spec, p) in REGISTRY.iter().zip(&disp.protocols) {
            let l = || vec![("protocol", spec.name)];
            m.push(c(
                "sonde_protocol_connections_total",
                "Connections detected as this protocol.",
                l(),
                p.connections.load(Relaxed),
            ));
            m.push(c(
                "sonde_protocol_records_total",
                "Records (exchanges, calls, operations) parsed.",
                l(),
                p.records.load(Relaxed),
            ));
            m.push(c(
                "sonde_parse_errors_total",
                "Protocol bytes rejected by a parser.",
                l(),
                p.parse_errors.load(Relaxed),
            ));
            m.push(c(
                "sonde_unpaired_total",
                "Requests or responses that could not be paired.",
                l(),
                p.unpaired.load(Relaxed),
            ));
            m.push(c(
                "sonde_parser_gave_up_total",
                "Connections a parser gave up on (released).",
                l(),
                p.gave_up.load(Relaxed),
            ));
        }
        for p in probes {
            let labels = || vec![("program", p.program.clone())];
            m.push(HealthMetric {
                name: "sonde_probe_run_seconds_total",
                help: "Time the kernel spent in this eBPF program while kernel.bpf_stats_enabled was 1.",
                kind: "counter",
                labels: labels(),
                value: p.run_time_ns as f64 / 1e9,
            });
            m.push(HealthMetric {
                name: "sonde_probe_runs_total",
                help: "Runs of this eBPF program while kernel.bpf_stats_enabled was 1.",
                kind: "counter",
                labels: labels(),
                value: p.runs as f64,
            });
        }
        m
    })
}
