//! Onboarding `state` single use across the fleet: the nonce of an accepted `state` is set in
//! Redis with `NX` until the state expires, so a callback URL used on one replica is refused on
//! every other. While Redis is down, each replica remembers the states it accepted itself.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::state::Checked;
use super::{LocalLedger, StateError, StateLedger};
use crate::store::SharedStore;

/// Used `state`s in Redis, with this process's memory as the fallback.
#[derive(Debug)]
pub struct RedisLedger {
    store: Arc<SharedStore>,
    local: LocalLedger,
}

impl RedisLedger {
    /// A ledger on `store`.
    pub fn new(store: Arc<SharedStore>) -> Self {
        RedisLedger {
            store,
            local: LocalLedger::default(),
        }
    }
}

#[async_trait]
impl StateLedger for RedisLedger {
    async fn consume(&self, state: &Checked, now: i64) -> Result<(), StateError> {
        // Also here first: a state replayed on this replica is refused even if Redis forgets.
        self.local.consume(state, now).await?;
        let nonce: String = state.nonce.iter().map(|b| format!("{b:02x}")).collect();
        let key = self.store.key(&format!("onboarding:state:{nonce}"));
        let ttl = Duration::from_secs(u64::try_from(state.expires_at - now).unwrap_or(1).max(1));
        match self.store.set_nx_px(&key, b"1", ttl).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(StateError::Replayed),
            // Redis down: this replica's memory is the ledger.
            Err(_) => Ok(()),
        }
    }
}
