//! Kubernetes metadata: the pods of this node only (field selector
//! `spec.nodeName`, the node name from the downward API), watched through
//! the API server with kube-rs. Each container id of a pod's statuses maps
//! to the pod, its namespace, labels, annotations and owning workload. A
//! ReplicaSet owner is followed to its Deployment (one cached lookup per
//! ReplicaSet). Outside a cluster, or without API access, nothing but one
//! log line.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use futures_util::StreamExt;
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod};
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api, Client,
};

use super::SharedStore;

/// A pod as the resource builder needs it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The controlling workload: (kind, name), a ReplicaSet resolved to its Deployment.
    pub workload: Option<(String, String)>,
    pub replicaset: Option<String>,
}

impl PodMeta {
    /// The pod's say in `service.name`, in the order of precedence: the
    /// OTel annotation, the `app.kubernetes.io/name` label, the workload.
    pub fn service_name(&self) -> Option<&str> {
        self.annotations
            .get("resource.opentelemetry.io/service.name")
            .or_else(|| self.labels.get("app.kubernetes.io/name"))
            .map(String::as_str)
            .or(self.workload.as_ref().map(|(_, n)| n.as_str()))
            .filter(|s| !s.is_empty())
    }

    /// The `k8s.*` resource attributes.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("k8s.namespace.name", self.namespace.clone()),
            ("k8s.pod.name", self.name.clone()),
            ("k8s.pod.uid", self.uid.clone()),
            ("k8s.node.name", self.node.clone()),
        ];
        if let Some(rs) = &self.replicaset {
            out.push(("k8s.replicaset.name", rs.clone()));
        }
        if let Some((kind, name)) = &self.workload {
            let key = match kind.as_str() {
                "Deployment" => "k8s.deployment.name",
                "StatefulSet" => "k8s.statefulset.name",
                "DaemonSet" => "k8s.daemonset.name",
                "Job" => "k8s.job.name",
                "CronJob" => "k8s.cronjob.name",
                _ => return out,
            };
            out.push((key, name.clone()));
        }
        out
    }
}

/// A container runtime id without its scheme: `containerd://abc` is `abc`.
pub fn strip_runtime(id: &str) -> &str {
    id.split_once("://").map_or(id, |(_, rest)| rest)
}

/// (container id, container name) of every started container of a pod.
pub fn containers(pod: &Pod) -> Vec<(String, String)> {
    let Some(status) = &pod.status else {
        return vec![];
    };
    let all = [
        &status.container_statuses,
        &status.init_container_statuses,
        &status.ephemeral_container_statuses,
    ];
    all.into_iter()
        .flatten()
        .flatten()
        .filter_map(|c| {
            Some((
                strip_runtime(c.container_id.as_deref()?).to_string(),
                c.name.clone(),
            ))
        })
        .filter(|(id, _)| !id.is_empty())
        .collect()
}

/// The controlling owner reference: (kind, name).
fn controller(
    refs: Option<&Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
) -> Option<(String, String)> {
    refs?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.clone(), o.name.clone()))
}

/// The pod's metadata; `deployment_of` names the Deployment owning a
/// ReplicaSet (namespace, name), if any.
pub fn pod_meta(pod: &Pod, deployment_of: impl FnOnce(&str, &str) -> Option<String>) -> PodMeta {
    let m = &pod.metadata;
    let namespace = m.namespace.clone().unwrap_or_default();
    let owner = controller(m.owner_references.as_ref());
    let (workload, replicaset) = match owner {
        Some((kind, rs)) if kind == "ReplicaSet" => match deployment_of(&namespace, &rs) {
            Some(d) => (Some(("Deployment".to_string(), d)), Some(rs)),
            None => (Some(("ReplicaSet".to_string(), rs.clone())), Some(rs)),
        },
        other => (other, None),
    };
    PodMeta {
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        labels: m.labels.clone().unwrap_or_default(),
        annotations: m.annotations.clone().unwrap_or_default(),
        namespace,
        workload,
        replicaset,
    }
}

/// Watches this node's pods until the agent stops.
pub async fn follow(store: SharedStore, client: Client, node: String) {
    let pods: Api<Pod> = Api::all(client.clone());
    let mut deployments: HashMap<(String, String), Option<String>> = HashMap::new();
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher(pods, config).default_backoff().boxed();
    // Pods seen during a relist, to drop the ones that vanished meanwhile.
    let mut relist: Option<HashSet<String>> = None;
    let mut said_failed = false;
    while let Some(ev) = events.next().await {
        let pod = match ev {
            Ok(watcher::Event::Init) => {
                relist = Some(HashSet::new());
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = relist.take() {
                    store
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain_pods(&seen);
                    tracing::info!(pods = seen.len(), %node, "kubernetes metadata: following this node's pods");
                }
                continue;
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    store
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove_pod(uid);
                }
                continue;
            }
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => pod,
            Err(e) => {
                if !said_failed {
                    tracing::warn!(
                        "kubernetes metadata unavailable ({e}); retrying with backoff. Pods are named by container id meanwhile. \
                         Fix: the service account needs get/list/watch on pods and replicasets (the Helm chart's ClusterRole)"
                    );
                    said_failed = true;
                }
                continue;
            }
        };
        said_failed = false;
        let rs_owner =
            controller(pod.metadata.owner_references.as_ref()).filter(|(k, _)| k == "ReplicaSet");
        if let (Some((_, rs)), Some(ns)) = (rs_owner, pod.metadata.namespace.clone()) {
            if !deployments.contains_key(&(ns.clone(), rs.clone())) {
                let api: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
                let d = match api.get_opt(&rs).await {
                    Ok(found) => found
                        .and_then(|r| controller(r.metadata.owner_references.as_ref()))
                        .filter(|(k, _)| k == "Deployment")
                        .map(|(_, n)| n),
                    Err(e) => {
                        tracing::debug!("replicaset {ns}/{rs}: {e}");
                        None
                    }
                };
                if deployments.len() > 4096 {
                    deployments.clear();
                }
                deployments.insert((ns, rs), d);
            }
        }
        let meta = pod_meta(&pod, |ns, rs| {
            deployments
                .get(&(ns.to_string(), rs.to_string()))
                .cloned()
                .flatten()
        });
        if let Some(seen) = relist.as_mut() {
            seen.insert(meta.uid.clone());
        }
        let ids = containers(&pod);
        store
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set_pod(Arc::new(meta), ids);
    }
}

/// Starts following when running in a cluster with a node name; says why not otherwise.
pub async fn start(store: SharedStore, node: Option<String>) {
    let Some(node) = node.filter(|n| !n.is_empty()) else {
        if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
            tracing::warn!("in Kubernetes but SONDE_NODE_NAME is not set: pods are not named. Fix: set it from the downward API (spec.nodeName), as the Helm chart does");
        }
        return;
    };
    match Client::try_default().await {
        Ok(client) => follow(store, client, node).await,
        Err(e) => tracing::warn!(
            "kubernetes metadata unavailable: no API client ({e}); pods are named by container id"
        ),
    }
}

#[cfg(test)]
#[path = "kube_tests.rs"]
mod tests;
