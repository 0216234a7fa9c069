//! The second level of the app-only token cache, in the shared store (fleet mode, SPEC
//! section 10): a replica that misses in process reads Redis before it calls the token
//! endpoint, and one replica per (tenant, scope) makes the token request while the others wait
//! for its result.
//!
//! - Entry `{prefix}apptoken:{client_id}:{tenant}:{target}`: the token (or the failure, for
//!   `failure_cache`), sealed with AES-256-GCM; it expires with the token.
//! - Lock `…:lock` (`SET NX PX`, bounded by the token request timeout): held by the replica
//!   that requests the token. The others poll the entry until the holder writes it (or its
//!   lock expires), then use it; if nothing comes in time they request a token themselves.
//! - Purge `…:purge` (`SET NX PX purge_interval`): after an upstream 401, the replica that sets
//!   it drops the entry if it still holds the refused token, so `purge_interval` holds for the
//!   fleet.
//!
//! Every failure of the store falls back to the in-process behaviour.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cache::{FailureKind, Slot};
use super::{AppToken, Exchanger};
use crate::reason::{Reason, Rejection};
use crate::store::SharedStore;

/// How often a waiting replica looks for the holder's result.
const WAIT_STEP: Duration = Duration::from_millis(20);

/// Reads the shared entry (KEYS[1]) or, when there is none, takes the fleet's lock (KEYS[2],
/// `SET NX PX ARGV[1]`), atomically: `{1, entry}`, `{2}` (this replica requests the token) or
/// `{3}` (another replica holds the lock). The two keys share a Redis Cluster slot
/// ([`lock_key`]).
const CLAIM_LUA: &str = r"
local entry = redis.call('GET', KEYS[1])
if entry then return {1, entry} end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return {2, false} end
return {3, false}
";

static CLAIM: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CLAIM_LUA));

/// What [`CLAIM_LUA`] found.
enum Claim {
    /// A usable entry.
    Entry(Slot),
    /// An entry due for a refresh (or that does not open): the lock was not taken.
    Stale,
    /// This replica took the lock.
    Lock,
    /// Another replica holds the lock.
    Held,
}

/// The lock's key for the entry `key`: `key:lock`, which starts with the store's `key_prefix`
/// (so an ACL that allows the prefix allows it) and, when `key` has a Redis Cluster hash tag,
/// has the same one, so one script may touch both. `None` when `key` has no tag (Redis's rule:
/// the first `{`, then the first `}` after it, something between), which only a `key_prefix`
/// with braces can cause (e.g. `{}x:`): the caller then takes two round trips.
fn lock_key(key: &str) -> Option<String> {
    let tagged = key
        .find('{')
        .and_then(|open| key[open + 1..].find('}'))
        .is_some_and(|len| len > 0);
    tagged.then(|| format!("{key}:lock"))
}

/// An entry as stored (before sealing).
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Stored {
    Token {
        access_token: String,
        expires_at: i64,
        obtained_at: i64,
        fresh_until: i64,
    },
    Failed {
        not_consented: bool,
        message: String,
        failed_at: i64,
        failed_until: i64,
    },
}

impl Stored {
    fn of(slot: &Slot) -> Stored {
        match slot {
            Slot::Token {
                token,
                obtained_at,
                fresh_until,
            } => Stored::Token {
                access_token: token.access_token.to_string(),
                expires_at: token.expires_at,
                obtained_at: *obtained_at,
                fresh_until: *fresh_until,
            },
            Slot::Failed {
                rejection,
                kind,
                failed_at,
                failed_until,
            } => Stored::Failed {
                not_consented: *kind == FailureKind::NotConsented,
                message: rejection.message.clone(),
                failed_at: *failed_at,
                failed_until: *failed_until,
            },
        }
    }

    fn slot(self) -> Slot {
        match self {
            Stored::Token {
                access_token,
                expires_at,
                obtained_at,
                fresh_until,
            } => Slot::Token {
                token: AppToken {
                    access_token: access_token.into(),
                    expires_at,
                },
                obtained_at,
                fresh_until,
            },
            Stored::Failed {
                not_consented,
                message,
                failed_at,
                failed_until,
            } => {
                let (kind, reason) = if not_consented {
                    (FailureKind::NotConsented, Reason::TenantNotConsented)
                } else {
                    (FailureKind::Unavailable, Reason::ExchangeUnavailable)
                };
                Slot::Failed {
                    rejection: Rejection::new(reason, message),
                    kind,
                    failed_at,
                    failed_until,
                }
            }
        }
    }

    /// Unix seconds after which the entry is useless.
    fn end(&self) -> i64 {
        match self {
            Stored::Token { expires_at, .. } => *expires_at,
            Stored::Failed { failed_until, .. } => *failed_until,
        }
    }
}

impl Exchanger {
    /// The entry's key for `tenant` (lower case).
    fn shared_key(&self, store: &SharedStore, tenant: &str) -> String {
        let target = match &self.settings.target {
            super::ExchangeTarget::Scope(s) => format!("scope={s}"),
            super::ExchangeTarget::Resource(r) => format!("resource={r}"),
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, target.as_bytes());
        let short: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // The braces are a Redis Cluster hash tag: the entry and its lock share a slot.
        store.key(&format!(
            "apptoken:{{{}:{tenant}:{short}}}",
            self.settings.client_id.to_ascii_lowercase()
        ))
    }

    /// The shared entry, when it is usable at `now`.
    async fn shared_get(&self, store: &SharedStore, key: &str, now: i64) -> Option<Slot> {
        let sealed = store.get(key).await.ok()??;
        let plain = store.open(key, &sealed)?;
        let slot = serde_json::from_slice::<Stored>(&plain).ok()?.slot();
        slot.usable(now).then_some(slot)
    }

    /// [`CLAIM_LUA`]: the usable entry, the lock, or neither.
    async fn read_or_claim(
        &self,
        store: &SharedStore,
        key: &str,
        lock: &str,
        hold: Duration,
    ) -> Result<Claim, crate::store::StoreError> {
        let ms = hold.as_millis().max(1).to_string();
        let (state, sealed): (i64, Option<Vec<u8>>) = store
            .script("get", &CLAIM, &[key, lock], &[ms.as_bytes()])
            .await?;
        Ok(match (state, sealed) {
            (1, Some(sealed)) => {
                let now = self.clock.now();
                let slot = (store.open(key, &sealed))
                    .and_then(|plain| serde_json::from_slice::<Stored>(&plain).ok())
                    .map(Stored::slot)
                    .filter(|slot| slot.usable(now));
                slot.map_or(Claim::Stale, Claim::Entry)
            }
            (2, _) => Claim::Lock,
            _ => Claim::Held,
        })
    }

    /// Writes `slot` as the shared entry, until it is useless.
    async fn shared_put(&self, store: &SharedStore, key: &str, slot: &Slot, now: i64) {
        put(store, key, slot, now).await;
    }
    /// Writes `slot`, just obtained for `tenant`, as the fleet's entry.
    pub(super) async fn share(&self, store: &SharedStore, tenant: &str, slot: &Slot) {
        let key = self.shared_key(store, tenant);
        self.shared_put(store, &key, slot, self.clock.now()).await;
    }

    /// A fresh entry for `tenant` through the shared store: its entry, or one replica's token
    /// request for the fleet. `from_cache` is set when the entry came from the store. `None`
    /// when the store cannot help (down, or the holder never wrote): the caller requests here.
    pub(super) async fn fetch_shared(
        &self,
        store: &SharedStore,
        tenant: &str,
        previous: Option<std::sync::Arc<Slot>>,
        from_cache: &mut bool,
    ) -> Option<Slot> {
        let key = self.shared_key(store, tenant);
        let hold = self.settings.timeout + Duration::from_secs(2);
        // Whether this replica took the lock (then it requests the token), with the lock's key.
        let claimed: Result<(bool, String), _> = match lock_key(&key) {
            // One round trip: the entry, or the lock, or neither (another replica holds it).
            Some(lock) => match self.read_or_claim(store, &key, &lock, hold).await {
                Ok(Claim::Entry(slot)) => {
                    *from_cache = true;
                    return Some(slot);
                }
                Ok(Claim::Lock) => Ok(true),
                Ok(Claim::Held) => Ok(false),
                // The entry is there but due for a refresh: the lock on its own.
                Ok(Claim::Stale) => store.set_nx_px(&lock, b"1", hold).await,
                Err(e) => Err(e),
            }
            .map(|won| (won, lock)),
            // A key_prefix with braces that form no hash tag: two round trips.
            None => {
                if let Some(slot) = self.shared_get(store, &key, self.clock.now()).await {
                    *from_cache = true;
                    return Some(slot);
                }
                let lock = format!("{key}:lock");
                store
                    .set_nx_px(&lock, b"1", hold)
                    .await
                    .map(|won| (won, lock))
            }
        };
        match claimed {
            Ok((true, lock)) => {
                let slot = self.fetch_here(tenant, previous, from_cache).await;
                let now = self.clock.now();
                // The caller has its answer now; the entry is written and the lock released
                // after it (waiting replicas poll for the entry), two round trips off its path.
                let write = {
                    let (store, slot) = (self.store.clone(), slot.clone());
                    async move {
                        if let Some(store) = store {
                            put(&store, &key, &slot, now).await;
                            let _ = store.del(&lock).await;
                        }
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(handle) => drop(handle.spawn(write)),
                    Err(_) => write.await,
                }
                Some(slot)
            }
            Ok((false, _)) => {
                // Another replica is asking: wait for its answer.
                let deadline = Instant::now() + hold;
                while Instant::now() < deadline {
                    tokio::time::sleep(WAIT_STEP).await;
                    if let Some(slot) = self.shared_get(store, &key, self.clock.now()).await {
                        *from_cache = true;
                        return Some(slot);
                    }
                    if !store.is_up() {
                        break;
                    }
                }
                None
            }
            Err(_) => None,
        }
    }

    /// After an upstream 401: once per `purge_interval` for the fleet, drop the shared entry if
    /// it still holds `access_token`. Runs in the background.
    pub(super) fn purge_shared(
        &self,
        store: std::sync::Arc<SharedStore>,
        tenant: &str,
        access_token: &str,
    ) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = self.shared_key(&store, tenant);
        let interval = self.settings.purge_interval;
        let refused = access_token.to_string();
        handle.spawn(async move {
            let purge = format!("{key}:purge");
            if store.set_nx_px(&purge, b"1", interval).await != Ok(true) {
                return;
            }
            let Ok(Some(sealed)) = store.get(&key).await else {
                return;
            };
            let holds = store
                .open(&key, &sealed)
                .and_then(|p| serde_json::from_slice::<Stored>(&p).ok())
                .is_some_and(
                    |s| matches!(s, Stored::Token { access_token, .. } if access_token == refused),
                );
            if holds {
                let _ = store.del(&key).await;
            }
        });
    }
}

/// Writes `slot` as the shared entry under `key`, until it is useless.
async fn put(store: &SharedStore, key: &str, slot: &Slot, now: i64) {
    let stored = Stored::of(slot);
    let ttl = Duration::from_secs(u64::try_from(stored.end() - now).unwrap_or(0).max(1));
    let Ok(plain) = serde_json::to_vec(&stored) else {
        return;
    };
    if let Some(sealed) = store.seal(key, &plain) {
        let _ = store.set_px(key, &sealed, ttl).await;
    }
}

#[cfg(test)]
mod tests {
    use super::lock_key;

    #[test]
    fn the_lock_shares_the_entrys_cluster_slot_and_prefix() {
        // The entry's own tag.
        assert_eq!(
            lock_key("aadgate:apptoken:{c:t:s}").as_deref(),
            Some("aadgate:apptoken:{c:t:s}:lock")
        );
        // A tag from the prefix comes first: both keep it.
        assert_eq!(
            lock_key("{gw}:apptoken:{c:t:s}").as_deref(),
            Some("{gw}:apptoken:{c:t:s}:lock")
        );
        // An empty first pair of braces: no tag at all (Redis hashes the whole key), so the
        // two keys may live on different nodes.
        assert_eq!(lock_key("{}gw:apptoken:{c:t:s}"), None);
    }
}
