//! Stage 8: validator hooks — HTTP callouts and CEL expressions — and the tenant hook.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::claims::VerifiedToken;
use super::error::{Reason, Rejection};
use crate::metrics::Metrics;

/// What a failing (erroring, timing out) HTTP hook means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Fail closed: `503 hook_unavailable`.
    Deny,
    /// Fail open: proceed, log at warn.
    Allow,
}

/// `[validators.NAME]` with `kind = "http"`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpValidatorSettings {
    pub url: String,
    pub timeout: Duration,
    pub cache_ttl: Duration,
    pub on_error: OnError,
}

/// The request facts a hook sees. Never the raw token.
#[derive(Debug)]
pub struct HookRequest<'a> {
    pub route: &'a str,
    pub method: &'a str,
    /// As received, before `strip_prefix`.
    pub path: &'a str,
    /// Lower case, without port.
    pub host: &'a str,
    pub headers: &'a HeaderMap,
    pub token: &'a VerifiedToken,
    /// SHA-256 of the token, for cache keys.
    pub token_hash: &'a [u8; 32],
}

#[derive(Debug)]
enum Kind {
    Http(HttpValidatorSettings),
    Cel { source: String, message: String },
}

/// One configured validator.
#[derive(Debug)]
pub struct Validator {
    pub name: String,
    kind: Kind,
}

impl Validator {
    /// An HTTP validator.
    pub fn http(name: &str, settings: HttpValidatorSettings) -> Self {
        Validator {
            name: name.to_string(),
            kind: Kind::Http(settings),
        }
    }

    /// A CEL validator, compiled now. Errors carry the 1-based line and column within `expr`.
    pub fn cel(name: &str, expr: &str, message: String) -> Result<Self, (usize, usize, String)> {
        Ok(Validator {
            name: name.to_string(),
            kind: Kind::Cel {
                source: expr.to_string(),
                message,
            },
        })
    }

    /// True when this is an HTTP validator with exactly these settings (its cache can be kept
    /// across a reload).
    pub fn same_http_settings(&self, settings: &HttpValidatorSettings) -> bool {
        matches!(&self.kind, Kind::Http(s) if s == settings)
    }

    /// Runs the validator for a request; on allow returns the headers to add upstream.
    pub async fn check_request(
        &self,
        req: &HookRequest<'_>,
        metrics: &Metrics,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
        let _ = (req, metrics, &self.kind);
        Err(Rejection::new(Reason::HookUnavailable, format!("validator {} is not available in this build", self.name)))
    }

    /// Asks the tenant hook whether tenant `tid` (issuer `issuer`) is trusted.
    pub async fn check_tenant(&self, tid: &str, issuer: &str, metrics: &Metrics) -> Result<(), Rejection> {
        let _ = (tid, issuer, metrics);
        Err(Rejection::new(Reason::HookUnavailable, format!("validator {} is not available in this build", self.name)))
    }
}
