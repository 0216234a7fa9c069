//! Rate limits (SPEC section 11): `[[rate_limits]]` enforced with GCRA per tenant, client,
//! tenant and client, or user, after authentication and before the token exchange.
//!
//! - [`gcra`]: the algorithm, pure functions of timestamps in microseconds.
//! - [`Buckets`]: the seam for a store of buckets. [`LocalBuckets`] keeps them in process; a
//!   shared store (Redis, SPEC section 10) implements the trait with [`GCRA_LUA`] so one limit
//!   holds for the fleet.
//! - [`RateLimiter`]: the limits of one configuration, which apply to which route, and the
//!   decision for one request ([`RateLimiter::admit`]), with the `RateLimit-Policy` and
//!   `RateLimit` header values ([`RateLimitState`]).
//!
//! Every limit that applies to a route must admit. With one limit that is one step; with
//! several, each is peeked first and spent only when all would admit, so a request refused by
//! one limit spends nothing of the others (two steps can race with another request between
//! peek and spend: then the later spend refuses, and the limits spent before it keep that
//! request — a bounded over-count, never an over-admission).

mod buckets;
pub mod gcra;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

pub use buckets::{gcra_lua_args, Buckets, BucketsError, LocalBuckets, GCRA_LUA, LOCAL_MAX_KEYS};
pub use gcra::{Decision, GcraParams, Mode};

use crate::config::{AuthMode, RateLimitKey, RateLimitSettings, Route};
use crate::metrics::Metrics;
use crate::reason::{Reason, Rejection};

/// Who a verified request is, as the limits key it: built by admission from the principal.
#[derive(Debug, Clone, Copy)]
pub struct CallerKeys<'a> {
    /// The lower-case tenant id (`tid`).
    pub tenant: &'a str,
    /// The client application (`appid`/`azp`), when the token names one.
    pub client: Option<&'a str>,
    /// The user: `oid`, else `sub`; `None` when the token has neither.
    pub user: Option<&'a str>,
}

impl CallerKeys<'_> {
    /// The key value of `key` (see `docs/rate-limits.md`): GUIDs in lower case, `tid:client`,
    /// `tid:oid` (or `tid:sub`). `None` when the token lacks the claim: the limit does not
    /// apply to that request.
    pub fn value(&self, key: RateLimitKey) -> Option<String> {
        let lower = |s: &str| s.to_ascii_lowercase();
        match key {
            RateLimitKey::Tenant => Some(lower(self.tenant)),
            RateLimitKey::Client => self.client.map(lower),
            RateLimitKey::TenantClient => self
                .client
                .map(|c| format!("{}:{}", lower(self.tenant), lower(c))),
            RateLimitKey::User => self.user.map(|u| {
                let user = if crate::config::is_guid(u) {
                    lower(u)
                } else {
                    u.to_string()
                };
                format!("{}:{user}", lower(self.tenant))
            }),
        }
    }
}

/// One limit, with its local buckets; kept across reloads while its bucket settings (all but
/// `routes`) are unchanged.
#[derive(Debug)]
pub struct Limit {
    settings: RateLimitSettings,
    params: GcraParams,
    overrides: HashMap<String, GcraParams>,
    /// `<name>:<fingerprint>:`, the prefix of its bucket keys.
    prefix: String,
    local: Arc<LocalBuckets>,
}

impl Limit {
    /// A limit with empty buckets.
    pub fn new(settings: RateLimitSettings) -> Limit {
        let params = GcraParams::new(settings.rate, settings.period, settings.burst);
        let overrides: HashMap<String, GcraParams> = (settings.overrides.iter())
            .map(|(k, (rate, burst))| (k.clone(), GcraParams::new(*rate, settings.period, *burst)))
            .collect();
        let refill = (overrides.values())
            .chain([&params])
            .map(GcraParams::refill_us)
            .max()
            .unwrap_or(0);
        let prefix = format!("{}:{:08x}:", settings.name, fingerprint(&settings));
        Limit {
            local: Arc::new(LocalBuckets::new(
                LOCAL_MAX_KEYS,
                Duration::from_micros(refill),
            )),
            settings,
            params,
            overrides,
            prefix,
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &RateLimitSettings {
        &self.settings
    }

    /// Its in-process buckets.
    pub fn local(&self) -> &Arc<LocalBuckets> {
        &self.local
    }

    /// The parameters for `value`: its override's, else the limit's.
    pub fn params(&self, value: &str) -> GcraParams {
        self.overrides.get(value).copied().unwrap_or(self.params)
    }

    /// Same buckets: everything but `routes` is equal.
    fn same_buckets(&self, other: &RateLimitSettings) -> bool {
        let s = &self.settings;
        s.name == other.name
            && s.key == other.key
            && s.rate == other.rate
            && s.period == other.period
            && s.burst == other.burst
            && s.overrides == other.overrides
    }

    /// Whether it applies to `route`: listed, or every authenticated route when it lists none.
    fn applies_to(&self, route: &Route) -> bool {
        match &self.settings.routes {
            Some(names) => names.iter().any(|n| **n == *route.name),
            None => route.auth == AuthMode::Required,
        }
    }
}

/// FNV-1a of a limit's bucket settings: part of its bucket keys, so a shared store never mixes
/// buckets of changed settings (and every replica computes the same value).
fn fingerprint(s: &RateLimitSettings) -> u32 {
    let text = format!(
        "{:?}|{}|{}|{}|{:?}",
        s.key,
        s.rate,
        s.period.as_micros(),
        s.burst,
        s.overrides
    );
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    h
}

/// The limits of one route, with the route's `aadgate_rate_limited_total` series.
#[derive(Debug)]
struct RouteLimits {
    route: Arc<str>,
    limits: Vec<(Arc<Limit>, IntCounter)>,
}

/// The rate limits of one configuration: built with the runtime, kept in it
/// ([`Runtime::rate_limiter`](crate::runtime::Runtime::rate_limiter)).
#[derive(Debug)]
pub struct RateLimiter {
    limits: Vec<Arc<Limit>>,
    by_route: Vec<RouteLimits>,
    shared: Option<Arc<dyn Buckets>>,
    metrics: Arc<Metrics>,
}

/// What the limits said about an admitted request, for the response headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitState {
    entries: Vec<LimitEntry>,
}

/// One limit's line in the headers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LimitEntry {
    name: Arc<str>,
    quota: u64,
    window_secs: u64,
    remaining: u64,
    reset_secs: u64,
}

impl RateLimitState {
    /// `RateLimit-Policy`: `"<name>";q=<burst>;w=<seconds to refill a full bucket>` per limit,
    /// comma-separated (structured-field list).
    pub fn policy(&self) -> String {
        let items: Vec<String> = (self.entries.iter())
            .map(|e| format!("\"{}\";q={};w={}", e.name, e.quota, e.window_secs))
            .collect();
        items.join(", ")
    }

    /// `RateLimit`: `"<name>";r=<remaining>;t=<seconds until the bucket is full>` per limit.
    pub fn ratelimit(&self) -> String {
        let items: Vec<String> = (self.entries.iter())
            .map(|e| format!("\"{}\";r={};t={}", e.name, e.remaining, e.reset_secs))
            .collect();
        items.join(", ")
    }

    /// Both headers, as (name, value) pairs.
    pub fn headers(&self) -> [(&'static str, String); 2] {
        [
            ("ratelimit-policy", self.policy()),
            ("ratelimit", self.ratelimit()),
        ]
    }
}

impl RateLimiter {
    /// The limiter of `settings` for `routes`. A limit of `previous` whose bucket settings are
    /// unchanged is kept with its buckets; `shared` (the Redis store's buckets) decides first
    /// when given. Pre-creates `aadgate_rate_limited_total{route, limit}` for every pair.
    pub fn new(
        settings: &[RateLimitSettings],
        routes: &[Arc<Route>],
        previous: Option<&RateLimiter>,
        shared: Option<Arc<dyn Buckets>>,
        metrics: Arc<Metrics>,
    ) -> RateLimiter {
        let limits: Vec<Arc<Limit>> = (settings.iter())
            .map(|s| {
                let kept = previous.and_then(|p| p.limits.iter().find(|l| l.same_buckets(s)));
                match kept {
                    Some(old) if old.settings == *s => old.clone(),
                    // Only `routes` changed: the same buckets under the new settings.
                    Some(old) => Arc::new(Limit {
                        settings: s.clone(),
                        params: old.params,
                        overrides: old.overrides.clone(),
                        prefix: old.prefix.clone(),
                        local: old.local.clone(),
                    }),
                    None => Arc::new(Limit::new(s.clone())),
                }
            })
            .collect();
        let by_route = (routes.iter())
            .map(|r| RouteLimits {
                route: r.name.clone(),
                limits: (limits.iter())
                    .filter(|l| l.applies_to(r))
                    .map(|l| (l.clone(), metrics.rate_limited(&r.name, &l.settings.name)))
                    .collect(),
            })
            .collect();
        RateLimiter {
            limits,
            by_route,
            shared,
            metrics,
        }
    }

    /// Every limit, in file order.
    pub fn limits(&self) -> &[Arc<Limit>] {
        &self.limits
    }

    /// The shared bucket store, when one is configured.
    pub fn shared(&self) -> Option<&Arc<dyn Buckets>> {
        self.shared.as_ref()
    }

    /// True when some limit applies to `route` (admission reads the caller's keys only then).
    pub fn applies(&self, route: &Route) -> bool {
        match self.route_limits(route) {
            Some(r) => !r.limits.is_empty(),
            None => self.limits.iter().any(|l| l.applies_to(route)),
        }
    }

    fn route_limits(&self, route: &Route) -> Option<&RouteLimits> {
        self.by_route
            .get(route.index)
            .filter(|r| *r.route == *route.name)
    }

    /// Decides a verified request on `route` at `now_us` (Unix microseconds): `Ok(None)` when
    /// no limit applies, `Ok(Some(state))` when every applicable limit admits it (spent), or
    /// `Err` with `429 rate_limited`, its `Retry-After` and the headers. Counts
    /// `aadgate_rate_limited_total` for each limit that refused.
    pub async fn admit(
        &self,
        route: &Route,
        caller: &CallerKeys<'_>,
        now_us: u64,
    ) -> Result<Option<RateLimitState>, Rejection> {
        let owned;
        let limits: &[(Arc<Limit>, IntCounter)] = match self.route_limits(route) {
            Some(r) => &r.limits,
            None => {
                owned = (self.limits.iter())
                    .filter(|l| l.applies_to(route))
                    .map(|l| {
                        (
                            l.clone(),
                            self.metrics.rate_limited(&route.name, &l.settings.name),
                        )
                    })
                    .collect::<Vec<_>>();
                &owned
            }
        };
        let keyed: Vec<(&Limit, &IntCounter, String)> = (limits.iter())
            .filter_map(|(l, c)| caller.value(l.settings.key).map(|v| (&**l, c, v)))
            .collect();
        if keyed.is_empty() {
            return Ok(None);
        }
        if keyed.len() > 1 {
            let mut peeks = Vec::with_capacity(keyed.len());
            for (limit, _, value) in &keyed {
                peeks.push(self.step(limit, value, now_us, Mode::Peek).await);
            }
            if peeks.iter().any(|d| !d.allowed) {
                return Err(refusal(&keyed, &peeks));
            }
        }
        let mut spent = Vec::with_capacity(keyed.len());
        for (limit, _, value) in &keyed {
            let d = self.step(limit, value, now_us, Mode::Spend).await;
            let refused = !d.allowed;
            spent.push(d);
            if refused {
                // A race after the peek: report the limits not reached as they stand.
                for (limit, _, value) in &keyed[spent.len()..] {
                    spent.push(self.step(limit, value, now_us, Mode::Peek).await);
                }
                return Err(refusal(&keyed, &spent));
            }
        }
        Ok(Some(state(&keyed, &spent)))
    }

    /// One step: the shared store when there is one and it answers, else the local buckets.
    async fn step(&self, limit: &Limit, value: &str, now_us: u64, mode: Mode) -> Decision {
        let params = limit.params(value);
        let key = format!("{}{value}", limit.prefix);
        if let Some(shared) = &self.shared {
            match shared.check(&key, params, now_us, mode).await {
                Ok(d) => return d,
                Err(e) => {
                    // The store counts its failures in aadgate_store_errors_total.
                    tracing::debug!(error = %e, limit = %limit.settings.name, "rate-limit store failed; deciding with the local buckets");
                }
            }
        }
        limit.local.step(&key, params, now_us, mode)
    }
}

/// The headers' entries of `keyed` with their decisions.
fn state(keyed: &[(&Limit, &IntCounter, String)], decisions: &[Decision]) -> RateLimitState {
    RateLimitState {
        entries: (keyed.iter().zip(decisions))
            .map(|((limit, _, value), d)| {
                let p = limit.params(value);
                LimitEntry {
                    name: Arc::from(limit.settings.name.as_str()),
                    quota: p.burst(),
                    window_secs: gcra::ceil_secs(p.refill_us()).max(1),
                    remaining: d.remaining,
                    reset_secs: d.reset_secs(),
                }
            })
            .collect(),
    }
}

/// `429 rate_limited`: `Retry-After` the longest wait of the limits that refused, the headers
/// of every limit, and one count per refusing limit.
fn refusal(keyed: &[(&Limit, &IntCounter, String)], decisions: &[Decision]) -> Rejection {
    let mut wait = 0;
    let mut names = Vec::new();
    for ((limit, counter, _), d) in keyed.iter().zip(decisions) {
        if !d.allowed {
            counter.inc();
            wait = wait.max(d.retry_after_secs());
            names.push(format!("{:?}", limit.settings.name));
        }
    }
    let mut r = Rejection::new(
        Reason::RateLimited,
        format!(
            "rate limit {} exhausted; retry after {wait} s",
            names.join(", ")
        ),
    )
    .retry_after(Duration::from_secs(wait.max(1)));
    for (name, value) in state(keyed, decisions).headers() {
        r = r.with_header(name, value);
    }
    r
}
