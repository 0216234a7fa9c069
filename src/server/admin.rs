//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`, `/tenants` (the
//! tenant registry as JSON).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::state::SharedState;

/// Serves the admin endpoints on `listener` until the process exits.
pub(crate) async fn serve(listener: tokio::net::TcpListener, state: Arc<SharedState>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/tenants", get(tenants))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin listener stopped");
    }
}

async fn metrics(State(state): State<Arc<SharedState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

/// `GET /tenants`: the registry as last read, where it is stored, and the last read error.
async fn tenants(State(state): State<Arc<SharedState>>) -> impl IntoResponse {
    let runtime = state.current();
    let Some(registry) = runtime.registry() else {
        let body = serde_json::json!({
            "error": "this gateway has no tenant registry ([tenants] mode is not \"registry\")",
        });
        return (StatusCode::NOT_FOUND, axum::Json(body));
    };
    let snapshot = registry.snapshot();
    let body = serde_json::json!({
        "store": registry.store().describe(),
        "error": registry.error(),
        "tenants": snapshot.tenants().map(crate::tenants_cli::record_json).collect::<Vec<_>>(),
    });
    (StatusCode::OK, axum::Json(body))
}

async fn readyz(State(state): State<Arc<SharedState>>) -> impl IntoResponse {
    match state.readiness() {
        Ok(body) if listening(&state).await => (StatusCode::OK, body + "\n"),
        Ok(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the listeners are not accepting connections yet\n".to_string(),
        ),
        Err(body) => (StatusCode::SERVICE_UNAVAILABLE, body + "\n"),
    }
}

/// Whether the first data-plane listener accepts connections (pingora binds it after start-up,
/// and a wildcard address is probed on loopback).
async fn listening(state: &SharedState) -> bool {
    let Some(mut addr) = state.current().config().server.listen.first().copied() else {
        return true;
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    matches!(
        tokio::time::timeout(
            std::time::Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}
