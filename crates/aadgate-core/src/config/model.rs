//! The settings model: what the configuration file says, validated and in the types the rest of
//! the crate reads. Built from the file model by `super::compile`. It holds settings only: the
//! running parts built from them (key store, validators, exchangers, caches) are
//! [`crate::runtime`]'s.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

pub use super::route::*;
use super::ConfigError;
pub use crate::target::PathCase;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The path the configuration was loaded from, as given (not canonicalised), so relative
    /// paths resolve against the folder a Kubernetes ConfigMap is mounted at.
    pub path: PathBuf,
    /// `[server]`: listeners, limits, timeouts, TLS.
    pub server: ServerSettings,
    /// `[identity]`: key source, audiences, algorithms, clock skew, token cache.
    pub identity: IdentitySettings,
    /// `[tenants]`: issuer templates and which tenants are admitted.
    pub tenants: TenantSettings,
    /// `[clients]`: the global client allow-list and minimum strength; defaults when the table is
    /// absent.
    pub clients: ClientSettings,
    /// `[validators.NAME]` by NAME.
    pub validators: HashMap<String, ValidatorSettings>,
    /// The `[[routes]]` entries in file order (ties between equal prefixes go to the first).
    pub routes: Vec<Arc<Route>>,
    /// `[exchange.NAME]` by NAME.
    pub exchanges: HashMap<String, ExchangeSettings>,
    /// `[onboarding]`: the sign-up pages; `None` when the table is absent.
    pub onboarding: Option<OnboardingSettings>,
    /// `[store]`: local (default) or Redis.
    pub store: StoreSettings,
    /// Every header name configured as a claim header on any route, plus the default set:
    /// removed from every inbound request.
    pub claim_header_names: HashSet<HeaderName>,
    /// Every header name a validator may add upstream (its `headers`): removed from every
    /// inbound request too, so a caller cannot pre-set one.
    pub validator_header_names: HashSet<HeaderName>,
    /// Warnings found while loading (e.g. a certificate that has expired); logged by the loader.
    pub warnings: Vec<String>,
    /// The configured names of the two sets above without the `x-auth-` prefix, in canonical
    /// form (lower case, `_` as `-`): made from them on first use by
    /// [`Config::spoofable_headers`].
    pub(crate) unprefixed_names: std::sync::OnceLock<Vec<Box<[u8]>>>,
    /// `[[rate_limits]]` in file order (SPEC section 11); empty = no rate limits.
    pub rate_limits: Vec<RateLimitSettings>,
}

impl Config {
    /// The inbound headers a caller must not set (SPEC section 8): every name starting with
    /// `x-auth-`, every configured claim header and every header a validator may add
    /// (`validator_header_names`), with names compared case-insensitively and `_` read as `-`
    /// (CGI/WSGI servers, gunicorn < 22 and Puma < 6.4.3 read `x_auth_roles` as
    /// `X-Auth-Roles`). The gateway and the tower layer remove them from every request, on
    /// every route, before anything else looks at the request.
    ///
    /// Runs on every request: a name is compared with the configured names that lack the
    /// reserved prefix (usually none), and nothing is allocated unless a header matches.
    pub fn spoofable_headers(&self, headers: &http::HeaderMap) -> Vec<HeaderName> {
        let unprefixed = self.unprefixed_names.get_or_init(|| {
            let sets = [&self.claim_header_names, &self.validator_header_names];
            let mut names: Vec<Box<[u8]>> = sets
                .into_iter()
                .flatten()
                .map(|h| h.as_str().as_bytes())
                .filter(|n| !x_auth_prefixed(n))
                .map(|n| n.iter().map(|c| canonical(*c)).collect())
                .collect();
            names.sort();
            names.dedup();
            names
        });
        let mut found = Vec::new();
        for name in headers.keys() {
            let n = name.as_str().as_bytes();
            let spoofed = x_auth_prefixed(n)
                || unprefixed
                    .iter()
                    .any(|c| c.len() == n.len() && same_header_name(c, n));
            if spoofed {
                found.push(name.clone());
            }
        }
        found
    }
}

/// `x-auth-`, `x_auth_`, `X-Auth_`…: the reserved prefix of identity headers.
fn x_auth_prefixed(n: &[u8]) -> bool {
    n.len() >= 7 && same_header_name(&n[..7], b"x-auth-")
}

/// Header names equal with ASCII case ignored and `_` read as `-`.
fn same_header_name(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| canonical(*x) == canonical(*y))
}

/// A header name byte as compared: lower case, `_` read as `-`.
fn canonical(c: u8) -> u8 {
    if c == b'_' {
        b'-'
    } else {
        c.to_ascii_lowercase()
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    /// `listen`: the data-plane listeners; never empty. A change needs a restart.
    pub listen: Vec<SocketAddr>,
    /// `admin_listen`: the `/metrics`, `/healthz`, `/readyz` listener; `None` = none.
    pub admin_listen: Option<SocketAddr>,
    /// `workers`: proxy worker threads; default the number of CPU cores.
    pub workers: usize,
    /// `max_token_bytes`: longest bearer token, in bytes (default 16384); longer tokens are
    /// `401 malformed_token`.
    pub max_token_bytes: usize,
    /// Longer request targets are answered `414 uri_too_long`.
    pub max_uri_bytes: usize,
    /// Whether route matching folds ASCII case (`path_case`).
    pub path_case: PathCase,
    /// `upstream_connect_timeout`: TCP (and TLS) connect to an upstream (default 5 s); exceeded →
    /// `502 upstream_unavailable`.
    pub upstream_connect_timeout: Duration,
    /// `upstream_read_timeout`: longest wait between bytes of an upstream answer (default 60 s).
    pub upstream_read_timeout: Duration,
    /// `shutdown_grace`: how long in-flight requests may finish after SIGTERM/SIGINT
    /// (default 30 s).
    pub shutdown_grace: Duration,
    /// An explicit `upgrade_sock`; `None` = `upgrade.sock` in the private runtime folder
    /// (the binary's `server::runtime_dir`).
    pub upgrade_sock: Option<PathBuf>,
    /// `tls`: TLS on every `listen` address (ALPN `h2` and `http/1.1`); `None` = plain HTTP.
    pub tls: Option<TlsSettings>,
    /// `h2c`: cleartext HTTP/2 with prior knowledge is accepted on `listen` beside HTTP/1.1.
    pub h2c: bool,
    /// `tunnel_idle_timeout`: an upgraded connection silent in both directions this long is
    /// closed (default 5 min).
    pub tunnel_idle_timeout: Duration,
}

#[cfg(test)]
impl ServerSettings {
    /// Defaults with one listener on 127.0.0.1:8080, for unit tests.
    pub(crate) fn for_test() -> ServerSettings {
        ServerSettings {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            admin_listen: None,
            workers: 1,
            max_token_bytes: 16 * 1024,
            max_uri_bytes: 8192,
            path_case: PathCase::Insensitive,
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_read_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(30),
            upgrade_sock: None,
            tls: None,
            h2c: false,
            tunnel_idle_timeout: Duration::from_secs(300),
        }
    }
}

/// TLS on the data-plane listeners.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    /// `cert`: the PEM certificate chain, resolved against the config file's folder.
    pub cert: PathBuf,
    /// `key`: the PEM private key, resolved against the config file's folder.
    pub key: PathBuf,
}

/// Where the signing keys come from and how tokens are checked against them.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentitySettings {
    /// `cloud`: the Entra ID cloud instance whose defaults apply.
    pub cloud: super::Cloud,
    /// `metadata_url`: the OpenID Connect metadata document; not fetched when `jwks_uri` is set.
    pub metadata_url: Option<String>,
    /// `jwks_uri`: the JWKS; `None` = the one the metadata names. At least one of the two is set.
    pub jwks_uri: Option<String>,
    /// `refresh_interval`: background JWKS refresh period (default 1 h).
    pub refresh_interval: Duration,
    /// `min_refetch_interval`: least time between two JWKS fetches of any kind (default 30 s).
    pub min_refetch_interval: Duration,
    /// `cache_file`: the last-known-good JWKS file, resolved against the config file's folder;
    /// `None` when not configured.
    pub cache_file: Option<PathBuf>,
    /// `token_cache_size`: verified-token cache, in entries (default 100000); 0 = off.
    pub token_cache_size: u64,
    /// `clock_skew`: tolerance for `exp`, `nbf` and `iat` (default 5 min).
    pub clock_skew: Duration,
    /// `algorithms`: accepted JWS `alg` values, RSA only; never empty (default `RS256`).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// `audiences`: accepted `aud` values, compared exactly; never empty.
    pub audiences: Vec<String>,
}

impl IdentitySettings {
    /// True when a change between `self` and `other` needs a new key store (the key source
    /// changed). Other identity fields apply without refetching keys.
    pub fn same_key_source(&self, other: &IdentitySettings) -> bool {
        self.metadata_url == other.metadata_url
            && self.jwks_uri == other.jwks_uri
            && self.cache_file == other.cache_file
    }
}

/// How tenants are admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantMode {
    /// Only tenants in `allow` (or the allow-list file).
    AllowList,
    /// Any tenant whose issuer matches a template.
    Any,
    /// A validator decides per tenant.
    Hook(String),
    /// A tenant is admitted when it is `active` in the tenant registry or listed in `allow`.
    Registry,
}

/// `[tenants] on_consent_lost`: what an exchange answer of "not consented" does to an active
/// registry tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsentLost {
    /// `"revoke"` (default): the tenant becomes `revoked` at once, its tokens refused.
    #[default]
    Revoke,
    /// `"keep"`: the tenant stays `active`; only the exchange fails.
    Keep,
}

/// `[tenants]`
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// `mode`: allow-list (default), any, or a tenant hook; `deny` applies in every mode.
    pub mode: TenantMode,
    /// Lower-case tenant GUIDs (from `allow` and `file`).
    pub allow: HashSet<String>,
    /// Lower-case tenant GUIDs; always wins.
    pub deny: HashSet<String>,
    /// Issuer templates containing `{tenantid}` (or fixed issuers).
    pub issuers: Vec<String>,
    /// The allow-list file, watched for changes.
    pub file: Option<PathBuf>,
    /// `registry`: the tenant registry's JSON file (`mode = "registry"`).
    pub registry: Option<PathBuf>,
    /// `on_consent_lost`: revoke (default) or keep a registry tenant whose consent is gone.
    pub on_consent_lost: ConsentLost,
}

/// `[store]`: where replicas share state (SPEC section 10).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    /// `kind`: local or Redis.
    pub kind: StoreKind,
    /// `key_prefix`: every key the gateway writes starts with it; default `aadgate:`.
    pub key_prefix: String,
    /// `timeout`: per operation; default 100 ms.
    pub timeout: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            kind: StoreKind::Local,
            key_prefix: "aadgate:".to_string(),
            timeout: Duration::from_millis(100),
        }
    }
}

/// `[store] kind`.
#[derive(Clone, PartialEq)]
pub enum StoreKind {
    /// In process and files (default).
    Local,
    /// Redis: one server, a Sentinel-managed primary or a cluster; TLS with `rediss`.
    Redis {
        /// `url` (or `AADGATE_STORE_URL`); may hold a password: never logged.
        url: String,
        /// What `url` names.
        target: Box<super::RedisTarget>,
        /// The AES-256-GCM key read from `encryption_key_file`. Never logged.
        encryption_key: Arc<[u8; 32]>,
        /// `encryption_key_file`, resolved against the config folder.
        encryption_key_file: PathBuf,
    },
}

impl std::fmt::Debug for StoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreKind::Local => f.write_str("Local"),
            StoreKind::Redis {
                url,
                encryption_key_file,
                ..
            } => f
                .debug_struct("Redis")
                .field("url", &redact_url(url))
                .field("encryption_key", &"<redacted>")
                .field("encryption_key_file", encryption_key_file)
                .finish(),
        }
    }
}

/// `url` with its password (if any) replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    super::redis_url::redact(url)
}

/// `[onboarding]`: "sign up my organization" through Entra ID admin consent (SPEC section 9).
#[derive(Clone, PartialEq)]
pub struct OnboardingSettings {
    /// `client_id`: the multi-tenant application tenants consent to (lower case).
    pub client_id: String,
    /// `redirect_uri`: the callback URL registered on the application, sent as is.
    pub redirect_uri: String,
    /// `path_prefix`: starts and ends with `/`; default `/.aadgate/onboarding/`.
    pub path_prefix: String,
    /// `authority`: Entra ID's login host, without a trailing `/`; default
    /// `https://login.microsoftonline.com`.
    pub authority: String,
    /// `scope`: the permissions the administrator consents to (space separated).
    pub scope: String,
    /// `verify_exchange`: the exchange whose app-only token request proves consent.
    pub verify_exchange: Option<String>,
    /// `state_key_file`, resolved against the config folder.
    pub state_key_file: PathBuf,
    /// The key read from `state_key_file` (surrounding whitespace removed). Never logged.
    pub state_key: Arc<[u8]>,
    /// `state_ttl`: how long a sign-up link's `state` is accepted; default 10 minutes.
    pub state_ttl: Duration,
    /// `success_url`: where a successful sign-up goes (`tenant=<tid>` appended).
    pub success_url: Option<String>,
}

impl std::fmt::Debug for OnboardingSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnboardingSettings")
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .field("path_prefix", &self.path_prefix)
            .field("authority", &self.authority)
            .field("scope", &self.scope)
            .field("verify_exchange", &self.verify_exchange)
            .field("state_key_file", &self.state_key_file)
            .field("state_key", &"<redacted>")
            .field("state_ttl", &self.state_ttl)
            .field("success_url", &self.success_url)
            .finish()
    }
}

/// `[clients]`
#[derive(Debug, Clone, Default)]
pub struct ClientSettings {
    /// Lower-case client ids; empty = any client.
    pub allow: HashSet<String>,
    /// `min_auth_strength`: lowest accepted `appidacr`/`azpacr`: 0 public, 1 secret, 2 certificate
    /// (default 0).
    pub min_auth_strength: u8,
}

/// `[validators.NAME]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatorSettings {
    /// NAME: the `validator` label of metrics and logs.
    pub name: String,
    /// What the validator runs.
    pub kind: ValidatorKind,
}

/// The two kinds of validator.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidatorKind {
    /// `kind = "http"`: a decision service called over HTTP.
    Http(HttpValidatorSettings),
    /// `kind = "cel"`: an expression evaluated in-process.
    Cel(CelValidatorSettings),
}

/// `[validators.NAME]` with `kind = "cel"`. The expression is compiled when the runtime is
/// built; a compile error is reported at its place in the file through [`Self::error_at`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CelValidatorSettings {
    /// The expression, as written.
    pub expr: String,
    /// The message of a deny.
    pub message: String,
    /// Where the expression's first character is in the configuration file.
    pub at: SourcePosition,
}

/// A 1-based line and column in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    /// The file, as given.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
}

impl CelValidatorSettings {
    /// The configuration error for a problem at 1-based (`line`, `col`) of the expression: the
    /// same file position the loader reports for any other key.
    pub fn error_at(&self, line: usize, col: usize, message: impl Into<String>) -> ConfigError {
        let (line, col) = match self.expr.split_inclusive('\n').nth(line.saturating_sub(1)) {
            // A position past the end of its line is the end of that line.
            Some(text) => {
                let chars = text.trim_end_matches(['\n', '\r']).chars().count();
                let col = col.clamp(1, chars + 1);
                if line <= 1 {
                    (self.at.line, self.at.col + col - 1)
                } else {
                    (self.at.line + line - 1, col)
                }
            }
            None => (self.at.line, self.at.col),
        };
        ConfigError {
            file: self.at.file.clone(),
            line,
            col,
            message: message.into(),
        }
    }
}

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
    /// The URL the gateway POSTs the decision request to.
    pub url: String,
    /// Bound on one call: connect, send, answer and body.
    pub timeout: Duration,
    /// How long a decision (allow or deny) is reused; zero disables the cache.
    pub cache_ttl: Duration,
    /// What an error or timeout means.
    pub on_error: OnError,
    /// The only headers an allow answer may add upstream (`headers`); any other header the
    /// hook returns is dropped with a warn log. Empty: the hook adds none.
    pub headers: Vec<HeaderName>,
}

/// What the token is requested for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeTarget {
    /// v2 endpoint: `scope`, e.g. `https://outlook.office365.com/.default`.
    Scope(String),
    /// v1 endpoint: `resource`, e.g. `https://outlook.office365.com`.
    Resource(String),
}

/// `[exchange.NAME]`, compiled (see `docs/configuration.md` for the file keys).
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeSettings {
    /// NAME: the `exchange` label of metrics and logs.
    pub name: String,
    /// The gateway's application (client) id.
    pub client_id: String,
    /// Token endpoint URL with `{tenantid}`, replaced by the caller's tenant.
    pub token_endpoint: String,
    /// `scope` (v2 endpoint) or `resource` (v1 endpoint).
    pub target: ExchangeTarget,
    /// The certificates of `certificates` / certificate `credentials`, in order.
    pub certificates: Vec<crate::certs::LoadedCertificate>,
    /// How the gateway proves its identity, tried in order; the first that works is used from
    /// then on. Never empty in a loaded configuration.
    pub credentials: Vec<Credential>,
    /// `send_x5c`: certificate assertions carry the chain as `x5c`.
    pub send_x5c: bool,
    /// `client_capabilities` (e.g. `cp1`), sent as the `xms_cc` claims request.
    pub client_capabilities: Vec<String>,
    /// The audience of federated assertions (a managed identity's token is requested for it):
    /// the cloud's `api://AzureADTokenExchange…`.
    pub federated_audience: String,
    /// Token request timeout (connect, send and read). Default 10 s.
    pub timeout: Duration,
    /// How long before expiry a cached token is refreshed (but a token is always reused for
    /// half its lifetime). Default 5 min.
    pub refresh_before_expiry: Duration,
    /// How long a failed token request is answered from the cache. Default 30 s.
    pub failure_cache: Duration,
    /// After an upstream 401 purged a (tenant, scope)'s token, further 401s within this long
    /// purge nothing, so callers who can make the upstream answer 401 cannot turn each request
    /// into a token request. Default 30 s.
    pub purge_interval: Duration,
    /// Most (tenant, scope) entries kept. Default 10000.
    pub max_tenants: u64,
    /// Rewrite `/me` path segments to `/users/<user>`. Default false.
    pub rewrite_me: bool,
    /// `oid` or `upn`: the claim that names the user in that rewrite. Default `oid`.
    pub user_claim: String,
}

/// One way to prove the gateway's identity to the token endpoint (SPEC section 12).
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// A certificate assertion signed with `ExchangeSettings::certificates[index]`.
    Certificate(usize),
    /// Workload identity federation: the file's content is the assertion (re-read each time).
    FederatedTokenFile(PathBuf),
    /// A managed identity's token for the federated audience is the assertion.
    ManagedIdentity {
        /// `None` for the system-assigned identity, else the user-assigned identity's client id.
        client_id: Option<String>,
        /// An IMDS-shaped base URL; `None` = `IDENTITY_ENDPOINT` when set, else IMDS.
        endpoint: Option<String>,
    },
}

impl Credential {
    /// The `kind` label of `aadgate_exchange_credential_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Certificate(_) => "certificate",
            Credential::FederatedTokenFile(_) => "federated",
            Credential::ManagedIdentity { .. } => "managed_identity",
        }
    }
}

/// What a `[[rate_limits]]` entry counts by: the bucket key of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitKey {
    /// `"tenant"`: the token's `tid` (lower case).
    Tenant,
    /// `"client"`: the client application, `appid`/`azp` (lower case).
    Client,
    /// `"tenant_client"`: `tid:client`.
    TenantClient,
    /// `"user"`: `tid:oid`, or `tid:sub` for a token without `oid`.
    User,
}

/// One `[[rate_limits]]` entry, compiled: GCRA with `burst` at once, then `rate` per `period`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// `name`: unique; the `limit` label of metrics and the policy name in the headers.
    pub name: String,
    /// `key`: what the buckets are per.
    pub key: RateLimitKey,
    /// `rate`: requests per `period`, ≥ 1.
    pub rate: u64,
    /// `period`: ≥ 1 ms.
    pub period: Duration,
    /// `burst`: requests a fresh key admits at once, ≥ 1 (default `rate`).
    pub burst: u64,
    /// `routes`: the route names it applies to; `None` = every authenticated route.
    pub routes: Option<Vec<String>>,
    /// `[rate_limits.overrides]`: `(rate, burst)` by key value in its canonical form (GUIDs in
    /// lower case: `tid`, `client`, `tid:client`, `tid:oid`).
    pub overrides: std::collections::BTreeMap<String, (u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let toml = r#"
[server]
listen = ["127.0.0.1:8080"]
[identity]
jwks_uri = "http://127.0.0.1:1/keys"
audiences = ["api://orders"]
[tenants]
mode = "any"
[[routes]]
name = "r"
path_prefix = "/"
upstream = "http://127.0.0.1:1"
[routes.claim_headers]
x-tenant = "tid"
"#;
        let mut c =
            crate::config::load_str(std::path::Path::new("t.toml"), toml).expect("valid config");
        c.validator_header_names
            .insert(HeaderName::from_static("x-plan"));
        c
    }

    #[test]
    fn identity_headers_a_caller_sends_are_stripped_with_underscore_read_as_dash() {
        let c = config();
        for (name, stripped) in [
            ("x-auth-roles", true),
            ("x_auth_roles", true),
            ("X_Auth-Roles", true),
            ("x-auth-anything-new", true),
            ("x_auth_", true),
            ("x-tenant", true),
            ("x_tenant", true),
            ("x-plan", true),
            ("x_plan", true),
            ("x-auth", false),
            ("x-authz", false),
            ("x-plans", false),
            ("accept", false),
            ("x_forwarded_for", false),
        ] {
            let mut h = http::HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                http::HeaderValue::from_static("Admin"),
            );
            h.insert("accept", http::HeaderValue::from_static("*/*"));
            let found = c.spoofable_headers(&h);
            assert_eq!(
                !found.is_empty() && found.iter().all(|n| n.as_str() != "accept"),
                stripped,
                "{name}: {found:?}"
            );
        }
    }

    #[test]
    fn a_configured_name_with_underscore_matches_its_dash_form() {
        let mut c = config();
        c.claim_header_names
            .insert(HeaderName::from_static("x_custom_claim"));
        let mut h = http::HeaderMap::new();
        h.insert("x-custom-claim", http::HeaderValue::from_static("1"));
        h.insert("x-other", http::HeaderValue::from_static("1"));
        assert_eq!(
            c.spoofable_headers(&h),
            vec![HeaderName::from_static("x-custom-claim")]
        );
    }
}
