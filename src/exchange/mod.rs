//! App-only token exchange (SPEC section 5): for routes with `exchange = NAME`, the caller's
//! token is replaced by an app-only token of the caller's tenant, obtained with the
//! client-credentials grant and an X.509 certificate assertion.

pub mod certs;

use std::time::Duration;

use crate::auth::{Reason, Rejection};
use crate::metrics::Metrics;

/// What the token is requested for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeTarget {
    /// v2 endpoint: `scope`, e.g. `https://outlook.office365.com/.default`.
    Scope(String),
    /// v1 endpoint: `resource`, e.g. `https://outlook.office365.com`.
    Resource(String),
}

/// `[exchange.NAME]`, compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeSettings {
    pub name: String,
    pub client_id: String,
    /// With `{tenantid}`.
    pub token_endpoint: String,
    pub target: ExchangeTarget,
    /// The first signs; the rest are kept for rollover.
    pub certificates: Vec<certs::LoadedCertificate>,
    pub timeout: Duration,
    pub refresh_before_expiry: Duration,
    pub failure_cache: Duration,
    pub max_tenants: u64,
    pub rewrite_me: bool,
    /// `oid` or `upn`.
    pub user_claim: String,
}

/// One `[exchange.NAME]` entry at run time: settings plus its per-tenant token cache.
#[derive(Debug)]
pub struct Exchanger {
    settings: ExchangeSettings,
}

impl Exchanger {
    /// An exchanger with an empty cache.
    pub fn new(settings: ExchangeSettings) -> Self {
        Exchanger { settings }
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &ExchangeSettings {
        &self.settings
    }

    /// An app-only token for tenant `tid`.
    pub async fn token(&self, tid: &str, metrics: &Metrics) -> Result<String, Rejection> {
        let _ = (tid, metrics);
        Err(Rejection::new(Reason::ExchangeUnavailable, "token exchange is not available in this build"))
    }

    /// Drops `token` from the cache after the upstream answered 401 to it.
    pub fn purge(&self, tid: &str, token: &str) {
        let _ = (tid, token);
    }
}
