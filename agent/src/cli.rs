//! Command line. Every flag can also be set through `SONDE_<FLAG>`.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{probes::ProbeConfig, session::SessionConfig};

#[derive(Debug, Parser)]
#[command(
    name = "sonde",
    version,
    about = "eBPF node agent: socket traffic to OpenTelemetry traces and RED metrics"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `sonde=debug`.
    #[arg(long, global = true, env = "SONDE_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (the default when no command is given).
    Run(RunArgs),
    /// Print live socket data events.
    Capture(CaptureCmd),
    /// Report what this kernel allows; exits non-zero if capture is impossible.
    Doctor(DoctorCmd),
    /// A live view of the node: services, edges, slow and failed traces.
    /// Runs the capture itself, or reads a running agent with --connect.
    Top(TopCmd),
    /// Measure what the running agent's kernel programs cost per event
    /// (BPF run-time statistics over a window).
    ProbeCost(ProbeCostCmd),
}

#[derive(Debug, Clone, Args)]
pub struct TopCmd {
    /// Read a running `sonde run` through its view endpoint (its
    /// --view-listen address, e.g. 127.0.0.1:9465) instead of capturing.
    /// For a DaemonSet pod: `kubectl port-forward pod/NAME 9465` first.
    #[arg(long, env = "SONDE_TOP_CONNECT")]
    pub connect: Option<String>,

    /// Without --connect: the capture and export options of `sonde run`
    /// (spans are not printed: the screen is the terminal's). Logs go to
    /// sonde-top.log in the temporary directory while the screen is up.
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ProbeCostCmd {
    /// How long to sample.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
}

#[derive(Debug, Clone, Args)]
pub struct CaptureArgs {
    /// Only trace these process ids (repeat or comma-separate).
    #[arg(long = "pid", env = "SONDE_PID", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Only trace processes in these cgroup v2 directories.
    #[arg(long = "cgroup", env = "SONDE_CGROUP", value_delimiter = ',')]
    pub cgroups: Vec<PathBuf>,

    /// Payload bytes copied per syscall (0 to 8192).
    #[arg(long, env = "SONDE_CAPTURE_SIZE", default_value_t = sonde_common::DEFAULT_CAPTURE,
          value_parser = clap::value_parser!(u32).range(0..=sonde_common::MAX_CAPTURE as i64))]
    pub capture_size: u32,

    /// Kernel ring buffer size in bytes (rounded up to a power of two).
    /// Default: 2 MiB per online CPU, 4 to 64 MiB.
    #[arg(long, env = "SONDE_RINGBUF_SIZE",
          value_parser = clap::value_parser!(u32).range(4096..=1 << 30))]
    pub ringbuf_size: Option<u32>,

    /// How often the reader drains the ring buffer when the kernel sends no wakeup.
    #[arg(long, env = "SONDE_POLL_INTERVAL_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub poll_interval_ms: u64,

    /// Skip the startup scan of /proc for connections that predate the agent.
    #[arg(long, env = "SONDE_NO_SCAN")]
    pub no_scan: bool,

    /// Never attach kprobes, even where the kernel has them: io_uring socket
    /// payload then goes uncaptured (`sonde doctor` shows the choice).
    #[arg(long, env = "SONDE_NO_KPROBES")]
    pub no_kprobes: bool,

    /// Never attach the goroutine uprobes to Go programs: their calls then
    /// nest by the thread rules only (fewer, and roots under concurrency),
    /// and their goroutine switches cost nothing.
    #[arg(long, env = "SONDE_NO_GO_PROBES")]
    pub no_go_probes: bool,

    /// Attach the goroutine uprobes at the runtime functions' entries even
    /// where their calls are found (the fallback, for its tests).
    #[arg(long, env = "SONDE_GO_PROBES_AT_ENTRIES", hide = true)]
    pub go_probes_at_entries: bool,

    /// Attach OpenSSL's read and write probes at the public functions'
    /// entries even where the internal function they call is found (the
    /// fallback, for its tests and the TLS bench).
    #[arg(long, env = "SONDE_TLS_PROBES_AT_ENTRIES", hide = true)]
    pub tls_probes_at_entries: bool,

    /// Never read which asyncio task (contextvars context) a CPython
    /// thread runs: Python event loops' calls then nest by the thread rules
    /// only (roots under concurrency).
    #[arg(long, env = "SONDE_NO_PYTHON_TASKS")]
    pub no_python_tasks: bool,

    /// Never attach the uprobes that start a tick at the check and timer
    /// phases of libuv loops (Node.js): a call a handler makes after
    /// `setImmediate` or a timer may then nest under the request read last.
    #[arg(long, env = "SONDE_NO_LIBUV_PROBES")]
    pub no_libuv_probes: bool,

    /// Never attach the TLS uprobes to OpenSSL: encrypted connections then
    /// stay opaque (counted in `sonde_tls_connections_total`), and TLS
    /// calls cost nothing.
    #[arg(long, env = "SONDE_NO_TLS_PROBES")]
    pub no_tls_probes: bool,
}

impl CaptureArgs {
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            probes: ProbeConfig {
                capture_size: self.capture_size,
                ringbuf_bytes: self
                    .ringbuf_size
                    .unwrap_or_else(crate::probes::default_ringbuf_bytes),
                pids: self.pids.clone(),
                cgroups: self.cgroups.clone(),
                kprobes: !self.no_kprobes,
                go_probes: !self.no_go_probes,
                go_at_entries: self.go_probes_at_entries,
                tls_at_entries: self.tls_probes_at_entries,
                python_tasks: !self.no_python_tasks,
                libuv_phases: !self.no_libuv_probes,
                tls_probes: !self.no_tls_probes,
                ..ProbeConfig::default()
            },
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            scan_existing: !self.no_scan,
            ..SessionConfig::default()
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,

    /// OTLP endpoint for traces and metrics (overrides OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, env = "SONDE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP protocol: grpc or http/protobuf (overrides OTEL_EXPORTER_OTLP_PROTOCOL).
    #[arg(long, env = "SONDE_OTLP_PROTOCOL")]
    pub otlp_protocol: Option<String>,

    /// Prometheus /metrics address, or "off" [default: 127.0.0.1:9464].
    #[arg(long, env = "SONDE_PROMETHEUS_LISTEN")]
    pub prometheus_listen: Option<String>,

    /// Read-only endpoint for `sonde top --connect`, or "off"; it serves
    /// only what spans carry, and only takes in spans while it is read
    /// [default: 127.0.0.1:9465].
    #[arg(long, env = "SONDE_VIEW_LISTEN")]
    pub view_listen: Option<String>,

    /// Print spans to stdout (default: only when no OTLP endpoint is set).
    #[arg(long, env = "SONDE_STDOUT")]
    pub stdout: Option<bool>,

    /// How spans look on stdout: whole traces as trees, one line per span,
    /// or one JSON object per span; implies --stdout [default: tree on a
    /// terminal, else lines].
    #[arg(long, env = "SONDE_STDOUT_FORMAT", value_enum)]
    pub stdout_format: Option<crate::export::stdout::Format>,

    /// Keep query-string values in url.query / url.full (default: REDACTED).
    #[arg(long, env = "SONDE_KEEP_QUERY_VALUES")]
    pub keep_query_values: bool,

    /// Relay processes to see through, pairing their inbound and outbound
    /// connections (repeat or comma-separate) [default: docker-proxy].
    #[arg(
        long = "relay-process",
        env = "SONDE_RELAY_PROCESSES",
        value_delimiter = ','
    )]
    pub relay_processes: Option<Vec<String>>,

    /// Processes never traced, by name (comm or executable; repeat or comma-separate).
    #[arg(
        long = "exclude-process",
        env = "SONDE_EXCLUDE_PROCESSES",
        value_delimiter = ','
    )]
    pub exclude_processes: Vec<String>,

    /// Write a W3C `traceparent` header into the HTTP/1.x requests traced
    /// processes send, so services on other nodes (their own sonde, or an
    /// OpenTelemetry SDK) continue the trace: traceparent or none [default:
    /// none]. Needs CAP_NET_ADMIN and cgroup v2.
    #[arg(long, env = "SONDE_CONTEXT_PROPAGATION")]
    pub context_propagation: Option<String>,

    /// With --context-propagation: write nothing into unsampled requests
    /// (by default they get the header with flags 00).
    #[arg(long, env = "SONDE_CONTEXT_PROPAGATION_OMIT_UNSAMPLED")]
    pub context_propagation_omit_unsampled: bool,

    /// With --context-propagation: processes never injected into, by name
    /// (comm; repeat or comma-separate).
    #[arg(
        long = "context-propagation-exclude",
        env = "SONDE_CONTEXT_PROPAGATION_EXCLUDE",
        value_delimiter = ','
    )]
    pub context_propagation_exclude: Vec<String>,

    /// With --context-propagation: cgroup v2 directories whose processes
    /// (and those of the cgroups under them) are never injected into.
    #[arg(
        long = "context-propagation-exclude-cgroup",
        env = "SONDE_CONTEXT_PROPAGATION_EXCLUDE_CGROUPS",
        value_delimiter = ','
    )]
    pub context_propagation_exclude_cgroups: Vec<PathBuf>,

    /// TOML config file; flags and environment variables override it.
    #[arg(long, env = "SONDE_CONFIG")]
    pub config: Option<PathBuf>,
}

impl RunArgs {
    pub fn flags(&self) -> crate::config::RunFlags {
        crate::config::RunFlags {
            otlp_endpoint: self.otlp_endpoint.clone(),
            otlp_protocol: self.otlp_protocol.clone(),
            prometheus_listen: self.prometheus_listen.clone(),
            view_listen: self.view_listen.clone(),
            stdout: self.stdout,
            stdout_format: self.stdout_format,
            keep_query_values: self.keep_query_values,
            relay_processes: self.relay_processes.clone(),
            exclude_processes: self.exclude_processes.clone(),
            context_propagation: self.context_propagation.clone(),
            context_propagation_omit_unsampled: self.context_propagation_omit_unsampled,
            context_propagation_exclude: self.context_propagation_exclude.clone(),
            context_propagation_exclude_cgroups: self.context_propagation_exclude_cgroups.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct CaptureCmd {
    #[command(flatten)]
    pub common: CaptureArgs,

    /// One JSON object per line instead of text.
    #[arg(long, env = "SONDE_JSON")]
    pub json: bool,

    /// Payload bytes shown per event in text mode (JSON shows all captured).
    #[arg(long, env = "SONDE_SHOW_BYTES", default_value_t = 96)]
    pub show_bytes: usize,

    /// Also print connection open/close events.
    #[arg(long, env = "SONDE_CONNECTIONS")]
    pub connections: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorCmd {
    /// Machine-readable output.
    #[arg(long, env = "SONDE_JSON")]
    pub json: bool,
    /// List every probe, not only those that did not attach.
    #[arg(long, short)]
    pub verbose: bool,
}
