//! Continuous access evaluation on the mock Graph: revocation events per (tenant, app) and the
//! claims challenge a CAE token issued before one gets.
//!
//! A client that declares the `cp1` capability gets tokens with `xms_cc: ["cp1"]` (long-lived,
//! up to 28 h) and promises to handle claims challenges; Graph then rejects such a token after a
//! critical event with `401`, `error="insufficient_claims"` and a base64 claims request asking
//! for a token issued after the event, and keeps accepting tokens without `cp1` until they
//! expire (<https://learn.microsoft.com/entra/identity-platform/app-resilience-continuous-access-evaluation>,
//! <https://learn.microsoft.com/entra/identity-platform/claims-challenge>).
//!
//! The claims request Graph sends is `{"access_token":{"nbf":{"essential":true, "value":"<unix
//! seconds>"}}}` (the value a string, standard base64 with padding). Token times are whole
//! seconds while an event happens inside a second, so the mock asks for the first whole second
//! after the event: every token issued before the event, in the same second included, falls
//! short of it, and a token whose `nbf` reaches it passes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::serve::lock;

/// Revocation events raised on the mock Graph itself ([`super::MockGraphHandle::revoke_sessions`]),
/// latest per (tenant, client id), keys lower-case.
#[derive(Debug, Default)]
pub(super) struct Revocations {
    events: Mutex<HashMap<(String, String), SystemTime>>,
}

impl Revocations {
    /// Records an event for (tenant, client id) at `at`, keeping the later of it and any earlier
    /// one.
    pub(super) fn record(&self, tenant: &str, client_id: &str, at: SystemTime) {
        let key = (tenant.to_ascii_lowercase(), client_id.to_ascii_lowercase());
        let mut events = lock(&self.events);
        let entry = events.entry(key).or_insert(at);
        if *entry < at {
            *entry = at;
        }
    }

    /// The latest event recorded for (tenant, client id).
    pub(super) fn latest(&self, tenant: &str, client_id: &str) -> Option<SystemTime> {
        lock(&self.events)
            .get(&(tenant.to_ascii_lowercase(), client_id.to_ascii_lowercase()))
            .copied()
    }
}

/// The `nbf` (Unix seconds) a token needs once a revocation happened at `at`: the first whole
/// second after it.
pub(super) fn required_not_before(at: SystemTime) -> i64 {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    secs.saturating_add(1)
}

/// The claims a CAE token must satisfy: `Some(required nbf)` when the token is challenged — it
/// carries `cp1`, a revocation happened, and its `nbf` is before the required one — else `None`.
pub(super) fn challenge_for(
    capable: bool,
    token_not_before: i64,
    revoked_at: Option<SystemTime>,
) -> Option<i64> {
    if !capable {
        return None;
    }
    let required = required_not_before(revoked_at?);
    (token_not_before < required).then_some(required)
}

/// The claims request of a challenge, spelled as Graph spells it.
pub(super) fn claims_request(not_before: i64) -> String {
    format!("{{\"access_token\":{{\"nbf\":{{\"essential\":true, \"value\":\"{not_before}\"}}}}}}")
}

/// [`claims_request`] in standard base64 with padding, the `claims` parameter of the challenge.
pub(super) fn encoded_claims_request(not_before: i64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(claims_request(not_before))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn a_cae_token_issued_before_the_event_is_challenged_with_the_next_second() {
        let cases = [
            // (cp1, token nbf, event, challenge)
            (true, 99, Some(at(100, 500)), Some(101)),
            (true, 100, Some(at(100, 500)), Some(101)),
            (true, 100, Some(at(100, 0)), Some(101)),
            (true, 101, Some(at(100, 500)), None),
            (true, 500, Some(at(100, 500)), None),
            (true, 99, None, None),
            (false, 99, Some(at(100, 500)), None),
        ];
        for (capable, nbf, event, want) in cases {
            assert_eq!(
                challenge_for(capable, nbf, event),
                want,
                "cp1={capable} nbf={nbf} event={event:?}"
            );
        }
    }

    #[test]
    fn the_claims_request_is_graphs_json_in_padded_base64() {
        assert_eq!(
            claims_request(1_726_258_122),
            r#"{"access_token":{"nbf":{"essential":true, "value":"1726258122"}}}"#
        );
        // Graph's own challenge for that timestamp carries exactly this value.
        assert_eq!(
            encoded_claims_request(1_726_258_122),
            "eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwgInZhbHVlIjoiMTcyNjI1ODEyMiJ9fX0="
        );
    }

    #[test]
    fn later_events_replace_earlier_ones_and_keys_ignore_case() {
        let revocations = Revocations::default();
        revocations.record("T", "App", at(200, 0));
        revocations.record("t", "app", at(100, 0));
        assert_eq!(revocations.latest("t", "APP"), Some(at(200, 0)));
        revocations.record("t", "app", at(300, 0));
        assert_eq!(revocations.latest("T", "app"), Some(at(300, 0)));
        assert_eq!(revocations.latest("t", "other"), None);
    }
}
