//! The OTel resource of each traced process.
//!
//! `service.name` precedence:
//! 1. `OTEL_SERVICE_NAME` in the process's own environment, then
//!    `service.name` in its `OTEL_RESOURCE_ATTRIBUTES`;
//! 2. the pod annotation `resource.opentelemetry.io/service.name`;
//! 3. the pod label `app.kubernetes.io/name`;
//! 4. the pod's owning workload (a Deployment through its ReplicaSet);
//! 5. the Compose service (`com.docker.compose.service` label);
//! 6. the container's name (Docker's, else the pod's container);
//! 7. the executable's name.
use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use super::Value;
use crate::{
    connections::process::ProcessInfo,
    metadata::{ContainerMeta, PodContainer, SharedStore},
};

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
    /// Resources by process, with the metadata generation they were built at.
    cache: HashMap<(u32, u64), (Arc<Resource>, u64)>,
    /// Cached resources dropped because the cache was full (rebuilt on use).
    pub evicted: u64,
    metadata: Option<SharedStore>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
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
        ResourceBuilder {
            host_name: host_name(),
            base,
            cache: HashMap::new(),
            evicted: 0,
            metadata: None,
        }
    }

    /// Container and pod names from the metadata sources.
    pub fn with_metadata(mut self, store: SharedStore) -> Self {
        self.metadata = Some(store);
        self
    }

    pub fn get(&mut self, p: &ProcessInfo) -> Arc<Resource> {
        if self.cache.len() > 65536 {
            self.evicted += self.cache.len() as u64;
            self.cache.clear();
        }
        let key = (p.pid, p.start_ticks);
        // A containerized process's resource is rebuilt when its metadata
        // may have changed (it often arrives after the first spans).
        let (generation, meta, pod) = match (&self.metadata, &p.container_id) {
            (Some(store), Some(id)) => {
                let s = store.read().unwrap_or_else(|e| e.into_inner());
                (s.generation(), s.container(id), s.pod(id))
            }
            _ => (0, None, None),
        };
        if let Some((r, built_at)) = self.cache.get(&key) {
            if *built_at == generation {
                return r.clone();
            }
        }
        let r = Arc::new(self.build(p, meta.as_deref(), pod.as_ref()));
        self.cache.insert(key, (r.clone(), generation));
        r
    }

    pub fn build(
        &self,
        p: &ProcessInfo,
        container: Option<&ContainerMeta>,
        pod: Option<&PodContainer>,
    ) -> Resource {
        let mut attrs: Vec<(String, String)> = self.base.clone();
        for (k, v) in &p.otel_resource_attributes {
            attrs.retain(|(k2, _)| k2 != k);
            attrs.push((k.clone(), v.clone()));
        }
        let exe = p.exe_name.clone().unwrap_or_else(|| p.comm.clone());
        let service_name = p
            .otel_service_name
            .clone()
            .or_else(|| {
                attrs
                    .iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v.clone())
            })
            .or_else(|| pod.and_then(|(pm, _)| pm.service_name()).map(String::from))
            .or_else(|| {
                container
                    .and_then(|c| c.compose_service())
                    .map(String::from)
            })
            .or_else(|| container.map(|c| c.name.clone()).filter(|n| !n.is_empty()))
            .or_else(|| pod.map(|(_, name)| name.clone()).filter(|n| !n.is_empty()))
            .unwrap_or_else(|| invoked_name(p, &exe));
        let service_namespace = attrs
            .iter()
            .find(|(k, _)| k == "service.namespace")
            .map(|(_, v)| v.clone());
        attrs.retain(|(k, _)| k != "service.name");
        let mut out: Vec<(String, Value)> =
            vec![("service.name".into(), service_name.clone().into())];
        out.extend(attrs.into_iter().map(|(k, v)| (k, v.into())));
        let mut set = |k: &str, v: Value| {
            if !out.iter().any(|(k2, _)| k2 == k) {
                out.push((k.to_string(), v));
            }
        };
        set(
            "service.instance.id",
            format!("{}-{}-{}", self.host_name, p.pid, p.start_ticks).into(),
        );
        set("process.pid", Value::Int(p.pid as i64));
        set("process.executable.name", exe.into());
        if !p.cmdline.is_empty() {
            set(
                "process.command_line",
                redact_command_line(&p.cmdline).into(),
            );
        }
        if let Some(c) = &p.container_id {
            set("container.id", c.clone().into());
        }
        if let Some((pm, name)) = pod {
            for (k, v) in pm.attributes() {
                set(k, v.into());
            }
            set("k8s.container.name", name.clone().into());
        }
        if let Some(c) = container {
            set("container.name", c.name.clone().into());
            set("container.image.name", c.image_name.clone().into());
            if let Some(tag) = &c.image_tag {
                set("container.image.tag", tag.clone().into());
            }
            if let Some(svc) = c.compose_service() {
                set("docker.compose.service", svc.into());
            }
            if let Some(project) = c.labels.get("com.docker.compose.project") {
                set("docker.compose.project", project.clone().into());
            }
        }
        set("host.name", self.host_name.clone().into());
        set("telemetry.sdk.name", "sonde".into());
        set("telemetry.sdk.language", "rust".into());
        set("telemetry.sdk.version", env!("CARGO_PKG_VERSION").into());
        Resource {
            service_name,
            service_namespace,
            attributes: out,
        }
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
            cmdline: vec![
                "python3".into(),
                "app.py".into(),
                "--db-password=hunter2".into(),
                "--token".into(),
                "abc".into(),
                "postgres://u:p@db/x".into(),
            ],
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
        assert_eq!(
            b.build(&p, None, None).service_name,
            "python3.11",
            "executable name last"
        );
        let linked = ProcessInfo {
            comm: "redis-server".into(),
            exe_name: Some("redis-check-rdb".into()),
            ..proc_info()
        };
        assert_eq!(
            b.build(&linked, None, None).service_name,
            "redis-server",
            "the name it was started by, through a link"
        );
        p.otel_resource_attributes = vec![
            ("service.name".into(), "from-attrs".into()),
            ("service.namespace".into(), "shop".into()),
        ];
        assert_eq!(b.build(&p, None, None).service_name, "from-attrs");
        p.otel_service_name = Some("from-env".into());
        let r = b.build(&p, None, None);
        assert_eq!(r.service_name, "from-env");
        assert_eq!(r.service_namespace.as_deref(), Some("shop"));
        assert_eq!(
            attr(&r, "deployment.environment"),
            Some(&Value::Str("prod".into()))
        );
        assert_eq!(
            r.attributes
                .iter()
                .filter(|(k, _)| k == "service.name")
                .count(),
            1
        );
        assert_eq!(attr(&r, "process.pid"), Some(&Value::Int(42)));
        assert_eq!(attr(&r, "container.id"), Some(&Value::Str("c0ffee".into())));
    }

    #[test]
    fn containers_name_services_after_the_process_own_setting() {
        let b = ResourceBuilder::new(vec![]);
        let mut p = proc_info();
        let mut c = ContainerMeta {
            name: "shop-web-1".into(),
            image_name: "registry/shop".into(),
            image_tag: Some("2.1".into()),
            ..Default::default()
        };
        let r = b.build(&p, Some(&c), None);
        assert_eq!(
            r.service_name, "shop-web-1",
            "container name before the executable"
        );
        assert_eq!(
            attr(&r, "container.name"),
            Some(&Value::Str("shop-web-1".into()))
        );
        assert_eq!(
            attr(&r, "container.image.name"),
            Some(&Value::Str("registry/shop".into()))
        );
        assert_eq!(
            attr(&r, "container.image.tag"),
            Some(&Value::Str("2.1".into()))
        );
        c.labels
            .insert("com.docker.compose.service".into(), "web".into());
        c.labels
            .insert("com.docker.compose.project".into(), "shop".into());
        let r = b.build(&p, Some(&c), None);
        assert_eq!(
            r.service_name, "web",
            "the Compose service before the container name"
        );
        assert_eq!(
            attr(&r, "docker.compose.project"),
            Some(&Value::Str("shop".into()))
        );
        p.otel_service_name = Some("checkout".into());
        assert_eq!(
            b.build(&p, Some(&c), None).service_name,
            "checkout",
            "the process's own setting first"
        );
    }

    #[test]
    fn metadata_arriving_later_rebuilds_the_resource() {
        let store = SharedStore::default();
        let mut b = ResourceBuilder::new(vec![]).with_metadata(store.clone());
        let p = proc_info();
        assert_eq!(b.get(&p).service_name, "python3.11");
        store.write().unwrap().set_container(
            "c0ffee".into(),
            ContainerMeta {
                name: "api".into(),
                ..Default::default()
            },
        );
        assert_eq!(b.get(&p).service_name, "api");
        let again = b.get(&p);
        assert!(
            Arc::ptr_eq(&again, &b.get(&p)),
            "cached while nothing changes"
        );
    }

    #[test]
    fn command_line_is_redacted() {
        assert_eq!(
            redact_command_line(&proc_info().cmdline),
            "python3 app.py --db-password=REDACTED --token REDACTED postgres://REDACTED@db/x"
        );
    }
}
