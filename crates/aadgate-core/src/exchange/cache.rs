//! The per-exchange cache of app-only tokens and of token-request failures, keyed by
//! (tenant, scope or resource), with single-flight fetching.
//!
//! Entries carry their own timestamps (`fresh_until`, `expires_at`, `failed_until`) and are
//! checked against the exchanger's [`Clock`](crate::clock::Clock), so tests can move time without
//! sleeping. moka bounds the number of entries (`max_tenants`) and evicts an entry once its
//! token expired or its failure window ended on the wall clock; that eviction only frees memory,
//! it never decides whether an entry may be used.
//!
//! The storage is a `moka::sync::Cache`: reads, inserts and the purge never do I/O, and the
//! purge (called from the proxy's synchronous response path) needs a synchronous,
//! compare-and-remove operation. Fetches are coalesced by the crate's one single-flight gate,
//! [`SingleFlight`] (see its module for why not moka's entry API).

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::Expiry;

use super::{AppToken, ExchangeTarget};
use crate::reason::Rejection;
use crate::singleflight::SingleFlight;

/// Cache key: lower-case tenant GUID and the scope or resource the token is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    tenant: Arc<str>,
    target: Arc<str>,
}

impl CacheKey {
    /// The key of `tenant`'s token for `target`.
    pub fn new(tenant: &str, target: &ExchangeTarget) -> Self {
        let target = match target {
            ExchangeTarget::Scope(s) => format!("scope={s}"),
            ExchangeTarget::Resource(r) => format!("resource={r}"),
        };
        CacheKey {
            tenant: Arc::from(tenant.to_ascii_lowercase()),
            target: Arc::from(target),
        }
    }
}

/// Which metric result a cached failure counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// `403 tenant_not_consented` (`result="not_consented"`).
    NotConsented,
    /// `503 exchange_unavailable` (`result="error"`).
    Unavailable,
}

impl FailureKind {
    /// The `result` label of `aadgate_exchange_requests_total`.
    pub fn metric_result(self) -> &'static str {
        match self {
            FailureKind::NotConsented => "not_consented",
            FailureKind::Unavailable => "error",
        }
    }
}

/// What the cache holds for one key.
#[derive(Debug, Clone)]
pub enum Slot {
    /// A token, usable while `now < fresh_until` (and always `fresh_until <= expires_at`).
    Token {
        /// The token and its expiry.
        token: AppToken,
        /// When the entry was made (Unix seconds, exchanger clock).
        obtained_at: i64,
        /// Served from the cache before this time (Unix seconds).
        fresh_until: i64,
    },
    /// A failed token request, answered again without a request while `now < failed_until`.
    Failed {
        /// The answer to repeat (without `Retry-After`, which is computed per answer).
        rejection: Rejection,
        /// Its metric result.
        kind: FailureKind,
        /// When the request failed (Unix seconds).
        failed_at: i64,
        /// Answered from the cache before this time (Unix seconds).
        failed_until: i64,
    },
}

impl Slot {
    /// A token obtained at `obtained_at` that lives `expires_in` seconds.
    pub fn token(
        access_token: &str,
        obtained_at: i64,
        expires_in: i64,
        refresh_before: Duration,
    ) -> Self {
        let expires_in = expires_in.max(0);
        Slot::Token {
            token: AppToken {
                access_token: Arc::from(access_token),
                expires_at: obtained_at.saturating_add(expires_in),
            },
            obtained_at,
            fresh_until: fresh_until(obtained_at, expires_in, refresh_before),
        }
    }

    /// A failure at `now`, remembered for `failure_cache`.
    pub fn failed(
        rejection: Rejection,
        kind: FailureKind,
        now: i64,
        failure_cache: Duration,
    ) -> Self {
        Slot::Failed {
            rejection,
            kind,
            failed_at: now,
            failed_until: failed_until(now, failure_cache),
        }
    }

    /// Whether the entry answers a request at `now` without a token request.
    pub fn usable(&self, now: i64) -> bool {
        match self {
            Slot::Token { fresh_until, .. } => now < *fresh_until,
            Slot::Failed { failed_until, .. } => now < *failed_until,
        }
    }

    /// The cached answer at `now`: the token, or the failure with `Retry-After` set to the
    /// whole seconds left of the failure window (at least 1).
    pub fn answer(&self, now: i64) -> Result<AppToken, Rejection> {
        match self {
            Slot::Token { token, .. } => Ok(token.clone()),
            Slot::Failed {
                rejection,
                failed_until,
                ..
            } => Err(rejection
                .clone()
                .retry_after(Duration::from_secs(retry_after_secs(*failed_until, now)))),
        }
    }

    /// The `result` label this entry counts as: `fetched` for the request that made it.
    pub fn metric_result(&self, fetched: bool) -> &'static str {
        match self {
            Slot::Token { .. } if fetched => "ok",
            Slot::Token { .. } => "cached",
            Slot::Failed { kind, .. } => kind.metric_result(),
        }
    }

    fn holds(&self, access_token: &str) -> bool {
        matches!(self, Slot::Token { token, .. } if &*token.access_token == access_token)
    }

    /// How long moka keeps the entry (wall clock): until the token expires or the failure
    /// window ends.
    fn lifetime(&self) -> Duration {
        let secs = match self {
            Slot::Token {
                token, obtained_at, ..
            } => token.expires_at - obtained_at,
            Slot::Failed {
                failed_at,
                failed_until,
                ..
            } => failed_until - failed_at,
        };
        Duration::from_secs(u64::try_from(secs).unwrap_or(0).max(1))
    }
}

/// When a token obtained at `obtained_at` with `expires_in` seconds of life stops being served
/// from the cache: `refresh_before` ahead of its expiry, but never before half its lifetime
/// has passed (so a short-lived token is still reused, and a `refresh_before` longer than the
/// lifetime does not make every request fetch).
pub fn fresh_until(obtained_at: i64, expires_in: i64, refresh_before: Duration) -> i64 {
    let lifetime = expires_in.max(0);
    let ahead = i64::try_from(refresh_before.as_secs()).unwrap_or(i64::MAX);
    let by_refresh = lifetime.saturating_sub(ahead);
    obtained_at.saturating_add(by_refresh.max(lifetime / 2))
}

/// The end of the failure window that starts at `now` (rounded up to whole seconds).
pub fn failed_until(now: i64, failure_cache: Duration) -> i64 {
    let secs = failure_cache.as_secs() + u64::from(failure_cache.subsec_nanos() > 0);
    now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))
}

/// `Retry-After` at `now` for a failure window ending at `failed_until`: whole seconds left,
/// at least 1.
pub fn retry_after_secs(failed_until: i64, now: i64) -> u64 {
    u64::try_from(failed_until.saturating_sub(now))
        .unwrap_or(0)
        .max(1)
}

struct SlotExpiry;

impl Expiry<CacheKey, Arc<Slot>> for SlotExpiry {
    fn expire_after_create(&self, _: &CacheKey, value: &Arc<Slot>, _: Instant) -> Option<Duration> {
        Some(value.lifetime())
    }

    fn expire_after_update(
        &self,
        _: &CacheKey,
        value: &Arc<Slot>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.lifetime())
    }
}

/// Tokens and failures of one `[exchange.NAME]`, bounded by `max_tenants`.
pub struct AppTokenCache {
    entries: moka::sync::Cache<CacheKey, Arc<Slot>>,
    /// When (Unix seconds, exchanger clock) each key's token was last purged after an upstream
    /// 401; bounded like `entries`. moka's own expiry only frees memory.
    purged_at: moka::sync::Cache<CacheKey, i64>,
    /// Token requests in progress: the entry each makes, and whether it was fetched (false
    /// when the leader found a usable entry after all).
    flights: SingleFlight<CacheKey, (Arc<Slot>, bool)>,
}

/// Whether a purge at `now` is allowed when the last one for the key was at `last`: not
/// before `interval` (rounded up to whole seconds) has passed since.
pub fn purge_allowed(last: Option<i64>, now: i64, interval: Duration) -> bool {
    match last {
        None => true,
        Some(last) => now >= failed_until(last, interval),
    }
}

impl std::fmt::Debug for AppTokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppTokenCache")
            .field("entries", &self.entries.entry_count())
            .finish_non_exhaustive()
    }
}

impl AppTokenCache {
    /// An empty cache holding at most `max_entries` keys.
    pub fn new(max_entries: u64) -> Self {
        AppTokenCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(max_entries.max(1))
                .expire_after(SlotExpiry)
                .build(),
            purged_at: moka::sync::Cache::new(max_entries.max(1)),
            flights: SingleFlight::new(),
        }
    }

    /// The entry for `key` when it is usable at `now`.
    pub fn usable(&self, key: &CacheKey, now: i64) -> Option<Arc<Slot>> {
        self.entries.get(key).filter(|s| s.usable(now))
    }

    /// The entry for `key`, whether usable or not (a stale token to fall back on).
    pub fn current(&self, key: &CacheKey) -> Option<Arc<Slot>> {
        self.entries.get(key)
    }

    /// The usable entry for `key`, or the one `fetch` makes. Concurrent callers that miss the
    /// same key wait for one fetch and share its result (`fetch` runs in one of them; if that
    /// caller is cancelled, a waiting one fetches instead). `now` is read before and after
    /// joining the flight. Returns the entry and whether this call fetched it.
    pub async fn get_or_fetch<F, Fut>(
        &self,
        key: &CacheKey,
        now: impl Fn() -> i64,
        fetch: F,
    ) -> (Arc<Slot>, bool)
    where
        F: FnOnce(Option<Arc<Slot>>) -> Fut,
        Fut: std::future::Future<Output = Slot>,
    {
        if let Some(slot) = self.usable(key, now()) {
            return (slot, false);
        }
        let ((slot, fetched), led) = self
            .flights
            .run(key, || async {
                // The previous flight may have filled the entry since the first look.
                if let Some(slot) = self.usable(key, now()) {
                    return (slot, false);
                }
                let slot = Arc::new(fetch(self.current(key)).await);
                self.entries.insert(key.clone(), slot.clone());
                (slot, true)
            })
            .await;
        (slot, led && fetched)
    }

    /// Sets `key`'s entry (a token request made outside [`AppTokenCache::get_or_fetch`]).
    pub fn put(&self, key: CacheKey, slot: Slot) {
        self.entries.insert(key, Arc::new(slot));
    }

    /// Removes `key`'s entry, whatever it holds.
    pub fn forget(&self, key: &CacheKey) {
        self.entries.invalidate(key);
    }

    /// Removes `key`'s entry if it still holds `access_token` and no purge of `key` happened
    /// within `interval` before `now`; a newer token stays. Returns whether it was removed.
    pub fn purge(&self, key: &CacheKey, access_token: &str, now: i64, interval: Duration) -> bool {
        if !purge_allowed(self.purged_at.get(key), now, interval) {
            return false;
        }
        let result = self
            .entries
            .entry_by_ref(key)
            .and_compute_with(|entry| match entry {
                Some(e) if e.value().holds(access_token) => Op::Remove,
                _ => Op::Nop,
            });
        let removed = matches!(result, moka::ops::compute::CompResult::Removed(_));
        if removed {
            self.purged_at.insert(key.clone(), now);
        }
        removed
    }
}

#[cfg(test)]
mod tests;
