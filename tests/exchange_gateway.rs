//! End-to-end: app-only token exchange through the real gateway, with the AAD emulator's token
//! endpoint and the mock Outlook / Graph API as the upstream.

mod common;

use aadgate_emulator::{AppRegistration, MockOutlook, MockOutlookHandle, SigningKey, TokenSpec};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use serde_json::Value;

const GATEWAY_APP: &str = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c";

struct Setup {
    w: World,
    outlook: MockOutlookHandle,
    gw: Gateway,
    certs: Vec<SigningKey>,
    _cert_dir: tempfile::TempDir,
}

async fn setup(extra_exchange: &str) -> Setup {
    let w = World::start().await;
    let outlook = MockOutlook::start("127.0.0.1:0".parse().expect("addr"), w.idp.clone())
        .await
        .expect("outlook");
    let cert_dir = tempfile::tempdir().expect("tempdir");
    let certs: Vec<SigningKey> = (0..2)
        .map(|_| SigningKey::generate().expect("key"))
        .collect();
    for (i, c) in certs.iter().enumerate() {
        std::fs::write(
            cert_dir.path().join(format!("c{i}.crt")),
            c.certificate_pem(),
        )
        .expect("write");
        std::fs::write(
            cert_dir.path().join(format!("c{i}.key")),
            c.private_key_pem(),
        )
        .expect("write");
    }
    let mut app = AppRegistration::new(GATEWAY_APP);
    for c in &certs {
        app = app.with_certificate(c);
    }
    w.idp.register_app(app).expect("register");
    w.idp
        .consent(TENANT_A, GATEWAY_APP, vec!["Mail.Read".into()]);
    w.idp
        .consent(TENANT_B, GATEWAY_APP, vec!["Mail.Read".into()]);
    w.idp.add_tenant(TENANT_C);
    let d = cert_dir.path().display();
    let template = base_config("", "mode = \"any\"\n")
        + &format!(
            r#"
[[routes]]
name = "outlook"
path_prefix = "/api/v2.0/"
upstream = "{outlook}"
exchange = "outlook"

[[routes]]
name = "graph"
path_prefix = "/v1.0/"
upstream = "{outlook}"
exchange = "graph"

[exchange.outlook]
client_id = "{GATEWAY_APP}"
token_endpoint = "{{idp}}/{{tenantid}}/oauth2/v2.0/token"
scope = "https://outlook.office365.com/.default"
certificates = [ {{ cert = "{d}/c0.crt", key = "{d}/c0.key" }}, {{ cert = "{d}/c1.crt", key = "{d}/c1.key" }} ]
rewrite_me = true
failure_cache = "30s"
{extra_exchange}

[exchange.graph]
client_id = "{GATEWAY_APP}"
token_endpoint = "{{idp}}/{{tenantid}}/oauth2/v2.0/token"
scope = "https://graph.microsoft.com/.default"
certificates = [ {{ cert = "{d}/c0.crt", key = "{d}/c0.key" }} ]
rewrite_me = true
"#,
            outlook = outlook.base_url(),
        );
    let gw = Gateway::start(&template, &w).await;
    gw.wait_ready().await;
    Setup {
        w,
        outlook,
        gw,
        certs,
        _cert_dir: cert_dir,
    }
}

async fn get(s: &Setup, path: &str, token: &str) -> reqwest::Response {
    client()
        .get(s.gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("response")
}

fn claims_of(bearer: &str) -> Value {
    let token = bearer.trim_start_matches("Bearer ");
    let payload = token.split('.').nth(1).unwrap_or_default();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap_or_default())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_from_two_tenants_get_app_only_tokens_of_their_own_tenant() {
    let s = setup("").await;
    for tid in [TENANT_A, TENANT_B] {
        let t = s.w.idp.mint(&TokenSpec::app(tid, AUD, &["Mail.Access"]));
        let r = get(&s, "/api/v2.0/users/ada@contoso.com/messages", &t).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
        let seen = s.outlook.requests().pop().expect("upstream request");
        let auth = seen.header("authorization").expect("authorization");
        assert_ne!(
            auth.trim_start_matches("Bearer "),
            t,
            "the caller's token is not forwarded"
        );
        let c = claims_of(auth);
        assert_eq!(c["tid"], tid);
        assert_eq!(c["appid"].as_str().or(c["azp"].as_str()), Some(GATEWAY_APP));
        assert_eq!(c["idtyp"], "app");
        let last = s.w.idp.token_requests().pop().expect("token request");
        assert_eq!(last.tenant, tid, "the tenant's own endpoint was used");
        assert_eq!(
            last.scope.as_deref(),
            Some("https://outlook.office365.com/.default")
        );
        // The four headers, well formed.
        let crid = seen.header("client-request-id").expect("client-request-id");
        assert!(uuid::Uuid::parse_str(crid).is_ok());
        assert_eq!(seen.header("return-client-request-id"), Some("true"));
        assert_eq!(
            seen.header("user-agent"),
            Some(concat!("aadgate/", env!("CARGO_PKG_VERSION")))
        );
        assert!(httpdate::parse_http_date(seen.header("date").expect("date")).is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_guid_client_request_id_is_kept() {
    let s = setup("").await;
    let t =
        s.w.idp
            .mint(&TokenSpec::app(TENANT_A, AUD, &["Mail.Access"]));
    let id = "9a1c6d2e-0b7f-4c3a-8e5d-1f2a3b4c5d6e";
    let r = client()
        .get(s.gw.url("/api/v2.0/users/x/messages"))
        .bearer_auth(&t)
        .header("client-request-id", id)
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
    assert_eq!(
        s.outlook
            .requests()
            .pop()
            .expect("req")
            .header("client-request-id"),
        Some(id)
    );
    let r = client()
        .get(s.gw.url("/api/v2.0/users/x/messages"))
        .bearer_auth(&t)
        .header("client-request-id", "not-a-guid")
        .send()
        .await
        .expect("r");
    assert_eq!(r.status(), 200);
    let got = s
        .outlook
        .requests()
        .pop()
        .expect("req")
        .header("client-request-id")
        .map(String::from)
        .unwrap_or_default();
    assert!(uuid::Uuid::parse_str(&got).is_ok() && got != "not-a-guid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_requests_make_one_token_request_and_fifty_concurrent_first_requests_make_one() {
    let s = setup("").await;
    let t =
        s.w.idp
            .mint(&TokenSpec::app(TENANT_B, AUD, &["Mail.Access"]));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let url = s.gw.url("/api/v2.0/users/x/messages");
        let t = t.clone();
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
    for task in tasks {
        assert_eq!(task.await.expect("task"), 200);
    }
    assert_eq!(s.w.idp.token_request_count(), 1);
    for _ in 0..100 {
        assert_eq!(
            get(&s, "/api/v2.0/users/x/messages", &t).await.status(),
            200
        );
    }
    assert_eq!(s.w.idp.token_request_count(), 1);
    let m = s.gw.metrics().await;
    assert_eq!(
        sample(
            &m,
            "aadgate_exchange_requests_total",
            &["exchange=\"outlook\"", "result=\"ok\""]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "aadgate_exchange_requests_total",
            &["exchange=\"outlook\"", "result=\"cached\""]
        ),
        Some(149.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconsented_tenant_is_refused_and_not_asked_again_within_failure_cache() {
    let s = setup("").await;
    let t =
        s.w.idp
            .mint(&TokenSpec::app(TENANT_C, AUD, &["Mail.Access"]));
    let r = get(&s, "/api/v2.0/users/x/messages", &t).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-aadgate-reason"], "tenant_not_consented");
    let body: Value = r.json().await.expect("json");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(msg.contains(TENANT_C) && msg.contains(GATEWAY_APP), "{msg}");
    let count = s.w.idp.token_request_count();
    let r = get(&s, "/api/v2.0/users/x/messages", &t).await;
    assert_eq!(r.headers()["x-aadgate-reason"], "tenant_not_consented");
    assert_eq!(s.w.idp.token_request_count(), count, "failure cached");
    assert_eq!(s.outlook.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_endpoint_gives_503_with_retry_after_and_no_retry_storm() {
    let s = setup("").await;
    s.w.idp.set_token_endpoint_failure(Some(503));
    let t =
        s.w.idp
            .mint(&TokenSpec::app(TENANT_A, AUD, &["Mail.Access"]));
    for _ in 0..5 {
        let r = get(&s, "/api/v2.0/users/x/messages", &t).await;
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["x-aadgate-reason"], "exchange_unavailable");
        let after: u64 = r.headers()["retry-after"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("seconds");
        assert!((1..=30).contains(&after), "{after}");
    }
    assert_eq!(
        s.w.idp.token_request_count(),
        1,
        "no new request before failure_cache ends"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_certificate_rolls_over_to_the_second() {
    let s = setup("").await;
    assert!(s
        .w
        .idp
        .remove_app_certificate(GATEWAY_APP, s.certs[0].thumbprint_hex()));
    let t =
        s.w.idp
            .mint(&TokenSpec::app(TENANT_A, AUD, &["Mail.Access"]));
    assert_eq!(
        get(&s, "/api/v2.0/users/x/messages", &t).await.status(),
        200
    );
    let reqs = s.w.idp.token_requests();
    assert_eq!(reqs.len(), 2, "one rejected, one retried");
    assert_eq!(
        reqs[1].assertion_thumbprint.as_deref(),
        Some(s.certs[1].thumbprint_hex())
    );
    // The next tenant's request is signed by the second certificate directly.
    let t =
        s.w.idp
            .mint(&TokenSpec::app(TENANT_B, AUD, &["Mail.Access"]));
    assert_eq!(
        get(&s, "/api/v2.0/users/x/messages", &t).await.status(),
        200
    );
    let reqs = s.w.idp.token_requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(
        reqs[2].assertion_thumbprint.as_deref(),
        Some(s.certs[1].thumbprint_hex())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_drops_the_cached_token() {
    let s = setup("").await;
    let t =
        s.w.idp
            .mint(&TokenSpec::app(TENANT_A, AUD, &["Mail.Access"]));
    assert_eq!(
        get(&s, "/api/v2.0/users/x/messages", &t).await.status(),
        200
    );
    assert_eq!(s.w.idp.token_request_count(), 1);
    s.outlook.fail_next_with_401(1);
    let r = get(&s, "/api/v2.0/users/x/messages", &t).await;
    assert_eq!(r.status(), 401, "passed through unchanged");
    assert!(
        r.headers().get("x-aadgate-reason").is_none(),
        "the upstream's answer, not the gateway's"
    );
    assert_eq!(
        get(&s, "/api/v2.0/users/x/messages", &t).await.status(),
        200
    );
    assert_eq!(
        s.w.idp.token_request_count(),
        2,
        "a fresh token was fetched after the 401"
    );
    assert!(
        s.gw.logs().contains("x_ms_diagnostics"),
        "the refusal was logged at warn"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_always_answers_401_costs_at_most_two_token_requests() {
    let s = setup("").await;
    let t =
        s.w.idp
            .mint(&TokenSpec::app(TENANT_A, AUD, &["Mail.Access"]));
    let n = 20;
    s.outlook.fail_next_with_401(n);
    for _ in 0..n {
        let r = get(&s, "/api/v2.0/users/x/messages", &t).await;
        assert_eq!(r.status(), 401, "passed through unchanged");
    }
    assert_eq!(
        s.outlook.request_count(),
        n,
        "every request reached the upstream"
    );
    assert_eq!(
        s.w.idp.token_request_count(),
        2,
        "one token, one fetch after the first purge, then no purge within purge_interval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_paths_are_rewritten_for_user_callers_and_refused_for_app_callers() {
    let s = setup("").await;
    let oid = "4a3c2b1d-6e5f-4a7b-8c9d-0e1f2a3b4c5d";
    let user =
        s.w.idp
            .mint(&TokenSpec::user(TENANT_A, AUD, "Mail.Read").with_oid(oid));
    for (path, want) in [
        (
            "/api/v2.0/me/messages?$top=5",
            format!("/api/v2.0/users/{oid}/messages"),
        ),
        ("/v1.0/me/messages", format!("/v1.0/users/{oid}/messages")),
    ] {
        let r = get(&s, path, &user).await;
        assert_eq!(
            r.status(),
            200,
            "{path}: {}",
            r.text().await.unwrap_or_default()
        );
        let seen = s.outlook.requests().pop().expect("request");
        assert_eq!(seen.path, want);
    }
    assert_eq!(
        s.outlook.requests().last().map(|r| r.query.clone()),
        Some(None)
    );
    let app =
        s.w.idp
            .mint(&TokenSpec::app(TENANT_A, AUD, &["Mail.Access"]));
    let r = get(&s, "/api/v2.0/me/messages", &app).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-aadgate-reason"], "wrong_token_kind");
    let body: Value = r.json().await.expect("json");
    assert!(body["message"]
        .as_str()
        .unwrap_or_default()
        .contains("user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_diagnostics_are_passed_through_unchanged() {
    let s = setup("").await;
    // Consent without Mail.Read: the mock Exchange refuses the app-only token with a diagnostic.
    s.w.idp.consent(TENANT_B, GATEWAY_APP, vec![]);
    let t =
        s.w.idp
            .mint(&TokenSpec::app(TENANT_B, AUD, &["Mail.Access"]));
    let r = get(&s, "/api/v2.0/users/x/messages", &t).await;
    assert!(r.status() == 401 || r.status() == 403, "{}", r.status());
    assert!(r.headers().get("x-ms-diagnostics").is_some());
    assert!(r.headers().get("x-aadgate-reason").is_none());
}
