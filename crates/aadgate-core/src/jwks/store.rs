//! The key store: the current key set behind an `ArcSwap`, the background task that refreshes
//! it on its schedule and on an unknown `kid`, and the `cache_file` it persists to.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::IdentitySettings;
use crate::metrics::Metrics;

use super::*;

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
            cloud: Default::default(),
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
    pub(super) async fn fetch_once(&self) -> bool {
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.source.fetch()).await {
            Ok(raw) => raw.and_then(|raw| Ok(KeySet::parse(&raw, KeySource::Fetched)?)),
            Err(_) => Err(FetchError::Timeout),
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
