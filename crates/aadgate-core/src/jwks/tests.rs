use super::schedule::*;
use super::*;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use std::sync::atomic::Ordering;

use crate::config::IdentitySettings;
use crate::metrics::Metrics;

#[test]
fn startup_backoff_doubles_from_one_second_up_to_the_refetch_interval() {
    let cap = Duration::from_secs(30);
    let got: Vec<u64> = (1..=7).map(|f| startup_backoff(f, cap).as_secs()).collect();
    assert_eq!(got, vec![1, 2, 4, 8, 16, 30, 30]);
}

#[test]
fn next_fetch_follows_state() {
    let refresh = Duration::from_secs(3600);
    let min = Duration::from_secs(30);
    assert_eq!(next_fetch_delay(true, false, 0, refresh, min), refresh);
    assert_eq!(next_fetch_delay(true, true, 1, refresh, min), min);
    assert_eq!(
        next_fetch_delay(false, true, 3, refresh, min),
        Duration::from_secs(4)
    );
}

#[test]
fn kid_miss_refetch_is_allowed_only_after_the_interval() {
    let min = Duration::from_secs(30);
    assert!(may_refetch(None, min));
    assert!(!may_refetch(Some(Duration::from_secs(29)), min));
    assert!(may_refetch(Some(Duration::from_secs(30)), min));
}

fn jwk(kid: Option<&str>, x5t: Option<&str>, n: &str) -> Value {
    let mut v = serde_json::json!({"kty": "RSA", "use": "sig", "n": n, "e": "AQAB"});
    if let Some(k) = kid {
        v["kid"] = k.into();
    }
    if let Some(x) = x5t {
        v["x5t"] = x.into();
    }
    v
}

#[test]
fn key_sets_index_by_kid_and_x5t_and_skip_unusable_keys() {
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
    let padded_std = base64::engine::general_purpose::STANDARD.encode([0xfbu8; 256]);
    let doc = serde_json::json!({"keys": [
        jwk(Some("a"), Some("xa"), &n),
        jwk(None, Some("xb"), &padded_std),
        jwk(None, None, &n),
        {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "x", "y": "y"},
        {"kty": "RSA", "use": "enc", "kid": "enc", "n": n, "e": "AQAB"},
        {"kty": "RSA", "kid": "short", "n": "AQAB", "e": "AQAB"},
    ]});
    let set = KeySet::parse(doc.to_string().as_bytes(), KeySource::Fetched).expect("parses");
    assert_eq!(set.len(), 2);
    assert!(set.by_kid("a").is_some());
    assert!(set.by_x5t("xb").is_some());
    assert!(
        set.by_kid("ec").is_none() && set.by_kid("enc").is_none() && set.by_kid("short").is_none()
    );
}

#[test]
fn a_document_without_usable_keys_is_a_failed_fetch() {
    type Want = fn(&JwksError) -> bool;
    let table: [(&str, Want); 10] = [
        (r#"{"keys": []}"#, |e| matches!(e, JwksError::NoUsableKey)),
        (r#"{"keys":[{"kty":"EC"}]}"#, |e| {
            matches!(e, JwksError::NoUsableKey)
        }),
        (r#"{"keys":[1, "a", null, []]}"#, |e| {
            matches!(e, JwksError::NoUsableKey)
        }),
        (r#"{"nokeys": 1}"#, |e| matches!(e, JwksError::NoKeysArray)),
        (r#"{"keys": {"kty": "RSA"}}"#, |e| {
            matches!(e, JwksError::NoKeysArray)
        }),
        (r#"{"keys": null}"#, |e| matches!(e, JwksError::NoKeysArray)),
        (r#"[[{"kty": "RSA"}]]"#, |e| {
            matches!(e, JwksError::NoKeysArray)
        }),
        ("42", |e| matches!(e, JwksError::NoKeysArray)),
        ("not json", |e| matches!(e, JwksError::NotJson(_))),
        (r#"{"keys": ["#, |e| matches!(e, JwksError::NotJson(_))),
    ];
    for (doc, want) in table {
        match KeySet::parse(doc.as_bytes(), KeySource::Fetched) {
            Ok(set) => panic!("{doc}: parsed {} keys", set.len()),
            Err(e) => assert!(want(&e), "{doc}: {e:?}"),
        }
    }
}

#[test]
fn a_key_with_a_member_of_the_wrong_type_is_skipped_and_the_others_load() {
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
    let wrong = |member: &str, value: Value| {
        let mut k = jwk(Some(&format!("wrong-{member}")), Some("x"), &n);
        k[member] = value;
        k
    };
    let doc = serde_json::json!({"keys": [
        jwk(Some("good"), None, &n),
        wrong("kty", serde_json::json!(["RSA"])),
        wrong("use", serde_json::json!(1)),
        wrong("n", serde_json::json!({"v": n})),
        wrong("e", serde_json::json!(65537)),
        wrong("x5t", serde_json::json!(true)),
        wrong("issuer", serde_json::json!(["https://login.microsoftonline.com/{tenantid}/v2.0"])),
        {"kty": "RSA", "use": "sig", "kid": 7, "x5t": "x7", "n": n, "e": "AQAB"},
        jwk(Some("also-good"), None, &n),
    ]});
    let set = KeySet::parse(doc.to_string().as_bytes(), KeySource::Fetched).expect("parses");
    assert_eq!(set.len(), 2);
    assert!(set.by_kid("good").is_some() && set.by_kid("also-good").is_some());
    assert!(set.by_x5t("x").is_none() && set.by_x5t("x7").is_none());
}

#[test]
fn unknown_members_of_the_document_and_of_keys_are_ignored() {
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
    let mut key = jwk(Some("k"), Some("xk"), &n);
    key["alg"] = "RS256".into();
    key["x5c"] = serde_json::json!(["MIIC..."]);
    key["x5t#S256"] = "abc".into();
    key["key_ops"] = serde_json::json!(["verify"]);
    key["cloud_instance_name"] = serde_json::json!({"nested": [1, 2]});
    key["issuer"] = "https://login.microsoftonline.com/{tenantid}/v2.0".into();
    let doc = serde_json::json!({"meta": {"a": 1}, "keys": [key], "version": 2});
    let set = KeySet::parse(doc.to_string().as_bytes(), KeySource::Fetched).expect("parses");
    let k = set.by_kid("k").expect("the key");
    assert_eq!(k.x5t.as_deref(), Some("xk"));
    assert_eq!(
        k.issuer.as_deref(),
        Some("https://login.microsoftonline.com/{tenantid}/v2.0")
    );
}

#[test]
fn the_fingerprint_follows_the_key_material_only() {
    let n = [0xc5u8; 256];
    let other = [0xc6u8; 256];
    assert_eq!(
        key_fingerprint(&n, &[1, 0, 1]),
        key_fingerprint(&n, &[1, 0, 1])
    );
    assert_ne!(
        key_fingerprint(&n, &[1, 0, 1]),
        key_fingerprint(&other, &[1, 0, 1])
    );
    assert_ne!(key_fingerprint(&n, &[1, 0, 1]), key_fingerprint(&n, &[3]));
    // The split between n and e is part of the input.
    assert_ne!(
        key_fingerprint(&[1, 2], &[3]),
        key_fingerprint(&[1], &[2, 3])
    );
    let doc = |kid: &str, byte: u8| {
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([byte; 256]);
        serde_json::json!({"keys": [jwk(Some(kid), None, &n)]}).to_string()
    };
    let a = KeySet::parse(doc("k", 0xc5).as_bytes(), KeySource::Fetched).expect("a");
    let b = KeySet::parse(doc("k", 0xc6).as_bytes(), KeySource::Fetched).expect("b");
    let fp = |s: &KeySet| s.by_kid("k").map(|k| k.fingerprint);
    assert!(fp(&a).is_some());
    assert_ne!(fp(&a), fp(&b), "same kid, other key material");
}

#[test]
fn an_https_metadata_document_may_only_name_an_https_jwks_uri() {
    type Want = fn(&Result<(), JwksUriError>) -> bool;
    let ok: Want = |r| r.is_ok();
    let downgrade: Want = |r| matches!(r, Err(JwksUriError::Downgrade { .. }));
    let scheme: Want = |r| matches!(r, Err(JwksUriError::Scheme { .. }));
    let not_url: Want = |r| matches!(r, Err(JwksUriError::NotUrl { .. }));
    let table = [
        (
            "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration",
            "https://login.microsoftonline.com/common/discovery/v2.0/keys",
            ok,
        ),
        ("https://idp/meta", "http://idp/keys", downgrade),
        ("HTTPS://idp/meta", "http://idp/keys", downgrade),
        ("https://idp/meta", "ftp://idp/keys", scheme),
        ("https://idp/meta", "file:///etc/passwd", scheme),
        ("https://idp/meta", "/relative/keys", not_url),
        ("http://127.0.0.1:1/meta", "http://127.0.0.1:1/keys", ok),
        ("http://127.0.0.1:1/meta", "https://idp/keys", ok),
    ];
    for (metadata, jwks, want) in table {
        let got = check_jwks_uri(metadata, jwks);
        assert!(want(&got), "{metadata} -> {jwks}: {got:?}");
    }
}

#[test]
fn redirects_stay_on_the_host_asked_for_and_never_downgrade() {
    type Want = fn(&Result<(), RedirectError>) -> bool;
    let followed: Want = |r| r.is_ok();
    let other_host: Want = |r| matches!(r, Err(RedirectError::OtherHost { .. }));
    let downgrade: Want = |r| matches!(r, Err(RedirectError::Downgrade { .. }));
    let too_many: Want = |r| matches!(r, Err(RedirectError::TooMany { .. }));
    let u = |s: &str| reqwest::Url::parse(s).expect("url");
    let first = u("https://login.example/keys");
    let table = [
        (
            u("https://login.example/v2/keys"),
            vec![first.clone()],
            followed,
        ),
        (
            u("https://LOGIN.example:8443/keys"),
            vec![first.clone()],
            followed,
        ),
        (
            u("https://evil.example/keys"),
            vec![first.clone()],
            other_host,
        ),
        (
            u("https://login.example.evil/keys"),
            vec![first.clone()],
            other_host,
        ),
        (
            u("http://login.example/keys"),
            vec![first.clone()],
            downgrade,
        ),
        (u("https://127.0.0.1/keys"), vec![first.clone()], other_host),
        (
            u("https://login.example/6"),
            vec![first.clone(); 6],
            too_many,
        ),
        (
            u("https://login.example/5"),
            vec![first.clone(); 5],
            followed,
        ),
    ];
    for (next, previous, want) in table {
        let got = redirect_allowed(&next, &previous);
        assert!(want(&got), "{next} after {} hops: {got:?}", previous.len());
    }
}

fn identity(min_refetch: Duration) -> IdentitySettings {
    IdentitySettings {
        cloud: Default::default(),
        metadata_url: None,
        jwks_uri: Some("http://127.0.0.1:1/keys".into()),
        refresh_interval: Duration::from_secs(3600),
        min_refetch_interval: min_refetch,
        cache_file: None,
        token_cache_size: 0,
        clock_skew: Duration::ZERO,
        algorithms: vec![],
        audiences: vec![],
    }
}

fn jwks_doc(kids: &[&str]) -> Vec<u8> {
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
    let keys: Vec<Value> = kids.iter().map(|k| jwk(Some(k), None, &n)).collect();
    serde_json::json!({ "keys": keys }).to_string().into_bytes()
}

/// A JWKS source whose fetches each wait for the test to open the gate, then give the next
/// scripted answer.
struct Scripted {
    gate: tokio::sync::Semaphore,
    answers: std::sync::Mutex<std::collections::VecDeque<Result<Vec<u8>, FetchError>>>,
    calls: std::sync::atomic::AtomicU64,
}

struct Double(Arc<Scripted>);

#[async_trait]
impl JwksFetch for Double {
    async fn fetch(&self) -> Result<Vec<u8>, FetchError> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        if let Ok(permit) = self.0.gate.acquire().await {
            permit.forget();
        }
        self.0
            .answers
            .lock()
            .ok()
            .and_then(|mut a| a.pop_front())
            .unwrap_or_else(|| Err(FetchError::Other("no answer scripted".into())))
    }
}

impl Default for Scripted {
    fn default() -> Self {
        Scripted {
            gate: tokio::sync::Semaphore::new(0),
            answers: Default::default(),
            calls: Default::default(),
        }
    }
}

impl Scripted {
    fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// A running store over a scripted source whose first fetch loads `old`.
async fn scripted_store(
    then: Result<Vec<u8>, FetchError>,
) -> (Arc<KeyStore>, Arc<Scripted>, Arc<KeySet>) {
    let script = Arc::new(Scripted::default());
    if let Ok(mut a) = script.answers.lock() {
        a.push_back(Ok(jwks_doc(&["old"])));
        a.push_back(then);
    }
    script.gate.add_permits(1);
    let store = KeyStore::with_fetcher(
        &identity(Duration::from_secs(30)),
        Arc::new(Metrics::new()),
        Box::new(Double(script.clone())),
    );
    tokio::spawn(store.clone().run());
    let set = store
        .first_load(Duration::from_secs(60))
        .await
        .expect("first load");
    // Let the refetch window pass (virtual time).
    tokio::time::sleep(Duration::from_secs(31)).await;
    (store, script, set)
}

/// Twenty requests miss the kid at once; the test opens the gate of the one refetch after
/// they all wait. Returns, per request, whether the set it got back has `new`.
async fn twenty_misses(store: &Arc<KeyStore>, script: &Scripted, set: &Arc<KeySet>) -> Vec<bool> {
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let (store, set) = (store.clone(), set.clone());
            tokio::spawn(async move {
                store
                    .refetch_for_unknown_kid(&set, KID_MISS_WAIT)
                    .await
                    .is_some_and(|s| s.by_kid("new").is_some())
            })
        })
        .collect();
    while script.calls() < 2 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    script.gate.add_permits(1);
    let mut found = Vec::new();
    for w in waiters {
        found.push(w.await.expect("waiter"));
    }
    found
}

#[tokio::test(start_paused = true)]
async fn kid_miss_waiters_are_answered_when_the_refetch_fails() {
    let (store, script, set) = scripted_store(Err(FetchError::Other("IdP down".into()))).await;
    let started = tokio::time::Instant::now();
    let found = twenty_misses(&store, &script, &set).await;
    assert_eq!(found, vec![false; 20]);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered when the fetch failed, not after a fixed wait: {:?}",
        started.elapsed()
    );
    assert_eq!(script.calls(), 2, "one refetch for twenty misses");
    assert_eq!(store.fetches_completed(), 2);
}

#[tokio::test(start_paused = true)]
async fn kid_miss_waiters_all_find_a_newly_published_key_after_one_refetch() {
    let (store, script, set) = scripted_store(Ok(jwks_doc(&["old", "new"]))).await;
    let started = tokio::time::Instant::now();
    let found = twenty_misses(&store, &script, &set).await;
    assert_eq!(found, vec![true; 20]);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(script.calls(), 2, "one refetch for twenty misses");
    // A request that searched the old set after that fetch completed looks in the current
    // set at once, without another fetch (the rate limit would refuse one anyway).
    let again = store
        .refetch_for_unknown_kid(&set, KID_MISS_WAIT)
        .await
        .expect("a set");
    assert!(again.by_kid("new").is_some());
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_miss_within_the_refetch_interval_is_answered_at_once_without_a_fetch() {
    let (store, script, _) = scripted_store(Ok(jwks_doc(&["old", "new"]))).await;
    let set = store.current().expect("set");
    // The first miss fetches (window passed); the gate is open for it.
    script.gate.add_permits(1);
    let got = store.refetch_for_unknown_kid(&set, KID_MISS_WAIT).await;
    assert!(got.is_some_and(|s| s.by_kid("new").is_some()));
    let newer = store.current().expect("set");
    let started = tokio::time::Instant::now();
    let got = store.refetch_for_unknown_kid(&newer, KID_MISS_WAIT).await;
    assert!(got.is_some_and(|s| Arc::ptr_eq(&s, &newer)));
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(script.calls(), 2);
}

/// A loopback HTTP/1.1 server answering raw responses by path (built once the address is
/// known, for redirects); 404 for other paths.
async fn raw_server(
    routes: impl FnOnce(std::net::SocketAddr) -> Vec<(String, Vec<u8>)>,
) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let routes = Arc::new(routes(addr));
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                    if n == buf.len() {
                        return;
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = head.split(' ').nth(1).unwrap_or_default();
                let resp = routes
                    .iter()
                    .find(|(p, _)| p == path)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_else(|| {
                        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                            .to_vec()
                    });
                let _ = sock.write_all(&resp).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

fn ok(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
    r.extend_from_slice(body);
    r
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut r = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for c in body.chunks(64 * 1024) {
        r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        r.extend_from_slice(c);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

fn redirect(to: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// A valid JWKS padded with trailing whitespace to exactly `len` bytes.
fn padded_jwks(len: usize) -> Vec<u8> {
    let mut doc = jwks_doc(&["k"]);
    doc.resize(len, b' ');
    doc
}

fn http_source(metadata_url: Option<String>, jwks_uri: Option<String>) -> HttpJwks {
    HttpJwks::new(&IdentitySettings {
        metadata_url,
        jwks_uri,
        ..identity(Duration::from_secs(30))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_over_one_mib_are_failed_fetches() {
    let addr = raw_server(|addr| {
        let meta = |path: &str| {
            ok(
                serde_json::json!({"jwks_uri": format!("http://{addr}{path}")})
                    .to_string()
                    .as_bytes(),
            )
        };
        let mut big_meta = serde_json::json!({"jwks_uri": format!("http://{addr}/exact")})
            .to_string()
            .into_bytes();
        big_meta.resize(MAX_DOCUMENT_BYTES + 1, b' ');
        vec![
            ("/exact".into(), ok(&padded_jwks(MAX_DOCUMENT_BYTES))),
            (
                "/exact-chunked".into(),
                chunked(&padded_jwks(MAX_DOCUMENT_BYTES)),
            ),
            ("/over".into(), ok(&padded_jwks(MAX_DOCUMENT_BYTES + 1))),
            (
                "/over-chunked".into(),
                chunked(&padded_jwks(MAX_DOCUMENT_BYTES + 1)),
            ),
            (
                "/huge-chunked".into(),
                chunked(&padded_jwks(8 * MAX_DOCUMENT_BYTES)),
            ),
            ("/meta".into(), meta("/exact")),
            ("/meta-over".into(), meta("/over")),
            ("/big-meta".into(), ok(&big_meta)),
        ]
    })
    .await;
    let url = |p: &str| Some(format!("http://{addr}{p}"));
    for (path, fits) in [
        ("/exact", true),
        ("/exact-chunked", true),
        ("/over", false),
        ("/over-chunked", false),
        ("/huge-chunked", false),
    ] {
        let got = http_source(None, url(path)).fetch().await;
        assert_eq!(got.is_ok(), fits, "{path}: {:?}", got.as_ref().err());
        if let Err(e) = got {
            assert!(matches!(e, FetchError::TooLarge { .. }), "{path}: {e}");
        }
    }
    for (path, fits) in [("/meta", true), ("/meta-over", false), ("/big-meta", false)] {
        let got = http_source(url(path), None).fetch().await;
        assert_eq!(got.is_ok(), fits, "{path}: {:?}", got.as_ref().err());
    }
    // Through the store: a document over the cap is a failed fetch, counted as such.
    let metrics = Arc::new(Metrics::new());
    let store = KeyStore::with_fetcher(
        &identity(Duration::from_secs(30)),
        metrics.clone(),
        Box::new(http_source(None, url("/over"))),
    );
    assert!(!store.fetch_once().await);
    assert_eq!(metrics.jwks_fetch.with_label_values(&["error"]).get(), 1);
    assert!(store.current().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_redirects_are_followed_only_to_the_same_host() {
    let addr = raw_server(|addr| {
        vec![
            ("/keys".into(), ok(&jwks_doc(&["k"]))),
            ("/moved".into(), redirect("/keys")),
            (
                "/moved-abs".into(),
                redirect(&format!("http://{addr}/keys")),
            ),
            (
                "/elsewhere".into(),
                redirect(&format!("http://localhost:{}/keys", addr.port())),
            ),
            (
                "/meta-elsewhere".into(),
                redirect(&format!("http://localhost:{}/meta", addr.port())),
            ),
            (
                "/meta".into(),
                ok(
                    serde_json::json!({"jwks_uri": format!("http://{addr}/keys")})
                        .to_string()
                        .as_bytes(),
                ),
            ),
            ("/loop".into(), redirect("/loop")),
        ]
    })
    .await;
    let url = |p: &str| Some(format!("http://{addr}{p}"));
    for (path, followed) in [
        ("/moved", true),
        ("/moved-abs", true),
        ("/elsewhere", false),
        ("/loop", false),
    ] {
        let got = http_source(None, url(path)).fetch().await;
        assert_eq!(got.is_ok(), followed, "{path}: {:?}", got.as_ref().err());
        if let Err(e) = got {
            assert!(
                matches!(e, FetchError::RedirectRefused { .. }),
                "{path}: {e}"
            );
        }
    }
    assert!(http_source(url("/meta"), None).fetch().await.is_ok());
    assert!(http_source(url("/meta-elsewhere"), None)
        .fetch()
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_fetches_say_which_step_failed() {
    let addr = raw_server(|addr| {
        let meta = |doc: Value| ok(doc.to_string().as_bytes());
        vec![
            ("/keys".into(), ok(&jwks_doc(&["k"]))),
            ("/meta".into(), meta(serde_json::json!({"jwks_uri": format!("http://{addr}/keys"), "issuer": "x", "extra": [1]}))),
            ("/meta-not-json".into(), ok(b"<html>")),
            ("/meta-no-uri".into(), meta(serde_json::json!({"issuer": "x"}))),
            ("/meta-uri-number".into(), meta(serde_json::json!({"jwks_uri": 1}))),
            ("/meta-array".into(), meta(serde_json::json!([format!("http://{addr}/keys")]))),
            ("/meta-ftp".into(), meta(serde_json::json!({"jwks_uri": "ftp://idp/keys"}))),
            ("/meta-missing-keys".into(), meta(serde_json::json!({"jwks_uri": format!("http://{addr}/missing")}))),
            ("/no-keys".into(), ok(br#"{"keys": "none"}"#)),
        ]
    })
    .await;
    let url = |p: &str| Some(format!("http://{addr}{p}"));
    type Want = fn(&FetchError) -> bool;
    let table: [(Option<String>, Option<String>, Want); 9] = [
        (None, None, |e| matches!(e, FetchError::NoSource)),
        (url("/meta-not-json"), None, |e| {
            matches!(e, FetchError::MetadataNotJson { .. })
        }),
        (url("/meta-no-uri"), None, |e| {
            matches!(e, FetchError::NoJwksUri { .. })
        }),
        (url("/meta-uri-number"), None, |e| {
            matches!(e, FetchError::NoJwksUri { .. })
        }),
        (url("/meta-array"), None, |e| {
            matches!(e, FetchError::NoJwksUri { .. })
        }),
        (url("/meta-ftp"), None, |e| {
            matches!(e, FetchError::BadJwksUri(JwksUriError::Scheme { .. }))
        }),
        (
            url("/meta-missing-keys"),
            None,
            |e| matches!(e, FetchError::Status { status, .. } if status.as_u16() == 404),
        ),
        (
            None,
            url("/missing"),
            |e| matches!(e, FetchError::Status { status, .. } if status.as_u16() == 404),
        ),
        (
            None,
            Some(format!("http://127.0.0.1:{}/keys", closed_port())),
            |e| matches!(e, FetchError::Transport { .. }),
        ),
    ];
    for (metadata_url, jwks_uri, want) in table {
        let what = format!("{metadata_url:?} {jwks_uri:?}");
        match http_source(metadata_url, jwks_uri).fetch().await {
            Ok(_) => panic!("{what}: fetched"),
            Err(e) => assert!(want(&e), "{what}: {e:?}"),
        }
    }
    assert!(http_source(url("/meta"), None).fetch().await.is_ok());
    // A document that arrives but gives no key set is a failed fetch of its own kind.
    let metrics = Arc::new(Metrics::new());
    let store = KeyStore::with_fetcher(
        &identity(Duration::from_secs(30)),
        metrics.clone(),
        Box::new(http_source(None, url("/no-keys"))),
    );
    assert!(!store.fetch_once().await);
    assert_eq!(metrics.jwks_fetch.with_label_values(&["error"]).get(), 1);
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
