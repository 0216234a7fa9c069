//! The `state` of a sign-up: made by `start`, checked by `callback`.
//!
//! `state` = base64url(nonce ‖ expiry) `.` base64url(HMAC-SHA256(key, label ‖ nonce ‖ expiry)):
//! 16 random bytes, the expiry in Unix seconds (8 bytes, big endian), and a MAC under the
//! `state_key_file` key that every replica shares. The gateway keeps nothing per `start`;
//! a `state` is accepted once: its nonce goes into a [`StateLedger`] until it expires.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Random bytes in a `state`.
const NONCE_BYTES: usize = 16;
/// Bytes before the MAC: nonce and expiry.
const PAYLOAD_BYTES: usize = NONCE_BYTES + 8;
/// Domain separation: a MAC made for something else with the same key never passes as a state.
const LABEL: &[u8] = b"aadgate onboarding state v1\0";
/// Most unexpired nonces a [`LocalLedger`] keeps; beyond it, states are refused until some
/// expire (an attacker who fetches `start` in a loop cannot grow memory without bound).
pub const LEDGER_CAPACITY: usize = 1_000_000;

/// Why a `state` was refused (all are `400 bad_request`, `onboarding_total{result="bad_state"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// No `state` parameter.
    #[error("the sign-up link has no state parameter")]
    Missing,
    /// Not in the state format, or a MAC that does not verify (forged or another key's).
    #[error("the sign-up state is not one this gateway made")]
    Forged,
    /// Older than `state_ttl`.
    #[error("the sign-up link expired")]
    Expired,
    /// Used before.
    #[error("the sign-up link was already used")]
    Replayed,
    /// The ledger is full or unavailable.
    #[error("too many sign-ups in progress; try again in a few minutes")]
    Busy,
}

/// A new `state` valid until `expires_at` (Unix seconds).
pub fn make(key: &[u8], expires_at: i64) -> String {
    let mut payload = [0u8; PAYLOAD_BYTES];
    if aws_lc_rs::rand::fill(&mut payload[..NONCE_BYTES]).is_err() {
        // The system's random source failed: a v4 UUID is drawn from another CSPRNG.
        payload[..NONCE_BYTES].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    payload[NONCE_BYTES..].copy_from_slice(&expires_at.to_be_bytes());
    let tag = mac(key, &payload);
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    )
}

fn mac(key: &[u8], payload: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(LABEL);
    ctx.update(payload);
    ctx.sign()
}

/// A verified, unexpired `state`: its nonce and expiry (not yet marked used).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// The random part.
    pub nonce: [u8; NONCE_BYTES],
    /// Unix seconds.
    pub expires_at: i64,
}

/// Checks the MAC (in constant time) and the expiry at `now`.
pub fn check(key: &[u8], state: Option<&str>, now: i64) -> Result<Checked, StateError> {
    let state = state.filter(|s| !s.is_empty()).ok_or(StateError::Missing)?;
    let (payload, tag) = state.split_once('.').ok_or(StateError::Forged)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| StateError::Forged)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| StateError::Forged)?;
    if payload.len() != PAYLOAD_BYTES {
        return Err(StateError::Forged);
    }
    let hkey = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut signed = Vec::with_capacity(LABEL.len() + PAYLOAD_BYTES);
    signed.extend_from_slice(LABEL);
    signed.extend_from_slice(&payload);
    hmac::verify(&hkey, &signed, &tag).map_err(|_| StateError::Forged)?;
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&payload[..NONCE_BYTES]);
    let mut exp = [0u8; 8];
    exp.copy_from_slice(&payload[NONCE_BYTES..]);
    let expires_at = i64::from_be_bytes(exp);
    if now >= expires_at {
        return Err(StateError::Expired);
    }
    Ok(Checked { nonce, expires_at })
}

/// Where used `state`s are remembered until they expire: this process ([`LocalLedger`]), or a
/// store the whole fleet shares.
#[async_trait]
pub trait StateLedger: Send + Sync + std::fmt::Debug {
    /// Marks `state` used at `now`: `Ok(())` the first time, [`StateError::Replayed`] after.
    async fn consume(&self, state: &Checked, now: i64) -> Result<(), StateError>;
}

/// A [`StateLedger`] in this process's memory.
#[derive(Debug, Default)]
pub struct LocalLedger {
    used: Mutex<HashMap<[u8; NONCE_BYTES], i64>>,
}

#[async_trait]
impl StateLedger for LocalLedger {
    async fn consume(&self, state: &Checked, now: i64) -> Result<(), StateError> {
        let mut used = self.used.lock().map_err(|_| StateError::Busy)?;
        if used.len() >= LEDGER_CAPACITY / 2 {
            used.retain(|_, exp| *exp > now);
        }
        if used.contains_key(&state.nonce) {
            return Err(StateError::Replayed);
        }
        if used.len() >= LEDGER_CAPACITY {
            return Err(StateError::Busy);
        }
        used.insert(state.nonce, state.expires_at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"a test key of at least thirty-two bytes";

    #[test]
    fn a_state_passes_once_before_it_expires() {
        let state = make(KEY, 1_000);
        let checked = check(KEY, Some(&state), 999).expect("valid");
        let ledger = LocalLedger::default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        assert_eq!(rt.block_on(ledger.consume(&checked, 999)), Ok(()));
        assert_eq!(
            rt.block_on(ledger.consume(&checked, 999)),
            Err(StateError::Replayed)
        );
        assert_eq!(check(KEY, Some(&state), 1_000), Err(StateError::Expired));
    }

    #[test]
    fn forged_and_malformed_states_are_refused() {
        let state = make(KEY, 1_000);
        let (payload, tag) = state.split_once('.').expect("two parts");
        // The same payload with a later expiry but the old MAC.
        let mut raw = URL_SAFE_NO_PAD.decode(payload).expect("b64");
        raw[NONCE_BYTES..].copy_from_slice(&5_000i64.to_be_bytes());
        let extended = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(&raw));
        let other_key = make(b"another key of at least thirty-two bytes", 1_000);
        let cases = [
            (None, StateError::Missing),
            (Some(""), StateError::Missing),
            (Some("abc"), StateError::Forged),
            (Some("a.b"), StateError::Forged),
            (Some("!!.??"), StateError::Forged),
            (Some(extended.as_str()), StateError::Forged),
            (Some(other_key.as_str()), StateError::Forged),
            (Some("<script>alert(1)</script>"), StateError::Forged),
        ];
        for (state, want) in cases {
            assert_eq!(check(KEY, state, 10), Err(want), "{state:?}");
        }
    }

    #[test]
    fn two_states_never_share_a_nonce() {
        let a = check(KEY, Some(&make(KEY, 100)), 1).expect("a");
        let b = check(KEY, Some(&make(KEY, 100)), 1).expect("b");
        assert_ne!(a.nonce, b.nonce);
    }
}
