//! Names for what runs in containers: Docker's container names, images and
//! labels, and Kubernetes' pods and workloads, keyed by container id (the
//! id `connections/cgroup.rs` reads from each process's cgroup). Background
//! tasks fill the store from each source; the resource builder reads it.
//! A source that is absent or unreachable leaves its part empty, with one
//! log line saying why and how to enable it.
pub mod docker;
pub mod kube;

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

/// One container as its engine describes it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContainerMeta {
    /// Without Docker's leading `/`.
    pub name: String,
    /// The image reference without its tag or digest.
    pub image_name: String,
    pub image_tag: Option<String>,
    pub labels: HashMap<String, String>,
}

impl ContainerMeta {
    /// `com.docker.compose.service`: the Compose service it runs.
    pub fn compose_service(&self) -> Option<&str> {
        self.labels
            .get("com.docker.compose.service")
            .map(String::as_str)
    }
}

/// Splits an image reference into name and tag: `reg:5000/app:1.2` is
/// (`reg:5000/app`, `1.2`); a digest is dropped.
pub fn split_image(reference: &str) -> (String, Option<String>) {
    let reference = reference.split('@').next().unwrap_or(reference);
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (
            reference[..slash + i].to_string(),
            Some(reference[slash + i + 1..].to_string()),
        ),
        None => (reference.to_string(), None),
    }
}

/// A container's pod, and the container's name in it.
pub type PodContainer = (Arc<kube::PodMeta>, String);

#[derive(Debug, Default)]
pub struct Store {
    containers: HashMap<String, Arc<ContainerMeta>>,
    /// Kubernetes: container id -> its pod; pod uid -> its container ids.
    pods: HashMap<String, PodContainer>,
    pod_containers: HashMap<String, Vec<String>>,
    /// Bumped on every change, so cached resources know to rebuild.
    generation: u64,
}

pub type SharedStore = Arc<RwLock<Store>>;

/// Bound on containers remembered (a node runs far fewer).
const MAX_CONTAINERS: usize = 65536;

impl Store {
    pub fn container(&self, id: &str) -> Option<Arc<ContainerMeta>> {
        self.containers.get(id).cloned()
    }

    pub fn pod(&self, container_id: &str) -> Option<PodContainer> {
        self.pods.get(container_id).cloned()
    }

    /// A pod and its containers' ids (replacing what it had).
    pub fn set_pod(&mut self, pod: Arc<kube::PodMeta>, containers: Vec<(String, String)>) {
        let ids: Vec<String> = containers.iter().map(|(id, _)| id.clone()).collect();
        let unchanged = self.pod_containers.get(&pod.uid) == Some(&ids)
            && containers.iter().all(|(id, name)| {
                self.pods
                    .get(id)
                    .is_some_and(|(p, n)| **p == *pod && n == name)
            });
        if unchanged
            || (self.pods.len() >= MAX_CONTAINERS && !self.pod_containers.contains_key(&pod.uid))
        {
            return;
        }
        self.remove_pod(&pod.uid);
        for (id, name) in containers {
            self.pods.insert(id, (pod.clone(), name));
        }
        self.pod_containers.insert(pod.uid.clone(), ids);
        self.generation += 1;
    }

    pub fn remove_pod(&mut self, uid: &str) {
        if let Some(ids) = self.pod_containers.remove(uid) {
            for id in ids {
                self.pods.remove(&id);
            }
            self.generation += 1;
        }
    }

    /// Keeps only these pods (after a relist).
    pub fn retain_pods(&mut self, uids: &std::collections::HashSet<String>) {
        let gone: Vec<String> = self
            .pod_containers
            .keys()
            .filter(|u| !uids.contains(*u))
            .cloned()
            .collect();
        for uid in gone {
            self.remove_pod(&uid);
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn set_container(&mut self, id: String, meta: ContainerMeta) {
        if self.containers.get(&id).is_some_and(|m| **m == meta) {
            return;
        }
        if self.containers.len() >= MAX_CONTAINERS && !self.containers.contains_key(&id) {
            return;
        }
        self.containers.insert(id, Arc::new(meta));
        self.generation += 1;
    }

    pub fn remove_container(&mut self, id: &str) {
        if self.containers.remove(id).is_some() {
            self.generation += 1;
        }
    }

    /// Replaces every container (a full resync).
    pub fn replace_containers(&mut self, all: HashMap<String, ContainerMeta>) {
        let all: HashMap<String, Arc<ContainerMeta>> = all
            .into_iter()
            .take(MAX_CONTAINERS)
            .map(|(k, v)| (k, Arc::new(v)))
            .collect();
        if all.len() != self.containers.len()
            || all.iter().any(|(k, v)| self.containers.get(k) != Some(v))
        {
            self.containers = all;
            self.generation += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(split_image("nginx"), ("nginx".into(), None));
        assert_eq!(
            split_image("nginx:1.25"),
            ("nginx".into(), Some("1.25".into()))
        );
        assert_eq!(
            split_image("reg:5000/team/app:2"),
            ("reg:5000/team/app".into(), Some("2".into()))
        );
        assert_eq!(
            split_image("reg:5000/team/app"),
            ("reg:5000/team/app".into(), None)
        );
        assert_eq!(split_image("app@sha256:abcd"), ("app".into(), None));
        assert_eq!(split_image(""), ("".into(), None));
    }

    #[test]
    fn changes_bump_the_generation_and_nothing_else_does() {
        let mut s = Store::default();
        let m = ContainerMeta {
            name: "web".into(),
            ..Default::default()
        };
        s.set_container("a".into(), m.clone());
        assert_eq!(s.generation(), 1);
        s.set_container("a".into(), m.clone());
        assert_eq!(s.generation(), 1, "same data");
        s.replace_containers(HashMap::from([("a".to_string(), m)]));
        assert_eq!(s.generation(), 1, "same set");
        s.remove_container("a");
        assert_eq!((s.generation(), s.container("a")), (2, None));
    }
}
