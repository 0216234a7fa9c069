//! Where the buckets live: the [`Buckets`] seam, the in-process [`LocalBuckets`], and the Lua
//! script a Redis backend runs ([`GCRA_LUA`]).

use std::time::Duration;

use async_trait::async_trait;

use super::gcra::{gcra, Decision, GcraParams, Mode};

/// Why a bucket store could not decide (a shared store that is down, slow or erroring). The
/// limiter then decides with its local buckets; the store counts the failure
/// (`aadgate_store_errors_total{op="ratelimit"}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate-limit store: {0}")]
pub struct BucketsError(pub String);

/// A store of GCRA buckets: one TAT per key. The limiter holds its own [`LocalBuckets`] and,
/// with the Redis store (SPEC section 10), a shared implementation whose buckets hold for the
/// whole fleet.
#[async_trait]
pub trait Buckets: Send + Sync + std::fmt::Debug {
    /// One GCRA step for `key` at `now_us` (Unix microseconds): decide, and with
    /// [`Mode::Spend`] move the key's TAT on when admitted — atomically, so concurrent steps
    /// for one key never admit more than the bucket holds. `key` is already namespaced by the
    /// limit (`<limit name>:<settings fingerprint>:<key value>`, see
    /// [`RateLimiter`](super::RateLimiter)). An implementation must answer within its own
    /// bounded time; `Err` means it could not, and the caller falls back to its local buckets.
    async fn check(
        &self,
        key: &str,
        params: GcraParams,
        now_us: u64,
        mode: Mode,
    ) -> Result<Decision, BucketsError>;
}

/// Most keys one limit keeps in process. A key evicted while its bucket is not full comes back
/// as a fresh key (it may pass a full burst again): raise this, or use the Redis store, when
/// one limit sees more distinct callers than this.
pub const LOCAL_MAX_KEYS: u64 = 100_000;

/// Longest idle time a local bucket is kept (moka refuses very long expiries); a bucket of a
/// limit that takes longer than this to refill is forgotten after it.
const MAX_IDLE: Duration = Duration::from_secs(366 * 24 * 3600);

/// In-process buckets of one limit: a bounded cache of TATs by key. A key idle for longer than
/// the limit takes to refill a full bucket is dropped — it would be a full bucket again anyway.
#[derive(Debug)]
pub struct LocalBuckets {
    tats: moka::sync::Cache<String, u64>,
}

impl LocalBuckets {
    /// Buckets for at most `max_keys` keys, each dropped after `idle` without a request
    /// (give at least the longest refill time of the limit's parameters).
    pub fn new(max_keys: u64, idle: Duration) -> LocalBuckets {
        LocalBuckets {
            tats: moka::sync::Cache::builder()
                .max_capacity(max_keys)
                .time_to_idle(idle.clamp(Duration::from_secs(1), MAX_IDLE))
                .build(),
        }
    }

    /// One GCRA step, atomic per key (see [`Buckets::check`]); never fails.
    pub fn step(&self, key: &str, params: GcraParams, now_us: u64, mode: Mode) -> Decision {
        use moka::ops::compute::Op;
        let mut decision = None;
        self.tats.entry_by_ref(key).and_compute_with(|entry| {
            let (d, tat) = gcra(entry.map(|e| e.into_value()), now_us, params, mode);
            decision = Some(d);
            if mode == Mode::Spend && d.allowed {
                Op::Put(tat)
            } else {
                Op::Nop
            }
        });
        // The closure runs exactly once; a refusal is the safe answer otherwise.
        decision.unwrap_or(Decision {
            allowed: false,
            remaining: 0,
            retry_after_us: params.emission_us,
            reset_after_us: params.refill_us(),
        })
    }

    /// Keys held (approximate, for tests and diagnostics).
    pub fn len(&self) -> u64 {
        self.tats.run_pending_tasks();
        self.tats.entry_count()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Buckets for LocalBuckets {
    async fn check(
        &self,
        key: &str,
        params: GcraParams,
        now_us: u64,
        mode: Mode,
    ) -> Result<Decision, BucketsError> {
        Ok(self.step(key, params, now_us, mode))
    }
}

/// The GCRA step as a Redis Lua script (`EVALSHA`/`EVAL`, Redis 6 or later, standalone,
/// Sentinel or Cluster: one key per call), the same algorithm as [`gcra`]:
///
/// - `KEYS[1]`: the bucket key (the `key` of [`Buckets::check`], under the store's
///   `key_prefix`); its value is the TAT in Unix microseconds, as an integer string.
/// - `ARGV[1]`: now, Unix microseconds; `0` = use the Redis server's `TIME`, so every replica
///   reads one clock (recommended).
/// - `ARGV[2]`: `T`, [`GcraParams::emission_us`]. `ARGV[3]`: `τ`, [`GcraParams::tolerance_us`].
/// - `ARGV[4]`: the key's TTL in milliseconds, set (`PX`) whenever the TAT is written: at least
///   the refill time ([`GcraParams::refill_us`] / 1000, rounded up).
/// - `ARGV[5]`: `1` = [`Mode::Spend`], `0` = [`Mode::Peek`] (nothing is written).
/// - `ARGV[6]`: a lease `n` ≥ 1 (absent: 1): a spend takes `n` requests at once when at least
///   `2n` would be admitted now, else one — so a replica may admit the rest of a lease
///   without a round trip while the bucket is far from empty, and near the limit every
///   request is decided here, exactly.
/// - `ARGV[7]`: requests given back (absent: 0): the unused rest of an expired lease, returned
///   to the bucket (the TAT moves back by as many emission intervals, never before now) before
///   the step is decided. Written even by a refusal or a peek.
///
/// Returns `{allowed (1|0), remaining, retry_after_us, reset_after_us, granted}`: the fields
/// of [`Decision`] after the spend, and how many requests were taken (0 when refused or
/// peeked). The TAT is written only when a spend is admitted.
pub const GCRA_LUA: &str = r#"
local now = tonumber(ARGV[1])
if not now or now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local emission = math.max(tonumber(ARGV[2]), 1)
local tolerance = tonumber(ARGV[3])
local ttl = math.max(tonumber(ARGV[4]), 1)
local spend = ARGV[5] == '1'
local lease = math.max(math.floor(tonumber(ARGV[6] or '1') or 1), 1)
local give = math.max(math.floor(tonumber(ARGV[7] or '0') or 0), 0)
local stored = redis.call('GET', KEYS[1])
local tat = tonumber(stored or now)
if tat < now then tat = now end
if give > 0 and stored then
  tat = math.max(tat - give * emission, now)
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', ttl)
end
local ahead = tat - now
if ahead > tolerance then
  return {0, 0, ahead - tolerance, ahead, 0}
end
local admissible = math.floor((tolerance - ahead) / emission) + 1
if not spend then
  return {1, admissible, 0, ahead, 0}
end
local granted = 1
if lease > 1 and admissible >= 2 * lease then granted = lease end
ahead = ahead + emission * granted
redis.call('SET', KEYS[1], string.format('%d', tat + emission * granted), 'PX', ttl)
return {1, math.floor((tolerance + emission - ahead) / emission), 0, ahead, granted}
"#;

/// The `ARGV` of [`GCRA_LUA`] for one step (now given by the caller; pass `0` for `now_us` to
/// use the Redis server's clock), asking for a lease of `lease` requests (1: none) and giving
/// back `give` requests of an expired one.
pub fn gcra_lua_args(
    params: GcraParams,
    now_us: u64,
    mode: Mode,
    lease: u64,
    give: u64,
) -> [String; 7] {
    [
        now_us.to_string(),
        params.emission_us.to_string(),
        params.tolerance_us.to_string(),
        params.refill_us().div_ceil(1000).max(1).to_string(),
        if mode == Mode::Spend { "1" } else { "0" }.to_string(),
        lease.max(1).to_string(),
        give.to_string(),
    ]
}
