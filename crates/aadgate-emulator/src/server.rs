//! The AAD emulator server: OpenID metadata, JWKS, the token endpoint and the directory of
//! tenants, apps and consents behind it, plus the knobs tests turn.
//!
//! Paths and documents follow AAD's:
//!
//! | path | answer |
//! |---|---|
//! | `GET /{tenant}/v2.0/.well-known/openid-configuration` | v2 metadata |
//! | `GET /{tenant}/.well-known/openid-configuration` | v1 metadata |
//! | `GET /{tenant}/discovery/keys` | v1 JWKS (no `issuer` member) |
//! | `GET /{tenant}/discovery/v2.0/keys` | v2 JWKS, each key with `issuer` |
//! | `POST /{tenant}/oauth2/v2.0/token` | client credentials, v2 (see [`super::token_endpoint`]) |
//! | `POST /{tenant}/oauth2/token` | client credentials, v1 |
//!
//! For metadata and keys, `{tenant}` is `common`, `organizations`, `consumers`, any tenant GUID
//! (so a token `dev-token` mints for any tenant verifies against a running emulator), or a
//! tenant name registered with [`EmulatorHandle::add_tenant_name`] (e.g.
//! `contoso.onmicrosoft.com`), which answers as its tenant. Any other name gets AAD's
//! `AADSTS90002` (400 `invalid_tenant`), as on the real service. The token endpoint answers
//! only for tenants the emulator knows ([`super::DEFAULT_TENANT`], any tenant given to
//! [`EmulatorHandle::add_tenant`], [`EmulatorHandle::consent`] or an app's home tenant). For `common` and
//! `organizations` the metadata `issuer` is the template (`…/{tenantid}/v2.0`,
//! `https://sts.windows.net/{tenantid}/`); for a tenant it is that tenant's issuer. The common v2
//! keys carry `issuer: "https://login.microsoftonline.com/{tenantid}/v2.0"`; a tenant's v2 keys
//! carry that tenant's issuer.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::keys::{cert_info, certificate_thumbprint_hex, x5t_of, x5t_s256_of, SigningKey};
use super::mint::{issuer_v1, issuer_v2, TokenSpec};
use super::serve::{base_url, lock, read, write, ServerTask};
use super::token_endpoint::{self, AadError};
use super::{is_guid, EmulatorError, DEFAULT_TENANT};

/// The consumers (personal Microsoft accounts) tenant id, used in the `consumers` issuer.
const CONSUMERS_TENANT: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

/// Entry point of the AAD emulator; see [`Emulator::start`].
#[derive(Debug)]
pub struct Emulator;

/// How to start the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorOptions {
    /// The initial signing key; a fresh one is generated when `None` (the default).
    pub signing_key: Option<SigningKey>,
    /// Lifetime (`expires_in`) of tokens the token endpoint issues, in seconds. Default 3599,
    /// like AAD.
    pub token_lifetime_secs: i64,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            signing_key: None,
            token_lifetime_secs: 3599,
        }
    }
}

/// An application registration: a client id with its credentials.
///
/// Registering an app does not make it usable in any tenant: like AAD's client credentials
/// grant, a token is issued only in tenants where the app has a service principal, which
/// [`EmulatorHandle::consent`] creates (with the consented app roles). `home_tenant`, when set,
/// gets a service principal without roles at registration, as AAD creates one in the home
/// tenant. `Debug` redacts the secrets.
#[derive(Clone, Default)]
pub struct AppRegistration {
    /// Application (client) id.
    pub client_id: String,
    /// Display name used in AAD messages. Default: the client id.
    pub display_name: String,
    /// Certificates (DER) whose keys may sign client assertions.
    pub certificates: Vec<Vec<u8>>,
    /// Client secrets accepted as `client_secret` (tokens then carry strength `"1"`).
    pub secrets: Vec<String>,
    /// Tenant the app is registered in, if it should have a service principal there.
    pub home_tenant: Option<String>,
}

impl fmt::Debug for AppRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppRegistration")
            .field("client_id", &self.client_id)
            .field("display_name", &self.display_name)
            .field(
                "certificates",
                &self
                    .certificates
                    .iter()
                    .map(|der| certificate_thumbprint_hex(der))
                    .collect::<Vec<_>>(),
            )
            .field("secrets", &format!("<{} redacted>", self.secrets.len()))
            .field("home_tenant", &self.home_tenant)
            .finish()
    }
}

impl AppRegistration {
    /// An app with this client id and no credentials yet.
    pub fn new(client_id: &str) -> Self {
        AppRegistration {
            client_id: client_id.to_string(),
            display_name: client_id.to_string(),
            ..AppRegistration::default()
        }
    }

    /// Adds the certificate of a [`SigningKey`] (e.g. the gateway's exchange certificate).
    pub fn with_certificate(mut self, key: &SigningKey) -> Self {
        self.certificates.push(key.certificate_der().to_vec());
        self
    }

    /// Adds a DER certificate.
    pub fn with_certificate_der(mut self, der: Vec<u8>) -> Self {
        self.certificates.push(der);
        self
    }

    /// Adds a PEM certificate.
    pub fn with_certificate_pem(mut self, pem: &str) -> Result<Self, EmulatorError> {
        self.certificates
            .push(super::keys::certificate_der_from_pem(pem)?);
        Ok(self)
    }

    /// Adds a client secret.
    pub fn with_secret(mut self, secret: &str) -> Self {
        self.secrets.push(secret.to_string());
        self
    }

    /// Sets the display name.
    pub fn with_display_name(mut self, name: &str) -> Self {
        self.display_name = name.to_string();
        self
    }

    /// Sets the home tenant (gets a service principal without roles).
    pub fn with_home_tenant(mut self, tenant: &str) -> Self {
        self.home_tenant = Some(tenant.to_string());
        self
    }
}

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
    keys: RwLock<Vec<SigningKey>>,
    keys_available: AtomicBool,
    jwks_fetches: AtomicU64,
    metadata_fetches: AtomicU64,
    pub token_requests: AtomicU64,
    pub token_log: Mutex<Vec<TokenRequestRecord>>,
    pub token_lifetime: AtomicI64,
    pub token_failure: Mutex<Option<u16>>,
    pub directory: RwLock<Directory>,
    /// Client assertion `jti`s already redeemed, with the assertion's `exp`.
    pub used_jtis: Mutex<HashMap<String, i64>>,
}

impl EmuState {
    /// The active signing key.
    pub(crate) fn active_key(&self) -> Option<SigningKey> {
        read(&self.keys).first().cloned()
    }
}

/// A running emulator. Cheap to clone; the server stops gracefully when
/// [`EmulatorHandle::shutdown`] is called or the last clone is dropped.
#[derive(Clone)]
pub struct EmulatorHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    state: Arc<EmuState>,
    server: ServerTask,
}

impl fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("base_url", &self.inner.state.base_url)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Binds `listen` (port 0 picks a free port), then serves the emulator on the current tokio
    /// runtime. Fails when the address cannot be bound or key generation fails.
    pub async fn start(
        listen: SocketAddr,
        opts: EmulatorOptions,
    ) -> Result<EmulatorHandle, EmulatorError> {
        let key = match opts.signing_key {
            Some(key) => key,
            None => SigningKey::generate()?,
        };
        let mut directory = Directory::default();
        directory.tenants.insert(DEFAULT_TENANT.to_string());
        let mut shared = None;
        let server = ServerTask::spawn(listen, "aad-emulator", |addr| {
            let state = Arc::new(EmuState {
                base_url: base_url(addr),
                keys: RwLock::new(vec![key]),
                keys_available: AtomicBool::new(true),
                jwks_fetches: AtomicU64::new(0),
                metadata_fetches: AtomicU64::new(0),
                token_requests: AtomicU64::new(0),
                token_log: Mutex::new(Vec::new()),
                token_lifetime: AtomicI64::new(opts.token_lifetime_secs),
                token_failure: Mutex::new(None),
                directory: RwLock::new(directory),
                used_jtis: Mutex::new(HashMap::new()),
            });
            shared = Some(state.clone());
            router(state)
        })
        .await?;
        let state =
            shared.ok_or_else(|| EmulatorError::Invalid("emulator state was not built".into()))?;
        Ok(EmulatorHandle {
            inner: Arc::new(HandleInner { state, server }),
        })
    }
}

fn router(state: Arc<EmuState>) -> Router {
    Router::new()
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(metadata_v2),
        )
        .route(
            "/{tenant}/.well-known/openid-configuration",
            get(metadata_v1),
        )
        .route("/{tenant}/discovery/keys", get(jwks_v1))
        .route("/{tenant}/discovery/v2.0/keys", get(jwks_v2))
        .route(
            "/{tenant}/oauth2/v2.0/token",
            post(token_endpoint::token_v2).fallback(token_endpoint::not_post),
        )
        .route(
            "/{tenant}/oauth2/token",
            post(token_endpoint::token_v1).fallback(token_endpoint::not_post),
        )
        .with_state(state)
}

/// How a `{tenant}` path segment resolves for metadata and keys.
enum TenantPath {
    /// `common` / `organizations`: issuers stay templated.
    Multi,
    /// `consumers`.
    Consumers,
    /// A known tenant GUID (lower-case).
    Tenant(String),
}

fn resolve_tenant(state: &EmuState, tenant: &str) -> Result<TenantPath, AadError> {
    let lower = tenant.to_ascii_lowercase();
    match lower.as_str() {
        "common" | "organizations" => Ok(TenantPath::Multi),
        "consumers" => Ok(TenantPath::Consumers),
        // Entra ID serves metadata and keys for any tenant id; so does the emulator, so that
        // tokens minted offline for any tenant verify.
        _ if is_guid(&lower) => Ok(TenantPath::Tenant(lower)),
        _ => match read(&state.directory).tenant_names.get(&lower) {
            Some(tid) => Ok(TenantPath::Tenant(tid.clone())),
            None => Err(AadError::tenant_not_found(tenant)),
        },
    }
}

fn tenant_issuer(path: &TenantPath, v2: bool) -> String {
    let tid = match path {
        TenantPath::Multi => "{tenantid}",
        TenantPath::Consumers => CONSUMERS_TENANT,
        TenantPath::Tenant(t) => t.as_str(),
    };
    if v2 {
        issuer_v2(tid)
    } else {
        issuer_v1(tid)
    }
}

fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [("content-type", "text/plain; charset=utf-8")],
        "Service Unavailable (aadgate emulator: keys made unavailable by the test)",
    )
        .into_response()
}

fn json_ok(doc: Value) -> Response {
    (
        [
            ("cache-control", "max-age=86400, private"),
            ("access-control-allow-origin", "*"),
        ],
        Json(doc),
    )
        .into_response()
}

async fn metadata_v2(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    metadata(&state, &tenant, &headers, true)
}

async fn metadata_v1(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    metadata(&state, &tenant, &headers, false)
}

fn metadata(state: &EmuState, tenant: &str, headers: &HeaderMap, v2: bool) -> Response {
    state.metadata_fetches.fetch_add(1, Ordering::SeqCst);
    if !state.keys_available.load(Ordering::SeqCst) {
        return unavailable();
    }
    let path = match resolve_tenant(state, tenant) {
        Ok(path) => path,
        Err(e) => return e.into_response_for(headers),
    };
    let segment = match &path {
        TenantPath::Tenant(t) => t.clone(),
        _ => tenant.to_ascii_lowercase(),
    };
    let base = format!("{}/{segment}", state.base_url);
    let region: Value = match path {
        TenantPath::Tenant(_) => Value::from("NA"),
        _ => Value::Null,
    };
    let issuer = tenant_issuer(&path, v2);
    let doc = if v2 {
        json!({
            "token_endpoint": format!("{base}/oauth2/v2.0/token"),
            "token_endpoint_auth_methods_supported":
                ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/discovery/v2.0/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": issuer,
            "request_uri_parameter_supported": false,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{base}/oauth2/v2.0/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
                "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
            "kerberos_endpoint": format!("{base}/kerberos"),
            "tenant_region_scope": region,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net"
        })
    } else {
        json!({
            "token_endpoint": format!("{base}/oauth2/token"),
            "token_endpoint_auth_methods_supported":
                ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": format!("{base}/discovery/keys"),
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "scopes_supported": ["openid"],
            "issuer": issuer,
            "microsoft_multi_refresh_token": true,
            "authorization_endpoint": format!("{base}/oauth2/authorize"),
            "device_authorization_endpoint": format!("{base}/oauth2/devicecode"),
            "http_logout_supported": true,
            "frontchannel_logout_supported": true,
            "end_session_endpoint": format!("{base}/oauth2/logout"),
            "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
                "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
                "amr", "nonce", "email", "given_name", "family_name", "nickname"],
            "check_session_iframe": format!("{base}/oauth2/checksession"),
            "userinfo_endpoint": format!("{base}/openid/userinfo"),
            "kerberos_endpoint": format!("{base}/kerberos"),
            "tenant_region_scope": region,
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
            "rbac_url": "https://pas.windows.net"
        })
    };
    json_ok(doc)
}

async fn jwks_v1(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    jwks(&state, &tenant, &headers, false)
}

async fn jwks_v2(
    State(state): State<Arc<EmuState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    jwks(&state, &tenant, &headers, true)
}

fn jwks(state: &EmuState, tenant: &str, headers: &HeaderMap, v2: bool) -> Response {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if !state.keys_available.load(Ordering::SeqCst) {
        return unavailable();
    }
    let path = match resolve_tenant(state, tenant) {
        Ok(path) => path,
        Err(e) => return e.into_response_for(headers),
    };
    let issuer = v2.then(|| tenant_issuer(&path, true));
    let keys: Vec<Value> = read(&state.keys)
        .iter()
        .map(|k| k.jwk(issuer.as_deref()))
        .collect();
    json_ok(json!({ "keys": keys }))
}

impl EmulatorHandle {
    fn state(&self) -> &EmuState {
        &self.inner.state
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.state().base_url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.server.addr()
    }

    /// The common v2 metadata URL: `{base}/common/v2.0/.well-known/openid-configuration`.
    pub fn metadata_url(&self) -> String {
        format!(
            "{}/common/v2.0/.well-known/openid-configuration",
            self.state().base_url
        )
    }

    /// The common v1 metadata URL: `{base}/common/.well-known/openid-configuration`.
    pub fn metadata_url_v1(&self) -> String {
        format!(
            "{}/common/.well-known/openid-configuration",
            self.state().base_url
        )
    }

    /// The common v2 JWKS URL: `{base}/common/discovery/v2.0/keys`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/common/discovery/v2.0/keys", self.state().base_url)
    }

    /// The common v1 JWKS URL: `{base}/common/discovery/keys`.
    pub fn jwks_uri_v1(&self) -> String {
        format!("{}/common/discovery/keys", self.state().base_url)
    }

    /// The v2 token endpoint of `tenant`: `{base}/{tenant}/oauth2/v2.0/token`.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.state().base_url)
    }

    /// The token endpoint template for gateway configs:
    /// `{base}/{tenantid}/oauth2/v2.0/token`.
    pub fn token_endpoint_template(&self) -> String {
        self.token_endpoint("{tenantid}")
    }

    /// The v1 token endpoint of `tenant`: `{base}/{tenant}/oauth2/token`.
    pub fn token_endpoint_v1(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/token", self.state().base_url)
    }

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

    /// Every token request so far, oldest first.
    pub fn token_requests(&self) -> Vec<TokenRequestRecord> {
        lock(&self.state().token_log).clone()
    }

    /// Sets the counters to zero and forgets the token request log.
    pub fn reset_counts(&self) {
        let state = self.state();
        state.jwks_fetches.store(0, Ordering::SeqCst);
        state.metadata_fetches.store(0, Ordering::SeqCst);
        state.token_requests.store(0, Ordering::SeqCst);
        lock(&state.token_log).clear();
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

    /// Makes `tenant` (a GUID) known, so its metadata and token endpoint answer.
    pub fn add_tenant(&self, tenant: &str) {
        write(&self.state().directory)
            .tenants
            .insert(tenant.to_ascii_lowercase());
    }

    /// Registers `name` (a domain such as `contoso.onmicrosoft.com`, compared ignoring case) as
    /// a name of tenant `tenant` (a GUID, which becomes known): metadata and keys under that
    /// name answer as the tenant's, as Entra ID does for a verified domain.
    pub fn add_tenant_name(&self, name: &str, tenant: &str) {
        let tenant = tenant.to_ascii_lowercase();
        let mut dir = write(&self.state().directory);
        dir.tenants.insert(tenant.clone());
        dir.tenant_names.insert(name.to_ascii_lowercase(), tenant);
    }

    /// Registers (or replaces) an app. Fails when a certificate cannot be parsed or is not RSA.
    pub fn register_app(&self, app: AppRegistration) -> Result<(), EmulatorError> {
        let mut certs = Vec::with_capacity(app.certificates.len());
        for der in &app.certificates {
            let info = cert_info(der)?;
            certs.push(RegisteredCert {
                thumbprint_hex: certificate_thumbprint_hex(der),
                x5t: x5t_of(der),
                x5t_s256: x5t_s256_of(der),
                n: info.n,
                e: info.e,
                not_before: info.not_before,
                not_after: info.not_after,
                revoked: false,
            });
        }
        let client_id = app.client_id.to_ascii_lowercase();
        let display_name = if app.display_name.is_empty() {
            app.client_id.clone()
        } else {
            app.display_name.clone()
        };
        let mut dir = write(&self.state().directory);
        if let Some(home) = &app.home_tenant {
            let home = home.to_ascii_lowercase();
            dir.tenants.insert(home.clone());
            dir.principals.entry((home, client_id.clone())).or_default();
        }
        dir.apps.insert(
            client_id,
            RegisteredApp {
                client_id: app.client_id,
                display_name,
                certs,
                secrets: app.secrets,
            },
        );
        Ok(())
    }

    /// Admin consent: creates (or updates) the app's service principal in `tenant` with these
    /// app roles, and makes the tenant known. The roles go into the `roles` claim of the
    /// app-only tokens issued for that (tenant, app), whatever the resource.
    pub fn consent(&self, tenant_id: &str, client_id: &str, roles: Vec<String>) {
        let tenant = tenant_id.to_ascii_lowercase();
        let mut dir = write(&self.state().directory);
        dir.tenants.insert(tenant.clone());
        let sp = dir
            .principals
            .entry((tenant, client_id.to_ascii_lowercase()))
            .or_default();
        sp.roles = roles;
    }

    /// Deletes the app's service principal in `tenant` (the tenant's admin removed the app).
    pub fn revoke_consent(&self, tenant_id: &str, client_id: &str) {
        write(&self.state().directory).principals.remove(&(
            tenant_id.to_ascii_lowercase(),
            client_id.to_ascii_lowercase(),
        ));
    }

    /// Disables (or re-enables) the app's service principal in `tenant`; token requests then
    /// get AADSTS7000112.
    pub fn set_app_disabled(&self, tenant_id: &str, client_id: &str, disabled: bool) {
        if let Some(sp) = write(&self.state().directory).principals.get_mut(&(
            tenant_id.to_ascii_lowercase(),
            client_id.to_ascii_lowercase(),
        )) {
            sp.disabled = disabled;
        }
    }

    /// Removes a certificate from an app, named by thumbprint: hex SHA-1 (any case, `:` or
    /// spaces allowed) or the base64url `x5t`. Assertions signed with it then get AADSTS700027.
    /// Returns whether a certificate was removed.
    pub fn remove_app_certificate(&self, client_id: &str, thumbprint: &str) -> bool {
        let mut dir = write(&self.state().directory);
        let Some(app) = dir.apps.get_mut(&client_id.to_ascii_lowercase()) else {
            return false;
        };
        let before = app.certs.len();
        app.certs.retain(|c| !cert_matches(c, thumbprint));
        app.certs.len() != before
    }

    /// Marks an app certificate revoked (AADSTS7000214 for assertions it signs). Returns whether
    /// the certificate was found.
    pub fn revoke_app_certificate(&self, client_id: &str, thumbprint: &str) -> bool {
        let mut dir = write(&self.state().directory);
        let Some(app) = dir.apps.get_mut(&client_id.to_ascii_lowercase()) else {
            return false;
        };
        let mut found = false;
        for cert in app.certs.iter_mut().filter(|c| cert_matches(c, thumbprint)) {
            cert.revoked = true;
            found = true;
        }
        found
    }

    /// Stops the server gracefully (in-flight requests finish) and waits for it.
    pub async fn shutdown(&self) {
        self.inner.server.shutdown().await;
    }
}

fn cert_matches(cert: &RegisteredCert, thumbprint: &str) -> bool {
    let hex: String = thumbprint
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .collect();
    cert.thumbprint_hex.eq_ignore_ascii_case(&hex)
        || cert.x5t == thumbprint
        || cert.x5t_s256 == thumbprint
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey};

    async fn start() -> EmulatorHandle {
        Emulator::start(
            "127.0.0.1:0".parse().expect("addr"),
            EmulatorOptions::default(),
        )
        .await
        .expect("start emulator")
    }

    async fn get_json(url: &str) -> (u16, Value) {
        let resp = reqwest::get(url).await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    fn verify_with_jwk(token: &str, jwk: &Value) -> bool {
        let (input, sig) = token.rsplit_once('.').expect("dot");
        let key = DecodingKey::from_rsa_components(
            jwk["n"].as_str().expect("n"),
            jwk["e"].as_str().expect("e"),
        )
        .expect("jwk key");
        jsonwebtoken::crypto::verify(sig, input.as_bytes(), &key, Algorithm::RS256).unwrap_or(false)
    }

    #[tokio::test]
    async fn common_metadata_points_at_the_emulator_with_templated_issuers() {
        let emu = start().await;
        let (status, v2) = get_json(&emu.metadata_url()).await;
        assert_eq!(status, 200);
        assert_eq!(
            v2["issuer"],
            "https://login.microsoftonline.com/{tenantid}/v2.0"
        );
        assert_eq!(v2["jwks_uri"], emu.jwks_uri());
        assert_eq!(
            v2["token_endpoint"],
            format!("{}/common/oauth2/v2.0/token", emu.base_url())
        );
        let (_, v1) = get_json(&emu.metadata_url_v1()).await;
        assert_eq!(v1["issuer"], "https://sts.windows.net/{tenantid}/");
        assert_eq!(v1["jwks_uri"], emu.jwks_uri_v1());
        let tenant_url = format!(
            "{}/{DEFAULT_TENANT}/v2.0/.well-known/openid-configuration",
            emu.base_url()
        );
        let (_, tenant) = get_json(&tenant_url).await;
        assert_eq!(tenant["issuer"], issuer_v2(DEFAULT_TENANT));
        assert_eq!(tenant["tenant_region_scope"], "NA");
        assert_eq!(emu.metadata_fetch_count(), 3);
        assert_eq!(emu.jwks_fetch_count(), 0);
    }

    #[tokio::test]
    async fn metadata_and_keys_answer_for_any_tenant_guid_and_registered_names_only() {
        let emu = start().await;
        let any = "2b1b5e1c-6c3e-4f7a-9a2b-0d4c3e2f1a00";
        emu.add_tenant_name("Contoso.onmicrosoft.com", DEFAULT_TENANT);
        let base = emu.base_url();
        // (case, path, status, issuer of a 200 answer)
        let table = [
            (
                "v2 metadata of a tenant nobody added",
                format!("/{any}/v2.0/.well-known/openid-configuration"),
                200,
                Some(issuer_v2(any)),
            ),
            (
                "v1 metadata of that tenant",
                format!("/{}/.well-known/openid-configuration", any.to_uppercase()),
                200,
                Some(issuer_v1(any)),
            ),
            (
                "v2 keys of that tenant",
                format!("/{any}/discovery/v2.0/keys"),
                200,
                None,
            ),
            (
                "common keeps the issuer template",
                "/common/v2.0/.well-known/openid-configuration".to_string(),
                200,
                Some("https://login.microsoftonline.com/{tenantid}/v2.0".to_string()),
            ),
            (
                "organizations keeps the issuer template",
                "/organizations/v2.0/.well-known/openid-configuration".to_string(),
                200,
                Some("https://login.microsoftonline.com/{tenantid}/v2.0".to_string()),
            ),
            (
                "a registered name answers as its tenant",
                "/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration".to_string(),
                200,
                Some(issuer_v2(DEFAULT_TENANT)),
            ),
            (
                "an unknown name is AADSTS90002",
                "/fabrikam.onmicrosoft.com/v2.0/.well-known/openid-configuration".to_string(),
                400,
                None,
            ),
            (
                "a malformed id is AADSTS90002",
                "/2b1b5e1c-6c3e-4f7a-9a2b/v2.0/.well-known/openid-configuration".to_string(),
                400,
                None,
            ),
        ];
        for (case, path, status, issuer) in table {
            let (got, body) = get_json(&format!("{base}{path}")).await;
            assert_eq!(got, status, "{case}: {body}");
            if status == 400 {
                assert_eq!(body["error"], "invalid_tenant", "{case}");
                assert_eq!(body["error_codes"], json!([90002]), "{case}");
            }
            if let Some(issuer) = issuer {
                assert_eq!(body["issuer"], issuer, "{case}");
            }
            if path.ends_with("/keys") {
                let keys = body["keys"].as_array().expect("keys");
                assert_eq!(keys[0]["issuer"], issuer_v2(any), "{case}");
            }
        }
    }

    #[tokio::test]
    async fn a_token_minted_for_any_tenant_verifies_with_that_tenants_published_keys() {
        let emu = start().await;
        let any = "2b1b5e1c-6c3e-4f7a-9a2b-0d4c3e2f1a00";
        let token = emu.mint(&TokenSpec::app(any, "api://x", &["R"]));
        let (_, meta) = get_json(&format!(
            "{}/{any}/v2.0/.well-known/openid-configuration",
            emu.base_url()
        ))
        .await;
        let jwks_uri = meta["jwks_uri"].as_str().expect("jwks_uri");
        let (status, jwks) = get_json(jwks_uri).await;
        assert_eq!(status, 200);
        let keys = jwks["keys"].as_array().expect("keys");
        assert!(keys.iter().any(|k| verify_with_jwk(&token, k)));
    }

    #[tokio::test]
    async fn jwks_shapes_and_minted_token_verifies_with_published_key() {
        let emu = start().await;
        let (status, v2) = get_json(&emu.jwks_uri()).await;
        assert_eq!(status, 200);
        let keys = v2["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 1);
        let jwk = &keys[0];
        for member in ["kty", "use", "kid", "x5t", "n", "e", "x5c"] {
            assert!(jwk.get(member).is_some(), "missing {member}");
        }
        assert_eq!(
            jwk["issuer"],
            "https://login.microsoftonline.com/{tenantid}/v2.0"
        );
        let (_, v1) = get_json(&emu.jwks_uri_v1()).await;
        assert!(v1["keys"][0].get("issuer").is_none());
        let (_, tenant_keys) = get_json(&format!(
            "{}/{DEFAULT_TENANT}/discovery/v2.0/keys",
            emu.base_url()
        ))
        .await;
        assert_eq!(tenant_keys["keys"][0]["issuer"], issuer_v2(DEFAULT_TENANT));
        assert_eq!(emu.jwks_fetch_count(), 3);

        let token = emu.mint(&TokenSpec::default());
        assert!(verify_with_jwk(&token, jwk));
        assert_eq!(jwk["kid"], emu.signing_key().kid());
        assert!(!verify_with_jwk(&format!("{token}x"), jwk));
    }

    #[tokio::test]
    async fn rotation_publishes_new_key_and_optionally_drops_old() {
        let emu = start().await;
        let old_kid = emu.signing_key().kid().to_string();
        let new_kid = emu.rotate_key(true).expect("rotate");
        assert_ne!(old_kid, new_kid);
        let (_, jwks) = get_json(&emu.jwks_uri()).await;
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .filter_map(|k| k["kid"].as_str())
            .collect();
        assert_eq!(kids, vec![new_kid.as_str(), old_kid.as_str()]);
        let token = emu.mint(&TokenSpec::default());
        assert!(token.split('.').next().is_some());
        assert_eq!(emu.signing_key().kid(), new_kid);

        let newest = emu.rotate_key(false).expect("rotate");
        let (_, jwks) = get_json(&emu.jwks_uri()).await;
        assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(1));
        assert_eq!(jwks["keys"][0]["kid"], newest);
    }

    #[tokio::test]
    async fn outage_toggle_answers_503_and_still_counts() {
        let emu = start().await;
        emu.set_keys_available(false);
        assert_eq!(
            reqwest::get(emu.jwks_uri()).await.expect("get").status(),
            503
        );
        assert_eq!(
            reqwest::get(emu.metadata_url())
                .await
                .expect("get")
                .status(),
            503
        );
        emu.set_keys_available(true);
        assert_eq!(
            reqwest::get(emu.jwks_uri()).await.expect("get").status(),
            200
        );
        assert_eq!(emu.jwks_fetch_count(), 2);
        assert_eq!(emu.metadata_fetch_count(), 1);
    }

    #[tokio::test]
    async fn shutdown_stops_serving_and_drop_does_too() {
        let emu = start().await;
        let url = emu.jwks_uri();
        emu.shutdown().await;
        assert!(reqwest::get(&url).await.is_err());

        let emu = start().await;
        let url = emu.jwks_uri();
        let client = reqwest::Client::new();
        assert!(client.get(&url).send().await.is_ok());
        drop(emu);
        // The listener closes once the server task sees the drop; retry briefly.
        let mut refused = false;
        for _ in 0..500 {
            if reqwest::Client::new().get(&url).send().await.is_err() {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            refused,
            "server still answering after the handle was dropped"
        );
    }
}
