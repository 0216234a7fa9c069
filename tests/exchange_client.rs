//! The app-only token exchange against the in-crate AAD emulator: per-tenant tokens, caching,
//! single flight, refresh ahead of expiry, failure caching, certificate rollover and purge.
//! Time is moved with an injected clock; nothing sleeps.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aadgate_core::auth::{Clock, Reason};
use aadgate_core::certs::{load_pair, LoadedCertificate};
use aadgate_core::exchange::{ExchangeSettings, ExchangeTarget, Exchanger};
use aadgate_core::metrics::Metrics;
use aadgate_emulator::{
    certificate_thumbprint_hex, AppRegistration, Emulator, EmulatorHandle, EmulatorOptions,
    TokenEndpointVersion, TokenOutcome,
};

const CLIENT_ID: &str = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c";
const TENANT_A: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const TENANT_B: &str = "1b4e9c2a-7d3f-4e8a-b5c6-0d9e8f7a6b5c";
const UNCONSENTED: &str = "5e6f7a8b-9c0d-4e1f-a2b3-c4d5e6f7a8b9";
const OUTLOOK_SCOPE: &str = "https://outlook.office365.com/.default";

/// A clock the test moves by hand, starting at the real time (the emulator checks assertion
/// times against its own clock, and assertions always carry the real time).
#[derive(Debug)]
struct TestClock(AtomicI64);

impl TestClock {
    fn new() -> Arc<Self> {
        Arc::new(TestClock(AtomicI64::new(aadgate_core::clock::unix_now())))
    }

    fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A throwaway self-signed RSA-2048 certificate and key, written to `dir` and loaded as the
/// gateway loads its own.
fn certificate(dir: &std::path::Path, name: &str) -> LoadedCertificate {
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .expect("RSA key");
    let cert = rcgen::CertificateParams::new(vec![format!("{name}.aadgate.test")])
        .expect("params")
        .self_signed(&key)
        .expect("self-signed");
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    load_pair(&cert_path, &key_path).expect("load pair")
}

struct World {
    emu: EmulatorHandle,
    certs: Vec<LoadedCertificate>,
    clock: Arc<TestClock>,
    metrics: Metrics,
    _dir: tempfile::TempDir,
}

impl World {
    /// An emulator with the gateway's app registered with `n_certs` certificates and consented
    /// in tenants A and B (`UNCONSENTED` is known but has no consent).
    async fn start(n_certs: usize) -> World {
        let emu = Emulator::start(
            "127.0.0.1:0".parse().expect("addr"),
            EmulatorOptions::default(),
        )
        .await
        .expect("emulator");
        let dir = tempfile::tempdir().expect("tempdir");
        let certs: Vec<LoadedCertificate> = (0..n_certs)
            .map(|i| certificate(dir.path(), &format!("cert{i}")))
            .collect();
        let mut app = AppRegistration::new(CLIENT_ID);
        for c in &certs {
            app = app.with_certificate_der(c.cert_der.clone());
        }
        emu.register_app(app).expect("register app");
        emu.consent(TENANT_A, CLIENT_ID, vec!["Mail.Read".into()]);
        emu.consent(TENANT_B, CLIENT_ID, vec!["Mail.Read".into()]);
        emu.add_tenant(UNCONSENTED);
        World {
            emu,
            certs,
            clock: TestClock::new(),
            metrics: Metrics::new(),
            _dir: dir,
        }
    }

    fn settings(&self) -> ExchangeSettings {
        ExchangeSettings {
            name: "outlook".into(),
            client_id: CLIENT_ID.into(),
            token_endpoint: self.emu.token_endpoint_template(),
            target: ExchangeTarget::Scope(OUTLOOK_SCOPE.into()),
            certificates: self.certs.clone(),
            credentials: (0..self.certs.len())
                .map(aadgate_core::config::Credential::Certificate)
                .collect(),
            send_x5c: false,
            client_capabilities: Vec::new(),
            federated_audience: "api://AzureADTokenExchange".into(),
            timeout: Duration::from_secs(10),
            refresh_before_expiry: Duration::from_secs(300),
            failure_cache: Duration::from_secs(30),
            purge_interval: Duration::from_secs(30),
            max_tenants: 100,
            rewrite_me: true,
            user_claim: "oid".into(),
        }
    }

    fn exchanger(&self) -> Exchanger {
        Exchanger::with_clock(self.settings(), self.clock.clone())
    }

    fn requests(&self) -> u64 {
        self.emu.token_request_count()
    }

    fn counted(&self, result: &str) -> u64 {
        self.metrics
            .exchange_requests
            .with_label_values(&["outlook", result])
            .get()
    }
}

fn claims(token: &str) -> serde_json::Value {
    jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(token)
        .expect("a JWT")
        .claims
}

#[tokio::test]
async fn each_tenant_gets_a_token_of_its_own_tenant_from_its_own_endpoint() {
    let w = World::start(1).await;
    let x = w.exchanger();
    let a = x.token(TENANT_A, &w.metrics).await.expect("token for A");
    let b = x
        .token(&TENANT_B.to_ascii_uppercase(), &w.metrics)
        .await
        .expect("token for B");
    assert_eq!(claims(&a.access_token)["tid"], TENANT_A);
    assert_eq!(claims(&b.access_token)["tid"], TENANT_B);
    assert_eq!(claims(&a.access_token)["idtyp"], "app");
    assert!(a.expires_at > w.clock.now());

    let seen = w.emu.token_requests();
    assert_eq!(seen.len(), 2);
    for (record, tenant) in seen.iter().zip([TENANT_A, TENANT_B]) {
        assert_eq!(
            record.tenant, tenant,
            "the tenant's own endpoint, never common"
        );
        assert_eq!(record.endpoint, TokenEndpointVersion::V2);
        assert_eq!(record.grant_type.as_deref(), Some("client_credentials"));
        assert_eq!(record.client_id.as_deref(), Some(CLIENT_ID));
        assert_eq!(record.scope.as_deref(), Some(OUTLOOK_SCOPE));
        assert!(!record.used_client_secret);
        assert_eq!(
            record.assertion_thumbprint.as_deref(),
            Some(certificate_thumbprint_hex(&w.certs[0].cert_der).as_str())
        );
        assert_eq!(record.outcome, TokenOutcome::Issued);
    }
    assert_eq!(w.counted("ok"), 2);
}

#[tokio::test]
async fn a_v1_endpoint_is_asked_with_resource() {
    let w = World::start(1).await;
    let mut s = w.settings();
    s.token_endpoint = w.emu.token_endpoint_v1("{tenantid}");
    s.target = ExchangeTarget::Resource("https://outlook.office365.com".into());
    let x = Exchanger::with_clock(s, w.clock.clone());
    let t = x.token(TENANT_A, &w.metrics).await.expect("token");
    assert_eq!(
        claims(&t.access_token)["aud"],
        "https://outlook.office365.com"
    );
    let seen = w.emu.token_requests();
    assert_eq!(seen[0].endpoint, TokenEndpointVersion::V1);
    assert_eq!(
        seen[0].resource.as_deref(),
        Some("https://outlook.office365.com")
    );
    assert_eq!(seen[0].scope, None);
}

#[tokio::test]
async fn a_hundred_sequential_calls_make_one_token_request() {
    let w = World::start(1).await;
    let x = w.exchanger();
    let first = x.token(TENANT_A, &w.metrics).await.expect("token");
    for _ in 0..99 {
        let t = x.token(TENANT_A, &w.metrics).await.expect("token");
        assert_eq!(t, first);
    }
    assert_eq!(w.requests(), 1);
    assert_eq!((w.counted("ok"), w.counted("cached")), (1, 99));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_first_calls_make_one_token_request() {
    let w = Arc::new(World::start(1).await);
    let x = Arc::new(w.exchanger());
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (w, x, barrier) = (w.clone(), x.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                x.token(TENANT_A, &w.metrics).await.map(|t| t.access_token)
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for t in tasks {
        tokens.push(t.await.expect("task").expect("token"));
    }
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "everyone got the one token"
    );
    assert_eq!(w.requests(), 1);
    assert_eq!((w.counted("ok"), w.counted("cached")), (1, 49));
}

#[tokio::test]
async fn a_token_is_refreshed_refresh_before_expiry_ahead() {
    let w = World::start(1).await;
    w.emu.set_token_lifetime(900); // refresh_before_expiry 300 s: fresh for 600 s
    let x = w.exchanger();
    let first = x.token(TENANT_A, &w.metrics).await.expect("token");
    w.clock.advance(599);
    assert_eq!(x.token(TENANT_A, &w.metrics).await.expect("cached"), first);
    assert_eq!(w.requests(), 1);
    w.clock.advance(1);
    let second = x.token(TENANT_A, &w.metrics).await.expect("refreshed");
    assert_ne!(second, first);
    assert_eq!(w.requests(), 2);
    assert!(
        second.expires_at - w.clock.now() > 300,
        "refreshed while the old one had 300 s left"
    );
}

#[tokio::test]
async fn a_short_lived_token_is_still_reused_for_half_its_lifetime() {
    let w = World::start(1).await;
    w.emu.set_token_lifetime(120); // shorter than refresh_before_expiry: fresh for 60 s
    let x = w.exchanger();
    let first = x.token(TENANT_A, &w.metrics).await.expect("token");
    w.clock.advance(59);
    assert_eq!(x.token(TENANT_A, &w.metrics).await.expect("cached"), first);
    w.clock.advance(1);
    x.token(TENANT_A, &w.metrics).await.expect("refreshed");
    assert_eq!(w.requests(), 2);
}

#[tokio::test]
async fn an_unconsented_tenant_is_refused_and_not_asked_again_within_failure_cache() {
    let w = World::start(1).await;
    let x = w.exchanger();
    let err = x
        .token(UNCONSENTED, &w.metrics)
        .await
        .expect_err("not consented");
    assert_eq!(err.reason, Reason::TenantNotConsented);
    assert!(err.message.contains(UNCONSENTED) && err.message.contains(CLIENT_ID));
    assert!(err.message.contains("AADSTS700016") && err.message.contains("client_id"));
    assert_eq!(err.retry_after, Some(Duration::from_secs(30)));
    assert_eq!(w.requests(), 1);

    w.clock.advance(29);
    let again = x
        .token(UNCONSENTED, &w.metrics)
        .await
        .expect_err("cached refusal");
    assert_eq!(again.reason, Reason::TenantNotConsented);
    assert_eq!(again.retry_after, Some(Duration::from_secs(1)));
    assert_eq!(w.requests(), 1, "no request within failure_cache");
    assert_eq!(
        w.counted("not_consented"),
        2,
        "a cached refusal counts as not_consented"
    );

    w.emu.consent(UNCONSENTED, CLIENT_ID, vec![]);
    w.clock.advance(1);
    let t = x
        .token(UNCONSENTED, &w.metrics)
        .await
        .expect("consented now");
    assert_eq!(claims(&t.access_token)["tid"], UNCONSENTED);
    assert_eq!(w.requests(), 2);
}

#[tokio::test]
async fn a_failing_endpoint_is_unavailable_with_retry_after_until_failure_cache_ends() {
    let w = World::start(1).await;
    let x = w.exchanger();
    w.emu.set_token_endpoint_failure(Some(503));
    let err = x
        .token(TENANT_A, &w.metrics)
        .await
        .expect_err("endpoint down");
    assert_eq!(err.reason, Reason::ExchangeUnavailable);
    assert_eq!(err.retry_after, Some(Duration::from_secs(30)));
    assert!(err.message.contains("AADSTS90006"), "{}", err.message);

    w.emu.set_token_endpoint_failure(None);
    w.clock.advance(10);
    let again = x
        .token(TENANT_A, &w.metrics)
        .await
        .expect_err("cached failure");
    assert_eq!(again.reason, Reason::ExchangeUnavailable);
    assert_eq!(again.retry_after, Some(Duration::from_secs(20)));
    assert_eq!(w.requests(), 1, "no request before failure_cache ends");
    assert_eq!(w.counted("error"), 2);

    w.clock.advance(20);
    x.token(TENANT_A, &w.metrics).await.expect("recovered");
    assert_eq!(w.requests(), 2);
}

#[tokio::test]
async fn a_failed_refresh_keeps_serving_the_current_token_while_it_is_valid() {
    let w = World::start(1).await;
    let x = w.exchanger();
    let first = x.token(TENANT_A, &w.metrics).await.expect("token");
    w.clock.advance(3300); // 3599 s lifetime: stale, 299 s left
    w.emu.set_token_endpoint_failure(Some(500));
    assert_eq!(
        x.token(TENANT_A, &w.metrics).await.expect("served stale"),
        first
    );
    assert_eq!(w.requests(), 2);
    w.clock.advance(29);
    assert_eq!(
        x.token(TENANT_A, &w.metrics).await.expect("served stale"),
        first
    );
    assert_eq!(
        w.requests(),
        2,
        "the failed refresh is not retried within failure_cache"
    );
    w.emu.set_token_endpoint_failure(None);
    w.clock.advance(1);
    assert_ne!(
        x.token(TENANT_A, &w.metrics).await.expect("refreshed"),
        first
    );
    assert_eq!(w.requests(), 3);
}

#[tokio::test]
async fn a_rejected_certificate_rolls_over_to_the_next_which_then_signs_directly() {
    let w = World::start(2).await;
    let first = certificate_thumbprint_hex(&w.certs[0].cert_der);
    let second = certificate_thumbprint_hex(&w.certs[1].cert_der);
    assert!(w.emu.remove_app_certificate(CLIENT_ID, &first));
    let x = w.exchanger();

    let t = x
        .token(TENANT_A, &w.metrics)
        .await
        .expect("token with the second certificate");
    assert_eq!(claims(&t.access_token)["tid"], TENANT_A);
    let seen = w.emu.token_requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].assertion_thumbprint.as_deref(),
        Some(first.as_str())
    );
    assert!(
        matches!(
            seen[0].outcome,
            TokenOutcome::Failed {
                aadsts: 700_027,
                ..
            }
        ),
        "{:?}",
        seen[0].outcome
    );
    assert_eq!(
        seen[1].assertion_thumbprint.as_deref(),
        Some(second.as_str())
    );
    assert_eq!(seen[1].outcome, TokenOutcome::Issued);
    assert_eq!(
        x.signing_certificate().map(|c| c.x5t.as_str()),
        Some(w.certs[1].x5t.as_str())
    );

    x.token(TENANT_B, &w.metrics).await.expect("token for B");
    let seen = w.emu.token_requests();
    assert_eq!(seen.len(), 3, "no second try with the removed certificate");
    assert_eq!(
        seen[2].assertion_thumbprint.as_deref(),
        Some(second.as_str())
    );
    assert_eq!(w.counted("ok"), 2);
}

#[tokio::test]
async fn when_every_certificate_is_rejected_the_exchange_is_unavailable() {
    let w = World::start(2).await;
    for c in &w.certs {
        assert!(w.emu.remove_app_certificate(CLIENT_ID, &c.x5t));
    }
    let x = w.exchanger();
    let err = x
        .token(TENANT_A, &w.metrics)
        .await
        .expect_err("no certificate works");
    assert_eq!(err.reason, Reason::ExchangeUnavailable);
    assert!(err.message.contains("AADSTS700027"), "{}", err.message);
    assert_eq!(w.requests(), 2, "each certificate tried once");
    assert_eq!(
        x.signing_certificate().map(|c| c.x5t.as_str()),
        Some(w.certs[0].x5t.as_str())
    );
}

#[tokio::test]
async fn purge_of_the_cached_token_makes_the_next_call_fetch() {
    let w = World::start(1).await;
    let x = w.exchanger();
    let first = x.token(TENANT_A, &w.metrics).await.expect("token");
    x.purge(TENANT_A, "some-other-token");
    x.purge(TENANT_B, &first.access_token);
    assert_eq!(x.token(TENANT_A, &w.metrics).await.expect("cached"), first);
    assert_eq!(
        w.requests(),
        1,
        "a purge naming another token or tenant keeps the entry"
    );

    assert!(x.purge(TENANT_A, &first.access_token));
    let second = x.token(TENANT_A, &w.metrics).await.expect("fetched");
    assert_ne!(second, first);
    assert_eq!(w.requests(), 2);
    w.clock.advance(31);
    assert!(!x.purge(TENANT_A, &first.access_token));
    assert_eq!(
        x.token(TENANT_A, &w.metrics).await.expect("cached"),
        second,
        "a late purge of the old token keeps the new one"
    );
    assert_eq!(w.requests(), 2);
}

#[tokio::test]
async fn purges_within_purge_interval_keep_the_new_token() {
    let w = World::start(1).await;
    let x = w.exchanger();
    let first = x.token(TENANT_A, &w.metrics).await.expect("token");
    assert!(x.purge(TENANT_A, &first.access_token));
    let second = x.token(TENANT_A, &w.metrics).await.expect("fetched");
    assert!(
        !x.purge(TENANT_A, &second.access_token),
        "a second upstream 401 within purge_interval keeps the token"
    );
    assert_eq!(x.token(TENANT_A, &w.metrics).await.expect("cached"), second);
    assert_eq!(w.requests(), 2);
    w.clock.advance(30);
    assert!(
        x.purge(TENANT_A, &second.access_token),
        "after the interval"
    );
    x.token(TENANT_A, &w.metrics).await.expect("fetched");
    assert_eq!(w.requests(), 3);
}

/// After a fallback the configured order is tried again only after
/// `RETRY_PREFERRED_SECS`: a workload-identity file that appears later takes over again.
#[tokio::test]
async fn the_preferred_credential_is_tried_again_ten_minutes_after_a_fallback() {
    let w = World::start(1).await;
    // The app also trusts the emulator's service-account issuer for payments/aadgate.
    let mut app = aadgate_emulator::AppRegistration::new(CLIENT_ID)
        .with_certificate_der(w.certs[0].cert_der.clone());
    app = app.with_federated(aadgate_emulator::FederatedCredential::new(
        &w.emu.service_account_issuer(),
        "system:serviceaccount:payments:aadgate",
    ));
    w.emu.register_app(app).expect("register");
    let third = "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f";
    let fourth = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a";
    for t in [third, fourth] {
        w.emu.consent(t, CLIENT_ID, vec!["Mail.Read".into()]);
    }
    let token_file = w._dir.path().join("token");
    let mut settings = w.settings();
    settings.credentials = vec![
        aadgate_core::config::Credential::FederatedTokenFile(token_file.clone()),
        aadgate_core::config::Credential::Certificate(0),
    ];
    let x = Exchanger::with_clock(settings, w.clock.clone()).with_metrics(&w.metrics);
    let count = |kind: &str, result: &str| {
        w.metrics
            .exchange_credential
            .with_label_values(&["outlook", kind, result])
            .get()
    };
    // No token file yet: the certificate serves and is tried first from now on.
    x.token(TENANT_A, &w.metrics).await.expect("certificate");
    assert_eq!(x.current_credential_kind(), Some("certificate"));
    assert_eq!(
        (count("federated", "error"), count("certificate", "ok")),
        (1, 1)
    );
    // The file appears; within ten minutes the certificate is still tried first.
    std::fs::write(
        &token_file,
        w.emu
            .mint_service_account_token("payments", "aadgate")
            .expect("token"),
    )
    .expect("write");
    w.clock.advance(60);
    x.token(TENANT_B, &w.metrics).await.expect("certificate");
    assert_eq!(
        (count("federated", "ok"), count("certificate", "ok")),
        (0, 2)
    );
    // Ten minutes after the fallback the configured order is tried again, and the workload
    // identity takes over.
    w.clock
        .advance(aadgate_core::exchange::RETRY_PREFERRED_SECS);
    x.token(third, &w.metrics).await.expect("federated");
    assert_eq!(count("federated", "ok"), 1);
    assert_eq!(x.current_credential_kind(), Some("federated"));
    x.token(fourth, &w.metrics).await.expect("federated");
    assert_eq!(
        (count("federated", "ok"), count("certificate", "ok")),
        (2, 2)
    );
}
