//! The tower layer in front of an axum app, against the in-crate AAD emulator: the handler sees
//! the verified principal, and rejections are the gateway's own responses (SPEC section 4).

use std::time::Duration;

use aadgate_core::auth::{Authenticator, Principal};
use aadgate_core::layer::{AuthLayer, AuthenticatorExt, LayerError};
use aadgate_emulator::{Emulator, EmulatorHandle, EmulatorOptions, TokenSpec, DEFAULT_TENANT};
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tower::ServiceExt;

const AUD: &str = "api://orders";

struct App {
    idp: EmulatorHandle,
    router: Router,
    auth: Authenticator,
    _dir: tempfile::TempDir,
}

async fn orders(principal: Principal, headers: HeaderMap) -> Json<Value> {
    Json(json!({
        "tenant": principal.tenant_id(),
        "client": principal.client_id(),
        "kind": principal.kind().header_value(),
        "roles": principal.token().roles,
        "route": &*principal.route().name,
        "x-auth-tenant-id": headers.get("x-auth-tenant-id").and_then(|v| v.to_str().ok()),
        "x_auth_roles": headers.get("x_auth_roles").and_then(|v| v.to_str().ok()),
    }))
}

/// The emulator, a config for it written to a temp dir, and an axum app behind the layer.
async fn app() -> App {
    let idp = Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        r#"
[server]
listen = ["127.0.0.1:1"]

[identity]
metadata_url = "{metadata}"
audiences = ["{AUD}"]

[tenants]
allow = ["{DEFAULT_TENANT}"]

[validators.no-guests]
kind = "cel"
expr = "!has(claims.acct) || claims.acct == 0"
message = "guest accounts are not allowed"

[[routes]]
name = "orders"
path_prefix = "/orders/"
upstream = "http://127.0.0.1:1"
roles_any = ["Orders.Read"]
validators = ["no-guests"]
"#,
        metadata = idp.metadata_url()
    );
    let path = dir.path().join("aadgate.toml");
    std::fs::write(&path, config).expect("config written");
    let auth = Authenticator::from_config_file(&path)
        .await
        .expect("config loads");
    assert!(
        auth.keys
            .first_load(Duration::from_secs(10))
            .await
            .is_some(),
        "keys load from the emulator"
    );
    let router = Router::new()
        .route("/orders/{*rest}", get(orders))
        .layer(AuthLayer::new(auth.clone(), "orders").expect("route exists"));
    App {
        idp,
        router,
        auth,
        _dir: dir,
    }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn get_orders(app: &App, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder()
        .uri("/orders/42")
        .header("host", "API.Contoso.com:8443");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = app
        .router
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Status, `x-aadgate-reason`, content type and the JSON body fields of SPEC section 4.
fn assert_rejected(a: &Answer, status: u16, reason: &str, error: &str) {
    assert_eq!(a.status.as_u16(), status, "{reason}: status");
    assert_eq!(a.header("x-aadgate-reason"), Some(reason));
    assert_eq!(a.header("content-type"), Some("application/json"));
    assert_eq!(a.body["error"], error, "{reason}: error field");
    assert_eq!(a.body["reason"], reason);
    assert!(
        a.body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{reason}: message"
    );
    assert!(
        a.body["request_id"].as_str().is_some_and(|m| !m.is_empty()),
        "{reason}: request_id"
    );
    assert_eq!(a.header("x-request-id"), a.body["request_id"].as_str());
}

#[tokio::test]
async fn a_valid_token_reaches_the_handler_with_its_principal() {
    let app = app().await;
    let token = app
        .idp
        .mint(&TokenSpec::app(DEFAULT_TENANT, AUD, &["Orders.Read"]));
    let a = get_orders(
        &app,
        &[
            ("authorization", &bearer(&token)),
            ("x-auth-tenant-id", "forged"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["tenant"], DEFAULT_TENANT);
    assert_eq!(a.body["client"], aadgate_emulator::DEFAULT_CLIENT_ID);
    assert_eq!(a.body["kind"], "app");
    assert_eq!(a.body["roles"], json!(["Orders.Read"]));
    assert_eq!(a.body["route"], "orders");
    assert_eq!(
        a.body["x-auth-tenant-id"], DEFAULT_TENANT,
        "forged identity headers are replaced"
    );
    let metrics = String::from_utf8(app.auth.metrics.render()).expect("utf8");
    assert!(
        metrics.contains(r#"aadgate_requests_total{reason="ok",route="orders",status="200"} 1"#)
    );
}

#[tokio::test]
async fn a_request_without_a_token_is_401_missing_token() {
    let app = app().await;
    let a = get_orders(&app, &[("x-request-id", "req-123")]).await;
    assert_rejected(&a, 401, "missing_token", "unauthorized");
    assert_eq!(
        a.header("www-authenticate"),
        Some(r#"Bearer realm="aadgate""#)
    );
    assert_eq!(a.body["request_id"], "req-123");
}

#[tokio::test]
async fn a_token_for_another_audience_is_401_bad_audience() {
    let app = app().await;
    let token = app.idp.mint(&TokenSpec::app(
        DEFAULT_TENANT,
        "api://someone-else",
        &["Orders.Read"],
    ));
    let a = get_orders(&app, &[("authorization", &bearer(&token))]).await;
    assert_rejected(&a, 401, "bad_audience", "invalid_token");
    let challenge = a.header("www-authenticate").expect("challenge");
    assert!(
        challenge
            .starts_with(r#"Bearer realm="aadgate", error="invalid_token", error_description=""#),
        "{challenge}"
    );
    assert!(
        !a.body.to_string().contains(&token),
        "the token never appears in a response"
    );
}

#[tokio::test]
async fn a_token_without_the_role_is_403_missing_role() {
    let app = app().await;
    let token = app
        .idp
        .mint(&TokenSpec::app(DEFAULT_TENANT, AUD, &["Orders.Write"]));
    let a = get_orders(&app, &[("authorization", &bearer(&token))]).await;
    assert_rejected(&a, 403, "missing_role", "insufficient_scope");
    let challenge = a.header("www-authenticate").expect("challenge");
    assert!(
        challenge.contains(r#"error="insufficient_scope""#),
        "{challenge}"
    );
}

#[tokio::test]
async fn a_route_validator_runs_in_the_layer() {
    let app = app().await;
    let spec = TokenSpec::app(DEFAULT_TENANT, AUD, &["Orders.Read"]).with_claim("acct", json!(1));
    let token = app.idp.mint(&spec);
    let a = get_orders(&app, &[("authorization", &bearer(&token))]).await;
    assert_rejected(&a, 403, "hook_denied", "access_denied");
    assert_eq!(a.body["message"], "guest accounts are not allowed");
    assert_eq!(a.header("www-authenticate"), None);
}

#[tokio::test]
async fn a_path_with_dot_segments_is_400_bad_request() {
    let app = app().await;
    let req = Request::builder()
        .uri("/orders/%2e%2e/admin")
        .body(Body::empty())
        .expect("request");
    let resp = app.router.clone().oneshot(req).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.headers()
            .get("x-aadgate-reason")
            .and_then(|v| v.to_str().ok()),
        Some("bad_request")
    );
}

#[tokio::test]
async fn the_layer_refuses_and_strips_what_the_gateway_refuses_and_strips() {
    let app = app().await;
    let token = app
        .idp
        .mint(&TokenSpec::app(DEFAULT_TENANT, AUD, &["Orders.Read"]));
    let a = get_orders(
        &app,
        &[
            ("authorization", &bearer(&token)),
            ("x_auth_roles", "Admin"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.body["x_auth_roles"],
        Value::Null,
        "x_auth_roles is read as x-auth-roles and stripped"
    );
    let long = format!("/orders/{}", "a".repeat(8192));
    for (method, uri, status, reason) in [
        ("GET", "/orders/..;x/admin", 400, "bad_request"),
        ("GET", "/orders/.%2E/admin", 400, "bad_request"),
        ("GET", "/orders/a%2Fb", 400, "bad_request"),
        ("GET", "*", 400, "bad_request"),
        ("GET", long.as_str(), 414, "uri_too_long"),
    ] {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", bearer(&token))
            .body(Body::empty())
            .expect("request");
        let resp = app.router.clone().oneshot(req).await.expect("infallible");
        assert_eq!(resp.status().as_u16(), status, "{method} {uri}");
        assert_eq!(
            resp.headers()
                .get("x-aadgate-reason")
                .and_then(|v| v.to_str().ok()),
            Some(reason),
            "{method} {uri}"
        );
    }
}

#[tokio::test]
async fn the_layer_works_over_real_http() {
    let app = app().await;
    let token = app
        .idp
        .mint(&TokenSpec::user(DEFAULT_TENANT, AUD, "Orders.Read").with_roles(&["Orders.Read"]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = app.router.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let client = reqwest::Client::new();
    let ok = client
        .get(format!("http://{addr}/orders/1"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
    let body: Value = ok.json().await.expect("json");
    assert_eq!(body["kind"], "user");
    let denied = client
        .get(format!("http://{addr}/orders/1"))
        .send()
        .await
        .expect("request");
    assert_eq!(denied.status(), 401);
    assert_eq!(
        denied
            .headers()
            .get("x-aadgate-reason")
            .and_then(|v| v.to_str().ok()),
        Some("missing_token")
    );
}

#[tokio::test]
async fn an_unknown_route_name_is_an_error() {
    let app = app().await;
    assert!(
        matches!(AuthLayer::new(app.auth.clone(), "nope"), Err(LayerError::UnknownRoute(n)) if n == "nope")
    );
}
