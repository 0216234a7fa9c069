//! Stage 4: `exp` (required), `nbf` and `iat`, with clock skew.
//!
//! A token is valid strictly before `exp + clock_skew` (RFC 7519 4.1.4), with `now` in whole
//! seconds. All arithmetic saturates: no claim value, however large or negative, panics or wraps.

use serde_json::Map;
use serde_json::Value;

use crate::reason::{Reason, Rejection};

use super::claims::seconds as num;

/// Describes a span of seconds for messages ("3 h", "42 s").
pub fn human_span(secs: i64) -> String {
    let s = secs.unsigned_abs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// `clock_skew` in whole seconds, saturating at `i64::MAX`.
pub fn skew_secs(skew: std::time::Duration) -> i64 {
    i64::try_from(skew.as_secs()).unwrap_or(i64::MAX)
}

/// Checks the token's lifetime at `now` (Unix seconds) with `skew` seconds of tolerance.
pub fn check(claims: &Map<String, Value>, now: i64, skew: i64) -> Result<(), Rejection> {
    check_times(
        num(claims, "exp"),
        num(claims, "nbf"),
        num(claims, "iat"),
        now,
        skew,
    )
}

/// The same check on the numeric claims themselves (a cached token keeps only these).
pub fn check_times(
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    now: i64,
    skew: i64,
) -> Result<(), Rejection> {
    let Some(exp) = exp else {
        return Err(Rejection::new(
            Reason::Expired,
            "the token has no `exp` claim; tokens without an expiry are refused",
        ));
    };
    if now >= exp.saturating_add(skew) {
        return Err(Rejection::new(
            Reason::Expired,
            format!(
                "the token expired {} ago; get a new one",
                human_span(now.saturating_sub(exp))
            ),
        ));
    }
    if let Some(nbf) = nbf {
        if nbf.saturating_sub(skew) > now {
            return Err(Rejection::new(
                Reason::NotYetValid,
                format!("the token is not valid for another {} (nbf); check the clocks of the caller and of this gateway", human_span(nbf.saturating_sub(now))),
            ));
        }
    }
    if let Some(iat) = iat {
        if iat.saturating_sub(skew) > now {
            return Err(Rejection::new(
                Reason::NotYetValid,
                format!("the token was issued {} in the future (iat); check the clocks of the caller and of this gateway", human_span(iat.saturating_sub(now))),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn lifetimes_are_checked_with_skew() {
        let now = 1_000_000;
        let skew = 300;
        let table = [
            (json!({"exp": now + 10}), Ok(())),
            (json!({"exp": now - 299}), Ok(())),
            (json!({"exp": now - 301}), Err(Reason::Expired)),
            (json!({}), Err(Reason::Expired)),
            (json!({"exp": now + 10, "nbf": now + 299}), Ok(())),
            (
                json!({"exp": now + 10, "nbf": now + 301}),
                Err(Reason::NotYetValid),
            ),
            (
                json!({"exp": now + 10, "iat": now + 301}),
                Err(Reason::NotYetValid),
            ),
            (json!({"exp": (now + 10) as f64 + 0.5}), Ok(())),
            // RFC 7519: valid strictly before exp + skew.
            (json!({"exp": now - 300}), Err(Reason::Expired)),
            (json!({"exp": now - 300 + 1}), Ok(())),
            (
                json!({"exp": (now - 300) as f64 + 0.5}),
                Err(Reason::Expired),
            ),
            (json!({"exp": now + 10, "nbf": now + 300}), Ok(())),
            (json!({"exp": now + 10, "iat": now + 300}), Ok(())),
        ];
        for (c, want) in table {
            assert_eq!(
                check(&claims(c.clone()), now, skew).map_err(|r| r.reason),
                want,
                "{c}"
            );
        }
    }

    #[test]
    fn a_token_is_refused_from_the_second_exp_plus_skew_is_reached() {
        let exp = 1_000_000;
        let table = [
            (exp - 1, 0, Ok(())),
            (exp, 0, Err(Reason::Expired)),
            (exp + 1, 0, Err(Reason::Expired)),
            (exp + 299, 300, Ok(())),
            (exp + 300, 300, Err(Reason::Expired)),
        ];
        for (now, skew, want) in table {
            assert_eq!(
                check_times(Some(exp), None, None, now, skew).map_err(|r| r.reason),
                want,
                "now {now}, skew {skew}"
            );
        }
    }

    #[test]
    fn extreme_claim_values_neither_panic_nor_wrap() {
        let now = 1_700_000_000;
        let far = [
            i64::MAX,
            i64::MAX - 1,
            i64::MIN,
            i64::MIN + 1,
            -i64::MAX,
            0,
            -1,
        ];
        for exp in far {
            for other in far {
                for skew in [0, 300, i64::MAX] {
                    for now in [now, i64::MAX, i64::MIN, 0] {
                        let _ = check_times(Some(exp), Some(other), Some(other), now, skew);
                    }
                }
            }
        }
        // The verdicts that matter at the extremes.
        let table = [
            (Some(i64::MAX), None, Ok(())),
            (Some(i64::MIN), None, Err(Reason::Expired)),
            (Some(-i64::MAX), None, Err(Reason::Expired)),
            (Some(now + 60), Some(i64::MAX), Err(Reason::NotYetValid)),
            (Some(now + 60), Some(i64::MIN), Ok(())),
        ];
        for (exp, nbf, want) in table {
            assert_eq!(
                check_times(exp, nbf, None, now, 300).map_err(|r| r.reason),
                want,
                "exp {exp:?}, nbf {nbf:?}"
            );
        }
        // A skew that saturates still refuses a token that expired long ago only when exp +
        // skew is reached; i64::MAX never is.
        assert!(check_times(Some(now - 10_000), None, None, now, i64::MAX).is_ok());
    }

    #[test]
    fn claims_beyond_the_i64_range_saturate() {
        let now = 1_700_000_000;
        let table = [
            (json!({"exp": 1e300}), Ok(())),
            (json!({"exp": -1e300}), Err(Reason::Expired)),
            (json!({"exp": u64::MAX}), Ok(())),
            (json!({"exp": i64::MIN}), Err(Reason::Expired)),
            (
                json!({"exp": now + 60, "nbf": 1e300}),
                Err(Reason::NotYetValid),
            ),
            (json!({"exp": now + 60, "nbf": -1e300}), Ok(())),
            (
                json!({"exp": now + 60, "iat": 1.7976931348623157e308}),
                Err(Reason::NotYetValid),
            ),
            (json!({"exp": now + 60, "iat": -5e-324}), Ok(())),
        ];
        for (c, want) in table {
            assert_eq!(
                check(&claims(c.clone()), now, 300).map_err(|r| r.reason),
                want,
                "{c}"
            );
        }
    }

    #[test]
    fn spans_of_any_size_are_described() {
        for s in [i64::MAX, i64::MIN, -i64::MAX, 0, -1, 86_400 * 365] {
            assert!(!human_span(s).is_empty());
        }
        assert_eq!(
            human_span(i64::MIN),
            format!("{} days", (i64::MIN.unsigned_abs()) / 86_400)
        );
    }
}
