//! The signing-key store: fetches the JWKS (through the OpenID metadata or directly), keeps the
//! current key set in an `ArcSwap` for lock-free reads, refreshes it in the background, refetches
//! on an unknown `kid` at most once per `min_refetch_interval`, keeps the last good keys when a
//! fetch fails, and optionally persists them to `cache_file` for a start without the IdP.
//!
//! The request path never waits on a lock held across network I/O: it reads the snapshot, and on
//! a miss asks the background task (the only fetcher) for a fetch and waits until a fetch
//! completes, succeeded or failed. However many requests ask at once, one fetch is made.
//!
//! Every fetch is bounded: a metadata or JWKS document over [`MAX_DOCUMENT_BYTES`] is a failed
//! fetch, redirects are followed only to the same host, and an https `metadata_url` may only name
//! an https `jwks_uri`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use async_trait::async_trait;
use aws_lc_rs::digest;
use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::IdentitySettings;
use crate::metrics::Metrics;

/// One usable RSA signing key.
pub struct Jwk {
    pub kid: Option<String>,
    pub x5t: Option<String>,
    /// AAD's v2 keys carry the issuer (template) they sign for.
    pub issuer: Option<String>,
    pub key: DecodingKey,
    /// The key parsed once for RS256 (Azure AD's algorithm), so a verification does not rebuild
    /// it from `n`/`e`; `None` for keys aws-lc will not take for RS256 (under 2048 bits).
    pub rs256: Option<aws_lc_rs::signature::ParsedPublicKey>,
    /// SHA-256 over the key material (`n` and `e`), computed once when the set is parsed: a
    /// cached token is used only while its `kid` still names a key with this fingerprint.
    pub fingerprint: [u8; 32],
}

/// SHA-256 of `len(n) ‖ n ‖ e` (the length makes the split between `n` and `e` unambiguous).
pub fn key_fingerprint(n: &[u8], e: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&(n.len() as u64).to_be_bytes());
    ctx.update(n);
    ctx.update(e);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("x5t", &self.x5t)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Where the current key set came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Fetched,
    CacheFile,
    Static,
}

/// A snapshot of the signing keys, indexed by `kid` and by `x5t`.
#[derive(Debug)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<Jwk>>,
    by_x5t: HashMap<String, Arc<Jwk>>,
    count: usize,
    pub source: KeySource,
    /// Unix time the set was fetched or loaded.
    pub loaded_at: i64,
    /// The JWKS document as received, for `cache_file`.
    raw: Vec<u8>,
}

/// Decodes base64url, also accepting the padded and standard alphabets some key sets use.
fn lenient_b64(s: &str) -> Option<Vec<u8>> {
    let cleaned: String = s
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cleaned)
        .ok()
}

impl KeySet {
    /// Parses a JWKS document. Keys that are not RSA signing keys, or lack both `kid` and `x5t`,
    /// are skipped; a document with no usable key is an error.
    pub fn parse(raw: &[u8], source: KeySource) -> Result<KeySet, String> {
        let doc: Value =
            serde_json::from_slice(raw).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("JWKS has no `keys` array")?;
        let mut by_kid = HashMap::new();
        let mut by_x5t = HashMap::new();
        let mut count = 0;
        for k in keys {
            let s = |name: &str| k.get(name).and_then(Value::as_str);
            if s("kty") != Some("RSA") || s("use").is_some_and(|u| u != "sig") {
                continue;
            }
            let (Some(n), Some(e)) = (s("n").and_then(lenient_b64), s("e").and_then(lenient_b64))
            else {
                continue;
            };
            if n.len() < 128 || e.is_empty() {
                continue;
            }
            let kid = s("kid").map(String::from);
            let x5t = s("x5t").map(String::from);
            if kid.is_none() && x5t.is_none() {
                continue;
            }
            let jwk = Arc::new(Jwk {
                kid: kid.clone(),
                x5t: x5t.clone(),
                issuer: s("issuer").map(String::from),
                key: DecodingKey::from_rsa_raw_components(&n, &e),
                rs256: aws_lc_rs::signature::RsaPublicKeyComponents {
                    n: &n[..],
                    e: &e[..],
                }
                .to_parsed_public_key(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256)
                .ok(),
                fingerprint: key_fingerprint(&n, &e),
            });
            if let Some(kid) = kid {
                by_kid.insert(kid, jwk.clone());
            }
            if let Some(x5t) = x5t {
                by_x5t.insert(x5t, jwk);
            }
            count += 1;
        }
        if count == 0 {
            return Err("JWKS has no usable RSA signing key".into());
        }
        Ok(KeySet {
            by_kid,
            by_x5t,
            count,
            source,
            loaded_at: unix_now(),
            raw: raw.to_vec(),
        })
    }

    /// The key with this `kid`.
    pub fn by_kid(&self, kid: &str) -> Option<&Arc<Jwk>> {
        self.by_kid.get(kid)
    }

    /// The key with this `x5t` (only for tokens without `kid`).
    pub fn by_x5t(&self, x5t: &str) -> Option<&Arc<Jwk>> {
        self.by_x5t.get(x5t)
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when the set has no keys (never, for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True when a key with this id (`kid`, or `x5t` for kid-less tokens) is still present.
    pub fn contains(&self, id: &str) -> bool {
        self.by_kid.contains_key(id) || self.by_x5t.contains_key(id)
    }
}

/// Current Unix time in seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The schedule of fetches, as pure functions of timestamps and settings.
pub mod schedule {
    use std::time::Duration;

    /// Delay before the next start-up attempt after `failures` consecutive failures (>= 1):
    /// 1 s doubling, capped at `min_refetch`.
    pub fn startup_backoff(failures: u32, min_refetch: Duration) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        Duration::from_secs(1u64 << exp)
            .min(min_refetch)
            .max(Duration::from_millis(100))
    }

    /// Delay from the last attempt to the next background fetch.
    /// With no keys yet: the start-up backoff. With keys: `refresh` after a success, or
    /// `min_refetch` (but not more than `refresh`) after a failed refresh.
    pub fn next_fetch_delay(
        have_keys: bool,
        last_failed: bool,
        failures: u32,
        refresh: Duration,
        min_refetch: Duration,
    ) -> Duration {
        if !have_keys {
            startup_backoff(failures.max(1), min_refetch)
        } else if last_failed {
            min_refetch.min(refresh)
        } else {
            refresh
        }
    }

    /// Whether a kid-miss refetch may start now: only when `min_refetch` has passed since the
    /// start of the previous fetch (of any kind).
    pub fn may_refetch(since_last_fetch: Option<Duration>, min_refetch: Duration) -> bool {
        since_last_fetch.is_none_or(|d| d >= min_refetch)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Intervals {
    refresh: Duration,
    min_refetch: Duration,
}

/// Largest metadata or JWKS document accepted; a larger one is a failed fetch (SPEC 8). AAD's
/// documents are a few KiB.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Redirects followed for one metadata or JWKS request (each to the same host).
pub const MAX_REDIRECTS: usize = 5;

/// Where a fetch gets the JWKS document from: [`HttpJwks`] (metadata, then JWKS, over HTTP) in
/// production, a double in tests. The [`KeyStore`]'s background task is its only caller.
#[async_trait]
pub trait JwksFetch: Send + Sync + 'static {
    /// One fetch of the JWKS document as received. An error is a failed fetch.
    async fn fetch(&self) -> Result<Vec<u8>, String>;
}

/// Fetches the JWKS over HTTP: from `jwks_uri` when configured, else from the `jwks_uri` the
/// OpenID metadata names (read again on every fetch, so a moved `jwks_uri` is followed).
pub struct HttpJwks {
    metadata_url: Option<String>,
    jwks_uri: Option<String>,
    /// Built on first use: a store that never fetches never pays for it.
    client: std::sync::OnceLock<reqwest::Client>,
}

impl std::fmt::Debug for HttpJwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpJwks")
            .field("metadata_url", &self.metadata_url)
            .field("jwks_uri", &self.jwks_uri)
            .finish_non_exhaustive()
    }
}

impl HttpJwks {
    /// A fetcher for the key source of `identity`.
    pub fn new(identity: &IdentitySettings) -> Self {
        HttpJwks {
            metadata_url: identity.metadata_url.clone(),
            jwks_uri: identity.jwks_uri.clone(),
            client: std::sync::OnceLock::new(),
        }
    }

    async fn discover(&self) -> Result<String, String> {
        let Some(metadata_url) = &self.metadata_url else {
            return Err("no metadata_url or jwks_uri".into());
        };
        let body = self.get(metadata_url).await?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("metadata at {metadata_url} is not JSON: {e}"))?;
        let uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("metadata at {metadata_url} has no jwks_uri"))?;
        check_jwks_uri(metadata_url, uri)?;
        Ok(uri.to_string())
    }

    /// GET `url`: a success status and a body of at most [`MAX_DOCUMENT_BYTES`], read in chunks
    /// so a larger one is never buffered whole.
    async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        let client = self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                .redirect(same_host_redirects())
                .user_agent(concat!("aadgate/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default()
        });
        let mut resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        let too_large =
            || format!("GET {url}: the document is larger than {MAX_DOCUMENT_BYTES} bytes");
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?
        {
            if body.len().saturating_add(chunk.len()) > MAX_DOCUMENT_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

#[async_trait]
impl JwksFetch for HttpJwks {
    async fn fetch(&self) -> Result<Vec<u8>, String> {
        let uri = match &self.jwks_uri {
            Some(uri) => uri.clone(),
            None => self.discover().await?,
        };
        self.get(&uri).await
    }
}

/// The `jwks_uri` a metadata document names must be an http(s) URL, and https when the metadata
/// came over https (a downgrade would let a network attacker supply the keys).
pub fn check_jwks_uri(metadata_url: &str, jwks_uri: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(jwks_uri).map_err(|e| {
        format!("metadata at {metadata_url} names jwks_uri {jwks_uri:?}, which is not a URL: {e}")
    })?;
    let metadata_https = reqwest::Url::parse(metadata_url).is_ok_and(|u| u.scheme() == "https");
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if !metadata_https => Ok(()),
        "http" => Err(format!(
            "metadata at {metadata_url} (https) names a jwks_uri over plain http ({jwks_uri}); refused"
        )),
        other => Err(format!(
            "metadata at {metadata_url} names a jwks_uri with scheme {other:?}; only http(s) is fetched"
        )),
    }
}

/// Whether a redirect from the chain `previous` (first = the URL asked for) to `next` is
/// followed: only to the same host, never from https to http, at most [`MAX_REDIRECTS`].
pub fn redirect_allowed(next: &reqwest::Url, previous: &[reqwest::Url]) -> Result<(), String> {
    let Some(first) = previous.first() else {
        return Ok(());
    };
    if previous.len() > MAX_REDIRECTS {
        return Err(format!("more than {MAX_REDIRECTS} redirects from {first}"));
    }
    if next.host_str() != first.host_str() {
        return Err(format!(
            "{first} redirects to another host ({}); only same-host redirects are followed",
            next.host_str().unwrap_or("-")
        ));
    }
    let last = previous.last().unwrap_or(first);
    if last.scheme() == "https" && next.scheme() != "https" {
        return Err(format!("{last} redirects from https to {next}; refused"));
    }
    Ok(())
}

fn same_host_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        match redirect_allowed(attempt.url(), attempt.previous()) {
            Ok(()) => attempt.follow(),
            Err(e) => attempt.error(e),
        }
    })
}

/// What the background task is doing, published to the requests that wait on it.
#[derive(Debug, Clone, Copy, Default)]
struct FetchState {
    /// Fetches finished (succeeded or failed) since the store was built.
    completed: u64,
    /// A fetch is running.
    in_progress: bool,
    /// When the last fetch (of any kind) started.
    last_start: Option<Instant>,
    /// A kid-miss asks for fetch number `wanted`; pending while `wanted > completed`.
    wanted: u64,
    /// Kid-miss asks the rate limit turned down (wakes their waiters at once).
    refused: u64,
}

/// Fetches and holds signing keys. Cheap to share (`Arc`).
pub struct KeyStore {
    current: ArcSwapOption<KeySet>,
    source: Box<dyn JwksFetch>,
    cache_file: Option<PathBuf>,
    intervals: ArcSwap<Intervals>,
    state: watch::Sender<FetchState>,
    metrics: Arc<Metrics>,
    stopped: AtomicBool,
    first_attempt_done: AtomicBool,
    /// A store built from a fixed key set never fetches, so it never waits for a refetch.
    fixed: AtomicBool,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.current().map(|s| s.len()))
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

/// Safety bound on how long a request waits for a kid-miss refetch or the first load. Waiters
/// are answered when the fetch completes, which [`FETCH_TIMEOUT`] bounds; this bound only
/// matters when no background task runs.
pub const KID_MISS_WAIT: Duration = Duration::from_secs(11);
/// Timeout of one whole fetch (metadata and JWKS requests together).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

impl KeyStore {
    /// A store for the key source of `identity`. Nothing is fetched until [`KeyStore::run`].
    pub fn new(identity: &IdentitySettings, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_fetcher(identity, metrics, Box::new(HttpJwks::new(identity)))
    }

    /// A store that fetches through `source` (the intervals and `cache_file` of `identity`
    /// apply). Nothing is fetched until [`KeyStore::run`].
    pub fn with_fetcher(
        identity: &IdentitySettings,
        metrics: Arc<Metrics>,
        source: Box<dyn JwksFetch>,
    ) -> Arc<Self> {
        Arc::new(KeyStore {
            current: ArcSwapOption::empty(),
            source,
            cache_file: identity.cache_file.clone(),
            intervals: ArcSwap::from_pointee(Intervals {
                refresh: identity.refresh_interval,
                min_refetch: identity.min_refetch_interval,
            }),
            state: watch::channel(FetchState::default()).0,
            metrics,
            stopped: AtomicBool::new(false),
            first_attempt_done: AtomicBool::new(false),
            fixed: AtomicBool::new(false),
        })
    }

    /// A store for a new key source that serves `previous` (the old source's keys) until its
    /// own first load succeeds, so a reload that changes the key source never drops to
    /// `keys_unavailable`.
    pub fn new_seeded(
        identity: &IdentitySettings,
        metrics: Arc<Metrics>,
        previous: Option<Arc<KeySet>>,
    ) -> Arc<Self> {
        let store = KeyStore::new(identity, metrics);
        if let Some(set) = previous {
            store.current.store(Some(set));
        }
        store
    }

    /// A store holding a fixed key set, never fetching (for `explain --jwks` and tests).
    pub fn fixed(set: KeySet, metrics: Arc<Metrics>) -> Arc<Self> {
        let identity = IdentitySettings {
            metadata_url: None,
            jwks_uri: None,
            refresh_interval: Duration::from_secs(3600),
            min_refetch_interval: Duration::from_secs(3600),
            cache_file: None,
            token_cache_size: 0,
            clock_skew: Duration::ZERO,
            algorithms: vec![],
            audiences: vec![],
        };
        let store = KeyStore::new(&identity, metrics);
        store.install(set);
        store.first_attempt_done.store(true, Ordering::SeqCst);
        store.fixed.store(true, Ordering::SeqCst);
        store
    }

    /// Applies new intervals from a reload that kept the same key source.
    pub fn update_intervals(&self, identity: &IdentitySettings) {
        self.intervals.store(Arc::new(Intervals {
            refresh: identity.refresh_interval,
            min_refetch: identity.min_refetch_interval,
        }));
    }

    /// The current key set, if any was ever loaded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Stops the background task at its next wake-up (used when a reload replaces the store);
    /// requests waiting on this store are answered at once.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.state.send_modify(|_| {});
    }

    /// Replaces the current key set (the waiters are told when the fetch completes).
    fn install(&self, set: KeySet) {
        self.metrics.jwks_keys.set(set.len() as i64);
        self.current.store(Some(Arc::new(set)));
    }

    /// Fetches finished so far, succeeded or failed (for tests and diagnostics).
    pub fn fetches_completed(&self) -> u64 {
        self.state.borrow().completed
    }

    /// Called by a request when no key set is loaded: waits (at most `wait`) while the very
    /// first load is still in progress, then returns whatever is loaded.
    pub async fn first_load(&self, wait: Duration) -> Option<Arc<KeySet>> {
        let mut rx = self.state.subscribe();
        let _ = tokio::time::timeout(
            wait,
            rx.wait_for(|_| {
                self.current.load().is_some()
                    || self.first_attempt_done.load(Ordering::SeqCst)
                    || self.stopped.load(Ordering::SeqCst)
            }),
        )
        .await;
        self.current()
    }

    /// True once the first load attempt (including the `cache_file` fallback) has finished.
    pub fn first_attempt_done(&self) -> bool {
        self.first_attempt_done.load(Ordering::SeqCst)
    }

    /// Called by a request whose key is not in `looked_in`, the set it searched. Returns the key
    /// set to search again:
    /// - at once, when the current set is no longer `looked_in` (a fetch completed meanwhile);
    /// - when the fetch in progress completes, succeeded or failed;
    /// - when a fetch it asked for completes, if `min_refetch_interval` has passed since the
    ///   previous fetch started (however many requests ask, one fetch is made);
    /// - else at once (the rate limit refuses a refetch).
    ///
    /// `wait` is only a safety bound (no background task running).
    pub async fn refetch_for_unknown_kid(
        &self,
        looked_in: &Arc<KeySet>,
        wait: Duration,
    ) -> Option<Arc<KeySet>> {
        if self.fixed.load(Ordering::SeqCst) {
            return self.current();
        }
        let mut rx = self.state.subscribe();
        let seen = *rx.borrow_and_update();
        let now = self.current();
        if now.as_ref().is_some_and(|set| !Arc::ptr_eq(set, looked_in)) {
            return now;
        }
        if !seen.in_progress {
            let min_refetch = self.intervals.load().min_refetch;
            if !schedule::may_refetch(seen.last_start.map(|t| t.elapsed()), min_refetch) {
                return now;
            }
            let want = seen.completed.saturating_add(1);
            self.state.send_if_modified(|s| {
                let ask = s.wanted < want;
                if ask {
                    s.wanted = want;
                }
                ask
            });
        }
        let _ = tokio::time::timeout(
            wait,
            rx.wait_for(|s| {
                s.completed > seen.completed
                    || s.refused > seen.refused
                    || self.stopped.load(Ordering::SeqCst)
            }),
        )
        .await;
        self.current()
    }

    /// The background task, the store's only fetcher: loads keys at start (falling back to
    /// `cache_file`), refreshes every `refresh_interval`, and serves kid-miss asks within the
    /// refetch limit. Runs until [`KeyStore::stop`].
    pub async fn run(self: Arc<Self>) {
        let mut rx = self.state.subscribe();
        let mut failures: u32 = 0;
        let mut last_failed;
        let mut tried_cache_file = false;
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            self.state.send_modify(|s| {
                s.in_progress = true;
                s.last_start = Some(Instant::now());
            });
            let ok = self.fetch_once().await;
            if ok {
                failures = 0;
                last_failed = false;
            } else {
                failures = failures.saturating_add(1);
                last_failed = true;
                if self.current().is_none() && !tried_cache_file {
                    tried_cache_file = true;
                    self.load_cache_file();
                }
            }
            self.first_attempt_done.store(true, Ordering::SeqCst);
            // Waiters wake here, after the new keys (if any) are installed.
            self.state.send_modify(|s| {
                s.in_progress = false;
                s.completed = s.completed.saturating_add(1);
            });
            // Wait for the scheduled time or a kid-miss ask that the rate limit allows.
            loop {
                if self.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let iv = **self.intervals.load();
                let st = *rx.borrow_and_update();
                let since = st.last_start.map(|t| t.elapsed());
                if st.wanted > st.completed {
                    if schedule::may_refetch(since, iv.min_refetch) {
                        break;
                    }
                    // Refused (the interval grew since the ask): answer the waiters now.
                    self.state.send_modify(|s| {
                        s.wanted = s.completed;
                        s.refused = s.refused.saturating_add(1);
                    });
                    continue;
                }
                let delay = schedule::next_fetch_delay(
                    self.current().is_some(),
                    last_failed,
                    failures,
                    iv.refresh,
                    iv.min_refetch,
                );
                let remaining = delay.saturating_sub(since.unwrap_or(Duration::ZERO));
                tokio::select! {
                    _ = tokio::time::sleep(remaining) => break,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    fn load_cache_file(&self) {
        let Some(path) = &self.cache_file else { return };
        match std::fs::read(path) {
            Ok(raw) => match KeySet::parse(&raw, KeySource::CacheFile) {
                Ok(mut set) => {
                    set.loaded_at = file_mtime(path).unwrap_or(set.loaded_at);
                    tracing::warn!(
                        path = %path.display(),
                        keys = set.len(),
                        "identity provider unreachable; serving with the last-known-good keys from cache_file"
                    );
                    self.install(set);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cache_file is unusable")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cache_file cannot be read")
            }
        }
    }

    /// One fetch through the source, bounded by [`FETCH_TIMEOUT`]. Returns whether new keys were
    /// installed.
    async fn fetch_once(&self) -> bool {
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.source.fetch()).await {
            Ok(raw) => raw.and_then(|raw| KeySet::parse(&raw, KeySource::Fetched)),
            Err(_) => Err(format!("no answer within {} s", FETCH_TIMEOUT.as_secs())),
        };
        match result {
            Ok(set) => {
                self.metrics.jwks_fetch.with_label_values(&["ok"]).inc();
                self.metrics.jwks_last_success.set(set.loaded_at as f64);
                tracing::info!(keys = set.len(), "signing keys loaded");
                if let Some(path) = &self.cache_file {
                    if let Err(e) = write_atomically(path, &set.raw) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot write cache_file");
                    }
                }
                self.install(set);
                true
            }
            Err(e) => {
                self.metrics.jwks_fetch.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, have_keys = self.current().is_some(), "JWKS fetch failed");
                false
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn file_mtime(path: &Path) -> Option<i64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(m.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::schedule::*;
    use super::*;

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
            set.by_kid("ec").is_none()
                && set.by_kid("enc").is_none()
                && set.by_kid("short").is_none()
        );
    }

    #[test]
    fn a_document_without_usable_keys_is_a_failed_fetch() {
        for doc in [
            r#"{"keys": []}"#,
            r#"{"nokeys": 1}"#,
            "not json",
            r#"{"keys":[{"kty":"EC"}]}"#,
        ] {
            assert!(
                KeySet::parse(doc.as_bytes(), KeySource::Fetched).is_err(),
                "{doc}"
            );
        }
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
        let table = [
            (
                "https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration",
                "https://login.microsoftonline.com/common/discovery/v2.0/keys",
                true,
            ),
            ("https://idp/meta", "http://idp/keys", false),
            ("HTTPS://idp/meta", "http://idp/keys", false),
            ("https://idp/meta", "ftp://idp/keys", false),
            ("https://idp/meta", "file:///etc/passwd", false),
            ("https://idp/meta", "/relative/keys", false),
            ("http://127.0.0.1:1/meta", "http://127.0.0.1:1/keys", true),
            ("http://127.0.0.1:1/meta", "https://idp/keys", true),
        ];
        for (metadata, jwks, ok) in table {
            assert_eq!(
                check_jwks_uri(metadata, jwks).is_ok(),
                ok,
                "{metadata} -> {jwks}"
            );
        }
    }

    #[test]
    fn redirects_stay_on_the_host_asked_for_and_never_downgrade() {
        let u = |s: &str| reqwest::Url::parse(s).expect("url");
        let first = u("https://login.example/keys");
        let table = [
            (
                u("https://login.example/v2/keys"),
                vec![first.clone()],
                true,
            ),
            (
                u("https://LOGIN.example:8443/keys"),
                vec![first.clone()],
                true,
            ),
            (u("https://evil.example/keys"), vec![first.clone()], false),
            (
                u("https://login.example.evil/keys"),
                vec![first.clone()],
                false,
            ),
            (u("http://login.example/keys"), vec![first.clone()], false),
            (u("https://127.0.0.1/keys"), vec![first.clone()], false),
            (u("https://login.example/6"), vec![first.clone(); 6], false),
            (u("https://login.example/5"), vec![first.clone(); 5], true),
        ];
        for (next, previous, ok) in table {
            assert_eq!(
                redirect_allowed(&next, &previous).is_ok(),
                ok,
                "{next} after {} hops",
                previous.len()
            );
        }
    }

    fn identity(min_refetch: Duration) -> IdentitySettings {
        IdentitySettings {
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
        answers: std::sync::Mutex<std::collections::VecDeque<Result<Vec<u8>, String>>>,
        calls: std::sync::atomic::AtomicU64,
    }

    struct Double(Arc<Scripted>);

    #[async_trait]
    impl JwksFetch for Double {
        async fn fetch(&self) -> Result<Vec<u8>, String> {
            self.0.calls.fetch_add(1, Ordering::SeqCst);
            if let Ok(permit) = self.0.gate.acquire().await {
                permit.forget();
            }
            self.0
                .answers
                .lock()
                .ok()
                .and_then(|mut a| a.pop_front())
                .unwrap_or_else(|| Err("no answer scripted".into()))
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
        then: Result<Vec<u8>, String>,
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
    async fn twenty_misses(
        store: &Arc<KeyStore>,
        script: &Scripted,
        set: &Arc<KeySet>,
    ) -> Vec<bool> {
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
        let (store, script, set) = scripted_store(Err("IdP down".into())).await;
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
                            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
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
        format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").into_bytes()
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
                assert!(e.contains("larger than"), "{path}: {e}");
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
        }
        assert!(http_source(url("/meta"), None).fetch().await.is_ok());
        assert!(http_source(url("/meta-elsewhere"), None)
            .fetch()
            .await
            .is_err());
    }
}
