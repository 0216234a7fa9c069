//! Stage 4: `exp` (required), `nbf` and `iat`, with clock skew.

use serde_json::Map;
use serde_json::Value;

use super::error::{Reason, Rejection};

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
    if exp + skew < now {
        return Err(Rejection::new(
            Reason::Expired,
            format!(
                "the token expired {} ago; get a new one",
                human_span(now - exp)
            ),
        ));
    }
    if let Some(nbf) = nbf {
        if nbf - skew > now {
            return Err(Rejection::new(
                Reason::NotYetValid,
                format!("the token is not valid for another {} (nbf); check the clocks of the caller and of this gateway", human_span(nbf - now)),
            ));
        }
    }
    if let Some(iat) = iat {
        if iat - skew > now {
            return Err(Rejection::new(
                Reason::NotYetValid,
                format!("the token was issued {} in the future (iat); check the clocks of the caller and of this gateway", human_span(iat - now)),
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
        ];
        for (c, want) in table {
            assert_eq!(
                check(&claims(c.clone()), now, skew).map_err(|r| r.reason),
                want,
                "{c}"
            );
        }
    }
}
