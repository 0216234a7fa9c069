//! End-to-end rate limits (SPEC section 11) through one real gateway: the burst admitted, then
//! `429 rate_limited` with `Retry-After` and the IETF headers; overrides; per-route scoping;
//! requests refused for other reasons spend nothing; the buckets survive a reload; the metric.
//!
//! Deterministic: the limit is 1 request per hour with a burst of 3, so nothing refills while
//! a test runs; no assertion depends on timing.

mod common;

use std::time::{Duration, Instant};

use aadgate_emulator::TokenSpec;
use common::*;
use serde_json::{json, Value};

const LIMIT: &str = r#"
[[rate_limits]]
name = "per-tenant"
key = "tenant"
rate = 1
period = "1h"
burst = 3
routes = ["orders", "files"]
[rate_limits.overrides]
"{tenant_b}" = { burst = 5 }
"#;

fn config() -> String {
    base_config("", "mode = \"any\"")
        + r#"
[[routes]]
name = "orders"
path_prefix = "/orders/"
upstream = "{echo}"
roles_any = ["Orders.Read"]

[[routes]]
name = "files"
path_prefix = "/files/"
upstream = "{echo}"

[[routes]]
name = "reports"
path_prefix = "/reports/"
upstream = "{echo}"
"# + &LIMIT.replace("{tenant_b}", &TENANT_B.to_uppercase())
}

fn token(w: &World, tid: &str) -> String {
    w.idp.mint(&TokenSpec::app(tid, AUD, &["Orders.Read"]))
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    /// Every value of header `n`, joined with ", " (a structured-field list), if any.
    fn header(&self, n: &str) -> Option<String> {
        let all: Vec<&str> = (self.headers.get_all(n).iter())
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!all.is_empty()).then(|| all.join(", "))
    }
}

async fn get(gw: &Gateway, path: &str, token: &str) -> Answer {
    let r = client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("response");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

/// How many of `n` requests to `path` are answered 200.
async fn passed(gw: &Gateway, path: &str, token: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if get(gw, path, token).await.status == 200 {
            ok += 1;
        }
    }
    ok
}

async fn wait_reloads(gw: &Gateway, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sample(
        &gw.metrics().await,
        "aadgate_config_reloads_total",
        &["result=\"ok\""],
    )
    .unwrap_or(0.0)
        < n
    {
        assert!(Instant::now() < deadline, "no reload:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_burst_passes_then_429_with_retry_after_and_the_ratelimit_headers() {
    let w = World::start().await;
    let gw = Gateway::start(&config(), &w).await;
    gw.wait_ready().await;
    let t = token(&w, TENANT_A);
    for remaining in [2, 1, 0] {
        let a = get(&gw, "/orders/1", &t).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        assert_eq!(
            a.header("ratelimit-policy").as_deref(),
            Some("\"per-tenant\";q=3;w=10800")
        );
        let full_in = 3600 * (3 - remaining);
        assert_eq!(
            a.header("ratelimit"),
            Some(format!("\"per-tenant\";r={remaining};t={full_in}"))
        );
    }
    let refused = get(&gw, "/orders/1", &t).await;
    assert_eq!(refused.status, 429);
    assert_eq!(
        refused.header("x-aadgate-reason").as_deref(),
        Some("rate_limited")
    );
    assert_eq!(refused.header("retry-after").as_deref(), Some("3600"));
    assert_eq!(
        refused.header("ratelimit").as_deref(),
        Some("\"per-tenant\";r=0;t=10800")
    );
    assert_eq!(
        refused.header("ratelimit-policy").as_deref(),
        Some("\"per-tenant\";q=3;w=10800")
    );
    assert_eq!(refused.body["error"], json!("too_many_requests"));
    assert_eq!(refused.body["reason"], json!("rate_limited"));
    assert!(refused.header("www-authenticate").is_none());
    assert_eq!(
        get(&gw, "/files/1", &t).await.status,
        429,
        "one bucket for both routes"
    );

    let m = gw.metrics().await;
    let count = |route: &str| {
        sample(
            &m,
            "aadgate_rate_limited_total",
            &[&format!("route=\"{route}\""), "limit=\"per-tenant\""],
        )
    };
    assert_eq!(count("orders"), Some(1.0));
    assert_eq!(count("files"), Some(1.0));
    assert_eq!(
        count("reports"),
        None,
        "no series for a route the limit does not cover"
    );
    assert_eq!(
        sample(
            &m,
            "aadgate_requests_total",
            &[
                "route=\"orders\"",
                "status=\"429\"",
                "reason=\"rate_limited\""
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_and_per_route_scoping() {
    let w = World::start().await;
    let gw = Gateway::start(&config(), &w).await;
    gw.wait_ready().await;
    let b = token(&w, TENANT_B);
    assert_eq!(
        passed(&gw, "/orders/1", &b, 7).await,
        5,
        "tenant B's override: burst 5"
    );
    let a = token(&w, TENANT_A);
    assert_eq!(
        passed(&gw, "/orders/1", &a, 5).await,
        3,
        "tenant A: the limit's burst"
    );
    let reports = get(&gw, "/reports/1", &a).await;
    assert_eq!(
        reports.status, 200,
        "a route the limit does not list is not limited"
    );
    assert!(reports.header("ratelimit").is_none());
    assert!(reports.header("ratelimit-policy").is_none());
    assert_eq!(passed(&gw, "/reports/1", &a, 5).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_for_other_reasons_spend_nothing() {
    let w = World::start().await;
    let gw = Gateway::start(&config(), &w).await;
    gw.wait_ready().await;
    let no_role = w.idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Other"]));
    let wrong_audience = w
        .idp
        .mint(&TokenSpec::app(TENANT_A, "api://other", &["Orders.Read"]));
    for _ in 0..5 {
        assert_eq!(get(&gw, "/orders/1", &no_role).await.status, 403);
        assert_eq!(get(&gw, "/orders/1", &wrong_audience).await.status, 401);
        assert_eq!(get(&gw, "/orders/1", "not-a-token").await.status, 401);
    }
    let a = token(&w, TENANT_A);
    assert_eq!(
        passed(&gw, "/orders/1", &a, 4).await,
        3,
        "the whole burst is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buckets_survive_a_reload_that_leaves_the_limit_unchanged() {
    let w = World::start().await;
    let gw = Gateway::start(&config(), &w).await;
    gw.wait_ready().await;
    let a = token(&w, TENANT_A);
    assert_eq!(passed(&gw, "/orders/1", &a, 3).await, 3);

    let text = std::fs::read_to_string(&gw.config_path).expect("read");
    let more_routes = text.replace(
        "[[rate_limits]]",
        "[[routes]]\nname = \"extra\"\npath_prefix = \"/extra/\"\nupstream = \"http://127.0.0.1:1\"\n\n[[rate_limits]]",
    );
    std::fs::write(&gw.config_path, &more_routes).expect("write");
    gw.signal("HUP");
    wait_reloads(&gw, 1.0).await;
    assert_eq!(
        get(&gw, "/orders/1", &a).await.status,
        429,
        "still exhausted"
    );

    std::fs::write(
        &gw.config_path,
        more_routes.replace("burst = 3", "burst = 4"),
    )
    .expect("write");
    gw.signal("HUP");
    wait_reloads(&gw, 2.0).await;
    assert_eq!(
        passed(&gw, "/orders/1", &a, 5).await,
        4,
        "changed settings start with fresh buckets"
    );
}

/// The tower layer admits with the same step: headers on the handler's answer, then the 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tower_layer_limits_and_adds_the_headers_too() {
    use aadgate_core::layer::AuthLayer;
    use aadgate_core::runtime::Runtime;
    use tower::ServiceExt;

    let w = World::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let text = render(&config(), free_port(), free_port(), &w, dir.path());
    let path = dir.path().join("aadgate.toml");
    std::fs::write(&path, text).expect("write");
    let runtime = Runtime::from_config_file(&path).await.expect("loads");
    assert!(runtime
        .keys()
        .first_load(Duration::from_secs(10))
        .await
        .is_some());
    let app = axum::Router::new()
        .route("/orders/{id}", axum::routing::get(|| async { "ok" }))
        .layer(AuthLayer::new(runtime, "orders").expect("route"));
    let t = token(&w, TENANT_A);
    let call = || {
        let req = http::Request::get("/orders/1")
            .header("authorization", format!("Bearer {t}"))
            .body(axum::body::Body::empty())
            .expect("request");
        app.clone().oneshot(req)
    };
    for remaining in [2, 1, 0] {
        let resp = call().await.expect("answer");
        assert_eq!(resp.status(), 200);
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        assert_eq!(
            h("ratelimit-policy").as_deref(),
            Some("\"per-tenant\";q=3;w=10800")
        );
        let ratelimit = h("ratelimit").expect("ratelimit header");
        assert!(
            ratelimit.starts_with(&format!("\"per-tenant\";r={remaining};t=")),
            "{ratelimit}"
        );
    }
    let refused = call().await.expect("answer");
    assert_eq!(refused.status(), 429);
    let h = |n: &str| {
        refused
            .headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    assert_eq!(h("retry-after").as_deref(), Some("3600"));
    assert_eq!(h("x-aadgate-reason").as_deref(), Some("rate_limited"));
    assert_eq!(
        h("ratelimit").as_deref(),
        Some("\"per-tenant\";r=0;t=10800")
    );
}
