//! The signing-key store: fetches the JWKS (through the OpenID metadata or directly), keeps the
//! current key set in an `ArcSwap` for lock-free reads, refreshes it in the background, refetches
//! on an unknown `kid` at most once per `min_refetch_interval`, keeps the last good keys when a
//! fetch fails, and optionally persists them to `cache_file` for a start without the IdP.
//!
//! The request path never waits on a lock held across network I/O: it reads the snapshot, and on
//! a miss nudges the background task and waits (bounded) for the next key-set generation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use base64::Engine;
use jsonwebtoken::DecodingKey;
use serde_json::Value;
use tokio::sync::{watch, Notify};

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

/// Fetches and holds signing keys. Cheap to share (`Arc`).
pub struct KeyStore {
    current: ArcSwapOption<KeySet>,
    metadata_url: Option<String>,
    jwks_uri: Option<String>,
    discovered_jwks_uri: Mutex<Option<String>>,
    cache_file: Option<PathBuf>,
    intervals: ArcSwap<Intervals>,
    last_fetch_start: Mutex<Option<Instant>>,
    nudge: Notify,
    generation: watch::Sender<u64>,
    /// Built on first use: a store that never fetches (explain --jwks) never pays for it.
    client: std::sync::OnceLock<reqwest::Client>,
    metrics: Arc<Metrics>,
    stopped: AtomicBool,
    first_attempt_done: AtomicBool,
    /// A store built from a fixed key set never fetches, so it never waits for a refetch.
    fixed: AtomicBool,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("metadata_url", &self.metadata_url)
            .field("jwks_uri", &self.jwks_uri)
            .finish_non_exhaustive()
    }
}

/// How long a request waits for a kid-miss refetch before answering `unknown_kid`.
pub const KID_MISS_WAIT: Duration = Duration::from_secs(5);
/// Timeout of one metadata or JWKS request.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

impl KeyStore {
    /// A store for the key source of `identity`. Nothing is fetched until [`KeyStore::run`].
    pub fn new(identity: &IdentitySettings, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(KeyStore {
            current: ArcSwapOption::empty(),
            metadata_url: identity.metadata_url.clone(),
            jwks_uri: identity.jwks_uri.clone(),
            discovered_jwks_uri: Mutex::new(None),
            cache_file: identity.cache_file.clone(),
            intervals: ArcSwap::from_pointee(Intervals {
                refresh: identity.refresh_interval,
                min_refetch: identity.min_refetch_interval,
            }),
            last_fetch_start: Mutex::new(None),
            nudge: Notify::new(),
            generation: watch::channel(0).0,
            client: std::sync::OnceLock::new(),
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

    /// Stops the background task at its next wake-up (used when a reload replaces the store).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.nudge.notify_one();
    }

    fn install(&self, set: KeySet) {
        self.metrics.jwks_keys.set(set.len() as i64);
        self.current.store(Some(Arc::new(set)));
        self.generation.send_modify(|g| *g += 1);
    }

    fn since_last_fetch(&self) -> Option<Duration> {
        self.last_fetch_start
            .lock()
            .ok()
            .and_then(|g| g.map(|t| t.elapsed()))
    }

    /// Called by a request when no key set is loaded: waits (at most `wait`) while the very
    /// first load is still in progress, then returns whatever is loaded.
    pub async fn first_load(&self, wait: Duration) -> Option<Arc<KeySet>> {
        let mut rx = self.generation.subscribe();
        let _ = tokio::time::timeout(wait, async {
            while self.current().is_none() && !self.first_attempt_done.load(Ordering::SeqCst) {
                if rx.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        self.current()
    }

    /// True once the first load attempt (including the `cache_file` fallback) has finished.
    pub fn first_attempt_done(&self) -> bool {
        self.first_attempt_done.load(Ordering::SeqCst)
    }

    /// Called by a request whose `kid` is not in the current set. If a refetch is allowed now,
    /// nudges the background task and waits (at most `wait`) for a new key set; otherwise returns
    /// at once. Returns the key set to look in again, or `None` if nothing new arrived.
    pub async fn refetch_for_unknown_kid(&self, wait: Duration) -> Option<Arc<KeySet>> {
        if self.fixed.load(Ordering::SeqCst) {
            return None;
        }
        let min_refetch = self.intervals.load().min_refetch;
        if !schedule::may_refetch(self.since_last_fetch(), min_refetch) {
            return None;
        }
        let mut rx = self.generation.subscribe();
        let seen = *rx.borrow_and_update();
        self.nudge.notify_one();
        let changed = tokio::time::timeout(wait, async {
            while rx.changed().await.is_ok() {
                if *rx.borrow_and_update() != seen {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        changed.then(|| self.current()).flatten()
    }

    /// The background task: loads keys at start (falling back to `cache_file`), refreshes every
    /// `refresh_interval`, and serves kid-miss nudges within the refetch limit. Runs until
    /// [`KeyStore::stop`].
    pub async fn run(self: Arc<Self>) {
        let mut failures: u32 = 0;
        let mut last_failed;
        let mut tried_cache_file = false;
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
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
            if !self.first_attempt_done.swap(true, Ordering::SeqCst) {
                self.generation.send_modify(|_| {});
            }
            // Wait for the scheduled time or a nudge that the rate limit allows.
            loop {
                let iv = **self.intervals.load();
                let delay = schedule::next_fetch_delay(
                    self.current().is_some(),
                    last_failed,
                    failures,
                    iv.refresh,
                    iv.min_refetch,
                );
                let since = self.since_last_fetch().unwrap_or(Duration::ZERO);
                let remaining = delay.saturating_sub(since);
                tokio::select! {
                    _ = tokio::time::sleep(remaining) => break,
                    _ = self.nudge.notified() => {
                        if self.stopped.load(Ordering::SeqCst) {
                            return;
                        }
                        if schedule::may_refetch(self.since_last_fetch(), iv.min_refetch) {
                            break;
                        }
                        // Refused by the rate limit: wake the waiters so they answer at once.
                        self.generation.send_modify(|_| {});
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

    async fn jwks_location(&self, rediscover: bool) -> Result<String, String> {
        if let Some(uri) = &self.jwks_uri {
            return Ok(uri.clone());
        }
        if !rediscover {
            if let Some(uri) = self.discovered_jwks_uri.lock().ok().and_then(|g| g.clone()) {
                return Ok(uri);
            }
        }
        let Some(metadata_url) = &self.metadata_url else {
            return Err("no metadata_url or jwks_uri".into());
        };
        let body = self.get(metadata_url).await?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("metadata at {metadata_url} is not JSON: {e}"))?;
        let uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("metadata at {metadata_url} has no jwks_uri"))?
            .to_string();
        if let Ok(mut g) = self.discovered_jwks_uri.lock() {
            *g = Some(uri.clone());
        }
        Ok(uri)
    }

    async fn get(&self, url: &str) -> Result<bytes::Bytes, String> {
        let client = self.client.get_or_init(|| {
            reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .connect_timeout(Duration::from_secs(5))
                .user_agent(concat!("aadgate/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default()
        });
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        resp.bytes().await.map_err(|e| format!("GET {url}: {e}"))
    }

    /// One fetch (metadata if needed, then JWKS). Returns whether new keys were installed.
    async fn fetch_once(&self) -> bool {
        if let Ok(mut g) = self.last_fetch_start.lock() {
            *g = Some(Instant::now());
        }
        // The metadata is read again on every fetch, so a moved jwks_uri is followed.
        let result = async {
            let uri = self.jwks_location(true).await?;
            let raw = self.get(&uri).await?;
            KeySet::parse(&raw, KeySource::Fetched)
        }
        .await;
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
                // Wake kid-miss waiters so they do not wait for the full bound.
                self.generation.send_modify(|_| {});
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
}
