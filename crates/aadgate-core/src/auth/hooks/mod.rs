//! Stage 8: validator hooks — HTTP callouts ([`webhook`]) and CEL expressions ([`cel`]) — and the
//! tenant hook.
//!
//! A [`Validator`] is compiled once per configuration load and shared (in an `Arc`) by every
//! route that names it and every worker thread. An HTTP validator owns its decision caches, so a
//! reload that keeps its settings keeps its cache ([`Validator::same_http_settings`]).

#[cfg(feature = "cel")]
pub mod cel;
pub mod webhook;

use std::collections::HashSet;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::claims::VerifiedToken;
use crate::metrics::Metrics;
use crate::reason::Rejection;

pub use crate::config::{HttpValidatorSettings, OnError};

/// The request facts a hook sees. Never the raw token.
#[derive(Debug)]
pub struct HookRequest<'a> {
    /// The route's name.
    pub route: &'a str,
    /// The request method, e.g. `GET`.
    pub method: &'a str,
    /// As received, before `strip_prefix`.
    pub path: &'a str,
    /// The normalized path routing used (SPEC section 8).
    pub normalized_path: &'a str,
    /// Lower case, without port.
    pub host: &'a str,
    /// The request headers as received (CEL's `request.headers`; never sent to HTTP hooks).
    pub headers: &'a HeaderMap,
    /// The verified token; HTTP hooks receive its claims.
    pub token: &'a VerifiedToken,
    /// SHA-256 of the token, for cache keys.
    pub token_hash: &'a [u8; 32],
}

#[derive(Debug)]
enum Kind {
    Http(webhook::HttpHook),
    #[cfg(feature = "cel")]
    Cel(cel::CelHook),
}

/// One configured validator.
#[derive(Debug)]
pub struct Validator {
    /// The name of its `[validators.NAME]` table; used in metrics, logs and messages.
    pub name: String,
    kind: Kind,
}

/// Values of `result` in `aadgate_validator_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Allow,
    Deny,
    Error,
    Cached,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
            Outcome::Cached => "cached",
        }
    }
}

/// Counts one validator decision.
pub(crate) fn count(metrics: &Metrics, validator: &str, outcome: Outcome) {
    metrics
        .validator_requests
        .with_label_values(&[validator, outcome.as_str()])
        .inc();
}

impl Validator {
    /// An HTTP validator. Its decision caches start empty; nothing is sent until a request
    /// needs it.
    pub fn http(name: &str, settings: HttpValidatorSettings) -> Self {
        Validator {
            name: name.to_string(),
            kind: Kind::Http(webhook::HttpHook::new(settings)),
        }
    }

    /// A CEL validator, compiled now. A syntax error is returned as the 1-based line and column
    /// within `expr` and a message; the loader turns it into a config error at that spot.
    /// Without the `cel` feature every expression is refused at line 1, column 1.
    #[cfg(feature = "cel")]
    pub fn cel(name: &str, expr: &str, message: String) -> Result<Self, (usize, usize, String)> {
        Ok(Validator {
            name: name.to_string(),
            kind: Kind::Cel(cel::CelHook::compile(expr, message)?),
        })
    }

    /// A CEL validator: this build has no CEL support, so the loader reports the validator as
    /// a config error.
    #[cfg(not(feature = "cel"))]
    pub fn cel(_name: &str, _expr: &str, _message: String) -> Result<Self, (usize, usize, String)> {
        Err((
            1,
            1,
            "this build has no CEL support (aadgate-core feature `cel`)".to_string(),
        ))
    }

    /// True when this is an HTTP validator with exactly these settings (its cache can be kept
    /// across a reload).
    pub fn same_http_settings(&self, settings: &HttpValidatorSettings) -> bool {
        matches!(&self.kind, Kind::Http(h) if h.settings() == settings)
    }

    /// Runs the validator for a request; on allow returns the headers to add upstream.
    ///
    /// Hook headers named `x-auth-*` (which covers the default claim headers) are dropped; use
    /// [`Validator::check_request_with`] to drop every configured claim header as well.
    /// Denies are `403 hook_denied`; a failing HTTP hook with `on_error = "deny"` is
    /// `503 hook_unavailable`.
    pub async fn check_request(
        &self,
        req: &HookRequest<'_>,
        metrics: &Metrics,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
        self.check_request_with(req, &HashSet::new(), metrics).await
    }

    /// Like [`Validator::check_request`], also dropping (with a warn log) hook headers named in
    /// `claim_headers` (`Config::claim_header_names`), so a hook cannot forge identity headers.
    pub async fn check_request_with(
        &self,
        req: &HookRequest<'_>,
        claim_headers: &HashSet<HeaderName>,
        metrics: &Metrics,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
        match &self.kind {
            Kind::Http(h) => {
                h.check_request(&self.name, req, claim_headers, metrics)
                    .await
            }
            #[cfg(feature = "cel")]
            Kind::Cel(c) => c
                .check_request(&self.name, req, metrics)
                .map(|()| Vec::new()),
        }
    }

    /// Asks the tenant hook whether tenant `tid` (issuer `issuer`) is trusted. A deny is
    /// `401 tenant_not_allowed`; a failure follows `on_error`. Only HTTP validators can be
    /// tenant hooks (the loader checks it); a CEL validator here evaluates with the tenant facts
    /// as `claims` (`tid`, `iss`).
    pub async fn check_tenant(
        &self,
        tid: &str,
        issuer: &str,
        metrics: &Metrics,
    ) -> Result<(), Rejection> {
        match &self.kind {
            Kind::Http(h) => h.check_tenant(&self.name, tid, issuer, metrics).await,
            #[cfg(feature = "cel")]
            Kind::Cel(c) => c.check_tenant(&self.name, tid, issuer, metrics),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn a_validator_can_be_shared_across_threads() {
        assert_send_sync::<Validator>();
    }

    #[test]
    fn same_http_settings_is_true_only_for_identical_http_settings() {
        let s = HttpValidatorSettings {
            url: "http://127.0.0.1:1/x".into(),
            timeout: Duration::from_millis(100),
            cache_ttl: Duration::from_secs(1),
            on_error: OnError::Deny,
            headers: vec![],
        };
        let v = Validator::http("v", s.clone());
        assert!(v.same_http_settings(&s));
        let other = HttpValidatorSettings {
            on_error: OnError::Allow,
            ..s.clone()
        };
        assert!(!v.same_http_settings(&other));
        #[cfg(feature = "cel")]
        {
            let c = Validator::cel("c", "true", "m".into()).expect("compiles");
            assert!(!c.same_http_settings(&s));
        }
    }
}
