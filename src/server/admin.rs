//! The admin listener: `/metrics` (Prometheus text), `/healthz`, `/readyz`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::state::SharedState;

/// Serves the admin endpoints on `listener` until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<SharedState>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
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

async fn readyz(State(state): State<Arc<SharedState>>) -> impl IntoResponse {
    match state.readiness() {
        Ok(body) => (StatusCode::OK, body + "\n"),
        Err(body) => (StatusCode::SERVICE_UNAVAILABLE, body + "\n"),
    }
}
