//! End-to-end: continuous access evaluation (SPEC section 12) through the real gateway, the
//! emulator's token endpoint and its mock Microsoft Graph. With `client_capabilities = ["cp1"]`
//! the app-only tokens are CAE tokens; after a revocation event Graph answers a claims challenge,
//! the gateway drops the token at once (whatever `purge_interval` says), tells the caller to
//! retry (`503` with `Retry-After: 1`), and its next token request carries the challenge's claims.

mod common;

use aadgate_emulator::{AppRegistration, MockGraph, MockGraphHandle, SigningKey, TokenSpec};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use serde_json::Value;

const GATEWAY_APP: &str = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c";

struct Setup {
    w: World,
    graph: MockGraphHandle,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

async fn setup(capabilities: &str) -> Setup {
    let w = World::start().await;
    let graph = MockGraph::start("127.0.0.1:0".parse().expect("addr"), w.idp.clone())
        .await
        .expect("mock Graph");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = SigningKey::generate().expect("key");
    std::fs::write(dir.path().join("app.crt"), cert.certificate_pem()).expect("write");
    std::fs::write(dir.path().join("app.key"), cert.private_key_pem()).expect("write");
    w.idp
        .register_app(AppRegistration::new(GATEWAY_APP).with_certificate(&cert))
        .expect("register");
    w.idp
        .consent(TENANT_A, GATEWAY_APP, vec!["Mail.Read".into()]);
    let d = dir.path().display();
    let template = base_config("", "mode = \"any\"\n")
        + &format!(
            r#"
[[routes]]
name = "graph"
path_prefix = "/v1.0/"
upstream = "{graph}"
exchange = "graph"

[exchange.graph]
client_id = "{GATEWAY_APP}"
token_endpoint = "{{idp}}/{{tenantid}}/oauth2/v2.0/token"
scope = "https://graph.microsoft.com/.default"
credentials = [ {{ certificate = "{d}/app.crt", key = "{d}/app.key" }} ]
purge_interval = "1h"
{capabilities}
"#,
            graph = graph.base_url(),
        );
    let gw = Gateway::start(&template, &w).await;
    gw.wait_ready().await;
    Setup {
        w,
        graph,
        gw,
        _dir: dir,
    }
}

async fn call(s: &Setup) -> reqwest::Response {
    let token =
        s.w.idp
            .mint(&TokenSpec::app(TENANT_A, AUD, &["Orders.Read"]));
    client()
        .get(s.gw.url("/v1.0/users/ada@contoso.com/messages"))
        .bearer_auth(token)
        .send()
        .await
        .expect("response")
}

/// The claims of the app-only token Graph received last.
fn last_graph_token(s: &Setup) -> Value {
    let req = s
        .graph
        .requests()
        .last()
        .cloned()
        .expect("Graph saw a request");
    let auth = req
        .header("authorization")
        .expect("authorization")
        .to_string();
    let jwt = auth.strip_prefix("Bearer ").expect("bearer");
    let payload = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claims_challenge_drops_the_token_at_once_and_the_next_one_satisfies_it() {
    let s = setup("client_capabilities = [\"cp1\"]").await;
    assert_eq!(call(&s).await.status(), 200);
    let first = last_graph_token(&s);
    assert_eq!(first["xms_cc"], serde_json::json!(["cp1"]), "{first}");
    assert_eq!(s.w.idp.token_request_count(), 1);

    // A critical event in the tenant: Graph challenges the CAE token.
    s.graph.revoke_sessions(TENANT_A, GATEWAY_APP);
    let r = call(&s).await;
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(
        r.headers()
            .get("x-aadgate-reason")
            .and_then(|v| v.to_str().ok()),
        Some("exchange_unavailable")
    );
    assert!(
        r.headers().get("www-authenticate").is_none(),
        "the upstream's challenge is not the caller's business"
    );
    let body: Value = r.json().await.expect("the gateway's JSON, not Graph's");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("claims challenge")),
        "{body}"
    );
    assert_eq!(s.graph.challenge_count(), 1);

    // The retry: a new token was requested at once (purge_interval is an hour), with the
    // challenge's claims, and Graph accepts it.
    let r = call(&s).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(s.w.idp.token_request_count(), 2);
    let second = last_graph_token(&s);
    assert_ne!(first["uti"], second["uti"], "a new token");
    assert_eq!(second["xms_cc"], serde_json::json!(["cp1"]));
    let required = s
        .graph
        .required_not_before(TENANT_A, GATEWAY_APP)
        .expect("an event");
    assert!(
        second["nbf"].as_i64().is_some_and(|nbf| nbf >= required),
        "{second} vs {required}"
    );
    s.gw.wait_for_log("claims challenge from the upstream")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_cp1_tokens_are_not_cae_tokens_and_are_not_challenged() {
    let s = setup("").await;
    assert_eq!(call(&s).await.status(), 200);
    assert!(last_graph_token(&s).get("xms_cc").is_none());
    s.graph.revoke_sessions(TENANT_A, GATEWAY_APP);
    assert_eq!(call(&s).await.status(), 200, "no cp1, no challenge");
    assert_eq!(s.graph.challenge_count(), 0);
    assert_eq!(s.w.idp.token_request_count(), 1);
}
