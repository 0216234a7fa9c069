//! The knobs tests turn on a running emulator: signing keys (rotation, pre-publication,
//! removal), the metadata/keys outage switch, request counters (metadata, keys, token, admin
//! consent) and the token request log, the issued tokens' lifetime and forced token endpoint
//! failures.

use std::sync::atomic::Ordering;

use super::EmulatorHandle;
use crate::keys::SigningKey;
use crate::mint::TokenSpec;
use crate::serve::{lock, read, write};
use crate::state::TokenRequestRecord;
use crate::EmulatorError;

impl EmulatorHandle {
    /// Mints a token with the active key.
    pub fn mint(&self, spec: &TokenSpec) -> String {
        self.signing_key().mint(spec)
    }

    /// The active signing key.
    pub fn signing_key(&self) -> SigningKey {
        read(&self.state().keys)
            .first()
            .cloned()
            .unwrap_or_else(|| unreachable!("the emulator always has an active key"))
    }

    /// Every published key, active first.
    pub fn keys(&self) -> Vec<SigningKey> {
        read(&self.state().keys).clone()
    }

    /// Generates a new active key and publishes it; the previous keys stay published when
    /// `keep_old`, else only the new key is. Returns the new `kid`.
    pub fn rotate_key(&self, keep_old: bool) -> Result<String, EmulatorError> {
        let key = SigningKey::generate()?;
        Ok(self.rotate_to(key, keep_old))
    }

    /// Makes `key` the active key (see [`EmulatorHandle::rotate_key`]). Returns its `kid`.
    pub fn rotate_to(&self, key: SigningKey, keep_old: bool) -> String {
        let kid = key.kid().to_string();
        let mut keys = write(&self.state().keys);
        if keep_old {
            keys.retain(|k| k.kid() != kid);
            keys.insert(0, key);
        } else {
            *keys = vec![key];
        }
        kid
    }

    /// Publishes `key` after the active one without using it for signing (a key announced
    /// ahead of a rollover).
    pub fn publish_key(&self, key: SigningKey) {
        let mut keys = write(&self.state().keys);
        if !keys.iter().any(|k| k.kid() == key.kid()) {
            keys.push(key);
        }
    }

    /// Removes a published key that is not the active one. Returns whether one was removed.
    pub fn unpublish_key(&self, kid: &str) -> bool {
        let mut keys = write(&self.state().keys);
        let before = keys.len();
        let mut index = 0;
        keys.retain(|k| {
            let keep = index == 0 || k.kid() != kid;
            index += 1;
            keep
        });
        keys.len() != before
    }

    /// `false` makes the metadata and JWKS endpoints answer 503 (an AAD outage); `true` restores
    /// them. Requests are counted either way.
    pub fn set_keys_available(&self, available: bool) {
        self.state()
            .keys_available
            .store(available, Ordering::SeqCst);
    }

    /// Requests received by the JWKS endpoints (any tenant, any version, any answer).
    pub fn jwks_fetch_count(&self) -> u64 {
        self.state().jwks_fetches.load(Ordering::SeqCst)
    }

    /// Requests received by the metadata endpoints (any tenant, any version, any answer).
    pub fn metadata_fetch_count(&self) -> u64 {
        self.state().metadata_fetches.load(Ordering::SeqCst)
    }

    /// Requests received by the token endpoints (any answer).
    pub fn token_request_count(&self) -> u64 {
        self.state().token_requests.load(Ordering::SeqCst)
    }

    /// Requests received by the admin-consent endpoints: consent pages asked for and decisions
    /// posted (any answer, error pages included).
    pub fn consent_page_count(&self) -> u64 {
        self.state().consent_requests.load(Ordering::SeqCst)
    }

    /// Every token request so far, oldest first.
    pub fn token_requests(&self) -> Vec<TokenRequestRecord> {
        lock(&self.state().token_log).clone()
    }

    /// Sets the counters to zero and forgets the token and managed-identity request logs.
    pub fn reset_counts(&self) {
        let state = self.state();
        state.jwks_fetches.store(0, Ordering::SeqCst);
        state.metadata_fetches.store(0, Ordering::SeqCst);
        state.token_requests.store(0, Ordering::SeqCst);
        state.consent_requests.store(0, Ordering::SeqCst);
        state.imds_requests.store(0, Ordering::SeqCst);
        state.identity_endpoint_requests.store(0, Ordering::SeqCst);
        state.service_account_fetches.store(0, Ordering::SeqCst);
        state.federation_fetches.store(0, Ordering::SeqCst);
        lock(&state.token_log).clear();
        lock(&state.managed_identity_log).clear();
    }

    /// Lifetime (`expires_in`) of tokens issued from now on, in seconds.
    pub fn set_token_lifetime(&self, secs: i64) {
        self.state().token_lifetime.store(secs, Ordering::SeqCst);
    }

    /// `Some(status)` makes every token request fail with that HTTP status and an AAD-shaped
    /// error body (500 `server_error`/AADSTS50000, 503 `temporarily_unavailable`/AADSTS90006,
    /// 429 `temporarily_unavailable`/AADSTS90055, …); `None` restores normal service.
    pub fn set_token_endpoint_failure(&self, status: Option<u16>) {
        *lock(&self.state().token_failure) = status;
    }
}
