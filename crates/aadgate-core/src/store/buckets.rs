//! Rate-limit buckets for the fleet (SPEC section 11): one GCRA bucket per key in Redis,
//! stepped by one atomic Lua script ([`crate::ratelimit::GCRA_LUA`]) on Redis's own clock
//! (`TIME`), so every replica spends from the same bucket whatever its clock says. A failure
//! (Redis down, slow) makes the limiter decide with this replica's buckets.
//!
//! **Leases.** A busy key does not need a round trip per request while its bucket is far from
//! empty: a spend may take up to [`MAX_LEASE`] requests at once (the script grants `n` only
//! when at least `2n` would be admitted, else one), and this replica admits the rest of them
//! without asking Redis, for at most [`LEASE_TTL`]. The lease size adapts per key: it doubles
//! when a lease is used up within its lifetime and halves when one expires unused, starting at
//! one (no lease) — a key that sees a request now and then is decided by Redis every time.
//! Leased requests are taken from the fleet's bucket before they are admitted, so the fleet
//! never admits more than the limit; near the limit every request is decided by the script.
//! The unused rest of an expired lease is given back to the bucket with the key's next script
//! call from this replica. What a lease can cost is the other way: until then (or, when this
//! replica sees the key no more, until the bucket refills them) those requests are unavailable
//! to the other replicas — at most `MAX_LEASE - 1` per replica and key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::SharedStore;
use crate::ratelimit::{
    gcra_lua_args, Buckets, BucketsError, Decision, GcraParams, Mode, GCRA_LUA,
};

/// The largest lease, in requests.
pub(super) const MAX_LEASE: u64 = 32;
/// How long a replica may admit the rest of a lease.
pub(super) const LEASE_TTL: Duration = Duration::from_millis(100);
/// Keys with lease state kept; beyond it, expired ones are dropped.
const MAX_LEASE_KEYS: usize = 10_000;

/// A key's lease on this replica.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// Requests still to admit here.
    left: u64,
    /// Until when they may be.
    until: Instant,
    /// The size to ask for next.
    size: u64,
    /// The bucket as the script left it (headers of the requests admitted from the lease).
    remaining: u64,
    reset_after_us: u64,
}

/// The buckets in Redis, under `{prefix}ratelimit:`.
#[derive(Debug)]
pub struct RedisBuckets {
    store: Arc<SharedStore>,
    script: redis::Script,
    leases: Mutex<HashMap<String, Lease>>,
}

impl RedisBuckets {
    /// Buckets in `store`.
    pub fn new(store: Arc<SharedStore>) -> Self {
        RedisBuckets {
            store,
            script: redis::Script::new(GCRA_LUA),
            leases: Mutex::new(HashMap::new()),
        }
    }

    /// A request admitted from `key`'s lease, when it has one left (a peek only looks); else
    /// the lease size to ask Redis for and the requests of an expired lease to give back.
    fn take_leased(&self, key: &str, mode: Mode, now: Instant) -> Result<Decision, (u64, u64)> {
        let Ok(mut leases) = self.leases.lock() else {
            return Err((1, 0));
        };
        let Some(lease) = leases.get_mut(key) else {
            return Err((1, 0));
        };
        if now < lease.until && lease.left > 0 {
            if mode == Mode::Spend {
                lease.left -= 1;
                self.store.metrics.rate_limit_leased.inc();
            }
            return Ok(Decision {
                allowed: true,
                remaining: lease.remaining + lease.left,
                retry_after_us: 0,
                reset_after_us: lease.reset_after_us,
            });
        }
        lease.size = match (now < lease.until, lease.left) {
            // Used up within its lifetime: the key is busy.
            (true, 0) => (lease.size * 2).min(MAX_LEASE),
            // Expired with requests left: too large.
            (false, left) if left > 0 => (lease.size / 2).max(1),
            _ => lease.size,
        };
        // An expired lease's rest goes back with this call.
        let give = std::mem::take(&mut lease.left);
        Err((lease.size, give))
    }

    /// Records what a spend took from Redis for `key`.
    fn record(&self, key: &str, size: u64, granted: u64, d: &Decision, now: Instant) {
        let Ok(mut leases) = self.leases.lock() else {
            return;
        };
        if leases.len() >= MAX_LEASE_KEYS && !leases.contains_key(key) {
            leases.retain(|_, l| now < l.until);
            if leases.len() >= MAX_LEASE_KEYS {
                return;
            }
        }
        let lease = leases.entry(key.to_string()).or_insert(Lease {
            left: 0,
            until: now,
            size,
            remaining: 0,
            reset_after_us: 0,
        });
        // Concurrent requests may each have taken a lease: their rests add up.
        let kept = if now < lease.until { lease.left } else { 0 };
        *lease = Lease {
            left: kept + granted.saturating_sub(1),
            until: now + LEASE_TTL,
            size,
            remaining: d.remaining,
            reset_after_us: d.reset_after_us,
        };
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
        let now = Instant::now();
        let (size, give) = match self.take_leased(&key, mode, now) {
            Ok(decision) => return Ok(decision),
            Err(ask) => ask,
        };
        // 0: the script reads Redis's clock, shared by the fleet.
        let args = gcra_lua_args(params, 0, mode, size, give);
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let (allowed, remaining, retry_after_us, reset_after_us, granted): (
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = self
            .store
            .script("ratelimit", &self.script, &[key.as_str()], &args)
            .await
            .map_err(|e| BucketsError(e.to_string()))?;
        let positive = |v: i64| u64::try_from(v).unwrap_or(0);
        let decision = Decision {
            allowed: allowed == 1,
            remaining: positive(remaining),
            retry_after_us: positive(retry_after_us),
            reset_after_us: positive(reset_after_us),
        };
        if mode == Mode::Spend && decision.allowed {
            self.record(&key, size, positive(granted), &decision, now);
        }
        Ok(decision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{StoreKind, StoreSettings};
    use crate::metrics::Metrics;

    fn buckets() -> RedisBuckets {
        let url = "redis://127.0.0.1:1/0";
        let settings = StoreSettings {
            kind: StoreKind::Redis {
                url: url.into(),
                target: Box::new(crate::config::RedisTarget::parse(url).expect("url")),
                encryption_key: Arc::new([1u8; 32]),
                encryption_key_file: "k".into(),
            },
            ..StoreSettings::default()
        };
        let store = SharedStore::new(&settings, Arc::new(Metrics::new()))
            .expect("valid")
            .expect("redis");
        RedisBuckets::new(store)
    }

    fn granted(remaining: u64) -> Decision {
        Decision {
            allowed: true,
            remaining,
            retry_after_us: 0,
            reset_after_us: 5,
        }
    }

    #[test]
    fn a_lease_is_spent_here_and_its_size_follows_the_keys_traffic() {
        let b = buckets();
        let t0 = Instant::now();
        // Nothing known: ask Redis, no lease.
        assert_eq!(b.take_leased("k", Mode::Spend, t0), Err((1, 0)));
        b.record("k", 1, 1, &granted(50), t0);
        // Used up (a lease of one) within its lifetime: the next one doubles.
        assert_eq!(b.take_leased("k", Mode::Spend, t0), Err((2, 0)));
        b.record("k", 2, 2, &granted(40), t0);
        // One request of the lease left: admitted here; a peek does not spend it.
        assert_eq!(b.take_leased("k", Mode::Peek, t0), Ok(granted(41)));
        assert_eq!(b.take_leased("k", Mode::Spend, t0), Ok(granted(40)));
        assert_eq!(b.take_leased("k", Mode::Spend, t0), Err((4, 0)));
        // The script granted one only (the bucket is low): nothing left here.
        b.record("k", 4, 1, &granted(1), t0);
        // Two concurrent grants: their rests add up.
        b.record("k", 4, 4, &granted(10), t0);
        b.record("k", 4, 4, &granted(6), t0);
        assert_eq!(b.take_leased("k", Mode::Peek, t0), Ok(granted(12)));
        // A lease that expires unused halves, and its rest is given back.
        let later = t0 + LEASE_TTL + Duration::from_millis(1);
        assert_eq!(b.take_leased("k", Mode::Spend, later), Err((2, 6)));
        assert_eq!(b.take_leased("k", Mode::Spend, later), Err((2, 0)));
        // Never above the maximum.
        b.record("k", MAX_LEASE, 1, &granted(10), t0);
        assert_eq!(b.take_leased("k", Mode::Spend, t0), Err((MAX_LEASE, 0)));
    }
}
