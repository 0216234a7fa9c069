//! End-to-end: validator hooks through the real gateway, with a real HTTP hook server.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aadgate_emulator::TokenSpec;
use axum::routing::post;
use axum::{Json, Router};
use common::*;
use serde_json::{json, Value};

#[derive(Default)]
struct HookLog {
    calls: AtomicU64,
    tenant_calls: Mutex<Vec<String>>,
    bodies: Mutex<Vec<Value>>,
}

async fn hook_server(log: Arc<HookLog>) -> String {
    let l1 = log.clone();
    let app = Router::new()
        .route(
            "/authorize",
            post(move |Json(body): Json<Value>| {
                let log = l1.clone();
                async move {
                    log.calls.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut b) = log.bodies.lock() {
                        b.push(body.clone());
                    }
                    if body["stage"] == "tenant" {
                        let tid = body["tenant_id"].as_str().unwrap_or_default().to_string();
                        if let Ok(mut t) = log.tenant_calls.lock() {
                            t.push(tid.clone());
                        }
                        return Json(json!({"allow": tid == TENANT_A, "message": "not a customer"}));
                    }
                    if body["path"].as_str().unwrap_or_default().contains("deny") {
                        return Json(json!({"allow": false, "message": "no entitlement for this path"}));
                    }
                    if body["path"].as_str().unwrap_or_default().contains("plan") {
                        return Json(json!({"allow": true, "headers": {"x-plan": "silver", "x-undeclared": "1"}}));
                    }
                    Json(json!({"allow": true, "headers": {"x-entitlement": "gold", "x-auth-tenant-id": "spoofed-by-hook"}}))
                }
            }),
        )
        .route("/hang", post(|| async { std::future::pending::<Json<Value>>().await }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn config(hooks: &str, tenants: &str) -> String {
    base_config("", tenants)
        + &format!(
            r#"
[validators.entitlements]
kind = "http"
url = "{hooks}/authorize"
timeout = "2s"
cache_ttl = "60s"
headers = ["x-entitlement", "x-plan"]

[validators.registry]
kind = "http"
url = "{hooks}/authorize"
timeout = "2s"
cache_ttl = "60s"

[validators.hanging]
kind = "http"
url = "{hooks}/hang"
timeout = "10s"
on_error = "deny"

[validators.hanging-short]
kind = "http"
url = "{hooks}/hang"
timeout = "200ms"
on_error = "deny"

[validators.hanging-open]
kind = "http"
url = "{hooks}/hang"
timeout = "200ms"
on_error = "allow"
headers = ["x-plan"]

[[routes]]
name = "entitled"
path_prefix = "/a/"
upstream = "{{echo}}"
validators = ["entitlements"]

[[routes]]
name = "slow"
path_prefix = "/slow/"
upstream = "{{echo}}"
validators = ["hanging"]

[[routes]]
name = "slow-short"
path_prefix = "/slow-short/"
upstream = "{{echo}}"
validators = ["hanging-short"]

[[routes]]
name = "open"
path_prefix = "/open/"
upstream = "{{echo}}"
validators = ["hanging-open"]

[[routes]]
name = "plain"
path_prefix = "/b/"
upstream = "{{echo}}"
"#
        )
}

fn token(w: &World, tid: &str) -> String {
    w.idp.mint(&TokenSpec::app(tid, AUD, &["Orders.Read"]))
}

async fn get(gw: &Gateway, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_hook_allows_with_headers_denies_with_its_message_and_is_cached() {
    let w = World::start().await;
    let log = Arc::new(HookLog::default());
    let hooks = hook_server(log.clone()).await;
    let gw = Gateway::start(
        &config(
            &hooks,
            &format!("mode = \"allow_list\"\nallow = [\"{TENANT_A}\"]"),
        ),
        &w,
    )
    .await;
    gw.wait_ready().await;
    let t = token(&w, TENANT_A);
    for _ in 0..20 {
        assert_eq!(get(&gw, "/a/items", &t).await.status(), 200);
    }
    assert_eq!(
        log.calls.load(Ordering::SeqCst),
        1,
        "one call while the decision is cached"
    );
    let seen = w.echo.last_request().expect("request");
    assert_eq!(seen.header("x-entitlement"), Some("gold"));
    assert_eq!(
        seen.header("x-auth-tenant-id"),
        Some(TENANT_A),
        "a hook cannot override identity headers"
    );
    let body = log.bodies.lock().map(|b| b[0].clone()).unwrap_or_default();
    assert_eq!(body["stage"], "request");
    assert_eq!(body["route"], "entitled");
    assert_eq!(body["tenant_id"], TENANT_A);
    assert_eq!(body["claims"]["tid"], TENANT_A);
    assert!(
        !body.to_string().contains(&t),
        "the hook never sees the token"
    );

    let r = get(&gw, "/a/deny", &t).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-aadgate-reason"], "hook_denied");
    let b: Value = r.json().await.expect("json");
    assert_eq!(b["message"], "no entitlement for this path");
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            "aadgate_validator_requests_total",
            &["validator=\"entitlements\"", "result=\"allow\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "aadgate_validator_requests_total",
            &["validator=\"entitlements\"", "result=\"cached\""]
        ),
        Some(19.0)
    );
    assert_eq!(
        sample(
            &m,
            "aadgate_validator_requests_total",
            &["validator=\"entitlements\"", "result=\"deny\""]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_a_validator_may_add_comes_only_from_the_hook() {
    let w = World::start().await;
    let log = Arc::new(HookLog::default());
    let hooks = hook_server(log.clone()).await;
    let gw = Gateway::start(
        &config(
            &hooks,
            &format!("mode = \"allow_list\"\nallow = [\"{TENANT_A}\"]"),
        ),
        &w,
    )
    .await;
    gw.wait_ready().await;
    let t = token(&w, TENANT_A);
    // (case, path, the x-plan values the upstream must see)
    let table: [(&str, &str, Vec<&str>); 4] = [
        ("the hook returns other headers", "/a/items", vec![]),
        ("the hook fails open", "/open/x", vec![]),
        ("a route without validators", "/b/x", vec![]),
        ("the hook returns x-plan", "/a/plan", vec!["silver"]),
    ];
    for (case, path, want) in table {
        let r = client()
            .get(gw.url(path))
            .bearer_auth(&t)
            .header("x-plan", "gold")
            .header("X-Plan", "platinum")
            .send()
            .await
            .expect("response");
        assert_eq!(r.status(), 200, "{case}");
        let seen = w.echo.last_request().expect("request");
        assert_eq!(seen.header_all("x-plan"), want, "{case}");
        assert_eq!(
            seen.header("x-undeclared"),
            None,
            "{case}: a header the validator does not declare is dropped"
        );
    }
    assert!(
        gw.logs().contains("x-undeclared"),
        "the dropped header is logged at warn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_hook_fails_by_its_own_rules_without_slowing_other_routes() {
    let w = World::start().await;
    let log = Arc::new(HookLog::default());
    let hooks = hook_server(log).await;
    let gw = Gateway::start(
        &config(
            &hooks,
            &format!("mode = \"allow_list\"\nallow = [\"{TENANT_A}\"]"),
        ),
        &w,
    )
    .await;
    gw.wait_ready().await;
    let t = token(&w, TENANT_A);
    let url = gw.url("/slow/x");
    let t2 = t.clone();
    let slow = tokio::spawn(async move {
        client()
            .get(url)
            .bearer_auth(t2)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    // While a hook hangs (for up to its 10 s timeout), requests on other routes and other
    // validators are all answered: they finish while the hanging request is still pending.
    for _ in 0..10 {
        assert_eq!(get(&gw, "/b/x", &t).await.status(), 200);
        assert_eq!(get(&gw, "/a/x", &t).await.status(), 200);
    }
    assert!(
        !slow.is_finished(),
        "the request on the hanging hook is still waiting"
    );
    slow.abort();
    // A hook that does not answer within its timeout fails closed with on_error = "deny" ...
    let r = get(&gw, "/slow-short/x", &t).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-aadgate-reason"], "hook_unavailable");
    // ... and open with on_error = "allow".
    assert_eq!(get(&gw, "/open/x", &t).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_hook_admits_one_tenant_refuses_another_and_is_asked_once_per_tenant() {
    let w = World::start().await;
    let log = Arc::new(HookLog::default());
    let hooks = hook_server(log.clone()).await;
    let gw = Gateway::start(
        &config(
            &hooks,
            &format!("mode = \"hook\"\nhook = \"registry\"\ndeny = [\"{TENANT_C}\"]"),
        ),
        &w,
    )
    .await;
    gw.wait_ready().await;
    for _ in 0..5 {
        assert_eq!(get(&gw, "/b/x", &token(&w, TENANT_A)).await.status(), 200);
        let r = get(&gw, "/b/x", &token(&w, TENANT_B)).await;
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["x-aadgate-reason"], "tenant_not_allowed");
        let r = get(&gw, "/b/x", &token(&w, TENANT_C)).await;
        assert_eq!(
            r.headers()["x-aadgate-reason"],
            "tenant_denied",
            "deny wins over the hook"
        );
    }
    let mut calls = log
        .tenant_calls
        .lock()
        .map(|c| c.clone())
        .unwrap_or_default();
    calls.sort();
    assert_eq!(
        calls,
        vec![TENANT_A.to_string(), TENANT_B.to_string()],
        "one call per tenant; never for a denied one"
    );
}
