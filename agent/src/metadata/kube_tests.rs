//! The pod watcher against an API server stand-in that replays API-format
//! responses (`tests/fixtures/k8s/`: a PodList for node-a, a watch stream
//! that deletes one pod and adds another, two ReplicaSets), through the
//! real kube-rs client; then the precedence rules on the resulting pods.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Path, RawQuery, State},
    http::StatusCode,
    response::IntoResponse,
    routing::get,
    Router,
};

use super::*;
use crate::{
    connections::process::ProcessInfo,
    metadata::{SharedStore, Store},
    spans::{ResourceBuilder, Value},
};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/k8s")
            .join(name),
    )
    .unwrap()
}

fn id(c: char) -> String {
    std::iter::repeat_n(c, 64).collect()
}

type Queries = Arc<Mutex<Vec<String>>>;

async fn pods(State(seen): State<Queries>, RawQuery(q): RawQuery) -> impl IntoResponse {
    let q = q.unwrap_or_default();
    seen.lock().unwrap().push(q.clone());
    if q.contains("watch=true") {
        // The recorded events, then an open stream (as a real watch stays open).
        let events = futures_util::stream::iter(
            fixture("watch.jsonl")
                .lines()
                .map(|l| Ok::<_, std::io::Error>(format!("{l}\n")))
                .collect::<Vec<_>>(),
        );
        let body = Body::from_stream(events.chain(futures_util::stream::pending()));
        return (StatusCode::OK, body).into_response();
    }
    (StatusCode::OK, fixture("pods.json")).into_response()
}

async fn replicaset(Path((ns, name)): Path<(String, String)>) -> impl IntoResponse {
    match std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/k8s/replicaset-{name}.json")),
    ) {
        Ok(body) if ns == "shop" => (StatusCode::OK, body),
        _ => (
            StatusCode::NOT_FOUND,
            format!(
                r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404,"message":"replicasets.apps \"{name}\" not found"}}"#
            ),
        ),
    }
}

async fn api_server() -> (std::net::SocketAddr, Queries) {
    let seen = Queries::default();
    let app = Router::new()
        .route("/api/v1/pods", get(pods))
        .route(
            "/apis/apps/v1/namespaces/{ns}/replicasets/{name}",
            get(replicaset),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

#[tokio::test]
async fn the_watcher_maps_this_nodes_containers_to_pods_and_workloads() {
    let (addr, seen) = api_server().await;
    let client =
        Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap())).unwrap();
    let store: SharedStore = Arc::new(std::sync::RwLock::new(Store::default()));
    let task = tokio::spawn(follow(store.clone(), client, "node-a".into()));
    // Until the watch events are applied: the added pod is there.
    for _ in 0..200 {
        if store.read().unwrap().pod(&id('9')).is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    task.abort();
    let s = store.read().unwrap();
    let (web, name) = s.pod(&id('a')).expect("web container");
    assert_eq!(
        (web.namespace.as_str(), web.name.as_str(), name.as_str()),
        ("shop", "web-7d4b9c6f5-x2x9k", "web")
    );
    assert_eq!(
        web.workload,
        Some(("Deployment".into(), "web".into())),
        "the ReplicaSet followed to its Deployment"
    );
    assert_eq!(web.replicaset.as_deref(), Some("web-7d4b9c6f5"));
    assert_eq!(
        s.pod(&id('b')).unwrap().1,
        "envoy",
        "every container of the pod"
    );
    assert_eq!(
        s.pod(&id('c')).unwrap().0.workload,
        Some(("StatefulSet".into(), "db".into()))
    );
    assert_eq!(
        s.pod(&id('d')).unwrap().0.workload,
        Some(("DaemonSet".into(), "node-exporter".into()))
    );
    assert_eq!(
        s.pod(&id('e')).unwrap().0.workload,
        Some(("Job".into(), "migrate-28934".into()))
    );
    assert!(s.pod(&id('f')).is_none(), "deleted by the watch");
    let (api, _) = s.pod(&id('9')).expect("added by the watch");
    assert_eq!(api.workload, Some(("Deployment".into(), "api".into())));
    let queries = seen.lock().unwrap().clone();
    assert!(
        !queries.is_empty()
            && queries
                .iter()
                .all(|q| q.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "only this node's pods: {queries:?}"
    );
    assert!(
        queries.iter().any(|q| q.contains("watch=true")),
        "{queries:?}"
    );
}

/// The service.name of a process in a container, with the fixtures' pods.
fn service(pod: &Pod, container: &str, otel: Option<&str>) -> (String, Vec<(String, Value)>) {
    let meta = pod_meta(pod, |_, rs| rs.strip_suffix("-7d4b9c6f5").map(String::from));
    let p = ProcessInfo {
        pid: 7,
        comm: "app".into(),
        exe_name: Some("app".into()),
        container_id: Some("x".into()),
        otel_service_name: otel.map(String::from),
        ..Default::default()
    };
    let r = ResourceBuilder::new(vec![]).build(
        &p,
        None,
        Some(&(Arc::new(meta), container.to_string())),
    );
    (r.service_name, r.attributes)
}

fn str_attr(attrs: &[(String, Value)], k: &str) -> Option<String> {
    attrs
        .iter()
        .find(|(k2, _)| k2 == k)
        .and_then(|(_, v)| match v {
            Value::Str(s) => Some(s.to_string()),
            _ => None,
        })
}

#[test]
fn service_name_precedence_for_pods() {
    let list: k8s_openapi::List<Pod> = serde_json::from_str(&fixture("pods.json")).unwrap();
    let by_name = |n: &str| {
        list.items
            .iter()
            .find(|p| p.metadata.name.as_deref() == Some(n))
            .unwrap()
    };
    let web = by_name("web-7d4b9c6f5-x2x9k");
    assert_eq!(
        service(web, "web", Some("from-env")).0,
        "from-env",
        "1. the process's own OTEL_SERVICE_NAME"
    );
    let (name, attrs) = service(web, "web", None);
    assert_eq!(
        name, "storefront",
        "2. the resource.opentelemetry.io/service.name annotation"
    );
    let attr = |k: &str| str_attr(&attrs, k);
    assert_eq!(attr("k8s.namespace.name").as_deref(), Some("shop"));
    assert_eq!(attr("k8s.pod.name").as_deref(), Some("web-7d4b9c6f5-x2x9k"));
    assert_eq!(
        attr("k8s.pod.uid").as_deref(),
        Some("5b1c0f3e-1111-4a6e-9d55-000000000001")
    );
    assert_eq!(attr("k8s.container.name").as_deref(), Some("web"));
    assert_eq!(attr("k8s.node.name").as_deref(), Some("node-a"));
    assert_eq!(attr("k8s.deployment.name").as_deref(), Some("web"));
    assert_eq!(
        attr("k8s.replicaset.name").as_deref(),
        Some("web-7d4b9c6f5")
    );
    assert_eq!(
        service(by_name("db-0"), "postgres", None).0,
        "orders-db",
        "3. the app.kubernetes.io/name label"
    );
    let (ne, attrs) = service(by_name("node-exporter-4hx7p"), "node-exporter", None);
    assert_eq!(ne, "node-exporter", "4. the owning workload");
    assert_eq!(
        str_attr(&attrs, "k8s.daemonset.name").as_deref(),
        Some("node-exporter")
    );
    assert_eq!(
        service(by_name("migrate-28934-q8zlt"), "migrate", None).0,
        "migrate-28934",
        "4. a Job"
    );
    assert_eq!(
        service(by_name("debug"), "shell", None).0,
        "shell",
        "6. a bare pod: its container's name"
    );
}

#[test]
fn runtime_prefixes_are_stripped() {
    assert_eq!(strip_runtime("containerd://abc"), "abc");
    assert_eq!(strip_runtime("cri-o://abc"), "abc");
    assert_eq!(strip_runtime("docker://abc"), "abc");
    assert_eq!(strip_runtime("abc"), "abc");
}
