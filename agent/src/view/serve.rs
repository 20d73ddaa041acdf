//! The view's read-only endpoint, for `sonde top --connect`: JSON of what
//! the view shows, nothing more than spans already carry. Bound to
//! localhost by default; on a Kubernetes node, reach it with
//! `kubectl port-forward`.
use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::Path,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Router,
};

use super::Shared;

/// Paths served.
pub const SNAPSHOT_PATH: &str = "/v1/top";
pub const TRACE_PATH: &str = "/v1/traces";

fn json<T: serde::Serialize>(v: &T) -> axum::response::Response {
    match serde_json::to_string(v) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

pub fn router(view: Arc<Shared>) -> Router {
    let v2 = view.clone();
    Router::new()
        .route(
            SNAPSHOT_PATH,
            get(move || {
                let view = view.clone();
                async move { json(&view.snapshot()) }
            }),
        )
        .route(
            &format!("{TRACE_PATH}/{{id}}"),
            get(move |Path(id): Path<String>| {
                let view = v2.clone();
                async move {
                    match view.trace(&id) {
                        Some(t) => json(&t),
                        None => {
                            (StatusCode::NOT_FOUND, "no such trace in the view\n").into_response()
                        }
                    }
                }
            }),
        )
        .route(
            "/",
            get(|| async {
                "sonde view: /v1/top, /v1/traces/{trace id}; read it with `sonde top --connect`\n"
            }),
        )
}

/// Binds the view's listener, with an error that names the flag to change.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr} for the view (`sonde top --connect`): {e}. Fix: pick another address with --view-listen (SONDE_VIEW_LISTEN), or \"off\"")
    })
}

pub async fn serve(listener: tokio::net::TcpListener, view: Arc<Shared>) -> std::io::Result<()> {
    axum::serve(listener, router(view)).await
}
