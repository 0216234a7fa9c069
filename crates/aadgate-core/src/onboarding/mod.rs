//! "Sign up my organization" (SPEC section 9): the two paths the gateway serves under
//! `[onboarding] path_prefix`, before any route.
//!
//! - `GET {prefix}start` answers `302` to Entra ID's admin-consent endpoint
//!   (`{authority}/organizations/v2.0/adminconsent`) with `client_id`, `redirect_uri`, `scope`
//!   and a signed, expiring, single-use `state` ([`state`]).
//! - `GET {prefix}callback` is where Entra ID sends the administrator back. The `state` is
//!   checked first (missing, forged, expired or replayed: `400 bad_request`). Then:
//!   `error=…` (cancelled, or not an administrator) records nothing; `admin_consent=True` with
//!   `tenant=<GUID>` is **not trusted as such** — Entra ID does not sign these parameters, and
//!   anyone can type a callback URL. The gateway proves the consent by asking that tenant's
//!   token endpoint for an app-only token with `verify_exchange`: a token means the application
//!   has a service principal there, so the tenant is recorded `active`; "not consented" records
//!   nothing. Without `verify_exchange` the tenant is recorded `pending`, for an operator to
//!   approve.
//!
//! Answers are [`page::Page`]s: redirects built from the configuration only, or small escaped
//! HTML pages (no script). Each callback counts one `aadgate_onboarding_total{result}`.

mod ledger;
pub mod page;
pub mod state;

use std::collections::HashSet;
use std::sync::Arc;

use http::Method;

pub use ledger::RedisLedger;
pub use page::Page;
pub use state::{LocalLedger, StateError, StateLedger};

use crate::config::{is_guid, OnboardingSettings};
use crate::exchange::Exchanger;
use crate::metrics::Metrics;
use crate::reason::{Reason, Rejection};
use crate::registry::{AddedBy, Change, Registry, RegistryError, TenantState};

/// Longest `error_description` shown on a page, in characters.
const MAX_DESCRIPTION_CHARS: usize = 500;
/// Most tenants waiting as `pending`: without `verify_exchange` anyone can send a callback, so
/// the registry does not grow without bound; beyond it, new sign-ups get `503`.
pub const MAX_PENDING: usize = 1000;

/// Whether an app-only token's `roles` claim names at least one application permission: admin
/// consent grants them; a service principal made by a user's consent has none. The token
/// comes straight from the tenant's token endpoint, so its payload is read without verifying
/// the signature (the gateway is not its audience).
pub fn grants_roles(token: &str) -> bool {
    use base64::Engine;
    let Some(payload) = token.split('.').nth(1) else {
        return false;
    };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else {
        return false;
    };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return false;
    };
    claims["roles"]
        .as_array()
        .is_some_and(|r| r.iter().any(|v| v.as_str().is_some_and(|s| !s.is_empty())))
}

/// The sign-up paths of one configuration; the `state` ledger outlives reloads.
#[derive(Debug)]
pub struct Onboarding {
    settings: OnboardingSettings,
    ledger: Arc<dyn StateLedger>,
}

/// What a callback needs from the running gateway.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// `[tenants] deny`.
    pub deny: &'a HashSet<String>,
    /// The registry sign-ups are recorded in.
    pub registry: Option<&'a Registry>,
    /// The `verify_exchange` exchanger, when configured.
    pub verify: Option<&'a Exchanger>,
    /// Where `aadgate_onboarding_total` is counted.
    pub metrics: &'a Metrics,
    /// Now, in Unix seconds.
    pub now: i64,
    /// The request id, shown on error pages.
    pub request_id: &'a str,
}

/// How a callback ended: the `aadgate_onboarding_total` result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Consent proven, tenant `active`.
    Ok,
    /// Recorded `pending`.
    Pending,
    /// Cancelled, not an administrator, or a denied tenant: nothing recorded.
    Denied,
    /// The token endpoint says there is no consent: nothing recorded.
    NotConsented,
    /// Missing, forged, expired or replayed `state`.
    BadState,
    /// Anything else (malformed callback, token endpoint or registry unavailable).
    Error,
}

impl Outcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Pending => "pending",
            Outcome::Denied => "denied",
            Outcome::NotConsented => "not_consented",
            Outcome::BadState => "bad_state",
            Outcome::Error => "error",
        }
    }
}

impl Onboarding {
    /// The sign-up paths for `settings`, remembering used states in `ledger`.
    pub fn new(settings: OnboardingSettings, ledger: Arc<dyn StateLedger>) -> Self {
        Onboarding { settings, ledger }
    }

    /// Its settings.
    pub fn settings(&self) -> &OnboardingSettings {
        &self.settings
    }

    /// Whether `path` (as received, without the query) is under `path_prefix`.
    pub fn owns(&self, path: &str) -> bool {
        path.starts_with(self.settings.path_prefix.as_str())
    }

    /// The full path of `start`.
    pub fn start_path(&self) -> String {
        format!("{}start", self.settings.path_prefix)
    }

    /// Answers a request under `path_prefix`: `start`, `callback`, or a `404` page.
    pub async fn handle(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        cx: Context<'_>,
    ) -> Page {
        let rest = &path[self.settings.path_prefix.len().min(path.len())..];
        let known = matches!(rest, "start" | "callback");
        if !known {
            let r = Rejection::new(
                Reason::RouteNotFound,
                format!(
                    "no sign-up page at {path:?}; the sign-up starts at {}",
                    self.start_path()
                ),
            );
            return page::error(&r, cx.request_id);
        }
        // HEAD only for `start`: a callback uses up its state and records a tenant.
        let allowed = method == Method::GET || (method == Method::HEAD && rest == "start");
        if !allowed {
            let r = Rejection::new(
                Reason::BadRequest,
                format!("the sign-up pages answer GET, not {method}"),
            );
            return page::error(&r, cx.request_id);
        }
        if rest == "start" {
            return self.start(cx.now);
        }
        let (outcome, page) = self.callback(query.unwrap_or(""), cx).await;
        cx.metrics
            .onboarding
            .with_label_values(&[outcome.as_str()])
            .inc();
        page
    }

    /// `302` to the admin-consent endpoint, with a fresh `state`.
    pub fn start(&self, now: i64) -> Page {
        let s = &self.settings;
        let ttl = i64::try_from(s.state_ttl.as_secs()).unwrap_or(i64::MAX);
        let state = state::make(&s.state_key, now.saturating_add(ttl));
        let location = format!(
            "{}/organizations/v2.0/adminconsent?client_id={}&redirect_uri={}&scope={}&state={}",
            s.authority,
            encode(&s.client_id),
            encode(&s.redirect_uri),
            encode(&s.scope),
            encode(&state)
        );
        page::redirect(&location)
    }

    async fn callback(&self, query: &str, cx: Context<'_>) -> (Outcome, Page) {
        let refuse = |outcome, reason, message: String| {
            (
                outcome,
                page::error(&Rejection::new(reason, message), cx.request_id),
            )
        };
        let params = match Params::parse(query) {
            Ok(p) => p,
            Err(message) => return refuse(Outcome::BadState, Reason::BadRequest, message),
        };
        let checked = state::check(&self.settings.state_key, params.state.as_deref(), cx.now)
            .map_err(|e| e.to_string());
        let checked = match checked {
            Ok(c) => c,
            Err(message) => return refuse(Outcome::BadState, Reason::BadRequest, message),
        };
        if let Err(e) = self.ledger.consume(&checked, cx.now).await {
            return refuse(Outcome::BadState, Reason::BadRequest, e.to_string());
        }
        if let Some(error) = &params.error {
            let description = params.error_description.as_deref().unwrap_or("");
            let description: String = description.chars().take(MAX_DESCRIPTION_CHARS).collect();
            let message = format!(
                "Consent was not granted, so nothing was recorded. Entra ID said: {error}{}{description}",
                if description.is_empty() { "" } else { ": " }
            );
            return refuse(Outcome::Denied, Reason::TenantNotConsented, message);
        }
        let consented = params
            .admin_consent
            .as_deref()
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let tid = match (consented, params.tenant.as_deref()) {
            (true, Some(t)) if is_guid(t) => t.to_ascii_lowercase(),
            (true, Some(t)) => {
                let shown: String = t.chars().take(64).collect();
                return refuse(
                    Outcome::Error,
                    Reason::BadRequest,
                    format!("the tenant {shown:?} in the callback is not a tenant id (GUID)"),
                );
            }
            _ => {
                return refuse(
                    Outcome::Error,
                    Reason::BadRequest,
                    "the callback has neither admin_consent=True with a tenant nor an error"
                        .to_string(),
                );
            }
        };
        if cx.deny.contains(&tid) {
            return refuse(
                Outcome::Denied,
                Reason::TenantDenied,
                format!("tenant {tid} is denied by this gateway; nothing was recorded"),
            );
        }
        self.record(&tid, cx).await
    }

    /// Proves the consent of `tid` (with `verify_exchange`) and records it.
    async fn record(&self, tid: &str, cx: Context<'_>) -> (Outcome, Page) {
        let refuse = |outcome, r: Rejection| (outcome, page::error(&r, cx.request_id));
        let (state, outcome, reason) = match cx.verify {
            Some(exchanger) => match exchanger.verify(tid, cx.metrics).await {
                Ok(token) if !grants_roles(&token.access_token) => {
                    let message = format!("The application has a service principal in tenant {tid}, but its app-only token carries no application permission: an administrator has not granted admin consent (a user's consent creates the service principal without granting application permissions). Nothing was recorded; an administrator of the tenant can start the sign-up again and accept.");
                    return refuse(
                        Outcome::NotConsented,
                        Rejection::new(Reason::TenantNotConsented, message),
                    );
                }
                Ok(_) => (
                    TenantState::Active,
                    Outcome::Ok,
                    "admin consent, proven by an app-only token request",
                ),
                Err(r) if r.reason == Reason::TenantNotConsented => {
                    let message = format!("Entra ID reports that the application is not consented in tenant {tid}, so nothing was recorded. An administrator of the tenant can start the sign-up again and accept. ({})", r.message);
                    return refuse(
                        Outcome::NotConsented,
                        Rejection::new(Reason::TenantNotConsented, message),
                    );
                }
                Err(r) => {
                    let message = format!("The consent of tenant {tid} could not be confirmed with Entra ID right now, so nothing was recorded; start the sign-up again in a few minutes. ({})", r.message);
                    let mut out = Rejection::new(Reason::ExchangeUnavailable, message);
                    out.retry_after = r.retry_after;
                    return refuse(Outcome::Error, out);
                }
            },
            None => (
                TenantState::Pending,
                Outcome::Pending,
                "admin consent, waiting for approval",
            ),
        };
        let Some(registry) = cx.registry else {
            return refuse(
                Outcome::Error,
                Rejection::new(
                    Reason::RegistryUnavailable,
                    "this gateway has no tenant registry; nothing was recorded",
                ),
            );
        };
        let pending = (registry.snapshot().tenants())
            .filter(|r| r.state == TenantState::Pending)
            .count();
        if state == TenantState::Pending && pending >= MAX_PENDING && registry.state(tid).is_none()
        {
            let message = format!("{pending} sign-ups already wait for approval; nothing was recorded. The API's operators need to approve or remove them first (`aadgate tenants list`).");
            return refuse(
                Outcome::Error,
                Rejection::new(Reason::RegistryUnavailable, message),
            );
        }
        let change = Change::Record {
            tenant: tid.to_string(),
            state,
            by: AddedBy::Onboarding,
            reason: reason.to_string(),
        };
        match registry.apply(&change).await {
            Ok(_) => {}
            Err(RegistryError::Unavailable(e)) => {
                tracing::error!(tenant = tid, error = %e, "sign-up could not be recorded");
                let message = format!("The sign-up of tenant {tid} could not be recorded (the tenant registry cannot be written); nothing was recorded. Start the sign-up again later.");
                return refuse(
                    Outcome::Error,
                    Rejection::new(Reason::RegistryUnavailable, message),
                );
            }
            Err(e) => {
                return refuse(
                    Outcome::Error,
                    Rejection::new(Reason::BadRequest, e.to_string()),
                )
            }
        }
        // The registry keeps an active tenant active: report what it holds now.
        let now_state = registry.state(tid).unwrap_or(state);
        tracing::info!(tenant = tid, state = %now_state, "tenant signed up");
        match (now_state, &self.settings.success_url) {
            (TenantState::Active, Some(url)) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                (Outcome::Ok, page::redirect(&format!("{url}{sep}tenant={tid}")))
            }
            (TenantState::Active, None) => (Outcome::Ok, page::info(
                "Your organization is signed up",
                &[&format!("Tenant {tid} can now use the API: its users and applications are accepted with their own tokens."), "You can close this page."],
            )),
            _ => (outcome, page::info(
                "Sign-up received",
                &[&format!("Tenant {tid} is registered and waits for approval by the API's operators."), "You can close this page."],
            )),
        }
    }
}

/// The callback's parameters.
#[derive(Debug, Default)]
struct Params {
    state: Option<String>,
    admin_consent: Option<String>,
    tenant: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Params {
    /// Reads a query string; a parameter of interest given twice is an error.
    fn parse(query: &str) -> Result<Params, String> {
        let mut p = Params::default();
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "state" => &mut p.state,
                "admin_consent" => &mut p.admin_consent,
                "tenant" => &mut p.tenant,
                "error" => &mut p.error,
                "error_description" => &mut p.error_description,
                _ => continue,
            };
            if slot.is_some() {
                return Err(format!("the callback has the parameter {name:?} twice"));
            }
            *slot = Some(decode(value));
        }
        Ok(p)
    }
}

/// `application/x-www-form-urlencoded` value decoding (`+` is a space); invalid UTF-8 becomes
/// U+FFFD.
fn decode(value: &str) -> String {
    let spaced = value.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, SET).to_string()
}

#[cfg(test)]
mod tests;
