//! An axum service that validates Azure AD / Entra ID tokens in-process with aadgate's
//! [`AuthLayer`], instead of behind the gateway.
//!
//! Three routes, each behind the layer for a route of the configuration:
//!
//! - `GET /me` (config route `me`: any valid token) echoes the caller's tenant, client and token
//!   kind from the verified [`Principal`];
//! - `GET /orders` (config route `orders`: app role `Orders.Read` required) returns the caller's
//!   orders;
//! - `GET /mail` (config route `mail`, with `exchange = "outlook"`) reads the caller's mailbox
//!   from the Outlook REST API with an **app-only token of the caller's tenant**: the layer
//!   swaps the caller's token for it (client credentials with a certificate) and hands it to the
//!   handler as an [`ExchangeGrant`].
//!
//! Rejections are the gateway's own responses (status, `x-aadgate-reason`, `WWW-Authenticate`,
//! JSON body). `GET /metrics` (no authentication) serves the Prometheus metrics.
//!
//! Run it against the local AAD emulator, with the exchange's application registered (its
//! throwaway certificate is the demo's) and admin-consented in the emulator's default tenant:
//!
//! ```text
//! # terminal 1: the emulator (dev-idp and dev-token share a signing key file)
//! cargo run -- dev-idp --listen 127.0.0.1:8399 \
//!     --app 3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c=conf/demo/THROWAWAY-demo-app.crt \
//!     --consent 8b0a5b2e-1c3d-4f5a-9e7b-6c2d1a0f3e4b=3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c:Mail.Read
//! # terminal 2: this service on 127.0.0.1:3001, with its built-in config for that emulator
//! cargo run --example axum_service
//! # terminal 3
//! TOKEN=$(cargo run -q -- dev-token --roles Orders.Read)
//! curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3001/me       # 200, the principal
//! curl -i -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3001/orders   # 200
//! curl -i http://127.0.0.1:3001/orders                                      # 401 missing_token
//! USER=$(cargo run -q -- dev-token --scp Mail.Read)                         # a user token
//! curl -i -H "Authorization: Bearer $USER" http://127.0.0.1:3001/orders    # 403 missing_role
//! curl -i -H "Authorization: Bearer $USER" http://127.0.0.1:3001/mail      # 200, see below
//! ```
//!
//! `/mail` calls the Outlook REST API at `OUTLOOK_API` when it is set (with `aadgate demo`
//! running, its mock is at `http://127.0.0.1:18301`); without it, it answers with the claims of
//! the app-only token it would call with — its tenant is the caller's, its roles the consented
//! ones.
//!
//! Usage: `axum_service [CONFIG]`. With `CONFIG`, that file is used; it must define routes
//! named `me`, `orders` and `mail` (their `path_prefix` and `upstream` are not used by the
//! layer; `mail` needs `exchange`). Without it, the example writes its own config (below) to a
//! temporary folder; the emulator's address can be changed with `AADGATE_IDP` (default
//! `http://127.0.0.1:8399`) and the listen address with `LISTEN` (default `127.0.0.1:3001`).

use std::time::Duration;

use aadgate_core::auth::Principal;
use aadgate_core::layer::{AuthLayer, ExchangeGrant};
use aadgate_core::runtime::Runtime;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The configuration used when none is given: the demo's emulator, tenant and audience.
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

[[routes]]
name = "mail"
path_prefix = "/mail"
upstream = "http://127.0.0.1:1"
exchange = "outlook"

# The application app-only tokens are issued to, with a throwaway certificate (register and
# consent it in the emulator as shown above). In production: your app registration and its
# certificate.
[exchange.outlook]
client_id = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c"
token_endpoint = "{idp}/{tenantid}/oauth2/v2.0/token"
scope = "https://outlook.office365.com/.default"
certificates = [ { cert = "{conf}/demo/THROWAWAY-demo-app.crt", key = "{conf}/demo/THROWAWAY-demo-app.key" } ]
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

/// `GET /mail`: the caller's three newest messages, read with the app-only token of the
/// caller's tenant (the caller's own token never leaves this service); without `OUTLOOK_API`,
/// the claims of that token.
async fn mail(
    State(outlook): State<Outlook>,
    principal: Principal,
    grant: ExchangeGrant,
) -> Result<Json<Value>, (StatusCode, String)> {
    let Some(base) = &outlook.base else {
        return Ok(Json(json!({
            "caller_tenant": principal.tenant_id(),
            "app_only_token_claims": claims_of(grant.access_token()),
        })));
    };
    let user = principal.token().claim_text("oid").unwrap_or_default();
    let answer = outlook
        .client
        .get(format!("{base}/api/v2.0/users/{user}/messages?$top=3"))
        .bearer_auth(grant.access_token())
        .send()
        .await
        .map_err(|e| (StatusCode::BAD_GATEWAY, format!("Outlook API: {e}")))?;
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        // A 401 passed on makes the layer drop this app-only token from its cache.
        return Err((status, body.to_string()));
    }
    Ok(Json(json!({
        "tenant_id": grant.tenant(),
        "messages": body["value"],
    })))
}

/// The claims of a JWT, without verifying it (for display only: the token came straight from
/// the token endpoint).
fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// Where the Outlook REST API is, and the client that calls it.
#[derive(Clone)]
struct Outlook {
    base: Option<String>,
    client: reqwest::Client,
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
            let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf");
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("axum_service.toml");
            std::fs::write(
                &path,
                BUILT_IN_CONFIG
                    .replace("{idp}", idp.trim_end_matches('/'))
                    .replace("{conf}", conf),
            )?;
            _built_in = Some(dir);
            path
        }
    };

    let runtime = Runtime::from_config_file(&config_path).await?;
    if runtime
        .keys()
        .first_load(Duration::from_secs(10))
        .await
        .is_none()
    {
        tracing::warn!("no signing keys yet (is the emulator running?); requests get 503 keys_unavailable until they load");
    }
    let outlook = Outlook {
        base: std::env::var("OUTLOOK_API")
            .ok()
            .map(|u| u.trim_end_matches('/').to_string()),
        client: reqwest::Client::new(),
    };

    let metrics = runtime.metrics().clone();
    let app = Router::new()
        .route("/me", get(me).layer(AuthLayer::new(runtime.clone(), "me")?))
        .route(
            "/orders",
            get(orders).layer(AuthLayer::new(runtime.clone(), "orders")?),
        )
        .route("/mail", get(mail).layer(AuthLayer::new(runtime, "mail")?))
        .route("/metrics", get(move || async move { metrics.render() }))
        .with_state(outlook);

    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3001".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tracing::info!(%listen, config = %config_path.display(), "serving /me, /orders, /mail and /metrics");
    axum::serve(listener, app).await?;
    Ok(())
}
