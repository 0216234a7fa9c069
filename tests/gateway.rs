//! End-to-end: the real gateway binary, the in-crate AAD emulator and an echo upstream on
//! loopback. Covers every reason code of the core pipeline, attacks, key rotation, JWKS outages,
//! header hygiene and streaming.

mod common;

use aadgate_emulator::{SigningKey, TokenSpec};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use serde_json::{json, Value};

fn routes() -> &'static str {
    r#"
[clients]
allow = ["0f8a6a48-2c1b-4c57-9d4a-8f0c2b8c1d11", "aaaaaaaa-0000-4000-8000-000000000001"]

[[routes]]
name = "orders"
path_prefix = "/orders/"
upstream = "{echo}"
roles_any = ["Orders.Read"]

[[routes]]
name = "user-only"
path_prefix = "/profile/"
upstream = "{echo}"
token_kind = "user"
scopes_any = ["profile.read"]

[[routes]]
name = "app-only"
path_prefix = "/jobs/"
upstream = "{echo}"
token_kind = "app"
min_auth_strength = 2

[[routes]]
name = "strict-client"
path_prefix = "/strict/"
upstream = "{echo}"
clients = ["aaaaaaaa-0000-4000-8000-000000000001"]

[[routes]]
name = "public"
path_prefix = "/public/"
upstream = "{echo}"
auth = "anonymous"
pass_authorization = false

[[routes]]
name = "any"
path_prefix = "/any/"
upstream = "{echo}"
pass_authorization = false

[[routes]]
name = "files"
path_prefix = "/files/"
strip_prefix = "/files"
upstream = "{echo}"
roles_any = ["Orders.Read"]

[[routes]]
name = "dead"
path_prefix = "/dead/"
upstream = "http://127.0.0.1:1"
"#
}

fn config() -> String {
    base_config(
        "min_refetch_interval = \"2s\"",
        &format!(
            "mode = \"allow_list\"\nallow = [\"{TENANT_A}\", \"{TENANT_B}\"]\ndeny = [\"{TENANT_C}\"]\n"
        ),
    ) + routes()
}

fn app(tid: &str) -> TokenSpec {
    TokenSpec::app(tid, AUD, &["Orders.Read"])
}

struct Answer {
    status: u16,
    reason: Option<String>,
    challenge: Option<String>,
    body: Value,
}

async fn call(gw: &Gateway, path: &str, token: Option<&str>) -> Answer {
    let mut req = client().get(gw.url(path));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    answer(req.send().await.expect("response")).await
}

async fn answer(r: reqwest::Response) -> Answer {
    let status = r.status().as_u16();
    let h = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let reason = h("x-aadgate-reason");
    let challenge = h("www-authenticate");
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Answer {
        status,
        reason,
        challenge,
        body,
    }
}

fn assert_rejected(a: &Answer, status: u16, reason: &str) {
    assert_eq!(a.status, status, "status for {reason}: {:?}", a.body);
    assert_eq!(a.reason.as_deref(), Some(reason));
    assert_eq!(a.body["reason"], reason);
    assert!(a.body["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(a.body["request_id"].as_str().is_some_and(|m| !m.is_empty()));
    let want_error = match (status, reason) {
        (400, _) => "invalid_request",
        (404, _) => "not_found",
        (401, "missing_token") => "unauthorized",
        (401, _) => "invalid_token",
        (403, "missing_role" | "missing_scope") => "insufficient_scope",
        (403, _) => "access_denied",
        (502, _) => "bad_gateway",
        (503, _) => "temporarily_unavailable",
        _ => "?",
    };
    assert_eq!(a.body["error"], want_error, "{reason}");
    match (status, reason) {
        (401, "missing_token") => {
            assert_eq!(a.challenge.as_deref(), Some("Bearer realm=\"aadgate\""))
        }
        (401, _) => assert!(
            a.challenge.as_deref().is_some_and(|c| c.starts_with(
                "Bearer realm=\"aadgate\", error=\"invalid_token\", error_description=\""
            )),
            "{:?}",
            a.challenge
        ),
        (403, "missing_role" | "missing_scope") => assert!(a
            .challenge
            .as_deref()
            .is_some_and(|c| c.contains("error=\"insufficient_scope\""))),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_core_reason_code_is_answered_with_its_status_body_and_challenge() {
    let w = World::start().await;
    let gw = Gateway::start(&config(), &w).await;
    gw.wait_ready().await;
    let idp = &w.idp;

    let ok = call(&gw, "/orders/1", Some(&idp.mint(&app(TENANT_A)))).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);

    for target in [
        "/orders/../x",
        "/orders/%2e%2e/x",
        "/orders/a%2Fb",
        "/orders/a%5cb",
        "/orders/a%00b",
        "/orders/./x",
    ] {
        assert_eq!(
            raw_get(gw.addr, target).await,
            (400, Some("bad_request".to_string())),
            "{target}"
        );
    }
    // Origin form goes upstream as received; absolute form is rewritten to origin form.
    for target in [
        "/public/a/b?q=1&r=%20",
        "http://localhost/public/a/b?q=1&r=%20",
    ] {
        assert_eq!(raw_get(gw.addr, target).await.0, 200, "{target}");
        let seen = w.echo.last_request().expect("upstream saw the request");
        assert_eq!(seen.path, "/public/a/b", "{target}");
        assert_eq!(seen.query.as_deref(), Some("q=1&r=%20"), "{target}");
    }
    let a = answer(
        client()
            .get(gw.url("/orders/%2F"))
            .send()
            .await
            .expect("response"),
    )
    .await;
    assert_rejected(&a, 400, "bad_request");
    assert_rejected(&call(&gw, "/nowhere", None).await, 404, "route_not_found");
    assert_rejected(&call(&gw, "/orders/1", None).await, 401, "missing_token");
    assert_rejected(
        &call(&gw, "/orders/1", Some("not-a-jwt")).await,
        401,
        "malformed_token",
    );
    let none = with_header(
        &idp.mint(&app(TENANT_A)),
        json!({"alg": "none", "typ": "JWT"}),
    );
    assert_rejected(
        &call(&gw, "/orders/1", Some(&none)).await,
        401,
        "unsupported_alg",
    );
    let unknown = idp.mint(&app(TENANT_A).with_header("kid", json!("no-such-kid")));
    assert_rejected(
        &call(&gw, "/orders/1", Some(&unknown)).await,
        401,
        "unknown_kid",
    );
    let forged = tamper_claims(&idp.mint(&app(TENANT_A)), |c| {
        c["roles"] = json!(["Orders.Admin"])
    });
    assert_rejected(
        &call(&gw, "/orders/1", Some(&forged)).await,
        401,
        "bad_signature",
    );
    assert_rejected(
        &call(
            &gw,
            "/orders/1",
            Some(&idp.mint(&app(TENANT_A).with_lifetime(-3600))),
        )
        .await,
        401,
        "expired",
    );
    assert_rejected(
        &call(
            &gw,
            "/orders/1",
            Some(&idp.mint(&app(TENANT_A).with_not_before_offset(3600))),
        )
        .await,
        401,
        "not_yet_valid",
    );
    let wrong_aud = idp.mint(&TokenSpec::app(TENANT_A, "api://other", &["Orders.Read"]));
    assert_rejected(
        &call(&gw, "/orders/1", Some(&wrong_aud)).await,
        401,
        "bad_audience",
    );
    let bad_iss = idp.mint(
        &app(TENANT_A).with_claim("iss", json!(format!("https://sts.windows.net/{TENANT_B}/"))),
    );
    assert_rejected(
        &call(&gw, "/orders/1", Some(&bad_iss)).await,
        401,
        "bad_issuer",
    );
    let other_tenant = "44444444-4444-4444-8444-444444444444";
    assert_rejected(
        &call(&gw, "/orders/1", Some(&idp.mint(&app(other_tenant)))).await,
        401,
        "tenant_not_allowed",
    );
    assert_rejected(
        &call(&gw, "/orders/1", Some(&idp.mint(&app(TENANT_C)))).await,
        401,
        "tenant_denied",
    );
    let stranger = idp.mint(&app(TENANT_A).with_appid("99999999-9999-4999-8999-999999999999"));
    assert_rejected(
        &call(&gw, "/orders/1", Some(&stranger)).await,
        403,
        "client_not_allowed",
    );
    assert_rejected(
        &call(&gw, "/strict/1", Some(&idp.mint(&app(TENANT_A)))).await,
        403,
        "client_not_allowed",
    );
    let secret_app =
        idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Jobs.Run"]).with_auth_strength("1"));
    assert_rejected(
        &call(&gw, "/jobs/1", Some(&secret_app)).await,
        403,
        "weak_client_auth",
    );
    let user = idp.mint(&TokenSpec::user(TENANT_A, AUD, "profile.read"));
    let strong_user =
        idp.mint(&TokenSpec::user(TENANT_A, AUD, "profile.read").with_auth_strength("2"));
    assert_rejected(
        &call(&gw, "/jobs/1", Some(&strong_user)).await,
        403,
        "wrong_token_kind",
    );
    assert_rejected(
        &call(&gw, "/profile/me", Some(&idp.mint(&app(TENANT_A)))).await,
        403,
        "wrong_token_kind",
    );
    assert_rejected(
        &call(
            &gw,
            "/orders/1",
            Some(&idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Other"]))),
        )
        .await,
        403,
        "missing_role",
    );
    let no_roles = idp.mint(&TokenSpec::app(TENANT_A, AUD, &[]).without_claim("roles"));
    let a = call(&gw, "/orders/1", Some(&no_roles)).await;
    assert_rejected(&a, 403, "missing_role");
    assert!(a.body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("no 'roles' claim"));
    assert_rejected(
        &call(
            &gw,
            "/profile/me",
            Some(&idp.mint(&TokenSpec::user(TENANT_A, AUD, "other.scope"))),
        )
        .await,
        403,
        "missing_scope",
    );
    assert_rejected(
        &call(&gw, "/dead/1", Some(&idp.mint(&app(TENANT_A)))).await,
        502,
        "upstream_unavailable",
    );
    assert_eq!(call(&gw, "/profile/me", Some(&user)).await.status, 200);
    assert_eq!(call(&gw, "/public/x", None).await.status, 200);

    // The token never appears in a response or a log line.
    let logs = gw.logs();
    assert!(
        !logs.contains(&user) && !logs.contains(&no_roles),
        "token leaked into logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_tokens_from_several_tenants_are_accepted_with_identity_headers() {
    let w = World::start().await;
    let gw = Gateway::start(&config(), &w).await;
    gw.wait_ready().await;
    for (tid, ver) in [(TENANT_A, 1), (TENANT_A, 2), (TENANT_B, 1), (TENANT_B, 2)] {
        let token =
            w.idp.mint(
                &app(tid)
                    .with_ver(ver)
                    .with_aud(if ver == 1 { AUD_ID } else { AUD }),
            );
        let a = call(&gw, "/orders/42?x=1", Some(&token)).await;
        assert_eq!(a.status, 200, "{tid} v{ver}: {:?}", a.body);
        let seen = w.echo.last_request().expect("upstream saw the request");
        assert_eq!(seen.path, "/orders/42");
        assert_eq!(seen.query.as_deref(), Some("x=1"));
        assert_eq!(seen.header("x-auth-tenant-id"), Some(tid));
        assert_eq!(seen.header("x-auth-client-id"), Some(CLIENT));
        assert_eq!(seen.header("x-auth-roles"), Some("Orders.Read"));
        assert_eq!(seen.header("x-auth-token-kind"), Some("app"));
        assert!(
            seen.header("authorization").is_some(),
            "pass_authorization defaults to true"
        );
    }
    let user = w.idp.mint(
        &TokenSpec::user(TENANT_B, AUD, "profile.read profile.write").with_upn("ada@contoso.com"),
    );
    assert_eq!(call(&gw, "/profile/x", Some(&user)).await.status, 200);
    let seen = w.echo.last_request().expect("request");
    assert_eq!(
        seen.header("x-auth-scopes"),
        Some("profile.read,profile.write")
    );
    assert_eq!(seen.header("x-auth-upn"), Some("ada@contoso.com"));
    assert_eq!(seen.header("x-auth-token-kind"), Some("user"));
    assert_eq!(
        seen.header("x-auth-roles"),
        None,
        "absent claims give no header"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attack_tokens_are_refused() {
    let w = World::start().await;
    let gw = Gateway::start(&config(), &w).await;
    gw.wait_ready().await;
    let good = w.idp.mint(&app(TENANT_A));
    let kid = w.idp.signing_key().kid().to_string();
    let parts: Vec<&str> = good.split('.').collect();

    // alg none / None / NONE with and without the signature.
    for alg in ["none", "None", "NONE"] {
        let t = with_header(&good, json!({"alg": alg, "kid": kid}));
        assert_rejected(
            &call(&gw, "/orders/1", Some(&t)).await,
            401,
            "unsupported_alg",
        );
        let stripped = format!("{}.{}.", t.split('.').next().unwrap_or_default(), parts[1]);
        assert_rejected(
            &call(&gw, "/orders/1", Some(&stripped)).await,
            401,
            "unsupported_alg",
        );
    }
    // HS256 keyed with the RSA public key (the classic algorithm confusion).
    let jwk = w.idp.signing_key().jwk(None);
    let hs_header = URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": kid}).to_string());
    let input = format!("{hs_header}.{}", parts[1]);
    let hkey = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, jwk.to_string().as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(aws_lc_rs::hmac::sign(&hkey, input.as_bytes()).as_ref());
    assert_rejected(
        &call(&gw, "/orders/1", Some(&format!("{input}.{sig}"))).await,
        401,
        "unsupported_alg",
    );
    // Stripped signature with the real header.
    assert_rejected(
        &call(
            &gw,
            "/orders/1",
            Some(&format!("{}.{}.", parts[0], parts[1])),
        )
        .await,
        401,
        "bad_signature",
    );
    // Truncated signature.
    assert_rejected(
        &call(
            &gw,
            "/orders/1",
            Some(&format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20])),
        )
        .await,
        401,
        "bad_signature",
    );
    // jku / x5u / jwk / x5c naming an attacker key, signed by that key, kid unknown to the gateway.
    let attacker = SigningKey::generate().expect("key");
    for (name, value) in [
        ("jku", json!("https://attacker.example/keys")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        ("jwk", attacker.jwk(None)),
        ("x5c", attacker.jwk(None)["x5c"].clone()),
    ] {
        let t = attacker.mint(&app(TENANT_A).with_header(name, value));
        assert_rejected(&call(&gw, "/orders/1", Some(&t)).await, 401, "unknown_kid");
        // Same, but claiming the trusted kid: the signature does not verify with the real key.
        let t = attacker.mint(
            &app(TENANT_A)
                .with_header(name, attacker.jwk(None))
                .with_header("kid", json!(kid)),
        );
        assert_rejected(
            &call(&gw, "/orders/1", Some(&t)).await,
            401,
            "bad_signature",
        );
    }
    // Oversized token.
    let big = format!("{}.{}.{}", parts[0], "A".repeat(20_000), parts[2]);
    assert_rejected(
        &call(&gw, "/orders/1", Some(&big)).await,
        401,
        "malformed_token",
    );
    // Bad base64 and bad JSON.
    assert_rejected(
        &call(
            &gw,
            "/orders/1",
            Some(&format!("{}.!!!.{}", parts[0], parts[2])),
        )
        .await,
        401,
        "malformed_token",
    );
    assert_rejected(
        &call(
            &gw,
            "/orders/1",
            Some(&format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode("{nope"),
                parts[2]
            )),
        )
        .await,
        401,
        "malformed_token",
    );
    // Two Authorization headers.
    let r = client()
        .get(gw.url("/orders/1"))
        .header("authorization", format!("Bearer {good}"))
        .header("authorization", format!("Bearer {good}"))
        .send()
        .await
        .expect("response");
    assert_rejected(&answer(r).await, 401, "malformed_token");
    // A Microsoft Graph token (nonce header) is explained.
    let graph = with_header(&good, json!({"alg": "RS256", "kid": kid, "nonce": "abc"}));
    let a = call(&gw, "/orders/1", Some(&graph)).await;
    assert_rejected(&a, 401, "bad_signature");
    assert!(a.body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("Microsoft Graph"));
    // The real token still works.
    assert_eq!(call(&gw, "/orders/1", Some(&good)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_is_accepted_after_one_refetch() {
    let w = World::start().await;
    let gw = Gateway::start(&config(), &w).await;
    gw.wait_ready().await;
    assert_eq!(
        call(&gw, "/orders/1", Some(&w.idp.mint(&app(TENANT_A))))
            .await
            .status,
        200
    );
    let before = w.idp.jwks_fetch_count();
    // Let the refetch window (2 s) pass; tokenless calls do not touch keys.
    wait_refetch_window(&gw).await;
    w.idp.rotate_key(true).expect("rotate");
    let new_token = w.idp.mint(&app(TENANT_A));
    assert_eq!(call(&gw, "/orders/1", Some(&new_token)).await.status, 200);
    assert_eq!(w.idp.jwks_fetch_count(), before + 1, "exactly one refetch");
    assert_eq!(call(&gw, "/orders/2", Some(&new_token)).await.status, 200);
    assert_eq!(w.idp.jwks_fetch_count(), before + 1);
}

/// Waits until the gateway's kid-miss refetch window has passed, measured by the metrics'
/// last-success timestamp rather than a guess.
async fn wait_refetch_window(gw: &Gateway) {
    let m = gw.metrics().await;
    let last = sample(&m, "aadgate_jwks_last_success_timestamp_seconds", &[]).unwrap_or(0.0);
    let until = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(last + 3.0);
    if let Ok(left) = until.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_makes_at_most_one_fetch_per_interval() {
    let w = World::start().await;
    let gw = Gateway::start(&config(), &w).await;
    gw.wait_ready().await;
    wait_refetch_window(&gw).await;
    let before = w.idp.jwks_fetch_count();
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let t = w
            .idp
            .mint(&app(TENANT_A).with_header("kid", json!(format!("flood-{i}"))));
        let url = gw.url("/orders/1");
        tasks.push(tokio::spawn(async move {
            client()
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 401);
    }
    let fetched = w.idp.jwks_fetch_count() - before;
    // min_refetch_interval is 2 s: one fetch per started interval at most.
    let allowed = 1 + started.elapsed().as_secs() / 2;
    assert!(fetched >= 1, "the first unknown kid triggers a refetch");
    assert!(
        fetched <= allowed,
        "{fetched} fetches in {:?} for a flood of unknown kids",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_first_requests_make_one_jwks_fetch() {
    let w = World::start().await;
    let gw = Gateway::start(&config(), &w).await;
    let token = w.idp.mint(&app(TENANT_A));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = gw.url("/orders/1");
        let t = token.clone();
        tasks.push(tokio::spawn(async move {
            client()
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), 200);
    }
    assert_eq!(w.idp.jwks_fetch_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_down_at_start_gives_503_then_recovers() {
    let w = World::start().await;
    w.idp.set_keys_available(false);
    let gw = Gateway::start(&config(), &w).await;
    let token = w.idp.mint(&app(TENANT_A));
    // Wait until the first attempt has failed (it is counted), then expect 503s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while sample(
        &gw.metrics().await,
        "aadgate_jwks_fetch_total",
        &["result=\"error\""],
    )
    .unwrap_or(0.0)
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no failed fetch counted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ready = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    assert_rejected(
        &call(&gw, "/orders/1", Some(&token)).await,
        503,
        "keys_unavailable",
    );
    w.idp.set_keys_available(true);
    gw.wait_ready().await;
    assert_eq!(call(&gw, "/orders/1", Some(&token)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_down_after_load_keeps_known_kids_working() {
    let w = World::start().await;
    let gw = Gateway::start(&config(), &w).await;
    gw.wait_ready().await;
    w.idp.set_keys_available(false);
    wait_refetch_window(&gw).await;
    // An unknown kid triggers a refetch that fails...
    let unknown = w
        .idp
        .mint(&app(TENANT_A).with_header("kid", json!("rotated-away")));
    assert_rejected(
        &call(&gw, "/orders/1", Some(&unknown)).await,
        401,
        "unknown_kid",
    );
    // ...and the known key keeps working.
    assert_eq!(
        call(&gw, "/orders/1", Some(&w.idp.mint(&app(TENANT_A))))
            .await
            .status,
        200
    );
    let ready = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let w = World::start().await;
    let gw = Gateway::start(&config(), &w).await;
    gw.wait_ready().await;
    let token = w.idp.mint(&app(TENANT_A));
    for (path, tok) in [("/orders/1", Some(token.as_str())), ("/public/1", None)] {
        let mut req = client()
            .get(gw.url(path))
            .header("x-auth-tenant-id", "spoofed")
            .header("X-Auth-Roles", "Admin")
            .header("x-auth-anything", "spoofed");
        if let Some(t) = tok {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await.expect("response").status(), 200);
        let seen = w.echo.last_request().expect("request");
        for (name, value) in &seen.headers {
            assert!(
                !(name.starts_with("x-auth-") && value.contains("poof")) && value != "Admin",
                "{name}: {value} reached the upstream"
            );
        }
        if tok.is_none() {
            assert!(seen.headers.iter().all(|(n, _)| !n.starts_with("x-auth-")));
            assert!(seen.header("authorization").is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_both_ways() {
    let w = World::start().await;
    let gw = Gateway::start(&config(), &w).await;
    gw.wait_ready().await;
    let token = w.idp.mint(&app(TENANT_A));
    let body: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &body);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let r = client()
        .post(gw.url("/orders/upload"))
        .bearer_auth(&token)
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200);
    let echoed: Value = r.json().await.expect("json");
    assert_eq!(echoed["body_bytes"], 10 * 1024 * 1024);
    assert_eq!(echoed["body_sha256"], hex);

    let n: u64 = 10 * 1024 * 1024 + 7;
    let r = client()
        .get(gw.url(&format!("/files/download/{n}")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.expect("body");
    assert_eq!(got.len() as u64, n);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, b)| *b == aadgate_emulator::download_pattern_byte(i as u64)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_file_lets_the_gateway_start_while_the_identity_provider_is_down() {
    let w = World::start().await;
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let cache = cache_dir.path().join("jwks.json");
    let template = base_config(
        &format!("cache_file = \"{}\"", cache.display()),
        &format!("mode = \"allow_list\"\nallow = [\"{TENANT_A}\"]\n"),
    ) + routes();
    let token = w.idp.mint(&app(TENANT_A));
    {
        let gw = Gateway::start(&template, &w).await;
        gw.wait_ready().await;
        assert_eq!(call(&gw, "/orders/1", Some(&token)).await.status, 200);
    }
    assert!(cache.is_file(), "the last good JWKS was written");
    w.idp.set_keys_available(false);
    let gw = Gateway::start(&template, &w).await;
    gw.wait_ready().await;
    let ready = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    assert!(ready
        .text()
        .await
        .unwrap_or_default()
        .contains("cache_file"));
    assert_eq!(call(&gw, "/orders/1", Some(&token)).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_stops_answering_gives_502_after_the_read_timeout() {
    let w = World::start().await;
    let template = config().replace(
        "shutdown_grace = \"1s\"",
        "shutdown_grace = \"1s\"\nupstream_read_timeout = \"300ms\"",
    );
    let gw = Gateway::start(&template, &w).await;
    gw.wait_ready().await;
    let a = call(
        &gw,
        "/files/hold/never-released",
        Some(&w.idp.mint(&app(TENANT_A))),
    )
    .await;
    assert_rejected(&a, 502, "upstream_unavailable");
    let m = gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            "aadgate_requests_total",
            &[
                "reason=\"upstream_unavailable\"",
                "route=\"files\"",
                "status=\"502\""
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_serves_tls_when_configured() {
    let w = World::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
    std::fs::write(dir.path().join("gw.crt"), cert.pem()).expect("write");
    std::fs::write(dir.path().join("gw.key"), key.serialize_pem()).expect("write");
    let d = dir.path().display();
    let template = config().replace(
        "upgrade_sock = \"{dir}/upgrade.sock\"",
        &format!("upgrade_sock = \"{{dir}}/upgrade.sock\"\ntls = {{ cert = \"{d}/gw.crt\", key = \"{d}/gw.key\" }}"),
    );
    let gw = Gateway::start(&template, &w).await;
    gw.wait_ready().await;
    let tls_client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert.pem().as_bytes()).expect("cert")])
        .build()
        .expect("client");
    let url = format!("https://127.0.0.1:{}/orders/1", gw.addr.port());
    let r = tls_client
        .get(&url)
        .bearer_auth(w.idp.mint(&app(TENANT_A)))
        .send()
        .await
        .expect("TLS request");
    assert_eq!(r.status(), 200);
    let seen = w.echo.last_request().expect("request");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}
