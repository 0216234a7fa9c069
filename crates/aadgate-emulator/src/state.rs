//! The emulator's shared state: the directory of tenants, apps and service principals, the
//! signing keys, the counters and the token request log, with the public types that describe a
//! token request. The server (metadata, keys, the handle's knobs, the control endpoints), the
//! token endpoint and the admin-consent flow read and write it; it imports none of them, so the
//! module graph stays a tree.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use crate::is_guid;
use crate::keys::SigningKey;
use crate::serve::{read, RecordedRequest};

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
    /// The `claims` form field (the OAuth claims request), as sent.
    pub claims: Option<String>,
    /// `true` when the assertion was checked as a federated credential (an external token).
    pub federated: bool,
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
    /// Redirect URIs, compared exactly (case and trailing slash included), as Entra ID does.
    pub redirect_uris: Vec<String>,
    /// Application permissions (app roles) the app asks for when an admin consents.
    pub app_roles: Vec<String>,
    /// Federated identity credentials: external tokens the app accepts as client assertions.
    pub federated: Vec<FederatedCredential>,
    /// Subject names whose certificates, issued by the named authority and sent as `x5c`, the
    /// app accepts without registering each one (subject name + issuer authentication).
    pub trusted_subjects: Vec<TrustedSubject>,
}

/// A trusted certificate subject of an app (subject name + issuer, "SNI", authentication, as
/// the application manifest's `trustedCertificateSubjects` describes it): an assertion whose
/// `x5c` leaf has this subject name (its common name) and was issued directly by `authority` is
/// accepted, with the key of the leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedSubject {
    /// The certificate subject's common name, e.g. `gateway.contoso.example` (`CN=` optional).
    pub subject_name: String,
    /// The issuing authority's certificate, DER.
    pub authority_der: Vec<u8>,
}

/// A federated identity credential of an app registration, as Microsoft Graph's
/// `federatedIdentityCredential` resource describes it
/// (<https://learn.microsoft.com/graph/api/resources/federatedidentitycredential>): a token
/// whose `iss` is `issuer`, whose `sub` is `subject` and whose `aud` holds one of `audiences`
/// is accepted as the app's `client_assertion`. Issuer and subject are compared exactly (Entra
/// ID compares them case-sensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedCredential {
    /// A name unique within the app (Graph's `name`). Default: derived from issuer and subject.
    pub name: String,
    /// The external issuer's URL, as its tokens' `iss` claim carries it.
    pub issuer: String,
    /// The external workload's identifier, as its tokens' `sub` claim carries it (for
    /// Kubernetes `system:serviceaccount:<namespace>:<name>`; for a managed identity its
    /// principal (object) id).
    pub subject: String,
    /// Audiences one of which the external token's `aud` must carry. Default
    /// [`crate::TOKEN_EXCHANGE_AUDIENCE`] (`api://AzureADTokenExchange`).
    pub audiences: Vec<String>,
}

impl FederatedCredential {
    /// A credential trusting `subject` at `issuer`, for the audience
    /// `api://AzureADTokenExchange`.
    pub fn new(issuer: &str, subject: &str) -> Self {
        FederatedCredential {
            name: format!("fic-{}", &crate::derived_guid(&[issuer, subject])[..8]),
            issuer: issuer.to_string(),
            subject: subject.to_string(),
            audiences: vec![crate::TOKEN_EXCHANGE_AUDIENCE.to_string()],
        }
    }

    /// Replaces the audiences with `audience` alone.
    pub fn with_audience(mut self, audience: &str) -> Self {
        self.audiences = vec![audience.to_string()];
        self
    }

    /// Sets the name.
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }
}

/// A managed identity the emulator's managed-identity endpoints issue tokens for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedIdentity {
    /// Client (application) id: the `client_id` a request names a user-assigned identity by,
    /// and the `appid`/`azp` of its tokens.
    pub client_id: String,
    /// Principal (object) id of its service principal: the `oid`/`sub` of its tokens, and the
    /// subject an app's federated credential names to trust it.
    pub principal_id: String,
    /// The tenant it lives in (`tid` of its tokens).
    pub tenant: String,
    /// `true` for the host's system-assigned identity, `false` for a user-assigned one.
    pub system_assigned: bool,
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
    /// Tenants the directory has seen (the default tenant, added, named, consented, home
    /// tenants): the organizations the consent page offers. Every well-formed GUID is a tenant
    /// for the endpoints, seen or not.
    pub tenants: HashSet<String>,
    /// Registered tenant names (lower-case, e.g. `contoso.onmicrosoft.com`) → tenant GUID.
    pub tenant_names: HashMap<String, String>,
    pub apps: HashMap<String, RegisteredApp>,
    pub principals: HashMap<(String, String), ServicePrincipal>,
    /// When each (tenant, app)'s service principal was last removed (consent revoked); cleared
    /// when consent is given again.
    pub revoked_at: HashMap<(String, String), SystemTime>,
    /// User-assigned managed identities by lower-case client id.
    pub user_assigned: HashMap<String, ManagedIdentity>,
}

impl Directory {
    /// The tenant GUID (lower-case) a `{tenant}` value names: any well-formed GUID, or a
    /// registered name; `None` for anything else (`common`, `organizations` included).
    pub(crate) fn resolve_tenant(&self, tenant: &str) -> Option<String> {
        let lower = tenant.trim().to_ascii_lowercase();
        if is_guid(&lower) {
            return Some(lower);
        }
        self.tenant_names.get(&lower).cloned()
    }

    /// Makes `tenant` (a GUID) seen.
    pub(crate) fn add_tenant(&mut self, tenant: &str) {
        self.tenants.insert(tenant.to_ascii_lowercase());
    }

    /// Registers `name` as a name of `tenant` (which becomes seen).
    pub(crate) fn add_tenant_name(&mut self, name: &str, tenant: &str) {
        let tenant = tenant.to_ascii_lowercase();
        self.tenants.insert(tenant.clone());
        self.tenant_names.insert(name.to_ascii_lowercase(), tenant);
    }

    /// How the consent page names `tenant`: its first registered name in sort order, else the
    /// GUID.
    pub(crate) fn tenant_label(&self, tenant: &str) -> String {
        self.tenant_names
            .iter()
            .filter(|(_, tid)| tid.as_str() == tenant)
            .map(|(name, _)| name)
            .min()
            .cloned()
            .unwrap_or_else(|| tenant.to_string())
    }

    /// Every seen tenant as (GUID, label), sorted by label.
    pub(crate) fn seen_tenants(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .tenants
            .iter()
            .map(|tid| (tid.clone(), self.tenant_label(tid)))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// Admin consent: sets the app's service principal in `tenant` to exactly `roles`,
    /// creating it when absent, and makes the tenant seen.
    pub(crate) fn set_consent(&mut self, tenant: &str, client_id: &str, roles: Vec<String>) {
        let tenant = tenant.to_ascii_lowercase();
        self.tenants.insert(tenant.clone());
        let key = (tenant, client_id.to_ascii_lowercase());
        self.revoked_at.remove(&key);
        let sp = self.principals.entry(key).or_default();
        sp.roles = roles;
    }

    /// Admin consent from the consent page: creates the service principal or keeps it (its
    /// `disabled` flag too), adding the `roles` it lacks; makes the tenant seen.
    pub(crate) fn grant(&mut self, tenant: &str, client_id: &str, roles: &[String]) {
        let tenant = tenant.to_ascii_lowercase();
        self.tenants.insert(tenant.clone());
        let key = (tenant, client_id.to_ascii_lowercase());
        self.revoked_at.remove(&key);
        let sp = self.principals.entry(key).or_default();
        for role in roles {
            if !sp.roles.contains(role) {
                sp.roles.push(role.clone());
            }
        }
    }

    /// Deletes the app's service principal in `tenant`, noting when; whether there was one.
    pub(crate) fn revoke(&mut self, tenant: &str, client_id: &str) -> bool {
        let key = (tenant.to_ascii_lowercase(), client_id.to_ascii_lowercase());
        let removed = self.principals.remove(&key).is_some();
        if removed {
            self.revoked_at.insert(key, SystemTime::now());
        }
        removed
    }

    /// The app's service principal in `tenant`, if any.
    pub(crate) fn principal(&self, tenant: &str, client_id: &str) -> Option<&ServicePrincipal> {
        self.principals
            .get(&(tenant.to_ascii_lowercase(), client_id.to_ascii_lowercase()))
    }
}

/// An external issuer's RSA signing keys, as fetched for federated assertions.
#[derive(Debug, Clone)]
pub(crate) struct CachedJwks {
    pub keys: Vec<RsaJwk>,
    /// When they were fetched, Unix seconds.
    pub fetched_at: i64,
}

/// One RSA key of a JWKS.
#[derive(Debug, Clone)]
pub(crate) struct RsaJwk {
    pub kid: Option<String>,
    pub n: Vec<u8>,
    pub e: Vec<u8>,
}

/// State shared by the emulator's handlers and its handle.
pub(crate) struct EmuState {
    pub base_url: String,
    pub keys: RwLock<Vec<SigningKey>>,
    pub keys_available: AtomicBool,
    pub jwks_fetches: AtomicU64,
    pub metadata_fetches: AtomicU64,
    pub token_requests: AtomicU64,
    /// Requests to the admin-consent endpoints (page views and decisions, any answer).
    pub consent_requests: AtomicU64,
    pub token_log: Mutex<Vec<TokenRequestRecord>>,
    pub token_lifetime: AtomicI64,
    pub token_failure: Mutex<Option<u16>>,
    pub directory: RwLock<Directory>,
    /// Client assertion `jti`s already redeemed, with the assertion's `exp`.
    pub used_jtis: Mutex<HashMap<String, i64>>,
    /// The host's system-assigned managed identity.
    pub system_identity: ManagedIdentity,
    /// The secret the App Service style endpoint wants in `X-IDENTITY-HEADER`.
    pub identity_header: String,
    /// Requests to the IMDS-shaped managed-identity endpoint (any answer).
    pub imds_requests: AtomicU64,
    /// Requests to the App Service style (`IDENTITY_ENDPOINT`) endpoint (any answer).
    pub identity_endpoint_requests: AtomicU64,
    /// Requests to both managed-identity endpoints, oldest first, with their headers.
    pub managed_identity_log: Mutex<Vec<RecordedRequest>>,
    /// Requests to the service-account issuer's metadata and JWKS.
    pub service_account_fetches: AtomicU64,
    /// The service-account issuer's signing key, made on first use.
    pub service_account_key: OnceLock<SigningKey>,
    /// External issuers' signing keys fetched for federated assertions, by issuer.
    pub federation_keys: Mutex<HashMap<String, CachedJwks>>,
    /// Fetches of external issuers' metadata and JWKS (each document counts).
    pub federation_fetches: AtomicU64,
    /// The HTTP client that fetches external issuers' documents (trusts the dev CA as well as
    /// the system's roots when the emulator serves TLS).
    pub http: reqwest::Client,
}

impl EmuState {
    /// Fresh state for an emulator at `base_url`, publishing `key`, issuing tokens that live
    /// `token_lifetime_secs`, with `directory` as the initial tenants and apps.
    pub(crate) fn new(
        base_url: String,
        key: SigningKey,
        token_lifetime_secs: i64,
        directory: Directory,
        http: reqwest::Client,
    ) -> Self {
        EmuState {
            base_url,
            keys: RwLock::new(vec![key]),
            keys_available: AtomicBool::new(true),
            jwks_fetches: AtomicU64::new(0),
            metadata_fetches: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            consent_requests: AtomicU64::new(0),
            token_log: Mutex::new(Vec::new()),
            token_lifetime: AtomicI64::new(token_lifetime_secs),
            token_failure: Mutex::new(None),
            directory: RwLock::new(directory),
            used_jtis: Mutex::new(HashMap::new()),
            system_identity: ManagedIdentity {
                client_id: crate::derived_guid(&["system-assigned identity", "client"]),
                principal_id: crate::derived_guid(&["system-assigned identity", "principal"]),
                tenant: crate::DEFAULT_TENANT.to_string(),
                system_assigned: true,
            },
            identity_header: crate::new_guid().replace('-', "").to_ascii_uppercase(),
            imds_requests: AtomicU64::new(0),
            identity_endpoint_requests: AtomicU64::new(0),
            managed_identity_log: Mutex::new(Vec::new()),
            service_account_fetches: AtomicU64::new(0),
            service_account_key: OnceLock::new(),
            federation_keys: Mutex::new(HashMap::new()),
            federation_fetches: AtomicU64::new(0),
            http,
        }
    }

    /// The active signing key.
    pub(crate) fn active_key(&self) -> Option<SigningKey> {
        read(&self.keys).first().cloned()
    }

    /// `{base}/k8s`: the issuer of the emulator's service-account tokens.
    pub(crate) fn service_account_issuer(&self) -> String {
        format!("{}/k8s", self.base_url)
    }

    /// The service-account issuer's signing key, made on first use.
    pub(crate) fn service_account_key(&self) -> Result<&SigningKey, crate::EmulatorError> {
        if let Some(key) = self.service_account_key.get() {
            return Ok(key);
        }
        let key = SigningKey::generate()?;
        Ok(self.service_account_key.get_or_init(|| key))
    }
}
