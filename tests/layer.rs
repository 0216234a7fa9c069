//! The tower layer in front of an axum app, against the AAD emulator: the handler sees the
//! verified principal, rejections are the gateway's own responses (SPEC section 4), and on an
//! exchange route the handler gets the app-only token of the caller's tenant.

use std::time::Duration;

use aadgate_core::auth::Principal;
use aadgate_core::layer::{AuthLayer, ExchangeGrant, LayerError};
use aadgate_core::runtime::Runtime;
use aadgate_emulator::{
    AppRegistration, Emulator, EmulatorHandle, EmulatorOptions, SigningKey, TokenSpec,
    DEFAULT_TENANT,
};
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use tower::ServiceExt;

const AUD: &str = "api://orders";
/// The application the exchange route's app-only tokens are issued to.
const GATEWAY_APP: &str = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c";
/// A tenant the emulator knows that never consented to `GATEWAY_APP`.
const UNCONSENTED: &str = "33333333-3333-4333-8333-333333333333";

struct App {
    idp: EmulatorHandle,
    /// `/orders/…` behind the layer for route `orders`.
    router: Router,
    /// `/mail/…` and `/mail-refused` behind the layer for the exchange route `mail`.
    mail_router: Router,
    runtime: Runtime,
    _dir: tempfile::TempDir,
}

/// `GET /mail/...` behind the exchange route: what the handler got.
async fn mail(principal: Principal, grant: ExchangeGrant, headers: HeaderMap) -> Json<Value> {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    Json(json!({
        "caller_tenant": principal.tenant_id(),
        "grant_tenant": grant.tenant(),
        "grant_token": grant.access_token(),
        "authorization": header("authorization"),
        "client-request-id": header("client-request-id"),
        "x-auth-tenant-id": header("x-auth-tenant-id"),
    }))
}

/// `GET /mail-refused`: the API the handler called refused the app-only token.
async fn mail_refused() -> StatusCode {
    StatusCode::UNAUTHORIZED
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap_or_default();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap_or_default())
        .unwrap_or(Value::Null)
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
allow = ["{DEFAULT_TENANT}", "{UNCONSENTED}"]

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

[[routes]]
name = "mail"
path_prefix = "/mail"
upstream = "http://127.0.0.1:1"
exchange = "outlook"

[exchange.outlook]
client_id = "{GATEWAY_APP}"
token_endpoint = "{token_endpoint}"
scope = "https://outlook.office365.com/.default"
certificates = [ {{ cert = "app.crt", key = "app.key" }} ]
"#,
        metadata = idp.metadata_url(),
        token_endpoint = idp.token_endpoint_template(),
    );
    // A throwaway certificate for the exchange, registered with the emulator and consented in
    // the default tenant only.
    let cert = SigningKey::generate().expect("test key");
    std::fs::write(dir.path().join("app.crt"), cert.certificate_pem()).expect("cert written");
    std::fs::write(dir.path().join("app.key"), cert.private_key_pem()).expect("key written");
    idp.register_app(AppRegistration::new(GATEWAY_APP).with_certificate(&cert))
        .expect("app registered");
    idp.consent(DEFAULT_TENANT, GATEWAY_APP, vec!["Mail.Read".into()]);
    idp.add_tenant(UNCONSENTED);
    let path = dir.path().join("aadgate.toml");
    std::fs::write(&path, config).expect("config written");
    let runtime = Runtime::from_config_file(&path)
        .await
        .expect("config loads");
    assert!(
        runtime
            .keys()
            .first_load(Duration::from_secs(10))
            .await
            .is_some(),
        "keys load from the emulator"
    );
    let router = Router::new()
        .route("/orders/{*rest}", get(orders))
        .layer(AuthLayer::new(runtime.clone(), "orders").expect("route exists"));
    let mail_router = Router::new()
        .route("/mail/{*rest}", get(mail))
        .route("/mail-refused", get(mail_refused))
        .layer(AuthLayer::new(runtime.clone(), "mail").expect("route exists"));
    App {
        idp,
        router,
        mail_router,
        runtime,
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
    get_path(app, "/orders/42", headers).await
}

async fn get_path(app: &App, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder()
        .uri(path)
        .header("host", "API.Contoso.com:8443");
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let router = if path.starts_with("/mail") {
        &app.mail_router
    } else {
        &app.router
    };
    let resp = router
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
    let metrics = String::from_utf8(app.runtime.metrics().render()).expect("utf8");
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
        matches!(AuthLayer::new(app.runtime.clone(), "nope"), Err(LayerError::UnknownRoute(n)) if n == "nope")
    );
}

#[tokio::test]
async fn an_exchange_route_gives_the_handler_an_app_only_token_of_the_callers_tenant() {
    let app = app().await;
    let user = app
        .idp
        .mint(&TokenSpec::user(DEFAULT_TENANT, AUD, "Mail.Read"));
    let a = get_path(
        &app,
        "/mail/inbox",
        &[
            ("authorization", &bearer(&user)),
            ("client-request-id", "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["caller_tenant"], DEFAULT_TENANT);
    assert_eq!(a.body["grant_tenant"], DEFAULT_TENANT);
    let app_token = a.body["grant_token"].as_str().expect("token").to_string();
    assert_ne!(app_token, user, "the caller's token is replaced");
    assert_eq!(
        a.body["authorization"],
        format!("Bearer {app_token}"),
        "the request the handler sees carries the app-only token"
    );
    let claims = claims_of(&app_token);
    assert_eq!(claims["tid"], DEFAULT_TENANT);
    assert_eq!(claims["appid"], GATEWAY_APP);
    assert_eq!(claims["roles"], json!(["Mail.Read"]));
    assert_eq!(
        a.body["client-request-id"], "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d",
        "the caller's GUID client-request-id is kept"
    );
    assert_eq!(a.body["x-auth-tenant-id"], DEFAULT_TENANT);
    let again = get_path(&app, "/mail/inbox", &[("authorization", &bearer(&user))]).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["grant_token"], app_token.as_str());
    assert_eq!(
        app.idp.token_request_count(),
        1,
        "the second request is served from the app-only token cache"
    );
}

#[tokio::test]
async fn an_exchange_route_refuses_a_tenant_that_never_consented_without_calling_the_handler() {
    let app = app().await;
    let user = app
        .idp
        .mint(&TokenSpec::user(UNCONSENTED, AUD, "Mail.Read"));
    let a = get_path(&app, "/mail/inbox", &[("authorization", &bearer(&user))]).await;
    assert_rejected(&a, 403, "tenant_not_consented", "access_denied");
    assert_eq!(a.body.get("grant_token"), None, "the handler did not run");
}

#[tokio::test]
async fn a_401_from_the_handler_drops_the_cached_app_only_token() {
    let app = app().await;
    let user = app
        .idp
        .mint(&TokenSpec::user(DEFAULT_TENANT, AUD, "Mail.Read"));
    let auth = bearer(&user);
    assert_eq!(
        get_path(&app, "/mail/inbox", &[("authorization", &auth)])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(app.idp.token_request_count(), 1);
    let refused = get_path(&app, "/mail-refused", &[("authorization", &auth)]).await;
    assert_eq!(
        refused.status,
        StatusCode::UNAUTHORIZED,
        "passed on unchanged"
    );
    assert_eq!(refused.header("x-aadgate-reason"), None);
    assert_eq!(
        get_path(&app, "/mail/inbox", &[("authorization", &auth)])
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.idp.token_request_count(),
        2,
        "a fresh app-only token was fetched after the 401"
    );
}
