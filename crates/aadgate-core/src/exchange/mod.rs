//! App-only token exchange (SPEC section 5): for routes with `exchange = NAME`, the caller's
//! token is replaced by an app-only token of the caller's tenant, obtained with the
//! client-credentials grant and a client assertion: a certificate's, a federated token file's or
//! a managed identity's (`credentials`).
//!
//! The folder reads as the steps: [`assertion`] signs the client assertion, [`client`] makes the
//! token request and classifies AAD's answer, [`cache`] keeps tokens and failures per
//! (tenant, scope), [`rewrite`] holds what the proxy changes on the forwarded request.
//! [`Exchanger::token`] ties them together.

pub mod assertion;
pub mod cache;
pub mod client;
mod credentials;
pub mod rewrite;
mod shared;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::certs;
use crate::clock::{Clock, SystemClock};
pub use crate::config::{ExchangeSettings, ExchangeTarget};
use crate::metrics::Metrics;
use crate::reason::{Reason, Rejection};

use cache::{AppTokenCache, CacheKey, FailureKind, Slot};
use client::{Class, Failure, Issued, TokenClient};

pub use rewrite::{claims_challenge, exchange_headers, has_me_segment, rewrite_me, user_value};

/// After a fallback to a later credential, the configured order (the first credential first) is
/// tried again after this many seconds, so a brief outage of the preferred credential (a token
/// file being rewritten, a managed-identity endpoint restarting) does not pin the gateway to
/// its last resort until a restart.
pub const RETRY_PREFERRED_SECS: i64 = 600;

/// A token is served from the cache after a failed refresh only while it stays valid for at
/// least this many seconds.
pub const STALE_MARGIN_SECS: i64 = 60;

/// An app-only access token for one tenant. `Debug` redacts the token.
#[derive(Clone, PartialEq, Eq)]
pub struct AppToken {
    /// The bearer token to send upstream. Never log it.
    pub access_token: Arc<str>,
    /// Unix seconds (by the exchanger's clock) at which the token expires.
    pub expires_at: i64,
}

impl fmt::Debug for AppToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppToken")
            .field("access_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// One `[exchange.NAME]` entry at run time: settings, the HTTP client, the per-tenant token
/// cache and the index of the certificate that currently signs assertions.
pub struct Exchanger {
    settings: ExchangeSettings,
    client: TokenClient,
    cache: AppTokenCache,
    /// Index into `settings.credentials` of the credential tried first; moves when another
    /// one works (certificate rollover, fallback).
    signer: AtomicUsize,
    clock: Arc<dyn Clock>,
    /// The shared store (fleet mode): the second level of the token cache.
    store: Option<Arc<crate::store::SharedStore>>,
    /// When (Unix seconds) the credential tried first last moved off the first configured
    /// one: the configured order is tried again [`RETRY_PREFERRED_SECS`] later.
    moved_at: std::sync::atomic::AtomicI64,
    /// Managed-identity tokens and the HTTP client that gets them.
    credential_state: credentials::CredentialState,
    /// `aadgate_exchange_credential_total`, once [`Exchanger::with_metrics`] set it.
    credential_counter: Option<prometheus::IntCounterVec>,
    /// Claims challenges (CAE) by tenant: the next token request of that tenant carries them.
    challenges: std::sync::Mutex<std::collections::HashMap<String, serde_json::Value>>,
}

impl fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchanger")
            .field("name", &self.settings.name)
            .field("signer", &self.signer.load(Ordering::Relaxed))
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl Exchanger {
    /// An exchanger with an empty cache, on the system clock.
    pub fn new(settings: ExchangeSettings) -> Self {
        Self::with_clock(settings, Arc::new(SystemClock))
    }

    /// An exchanger whose cache judges freshness and failure windows by `clock` (tests move
    /// time with it). Client assertions always carry wall-clock times, since the token
    /// endpoint checks them against its own clock.
    pub fn with_clock(settings: ExchangeSettings, clock: Arc<dyn Clock>) -> Self {
        Exchanger {
            client: TokenClient::new(settings.timeout),
            cache: AppTokenCache::new(settings.max_tenants),
            signer: AtomicUsize::new(0),
            moved_at: std::sync::atomic::AtomicI64::new(0),
            clock,
            credential_state: credentials::CredentialState::new(settings.timeout),
            settings,
            store: None,
            credential_counter: None,
            challenges: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Counts each credential tried in `metrics`' `aadgate_exchange_credential_total`.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.credential_counter = Some(metrics.exchange_credential.clone());
        self
    }

    /// With a shared store: tokens, failures and purges are shared with the fleet (see
    /// `exchange::shared`).
    pub fn with_store(mut self, store: Option<Arc<crate::store::SharedStore>>) -> Self {
        self.store = store;
        self
    }

    /// The shared store it uses, if any.
    pub fn store(&self) -> Option<&Arc<crate::store::SharedStore>> {
        self.store.as_ref()
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &ExchangeSettings {
        &self.settings
    }

    /// The certificate that signs the next client assertion (the first configured one until a
    /// rollover); `None` when the credential tried first is not a certificate.
    pub fn signing_certificate(&self) -> Option<&certs::LoadedCertificate> {
        match self
            .settings
            .credentials
            .get(self.signer.load(Ordering::Relaxed))
        {
            Some(crate::config::Credential::Certificate(i)) => self.settings.certificates.get(*i),
            _ => None,
        }
    }

    /// The `kind` of the credential tried first (`certificate`, `federated`,
    /// `managed_identity`).
    pub fn current_credential_kind(&self) -> Option<&'static str> {
        self.settings
            .credentials
            .get(self.signer.load(Ordering::Relaxed))
            .map(|c| c.kind())
    }

    fn count_credential(&self, kind: &str, result: &str) {
        if let Some(c) = &self.credential_counter {
            c.with_label_values(&[self.settings.name.as_str(), kind, result])
                .inc();
        }
    }

    /// The `claims` parameter of the next token request for `tenant`: the `xms_cc` client
    /// capabilities merged with a claims challenge the upstream raised for the tenant (CAE).
    fn claims_parameter(&self, tenant: &str) -> Option<String> {
        let mut access = serde_json::Map::new();
        if let Some(challenge) = self
            .challenges
            .lock()
            .ok()
            .and_then(|c| c.get(tenant).cloned())
        {
            if let Some(serde_json::Value::Object(m)) = challenge.get("access_token") {
                access.extend(m.clone());
            }
        }
        if !self.settings.client_capabilities.is_empty() {
            access.insert(
                "xms_cc".to_string(),
                serde_json::json!({ "values": self.settings.client_capabilities }),
            );
        }
        (!access.is_empty()).then(|| serde_json::json!({ "access_token": access }).to_string())
    }

    /// A claims challenge from the upstream (`WWW-Authenticate: … error="insufficient_claims",
    /// claims="<base64>"`, SPEC section 12): the tenant's token is dropped at once whatever
    /// `purge_interval` says, and its next token request carries the challenge's claims.
    /// Returns false when the challenge cannot be read (then nothing changes).
    pub fn claims_challenge(
        &self,
        tid: &str,
        access_token: &str,
        claims: &serde_json::Value,
    ) -> bool {
        if !claims
            .get("access_token")
            .is_some_and(serde_json::Value::is_object)
        {
            return false;
        }
        let tenant = tid.to_ascii_lowercase();
        if let Ok(mut c) = self.challenges.lock() {
            c.insert(tenant.clone(), claims.clone());
        }
        if let Some(store) = &self.store {
            self.purge_shared(store.clone(), &tenant, access_token);
        }
        let key = CacheKey::new(&tenant, &self.settings.target);
        self.cache.forget(&key);
        tracing::info!(
            exchange = %self.settings.name,
            tenant = %tenant,
            "claims challenge from the upstream (continuous access evaluation): the app-only token is dropped and the next one is requested with the challenge's claims"
        );
        true
    }

    /// An app-only token for tenant `tid`, from the cache while it is fresh, else from the
    /// tenant's token endpoint (one request however many callers miss at once).
    ///
    /// Errors: `403 tenant_not_consented` when the app is not consented/installed in the
    /// tenant; `503 exchange_unavailable` (with `Retry-After`) for anything else. A failure is
    /// answered again, without a request, for `failure_cache`. Counts one
    /// `aadgate_exchange_requests_total` per call: `ok` (fetched), `cached`, `not_consented`
    /// or `error`; a cached failure counts as its original result.
    pub async fn token(&self, tid: &str, metrics: &Metrics) -> Result<AppToken, Rejection> {
        let count = |result: &str| {
            metrics
                .exchange_requests
                .with_label_values(&[self.settings.name.as_str(), result])
                .inc();
        };
        let tenant = tid.to_ascii_lowercase();
        if !crate::config::is_guid(&tenant) {
            count(FailureKind::Unavailable.metric_result());
            return Err(Rejection::new(
                Reason::ExchangeUnavailable,
                format!(
                    "no app-only token for tenant {:?}: it is not a tenant GUID (tokens are requested from the caller's own tenant, never from common, organizations or consumers)",
                    tid.chars().take(64).collect::<String>()
                ),
            )
            .retry_after(self.settings.failure_cache.max(Duration::from_secs(1))));
        }
        let key = CacheKey::new(&tenant, &self.settings.target);
        let mut served_stale = false;
        let (slot, fetched) = self
            .cache
            .get_or_fetch(
                &key,
                || self.clock.now(),
                |previous| self.fetch(&tenant, previous, &mut served_stale),
            )
            .await;
        count(if served_stale {
            "cached"
        } else {
            slot.metric_result(fetched)
        });
        slot.answer(self.clock.now())
    }

    /// A token for `tid` from a new token request, whatever the cache holds: proof that the
    /// application is consented in the tenant now (the sign-up callback). The answer replaces
    /// the cache entry, as [`Exchanger::token`]'s would.
    /// Neither cache level answers it: a token cached before the tenant withdrew consent must
    /// not pass for consent now.
    pub async fn verify(&self, tid: &str, metrics: &Metrics) -> Result<AppToken, Rejection> {
        let tenant = tid.to_ascii_lowercase();
        if !crate::config::is_guid(&tenant) {
            return self.token(tid, metrics).await;
        }
        let key = CacheKey::new(&tenant, &self.settings.target);
        let mut stale = false;
        let slot = self.fetch_here(&tenant, None, &mut stale).await;
        metrics
            .exchange_requests
            .with_label_values(&[self.settings.name.as_str(), slot.metric_result(true)])
            .inc();
        if let Some(store) = &self.store {
            self.share(store, &tenant, &slot).await;
        }
        let answer = slot.answer(self.clock.now());
        self.cache.put(key, slot);
        answer
    }

    /// Forgets a failure cached for `tid` that happened at or before `since` (Unix seconds):
    /// a tenant consented again (registry `active` since then) gets a new token request at
    /// once instead of the old "not consented" for the rest of `failure_cache`.
    pub fn forget_failure_before(&self, tid: &str, since: i64) {
        let key = CacheKey::new(&tid.to_ascii_lowercase(), &self.settings.target);
        if let Some(slot) = self.cache.current(&key) {
            if matches!(*slot, Slot::Failed { failed_at, .. } if failed_at <= since) {
                self.cache.forget(&key);
            }
        }
    }

    /// Drops `access_token` from `tid`'s cache entry after the upstream answered 401 to it
    /// (whether the token was cached or fetched for that request), so the next request fetches
    /// a new token — unless a purge for the same (tenant, scope) happened less than
    /// `purge_interval` ago: then the token stays and this returns false. A newer token in the
    /// entry also stays. Returns whether the token was dropped.
    pub fn purge(&self, tid: &str, access_token: &str) -> bool {
        if let Some(store) = &self.store {
            self.purge_shared(store.clone(), &tid.to_ascii_lowercase(), access_token);
        }
        let key = CacheKey::new(tid, &self.settings.target);
        let dropped = self.cache.purge(
            &key,
            access_token,
            self.clock.now(),
            self.settings.purge_interval,
        );
        if !dropped {
            tracing::debug!(
                exchange = %self.settings.name,
                tenant = tid,
                "upstream 401: the app-only token is kept (purged less than purge_interval ago, or already replaced)"
            );
        }
        dropped
    }

    /// The new cache entry for `tenant`: through the shared store when there is one (its
    /// entry, or one token request for the fleet), else from here.
    async fn fetch(
        &self,
        tenant: &str,
        previous: Option<Arc<Slot>>,
        from_cache: &mut bool,
    ) -> Slot {
        if let Some(store) = &self.store {
            let shared = self
                .fetch_shared(store, tenant, previous.clone(), from_cache)
                .await;
            if let Some(slot) = shared {
                return slot;
            }
        }
        self.fetch_here(tenant, previous, from_cache).await
    }

    /// The new cache entry for `tenant` from its token endpoint: a token, a failure, or — when
    /// the endpoint is unavailable but the previous token is still valid for a while — that
    /// token again until the failure window ends.
    async fn fetch_here(
        &self,
        tenant: &str,
        previous: Option<Arc<Slot>>,
        served_stale: &mut bool,
    ) -> Slot {
        let now = self.clock.now();
        let s = &self.settings;
        let (rejection, kind) = match self.request_token(tenant).await {
            Ok(issued) => {
                return Slot::token(
                    &issued.access_token,
                    now,
                    issued.expires_in,
                    s.refresh_before_expiry,
                )
            }
            Err(failure) => failure,
        };
        if kind == FailureKind::Unavailable {
            if let Some(Slot::Token { token, .. }) = previous.as_deref() {
                let last_use = token.expires_at - STALE_MARGIN_SECS;
                if last_use > now {
                    let until = cache::failed_until(now, s.failure_cache).min(last_use);
                    tracing::warn!(
                        exchange = %s.name,
                        tenant,
                        expires_at = token.expires_at,
                        "token refresh failed; serving the current app-only token for {}s more",
                        until - now
                    );
                    *served_stale = true;
                    return Slot::Token {
                        token: token.clone(),
                        obtained_at: now,
                        fresh_until: until,
                    };
                }
            }
        }
        Slot::failed(rejection, kind, now, s.failure_cache)
    }

    /// One token request for `tenant` with the credential tried first; when the endpoint
    /// rejects that credential (or its own source fails), once more with each other configured
    /// credential (in config order, starting after it). The one that works is tried first from
    /// then on. A "not consented" or "unavailable" answer ends the attempt: it is the tenant's
    /// or the endpoint's answer, not the credential's.
    async fn request_token(&self, tenant: &str) -> Result<Issued, (Rejection, FailureKind)> {
        let s = &self.settings;
        let endpoint = s.token_endpoint.replace("{tenantid}", tenant);
        let n = s.credentials.len();
        if n == 0 {
            tracing::warn!(exchange = %s.name, tenant, "no credential configured; cannot request an app-only token");
            return Err(self.unavailable(
                tenant,
                "the gateway has no credential to request it with".to_string(),
            ));
        }
        let current = self.signer.load(Ordering::Relaxed).min(n - 1);
        let now = self.clock.now();
        let first = if current != 0
            && now - self.moved_at.load(Ordering::Relaxed) >= RETRY_PREFERRED_SECS
        {
            0
        } else {
            current
        };
        let target = match &s.target {
            ExchangeTarget::Scope(v) => ("scope", v.as_str()),
            ExchangeTarget::Resource(v) => ("resource", v.as_str()),
        };
        let claims = self.claims_parameter(tenant);
        let mut refused = Vec::new();
        for step in 0..n {
            let index = (first + step) % n;
            let credential = &s.credentials[index];
            let kind = credential.kind();
            let assertion = match self.credential_state.assertion(s, index, &endpoint).await {
                Ok(a) => a,
                Err(why) => {
                    tracing::warn!(exchange = %s.name, tenant, credential = kind, error = %why, "credential unavailable; trying the next one");
                    self.count_credential(kind, "error");
                    refused.push(format!("{kind}: {why}"));
                    continue;
                }
            };
            let client_request_id = uuid::Uuid::new_v4().to_string();
            let mut form = vec![
                ("grant_type", "client_credentials"),
                ("client_id", s.client_id.as_str()),
                target,
                ("client_assertion_type", client::JWT_BEARER),
                ("client_assertion", assertion.expose()),
            ];
            if let Some(c) = &claims {
                form.push(("claims", c.as_str()));
            }
            let failure = match self
                .client
                .request(&endpoint, &form, &client_request_id)
                .await
            {
                Ok(issued) => {
                    self.count_credential(kind, "ok");
                    self.credential_worked(tenant, index, current, first, now, claims.is_some());
                    return Ok(issued);
                }
                Err(f) => f,
            };
            log_failure(
                &s.name,
                tenant,
                &client_request_id,
                &self.describe_credential(index),
                &failure,
            );
            match client::classify(&failure) {
                Class::CertificateRejected(code) => {
                    self.count_credential(kind, "rejected");
                    self.credential_state.forget(index);
                    refused.push(format!("{kind}: AADSTS{code}"));
                }
                Class::NotConsented(code) => {
                    self.count_credential(kind, "ok");
                    return Err(self.not_consented(tenant, code, &endpoint));
                }
                Class::Unavailable => return Err(self.unavailable(tenant, describe(&failure))),
            }
        }
        Err(self.unavailable(
            tenant,
            format!(
                "every credential of the gateway failed ({}); the application registration must accept one of them",
                refused.join("; ")
            ),
        ))
    }

    /// Bookkeeping after credential `index` got a token for `tenant`: a claims challenge is
    /// answered, and the credential tried first moves to `index` (logged), or back to the first
    /// configured one, or stays with the next retry of the configured order later.
    fn credential_worked(
        &self,
        tenant: &str,
        index: usize,
        current: usize,
        first: usize,
        now: i64,
        sent_claims: bool,
    ) {
        let s = &self.settings;
        if sent_claims {
            if let Ok(mut c) = self.challenges.lock() {
                c.remove(tenant);
            }
        }
        if first != current && index == current {
            // The configured order was tried again and the preferred credentials still
            // fail: the next try is another RETRY_PREFERRED_SECS away.
            self.moved_at.store(now, Ordering::Relaxed);
        }
        if index == current
            || self
                .signer
                .compare_exchange(current, index, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if index == 0 {
            tracing::info!(
                exchange = %s.name,
                tenant,
                credential = %self.describe_credential(0),
                "the first configured credential works again and is tried first from now on"
            );
            return;
        }
        self.moved_at.store(now, Ordering::Relaxed);
        tracing::warn!(
            exchange = %s.name,
            tenant,
            credential = %self.describe_credential(index),
            previous = %self.describe_credential(current),
            "credential fallback: the credential tried first failed; this one is tried first, and the configured order again in 10 minutes"
        );
    }

    /// A credential as logs name it: the certificate's file and thumbprint, the token file, or
    /// the managed identity.
    fn describe_credential(&self, index: usize) -> String {
        use crate::config::Credential;
        match self.settings.credentials.get(index) {
            Some(Credential::Certificate(i)) => match self.settings.certificates.get(*i) {
                Some(c) => format!("certificate {} (x5t {})", c.cert_path.display(), c.x5t),
                None => "certificate".to_string(),
            },
            Some(Credential::FederatedTokenFile(p)) => {
                format!("federated token file {}", p.display())
            }
            Some(Credential::ManagedIdentity { client_id, .. }) => format!(
                "managed identity {}",
                client_id.as_deref().unwrap_or("(system-assigned)")
            ),
            None => "-".to_string(),
        }
    }

    fn not_consented(&self, tenant: &str, code: u32, endpoint: &str) -> (Rejection, FailureKind) {
        let c = &self.settings.client_id;
        let mut message = format!("an administrator of tenant {tenant} must grant admin consent to application {c} (AADSTS{code})");
        if let Some(origin) = reqwest::Url::parse(endpoint)
            .ok()
            .map(|u| u.origin().ascii_serialization())
        {
            message.push_str(&format!(
                "; admin consent URL: {origin}/{tenant}/adminconsent?client_id={c}"
            ));
        }
        if code == 700_016 {
            message.push_str(&format!(
                "; AADSTS700016 can also mean that no application {c} exists, i.e. the gateway's client_id in [exchange.{}] is wrong",
                self.settings.name
            ));
        }
        (
            Rejection::new(Reason::TenantNotConsented, message),
            FailureKind::NotConsented,
        )
    }

    fn unavailable(&self, tenant: &str, why: String) -> (Rejection, FailureKind) {
        (
            Rejection::new(
                Reason::ExchangeUnavailable,
                format!("no app-only token for tenant {tenant}: {why}"),
            ),
            FailureKind::Unavailable,
        )
    }
}

/// The caller-facing text of a failure: no token, assertion, trace id or AAD prose.
fn describe(failure: &Failure) -> String {
    match failure {
        Failure::Transport(detail) => format!("the token endpoint could not be reached ({detail})"),
        Failure::Aad { status, body } => {
            let codes: Vec<String> = body.codes().iter().map(|c| format!("AADSTS{c}")).collect();
            format!(
                "the token endpoint answered HTTP {status} {} {}",
                body.error,
                codes.join(", ")
            )
            .trim_end()
            .to_string()
        }
        Failure::BadResponse { status, detail } => {
            format!("the token endpoint answered HTTP {status} with {detail}")
        }
    }
}

/// The warn-level record of a failed token request: AADSTS codes, AAD's trace and correlation
/// ids, tenant and exchange name. Never the assertion or a token.
fn log_failure(
    exchange: &str,
    tenant: &str,
    client_request_id: &str,
    credential: &str,
    failure: &Failure,
) {
    match failure {
        Failure::Aad { status, body } => {
            let codes: Vec<String> = body.codes().iter().map(u32::to_string).collect();
            tracing::warn!(
                exchange,
                tenant,
                status,
                error = %body.error,
                aadsts = %codes.join(","),
                trace_id = body.trace_id.as_deref().unwrap_or("-"),
                correlation_id = body.correlation_id.as_deref().unwrap_or("-"),
                client_request_id,
                credential,
                description = %body.summary(),
                "token endpoint refused the app-only token request"
            );
        }
        Failure::Transport(detail) => {
            tracing::warn!(exchange, tenant, client_request_id, error = %detail, "token endpoint unreachable");
        }
        Failure::BadResponse { status, detail } => {
            tracing::warn!(exchange, tenant, status, client_request_id, error = %detail, "unexpected token endpoint answer");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(certificates: Vec<certs::LoadedCertificate>) -> ExchangeSettings {
        ExchangeSettings {
            name: "outlook".into(),
            client_id: "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c".into(),
            token_endpoint: "http://127.0.0.1:9/{tenantid}/oauth2/v2.0/token".into(),
            target: ExchangeTarget::Scope("https://outlook.office365.com/.default".into()),
            credentials: (0..certificates.len())
                .map(crate::config::Credential::Certificate)
                .collect(),
            certificates,
            send_x5c: false,
            client_capabilities: Vec::new(),
            federated_audience: "api://AzureADTokenExchange".into(),
            timeout: Duration::from_secs(1),
            refresh_before_expiry: Duration::from_secs(300),
            failure_cache: Duration::from_secs(30),
            purge_interval: Duration::from_secs(30),
            max_tenants: 10,
            rewrite_me: false,
            user_claim: "oid".into(),
        }
    }

    #[tokio::test]
    async fn common_organizations_and_non_guid_tenants_are_refused_without_a_request() {
        let x = Exchanger::new(settings(Vec::new()));
        let m = Metrics::new();
        for tid in ["common", "organizations", "consumers", "", "../x"] {
            let err = x.token(tid, &m).await.expect_err(tid);
            assert_eq!(err.reason, Reason::ExchangeUnavailable, "{tid}");
            assert!(err.retry_after.is_some());
        }
        assert_eq!(
            m.exchange_requests
                .with_label_values(&["outlook", "error"])
                .get(),
            5
        );
    }

    #[test]
    fn not_consented_messages_name_tenant_and_app_and_700016_suspects_the_client_id() {
        let x = Exchanger::new(settings(Vec::new()));
        let t = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let (r, kind) = x.not_consented(t, 65_001, "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token");
        assert_eq!(
            (r.reason, kind),
            (Reason::TenantNotConsented, FailureKind::NotConsented)
        );
        assert!(
            r.message.contains(t)
                && r.message.contains("3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c")
                && r.message.contains("AADSTS65001")
        );
        assert!(r.message.contains("https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/adminconsent?client_id="));
        assert!(!r.message.contains("client_id in"));
        let (r, _) = x.not_consented(
            t,
            700_016,
            "https://login.microsoftonline.com/x/oauth2/v2.0/token",
        );
        assert!(r
            .message
            .contains("client_id in [exchange.outlook] is wrong"));
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_unavailable_and_cached_for_failure_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = assertion::tests::test_certificate(dir.path(), "a");
        let clock = Arc::new(crate::auth::FixedClock(1_000_000));
        let x = Exchanger::with_clock(settings(vec![cert]), clock);
        let m = Metrics::new();
        let t = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let err = x.token(t, &m).await.expect_err("port 9 refuses");
        assert_eq!(err.reason, Reason::ExchangeUnavailable);
        assert_eq!(err.retry_after, Some(Duration::from_secs(30)));
        let again = x.token(t, &m).await.expect_err("cached failure");
        assert_eq!(again.message, err.message);
        assert_eq!(
            m.exchange_requests
                .with_label_values(&["outlook", "error"])
                .get(),
            2
        );
    }

    #[test]
    fn debug_of_a_token_is_redacted() {
        let t = AppToken {
            access_token: Arc::from("eyJ.secret.sig"),
            expires_at: 5,
        };
        assert!(!format!("{t:?}").contains("secret"));
    }
}
