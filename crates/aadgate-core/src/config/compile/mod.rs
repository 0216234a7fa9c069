//! Compiles the file model into the runtime model, reporting every semantic error at once.
//!
//! One file per config section; this one holds the entry points and the helpers every section
//! uses.

mod clients;
mod exchange;
mod identity;
mod onboarding;
mod ratelimit;
mod routes;
mod server;
mod store;
mod tenants;
mod validators;

pub use onboarding::{DEFAULT_AUTHORITY, DEFAULT_ONBOARDING_PREFIX};
pub use store::STORE_URL_ENV;
pub use tenants::{load_tenant_file, TenantFileError};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use serde_spanned::Spanned;

use super::error::{ConfigErrors, Reporter};
use super::file::{self, ConfigFile, Raw};
use super::model::*;

/// Default `[server] max_token_bytes`.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Default `[server] max_uri_bytes`.
pub(super) const DEFAULT_MAX_URI_BYTES: usize = 8192;
/// Default `[identity] refresh_interval`.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);
/// Default `[identity] min_refetch_interval`.
pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Default `[identity] clock_skew`.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Default `[identity] token_cache_size`.
pub const DEFAULT_TOKEN_CACHE_SIZE: u64 = 100_000;
/// Default `[exchange.NAME] purge_interval`.
pub(super) const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(30);
/// The AAD issuer templates used when `[tenants] issuers` is absent.
pub const DEFAULT_ISSUERS: [&str; 2] = super::cloud::PUBLIC_ISSUERS;

/// Reads and validates the configuration at `path`. The running parts are built from it by
/// [`crate::runtime`], which also decides what a reload carries over.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![super::ConfigError {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: format!("cannot read the configuration file: {e}"),
        }])
    })?;
    load_str(path, &source)
}

/// Compiles configuration text as if read from `path` (relative paths resolve against its
/// folder).
pub fn load_str(path: &Path, source: &str) -> Result<Config, ConfigErrors> {
    let mut r = Reporter::new(path, source);
    let Some(parsed) = file::parse(source, &mut r) else {
        return Err(ConfigErrors(r.errors));
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut c = Compiler {
        r,
        base,
        path_case: PathCase::default(),
        cloud: super::Cloud::default(),
    };
    let config = c.config(path, parsed);
    if c.r.errors.is_empty() {
        let mut config = config.expect("no errors means a config was built");
        config.warnings = c.r.warnings.iter().map(|w| w.to_string()).collect();
        Ok(config)
    } else {
        let mut errors = c.r.errors;
        errors.sort_by_key(|e| (e.line, e.col));
        Err(ConfigErrors(errors))
    }
}

struct Compiler<'a> {
    r: Reporter<'a>,
    base: PathBuf,
    /// `[server] path_case`, set by `server()`; route prefixes are folded with it.
    path_case: PathCase,
    /// `[identity] cloud`, set by `identity()`: the defaults of the metadata URL, issuers,
    /// onboarding authority and federated-credential audience.
    cloud: super::Cloud,
}

/// True when `s` is a GUID in the 8-4-4-4-12 hex form.
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

impl Compiler<'_> {
    /// Converts a value kept as written; a bad one is reported at its position and gives `None`.
    fn raw<T: serde::de::DeserializeOwned>(&mut self, v: &Raw<T>) -> Option<T> {
        match v.parse() {
            Ok(t) => Some(t),
            Err(m) => {
                self.r.error(v.span(), m.to_string());
                None
            }
        }
    }

    /// An optional duration, or `default` when absent (or bad: then it has been reported).
    fn dur(&mut self, v: &Option<Raw<super::Duration>>, default: Duration) -> Duration {
        v.as_ref()
            .and_then(|d| self.raw(d))
            .map_or(default, |d| d.get())
    }

    /// An optional duration that must be at least `min` when given.
    fn dur_at_least(
        &mut self,
        v: &Option<Raw<super::Duration>>,
        default: Duration,
        min: Duration,
        message: &str,
    ) -> Duration {
        let d = self.dur(v, default);
        if let Some(raw) = v {
            if d < min {
                self.r.error(raw.span(), message);
                return default;
            }
        }
        d
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn config(&mut self, path: &Path, f: ConfigFile) -> Option<Config> {
        let server = f.server.as_ref().and_then(|s| self.server(s));
        let identity = f.identity.as_ref().and_then(|s| self.identity(s));
        let store = self.store(f.store.as_ref());
        let shared = matches!(store.kind, StoreKind::Redis { .. });
        let tenants = f.tenants.as_ref().and_then(|s| self.tenants(s, &f, shared));
        let clients = self.clients(f.clients.as_ref());
        let validators = self.validators(&f.validators);
        let exchanges = self.exchanges(&f.exchange);
        let routes = self.routes(&f, &validators, &exchanges, &clients);
        let onboarding = f
            .onboarding
            .as_ref()
            .map(|s| self.onboarding(s, tenants.as_ref().map(|t| &t.mode), &exchanges));

        let mut claim_header_names: HashSet<HeaderName> = default_claim_headers()
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        for route in &routes {
            claim_header_names.extend(route.claim_headers.iter().map(|(h, _)| h.clone()));
        }
        let validator_header_names = self.validator_headers(&f, &claim_header_names);
        let rate_limits = self.rate_limits(&f.rate_limits, &routes);
        Some(Config {
            path: path.to_path_buf(),
            server: server?,
            identity: identity?,
            tenants: tenants?,
            clients,
            validators,
            routes,
            exchanges,
            onboarding: match onboarding {
                None => None,
                Some(o) => Some(o?),
            },
            store,
            claim_header_names,
            validator_header_names,
            warnings: Vec::new(),
            unprefixed_names: std::sync::OnceLock::new(),
            rate_limits,
        })
    }

    fn url(&mut self, s: &Spanned<String>, what: &str) -> Option<String> {
        match reqwest::Url::parse(s.get_ref()) {
            Ok(u) if u.scheme() == "https" || u.scheme() == "http" => Some(s.get_ref().clone()),
            _ => {
                self.r.error(
                    s.span(),
                    format!("{what} {:?} is not an http(s) URL", s.get_ref()),
                );
                None
            }
        }
    }
}

fn is_hop_or_reserved(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "host"
            | "connection"
            | "content-length"
            | "transfer-encoding"
            | "te"
            | "upgrade"
            | "trailer"
            | "keep-alive"
            | "proxy-authorization"
            | "x-request-id"
    )
}
