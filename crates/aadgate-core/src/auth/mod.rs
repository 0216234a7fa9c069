//! The validation pipeline of SPEC section 1, steps 2–8. [`Authenticator::authenticate`] lists
//! the stages in order; each stage lives in the file named after the check it performs.
//!
//! Only the pipeline constructs a [`Principal`], the proof that a request was authorised; header
//! injection and token exchange take one, so they cannot run on an unauthenticated request.

pub mod access_token;
pub mod audience;
pub mod claims;
pub mod client_app;
pub mod hints;
pub mod hooks;
pub mod issuer;
pub mod keys;
pub mod policy;
pub mod signature;
pub mod tenant;
pub mod time;
pub mod token;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use jsonwebtoken::Algorithm;

pub use crate::clock::{Clock, FixedClock, SystemClock};
pub use crate::reason::{Reason, Rejection};
pub use claims::{ClientClaim, TokenKind, TokenVersion, VerifiedToken};
use hooks::Validator;

use crate::config::{ClaimSource, Config, Route};
use crate::jwks::KeyStore;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// The parts of a request the pipeline reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// The request method.
    pub method: &'a Method,
    /// As received (before `strip_prefix`).
    pub path: &'a str,
    /// The normalized path routing used (SPEC section 8).
    pub normalized_path: &'a str,
    /// Lower case, without port.
    pub host: &'a str,
    /// The request headers (CEL sees them as `request.headers`); [`crate::admission`] has removed
    /// the headers a caller must not set before the pipeline reads them.
    pub headers: &'a HeaderMap,
}

/// A request that passed every check of its route. Constructed only by the pipeline.
#[derive(Debug, Clone)]
pub struct Principal {
    token: Arc<VerifiedToken>,
    route: Arc<Route>,
    hook_headers: Vec<(HeaderName, HeaderValue)>,
    token_hash: [u8; 32],
}

impl Principal {
    /// The verified token.
    pub fn token(&self) -> &VerifiedToken {
        &self.token
    }

    /// The lower-case tenant id (`tid`).
    pub fn tenant_id(&self) -> &str {
        &self.token.tid
    }

    /// The client application id (`appid`/`azp`).
    pub fn client_id(&self) -> Option<&str> {
        self.token.client_id()
    }

    /// App-only, user, or neither.
    pub fn kind(&self) -> TokenKind {
        self.token.kind
    }

    /// The route the request was authorised for.
    pub fn route(&self) -> &Arc<Route> {
        &self.route
    }

    /// SHA-256 of the token string.
    pub fn token_hash(&self) -> &[u8; 32] {
        &self.token_hash
    }

    /// The headers to send upstream: the route's claim headers (absent claims give no header),
    /// then headers added by validator hooks.
    pub fn identity_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let t = &self.token;
        let mut out = Vec::with_capacity(self.route.claim_headers.len() + self.hook_headers.len());
        // An owned claim text becomes the header value without another copy.
        let owned = |s: String| HeaderValue::try_from(s).ok();
        for (name, source) in &self.route.claim_headers {
            let value = match source {
                ClaimSource::Claim(c) => t.claim_text(c).and_then(owned),
                ClaimSource::ClientId => t.client_id().and_then(|s| HeaderValue::from_str(s).ok()),
                ClaimSource::Upn => t
                    .claim_text("upn")
                    .or_else(|| t.claim_text("preferred_username"))
                    .and_then(owned),
                ClaimSource::TokenKind => t.kind.header_value().map(HeaderValue::from_static),
            };
            if let Some(v) = value {
                out.push((name.clone(), v));
            }
        }
        out.extend(self.hook_headers.iter().cloned());
        out
    }
}

/// One step of a traced run (for `aadgate explain`).
#[derive(Debug, Clone)]
pub struct Step {
    /// The check's name as `aadgate explain` prints it (`"decode"`, `"signing key"`, …).
    pub check: &'static str,
    /// What the check found when it passed, or the rejection that ended the run.
    pub result: Result<String, Rejection>,
}

/// The steps of a traced run, in order.
#[derive(Debug, Default, Clone)]
pub struct Trace {
    /// One step per check that ran, in pipeline order; the last one failed if any did.
    pub steps: Vec<Step>,
}

fn record<T>(
    trace: &mut Option<&mut Trace>,
    check: &'static str,
    r: Result<T, Rejection>,
    detail: impl FnOnce(&T) -> String,
) -> Result<T, Rejection> {
    if let Some(t) = trace.as_deref_mut() {
        t.steps.push(Step {
            check,
            result: r.as_ref().map(detail).map_err(Clone::clone),
        });
    }
    r
}

/// Verified tokens by SHA-256 of the token string (SPEC 8). An entry is used only while its
/// `exp` (plus skew) has not passed, its `kid` still names the same key material in the current
/// key set, and its `alg` is still configured; moka evicts it at `exp` plus skew.
pub struct TokenCache {
    inner: Option<moka::sync::Cache<[u8; 32], CachedToken>>,
}

/// A cache entry: the verified token, the algorithm it was verified with and the fingerprint of
/// the key that verified it.
#[derive(Clone)]
struct CachedToken {
    token: Arc<VerifiedToken>,
    alg: Algorithm,
    key_fingerprint: [u8; 32],
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.inner.as_ref().map(|c| c.entry_count()))
            .finish()
    }
}

struct ExpireAtExp {
    skew: i64,
}

impl moka::Expiry<[u8; 32], CachedToken> for ExpireAtExp {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        v: &CachedToken,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(cache_lifetime(
            v.token.exp,
            self.skew,
            crate::clock::unix_now(),
        ))
    }
}

/// How long a token verified at `now` may stay cached: until `exp + skew`, saturating (a hit
/// checks the lifetime again with the authenticator's clock).
fn cache_lifetime(exp: i64, skew: i64, now: i64) -> Duration {
    let left = exp.saturating_add(skew).saturating_sub(now).max(0);
    Duration::from_secs(left.unsigned_abs())
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (0 = no cache).
    pub fn new(capacity: u64, clock_skew: Duration) -> Self {
        let inner = (capacity > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(ExpireAtExp {
                    skew: time::skew_secs(clock_skew),
                })
                .build()
        });
        TokenCache { inner }
    }

    fn get(&self, hash: &[u8; 32]) -> Option<CachedToken> {
        self.inner.as_ref()?.get(hash)
    }

    fn insert(&self, hash: [u8; 32], entry: CachedToken) {
        if let Some(c) = &self.inner {
            c.insert(hash, entry);
        }
    }

    /// Number of entries (approximate, for tests and benchmarks).
    pub fn len(&self) -> u64 {
        self.inner.as_ref().map_or(0, |c| {
            c.run_pending_tasks();
            c.entry_count()
        })
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// SHA-256 of the token string: the cache key, computed once per request.
pub fn token_hash(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Runs the pipeline for one configuration. Built only by [`crate::runtime`], which decides
/// what a reload carries over (the key store, the token cache, validators with their caches);
/// cheap to clone.
#[derive(Debug, Clone)]
pub struct Authenticator {
    config: Arc<Config>,
    keys: Arc<KeyStore>,
    cache: Arc<TokenCache>,
    validators: Arc<HashMap<String, Arc<Validator>>>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    registry: Option<Arc<Registry>>,
}

/// What an [`Authenticator`] is made of (for [`crate::runtime`]).
pub(crate) struct Parts {
    pub(crate) config: Arc<Config>,
    pub(crate) keys: Arc<KeyStore>,
    pub(crate) cache: Arc<TokenCache>,
    pub(crate) validators: HashMap<String, Arc<Validator>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) registry: Option<Arc<Registry>>,
}

impl Authenticator {
    pub(crate) fn from_parts(p: Parts) -> Self {
        Authenticator {
            config: p.config,
            keys: p.keys,
            cache: p.cache,
            validators: Arc::new(p.validators),
            metrics: p.metrics,
            clock: p.clock,
            registry: p.registry,
        }
    }

    /// The tenant registry (`[tenants] mode = "registry"`).
    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.registry.as_ref()
    }

    /// The configuration it runs.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The signing keys it verifies with.
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// The verified-token cache.
    pub fn token_cache(&self) -> &Arc<TokenCache> {
        &self.cache
    }

    /// The metrics it counts in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The clock tokens' lifetimes are checked against.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The validator named `name` (`[validators.NAME]`).
    pub fn validator(&self, name: &str) -> Option<&Arc<Validator>> {
        self.validators.get(name)
    }

    /// The validator `name`, or `503 hook_unavailable` when the runtime has none by that name.
    fn hook(&self, name: &str, what: &str) -> Result<&Arc<Validator>, Rejection> {
        self.validators.get(name).ok_or_else(|| {
            Rejection::new(
                Reason::HookUnavailable,
                format!("{what} {name:?} is not configured"),
            )
        })
    }

    /// Validates the request for `route`: SPEC section 1, steps 2–8, in order.
    pub async fn authenticate(
        &self,
        route: &Arc<Route>,
        req: &RequestParts<'_>,
    ) -> Result<Principal, Rejection> {
        self.run(route, req, None).await
    }

    /// Like [`Authenticator::authenticate`], recording every check in `trace`.
    pub async fn authenticate_traced(
        &self,
        route: &Arc<Route>,
        req: &RequestParts<'_>,
        trace: &mut Trace,
    ) -> Result<Principal, Rejection> {
        self.run(route, req, Some(trace)).await
    }

    async fn run(
        &self,
        route: &Arc<Route>,
        req: &RequestParts<'_>,
        mut t: Option<&mut Trace>,
    ) -> Result<Principal, Rejection> {
        let cfg = &*self.config;
        let raw = record(
            &mut t,
            "bearer token",
            token::extract_bearer(
                req.headers.get_all(AUTHORIZATION).iter(),
                cfg.server.max_token_bytes,
            ),
            |r| format!("{} bytes", r.len()),
        )?;
        let hash = token_hash(raw);
        let verified = match self.cached(&hash, &mut t) {
            Some(v) => v,
            None => self.verify(raw, hash, &mut t).await?,
        };
        // From here on the caller is known: a refusal names it (for the access log).
        self.admit_verified(route, req, verified.clone(), hash, t)
            .await
            .map_err(|r| r.from_caller(&verified.tid, verified.client_id()))
    }

    /// Steps 6–8 for a verified token: tenant (and tenant hook), client application, route
    /// policy, validators.
    async fn admit_verified(
        &self,
        route: &Arc<Route>,
        req: &RequestParts<'_>,
        verified: Arc<VerifiedToken>,
        hash: [u8; 32],
        mut t: Option<&mut Trace>,
    ) -> Result<Principal, Rejection> {
        let cfg = &*self.config;
        let tenant = record(
            &mut t,
            "tenant",
            tenant::check(&verified.tid, &cfg.tenants, self.registry.as_deref()),
            |d| format!("{d:?}"),
        )?;
        if let tenant::TenantDecision::AskHook(name) = tenant {
            let hook = self.hook(&name, "tenant hook")?;
            record(
                &mut t,
                "tenant hook",
                hook.check_tenant(&verified.tid, &verified.iss, &self.metrics)
                    .await,
                |_| format!("{name} allowed tenant {}", verified.tid),
            )?;
        }
        record(
            &mut t,
            "client application",
            client_app::check(&verified, route, &cfg.clients),
            |_| {
                format!(
                    "{} (strength {:?})",
                    verified.client_id().unwrap_or("-"),
                    verified.auth_strength
                )
            },
        )?;
        record(
            &mut t,
            "route policy",
            policy::check(&verified, route),
            |_| {
                format!(
                    "kind {:?}, roles [{}], scopes [{}]",
                    verified.kind,
                    verified.roles.join(","),
                    verified.scopes.join(" ")
                )
            },
        )?;
        let mut hook_headers = Vec::new();
        let hook_req = hooks::HookRequest {
            route: &route.name,
            method: req.method.as_str(),
            path: req.path,
            normalized_path: req.normalized_path,
            host: req.host,
            headers: req.headers,
            token: &verified,
            token_hash: &hash,
        };
        for name in &route.validators {
            let v = self.hook(name, "validator")?;
            let added = record(
                &mut t,
                "validator",
                v.check_request_with(&hook_req, &cfg.claim_header_names, &self.metrics)
                    .await,
                |h| format!("{} allowed ({} headers added)", v.name, h.len()),
            )?;
            hook_headers.extend(added);
        }
        Ok(Principal {
            token: verified,
            route: route.clone(),
            hook_headers,
            token_hash: hash,
        })
    }

    /// Steps 3–5 for a cached token: no decoding or signature work, but the entry is used only
    /// while the same key material is published under its `kid`, its `alg` is still configured,
    /// and lifetime, audience and issuer pass against the running configuration. Otherwise the
    /// token is verified again in full, so it gets the reason of the check it now fails.
    fn cached(&self, hash: &[u8; 32], t: &mut Option<&mut Trace>) -> Option<Arc<VerifiedToken>> {
        let cached = self.cache.get(hash);
        let Some(entry) = cached else {
            if self.cache.inner.is_some() {
                self.metrics.token_cache_misses.inc();
            }
            return None;
        };
        let cfg = &*self.config;
        let v = &entry.token;
        let usable = self.keys.current().is_some_and(|keys| {
            keys.by_kid(&v.kid)
                .or_else(|| keys.by_x5t(&v.kid))
                .is_some_and(|jwk| {
                    let skew = time::skew_secs(cfg.identity.clock_skew);
                    let tid = (!v.raw_tid.is_empty()).then_some(&*v.raw_tid);
                    jwk.fingerprint == entry.key_fingerprint
                        && cfg.identity.algorithms.contains(&entry.alg)
                        // A reload may have changed audiences or issuers.
                        && time::check_times(Some(v.exp), v.nbf, v.iat, self.clock.now(), skew)
                            .is_ok()
                        && audience::check_list(&v.aud, &cfg.identity.audiences).is_ok()
                        && issuer::check_fields(tid, &v.iss, jwk, &cfg.tenants.issuers).is_ok()
                })
        });
        if !usable {
            self.metrics.token_cache_misses.inc();
            return None;
        }
        self.metrics.token_cache_hits.inc();
        if let Some(t) = t.as_deref_mut() {
            t.steps.push(Step {
                check: "token cache",
                result: Ok("verified earlier; signature not checked again".into()),
            });
        }
        Some(entry.token)
    }

    /// Steps 3–5 in full: decode, algorithm, key, signature, lifetime, audience, access token,
    /// issuer.
    async fn verify(
        &self,
        raw: &str,
        hash: [u8; 32],
        t: &mut Option<&mut Trace>,
    ) -> Result<Arc<VerifiedToken>, Rejection> {
        let cfg = &*self.config;
        let parsed = record(t, "decode", token::parse(raw), |p| {
            format!(
                "alg {}, kid {}",
                p.header.alg,
                p.header
                    .kid
                    .as_deref()
                    .or(p.header.x5t.as_deref())
                    .unwrap_or("-")
            )
        })?;
        let alg = record(
            t,
            "algorithm",
            signature::check_algorithm(&parsed.header, &cfg.identity.algorithms),
            |a| format!("{a:?}"),
        )?;
        let key = record(
            t,
            "signing key",
            keys::lookup(&self.keys, &parsed.header, crate::jwks::KID_MISS_WAIT).await,
            |k| format!("found {}", k.id),
        )?;
        record(
            t,
            "signature",
            signature::verify(&parsed, &key, alg),
            |_| "verified".into(),
        )?;
        record(
            t,
            "lifetime",
            time::check(
                &parsed.claims,
                self.clock.now(),
                time::skew_secs(cfg.identity.clock_skew),
            ),
            |_| "within exp/nbf".into(),
        )?;
        record(
            t,
            "audience",
            audience::check(&parsed.claims, &cfg.identity.audiences),
            |_| "accepted".into(),
        )?;
        record(
            t,
            "access token",
            access_token::check(&parsed.claims),
            |client| format!("issued to client {client}"),
        )?;
        record(
            t,
            "issuer",
            issuer::check(&parsed.claims, &key.jwk, &cfg.tenants.issuers),
            |tid| format!("tenant {tid}"),
        )?;
        let key_fingerprint = key.jwk.fingerprint;
        let verified = Arc::new(VerifiedToken::from_parts(
            parsed.claims,
            parsed.claims_json,
            key.id,
        ));
        self.cache.insert(
            hash,
            CachedToken {
                token: verified.clone(),
                alg,
                key_fingerprint,
            },
        );
        Ok(verified)
    }
}
