//! Run configuration: flags (and their `SONDE_*` variables) win over the
//! standard `OTEL_*` variables, which win over the config file, which wins
//! over defaults.
use std::{net::SocketAddr, path::Path, time::Duration};

use serde::Deserialize;

use crate::{
    connections::process::parse_resource_attributes,
    export::{
        batch::BatchConfig,
        otlp::{self, Protocol, Signal, Target},
        stdout::Format as StdoutFormat,
    },
    spans::{http::HttpSpanOptions, sampler::Sampler},
};

pub const DEFAULT_PROMETHEUS_LISTEN: &str = "127.0.0.1:9464";
/// The view endpoint (`sonde top --connect`): localhost only by default.
pub const DEFAULT_VIEW_LISTEN: &str = "127.0.0.1:9465";

/// The config file (`--config`, TOML). Every key is optional.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    /// `k=v,k2=v2`, as OTEL_EXPORTER_OTLP_HEADERS.
    pub otlp_headers: Option<String>,
    /// An address, or "off".
    pub prometheus_listen: Option<String>,
    /// The view endpoint for `sonde top --connect`: an address, or "off".
    pub view_listen: Option<String>,
    pub sampler: Option<String>,
    pub sampler_arg: Option<String>,
    /// `k=v,...`, as OTEL_RESOURCE_ATTRIBUTES.
    pub resource_attributes: Option<String>,
    pub stdout: Option<bool>,
    /// tree, lines or json.
    pub stdout_format: Option<StdoutFormat>,
    pub keep_query_values: Option<bool>,
    pub metric_export_interval_ms: Option<u64>,
    /// Relay processes to see through (default: docker-proxy).
    pub relay_processes: Option<Vec<String>>,
    /// Processes never traced, added to the flag's.
    pub exclude_processes: Option<Vec<String>>,
    /// Kubernetes namespaces whose pods are never traced.
    pub exclude_namespaces: Option<Vec<String>>,
    /// "traceparent" to write W3C trace context into outgoing HTTP/1.x
    /// requests; "none" (the default) not to.
    pub context_propagation: Option<String>,
    /// Write nothing into unsampled requests, rather than flags 00.
    pub context_propagation_omit_unsampled: Option<bool>,
    /// Processes never injected into, by name, added to the flag's.
    pub context_propagation_exclude: Option<Vec<String>>,
    /// Cgroup v2 directories whose processes are never injected into.
    pub context_propagation_exclude_cgroups: Option<Vec<std::path::PathBuf>>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }
}

/// What `sonde run` was asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct RunFlags {
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: Option<String>,
    pub prometheus_listen: Option<String>,
    pub view_listen: Option<String>,
    pub stdout: Option<bool>,
    pub stdout_format: Option<StdoutFormat>,
    pub keep_query_values: bool,
    pub relay_processes: Option<Vec<String>>,
    pub exclude_processes: Vec<String>,
    pub context_propagation: Option<String>,
    pub context_propagation_omit_unsampled: bool,
    pub context_propagation_exclude: Vec<String>,
    pub context_propagation_exclude_cgroups: Vec<std::path::PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub traces: Option<Target>,
    pub metrics: Option<Target>,
    pub prometheus_listen: Option<SocketAddr>,
    /// Where the view endpoint listens; `view_listen_default`: not asked
    /// for (then a busy port is a warning, not a failure).
    pub view_listen: Option<SocketAddr>,
    pub view_listen_default: bool,
    pub sampler: Sampler,
    /// Node-wide resource attributes (the agent's OTEL_RESOURCE_ATTRIBUTES).
    pub resource_attributes: Vec<(String, String)>,
    /// Spans on stdout, in this format (`None`: not printed).
    pub stdout: Option<StdoutFormat>,
    pub http: HttpSpanOptions,
    pub batch: BatchConfig,
    pub metric_interval: Duration,
    pub relay_processes: Vec<String>,
    pub exclude_processes: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    /// `traceparent` injection, when asked for.
    pub inject: Option<crate::probes::inject::InjectConfig>,
}

fn ms(env: &dyn Fn(&str) -> Option<String>, k: &str) -> Option<Duration> {
    env(k)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

pub fn resolve(
    flags: &RunFlags,
    file: &FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RunConfig, String> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let protocol: Option<Protocol> = match flags.otlp_protocol.as_deref() {
        Some(p) => Some(p.parse()?),
        None => None,
    };
    // File values stand in for the OTEL_* variables when those are unset.
    let file_protocol = file.otlp_protocol.clone();
    let file_headers = file.otlp_headers.clone();
    let with_file = |k: &str| {
        env(k).or_else(|| match k {
            "OTEL_EXPORTER_OTLP_PROTOCOL" => file_protocol.clone(),
            "OTEL_EXPORTER_OTLP_HEADERS" => file_headers.clone(),
            _ => None,
        })
    };
    let endpoint_from_env = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    ]
    .iter()
    .any(|k| env(k).is_some());
    let endpoint = flags.otlp_endpoint.clone().or(if endpoint_from_env {
        None
    } else {
        file.otlp_endpoint.clone()
    });
    let disabled = |k: &str| env(k).is_some_and(|v| v.trim() == "none");
    let traces = if disabled("OTEL_TRACES_EXPORTER") {
        None
    } else {
        otlp::target(Signal::Traces, &with_file, endpoint.as_deref(), protocol)?
    };
    let metrics = if disabled("OTEL_METRICS_EXPORTER") {
        None
    } else {
        otlp::target(Signal::Metrics, &with_file, endpoint.as_deref(), protocol)?
    };

    let listen = flags
        .prometheus_listen
        .clone()
        .or_else(|| file.prometheus_listen.clone())
        .unwrap_or_else(|| DEFAULT_PROMETHEUS_LISTEN.into());
    let prometheus_listen =
        match listen.trim() {
            "off" | "none" | "" => None,
            a => Some(a.parse().map_err(|e| {
                format!("--prometheus-listen {a:?}: {e} (expected ip:port, or off)")
            })?),
        };

    let asked = flags
        .view_listen
        .clone()
        .or_else(|| file.view_listen.clone());
    let view_listen_default = asked.is_none();
    let view = asked.unwrap_or_else(|| DEFAULT_VIEW_LISTEN.into());
    let view_listen = match view.trim() {
        "off" | "none" | "" => None,
        a => Some(
            a.parse()
                .map_err(|e| format!("--view-listen {a:?}: {e} (expected ip:port, or off)"))?,
        ),
    };

    let sampler_name = env("OTEL_TRACES_SAMPLER").or_else(|| file.sampler.clone());
    let sampler_arg = env("OTEL_TRACES_SAMPLER_ARG").or_else(|| file.sampler_arg.clone());
    let sampler = match sampler_name {
        Some(n) => Sampler::from_env(&n, sampler_arg.as_deref()).map_err(|e| e.to_string())?,
        None => Sampler::default(),
    };

    let mut resource_attributes = file
        .resource_attributes
        .as_deref()
        .map(parse_resource_attributes)
        .unwrap_or_default();
    if let Some(r) = env("OTEL_RESOURCE_ATTRIBUTES") {
        for (k, v) in parse_resource_attributes(&r) {
            resource_attributes.retain(|(k2, _)| *k2 != k);
            resource_attributes.push((k, v));
        }
    }

    let mut batch = BatchConfig::default();
    if let Some(d) = ms(&env, "OTEL_BSP_SCHEDULE_DELAY") {
        batch.delay = d;
    }
    if let Some(n) = env("OTEL_BSP_MAX_QUEUE_SIZE").and_then(|v| v.trim().parse().ok()) {
        batch.max_queue = n;
    }
    if let Some(n) = env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE").and_then(|v| v.trim().parse().ok()) {
        batch.max_batch = n;
    }
    if let Some(n) = env("OTEL_BSP_MAX_CONCURRENT_EXPORTS").and_then(|v| v.trim().parse().ok()) {
        batch.max_concurrent = n;
    }
    batch.max_concurrent = batch.max_concurrent.max(1);
    batch.max_batch = batch.max_batch.clamp(1, batch.max_queue.max(1));
    let metric_interval = ms(&env, "OTEL_METRIC_EXPORT_INTERVAL")
        .or(file.metric_export_interval_ms.map(Duration::from_millis))
        .unwrap_or(Duration::from_secs(60))
        .max(Duration::from_millis(100));

    // Without a trace backend, spans go to stdout so `sonde run` shows something.
    // Asking for a format asks for stdout, backend or not.
    let format = flags.stdout_format.or(file.stdout_format);
    let stdout = flags
        .stdout
        .or(file.stdout)
        .unwrap_or(traces.is_none() || format.is_some())
        .then(|| format.unwrap_or_else(StdoutFormat::default_for_stdout));
    Ok(RunConfig {
        traces,
        metrics,
        prometheus_listen,
        view_listen,
        view_listen_default,
        sampler: sampler.clone(),
        resource_attributes,
        stdout,
        http: HttpSpanOptions {
            keep_query_values: flags.keep_query_values || file.keep_query_values.unwrap_or(false),
        },
        batch,
        metric_interval,
        relay_processes: flags
            .relay_processes
            .clone()
            .or_else(|| file.relay_processes.clone())
            .unwrap_or_else(|| vec!["docker-proxy".into()])
            .into_iter()
            .filter(|n| !n.is_empty())
            .collect(),
        exclude_processes: flags
            .exclude_processes
            .iter()
            .chain(file.exclude_processes.iter().flatten())
            .cloned()
            .collect(),
        exclude_namespaces: file.exclude_namespaces.clone().unwrap_or_default(),
        inject: inject(flags, file, &sampler)?,
    })
}

/// `--context-propagation`: "traceparent", or "none" (the default).
fn inject(
    flags: &RunFlags,
    file: &FileConfig,
    sampler: &Sampler,
) -> Result<Option<crate::probes::inject::InjectConfig>, String> {
    let mode = flags
        .context_propagation
        .clone()
        .or_else(|| file.context_propagation.clone())
        .unwrap_or_else(|| "none".into());
    match mode.trim() {
        "none" | "" => Ok(None),
        "traceparent" => Ok(Some(crate::probes::inject::InjectConfig {
            omit_unsampled: flags.context_propagation_omit_unsampled
                || file.context_propagation_omit_unsampled.unwrap_or(false),
            exclude_processes: flags
                .context_propagation_exclude
                .iter()
                .chain(file.context_propagation_exclude.iter().flatten())
                .filter(|n| !n.is_empty())
                .cloned()
                .collect(),
            exclude_cgroups: flags
                .context_propagation_exclude_cgroups
                .iter()
                .chain(file.context_propagation_exclude_cgroups.iter().flatten())
                .cloned()
                .collect(),
            sampling: sampler.kernel(),
        })),
        other => Err(format!(
            "--context-propagation {other:?} is not supported; use traceparent (write W3C \
             trace context into outgoing HTTP/1.x requests) or none"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn defaults_print_spans_and_serve_prometheus() {
        let c = resolve(&RunFlags::default(), &FileConfig::default(), &env(&[])).unwrap();
        assert!(c.traces.is_none() && c.metrics.is_none());
        assert!(c.stdout.is_some());
        assert_eq!(
            c.prometheus_listen,
            Some(DEFAULT_PROMETHEUS_LISTEN.parse().unwrap())
        );
        assert_eq!(c.sampler, Sampler::default());
        assert_eq!(c.metric_interval, Duration::from_secs(60));
    }

    #[test]
    fn the_view_listens_on_localhost_unless_asked_otherwise() {
        let c = resolve(&RunFlags::default(), &FileConfig::default(), &env(&[])).unwrap();
        assert_eq!(c.view_listen, Some("127.0.0.1:9465".parse().unwrap()));
        assert!(
            c.view_listen_default,
            "a busy default port is only a warning"
        );
        let file: FileConfig = toml::from_str("view_listen = \"off\"\n").unwrap();
        let c = resolve(&RunFlags::default(), &file, &env(&[])).unwrap();
        assert_eq!((c.view_listen, c.view_listen_default), (None, false));
        let flags = RunFlags {
            view_listen: Some("127.0.0.1:7000".into()),
            ..RunFlags::default()
        };
        let c = resolve(&flags, &file, &env(&[])).unwrap();
        assert_eq!(c.view_listen, Some("127.0.0.1:7000".parse().unwrap()));
        let bad = RunFlags {
            view_listen: Some("localhost".into()),
            ..RunFlags::default()
        };
        let e = resolve(&bad, &FileConfig::default(), &env(&[])).unwrap_err();
        assert!(
            e.contains("--view-listen \"localhost\"") && e.contains("or off"),
            "{e}"
        );
    }

    #[test]
    fn the_export_queue_follows_the_bsp_variables() {
        let c = resolve(&RunFlags::default(), &FileConfig::default(), &env(&[])).unwrap();
        assert_eq!(
            (c.batch.max_queue, c.batch.max_batch, c.batch.max_concurrent),
            (2048, 512, 4)
        );
        let c = resolve(
            &RunFlags::default(),
            &FileConfig::default(),
            &env(&[
                ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
                ("OTEL_BSP_MAX_CONCURRENT_EXPORTS", "0"),
                ("OTEL_BSP_SCHEDULE_DELAY", "250"),
            ]),
        )
        .unwrap();
        // A batch larger than the queue is the queue; at least one export.
        assert_eq!(
            (c.batch.max_queue, c.batch.max_batch, c.batch.max_concurrent),
            (100, 100, 1)
        );
        assert_eq!(c.batch.delay, Duration::from_millis(250));
    }

    #[test]
    fn stdout_format_flag_over_file() {
        let file: FileConfig = toml::from_str("stdout_format = \"json\"\n").unwrap();
        let c = resolve(&RunFlags::default(), &file, &env(&[])).unwrap();
        assert_eq!(c.stdout, Some(StdoutFormat::Json));
        let flags = RunFlags {
            stdout_format: Some(StdoutFormat::Tree),
            ..RunFlags::default()
        };
        let c = resolve(&flags, &file, &env(&[])).unwrap();
        assert_eq!(c.stdout, Some(StdoutFormat::Tree));
        // Asking for a format turns stdout on next to a backend too, unless
        // stdout is turned off.
        let mut flags = RunFlags {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            stdout_format: Some(StdoutFormat::Tree),
            ..RunFlags::default()
        };
        let c = resolve(&flags, &FileConfig::default(), &env(&[])).unwrap();
        assert_eq!(c.stdout, Some(StdoutFormat::Tree));
        flags.stdout = Some(false);
        let c = resolve(&flags, &FileConfig::default(), &env(&[])).unwrap();
        assert_eq!(c.stdout, None);
        assert!(toml::from_str::<FileConfig>("stdout_format = \"trees\"\n")
            .unwrap_err()
            .to_string()
            .contains("unknown variant"));
    }

    #[test]
    fn precedence_flag_env_file() {
        let file: FileConfig = toml::from_str(
            "otlp_endpoint = \"http://file:4317\"\nprometheus_listen = \"off\"\nsampler = \"always_off\"\nresource_attributes = \"a=file,b=file\"\n",
        )
        .unwrap();
        let c = resolve(&RunFlags::default(), &file, &env(&[])).unwrap();
        assert_eq!(c.traces.as_ref().unwrap().url, "http://file:4317");
        assert!(
            c.stdout.is_none(),
            "an OTLP backend turns stdout off by default"
        );
        assert_eq!(c.prometheus_listen, None);
        assert_eq!(c.sampler, Sampler::AlwaysOff);
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
            ("OTEL_RESOURCE_ATTRIBUTES", "b=env"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ]);
        let c = resolve(&RunFlags::default(), &file, &e).unwrap();
        assert_eq!(c.traces.as_ref().unwrap().url, "http://env:4317");
        assert!(c.metrics.is_none());
        assert_eq!(c.sampler, Sampler::TraceIdRatio(0.1));
        assert_eq!(
            c.resource_attributes,
            vec![("a".into(), "file".into()), ("b".into(), "env".into())]
        );
        assert_eq!(c.metric_interval, Duration::from_millis(1500));
        let flags = RunFlags {
            otlp_endpoint: Some("http://flag:4318".into()),
            otlp_protocol: Some("http/protobuf".into()),
            ..Default::default()
        };
        let c = resolve(&flags, &file, &e).unwrap();
        assert_eq!(c.traces.as_ref().unwrap().url, "http://flag:4318/v1/traces");
    }

    #[test]
    fn bad_values_name_the_fix() {
        let flags = RunFlags {
            prometheus_listen: Some("9464".into()),
            ..Default::default()
        };
        assert!(resolve(&flags, &FileConfig::default(), &env(&[]))
            .unwrap_err()
            .contains("expected ip:port"));
        let e = env(&[("OTEL_TRACES_SAMPLER", "sometimes")]);
        assert!(resolve(&RunFlags::default(), &FileConfig::default(), &e)
            .unwrap_err()
            .contains("not supported"));
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
    }

    /// The shape the Helm chart's ConfigMap renders (xtask/tests/chart.rs).
    #[test]
    fn the_helm_charts_config_file_is_accepted() {
        let file: FileConfig = toml::from_str(
            "prometheus_listen = \"0.0.0.0:9464\"\nsampler = \"parentbased_always_on\"\nsampler_arg = \"0.5\"\n\
             relay_processes = [\"docker-proxy\"]\nexclude_processes = [\"envoy\"]\nexclude_namespaces = [\"kube-system\"]\n",
        )
        .unwrap();
        let flags = RunFlags {
            exclude_processes: vec!["pause".into()],
            ..Default::default()
        };
        let c = resolve(&flags, &file, &env(&[])).unwrap();
        assert_eq!(c.prometheus_listen, Some("0.0.0.0:9464".parse().unwrap()));
        assert_eq!(c.relay_processes, ["docker-proxy"]);
        assert_eq!(c.exclude_processes, ["pause", "envoy"]);
        assert_eq!(c.exclude_namespaces, ["kube-system"]);
    }

    #[test]
    fn context_propagation_is_off_unless_asked_and_names_the_fix() {
        let file = FileConfig::default();
        let c = resolve(&RunFlags::default(), &file, &env(&[])).unwrap();
        assert_eq!(c.inject, None);
        let flags = RunFlags {
            context_propagation: Some("traceparent".into()),
            context_propagation_exclude: vec!["envoy".into()],
            ..RunFlags::default()
        };
        let c = resolve(
            &flags,
            &file,
            &env(&[("OTEL_TRACES_SAMPLER", "always_off")]),
        )
        .unwrap();
        let i = c.inject.expect("on");
        assert_eq!(i.exclude_processes, ["envoy"]);
        assert_eq!(i.sampling, Sampler::AlwaysOff.kernel());
        let file = FileConfig {
            context_propagation: Some("b3".into()),
            ..FileConfig::default()
        };
        let err = resolve(&RunFlags::default(), &file, &env(&[])).unwrap_err();
        assert!(err.contains("use traceparent"), "{err}");
    }
}
