//! End-to-end: the exchange's `credentials` (SPEC section 12) through the real gateway and the
//! emulator's token endpoint: the order they are tried in, the fallback when one fails or is
//! refused, `aadgate_exchange_credential_total`, and a federated token file re-read when it is
//! rotated.

mod common;

use aadgate_emulator::{
    AppRegistration, FederatedCredential, MockOutlook, MockOutlookHandle, SigningKey, TokenSpec,
};
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
    setup_with(credentials, registered, |_, app| app, |_| Vec::new()).await
}

/// As [`setup`], with the app registration changed by `app` (e.g. federated credentials) and
/// the gateway started with `env`.
async fn setup_with(
    credentials: &str,
    registered: &[usize],
    app_extra: impl FnOnce(&World, AppRegistration) -> AppRegistration,
    env: impl FnOnce(&World) -> Vec<(&'static str, String)>,
) -> Setup {
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
    let app = app_extra(&w, app);
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
            credentials = credentials
                .replace("{dir}", &d)
                .replace("{idp_base}", &w.idp.base_url()),
        );
    let p = Prepared::new(&template, &w);
    let path = p.dir.path().join("aadgate.toml");
    std::fs::write(&path, &p.rendered).expect("write config");
    let env = env(&w);
    let env: Vec<(&str, Option<&str>)> = env.iter().map(|(k, v)| (*k, Some(v.as_str()))).collect();
    let gw = p.launch_with_env(path, &[], &env).await;
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

const NAMESPACE: &str = "payments";
const SERVICE_ACCOUNT: &str = "aadgate";

/// The app trusts the emulator's service-account issuer for `payments/aadgate`.
fn trusts_the_service_account(w: &World, app: AppRegistration) -> AppRegistration {
    app.with_federated(FederatedCredential::new(
        &w.idp.service_account_issuer(),
        &format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_token_file_is_the_assertion_and_is_read_again_when_rotated() {
    let s = setup_with(
        r#"[ { federated_token_file = "{dir}/token" } ]"#,
        &[],
        trusts_the_service_account,
        |_| Vec::new(),
    )
    .await;
    let file = s._dir.path().join("token");
    let write = |token: String| std::fs::write(&file, format!("{token}\n")).expect("write token");
    write(
        s.w.idp
            .mint_service_account_token(NAMESPACE, SERVICE_ACCOUNT)
            .expect("token"),
    );
    let first = call(&s, TENANT_A).await;
    assert_eq!(first, (200, None), "{}", s.gw.logs());
    // Rotated to a token of another service account, which the app does not trust: the next
    // tenant's token request sends it, and the token endpoint refuses it.
    s.w.idp
        .consent(TENANT_B, GATEWAY_APP, vec!["Mail.Read".into()]);
    write(
        s.w.idp
            .mint_service_account_token(NAMESPACE, "someone-else")
            .expect("token"),
    );
    assert_eq!(
        call(&s, TENANT_B).await,
        (503, Some("exchange_unavailable".to_string()))
    );
    // Rotated again, to a fresh token of the trusted account: accepted.
    s.w.idp
        .consent(TENANT_C, GATEWAY_APP, vec!["Mail.Read".into()]);
    write(
        s.w.idp
            .mint_service_account_token(NAMESPACE, SERVICE_ACCOUNT)
            .expect("token"),
    );
    assert_eq!(call(&s, TENANT_C).await, (200, None));
    let m = s.gw.metrics().await;
    assert_eq!(credential_count(&m, "federated", "ok"), 2.0, "{m}");
    assert_eq!(credential_count(&m, "federated", "rejected"), 1.0, "{m}");
    let logs = s.gw.logs();
    assert!(
        logs.contains("AADSTS700213") || logs.contains("700213"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managed_identity_token_is_the_assertion_without_any_certificate() {
    let s = setup_with(
        r#"[ { managed_identity = "system", managed_identity_endpoint = "{idp_base}" } ]"#,
        &[],
        |w, app| {
            app.with_federated(FederatedCredential::for_managed_identity(
                &w.idp.system_managed_identity(),
            ))
        },
        |_| Vec::new(),
    )
    .await;
    assert_eq!(call(&s, TENANT_A).await, (200, None));
    let asked = s.w.idp.managed_identity_requests();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let q = asked[0].query.clone().unwrap_or_default();
    assert!(
        q.contains("resource=api%3A%2F%2FAzureADTokenExchange"),
        "{q}"
    );
    assert!(!q.contains("client_id"), "system-assigned: {q}");
    assert_eq!(asked[0].header("metadata"), Some("true"));
    // Another tenant: the managed identity's token is reused; only the token endpoint is asked.
    s.w.idp
        .consent(TENANT_B, GATEWAY_APP, vec!["Mail.Read".into()]);
    assert_eq!(call(&s, TENANT_B).await, (200, None));
    assert_eq!(s.w.idp.managed_identity_requests().len(), 1);
    let m = s.gw.metrics().await;
    assert_eq!(credential_count(&m, "managed_identity", "ok"), 2.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_assigned_identity_is_asked_for_by_client_id_through_identity_endpoint() {
    const MI: &str = "6f1c2b3a-0d4e-4f5a-8b6c-7d8e9f0a1b2c";
    let s = setup_with(
        &format!(r#"[ {{ managed_identity = "{MI}" }} ]"#),
        &[],
        |w, app| {
            let identity = w.idp.add_user_assigned_identity(MI);
            app.with_federated(FederatedCredential::for_managed_identity(&identity))
        },
        // App Service style: the platform's variables, no managed_identity_endpoint.
        |w| {
            vec![
                ("IDENTITY_ENDPOINT", w.idp.identity_endpoint()),
                ("IDENTITY_HEADER", w.idp.identity_header()),
            ]
        },
    )
    .await;
    assert_eq!(call(&s, TENANT_A).await, (200, None), "{}", s.gw.logs());
    assert_eq!(s.w.idp.identity_endpoint_request_count(), 1);
    let asked = s.w.idp.managed_identity_requests();
    let q = asked
        .last()
        .and_then(|r| r.query.clone())
        .unwrap_or_default();
    assert!(q.contains(&format!("client_id={MI}")), "{q}");
    assert!(q.contains("api-version=2019-08-01"), "{q}");
}

/// A CA and a leaf certificate it issued for `cn`, written as `{dir}/sni.crt` (leaf then CA: the
/// chain) and `{dir}/sni.key`; returns the CA's PEM.
fn issued_certificate(dir: &std::path::Path, cn: &str) -> String {
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ca key");
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Contoso issuing CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let leaf_key =
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .expect("leaf key");
    let mut leaf_params = rcgen::CertificateParams::default();
    leaf_params.distinguished_name = rcgen::DistinguishedName::new();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
    std::fs::write(dir.join("sni.crt"), format!("{}{}", leaf.pem(), ca.pem())).expect("write");
    std::fs::write(dir.join("sni.key"), leaf_key.serialize_pem()).expect("write");
    ca.pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_x5c_carries_the_chain_for_subject_name_and_issuer_authentication() {
    const SUBJECT: &str = "gateway.contoso.example";
    let certs = tempfile::tempdir().expect("tempdir");
    let ca_pem = issued_certificate(certs.path(), SUBJECT);
    let d = certs.path().display().to_string();
    // The app registers no certificate: it trusts the subject name issued by the CA, which
    // Entra ID can only check when the assertion carries the chain.
    let trust = |ca: String| {
        move |_: &World, app: AppRegistration| {
            app.with_trusted_subject(SUBJECT, &ca).expect("trust")
        }
    };
    let credential = format!(r#"[ {{ certificate = "{d}/sni.crt", key = "{d}/sni.key" }} ]"#);
    let with_chain = setup_with(
        &format!("{credential}\nsend_x5c = true"),
        &[],
        trust(ca_pem.clone()),
        |_| Vec::new(),
    )
    .await;
    assert_eq!(call(&with_chain, TENANT_A).await, (200, None));
    let without = setup_with(&credential, &[], trust(ca_pem), |_| Vec::new()).await;
    assert_eq!(
        call(&without, TENANT_A).await,
        (503, Some("exchange_unavailable".to_string()))
    );
    without.gw.wait_for_log("700027").await;
}
