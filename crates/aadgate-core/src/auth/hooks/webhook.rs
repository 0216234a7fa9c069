//! HTTP validator hooks (`kind = "http"`): the gateway POSTs the request facts as JSON and the
//! hook answers allow or deny (SPEC section 3, "Validator hooks").
//!
//! Request stage body: `{"stage": "request", "route", "method", "path", "normalized_path",
//! "host", "tenant_id", "client_id", "claims": {…}}`; tenant stage body: `{"stage": "tenant", "tenant_id", "issuer"}`.
//! The raw token is never sent. A `200` answer `{"allow": true, "headers": {…}}` allows,
//! `{"allow": false, "message": "…"}` denies; anything else (another status, a body that is not
//! that JSON, a connection error, a timeout) is an error handled per `on_error`.
//!
//! Decisions (allow and deny, never errors) are cached for `cache_ttl` in a per-validator moka
//! cache: by tenant for the tenant stage, by a SHA-256 of (token hash, route, method, normalized
//! path, host) for the request stage, and a request-stage decision never outlives the token's
//! `exp`. Each cache is bounded in entries and in bytes (a moka weigher counts the headers and
//! messages a decision holds; keys are fixed-size hashes, so a long path costs nothing). Each entry carries its
//! own wall-clock `expires_at`, checked on every read. Concurrent misses for one key make one
//! call ([`SingleFlight`]): the callers that waited share its decision, or its error (an error
//! is never cached). All validators share one connection pool; nothing is locked across a call, so a slow
//! hook delays only the requests that wait for it.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{count, HookRequest, HttpValidatorSettings, OnError, Outcome};
use crate::metrics::Metrics;
use crate::reason::{Reason, Rejection};
use crate::singleflight::SingleFlight;

/// Most request-stage decisions one validator keeps.
pub const REQUEST_CACHE_CAPACITY: u64 = 100_000;
/// Most tenant-stage decisions one validator keeps.
pub const TENANT_CACHE_CAPACITY: u64 = 10_000;
/// Largest hook answer read; a longer body is an error.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest deny message passed on to the caller (longer ones are cut).
const MAX_MESSAGE_CHARS: usize = 300;

/// The client every HTTP hook call goes through: one connection pool for all validators, no
/// redirects followed, no proxy from the environment. `None` when the TLS backend failed to
/// initialise (every call is then an error).
fn client() -> Option<&'static reqwest::Client> {
    static CLIENT: OnceLock<Option<reqwest::Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .user_agent(concat!("aadgate/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .pool_idle_timeout(Duration::from_secs(60))
                .tcp_nodelay(true)
                .build()
                .map_err(|e| tracing::error!(error = %e, "cannot build the HTTP client for validator hooks"))
                .ok()
        })
        .as_ref()
}

/// Wall clock in Unix milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What a hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Allowed, with the (already filtered) headers to add upstream.
    Allow(Vec<(HeaderName, HeaderValue)>),
    /// Denied, with the hook's message (or a default naming the validator).
    Deny(String),
}

impl Decision {
    /// The metric outcome of this decision: `cached` when it came from the cache.
    fn outcome(&self, from_cache: bool) -> Outcome {
        match (self, from_cache) {
            (_, true) => Outcome::Cached,
            (Decision::Allow(_), false) => Outcome::Allow,
            (Decision::Deny(_), false) => Outcome::Deny,
        }
    }
}

/// Why a call produced no decision. The text is for logs; callers see only the validator name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HookError {
    Timeout,
    Connect(String),
    Status(u16),
    BadAnswer(String),
    NoClient,
}

impl std::fmt::Display for HookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HookError::Timeout => f.write_str("timed out"),
            HookError::Connect(e) => write!(f, "request failed: {e}"),
            HookError::Status(s) => write!(f, "answered status {s}"),
            HookError::BadAnswer(e) => write!(f, "answered a body that is not a decision: {e}"),
            HookError::NoClient => f.write_str("no HTTP client"),
        }
    }
}

/// A cached decision and the wall-clock time (Unix ms) it stops being usable.
#[derive(Debug)]
struct Cached {
    decision: Decision,
    expires_at_ms: i64,
}

impl Cached {
    fn usable(&self, now_ms: i64) -> bool {
        now_ms < self.expires_at_ms
    }
}

/// Lets moka evict an entry at its own `expires_at` (never later than `cache_ttl`).
struct UntilExpiresAt;

impl<K> moka::Expiry<K, Arc<Cached>> for UntilExpiresAt {
    fn expire_after_create(&self, _: &K, v: &Arc<Cached>, _: Instant) -> Option<Duration> {
        let left = v.expires_at_ms.saturating_sub(now_ms()).max(0);
        Some(Duration::from_millis(u64::try_from(left).unwrap_or(0)))
    }
}

/// Request-stage cache key: SHA-256 of (token hash, route, method, normalized path, host),
/// each part length-prefixed. Fixed-size whatever the request: a path can be up to the
/// server's URI limit long, and keeping it in the key would let each entry hold that much.
type RequestKey = [u8; 32];

/// The request-stage key of a request.
fn request_key(req: &HookRequest<'_>) -> RequestKey {
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    h.update(req.token_hash);
    for part in [req.route, req.method, req.normalized_path, req.host] {
        h.update(&(part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(h.finish().as_ref());
    key
}

/// The decisions of one stage of one validator, and the hook calls in progress for them.
struct DecisionCache<K> {
    entries: moka::future::Cache<K, Arc<Cached>>,
    /// Calls in progress: the decision each made (or found cached after all, then `false`).
    flights: SingleFlight<K, Result<(Arc<Cached>, bool), HookError>>,
}

impl<K> DecisionCache<K>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    /// The decision for `key` when it is usable now.
    async fn usable(&self, key: &K) -> Option<Arc<Cached>> {
        self.entries
            .get(key)
            .await
            .filter(|cached| cached.usable(now_ms()))
    }

    fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }
}

/// Bytes one request-stage cache of one validator may hold (keys, decisions and the headers
/// and messages they carry, plus a fixed overhead per entry).
pub const REQUEST_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Bytes one tenant-stage cache of one validator may hold.
pub const TENANT_CACHE_BYTES: u64 = 4 * 1024 * 1024;
/// What an entry weighs besides its variable parts: moka's bookkeeping, the `Arc`, the key.
const ENTRY_OVERHEAD_BYTES: usize = 128;

impl Cached {
    /// The bytes this decision holds on the heap.
    fn heap_bytes(&self) -> usize {
        match &self.decision {
            Decision::Allow(headers) => headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 64)
                .sum(),
            Decision::Deny(message) => message.len(),
        }
    }
}

/// The weight of an entry in a cache bounded to `bytes` and `entries`: its size in bytes, but
/// at least `bytes / entries`, so the cache never holds more than `entries` entries either.
fn weight(key_bytes: usize, v: &Cached, bytes: u64, entries: u64) -> u32 {
    let size = (ENTRY_OVERHEAD_BYTES + key_bytes + v.heap_bytes()) as u64;
    let floor = bytes / entries.max(1);
    u32::try_from(size.max(floor)).unwrap_or(u32::MAX)
}

/// Keys whose size the weigher can tell.
trait KeyBytes {
    fn key_bytes(&self) -> usize;
}

impl KeyBytes for RequestKey {
    fn key_bytes(&self) -> usize {
        self.len()
    }
}

impl KeyBytes for String {
    fn key_bytes(&self) -> usize {
        self.len()
    }
}

/// A decision cache bounded to `bytes` in total and `entries` entries.
fn build_cache<K>(entries: u64, bytes: u64, ttl: Duration) -> DecisionCache<K>
where
    K: KeyBytes + std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    DecisionCache {
        entries: moka::future::Cache::builder()
            .max_capacity(bytes)
            .weigher(move |k: &K, v: &Arc<Cached>| weight(k.key_bytes(), v, bytes, entries))
            .time_to_live(ttl)
            .expire_after(UntilExpiresAt)
            .build(),
        flights: SingleFlight::new(),
    }
}

/// One HTTP validator: its settings and decision caches.
pub(crate) struct HttpHook {
    settings: HttpValidatorSettings,
    // Boxed: two caches with their flights would make every validator large.
    requests: Option<Box<DecisionCache<RequestKey>>>,
    tenants: Option<Box<DecisionCache<String>>>,
}

impl std::fmt::Debug for HttpHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHook")
            .field("settings", &self.settings)
            .field(
                "cached_requests",
                &self.requests.as_ref().map(|c| c.entry_count()),
            )
            .field(
                "cached_tenants",
                &self.tenants.as_ref().map(|c| c.entry_count()),
            )
            .finish()
    }
}

/// The hook's answer, as sent.
#[derive(Deserialize)]
struct Answer {
    allow: bool,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    headers: Option<Map<String, Value>>,
}

/// Hop-by-hop and framing headers a hook may not add: the proxy owns them.
fn is_reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "host"
            | "connection"
            | "content-length"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
            | "keep-alive"
            | "proxy-authorization"
            | "proxy-connection"
            | "x-request-id"
    )
}

/// The headers of an allow answer that may go upstream: only those named in the validator's
/// `headers` (`allowed`). Others, invalid names or values, non-string values, hop-by-hop
/// headers, `x-auth-*` and configured claim headers are dropped with a warn log (which names
/// the header, never its value).
pub(crate) fn filter_headers(
    validator: &str,
    raw: Option<&Map<String, Value>>,
    allowed: &[HeaderName],
    claim_headers: &HashSet<HeaderName>,
) -> Vec<(HeaderName, HeaderValue)> {
    let Some(raw) = raw else { return Vec::new() };
    let mut out = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        let Ok(hn) = HeaderName::from_bytes(name.as_bytes()) else {
            tracing::warn!(validator, header = %name.escape_debug(), "hook header dropped: not a valid header name");
            continue;
        };
        if !allowed.contains(&hn) {
            tracing::warn!(validator, header = %hn, "hook header dropped: not named in the validator's `headers`");
            continue;
        }
        if hn.as_str().starts_with("x-auth-") || claim_headers.contains(&hn) {
            tracing::warn!(validator, header = %hn, "hook header dropped: identity headers come from the token only");
            continue;
        }
        if is_reserved(&hn) {
            tracing::warn!(validator, header = %hn, "hook header dropped: the proxy owns this header");
            continue;
        }
        let Some(hv) = value.as_str().and_then(|v| HeaderValue::from_str(v).ok()) else {
            tracing::warn!(validator, header = %hn, "hook header dropped: the value is not a valid header value string");
            continue;
        };
        out.push((hn, hv));
    }
    out
}

/// Parses a 200 answer into a decision.
fn parse_answer(
    validator: &str,
    body: &[u8],
    allowed: &[HeaderName],
    claim_headers: &HashSet<HeaderName>,
) -> Result<Decision, HookError> {
    let a: Answer =
        serde_json::from_slice(body).map_err(|e| HookError::BadAnswer(e.to_string()))?;
    if a.allow {
        Ok(Decision::Allow(filter_headers(
            validator,
            a.headers.as_ref(),
            allowed,
            claim_headers,
        )))
    } else {
        let message = a
            .message
            .filter(|m| !m.trim().is_empty())
            .map(|m| m.chars().take(MAX_MESSAGE_CHARS).collect())
            .unwrap_or_else(|| format!("denied by validator {validator:?}"));
        Ok(Decision::Deny(message))
    }
}

impl HttpHook {
    pub(crate) fn new(settings: HttpValidatorSettings) -> Self {
        let ttl = settings.cache_ttl;
        let on = !ttl.is_zero();
        HttpHook {
            requests: on.then(|| {
                Box::new(build_cache(
                    REQUEST_CACHE_CAPACITY,
                    REQUEST_CACHE_BYTES,
                    ttl,
                ))
            }),
            tenants: on
                .then(|| Box::new(build_cache(TENANT_CACHE_CAPACITY, TENANT_CACHE_BYTES, ttl))),
            settings,
        }
    }

    pub(crate) fn settings(&self) -> &HttpValidatorSettings {
        &self.settings
    }

    /// One POST to the hook, bounded by `timeout`; the answer is read up to
    /// [`MAX_ANSWER_BYTES`].
    async fn call(
        &self,
        validator: &str,
        body: &Value,
        claim_headers: &HashSet<HeaderName>,
    ) -> Result<Decision, HookError> {
        let client = client().ok_or(HookError::NoClient)?;
        let timeout = self.settings.timeout;
        let exchange = async {
            let mut resp = client
                .post(&self.settings.url)
                .timeout(timeout)
                .json(body)
                .send()
                .await
                .map_err(|e| {
                    if e.is_timeout() {
                        HookError::Timeout
                    } else {
                        HookError::Connect(without_url(&e))
                    }
                })?;
            let status = resp.status();
            let mut buf = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| {
                if e.is_timeout() {
                    HookError::Timeout
                } else {
                    HookError::Connect(without_url(&e))
                }
            })? {
                if buf.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(HookError::BadAnswer(format!(
                        "longer than {MAX_ANSWER_BYTES} bytes"
                    )));
                }
                buf.extend_from_slice(&chunk);
            }
            if status != reqwest::StatusCode::OK {
                return Err(HookError::Status(status.as_u16()));
            }
            parse_answer(validator, &buf, &self.settings.headers, claim_headers)
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(HookError::Timeout),
        }
    }

    /// Looks `key` up in `cache`, calling the hook on a miss (one call for concurrent misses).
    /// Returns the decision and whether it came from the cache.
    async fn decide<K>(
        &self,
        validator: &str,
        cache: Option<&DecisionCache<K>>,
        key: K,
        expires_at_ms: i64,
        body: &Value,
        claim_headers: &HashSet<HeaderName>,
    ) -> Result<(Decision, bool), HookError>
    where
        K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
    {
        let Some(cache) = cache else {
            return self
                .call(validator, body, claim_headers)
                .await
                .map(|d| (d, false));
        };
        if let Some(cached) = cache.usable(&key).await {
            return Ok((cached.decision.clone(), true));
        }
        let (result, led) = cache
            .flights
            .run(&key, || async {
                // The previous flight may have stored a decision since the first look.
                if let Some(cached) = cache.usable(&key).await {
                    return Ok((cached, false));
                }
                let decision = self.call(validator, body, claim_headers).await?;
                let cached = Arc::new(Cached {
                    decision,
                    expires_at_ms,
                });
                cache.entries.insert(key.clone(), cached.clone()).await;
                Ok((cached, true))
            })
            .await;
        let (cached, called) = result?;
        Ok((cached.decision.clone(), !(led && called)))
    }

    /// Maps a failure to `503 hook_unavailable` or, with `on_error = "allow"`, to a pass.
    fn on_error(
        &self,
        validator: &str,
        stage: &'static str,
        e: &HookError,
    ) -> Result<(), Rejection> {
        match self.settings.on_error {
            OnError::Deny => {
                tracing::warn!(validator, stage, error = %e, "validator hook failed; denying (on_error = \"deny\")");
                Err(Rejection::new(
                    Reason::HookUnavailable,
                    format!("validator {validator:?} is unavailable; try again later"),
                ))
            }
            OnError::Allow => {
                tracing::warn!(validator, stage, error = %e, "validator hook failed; allowing (on_error = \"allow\")");
                Ok(())
            }
        }
    }

    pub(crate) async fn check_request(
        &self,
        validator: &str,
        req: &HookRequest<'_>,
        claim_headers: &HashSet<HeaderName>,
        metrics: &Metrics,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
        let body = json!({
            "stage": "request",
            "route": req.route,
            "method": req.method,
            "path": req.path,
            "normalized_path": req.normalized_path,
            "host": req.host,
            "tenant_id": req.token.tid,
            "client_id": req.token.client_id(),
            "claims": req.token.claims(),
        });
        let ttl_ms = i64::try_from(self.settings.cache_ttl.as_millis()).unwrap_or(i64::MAX);
        let expires_at_ms = now_ms()
            .saturating_add(ttl_ms)
            .min(req.token.exp.saturating_mul(1000));
        let key = request_key(req);
        let result = self
            .decide(
                validator,
                self.requests.as_deref(),
                key,
                expires_at_ms,
                &body,
                claim_headers,
            )
            .await;
        match result {
            Ok((decision, from_cache)) => {
                count(metrics, validator, decision.outcome(from_cache));
                match decision {
                    Decision::Allow(headers) => Ok(headers),
                    Decision::Deny(message) => {
                        tracing::debug!(
                            validator,
                            route = req.route,
                            "validator hook denied the request"
                        );
                        Err(Rejection::new(Reason::HookDenied, message))
                    }
                }
            }
            Err(e) => {
                count(metrics, validator, Outcome::Error);
                self.on_error(validator, "request", &e).map(|()| Vec::new())
            }
        }
    }

    pub(crate) async fn check_tenant(
        &self,
        validator: &str,
        tid: &str,
        issuer: &str,
        metrics: &Metrics,
    ) -> Result<(), Rejection> {
        let body = json!({
            "stage": "tenant",
            "tenant_id": tid,
            "issuer": issuer,
        });
        let ttl_ms = i64::try_from(self.settings.cache_ttl.as_millis()).unwrap_or(i64::MAX);
        let expires_at_ms = now_ms().saturating_add(ttl_ms);
        let result = self
            .decide(
                validator,
                self.tenants.as_deref(),
                tid.to_string(),
                expires_at_ms,
                &body,
                &HashSet::new(),
            )
            .await;
        match result {
            Ok((decision, from_cache)) => {
                count(metrics, validator, decision.outcome(from_cache));
                match decision {
                    Decision::Allow(_) => Ok(()),
                    Decision::Deny(message) => {
                        Err(Rejection::new(Reason::TenantNotAllowed, message))
                    }
                }
            }
            Err(e) => {
                count(metrics, validator, Outcome::Error);
                self.on_error(validator, "tenant", &e)
            }
        }
    }
}

/// A reqwest error's text with its causes, without the URL (which may carry credentials in its
/// query).
fn without_url(e: &reqwest::Error) -> String {
    let s = crate::jwks::error_chain(e);
    match e.url() {
        Some(u) => s.replace(u.as_str(), "<hook url>"),
        None => s,
    }
}

#[cfg(test)]
mod tests;
