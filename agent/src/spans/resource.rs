//! The OTel resource of each traced process.
//!
//! `service.name` precedence: `OTEL_SERVICE_NAME` in the process's own
//! environment, then `service.name` in its `OTEL_RESOURCE_ATTRIBUTES`, then
//! the executable name (container and Kubernetes names join this list with
//! the metadata sources).
use std::{collections::HashMap, sync::Arc};

use super::Value;
use crate::conntrack::process::ProcessInfo;

#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub service_name: String,
    pub service_namespace: Option<String>,
    pub attributes: Vec<(String, Value)>,
}

/// Builds and caches resources per process.
pub struct ResourceBuilder {
    host_name: String,
    /// The agent's own `OTEL_RESOURCE_ATTRIBUTES`: node-wide attributes
    /// (cluster, region) added to every resource, process values winning.
    base: Vec<(String, String)>,
    cache: HashMap<(u32, u64), Arc<Resource>>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The name a process without a configured service name is known by: its
/// executable's file name, unless it was started through a link under
/// another name (Debian's `redis-server` is a link to `redis-check-rdb`),
/// which `comm` keeps (up to 15 bytes).
fn invoked_name(p: &ProcessInfo, exe: &str) -> String {
    if p.comm.is_empty() || exe.starts_with(p.comm.as_str()) {
        exe.to_string()
    } else {
        p.comm.clone()
    }
}

/// Secrets in argv: values of flags named like credentials, and URL userinfo.
pub fn redact_command_line(args: &[String]) -> String {
    const SECRET: [&str; 6] = ["pass", "secret", "token", "key", "auth", "cred"];
    let secret = |flag: &str| {
        let f = flag.trim_start_matches('-').to_ascii_lowercase();
        flag.starts_with('-') && SECRET.iter().any(|s| f.contains(s))
    };
    let mut out = Vec::with_capacity(args.len());
    let mut redact_next = false;
    for a in args {
        if redact_next {
            out.push("REDACTED".to_string());
            redact_next = false;
            continue;
        }
        if let Some((flag, _)) = a.split_once('=') {
            if secret(flag) {
                out.push(format!("{flag}=REDACTED"));
                continue;
            }
        } else if secret(a) {
            redact_next = true;
        }
        out.push(redact_userinfo(a));
    }
    out.join(" ")
}

fn redact_userinfo(a: &str) -> String {
    if let Some(i) = a.find("://") {
        let rest = &a[i + 3..];
        let end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            return format!("{}://REDACTED@{}", &a[..i], &rest[at + 1..]);
        }
    }
    a.to_string()
}

impl ResourceBuilder {
    pub fn new(base: Vec<(String, String)>) -> Self {
        ResourceBuilder { host_name: host_name(), base, cache: HashMap::new() }
    }

    pub fn get(&mut self, p: &ProcessInfo) -> Arc<Resource> {
        if self.cache.len() > 65536 {
            self.cache.clear();
        }
        let key = (p.pid, p.start_ticks);
        if let Some(r) = self.cache.get(&key) {
            return r.clone();
        }
        let r = Arc::new(self.build(p));
        self.cache.insert(key, r.clone());
        r
    }

    pub fn build(&self, p: &ProcessInfo) -> Resource {
        let mut attrs: Vec<(String, String)> = self.base.clone();
        for (k, v) in &p.otel_resource_attributes {
            attrs.retain(|(k2, _)| k2 != k);
            attrs.push((k.clone(), v.clone()));
        }
        let exe = p.exe_name.clone().unwrap_or_else(|| p.comm.clone());
        let service_name = p
            .otel_service_name
            .clone()
            .or_else(|| attrs.iter().find(|(k, _)| k == "service.name").map(|(_, v)| v.clone()))
            .unwrap_or_else(|| invoked_name(p, &exe));
        let service_namespace = attrs.iter().find(|(k, _)| k == "service.namespace").map(|(_, v)| v.clone());
        attrs.retain(|(k, _)| k != "service.name");
        let mut out: Vec<(String, Value)> = vec![("service.name".into(), service_name.clone().into())];
        out.extend(attrs.into_iter().map(|(k, v)| (k, Value::Str(v))));
        let mut set = |k: &str, v: Value| {
            if !out.iter().any(|(k2, _)| k2 == k) {
                out.push((k.to_string(), v));
            }
        };
        set("service.instance.id", format!("{}-{}-{}", self.host_name, p.pid, p.start_ticks).into());
        set("process.pid", Value::Int(p.pid as i64));
        set("process.executable.name", exe.into());
        if !p.cmdline.is_empty() {
            set("process.command_line", redact_command_line(&p.cmdline).into());
        }
        if let Some(c) = &p.container_id {
            set("container.id", c.clone().into());
        }
        set("host.name", self.host_name.clone().into());
        set("telemetry.sdk.name", "sonde".into());
        set("telemetry.sdk.language", "rust".into());
        set("telemetry.sdk.version", env!("CARGO_PKG_VERSION").into());
        Resource { service_name, service_namespace, attributes: out }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_info() -> ProcessInfo {
        ProcessInfo {
            pid: 42,
            comm: "python3".into(),
            exe_name: Some("python3.11".into()),
            cmdline: vec!["python3".into(), "app.py".into(), "--db-password=hunter2".into(), "--token".into(), "abc".into(), "postgres://u:p@db/x".into()],
            container_id: Some("c0ffee".into()),
            start_ticks: 7,
            ..Default::default()
        }
    }

    fn attr<'a>(r: &'a Resource, k: &str) -> Option<&'a Value> {
        r.attributes.iter().find(|(k2, _)| k2 == k).map(|(_, v)| v)
    }

    #[test]
    fn service_name_precedence() {
        let b = ResourceBuilder::new(vec![("deployment.environment".into(), "prod".into())]);
        let mut p = proc_info();
        assert_eq!(b.build(&p).service_name, "python3.11", "executable name last");
        let linked = ProcessInfo { comm: "redis-server".into(), exe_name: Some("redis-check-rdb".into()), ..proc_info() };
        assert_eq!(b.build(&linked).service_name, "redis-server", "the name it was started by, through a link");
        p.otel_resource_attributes = vec![("service.name".into(), "from-attrs".into()), ("service.namespace".into(), "shop".into())];
        assert_eq!(b.build(&p).service_name, "from-attrs");
        p.otel_service_name = Some("from-env".into());
        let r = b.build(&p);
        assert_eq!(r.service_name, "from-env");
        assert_eq!(r.service_namespace.as_deref(), Some("shop"));
        assert_eq!(attr(&r, "deployment.environment"), Some(&Value::Str("prod".into())));
        assert_eq!(r.attributes.iter().filter(|(k, _)| k == "service.name").count(), 1);
        assert_eq!(attr(&r, "process.pid"), Some(&Value::Int(42)));
        assert_eq!(attr(&r, "container.id"), Some(&Value::Str("c0ffee".into())));
    }

    #[test]
    fn command_line_is_redacted() {
        assert_eq!(
            redact_command_line(&proc_info().cmdline),
            "python3 app.py --db-password=REDACTED --token REDACTED postgres://REDACTED@db/x"
        );
    }
}
