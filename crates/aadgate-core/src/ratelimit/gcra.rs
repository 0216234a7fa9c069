//! The generic cell rate algorithm (GCRA): a leaky bucket kept as one number per key, the
//! *theoretical arrival time* (TAT) — when the bucket would be empty again if nothing else
//! came. Pure functions of timestamps, in integer microseconds.
//!
//! With emission interval `T = period / rate` and tolerance `τ = T × (burst − 1)`, a request
//! at `now` is admitted when `max(TAT, now) − now ≤ τ`; admitting it moves the TAT on by `T`.
//! A fresh key (no TAT, or one in the past) therefore admits `burst` requests at once, then one
//! per `T`.

use std::time::Duration;

/// A limit's GCRA constants, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraParams {
    /// `T`: the time one request "costs", `period / rate` rounded up (at least 1 µs), so the
    /// sustained rate never exceeds the configured one.
    pub emission_us: u64,
    /// `τ`: how far ahead of `now` the TAT may be for a request to pass, `T × (burst − 1)`.
    pub tolerance_us: u64,
}

impl GcraParams {
    /// The constants of `rate` requests per `period` with `burst` at once (both at least 1;
    /// 0 is read as 1).
    pub fn new(rate: u64, period: Duration, burst: u64) -> GcraParams {
        let period_us = u64::try_from(period.as_micros()).unwrap_or(u64::MAX);
        let emission_us = period_us.div_ceil(rate.max(1)).max(1);
        GcraParams {
            emission_us,
            tolerance_us: emission_us.saturating_mul(burst.max(1) - 1),
        }
    }

    /// `burst`: how many requests a full bucket admits at once.
    pub fn burst(&self) -> u64 {
        self.tolerance_us / self.emission_us.max(1) + 1
    }

    /// `τ + T`: how long an empty bucket takes to fill up again; a key idle this long is a
    /// fresh key.
    pub fn refill_us(&self) -> u64 {
        self.tolerance_us.saturating_add(self.emission_us)
    }
}

/// Whether a step spends the request it decides about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Decide and, when admitted, move the TAT on (the normal case).
    Spend,
    /// Decide only: would a request be admitted now? The TAT is not written. Used to check
    /// every limit of a route before spending any of them.
    Peek,
}

/// The outcome of one step, with what the response headers say about the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The request is admitted.
    pub allowed: bool,
    /// Requests that would still be admitted at once after this one (`RateLimit: r`).
    pub remaining: u64,
    /// When refused: how long until one request would be admitted (0 when allowed).
    pub retry_after_us: u64,
    /// How long until the bucket is full again (`RateLimit: t`).
    pub reset_after_us: u64,
}

impl Decision {
    /// `Retry-After`: whole seconds, rounded up, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        ceil_secs(self.retry_after_us).max(1)
    }

    /// `RateLimit: t`: whole seconds until the bucket is full, rounded up.
    pub fn reset_secs(&self) -> u64 {
        ceil_secs(self.reset_after_us)
    }
}

/// Microseconds to whole seconds, rounded up.
pub fn ceil_secs(us: u64) -> u64 {
    us.div_ceil(1_000_000)
}

/// One GCRA step for a key whose stored TAT is `tat` (`None`: never seen, or expired), at
/// `now`. Returns the decision and the TAT to store: moved on by `T` when a [`Mode::Spend`]
/// step admits, else the one given (or `now` when none was given). Saturating arithmetic:
/// no input panics or wraps.
pub fn gcra(tat: Option<u64>, now: u64, p: GcraParams, mode: Mode) -> (Decision, u64) {
    let t = p.emission_us.max(1);
    let tau = p.tolerance_us;
    let tat = tat.map_or(now, |v| v.max(now));
    let ahead = tat - now;
    if ahead > tau {
        let refused = Decision {
            allowed: false,
            remaining: 0,
            retry_after_us: ahead - tau,
            reset_after_us: ahead,
        };
        return (refused, tat);
    }
    match mode {
        Mode::Spend => {
            let ahead = ahead.saturating_add(t);
            let allowed = Decision {
                allowed: true,
                remaining: (tau.saturating_add(t) - ahead) / t,
                retry_after_us: 0,
                reset_after_us: ahead,
            };
            (allowed, tat.saturating_add(t))
        }
        Mode::Peek => {
            let allowed = Decision {
                allowed: true,
                remaining: (tau - ahead) / t + 1,
                retry_after_us: 0,
                reset_after_us: ahead,
            };
            (allowed, tat)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    /// rate 1 per hour, burst 3 (the end-to-end tests' limit).
    fn hourly() -> GcraParams {
        GcraParams::new(1, Duration::from_secs(3600), 3)
    }

    /// Spends `n` requests at `now`, threading the TAT; the decisions in order.
    fn run(tat: &mut Option<u64>, now: u64, p: GcraParams, n: usize) -> Vec<Decision> {
        (0..n)
            .map(|_| {
                let (d, t) = gcra(*tat, now, p, Mode::Spend);
                *tat = Some(t);
                d
            })
            .collect()
    }

    #[test]
    fn params_are_the_emission_interval_and_the_tolerance() {
        let table = [
            ((100, 1_000, 200), (10_000, 1_990_000, 200)),
            ((1, 3_600_000, 3), (3_600 * S, 7_200 * S, 3)),
            ((3, 1_000, 3), (333_334, 666_668, 3)),
            ((10_000_000, 1, 1), (1, 0, 1)),
            ((5, 1_000, 1), (200_000, 0, 1)),
        ];
        for ((rate, period_ms, burst), (t, tau, b)) in table {
            let p = GcraParams::new(rate, Duration::from_millis(period_ms), burst);
            assert_eq!((p.emission_us, p.tolerance_us, p.burst()), (t, tau, b));
        }
    }

    #[test]
    fn a_fresh_key_admits_the_burst_at_once_then_refuses() {
        let mut tat = None;
        let now = 1_000 * S;
        let ds = run(&mut tat, now, hourly(), 4);
        let remaining: Vec<u64> = ds.iter().map(|d| d.remaining).collect();
        let allowed: Vec<bool> = ds.iter().map(|d| d.allowed).collect();
        let resets: Vec<u64> = ds.iter().map(Decision::reset_secs).collect();
        assert_eq!(allowed, [true, true, true, false]);
        assert_eq!(remaining, [2, 1, 0, 0]);
        assert_eq!(resets, [3600, 7200, 10800, 10800]);
        assert_eq!(ds[3].retry_after_secs(), 3600);
        assert_eq!(tat, Some(now + 10_800 * S), "the refusal wrote nothing new");
    }

    #[test]
    fn after_the_burst_one_request_passes_per_emission_interval() {
        let p = GcraParams::new(10, Duration::from_secs(1), 2);
        let mut tat = None;
        let t0 = 50 * S;
        assert!(run(&mut tat, t0, p, 2).iter().all(|d| d.allowed));
        let table = [
            (t0 + 50_000, false, 50_000),
            (t0 + 100_000, true, 0),
            (t0 + 150_000, false, 50_000),
            (t0 + 200_000, true, 0),
        ];
        for (now, allowed, retry) in table {
            let d = run(&mut tat, now, p, 1)[0];
            assert_eq!((d.allowed, d.retry_after_us), (allowed, retry), "at {now}");
        }
    }

    #[test]
    fn an_idle_key_refills_to_the_full_burst_and_no_further() {
        let p = GcraParams::new(1, Duration::from_secs(1), 5);
        let mut tat = None;
        assert!(run(&mut tat, 10 * S, p, 5).iter().all(|d| d.allowed));
        let later = run(&mut tat, 10 * S + 2 * S, p, 3);
        assert_eq!(
            later.iter().map(|d| d.allowed).collect::<Vec<_>>(),
            [true, true, false],
            "two seconds refill two requests"
        );
        let mut tat2 = tat;
        let much_later = run(&mut tat2, 1_000 * S, p, 6);
        assert_eq!(much_later.iter().filter(|d| d.allowed).count(), 5);
        assert_eq!(much_later[0].remaining, 4);
    }

    #[test]
    fn an_override_is_just_other_params_for_the_same_algorithm() {
        let base = GcraParams::new(100, Duration::from_secs(1), 200);
        let over = GcraParams::new(1000, Duration::from_secs(1), 2000);
        let (mut a, mut b) = (None, None);
        let now = 7 * S;
        assert_eq!(
            run(&mut a, now, base, 201)
                .iter()
                .filter(|d| d.allowed)
                .count(),
            200
        );
        assert_eq!(
            run(&mut b, now, over, 2001)
                .iter()
                .filter(|d| d.allowed)
                .count(),
            2000
        );
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        let table = [
            (1, 1),
            (999_999, 1),
            (1_000_000, 1),
            (1_000_001, 2),
            (3_599_500_000, 3600),
        ];
        for (us, secs) in table {
            let d = Decision {
                allowed: false,
                remaining: 0,
                retry_after_us: us,
                reset_after_us: us,
            };
            assert_eq!(d.retry_after_secs(), secs, "{us} µs");
        }
        assert_eq!(ceil_secs(0), 0);
    }

    #[test]
    fn a_peek_decides_without_spending_and_reports_the_unspent_bucket() {
        let p = hourly();
        let now = 5 * S;
        let (d, tat) = gcra(None, now, p, Mode::Peek);
        assert_eq!(
            (d.allowed, d.remaining, d.reset_after_us, tat),
            (true, 3, 0, now)
        );
        let mut stored = None;
        run(&mut stored, now, p, 3);
        let (d, tat) = gcra(stored, now, p, Mode::Peek);
        assert!(!d.allowed);
        assert_eq!(Some(tat), stored);
    }

    #[test]
    fn a_tat_in_the_past_is_a_full_bucket_and_huge_values_saturate() {
        let p = hourly();
        let (d, _) = gcra(Some(1), 100 * S, p, Mode::Spend);
        assert_eq!((d.allowed, d.remaining), (true, 2));
        let (d, tat) = gcra(Some(u64::MAX), 0, p, Mode::Spend);
        assert!(!d.allowed);
        assert_eq!(tat, u64::MAX);
        let (d, tat) = gcra(None, u64::MAX - 1, p, Mode::Spend);
        assert!(d.allowed);
        assert_eq!(tat, u64::MAX);
        let wide = GcraParams::new(1, Duration::MAX, u64::MAX);
        assert!(gcra(None, 0, wide, Mode::Spend).0.allowed);
    }
}
