//! The emulator's shared state: the directory of tenants, apps and service principals, the
//! signing keys, the counters and the token request log, with the public types that describe a
//! token request. The server (metadata, keys, the handle's knobs) and the token endpoint both
//! read and write it; it imports neither, so the module graph stays a tree.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Mutex, RwLock};

use crate::keys::SigningKey;
use crate::serve::read;

/// Which token endpoint a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenEndpointVersion {
    /// `/{tenant}/oauth2/token` (takes `resource`).
    V1,
    /// `/{tenant}/oauth2/v2.0/token` (takes `scope`).
    V2,
}

/// How a token request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOutcome {
    /// A token was issued.
    Issued,
    /// An error was answered.
    Failed {
        /// HTTP status.
        status: u16,
        /// OAuth `error`, e.g. `invalid_client`.
        error: String,
        /// The AADSTS code, e.g. 700027.
        aadsts: u32,
    },
}

/// One request to a token endpoint, as recorded for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequestRecord {
    /// The `{tenant}` path segment as sent.
    pub tenant: String,
    /// v1 or v2 endpoint.
    pub endpoint: TokenEndpointVersion,
    /// `grant_type` form field.
    pub grant_type: Option<String>,
    /// `client_id` form field.
    pub client_id: Option<String>,
    /// `scope` form field (v2).
    pub scope: Option<String>,
    /// `resource` form field (v1).
    pub resource: Option<String>,
    /// Whether a `client_secret` was sent.
    pub used_client_secret: bool,
    /// Uppercase hex SHA-1 thumbprint of the certificate the assertion named (`x5t`, or the
    /// registered certificate matched by `x5t#S256`); `None` without a readable assertion.
    pub assertion_thumbprint: Option<String>,
    /// The answer.
    pub outcome: TokenOutcome,
}

/// A certificate registered for an app, with everything the token endpoint compares.
#[derive(Debug, Clone)]
pub(crate) struct RegisteredCert {
    pub thumbprint_hex: String,
    pub x5t: String,
    pub x5t_s256: String,
    pub n: Vec<u8>,
    pub e: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
    pub revoked: bool,
}

/// A registered app as the directory keeps it.
#[derive(Debug, Clone)]
pub(crate) struct RegisteredApp {
    pub client_id: String,
    pub display_name: String,
    pub certs: Vec<RegisteredCert>,
    pub secrets: Vec<String>,
}

/// An app's service principal in one tenant.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServicePrincipal {
    pub roles: Vec<String>,
    pub disabled: bool,
}

/// Tenants, apps and service principals. Keys are lower-case.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    pub tenants: HashSet<String>,
    /// Registered tenant names (lower-case, e.g. `contoso.onmicrosoft.com`) → tenant GUID.
    pub tenant_names: HashMap<String, String>,
    pub apps: HashMap<String, RegisteredApp>,
    pub principals: HashMap<(String, String), ServicePrincipal>,
}

impl Directory {
    pub(crate) fn knows_tenant(&self, tenant: &str) -> bool {
        self.tenants.contains(&tenant.to_ascii_lowercase())
    }
}

/// State shared by the emulator's handlers and its handle.
pub(crate) struct EmuState {
    pub base_url: String,
    pub keys: RwLock<Vec<SigningKey>>,
    pub keys_available: AtomicBool,
    pub jwks_fetches: AtomicU64,
    pub metadata_fetches: AtomicU64,
    pub token_requests: AtomicU64,
    pub token_log: Mutex<Vec<TokenRequestRecord>>,
    pub token_lifetime: AtomicI64,
    pub token_failure: Mutex<Option<u16>>,
    pub directory: RwLock<Directory>,
    /// Client assertion `jti`s already redeemed, with the assertion's `exp`.
    pub used_jtis: Mutex<HashMap<String, i64>>,
}

impl EmuState {
    /// Fresh state for an emulator at `base_url`, publishing `key`, issuing tokens that live
    /// `token_lifetime_secs`, with `directory` as the initial tenants and apps.
    pub(crate) fn new(
        base_url: String,
        key: SigningKey,
        token_lifetime_secs: i64,
        directory: Directory,
    ) -> Self {
        EmuState {
            base_url,
            keys: RwLock::new(vec![key]),
            keys_available: AtomicBool::new(true),
            jwks_fetches: AtomicU64::new(0),
            metadata_fetches: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            token_log: Mutex::new(Vec::new()),
            token_lifetime: AtomicI64::new(token_lifetime_secs),
            token_failure: Mutex::new(None),
            directory: RwLock::new(directory),
            used_jtis: Mutex::new(HashMap::new()),
        }
    }

    /// The active signing key.
    pub(crate) fn active_key(&self) -> Option<SigningKey> {
        read(&self.keys).first().cloned()
    }
}
