use super::*;
use crate::registry::FileStore;
use std::time::Duration;

const TID: &str = "11111111-2222-4333-8444-555555555555";
const DENIED: &str = "99999999-2222-4333-8444-555555555555";
const NOW: i64 = 1_800_000_000;

fn settings() -> OnboardingSettings {
    OnboardingSettings {
        client_id: "6e74172b-be56-4843-9ff4-e66a39bb12e3".into(),
        redirect_uri: "https://api.contoso.com/.aadgate/onboarding/callback".into(),
        path_prefix: "/.aadgate/onboarding/".into(),
        authority: "https://login.microsoftonline.com".into(),
        scope: "https://graph.microsoft.com/.default".into(),
        verify_exchange: None,
        state_key_file: "k".into(),
        state_key: Arc::from(&b"0123456789abcdef0123456789abcdef"[..]),
        state_ttl: Duration::from_secs(600),
        success_url: None,
    }
}

struct Fixture {
    onboarding: Onboarding,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    deny: HashSet<String>,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(FileStore::new(dir.path().join("tenants.json")));
    let registry = Registry::open(store, metrics.clone()).await.expect("open");
    Fixture {
        onboarding: Onboarding::new(settings(), Arc::new(LocalLedger::default())),
        registry,
        metrics,
        deny: [DENIED.to_string()].into_iter().collect(),
        _dir: dir,
    }
}

impl Fixture {
    async fn get(&self, path: &str, query: &str, now: i64) -> Page {
        let cx = Context {
            deny: &self.deny,
            registry: Some(&self.registry),
            verify: None,
            metrics: &self.metrics,
            now,
            request_id: "rid",
        };
        self.onboarding
            .handle(&Method::GET, path, Some(query), cx)
            .await
    }

    /// A fresh state from `start`.
    async fn state(&self) -> String {
        let page = self.get("/.aadgate/onboarding/start", "", NOW).await;
        let location = header(&page, "location").expect("redirect");
        let (_, state) = location.split_once("&state=").expect("state");
        decode(state)
    }

    fn count(&self, result: &str) -> u64 {
        self.metrics.onboarding.with_label_values(&[result]).get()
    }
}

fn header(page: &Page, name: &str) -> Option<String> {
    page.headers
        .iter()
        .find(|(k, _)| k.as_str() == name)
        .and_then(|(_, v)| v.to_str().ok().map(str::to_string))
}

#[tokio::test]
async fn start_redirects_to_the_organizations_admin_consent_endpoint() {
    let f = fixture().await;
    let page = f
        .get(
            "/.aadgate/onboarding/start",
            "redirect_uri=https://evil.example",
            NOW,
        )
        .await;
    assert_eq!(page.status, http::StatusCode::FOUND);
    let location = header(&page, "location").expect("location");
    let want = "https://login.microsoftonline.com/organizations/v2.0/adminconsent?client_id=6e74172b-be56-4843-9ff4-e66a39bb12e3&redirect_uri=https%3A%2F%2Fapi.contoso.com%2F.aadgate%2Fonboarding%2Fcallback&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default&state=";
    assert!(location.starts_with(want), "{location}");
    assert!(!location.contains("evil"));
    assert_eq!(header(&page, "cache-control").as_deref(), Some("no-store"));
}

#[tokio::test]
async fn an_unproven_consent_is_recorded_pending_once() {
    let f = fixture().await;
    let state = f.state().await;
    let q = format!("admin_consent=True&tenant={TID}&state={}", encode(&state));
    let page = f.get("/.aadgate/onboarding/callback", &q, NOW + 1).await;
    assert_eq!(page.status, http::StatusCode::OK, "{}", page.body);
    assert!(page.body.contains("waits for approval"));
    assert_eq!(f.registry.state(TID), Some(TenantState::Pending));
    assert_eq!(f.count("pending"), 1);
    // The same link again: replayed.
    let again = f.get("/.aadgate/onboarding/callback", &q, NOW + 2).await;
    assert_eq!(again.status, http::StatusCode::BAD_REQUEST);
    assert!(again.body.contains("already used"));
    assert_eq!(f.count("bad_state"), 1);
}

#[tokio::test]
async fn refused_callbacks_record_nothing() {
    let f = fixture().await;
    let expired = f.state().await;
    let mut cases = vec![
        (
            format!("admin_consent=True&tenant={TID}"),
            400,
            "bad_state",
            NOW,
        ),
        (
            format!("admin_consent=True&tenant={TID}&state=forged.state"),
            400,
            "bad_state",
            NOW,
        ),
        (
            format!("admin_consent=True&tenant={TID}&state={}", encode(&expired)),
            400,
            "bad_state",
            NOW + 600,
        ),
    ];
    let s = f.state().await;
    cases.push((
        format!("admin_consent=True&tenant={DENIED}&state={}", encode(&s)),
        401,
        "denied",
        NOW,
    ));
    let s = f.state().await;
    cases.push((
        format!("admin_consent=True&tenant=contoso.com&state={}", encode(&s)),
        400,
        "error",
        NOW,
    ));
    let s = f.state().await;
    cases.push((format!("error=access_denied&error_subcode=cancel&error_description=%3Cscript%3Ealert(1)%3C%2Fscript%3E&state={}", encode(&s)), 403, "denied", NOW));
    let s = f.state().await;
    cases.push((
        format!("state={}&state={}", encode(&s), encode(&s)),
        400,
        "bad_state",
        NOW,
    ));
    for (query, status, result, now) in cases {
        let before = f.count(result);
        let page = f.get("/.aadgate/onboarding/callback", &query, now).await;
        assert_eq!(page.status.as_u16(), status, "{query}: {}", page.body);
        assert_eq!(f.count(result), before + 1, "{query}");
        assert!(!page.body.contains("<script"), "{}", page.body);
        assert!(header(&page, "x-aadgate-reason").is_some(), "{query}");
    }
    assert!(f.registry.snapshot().is_empty());
}

#[tokio::test]
async fn other_paths_under_the_prefix_are_not_found_and_only_get_is_served() {
    let f = fixture().await;
    let page = f.get("/.aadgate/onboarding/admin", "", NOW).await;
    assert_eq!(page.status, http::StatusCode::NOT_FOUND);
    let cx = Context {
        deny: &f.deny,
        registry: Some(&f.registry),
        verify: None,
        metrics: &f.metrics,
        now: NOW,
        request_id: "rid",
    };
    let post = f
        .onboarding
        .handle(&Method::POST, "/.aadgate/onboarding/start", None, cx)
        .await;
    assert_eq!(post.status, http::StatusCode::BAD_REQUEST);
    assert!(f.onboarding.owns("/.aadgate/onboarding/start"));
    assert!(!f.onboarding.owns("/orders/"));
}

#[test]
fn only_a_token_with_application_permissions_proves_admin_consent() {
    use base64::Engine;
    let token = |claims: &str| {
        let b = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", b("{}"), b(claims))
    };
    assert!(grants_roles(&token(r#"{"roles":["User.Read.All"]}"#)));
    for claims in [
        r#"{}"#,
        r#"{"roles":[]}"#,
        r#"{"roles":[""]}"#,
        r#"{"roles":"x"}"#,
    ] {
        assert!(!grants_roles(&token(claims)), "{claims}");
    }
    assert!(!grants_roles("not-a-token"));
    assert!(!grants_roles("a.!!!.c"));
}

#[tokio::test]
async fn a_head_request_never_uses_up_a_callback() {
    let f = fixture().await;
    let state = f.state().await;
    let q = format!("admin_consent=True&tenant={TID}&state={}", encode(&state));
    let cx = Context {
        deny: &f.deny,
        registry: Some(&f.registry),
        verify: None,
        metrics: &f.metrics,
        now: NOW,
        request_id: "rid",
    };
    let head = f
        .onboarding
        .handle(&Method::HEAD, "/.aadgate/onboarding/callback", Some(&q), cx)
        .await;
    assert_eq!(head.status, http::StatusCode::BAD_REQUEST);
    let get = f.get("/.aadgate/onboarding/callback", &q, NOW).await;
    assert_eq!(get.status, http::StatusCode::OK, "{}", get.body);
}
