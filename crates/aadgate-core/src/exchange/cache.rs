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
mod tests {
    use super::*;
    use crate::reason::Reason;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MIN: u64 = 60;

    #[test]
    fn a_token_is_fresh_until_refresh_before_expiry_but_at_least_half_its_lifetime() {
        // (expires_in, refresh_before_expiry, fresh for)
        let table: &[(i64, u64, i64)] = &[
            (3599, 5 * MIN, 3299), // AAD's usual hour: refresh five minutes ahead
            (3600, 0, 3600),       // no refresh ahead: until expiry
            (600, 5 * MIN, 300),   // exactly half
            (300, 5 * MIN, 150),   // refresh_before = lifetime: half
            (60, 5 * MIN, 30),     // shorter than refresh_before: half
            (1, 5 * MIN, 0),       // one second: never served from the cache
            (0, 5 * MIN, 0),       // already expired
            (-5, 5 * MIN, 0),      // nonsense lifetime: treated as 0
            (86_400, 5 * MIN, 86_100),
        ];
        for &(expires_in, before, fresh_for) in table {
            let at = 1_700_000_000;
            assert_eq!(
                fresh_until(at, expires_in, Duration::from_secs(before)) - at,
                fresh_for,
                "expires_in {expires_in}, refresh_before {before}"
            );
        }
    }

    #[test]
    fn a_cached_token_is_served_until_fresh_until_and_never_after_expiry() {
        let slot = Slot::token("t", 1000, 600, Duration::from_secs(5 * MIN));
        assert!(slot.usable(1000));
        assert!(slot.usable(1299));
        assert!(!slot.usable(1300));
        let Slot::Token { token, .. } = &slot else {
            panic!("token slot")
        };
        assert_eq!(token.expires_at, 1600);
    }

    #[test]
    fn retry_after_counts_whole_seconds_left_of_the_failure_window_and_is_at_least_one() {
        // (failure_cache ms, seconds since the failure, retry-after)
        let table: &[(u64, i64, u64)] = &[
            (30_000, 0, 30),
            (30_000, 29, 1),
            (30_000, 30, 1),
            (1_500, 0, 2), // window rounded up to whole seconds
            (0, 0, 1),
        ];
        for &(cache_ms, after, expected) in table {
            let until = failed_until(1000, Duration::from_millis(cache_ms));
            assert_eq!(
                retry_after_secs(until, 1000 + after),
                expected,
                "{cache_ms} ms, +{after} s"
            );
        }
    }

    #[test]
    fn a_cached_failure_answers_with_retry_after_until_its_window_ends() {
        let r = Rejection::new(Reason::ExchangeUnavailable, "down");
        let slot = Slot::failed(r, FailureKind::Unavailable, 1000, Duration::from_secs(30));
        assert!(slot.usable(1029));
        assert!(!slot.usable(1030));
        let err = slot.answer(1010).expect_err("failure");
        assert_eq!(err.reason, Reason::ExchangeUnavailable);
        assert_eq!(err.retry_after, Some(Duration::from_secs(20)));
        assert_eq!(slot.metric_result(false), "error");
    }

    #[tokio::test]
    async fn concurrent_misses_for_one_key_fetch_once() {
        let cache = Arc::new(AppTokenCache::new(10));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::watch::channel(false);
        let key = CacheKey::new("t1", &ExchangeTarget::Scope("s".into()));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, fetches, key, mut wait) =
                (cache.clone(), fetches.clone(), key.clone(), wait.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch(
                        &key,
                        || 1000,
                        |_| async move {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            let _ = wait.wait_for(|go| *go).await;
                            Slot::token("tok", 1000, 3600, Duration::from_secs(300))
                        },
                    )
                    .await
                    .1
            }));
        }
        tokio::task::yield_now().await;
        let _ = release.send(true);
        let mut fetched = 0;
        for t in tasks {
            fetched += usize::from(t.await.expect("task"));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(fetched, 1);
        assert_eq!(cache.flights.in_flight(), 0, "flights are forgotten");
    }

    #[tokio::test]
    async fn a_cancelled_token_request_lets_a_waiting_caller_fetch() {
        let cache = Arc::new(AppTokenCache::new(10));
        let key = CacheKey::new("t1", &ExchangeTarget::Scope("s".into()));
        let (started, fetching) = tokio::sync::oneshot::channel();
        let first = tokio::spawn({
            let (cache, key) = (cache.clone(), key.clone());
            async move {
                cache
                    .get_or_fetch(
                        &key,
                        || 1000,
                        |_| async move {
                            let _ = started.send(());
                            std::future::pending::<Slot>().await
                        },
                    )
                    .await
            }
        });
        fetching.await.expect("the first caller fetches");
        let second = tokio::spawn({
            let (cache, key) = (cache.clone(), key.clone());
            async move {
                cache
                    .get_or_fetch(
                        &key,
                        || 1000,
                        |_| async move { Slot::token("tok", 1000, 3600, Duration::ZERO) },
                    )
                    .await
            }
        });
        while cache.flights.waiting(&key) < 1 {
            tokio::task::yield_now().await;
        }
        first.abort();
        assert!(first.await.expect_err("aborted").is_cancelled());
        let (slot, fetched) = second.await.expect("second caller");
        assert!(fetched, "the waiting caller made the request");
        assert!(slot.holds("tok"));
        assert!(cache.usable(&key, 1000).is_some());
    }

    #[tokio::test]
    async fn purge_removes_only_the_token_it_names() {
        let cache = AppTokenCache::new(10);
        let key = CacheKey::new("t1", &ExchangeTarget::Scope("s".into()));
        let fetch = |tok: &'static str| {
            move |_| async move { Slot::token(tok, 1000, 3600, Duration::ZERO) }
        };
        cache.get_or_fetch(&key, || 1000, fetch("old")).await;
        assert!(!cache.purge(&key, "other", 1000, Duration::ZERO));
        assert!(cache.usable(&key, 1000).is_some());
        assert!(cache.purge(&key, "old", 1000, Duration::ZERO));
        assert!(cache.usable(&key, 1000).is_none());
        let (_, fetched) = cache.get_or_fetch(&key, || 1000, fetch("new")).await;
        assert!(fetched);
    }

    #[tokio::test]
    async fn a_second_purge_within_the_interval_keeps_the_token() {
        let cache = AppTokenCache::new(10);
        let key = CacheKey::new("t1", &ExchangeTarget::Scope("s".into()));
        let other = CacheKey::new("t2", &ExchangeTarget::Scope("s".into()));
        let interval = Duration::from_secs(30);
        let fetch = |tok: &'static str| {
            move |_| async move { Slot::token(tok, 1000, 3600, Duration::ZERO) }
        };
        cache.get_or_fetch(&key, || 1000, fetch("a")).await;
        cache.get_or_fetch(&other, || 1000, fetch("x")).await;
        assert!(
            cache.purge(&key, "a", 1000, interval),
            "the first purge drops"
        );
        cache.get_or_fetch(&key, || 1001, fetch("b")).await;
        assert!(
            !cache.purge(&key, "b", 1029, interval),
            "a purge 29 s later keeps the new token"
        );
        assert!(cache.usable(&key, 1029).is_some());
        assert!(
            cache.purge(&other, "x", 1029, interval),
            "another tenant has its own interval"
        );
        assert!(
            cache.purge(&key, "b", 1030, interval),
            "once the interval has passed the next purge drops"
        );
    }

    #[test]
    fn purges_are_allowed_once_per_interval() {
        let s = Duration::from_secs;
        // (case, last purge, now, interval, allowed)
        let table = [
            ("the first purge is allowed", None, 1000, s(30), true),
            (
                "a purge within the interval is not",
                Some(1000),
                1029,
                s(30),
                false,
            ),
            (
                "a purge at the interval's end is",
                Some(1000),
                1030,
                s(30),
                true,
            ),
            (
                "a zero interval allows every purge",
                Some(1000),
                1000,
                s(0),
                true,
            ),
            (
                "a fractional interval rounds up",
                Some(1000),
                1001,
                Duration::from_millis(1500),
                false,
            ),
            (
                "extreme times saturate instead of overflowing",
                Some(i64::MIN),
                i64::MAX,
                s(u64::MAX),
                true,
            ),
        ];
        for (case, last, now, interval, want) in table {
            assert_eq!(purge_allowed(last, now, interval), want, "{case}");
        }
    }

    #[test]
    fn keys_differ_by_tenant_and_target_but_not_tenant_case() {
        let s = ExchangeTarget::Scope("https://outlook.office365.com/.default".into());
        let r = ExchangeTarget::Resource("https://outlook.office365.com".into());
        assert_eq!(CacheKey::new("AB", &s), CacheKey::new("ab", &s));
        assert_ne!(CacheKey::new("ab", &s), CacheKey::new("cd", &s));
        assert_ne!(CacheKey::new("ab", &s), CacheKey::new("ab", &r));
    }
}
