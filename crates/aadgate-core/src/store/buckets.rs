//! Rate-limit buckets for the fleet (SPEC section 11): one GCRA bucket per key in Redis,
//! stepped by one atomic Lua script ([`crate::ratelimit::GCRA_LUA`]) on Redis's own clock
//! (`TIME`), so every replica spends from the same bucket whatever its clock says. A failure
//! (Redis down, slow) makes the limiter decide with this replica's buckets.

use std::sync::Arc;

use async_trait::async_trait;

use super::SharedStore;
use crate::ratelimit::{
    gcra_lua_args, Buckets, BucketsError, Decision, GcraParams, Mode, GCRA_LUA,
};

/// The buckets in Redis, under `{prefix}ratelimit:`.
#[derive(Debug)]
pub struct RedisBuckets {
    store: Arc<SharedStore>,
    script: redis::Script,
}

impl RedisBuckets {
    /// Buckets in `store`.
    pub fn new(store: Arc<SharedStore>) -> Self {
        RedisBuckets {
            store,
            script: redis::Script::new(GCRA_LUA),
        }
    }
}

#[async_trait]
impl Buckets for RedisBuckets {
    async fn check(
        &self,
        key: &str,
        params: GcraParams,
        _now_us: u64,
        mode: Mode,
    ) -> Result<Decision, BucketsError> {
        let key = self.store.key(&format!("ratelimit:{key}"));
        // 0: the script reads Redis's clock, shared by the fleet.
        let args = gcra_lua_args(params, 0, mode);
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let (allowed, remaining, retry_after_us, reset_after_us): (i64, i64, i64, i64) = self
            .store
            .script("ratelimit", &self.script, &[key.as_str()], &args)
            .await
            .map_err(|e| BucketsError(e.to_string()))?;
        let positive = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Decision {
            allowed: allowed == 1,
            remaining: positive(remaining),
            retry_after_us: positive(retry_after_us),
            reset_after_us: positive(reset_after_us),
        })
    }
}
