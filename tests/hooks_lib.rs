//! Validator hooks through the library's public API: a configuration with an HTTP request hook,
//! an HTTP tenant hook and a CEL rule, loaded from TOML, run by the `Authenticator` against
//! tokens from the in-crate AAD emulator.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aadgate_core::auth::{Authenticator, Reason, RequestParts};
use aadgate_core::runtime::Runtime;
use aadgate_emulator::{Emulator, EmulatorHandle, EmulatorOptions, TokenSpec, DEFAULT_TENANT};
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Value};

const AUD: &str = "api://orders";

#[derive(Clone, Default)]
struct Seen {
    calls: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Value>>>,
}

/// The hook: allows tenant `DEFAULT_TENANT`, and requests unless the path ends in `/denied`.
async fn hook(State(seen): State<Seen>, Json(body): Json<Value>) -> Json<Value> {
    seen.calls.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut b) = seen.bodies.lock() {
        b.push(body.clone());
    }
    Json(match body["stage"].as_str() {
        Some("tenant") => {
            json!({"allow": body["tenant_id"] == DEFAULT_TENANT, "message": "unknown tenant"})
        }
        _ if body["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/denied")) =>
        {
            json!({"allow": false, "message": "no entitlement"})
        }
        _ => json!({"allow": true, "headers": {"x-plan": "gold", "x-auth-roles": "Admin"}}),
    })
}

struct World {
    idp: EmulatorHandle,
    seen: Seen,
    auth: Authenticator,
}

async fn world() -> World {
    let idp = Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator starts");
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook_url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(seen.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let toml = format!(
        r#"
[server]
listen = ["127.0.0.1:1"]

[identity]
metadata_url = "{metadata}"
audiences = ["{AUD}"]

[tenants]
mode = "hook"
hook = "registry"

[validators.registry]
kind = "http"
url = "{hook_url}"
timeout = "2s"
cache_ttl = "60s"

[validators.entitlements]
kind = "http"
url = "{hook_url}"
timeout = "2s"
cache_ttl = "60s"
headers = ["x-plan"]

[validators.no-guests]
kind = "cel"
expr = "!has(claims.acct) || claims.acct == 0"
message = "guest accounts are not allowed"

[[routes]]
name = "orders"
path_prefix = "/orders/"
upstream = "http://127.0.0.1:1"
validators = ["no-guests", "entitlements"]
"#,
        metadata = idp.metadata_url()
    );
    let config = aadgate_core::config::load_str(Path::new("/virtual/aadgate.toml"), &toml)
        .expect("config loads");
    let auth = Runtime::from_config(config)
        .expect("inside a runtime")
        .authenticator()
        .clone();
    assert!(
        auth.keys()
            .first_load(Duration::from_secs(10))
            .await
            .is_some(),
        "keys load"
    );
    World { idp, seen, auth }
}

async fn authenticate(
    w: &World,
    token: &str,
    path: &str,
) -> Result<aadgate_core::auth::Principal, Reason> {
    let mut headers = HeaderMap::new();
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let route = w.auth.config().routes[0].clone();
    let parts = RequestParts {
        method: &Method::GET,
        path,
        normalized_path: path,
        host: "api.contoso.com",
        headers: &headers,
    };
    w.auth
        .authenticate(&route, &parts)
        .await
        .map_err(|e| e.reason)
}

#[tokio::test]
async fn hooks_allow_add_headers_and_never_see_the_token() {
    let w = world().await;
    let token = w
        .idp
        .mint(&TokenSpec::app(DEFAULT_TENANT, AUD, &["Orders.Read"]));
    for _ in 0..3 {
        let p = authenticate(&w, &token, "/orders/1")
            .await
            .expect("allowed");
        let headers = p.identity_headers();
        assert!(
            headers.iter().any(|(n, v)| n == "x-plan" && v == "gold"),
            "hook header added"
        );
        assert!(
            !headers
                .iter()
                .any(|(n, v)| n == "x-auth-roles" && v == "Admin"),
            "a hook cannot set identity headers"
        );
    }
    // One tenant call and one request call; the rest came from the caches.
    assert_eq!(w.seen.calls.load(Ordering::SeqCst), 2);
    let bodies = w.seen.bodies.lock().expect("lock").clone();
    assert_eq!(bodies[0]["stage"], "tenant");
    assert_eq!(bodies[1]["stage"], "request");
    assert_eq!(bodies[1]["route"], "orders");
    assert_eq!(bodies[1]["claims"]["tid"], DEFAULT_TENANT);
    for b in &bodies {
        assert!(
            !b.to_string().contains(&token),
            "the raw token is never sent to a hook"
        );
    }
    let metrics = String::from_utf8(w.auth.metrics().render()).expect("utf8");
    assert!(metrics.contains(
        r#"aadgate_validator_requests_total{result="cached",validator="entitlements"} 2"#
    ));
    assert!(metrics
        .contains(r#"aadgate_validator_requests_total{result="allow",validator="no-guests"} 3"#));
}

#[tokio::test]
async fn a_hook_deny_is_hook_denied_and_an_unknown_tenant_is_tenant_not_allowed() {
    let w = world().await;
    let token = w
        .idp
        .mint(&TokenSpec::app(DEFAULT_TENANT, AUD, &["Orders.Read"]));
    assert_eq!(
        authenticate(&w, &token, "/orders/denied").await.err(),
        Some(Reason::HookDenied)
    );
    let other = "11111111-1111-4111-8111-111111111111";
    w.idp.add_tenant(other);
    let token = w.idp.mint(&TokenSpec::app(other, AUD, &["Orders.Read"]));
    assert_eq!(
        authenticate(&w, &token, "/orders/1").await.err(),
        Some(Reason::TenantNotAllowed)
    );
}

#[tokio::test]
async fn a_cel_rule_denies_before_the_http_hook_is_asked() {
    let w = world().await;
    let spec = TokenSpec::app(DEFAULT_TENANT, AUD, &["Orders.Read"]).with_claim("acct", json!(1));
    let token = w.idp.mint(&spec);
    assert_eq!(
        authenticate(&w, &token, "/orders/1").await.err(),
        Some(Reason::HookDenied)
    );
    let request_calls = w
        .seen
        .bodies
        .lock()
        .expect("lock")
        .iter()
        .filter(|b| b["stage"] == "request")
        .count();
    assert_eq!(request_calls, 0);
}

#[test]
fn a_cel_syntax_error_is_a_config_error_at_its_position() {
    let toml = r#"
[server]
listen = ["127.0.0.1:1"]

[identity]
jwks_uri = "http://127.0.0.1:1/keys"
audiences = ["api://x"]

[tenants]
mode = "any"

[validators.broken]
kind = "cel"
expr = "claims.a == 1 &&"
"#;
    let config = aadgate_core::config::load_str(Path::new("/virtual/aadgate.toml"), toml)
        .expect("the file itself is valid");
    // The expression is compiled when the runtime is built, as `aadgate check` and a reload do.
    let errors = Runtime::builder(config).build().expect_err("syntax error");
    let e = errors.0.first().expect("one error");
    // `expr = "` is 8 characters; the expression ends after 16 more, where CEL expected more.
    assert_eq!((e.line, e.col), (14, 25), "{}", e.message);
}

#[tokio::test]
async fn a_cel_tenant_hook_admits_one_tenant_and_refuses_another() {
    let idp = Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .expect("emulator starts");
    let other = "11111111-1111-4111-8111-111111111111";
    idp.add_tenant(other);
    let toml = format!(
        r#"
[server]
listen = ["127.0.0.1:1"]

[identity]
metadata_url = "{metadata}"
audiences = ["{AUD}"]

[tenants]
mode = "hook"
hook = "customers"

[validators.customers]
kind = "cel"
expr = "tenant.id == '{DEFAULT_TENANT}' && tenant.issuer.contains('/{DEFAULT_TENANT}/')"
message = "not a customer"

[[routes]]
name = "orders"
path_prefix = "/orders/"
upstream = "http://127.0.0.1:1"
"#,
        metadata = idp.metadata_url()
    );
    let config = aadgate_core::config::load_str(Path::new("/virtual/aadgate.toml"), &toml)
        .expect("a CEL validator can be the tenant hook");
    let auth = Runtime::from_config(config)
        .expect("inside a runtime")
        .authenticator()
        .clone();
    assert!(auth
        .keys()
        .first_load(Duration::from_secs(10))
        .await
        .is_some());
    let route = auth.config().routes[0].clone();
    let check = |token: String| {
        let auth = &auth;
        let route = route.clone();
        async move {
            let mut headers = HeaderMap::new();
            headers.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
            );
            let parts = RequestParts {
                method: &Method::GET,
                path: "/orders/1",
                normalized_path: "/orders/1",
                host: "api.contoso.com",
                headers: &headers,
            };
            auth.authenticate(&route, &parts)
                .await
                .map(|_| ())
                .map_err(|e| e.reason)
        }
    };
    // (case, tenant, decision)
    let table = [
        ("the tenant the expression names", DEFAULT_TENANT, Ok(())),
        ("another tenant", other, Err(Reason::TenantNotAllowed)),
    ];
    for (case, tid, want) in table {
        let token = idp.mint(&TokenSpec::app(tid, AUD, &["Orders.Read"]));
        assert_eq!(check(token).await, want, "{case}");
    }
}
