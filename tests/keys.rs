//! Keys and tokens: key rotation without lockout (through the real binary and the emulator),
//! `not_access_token`, the `exp` boundary and the re-checks a verified-token cache hit makes
//! (through the library's `Authenticator`, with a fixed clock).

mod common;

use std::sync::Arc;

use aadgate_core::auth::{Authenticator, FixedClock, Reason, RequestParts, TokenCache};
use aadgate_core::config::Config;
use aadgate_core::jwks::{KeySet, KeySource, KeyStore};
use aadgate_core::metrics::Metrics;
use aadgate_core::runtime::Runtime;
use aadgate_emulator::{SigningKey, TokenSpec};
use common::*;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Through the real binary.

fn gateway_config() -> String {
    base_config(
        "min_refetch_interval = \"1s\"",
        &format!("mode = \"allow_list\"\nallow = [\"{TENANT_A}\"]\n"),
    ) + r#"
[[routes]]
name = "jobs"
path_prefix = "/jobs/"
upstream = "{echo}"
token_kind = "app"
roles_any = ["Admin"]
"#
}

fn admin_app() -> TokenSpec {
    TokenSpec::app(TENANT_A, AUD, &["Admin"])
}

/// Waits until the gateway's kid-miss refetch window (1 s) has passed since its last fetch,
/// read from the metrics' last-success timestamp (whole seconds, so 2 s after it).
async fn wait_refetch_window(gw: &Gateway) {
    let m = gw.metrics().await;
    let last = sample(&m, "aadgate_jwks_last_success_timestamp_seconds", &[]).unwrap_or(0.0);
    let until = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(last + 2.0);
    if let Ok(left) = until.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_with_a_newly_published_kid_are_all_accepted_after_one_fetch() {
    let w = World::start().await;
    let gw = Gateway::start(&gateway_config(), &w).await;
    gw.wait_ready().await;
    assert_eq!(
        get_status_and_reason(&gw, "/jobs/1", &w.idp.mint(&admin_app()))
            .await
            .0,
        200
    );
    wait_refetch_window(&gw).await;
    let before = w.idp.jwks_fetch_count();
    // Entra ID starts signing with a key it has just published; the gateway has not seen it.
    w.idp.rotate_key(true).expect("rotate");
    let token = w.idp.mint(&admin_app());
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = gw.url("/jobs/1");
        let t = token.clone();
        tasks.push(tokio::spawn(async move {
            let r = client().get(url).bearer_auth(t).send().await;
            r.map(|r| {
                let reason = r
                    .headers()
                    .get("x-aadgate-reason")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from);
                (r.status().as_u16(), reason)
            })
            .unwrap_or((0, None))
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.expect("task"));
    }
    assert!(
        answers.iter().all(|(s, _)| *s == 200),
        "every request with the new kid is accepted: {answers:?}"
    );
    assert_eq!(
        w.idp.jwks_fetch_count(),
        before + 1,
        "one fetch for twenty misses"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_token_with_roles_and_the_api_audience_is_not_an_access_token() {
    let w = World::start().await;
    let gw = Gateway::start(&gateway_config(), &w).await;
    gw.wait_ready().await;
    // An ID token issued to the API's own client id: `aud` = client id, app roles, a nonce, no
    // appid/azp. No client allow-list is configured, so only this check stands in its way.
    let mut id_token = TokenSpec::app(TENANT_A, AUD_ID, &["Admin"])
        .without_claim("idtyp")
        .with_claim("nonce", json!("abc"))
        .with_claim("name", json!("Ada"));
    id_token.appid = None;
    id_token.app_auth_strength = None;
    let (status, reason) = get_status_and_reason(&gw, "/jobs/1", &w.idp.mint(&id_token)).await;
    assert_eq!((status, reason.as_deref()), (401, Some("not_access_token")));
    // The same token as an access token (with azp) passes.
    let access = TokenSpec::app(TENANT_A, AUD_ID, &["Admin"]);
    assert_eq!(
        get_status_and_reason(&gw, "/jobs/1", &w.idp.mint(&access))
            .await
            .0,
        200
    );
    // A v1 token with neither appid nor azp, too.
    let mut v1 = TokenSpec::app(TENANT_A, AUD, &["Admin"]).with_ver(1);
    v1.appid = None;
    let (status, reason) = get_status_and_reason(&gw, "/jobs/1", &w.idp.mint(&v1)).await;
    assert_eq!((status, reason.as_deref()), (401, Some("not_access_token")));
}

// ---------------------------------------------------------------------------------------------
// Through the library, with a fixed clock and key sets chosen by the test.

const NOW: i64 = 1_800_000_000;

fn library_config(algorithms: &str, skew: &str) -> Config {
    let text = format!(
        r#"
[server]
listen = ["127.0.0.1:1"]
[identity]
jwks_uri = "http://127.0.0.1:1/keys"
audiences = ["{AUD}"]
algorithms = {algorithms}
clock_skew = "{skew}"
[tenants]
mode = "any"
[[routes]]
name = "jobs"
path_prefix = "/jobs/"
upstream = "http://127.0.0.1:2"
"#
    );
    aadgate_core::config::load_str(std::path::Path::new("keys.toml"), &text).expect("config")
}

/// The JWK of `key`, published under `kid`.
fn jwks(key: &SigningKey, kid: &str) -> KeySet {
    let mut jwk = key.jwk(Some("https://login.microsoftonline.com/{tenantid}/v2.0"));
    jwk["kid"] = Value::from(kid);
    let doc = json!({ "keys": [jwk] }).to_string();
    KeySet::parse(doc.as_bytes(), KeySource::Static).expect("key set")
}

fn authenticator(config: Config, keys: KeySet, cache: &Arc<TokenCache>, now: i64) -> Authenticator {
    let metrics = Arc::new(Metrics::new());
    Runtime::builder(config)
        .key_store(KeyStore::fixed(keys, metrics.clone()))
        .metrics(metrics)
        .token_cache(cache.clone())
        .clock(Arc::new(FixedClock(now)))
        .build()
        .expect("runtime builds")
        .authenticator()
        .clone()
}

async fn check(auth: &Authenticator, token: &str) -> Result<(), Reason> {
    let route = auth.config().routes[0].clone();
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    let parts = RequestParts {
        method: &Method::GET,
        path: "/jobs/1",
        normalized_path: "/jobs/1",
        host: "",
        headers: &headers,
    };
    auth.authenticate(&route, &parts)
        .await
        .map(|_| ())
        .map_err(|r| r.reason)
}

fn cache() -> Arc<TokenCache> {
    Arc::new(TokenCache::new(100, std::time::Duration::from_secs(300)))
}

fn token_at(key: &SigningKey, now: i64, lifetime: i64) -> String {
    key.mint(
        &TokenSpec::app(TENANT_A, AUD, &["Admin"])
            .with_now(now)
            .with_lifetime(lifetime)
            .with_header("kid", json!("k")),
    )
}

#[tokio::test]
async fn a_token_is_refused_from_the_second_exp_plus_skew_is_reached_cached_or_not() {
    let key = SigningKey::generate().expect("key");
    let issued = NOW - 600;
    let exp = issued + 300; // NOW - 300: with 300 s of skew, the last valid second is NOW - 1.
    let token = token_at(&key, issued, 300);
    let cache = cache();
    let at = |now| {
        authenticator(
            library_config("[\"RS256\"]", "5m"),
            jwks(&key, "k"),
            &cache,
            now,
        )
    };
    assert_eq!(check(&at(exp + 299), &token).await, Ok(()));
    // Cached now; the hit must not outlive exp + skew.
    assert_eq!(check(&at(exp + 300), &token).await, Err(Reason::Expired));
    assert_eq!(check(&at(exp + 301), &token).await, Err(Reason::Expired));
    // Not cached: the same boundary.
    let fresh = token_at(&key, issued, 300);
    let no_cache = Arc::new(TokenCache::new(0, std::time::Duration::from_secs(300)));
    let auth = authenticator(
        library_config("[\"RS256\"]", "5m"),
        jwks(&key, "k"),
        &no_cache,
        exp + 300,
    );
    assert_eq!(check(&auth, &fresh).await, Err(Reason::Expired));
}

#[tokio::test]
async fn a_cached_token_is_verified_again_when_its_kid_names_other_key_material() {
    let key = SigningKey::generate().expect("key");
    let impostor = SigningKey::generate().expect("other key");
    let token = token_at(&key, NOW - 60, 3600);
    let cache = cache();
    let before = authenticator(
        library_config("[\"RS256\"]", "5m"),
        jwks(&key, "k"),
        &cache,
        NOW,
    );
    assert_eq!(check(&before, &token).await, Ok(()));
    assert_eq!(check(&before, &token).await, Ok(()));
    assert_eq!(
        before.metrics().token_cache_hits.get(),
        1,
        "the second call is a hit"
    );
    // The key set now publishes different key material under the same kid.
    let after = authenticator(
        library_config("[\"RS256\"]", "5m"),
        jwks(&impostor, "k"),
        &cache,
        NOW,
    );
    assert_eq!(check(&after, &token).await, Err(Reason::BadSignature));
    assert_eq!(after.metrics().token_cache_hits.get(), 0);
}

#[tokio::test]
async fn a_cached_token_is_refused_once_a_reload_drops_its_algorithm() {
    let key = SigningKey::generate().expect("key");
    let token = token_at(&key, NOW - 60, 3600);
    let cache = cache();
    let before = authenticator(
        library_config("[\"RS256\", \"PS256\"]", "5m"),
        jwks(&key, "k"),
        &cache,
        NOW,
    );
    assert_eq!(check(&before, &token).await, Ok(()));
    let after = authenticator(
        library_config("[\"PS256\"]", "5m"),
        jwks(&key, "k"),
        &cache,
        NOW,
    );
    assert_eq!(check(&after, &token).await, Err(Reason::UnsupportedAlg));
    // Allowed again: the token verifies again (and is a hit after that).
    let again = authenticator(
        library_config("[\"RS256\"]", "5m"),
        jwks(&key, "k"),
        &cache,
        NOW,
    );
    assert_eq!(check(&again, &token).await, Ok(()));
}

#[tokio::test]
async fn extreme_time_claims_are_answered_without_a_panic() {
    let key = SigningKey::generate().expect("key");
    let cache = cache();
    let auth = authenticator(
        library_config("[\"RS256\"]", "5m"),
        jwks(&key, "k"),
        &cache,
        NOW,
    );
    let table = [
        (json!(i64::MAX), None, Ok(())),
        (json!(u64::MAX), None, Ok(())),
        (json!(1e300), None, Ok(())),
        (json!(-1e300), None, Err(Reason::Expired)),
        (json!(i64::MIN), None, Err(Reason::Expired)),
        (json!(-i64::MAX), None, Err(Reason::Expired)),
        (
            json!(NOW + 60),
            Some(json!(1e300)),
            Err(Reason::NotYetValid),
        ),
        (json!(NOW + 60), Some(json!(i64::MIN)), Ok(())),
    ];
    for (exp, nbf, want) in table {
        let mut spec = TokenSpec::app(TENANT_A, AUD, &["Admin"])
            .with_now(NOW - 60)
            .with_header("kid", json!("k"))
            .with_claim("exp", exp.clone());
        if let Some(nbf) = &nbf {
            spec = spec.with_claim("nbf", nbf.clone());
        }
        let token = key.mint(&spec);
        // Twice: the second answer may come from the cache.
        assert_eq!(check(&auth, &token).await, want, "exp {exp}, nbf {nbf:?}");
        assert_eq!(
            check(&auth, &token).await,
            want,
            "exp {exp}, nbf {nbf:?} (again)"
        );
    }
}

#[tokio::test]
async fn a_flood_of_tokens_seen_once_leaves_regular_callers_in_a_full_cache() {
    const CAPACITY: usize = 500;
    let key = SigningKey::generate().expect("key");
    let cache = Arc::new(TokenCache::new(
        CAPACITY as u64,
        std::time::Duration::from_secs(300),
    ));
    let auth = authenticator(
        library_config("[\"RS256\"]", "5m"),
        jwks(&key, "k"),
        &cache,
        NOW,
    );
    // Distinct tokens: each is issued a second apart.
    let tokens = |from: i64, n: usize| -> Vec<String> {
        (0..n as i64)
            .map(|i| token_at(&key, NOW - 60 - from - i, 7200))
            .collect()
    };
    let regular = tokens(0, CAPACITY);
    for t in regular.iter().chain(regular.iter()) {
        assert_eq!(check(&auth, t).await, Ok(()));
    }
    assert_eq!(
        cache.len(),
        CAPACITY as u64,
        "the regular callers fill the cache"
    );
    assert_eq!(auth.metrics().token_cache_hits.get(), CAPACITY as u64);

    // Twice the capacity of new tokens, each presented once: all accepted (verified).
    for t in &tokens(CAPACITY as i64, 2 * CAPACITY) {
        assert_eq!(check(&auth, t).await, Ok(()));
    }
    assert!(cache.len() <= CAPACITY as u64);
    assert_eq!(auth.metrics().token_cache_hits.get(), CAPACITY as u64);

    // The regular callers are still served from the cache. Under plain LRU none would be; the
    // frequency sketch lets some newcomers in by hash collisions (86-95 % of the regular tokens
    // stayed over repeated runs).
    for t in &regular {
        assert_eq!(check(&auth, t).await, Ok(()));
    }
    let hits = auth.metrics().token_cache_hits.get() - CAPACITY as u64;
    assert!(
        hits >= CAPACITY as u64 * 3 / 4,
        "{hits} of {CAPACITY} regular tokens still cached"
    );
}
