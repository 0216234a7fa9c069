//! End-to-end: the exchange's `credentials` (SPEC section 12) through the real gateway and the
//! emulator's token endpoint: the order they are tried in, the fallback when one fails or is
//! refused, `aadgate_exchange_credential_total`, and a federated token file re-read when it is
//! rotated.

mod common;

use aadgate_emulator::{AppRegistration, MockOutlook, MockOutlookHandle, SigningKey, TokenSpec};
use common::*;

const GATEWAY_APP: &str = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c";

struct Setup {
    w: World,
    graph: MockOutlookHandle,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

/// The emulator with the gateway's app (registered with `registered` of the two throwaway
/// certificates, written to `{dir}/c0.*` and `{dir}/c1.*`), consented in tenant A, and a gateway
/// whose `[exchange.graph]` has `credentials` (`{dir}` replaced).
async fn setup(credentials: &str, registered: &[usize]) -> Setup {
    let w = World::start().await;
    let graph = MockOutlook::start("127.0.0.1:0".parse().expect("addr"), w.idp.clone())
        .await
        .expect("mock Graph");
    let dir = tempfile::tempdir().expect("tempdir");
    let certs: Vec<SigningKey> = (0..2)
        .map(|_| SigningKey::generate().expect("key"))
        .collect();
    let mut app = AppRegistration::new(GATEWAY_APP);
    for (i, c) in certs.iter().enumerate() {
        std::fs::write(dir.path().join(format!("c{i}.crt")), c.certificate_pem()).expect("write");
        std::fs::write(dir.path().join(format!("c{i}.key")), c.private_key_pem()).expect("write");
        if registered.contains(&i) {
            app = app.with_certificate(c);
        }
    }
    w.idp.register_app(app).expect("register");
    w.idp
        .consent(TENANT_A, GATEWAY_APP, vec!["Mail.Read".into()]);
    let d = dir.path().display().to_string();
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
credentials = {credentials}
failure_cache = "1s"
"#,
            graph = graph.base_url(),
            credentials = credentials.replace("{dir}", &d),
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

async fn call(s: &Setup, tenant: &str) -> (u16, Option<String>) {
    let token = s.w.idp.mint(&TokenSpec::app(tenant, AUD, &["Orders.Read"]));
    let r = client()
        .get(s.gw.url("/v1.0/users/ada@contoso.com/messages"))
        .bearer_auth(token)
        .send()
        .await
        .expect("response");
    let reason = r
        .headers()
        .get("x-aadgate-reason")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (r.status().as_u16(), reason)
}

fn credential_count(m: &str, kind: &str, result: &str) -> f64 {
    sample(
        m,
        "aadgate_exchange_credential_total",
        &[
            "exchange=\"graph\"",
            &format!("kind=\"{kind}\""),
            &format!("result=\"{result}\""),
        ],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_credentials_fall_through_to_one_that_works_and_it_stays_first() {
    // A token file that does not exist, a managed-identity endpoint nobody listens on, a
    // certificate the app does not know, then the registered one.
    let s = setup(
        r#"[
  { federated_token_file = "{dir}/missing-token" },
  { managed_identity = "system", managed_identity_endpoint = "http://127.0.0.1:1" },
  { certificate = "{dir}/c1.crt", key = "{dir}/c1.key" },
  { certificate = "{dir}/c0.crt", key = "{dir}/c0.key" },
]"#,
        &[0],
    )
    .await;
    assert_eq!(call(&s, TENANT_A).await, (200, None));
    let m = s.gw.metrics().await;
    assert_eq!(credential_count(&m, "federated", "error"), 1.0, "{m}");
    assert_eq!(
        credential_count(&m, "managed_identity", "error"),
        1.0,
        "{m}"
    );
    assert_eq!(credential_count(&m, "certificate", "rejected"), 1.0, "{m}");
    assert_eq!(credential_count(&m, "certificate", "ok"), 1.0, "{m}");
    s.gw.wait_for_log("credential fallback").await;
    assert_eq!(s.graph.request_count(), 1);

    // Another tenant: the certificate that worked is tried first, nothing else.
    s.w.idp
        .consent(TENANT_B, GATEWAY_APP, vec!["Mail.Read".into()]);
    assert_eq!(call(&s, TENANT_B).await, (200, None));
    let m = s.gw.metrics().await;
    assert_eq!(credential_count(&m, "certificate", "ok"), 2.0, "{m}");
    assert_eq!(
        credential_count(&m, "federated", "error"),
        1.0,
        "not tried again: {m}"
    );
    assert_eq!(credential_count(&m, "certificate", "rejected"), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_that_did_not_consent_does_not_move_to_the_next_credential() {
    let s = setup(
        r#"[
  { certificate = "{dir}/c0.crt", key = "{dir}/c0.key" },
  { certificate = "{dir}/c1.crt", key = "{dir}/c1.key" },
]"#,
        &[0, 1],
    )
    .await;
    s.w.idp.add_tenant(TENANT_C);
    assert_eq!(
        call(&s, TENANT_C).await,
        (403, Some("tenant_not_consented".to_string()))
    );
    let m = s.gw.metrics().await;
    assert_eq!(credential_count(&m, "certificate", "ok"), 1.0, "{m}");
    assert_eq!(credential_count(&m, "certificate", "rejected"), 0.0, "{m}");
    assert_eq!(
        s.w.idp.token_request_count(),
        1,
        "one request, no second credential"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_credential_failing_is_a_503_naming_each() {
    let s = setup(
        r#"[
  { federated_token_file = "{dir}/missing-token" },
  { certificate = "{dir}/c1.crt", key = "{dir}/c1.key" },
]"#,
        &[0],
    )
    .await;
    let token =
        s.w.idp
            .mint(&TokenSpec::app(TENANT_A, AUD, &["Orders.Read"]));
    let r = client()
        .get(s.gw.url("/v1.0/users/ada@contoso.com/messages"))
        .bearer_auth(token)
        .send()
        .await
        .expect("response");
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.expect("JSON");
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("federated: the federated token file") && message.contains("AADSTS700027"),
        "{message}"
    );
    assert!(
        !message.contains("eyJ"),
        "no token or assertion in the message"
    );
}
