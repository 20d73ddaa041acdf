//! The short block `sonde run` prints on stderr once it captures: what is
//! attached, what is traced, and where spans and metrics go. One glance
//! answers "is it working, and where do I look".
use std::{fmt::Write, net::SocketAddr, path::PathBuf};

use crate::{
    config::RunConfig,
    export::otlp::{Protocol, Target},
    probes::{programs::Need, AttachState, ProbeStatus},
};

/// What the block reports, gathered by `run`.
pub struct Status<'a> {
    pub probes: &'a [ProbeStatus],
    pub pids: &'a [u32],
    pub cgroups: &'a [PathBuf],
    pub cfg: &'a RunConfig,
    /// Where `/metrics` is served (the bound address).
    pub prometheus: Option<SocketAddr>,
    /// Where the view endpoint for `sonde top --connect` listens.
    pub view: Option<SocketAddr>,
    /// Whether the TLS plaintext probes attach as libraries are found.
    pub tls: bool,
}

impl Status<'_> {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "sonde {} is capturing (Ctrl-C or SIGTERM to stop)",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(s, "  probes   {}", self.probes_line());
        let _ = writeln!(s, "  traced   {}", self.traced_line());
        let _ = writeln!(s, "  spans    {}", self.spans_line());
        let _ = writeln!(s, "  metrics  {}", self.metrics_line());
        let tls = if self.tls {
            "OpenSSL and Go crypto/tls plaintext, attached as libraries are found (logged; `sonde doctor` lists them)"
        } else {
            "off (--no-tls-probes): encrypted connections stay opaque"
        };
        let _ = writeln!(s, "  tls      {tls}");
        if let Some(a) = self.view {
            let _ = writeln!(s, "  view     `sonde top --connect {a}`");
        }
        s
    }

    fn probes_line(&self) -> String {
        let attached = self
            .probes
            .iter()
            .filter(|p| p.state == AttachState::Attached)
            .count();
        let mut line = format!("{attached}/{} attached", self.probes.len());
        let missing: Vec<&str> = self
            .probes
            .iter()
            .filter(|p| {
                p.need == Need::Optional
                    && matches!(p.state, AttachState::Skipped(_) | AttachState::Failed(_))
            })
            .map(|p| p.covers)
            .fold(vec![], |mut v, c| {
                if !v.contains(&c) {
                    v.push(c);
                }
                v
            });
        if !missing.is_empty() {
            let _ = write!(
                line,
                "; not covered: {} (`sonde doctor` says why)",
                missing.join(", ")
            );
        }
        line
    }

    fn traced_line(&self) -> String {
        let mut scope = match (self.pids.is_empty(), self.cgroups.is_empty()) {
            (true, true) => "every process on this node".to_string(),
            (false, true) => format!("pids {}", join(self.pids)),
            (true, false) => format!("cgroups {}", join_paths(self.cgroups)),
            (false, false) => format!(
                "pids {} and cgroups {}",
                join(self.pids),
                join_paths(self.cgroups)
            ),
        };
        scope.push_str(", not sonde itself");
        if !self.cfg.exclude_processes.is_empty() {
            let _ = write!(scope, ", not {}", self.cfg.exclude_processes.join(", "));
        }
        if !self.cfg.exclude_namespaces.is_empty() {
            let _ = write!(
                scope,
                ", not namespaces {}",
                self.cfg.exclude_namespaces.join(", ")
            );
        }
        scope
    }

    fn spans_line(&self) -> String {
        let mut to = vec![];
        if let Some(f) = self.cfg.stdout {
            to.push(format!("stdout ({})", format!("{f:?}").to_lowercase()));
        }
        if let Some(t) = &self.cfg.traces {
            to.push(otlp(t));
        }
        listed(to, "not exported (no OTLP endpoint, stdout off)")
    }

    fn metrics_line(&self) -> String {
        let mut to = vec![];
        if let Some(a) = self.prometheus {
            to.push(format!("http://{a}/metrics"));
        }
        if let Some(t) = &self.cfg.metrics {
            to.push(otlp(t));
        }
        listed(to, "not exported (Prometheus off, no OTLP endpoint)")
    }
}

/// Where a signal goes, or `none` when nowhere.
fn listed(to: Vec<String>, none: &str) -> String {
    if to.is_empty() {
        none.into()
    } else {
        to.join(" and ")
    }
}

fn otlp(t: &Target) -> String {
    let protocol = match t.protocol {
        Protocol::Grpc => "gRPC",
        Protocol::HttpProtobuf => "HTTP/protobuf",
    };
    format!("OTLP {protocol} {}", t.url)
}

fn join(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

fn join_paths(v: &[PathBuf]) -> String {
    v.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{resolve, FileConfig, RunFlags},
        export::stdout::Format,
    };

    fn probe(covers: &'static str, state: AttachState) -> ProbeStatus {
        ProbeStatus {
            hook: "tracepoint/x/y".into(),
            program: "y",
            need: Need::Optional,
            covers,
            state,
        }
    }

    #[test]
    fn the_default_block() {
        let flags = RunFlags {
            stdout_format: Some(Format::Tree),
            ..RunFlags::default()
        };
        let cfg = resolve(&flags, &FileConfig::default(), &|_| None).unwrap();
        let probes = [
            probe("read payload", AttachState::Attached),
            probe(
                "io_uring socket payload",
                AttachState::Skipped("no kprobes".into()),
            ),
            probe(
                "io_uring socket payload",
                AttachState::Skipped("no kprobes".into()),
            ),
        ];
        let s = Status {
            probes: &probes,
            pids: &[],
            cgroups: &[],
            cfg: &cfg,
            prometheus: Some("127.0.0.1:9464".parse().unwrap()),
            view: Some("127.0.0.1:9465".parse().unwrap()),
            tls: true,
        };
        let want = format!(
            "sonde {} is capturing (Ctrl-C or SIGTERM to stop)
  probes   1/3 attached; not covered: io_uring socket payload (`sonde doctor` says why)
  traced   every process on this node, not sonde itself
  spans    stdout (tree)
  metrics  http://127.0.0.1:9464/metrics
  tls      OpenSSL and Go crypto/tls plaintext, attached as libraries are found (logged; `sonde doctor` lists them)
  view     `sonde top --connect 127.0.0.1:9465`
",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(s.render(), want);
    }

    #[test]
    fn filters_exclusions_and_otlp() {
        let flags = RunFlags {
            otlp_endpoint: Some("http://collector:4318".into()),
            otlp_protocol: Some("http/protobuf".into()),
            exclude_processes: vec!["postgres".into()],
            prometheus_listen: Some("off".into()),
            ..RunFlags::default()
        };
        let cfg = resolve(&flags, &FileConfig::default(), &|_| None).unwrap();
        let s = Status {
            probes: &[],
            pids: &[12, 34],
            cgroups: &[],
            cfg: &cfg,
            prometheus: None,
            view: None,
            tls: false,
        };
        let text = s.render();
        assert!(text.contains("tls      off (--no-tls-probes)"), "{text}");
        assert!(
            text.contains("traced   pids 12,34, not sonde itself, not postgres\n"),
            "{text}"
        );
        assert!(
            text.contains("spans    OTLP HTTP/protobuf http://collector:4318/v1/traces\n"),
            "{text}"
        );
        assert!(
            text.contains("metrics  OTLP HTTP/protobuf http://collector:4318/v1/metrics\n"),
            "{text}"
        );
    }
}
