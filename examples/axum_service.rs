//! An axum service that validates Azure AD / Entra ID tokens in-process with aadgate's
//! [`AuthLayer`], instead of behind the gateway.
//!
//! Two routes, each behind the layer for a route of the configuration:
//!
//! - `GET /me` (config route `me`: any valid token) echoes the caller's tenant, client and token
//!   kind from the verified [`Principal`];
//! - `GET /orders` (config route `orders`: app role `Orders.Read` required) returns the caller's
//!   orders.
//!
//! Rejections are the gateway's own responses (status, `x-aadgate-reason`, `WWW-Authenticate`,
//! JSON body). `GET /metrics` (no authentication) serves the Prometheus metrics.
//!
//! Run it against the local AAD emulator:
//!
//! ```text
//! # terminal 1: the emulator (dev-idp and dev-token share a signing key file)
//! cargo run -- dev-idp --listen 127.0.0.1:8399
//! # terminal 2: this service on 127.0.0.1:3001, with its built-in config for that emulator
//! cargo run --example axum_service
//! # terminal 3
//! TOKEN=$(cargo run -q -- dev-token --roles Orders.Read)
//! curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3001/me       # 200, the principal
//! curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3001/orders   # 200
//! curl -i http://127.0.0.1:3001/orders                                      # 401 missing_token
//! TOKEN=$(cargo run -q -- dev-token --scp Orders.Read)                      # a user token, no role
//! curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3001/orders   # 403 missing_role
//! ```
//!
//! Usage: `axum_service [CONFIG]`. With `CONFIG`, that file is used; it must define routes
//! named `me` and `orders` (their `path_prefix` and `upstream` are not used by the layer).
//! Without it, the example writes its own config (below) to a temporary folder; the emulator's
//! address can be changed with `AADGATE_IDP` (default `http://127.0.0.1:8399`) and the listen
//! address with `LISTEN` (default `127.0.0.1:3001`).

use std::time::Duration;

use aadgate_core::auth::{Authenticator, Principal};
use aadgate_core::layer::{AuthLayer, AuthenticatorExt};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The configuration used when none is given: the emulator's default tenant and audience.
const BUILT_IN_CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:8080"]          # not used by the layer

[identity]
metadata_url = "{idp}/common/v2.0/.well-known/openid-configuration"
audiences = ["api://aadgate-demo"]

[tenants]
allow = ["8b0a5b2e-1c3d-4f5a-9e7b-6c2d1a0f3e4b"]

[[routes]]
name = "me"
path_prefix = "/me"
upstream = "http://127.0.0.1:1"

[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "http://127.0.0.1:1"
roles_any = ["Orders.Read"]
"#;

/// `GET /me`: who the verified token says the caller is.
async fn me(principal: Principal) -> Json<Value> {
    Json(json!({
        "tenant_id": principal.tenant_id(),
        "client_id": principal.client_id(),
        "kind": principal.kind().header_value(),
        "roles": principal.token().roles,
        "scopes": principal.token().scopes,
    }))
}

/// `GET /orders`: the caller's tenant's orders (a stand-in for real data access).
async fn orders(principal: Principal) -> Json<Value> {
    Json(json!({
        "tenant_id": principal.tenant_id(),
        "orders": [{"id": 1, "item": "coffee"}, {"id": 2, "item": "tea"}],
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    // Keep the temporary folder alive as long as the service runs.
    let mut _built_in = None;
    let config_path = match std::env::args_os().nth(1) {
        Some(path) => path.into(),
        None => {
            let idp =
                std::env::var("AADGATE_IDP").unwrap_or_else(|_| "http://127.0.0.1:8399".into());
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("axum_service.toml");
            std::fs::write(
                &path,
                BUILT_IN_CONFIG.replace("{idp}", idp.trim_end_matches('/')),
            )?;
            _built_in = Some(dir);
            path
        }
    };

    let auth = Authenticator::from_config_file(&config_path).await?;
    if auth
        .keys
        .first_load(Duration::from_secs(10))
        .await
        .is_none()
    {
        tracing::warn!("no signing keys yet (is the emulator running?); requests get 503 keys_unavailable until they load");
    }

    let metrics = auth.metrics.clone();
    let app = Router::new()
        .route("/me", get(me).layer(AuthLayer::new(auth.clone(), "me")?))
        .route(
            "/orders",
            get(orders).layer(AuthLayer::new(auth, "orders")?),
        )
        .route("/metrics", get(move || async move { metrics.render() }));

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3001".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tracing::info!(%listen, config = %config_path.display(), "serving /me, /orders and /metrics");
    axum::serve(listener, app).await?;
    Ok(())
}
