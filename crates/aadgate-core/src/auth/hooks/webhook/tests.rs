use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use http::HeaderMap;
use tokio::sync::Notify;

use super::super::Validator;
use super::*;
use crate::auth::claims::VerifiedToken;

/// What the in-test hook server answers.
#[derive(Clone)]
enum Reply {
    Json(u16, String),
    /// Never answers (waits on a `Notify` nobody fires).
    Hang,
}

type Script = Arc<dyn Fn(usize, &Value) -> Reply + Send + Sync>;

#[derive(Clone)]
struct Hook {
    calls: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Value>>>,
    script: Script,
    never: Arc<Notify>,
}

struct HookServer {
    url: String,
    hook: Hook,
}

impl HookServer {
    fn calls(&self) -> usize {
        self.hook.calls.load(Ordering::SeqCst)
    }

    fn bodies(&self) -> Vec<Value> {
        self.hook
            .bodies
            .lock()
            .map(|b| b.clone())
            .unwrap_or_default()
    }
}

async fn answer(State(h): State<Hook>, Json(body): Json<Value>) -> Response {
    let n = h.calls.fetch_add(1, Ordering::SeqCst);
    let reply = (h.script)(n, &body);
    if let Ok(mut b) = h.bodies.lock() {
        b.push(body);
    }
    match reply {
        Reply::Json(status, text) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            [("content-type", "application/json")],
            text,
        )
            .into_response(),
        Reply::Hang => {
            h.never.notified().await;
            StatusCode::OK.into_response()
        }
    }
}

/// A hook server on 127.0.0.1 at a port chosen by the OS; it is accepting once this returns.
async fn hook_server(
    script: impl Fn(usize, &Value) -> Reply + Send + Sync + 'static,
) -> HookServer {
    let hook = Hook {
        calls: Arc::default(),
        bodies: Arc::default(),
        script: Arc::new(script),
        never: Arc::new(Notify::new()),
    };
    let app = Router::new()
        .route("/hook", post(answer))
        .with_state(hook.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    HookServer {
        url: format!("http://{addr}/hook"),
        hook,
    }
}

fn always(status: u16, body: &str) -> impl Fn(usize, &Value) -> Reply + Send + Sync + 'static {
    let body = body.to_string();
    move |_, _| Reply::Json(status, body.clone())
}

fn settings(url: &str, ttl: Duration, on_error: OnError) -> HttpValidatorSettings {
    HttpValidatorSettings {
        url: url.to_string(),
        timeout: Duration::from_millis(500),
        cache_ttl: ttl,
        on_error,
        headers: [
            "x-entitlement",
            "x-plan",
            "x-custom-claim",
            "x-bad-value",
            "x-number",
        ]
        .map(HeaderName::from_static)
        .to_vec(),
    }
}

fn token(tid: &str, exp: i64) -> VerifiedToken {
    let claims = json!({
        "tid": tid,
        "iss": format!("https://sts.windows.net/{tid}/"),
        "ver": "1.0",
        "appid": "0f8a6a48-2c1b-4c57-9d4a-8f0c2b8c1d11",
        "roles": ["Orders.Read"],
        "exp": exp,
    });
    let Value::Object(m) = claims else {
        unreachable!("object literal")
    };
    VerifiedToken::from_claims(m, Arc::from("kid-1"))
}

const TID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

fn later() -> i64 {
    crate::clock::unix_now() + 3600
}

struct Req {
    token: VerifiedToken,
    hash: [u8; 32],
    headers: HeaderMap,
    path: String,
}

impl Req {
    fn new(secret: &str, token: VerifiedToken) -> Self {
        Req {
            token,
            hash: crate::auth::token_hash(secret),
            headers: HeaderMap::new(),
            path: "/orders/1".into(),
        }
    }

    fn hook(&self) -> HookRequest<'_> {
        HookRequest {
            route: "orders",
            method: "GET",
            path: &self.path,
            normalized_path: &self.path,
            host: "api.contoso.com",
            headers: &self.headers,
            token: &self.token,
            token_hash: &self.hash,
        }
    }
}

fn counted(m: &Metrics, name: &str, result: &str) -> u64 {
    m.validator_requests
        .with_label_values(&[name, result])
        .get()
}

#[tokio::test]
async fn an_allow_answer_allows_and_returns_its_headers() {
    let srv = hook_server(always(
        200,
        r#"{"allow": true, "headers": {"X-Entitlement": "gold"}}"#,
    ))
    .await;
    let v = Validator::http("ent", settings(&srv.url, Duration::ZERO, OnError::Deny));
    let m = Metrics::new();
    let r = Req::new("t1", token(TID, later()));
    let headers = v.check_request(&r.hook(), &m).await.expect("allowed");
    assert_eq!(
        headers,
        vec![(
            HeaderName::from_static("x-entitlement"),
            HeaderValue::from_static("gold")
        )]
    );
    assert_eq!(counted(&m, "ent", "allow"), 1);
}

#[tokio::test]
async fn a_deny_answer_is_hook_denied_with_the_hook_message() {
    let srv = hook_server(always(
        200,
        r#"{"allow": false, "message": "no entitlement for orders"}"#,
    ))
    .await;
    let v = Validator::http("ent", settings(&srv.url, Duration::ZERO, OnError::Deny));
    let m = Metrics::new();
    let r = Req::new("t1", token(TID, later()));
    let e = v.check_request(&r.hook(), &m).await.expect_err("denied");
    assert_eq!(e.reason, Reason::HookDenied);
    assert_eq!(e.message, "no entitlement for orders");
    assert_eq!(counted(&m, "ent", "deny"), 1);
}

#[tokio::test]
async fn a_deny_without_message_names_the_validator() {
    let srv = hook_server(always(200, r#"{"allow": false}"#)).await;
    let v = Validator::http("ent", settings(&srv.url, Duration::ZERO, OnError::Deny));
    let r = Req::new("t1", token(TID, later()));
    let e = v
        .check_request(&r.hook(), &Metrics::new())
        .await
        .expect_err("denied");
    assert_eq!(e.reason, Reason::HookDenied);
    assert!(e.message.contains("ent"));
}

#[tokio::test]
async fn undeclared_invalid_identity_and_hop_by_hop_headers_from_a_hook_are_dropped() {
    let answer = json!({"allow": true, "headers": {
        "x-plan": "gold",
        "x-not-declared": "1",
        "x-auth-tenant-id": "forged",
        "X-Auth-Roles": "Admin",
        "x-custom-claim": "forged",
        "bad name": "v",
        "x-bad-value": "line\nbreak",
        "x-number": 3,
        "content-length": "10",
        "host": "evil",
    }});
    let srv = hook_server(always(200, &answer.to_string())).await;
    let v = Validator::http("ent", settings(&srv.url, Duration::ZERO, OnError::Deny));
    let r = Req::new("t1", token(TID, later()));
    let claim_headers: HashSet<HeaderName> = [HeaderName::from_static("x-custom-claim")].into();
    let headers = v
        .check_request_with(&r.hook(), &claim_headers, &Metrics::new())
        .await
        .expect("allowed");
    assert_eq!(
        headers,
        vec![(
            HeaderName::from_static("x-plan"),
            HeaderValue::from_static("gold")
        )]
    );
}

#[tokio::test]
async fn the_hook_body_carries_the_request_facts_and_never_the_token() {
    let srv = hook_server(always(200, r#"{"allow": true}"#)).await;
    let v = Validator::http("ent", settings(&srv.url, Duration::ZERO, OnError::Deny));
    let mut r = Req::new("raw-token-text", token(TID, later()));
    r.headers.insert(
        "authorization",
        HeaderValue::from_static("Bearer raw-token-text"),
    );
    v.check_request(&r.hook(), &Metrics::new())
        .await
        .expect("allowed");
    let bodies = srv.bodies();
    let body = bodies.first().expect("one call");
    assert_eq!(body["stage"], "request");
    assert_eq!(body["route"], "orders");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["path"], "/orders/1");
    assert_eq!(body["normalized_path"], "/orders/1");
    assert_eq!(body["host"], "api.contoso.com");
    assert_eq!(body["tenant_id"], TID);
    assert_eq!(body["client_id"], "0f8a6a48-2c1b-4c57-9d4a-8f0c2b8c1d11");
    assert_eq!(body["claims"]["roles"], json!(["Orders.Read"]));
    assert!(!body.to_string().contains("raw-token-text"));
}

#[tokio::test]
async fn failures_follow_on_error() {
    let dead = {
        // A port that was just free: nothing listens there.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        format!("http://{}/hook", l.local_addr().expect("addr"))
    };
    let cases: [(&str, Reply); 4] = [
        (
            "a 500 answer",
            Reply::Json(500, r#"{"allow": true}"#.into()),
        ),
        ("a body that is not JSON", Reply::Json(200, "allow".into())),
        (
            "JSON without allow",
            Reply::Json(200, r#"{"message": "x"}"#.into()),
        ),
        ("no answer within the timeout", Reply::Hang),
    ];
    for (case, reply) in cases {
        let srv = hook_server(move |_, _| reply.clone()).await;
        for (on_error, want) in [
            (OnError::Deny, Some(Reason::HookUnavailable)),
            (OnError::Allow, None),
        ] {
            let mut s = settings(&srv.url, Duration::from_secs(60), on_error);
            s.timeout = Duration::from_millis(200);
            let v = Validator::http("ent", s);
            let m = Metrics::new();
            let r = Req::new("t1", token(TID, later()));
            let got = v.check_request(&r.hook(), &m).await;
            assert_eq!(
                got.as_ref().err().map(|e| e.reason),
                want,
                "{case} with {on_error:?}"
            );
            if let Err(e) = got {
                assert!(
                    e.message.contains("ent"),
                    "{case}: the message names the validator"
                );
            }
            assert_eq!(counted(&m, "ent", "error"), 1, "{case} with {on_error:?}");
        }
    }
    for (on_error, want) in [
        (OnError::Deny, Some(Reason::HookUnavailable)),
        (OnError::Allow, None),
    ] {
        let v = Validator::http("ent", settings(&dead, Duration::ZERO, on_error));
        let r = Req::new("t1", token(TID, later()));
        let got = v.check_request(&r.hook(), &Metrics::new()).await;
        assert_eq!(
            got.err().map(|e| e.reason),
            want,
            "connection refused with {on_error:?}"
        );
    }
}

#[tokio::test]
async fn many_requests_with_one_token_make_one_call_while_cached() {
    let srv = hook_server(always(
        200,
        r#"{"allow": true, "headers": {"x-plan": "gold"}}"#,
    ))
    .await;
    let v = Validator::http(
        "ent",
        settings(&srv.url, Duration::from_secs(60), OnError::Deny),
    );
    let m = Metrics::new();
    let r = Req::new("t1", token(TID, later()));
    for _ in 0..5 {
        let h = v.check_request(&r.hook(), &m).await.expect("allowed");
        assert_eq!(h.len(), 1, "cached decisions keep their headers");
    }
    assert_eq!(srv.calls(), 1);
    assert_eq!(counted(&m, "ent", "allow"), 1);
    assert_eq!(counted(&m, "ent", "cached"), 4);
    // Another path, or another token, is another decision.
    let mut other_path = Req::new("t1", token(TID, later()));
    other_path.path = "/orders/2".into();
    v.check_request(&other_path.hook(), &m)
        .await
        .expect("allowed");
    v.check_request(&Req::new("t2", token(TID, later())).hook(), &m)
        .await
        .expect("allowed");
    assert_eq!(srv.calls(), 3);
}

#[tokio::test]
async fn denies_are_cached_like_allows() {
    let srv = hook_server(always(200, r#"{"allow": false, "message": "no"}"#)).await;
    let v = Validator::http(
        "ent",
        settings(&srv.url, Duration::from_secs(60), OnError::Deny),
    );
    let r = Req::new("t1", token(TID, later()));
    for _ in 0..3 {
        let e = v
            .check_request(&r.hook(), &Metrics::new())
            .await
            .expect_err("denied");
        assert_eq!(e.reason, Reason::HookDenied);
    }
    assert_eq!(srv.calls(), 1);
}

#[tokio::test]
async fn a_zero_cache_ttl_calls_the_hook_every_time() {
    let srv = hook_server(always(200, r#"{"allow": true}"#)).await;
    let v = Validator::http("ent", settings(&srv.url, Duration::ZERO, OnError::Deny));
    let r = Req::new("t1", token(TID, later()));
    for _ in 0..4 {
        v.check_request(&r.hook(), &Metrics::new())
            .await
            .expect("allowed");
    }
    assert_eq!(srv.calls(), 4);
}

#[tokio::test]
async fn errors_are_not_cached() {
    let srv = hook_server(|n, _| {
        if n == 0 {
            Reply::Json(500, String::new())
        } else {
            Reply::Json(200, r#"{"allow": true}"#.into())
        }
    })
    .await;
    let v = Validator::http(
        "ent",
        settings(&srv.url, Duration::from_secs(60), OnError::Deny),
    );
    let r = Req::new("t1", token(TID, later()));
    let first = v.check_request(&r.hook(), &Metrics::new()).await;
    assert_eq!(first.err().map(|e| e.reason), Some(Reason::HookUnavailable));
    v.check_request(&r.hook(), &Metrics::new())
        .await
        .expect("allowed");
    v.check_request(&r.hook(), &Metrics::new())
        .await
        .expect("allowed");
    assert_eq!(srv.calls(), 2);
}

#[tokio::test]
async fn a_cached_decision_never_outlives_the_token() {
    let srv = hook_server(always(200, r#"{"allow": true}"#)).await;
    let v = Validator::http(
        "ent",
        settings(&srv.url, Duration::from_secs(60), OnError::Deny),
    );
    // Expired a few seconds ago, still accepted within clock skew: nothing may be reused.
    let r = Req::new("t1", token(TID, crate::clock::unix_now() - 5));
    for _ in 0..3 {
        v.check_request(&r.hook(), &Metrics::new())
            .await
            .expect("allowed");
    }
    assert_eq!(srv.calls(), 3);
}

#[tokio::test]
async fn concurrent_misses_for_one_key_make_one_call() {
    let srv = hook_server(always(200, r#"{"allow": true}"#)).await;
    let v = Arc::new(Validator::http(
        "ent",
        settings(&srv.url, Duration::from_secs(60), OnError::Deny),
    ));
    let r = Arc::new(Req::new("t1", token(TID, later())));
    let m = Arc::new(Metrics::new());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (v, r, m) = (v.clone(), r.clone(), m.clone());
        tasks.push(tokio::spawn(async move {
            v.check_request(&r.hook(), &m).await.map(|_| ())
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("allowed");
    }
    assert_eq!(srv.calls(), 1);
    assert_eq!(
        counted(&m, "ent", "allow") + counted(&m, "ent", "cached"),
        20
    );
}

#[tokio::test]
async fn the_tenant_stage_makes_one_call_per_tenant() {
    let other = "11111111-2222-3333-4444-555555555555";
    let srv = hook_server(|_, body| {
        let allowed = body["tenant_id"] == TID;
        Reply::Json(
            200,
            json!({"allow": allowed, "message": "tenant not onboarded"}).to_string(),
        )
    })
    .await;
    let v = Validator::http(
        "registry",
        settings(&srv.url, Duration::from_secs(60), OnError::Deny),
    );
    let m = Metrics::new();
    for _ in 0..3 {
        v.check_tenant(TID, &format!("https://sts.windows.net/{TID}/"), &m)
            .await
            .expect("allowed");
        let e = v
            .check_tenant(other, "https://sts.windows.net/x/", &m)
            .await
            .expect_err("denied");
        assert_eq!(e.reason, Reason::TenantNotAllowed);
        assert_eq!(e.message, "tenant not onboarded");
    }
    assert_eq!(srv.calls(), 2);
    let bodies = srv.bodies();
    assert_eq!(
        bodies[0],
        json!({"stage": "tenant", "tenant_id": TID, "issuer": format!("https://sts.windows.net/{TID}/")})
    );
    assert_eq!(counted(&m, "registry", "cached"), 4);
}

#[tokio::test]
async fn a_failing_tenant_hook_follows_on_error() {
    let srv = hook_server(always(503, "")).await;
    for (on_error, want) in [
        (OnError::Deny, Some(Reason::HookUnavailable)),
        (OnError::Allow, None),
    ] {
        let v = Validator::http(
            "registry",
            settings(&srv.url, Duration::from_secs(60), on_error),
        );
        let got = v
            .check_tenant(TID, "https://sts.windows.net/x/", &Metrics::new())
            .await;
        assert_eq!(got.err().map(|e| e.reason), want, "{on_error:?}");
    }
}

#[tokio::test]
async fn a_hanging_hook_for_one_validator_does_not_delay_another() {
    let hanging = hook_server(|_, _| Reply::Hang).await;
    let fast = hook_server(always(200, r#"{"allow": true}"#)).await;
    let mut slow_settings = settings(&hanging.url, Duration::from_secs(60), OnError::Deny);
    slow_settings.timeout = Duration::from_secs(30);
    let a = Arc::new(Validator::http("a", slow_settings));
    let b = Validator::http(
        "b",
        settings(&fast.url, Duration::from_secs(60), OnError::Deny),
    );
    let m = Arc::new(Metrics::new());
    let r = Arc::new(Req::new("t1", token(TID, later())));
    let stuck = {
        let (a, r, m) = (a.clone(), r.clone(), m.clone());
        tokio::spawn(async move { a.check_request(&r.hook(), &m).await.map(|_| ()) })
    };
    // Wait until A's call is in flight at its hook.
    while hanging.calls() == 0 {
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(5), b.check_request(&r.hook(), &m)).await;
    assert!(matches!(got, Ok(Ok(_))), "B answered while A hangs");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!stuck.is_finished(), "A is still waiting for its hook");
    stuck.abort();
}

fn hook_request<'a>(
    r: &'a Req,
    route: &'a str,
    method: &'a str,
    path: &'a str,
    normalized_path: &'a str,
    host: &'a str,
) -> HookRequest<'a> {
    HookRequest {
        route,
        method,
        path,
        normalized_path,
        host,
        headers: &r.headers,
        token: &r.token,
        token_hash: &r.hash,
    }
}

#[test]
fn the_request_key_names_token_route_method_normalized_path_and_host() {
    let a = Req::new("t1", token(TID, later()));
    let b = Req::new("t2", token(TID, later()));
    let base = request_key(&hook_request(
        &a,
        "orders",
        "GET",
        "/Orders//1",
        "/orders/1",
        "h",
    ));
    // (case, key, same decision as `base`)
    let table = [
        (
            "another raw path with the same normalized path",
            request_key(&hook_request(
                &a,
                "orders",
                "GET",
                "/orders/1",
                "/orders/1",
                "h",
            )),
            true,
        ),
        (
            "another token",
            request_key(&hook_request(
                &b,
                "orders",
                "GET",
                "/Orders//1",
                "/orders/1",
                "h",
            )),
            false,
        ),
        (
            "another route",
            request_key(&hook_request(
                &a,
                "admin",
                "GET",
                "/Orders//1",
                "/orders/1",
                "h",
            )),
            false,
        ),
        (
            "another method",
            request_key(&hook_request(
                &a,
                "orders",
                "POST",
                "/Orders//1",
                "/orders/1",
                "h",
            )),
            false,
        ),
        (
            "another normalized path",
            request_key(&hook_request(
                &a,
                "orders",
                "GET",
                "/Orders//2",
                "/orders/2",
                "h",
            )),
            false,
        ),
        (
            "another host",
            request_key(&hook_request(
                &a,
                "orders",
                "GET",
                "/Orders//1",
                "/orders/1",
                "h2",
            )),
            false,
        ),
        (
            "parts that concatenate alike",
            request_key(&hook_request(
                &a,
                "order",
                "sGET",
                "/Orders//1",
                "/orders/1",
                "h",
            )),
            false,
        ),
    ];
    for (case, key, same) in table {
        assert_eq!(key == base, same, "{case}");
    }
}

#[test]
fn an_entry_weighs_its_headers_and_message_but_not_the_path() {
    let heavy = Cached {
        decision: Decision::Allow(vec![(
            HeaderName::from_static("x-plan"),
            HeaderValue::from_str(&"g".repeat(60_000)).expect("value"),
        )]),
        expires_at_ms: 0,
    };
    let light = Cached {
        decision: Decision::Deny("no".into()),
        expires_at_ms: 0,
    };
    let bytes = REQUEST_CACHE_BYTES;
    let entries = REQUEST_CACHE_CAPACITY;
    assert!(weight(32, &heavy, bytes, entries) > 60_000);
    assert_eq!(
        u64::from(weight(32, &light, bytes, entries)),
        bytes / entries,
        "a small entry weighs the per-entry floor, which bounds the entry count"
    );
    // A 1 MB path does not reach the key.
    let r = Req::new("t1", token(TID, later()));
    let long = format!("/{}", "a".repeat(1 << 20));
    let key = request_key(&hook_request(&r, "orders", "GET", &long, &long, "h"));
    assert_eq!(key.key_bytes(), 32);
}

#[tokio::test]
async fn a_decision_cache_stays_within_its_bytes_and_its_entries() {
    let bytes = 1_000_000;
    let entries = 100;
    let cache: DecisionCache<RequestKey> = build_cache(entries, bytes, Duration::from_secs(60));
    let r = Req::new("t1", token(TID, later()));
    let value = HeaderValue::from_str(&"g".repeat(60_000)).expect("value");
    for i in 0..200u32 {
        let path = format!("/orders/{i}/{}", "p".repeat(1 << 16));
        let key = request_key(&hook_request(&r, "orders", "GET", &path, &path, "h"));
        let decision = if i % 2 == 0 {
            Decision::Allow(vec![(HeaderName::from_static("x-plan"), value.clone())])
        } else {
            Decision::Deny("no".into())
        };
        cache
            .entries
            .insert(
                key,
                Arc::new(Cached {
                    decision,
                    expires_at_ms: i64::MAX,
                }),
            )
            .await;
        cache.entries.run_pending_tasks().await;
    }
    assert!(
        cache.entries.weighted_size() <= bytes,
        "weighted size {} over {bytes}",
        cache.entries.weighted_size()
    );
    assert!(cache.entry_count() <= entries, "{}", cache.entry_count());
}
