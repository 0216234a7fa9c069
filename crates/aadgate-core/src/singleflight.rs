//! Single flight: concurrent callers that need the same key make one fetch.
//!
//! [`SingleFlight::run`] is a per-key async gate. The first caller for a key leads a flight: it
//! runs its own `work` future. Callers that arrive for the same key while the flight is up
//! follow it: they wait and get a clone of the leader's result (an `Err` included — the
//! mechanism passes it on to the followers of that flight, it never keeps it). The key is
//! forgotten as soon as the flight ends, so the next caller starts a new flight. If the leader
//! is cancelled (its future dropped mid-fetch), its followers are not left waiting: the first of
//! them to wake up leads a new flight with its own `work`, the others follow that one.
//!
//! The gate holds no values: storage stays in the callers' moka caches, and the leader's `work`
//! typically looks in the cache once more (another flight may have just filled it), fetches,
//! and stores what it got. Nothing is locked across an `.await`; the map of flights is behind a
//! synchronous mutex held for a map lookup only.
//!
//! Why this and not moka's `entry().or_try_insert_with` for every cache: the app-only token
//! cache of `exchange` needs a synchronous compare-and-remove purge (called from the proxy's
//! synchronous response path), so its storage is a `moka::sync::Cache`, whose entry API would
//! run the token request synchronously on a runtime thread. And moka's entry API coalesces only
//! while a key is absent, whereas our caches decide usability with their own clocks
//! (`fresh_until`, `failed_until`, `expires_at`): a present-but-stale entry had to be
//! invalidated first, which loses the stale token the exchange falls back on during an outage
//! (and the hook caches needed a retry loop for it). A gate that is separate from storage
//! serves a sync and an async cache alike and leaves every "is this still good" decision to
//! the caller.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

/// The flights in progress for keys `K` whose fetches produce `V`.
pub struct SingleFlight<K, V> {
    state: Mutex<State<K, V>>,
}

struct State<K, V> {
    /// Numbers flights, so an ending flight removes only its own entry.
    next_id: u64,
    flights: HashMap<K, Flight<V>>,
}

/// A flight in progress: its number and where its result will appear. The leader holds the
/// other handle on `result`; once both are gone, followers still waiting learn that no result
/// will come.
struct Flight<V> {
    id: u64,
    result: Arc<watch::Sender<Option<V>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            state: Mutex::new(State {
                next_id: 0,
                flights: HashMap::new(),
            }),
        }
    }
}

impl<K, V> std::fmt::Debug for SingleFlight<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SingleFlight")
            .field("in_flight", &self.lock().flights.len())
            .finish()
    }
}

impl<K, V> SingleFlight<K, V> {
    /// No flights.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State<K, V>> {
        // The map stays consistent whatever panicked while holding it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a caller does for a key: lead a new flight, or wait for the one in progress.
enum Role<'a, K: Hash + Eq, V> {
    Lead(Leader<'a, K, V>),
    Follow(watch::Receiver<Option<V>>),
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    /// Runs `work` for `key` unless a flight for `key` is in progress; then waits for that
    /// flight instead and returns a clone of its result. Returns the result and whether this
    /// call ran its own `work` (`true` for exactly one caller per flight). When the leader of
    /// the flight this call waits for is cancelled, this call (or another waiting one) leads a
    /// new flight with its own `work`.
    pub async fn run<F, Fut>(&self, key: &K, work: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let leader = loop {
            match self.join(key) {
                Role::Lead(leader) => break leader,
                Role::Follow(mut result) => {
                    let shared = match result.wait_for(Option::is_some).await {
                        Ok(value) => value.clone(),
                        // The leader went away without a result: try again.
                        Err(_) => None,
                    };
                    if let Some(value) = shared {
                        return (value, false);
                    }
                }
            }
        };
        let value = work().await;
        leader.finish(value.clone());
        (value, true)
    }

    /// How many keys have a flight in progress.
    pub fn in_flight(&self) -> usize {
        self.lock().flights.len()
    }

    /// Joins the flight for `key`, or starts one.
    fn join(&self, key: &K) -> Role<'_, K, V> {
        let mut state = self.lock();
        if let Some(flight) = state.flights.get(key) {
            return Role::Follow(flight.result.subscribe());
        }
        let id = state.next_id;
        state.next_id = state.next_id.wrapping_add(1);
        let result = Arc::new(watch::Sender::new(None));
        state.flights.insert(
            key.clone(),
            Flight {
                id,
                result: result.clone(),
            },
        );
        Role::Lead(Leader {
            group: self,
            key: key.clone(),
            id,
            result,
        })
    }

    /// How many callers wait for the flight for `key` (0 when there is none).
    #[cfg(test)]
    pub(crate) fn waiting(&self, key: &K) -> usize {
        self.lock()
            .flights
            .get(key)
            .map_or(0, |f| f.result.receiver_count())
    }
}

/// Leading the flight `id` for `key`. Dropping it — after [`Leader::finish`], or because the
/// leading caller was cancelled — ends the flight: the key is forgotten, and followers that got
/// no result start over.
struct Leader<'a, K: Hash + Eq, V> {
    group: &'a SingleFlight<K, V>,
    key: K,
    id: u64,
    result: Arc<watch::Sender<Option<V>>>,
}

impl<K: Hash + Eq, V> Leader<'_, K, V> {
    /// Hands `value` to every follower; the flight ends when `self` drops.
    fn finish(self, value: V) {
        self.result.send_replace(Some(value));
    }
}

impl<K: Hash + Eq, V> Drop for Leader<'_, K, V> {
    fn drop(&mut self) {
        let mut state = self.group.lock();
        if state
            .flights
            .get(&self.key)
            .is_some_and(|f| f.id == self.id)
        {
            state.flights.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::{oneshot, Barrier, Notify};

    /// Yields until `n` callers wait for the flight for `key` (no timing involved: the other
    /// tasks only need to be polled once).
    async fn until_waiting(
        group: &SingleFlight<&'static str, impl Clone>,
        key: &'static str,
        n: usize,
    ) {
        while group.waiting(&key) < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn concurrent_callers_for_one_key_make_one_fetch_and_all_get_its_result() {
        const CALLERS: usize = 20;
        let group = Arc::new(SingleFlight::<&'static str, u32>::new());
        let fetches = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..CALLERS {
            let (group, fetches, release) = (group.clone(), fetches.clone(), release.clone());
            tasks.push(tokio::spawn(async move {
                group
                    .run(&"k", || async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        42
                    })
                    .await
            }));
        }
        until_waiting(&group, "k", CALLERS - 1).await;
        release.notify_one();
        let mut led = 0;
        for t in tasks {
            let (value, ran) = t.await.expect("task");
            assert_eq!(value, 42);
            led += usize::from(ran);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(led, 1, "exactly one caller ran its work");
        assert_eq!(
            group.in_flight(),
            0,
            "the key is forgotten when the flight ends"
        );
    }

    #[tokio::test]
    async fn different_keys_fetch_in_parallel() {
        let group = SingleFlight::<&'static str, &'static str>::new();
        // Each fetch waits for the other to start: they finish only if both run at once.
        let both = Barrier::new(2);
        let fetch = |v| {
            let both = &both;
            move || async move {
                both.wait().await;
                v
            }
        };
        let (a, b) = tokio::join!(group.run(&"a", fetch("A")), group.run(&"b", fetch("B")));
        assert_eq!((a, b), (("A", true), ("B", true)));
        assert_eq!(group.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_leader_dropped_mid_fetch_lets_a_follower_fetch() {
        let group = Arc::new(SingleFlight::<&'static str, u32>::new());
        let (started, fetching) = oneshot::channel();
        let leader = tokio::spawn({
            let group = group.clone();
            async move {
                group
                    .run(&"k", || async move {
                        let _ = started.send(());
                        std::future::pending::<u32>().await
                    })
                    .await
            }
        });
        fetching.await.expect("the leader fetches");
        let fetches = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let mut followers = Vec::new();
        for _ in 0..2 {
            let (group, fetches, release) = (group.clone(), fetches.clone(), release.clone());
            followers.push(tokio::spawn(async move {
                group
                    .run(&"k", || async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        release.notified().await;
                        7
                    })
                    .await
            }));
        }
        until_waiting(&group, "k", 2).await;
        leader.abort();
        assert!(leader.await.expect_err("aborted").is_cancelled());
        // One follower leads a new flight; the other waits for it.
        until_waiting(&group, "k", 1).await;
        release.notify_one();
        let mut led = 0;
        for f in followers {
            let (value, ran) = f.await.expect("follower");
            assert_eq!(value, 7);
            led += usize::from(ran);
        }
        assert_eq!(led, 1, "one follower took over");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
        assert_eq!(group.in_flight(), 0);
    }

    #[tokio::test]
    async fn an_error_goes_to_every_waiter_of_its_flight_and_is_not_kept() {
        const CALLERS: usize = 5;
        let group = Arc::new(SingleFlight::<&'static str, Result<u32, String>>::new());
        let release = Arc::new(Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..CALLERS {
            let (group, release) = (group.clone(), release.clone());
            tasks.push(tokio::spawn(async move {
                group
                    .run(&"k", || async move {
                        release.notified().await;
                        Err("down".to_string())
                    })
                    .await
                    .0
            }));
        }
        until_waiting(&group, "k", CALLERS - 1).await;
        release.notify_one();
        for t in tasks {
            assert_eq!(t.await.expect("task"), Err("down".to_string()));
        }
        let next = group.run(&"k", || async { Ok(1) }).await;
        assert_eq!(next, (Ok(1), true), "the next caller fetches again");
    }
}
