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
    let fetch =
        |tok: &'static str| move |_| async move { Slot::token(tok, 1000, 3600, Duration::ZERO) };
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
    let fetch =
        |tok: &'static str| move |_| async move { Slot::token(tok, 1000, 3600, Duration::ZERO) };
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
