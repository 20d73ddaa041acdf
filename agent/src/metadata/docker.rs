//! Docker Engine metadata through its API socket (bollard): a full list
//! at start, then container start/rename/destroy events; on any error, a
//! resync after a pause. Without the socket, nothing: one log line.
use std::{collections::HashMap, path::Path, time::Duration};

use bollard::{
    models::ContainerSummary,
    query_parameters::{EventsOptions, ListContainersOptions},
    Docker, API_DEFAULT_VERSION,
};
use futures_util::StreamExt;

use super::{split_image, ContainerMeta, SharedStore};

pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The socket to use: `DOCKER_HOST` when it names a unix socket.
pub fn socket_path() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => h.trim_start_matches("unix://").to_string(),
        _ => DEFAULT_SOCKET.to_string(),
    }
}

fn meta(c: &ContainerSummary) -> Option<(String, ContainerMeta)> {
    let id = c.id.clone()?;
    let name = c
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_default();
    let (image_name, image_tag) = split_image(c.image.as_deref().unwrap_or_default());
    Some((
        id,
        ContainerMeta {
            name,
            image_name,
            image_tag,
            labels: c.labels.clone().unwrap_or_default(),
        },
    ))
}

async fn list(
    docker: &Docker,
    id: Option<&str>,
) -> Result<HashMap<String, ContainerMeta>, bollard::errors::Error> {
    let filters = id.map(|id| HashMap::from([("id".to_string(), vec![id.to_string()])]));
    let all = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters,
            ..Default::default()
        }))
        .await?;
    Ok(all.iter().filter_map(meta).collect())
}

/// Follows the engine until the agent stops.
pub async fn follow(store: SharedStore, socket: String) {
    let mut said_absent = false;
    let mut said_failed = false;
    loop {
        if !Path::new(&socket).exists() {
            if !said_absent {
                tracing::info!(
                    "no Docker socket at {socket}: containers are named by id only. \
                     To name them, mount it read-only (-v /var/run/docker.sock:/var/run/docker.sock:ro)"
                );
                said_absent = true;
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
            continue;
        }
        let result = async {
            let docker = Docker::connect_with_unix(&socket, 10, API_DEFAULT_VERSION)?;
            let all = list(&docker, None).await?;
            tracing::info!(
                containers = all.len(),
                "docker metadata: following {socket}"
            );
            store
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .replace_containers(all);
            let filters = HashMap::from([
                ("type".to_string(), vec!["container".to_string()]),
                (
                    "event".to_string(),
                    vec!["start".into(), "rename".into(), "destroy".into()],
                ),
            ]);
            let mut events = docker.events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }));
            while let Some(ev) = events.next().await {
                let ev = ev?;
                let Some(id) = ev.actor.and_then(|a| a.id) else {
                    continue;
                };
                if ev.action.as_deref() == Some("destroy") {
                    store
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove_container(&id);
                } else {
                    for (id, m) in list(&docker, Some(&id)).await? {
                        store
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .set_container(id, m);
                    }
                }
            }
            Ok::<(), bollard::errors::Error>(())
        }
        .await;
        if let Err(e) = result {
            if !said_failed {
                tracing::warn!("docker metadata unavailable ({socket}: {e}); retrying every 30 s. Containers are named by id meanwhile");
                said_failed = true;
            }
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that is not a Docker engine: one warning, an empty store,
    /// and the agent goes on.
    #[tokio::test]
    async fn an_unreachable_engine_leaves_the_store_empty() {
        let dir = std::env::temp_dir().join(format!("sonde-docker-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("docker.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let accepts = tokio::spawn(async move {
            // Accept and hang up at once.
            while let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        });
        let store = SharedStore::default();
        let task = tokio::spawn(follow(store.clone(), path.to_string_lossy().into_owned()));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!task.is_finished(), "still following (it retries)");
        task.abort();
        accepts.abort();
        assert_eq!(store.read().unwrap().generation(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
