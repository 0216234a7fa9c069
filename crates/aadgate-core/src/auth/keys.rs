//! Stage 3 (key lookup): find the verifying key by `kid` (or `x5t` when there is no `kid`) in
//! the current key set, asking the store for a rate-limited refetch on a miss. Key material
//! named in the token (`jku`, `x5u`, `jwk`, `x5c`) is never used.

use std::sync::Arc;
use std::time::Duration;

use super::token::JoseHeader;
use crate::jwks::{Jwk, KeyStore};
use crate::reason::{Reason, Rejection};

/// The key that will verify the token and the id it was found by.
#[derive(Debug, Clone)]
pub struct FoundKey {
    /// The `kid`, or the `x5t` when the token had no `kid`, that found the key; kept with a
    /// verified token so a cache hit can check it still names the same key.
    pub id: Arc<str>,
    /// The key from the current key set.
    pub jwk: Arc<Jwk>,
}

/// Looks up the token's key. On a miss, waits for the refetch in progress or one it may ask
/// for (SPEC 8: one fetch however many requests miss; each is answered when it completes), then
/// looks again. `wait` is a safety bound on that wait and on the first key load in progress.
pub async fn lookup(
    store: &KeyStore,
    header: &JoseHeader,
    wait: Duration,
) -> Result<FoundKey, Rejection> {
    let (id, by_kid) = match (&header.kid, &header.x5t) {
        (Some(kid), _) => (kid.as_str(), true),
        (None, Some(x5t)) => (x5t.as_str(), false),
        (None, None) => {
            return Err(Rejection::new(
                Reason::UnknownKid,
                "the token header names no key (no `kid` and no `x5t`)",
            ))
        }
    };
    let find = |set: &crate::jwks::KeySet| {
        if by_kid {
            set.by_kid(id).cloned()
        } else {
            set.by_x5t(id).cloned()
        }
    };
    let set = match store.current() {
        Some(set) => set,
        None => store.first_load(wait).await.ok_or_else(|| {
            Rejection::new(
                Reason::KeysUnavailable,
                "the gateway has not been able to load Azure AD's signing keys yet; retry shortly",
            )
        })?,
    };
    if let Some(jwk) = find(&set) {
        return Ok(FoundKey {
            id: Arc::from(id),
            jwk,
        });
    }
    // Look again in whatever set is current once any fetch this miss waited for completed.
    if let Some(newer) = store.refetch_for_unknown_kid(&set, wait).await {
        if let Some(jwk) = find(&newer) {
            return Ok(FoundKey {
                id: Arc::from(id),
                jwk,
            });
        }
    }
    Err(Rejection::new(
        Reason::UnknownKid,
        format!(
            "no signing key with {} {id:?} in the key set; the token was signed by a key this gateway does not trust (another cloud, a tenant-specific or app-specific signing key, or a forged token)",
            if by_kid { "kid" } else { "x5t" }
        ),
    ))
}
