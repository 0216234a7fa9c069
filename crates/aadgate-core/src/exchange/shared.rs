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
        store.key(&format!(
            "apptoken:{}:{tenant}:{short}",
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

    /// Writes `slot` as the shared entry, until it is useless.
    async fn shared_put(&self, store: &SharedStore, key: &str, slot: &Slot, now: i64) {
        let stored = Stored::of(slot);
        let ttl = Duration::from_secs(u64::try_from(stored.end() - now).unwrap_or(0).max(1));
        let Ok(plain) = serde_json::to_vec(&stored) else {
            return;
        };
        if let Some(sealed) = store.seal(key, &plain) {
            let _ = store.set_px(key, &sealed, ttl).await;
        }
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
        if let Some(slot) = self.shared_get(store, &key, self.clock.now()).await {
            *from_cache = true;
            return Some(slot);
        }
        let lock = format!("{key}:lock");
        let hold = self.settings.timeout + Duration::from_secs(2);
        match store.set_nx_px(&lock, b"1", hold).await {
            Ok(true) => {
                let slot = self.fetch_here(tenant, previous, from_cache).await;
                self.shared_put(store, &key, &slot, self.clock.now()).await;
                let _ = store.del(&lock).await;
                Some(slot)
            }
            Ok(false) => {
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
