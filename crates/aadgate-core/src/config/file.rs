//! The file model: serde types that mirror the TOML document one to one.
//!
//! Every table and every value that a later validation step may need to point at is wrapped in
//! [`Spanned`], so errors can name the file, line and column. Nothing here has defaults beyond
//! "absent"; defaults and meaning are applied when the file model is compiled into the runtime
//! model (`super::compile`).
//!
//! So that one run reports every mistake of a file, reading stops as little as possible:
//! [`parse`] reads each top-level table, each `[[routes]]` entry, each `[validators.NAME]` and
//! each `[exchange.NAME]` on its own (a problem in one does not hide the others), and typed
//! leaf values (durations, numbers, booleans) are kept as written ([`Raw`]) and converted when
//! compiling, where their errors join all the others. Only a TOML syntax error ends reading.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_spanned::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::duration::Duration;
use super::error::Reporter;

/// A leaf value as written in the file, with its position; [`Raw::parse`] converts it to `T`.
/// Reading a `Raw` never fails, so a bad value is reported with the file's other errors rather
/// than ending the read.
pub struct Raw<T> {
    value: Spanned<toml::Value>,
    _type: PhantomData<fn() -> T>,
}

impl<T> Raw<T> {
    /// Where the value is written.
    pub fn span(&self) -> Range<usize> {
        self.value.span()
    }
}

/// Why a value kept as written ([`Raw`]) does not convert to its type: the deserializer's
/// message (e.g. a [`DurationError`](super::duration::DurationError)'s text, or "invalid type:
/// string, expected u8"). The position is the value's [`Raw::span`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.message().trim_end())]
pub struct ValueError(toml::de::Error);

impl<T: DeserializeOwned> Raw<T> {
    /// The value converted to `T`, or the reason it cannot be (e.g. a duration without unit,
    /// a string where a number belongs).
    pub fn parse(&self) -> Result<T, ValueError> {
        self.value
            .get_ref()
            .clone()
            .try_into::<T>()
            .map_err(ValueError)
    }
}

impl<'de, T> Deserialize<'de> for Raw<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Raw {
            value: Spanned::<toml::Value>::deserialize(deserializer)?,
            _type: PhantomData,
        })
    }
}

impl<T> fmt::Debug for Raw<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.value.get_ref())
    }
}

/// The whole configuration file. A required table is `None` when it is missing or could not be
/// read (the error has been reported); the names of every `[validators.NAME]` and
/// `[exchange.NAME]` table are kept even when the table itself could not be read, so references
/// to them are not reported a second time.
#[derive(Debug, Default)]
pub struct ConfigFile {
    /// `[server]`; required (`None` when missing or unreadable, already reported).
    pub server: Option<Spanned<ServerFile>>,
    /// `[identity]`; required (`None` when missing or unreadable, already reported).
    pub identity: Option<Spanned<IdentityFile>>,
    /// `[tenants]`; required, may be empty (`None` when missing or unreadable, already reported).
    pub tenants: Option<Spanned<TenantsFile>>,
    /// `[clients]`; optional: absent means any client at strength 0.
    pub clients: Option<Spanned<ClientsFile>>,
    /// The `[validators.NAME]` tables that could be read, by `NAME`.
    pub validators: BTreeMap<String, Spanned<ValidatorFile>>,
    /// Every `NAME` of a `[validators.NAME]` table, also those that could not be read.
    pub declared_validators: BTreeSet<String>,
    /// The `[[routes]]` entries that could be read, in file order (the order breaks prefix ties).
    pub routes: Vec<Spanned<RouteFile>>,
    /// The `[exchange.NAME]` tables that could be read, by `NAME`.
    pub exchange: BTreeMap<String, Spanned<ExchangeFile>>,
    /// Every `NAME` of an `[exchange.NAME]` table, also those that could not be read.
    pub declared_exchanges: BTreeSet<String>,
    /// `[onboarding]`; optional: absent means no sign-up pages.
    pub onboarding: Option<Spanned<OnboardingFile>>,
    /// `[store]`; optional: absent means the local store.
    pub store: Option<Spanned<StoreFile>>,
    /// The `[[rate_limits]]` entries that could be read, in file order.
    pub rate_limits: Vec<Spanned<RateLimitFile>>,
}

/// The top-level tables a configuration file may have.
const SECTIONS: [&str; 10] = [
    "server",
    "identity",
    "tenants",
    "clients",
    "validators",
    "routes",
    "exchange",
    "onboarding",
    "store",
    "rate_limits",
];

/// Reads `source` into the file model, recording every problem in `r`. Returns `None` only for
/// a TOML syntax error (nothing after it can be read); otherwise the tables that could be read,
/// the others having been reported.
pub fn parse(source: &str, r: &mut Reporter<'_>) -> Option<ConfigFile> {
    let root = match DeTable::parse(source) {
        Ok(root) => root,
        Err(e) => {
            r.error(e.span().unwrap_or(0..0), e.message().trim_end().to_string());
            return None;
        }
    };
    let root_span = root.span();
    let mut f = ConfigFile::default();
    let mut seen = BTreeSet::new();
    for (key, value) in root.into_inner() {
        let name = key.get_ref().as_ref();
        seen.insert(name.to_string());
        match name {
            "server" => f.server = read(r, value),
            "identity" => f.identity = read(r, value),
            "tenants" => f.tenants = read(r, value),
            "clients" => f.clients = read(r, value),
            "onboarding" => f.onboarding = read(r, value),
            "store" => f.store = read(r, value),
            "validators" => {
                for (name, v) in named_tables(r, value, "validators") {
                    f.declared_validators.insert(name.clone());
                    if let Some(v) = read(r, v) {
                        f.validators.insert(name, v);
                    }
                }
            }
            "exchange" => {
                for (name, v) in named_tables(r, value, "exchange") {
                    f.declared_exchanges.insert(name.clone());
                    if let Some(v) = read(r, v) {
                        f.exchange.insert(name, v);
                    }
                }
            }
            "routes" => {
                let span = value.span();
                match value.into_inner() {
                    DeValue::Array(list) => {
                        f.routes = list.into_iter().filter_map(|v| read(r, v)).collect();
                    }
                    other => r.error(
                        span,
                        format!(
                            "invalid type: {}, expected an array of tables ([[routes]])",
                            other.type_str()
                        ),
                    ),
                }
            }
            "rate_limits" => f.rate_limits = array_of_tables(r, value, "rate_limits"),
            other => r.error(
                key.span(),
                format!(
                    "unknown field `{other}`, expected one of {}",
                    SECTIONS.map(|s| format!("`{s}`")).join(", ")
                ),
            ),
        }
    }
    for required in ["server", "identity", "tenants"] {
        if !seen.contains(required) {
            r.error(
                root_span.start..root_span.start,
                format!("missing field `{required}`"),
            );
        }
    }
    Some(f)
}

/// Deserializes one value on its own; a problem is recorded and gives `None`.
fn read<'i, T: Deserialize<'i>>(r: &mut Reporter<'_>, value: Spanned<DeValue<'i>>) -> Option<T> {
    let span = value.span();
    match T::deserialize(ValueDeserializer::from(value)) {
        Ok(v) => Some(v),
        Err(e) => {
            r.error(e.span().unwrap_or(span), e.message().trim_end().to_string());
            None
        }
    }
}

/// The entries of a `[[NAME]]` array of tables that could be read; the others are reported.
fn array_of_tables<'i, T: Deserialize<'i>>(
    r: &mut Reporter<'_>,
    value: Spanned<DeValue<'i>>,
    what: &str,
) -> Vec<T> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(list) => list.into_iter().filter_map(|v| read(r, v)).collect(),
        other => {
            r.error(
                span,
                format!(
                    "invalid type: {}, expected an array of tables ([[{what}]])",
                    other.type_str()
                ),
            );
            Vec::new()
        }
    }
}

/// The `NAME = { … }` entries of a `[validators]` or `[exchange]` table.
fn named_tables<'i>(
    r: &mut Reporter<'_>,
    value: Spanned<DeValue<'i>>,
    what: &str,
) -> Vec<(String, Spanned<DeValue<'i>>)> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Table(t) => t
            .into_iter()
            .map(|(k, v)| (k.get_ref().to_string(), v))
            .collect(),
        other => {
            r.error(
                span,
                format!(
                    "invalid type: {}, expected a table of [{what}.NAME] tables",
                    other.type_str()
                ),
            );
            Vec::new()
        }
    }
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// `listen`: data-plane listeners, `"IP:PORT"`; required, non-empty; restart to change.
    pub listen: Spanned<Vec<Spanned<String>>>,
    /// `admin_listen`: `"IP:PORT"` for `/metrics`, `/healthz`, `/readyz`; absent = no admin
    /// listener.
    pub admin_listen: Option<Spanned<String>>,
    /// `workers`: proxy worker threads, ≥ 1; default the number of CPU cores; read at start.
    pub workers: Option<Spanned<usize>>,
    /// `max_token_bytes`: longest bearer token, in bytes, ≥ 64; default 16384; longer →
    /// `401 malformed_token`.
    pub max_token_bytes: Option<Spanned<usize>>,
    /// `max_uri_bytes`: longest request target, in bytes, ≥ 64; default 8192; longer →
    /// `414 uri_too_long`.
    pub max_uri_bytes: Option<Spanned<usize>>,
    /// `path_case`: `"insensitive"` (default, route prefixes fold ASCII case) or `"sensitive"`.
    pub path_case: Option<Spanned<String>>,
    /// `upstream_connect_timeout`: TCP (and TLS) connect to the upstream; default `"5s"`.
    pub upstream_connect_timeout: Option<Raw<Duration>>,
    /// `upstream_read_timeout`: longest wait between bytes of the upstream's answer; default
    /// `"60s"`.
    pub upstream_read_timeout: Option<Raw<Duration>>,
    /// `shutdown_grace`: how long in-flight requests may finish after SIGTERM/SIGINT; default
    /// `"30s"`.
    pub shutdown_grace: Option<Raw<Duration>>,
    /// `upgrade_sock`: Unix socket for the graceful upgrade; default `upgrade.sock` in the runtime
    /// folder; relative to the config file's folder.
    pub upgrade_sock: Option<Spanned<String>>,
    /// `tls`: PEM certificate chain and key for every `listen` address; absent = plain HTTP.
    pub tls: Option<Spanned<TlsFile>>,
    /// `h2c`: also accept cleartext HTTP/2 with prior knowledge on `listen`; default `false`;
    /// read at start.
    pub h2c: Option<Raw<bool>>,
    /// `tunnel_idle_timeout`: an upgraded connection (WebSocket) with no bytes in either
    /// direction for this long is closed; default `"5m"`.
    pub tunnel_idle_timeout: Option<Raw<Duration>>,
}

/// `[server] tls = { cert = …, key = … }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// `cert`: path of the PEM certificate chain, relative to the config file's folder.
    pub cert: Spanned<String>,
    /// `key`: path of the PEM private key, relative to the config file's folder.
    pub key: Spanned<String>,
}

/// `[identity]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// `cloud`: `"public"` (default), `"usgov"` or `"china"`: the defaults of `metadata_url`,
    /// `[tenants] issuers`, the onboarding `authority` and the federated-credential audience.
    pub cloud: Option<Spanned<String>>,
    /// `metadata_url`: OpenID Connect metadata document whose `jwks_uri` is used; optional when
    /// `jwks_uri` is set (one of the two is required).
    pub metadata_url: Option<Spanned<String>>,
    /// `jwks_uri`: the JWKS itself; wins over `metadata_url` (the metadata is then not fetched).
    pub jwks_uri: Option<Spanned<String>>,
    /// `refresh_interval`: background JWKS refresh period, at least `"1s"`; default `"1h"`.
    pub refresh_interval: Option<Raw<Duration>>,
    /// `min_refetch_interval`: least time between two JWKS fetches (bounds kid-miss refetches), at
    /// least `"1s"`; default `"30s"`.
    pub min_refetch_interval: Option<Raw<Duration>>,
    /// `cache_file`: last-known-good JWKS, written after each good fetch, read at start when the
    /// endpoints are unreachable; absent = none; relative to the config file's folder.
    pub cache_file: Option<Spanned<String>>,
    /// `token_cache_size`: verified-token cache, in entries; `0` turns it off; default 100000.
    pub token_cache_size: Option<Raw<u64>>,
    /// `clock_skew`: tolerance for `exp`, `nbf` and `iat`; default `"5m"`.
    pub clock_skew: Option<Raw<Duration>>,
    /// `algorithms`: accepted JWS `alg` values (`RS256`…`RS512`, `PS256`…`PS512`); default
    /// `["RS256"]`.
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    /// `audiences`: accepted `aud` values; required, non-empty.
    pub audiences: Spanned<Vec<Spanned<String>>>,
}

/// `[tenants]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    /// `mode`: `"allow_list"` (default), `"any"`, `"hook"` or `"registry"`.
    pub mode: Option<Spanned<String>>,
    /// `allow`: tenant GUIDs admitted in `allow_list` mode; default `[]`.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// `deny`: tenant GUIDs always refused (`401 tenant_denied`), in every mode; default `[]`.
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    /// `issuers`: accepted `iss` templates, `{tenantid}` replaced by the token's `tid`; default the
    /// v1 and v2 Entra ID forms.
    pub issuers: Option<Spanned<Vec<Spanned<String>>>>,
    /// `file`: extra allow-list file ([`TenantListFile`]), reloaded when it changes; absent = none.
    pub file: Option<Spanned<String>>,
    /// `hook`: with `mode = "hook"`, the `[validators.NAME]` that decides per tenant.
    pub hook: Option<Spanned<String>>,
    /// `registry`: with `mode = "registry"`, the JSON file of the tenant registry; required in
    /// that mode.
    pub registry: Option<Spanned<String>>,
    /// `on_consent_lost`: `"revoke"` (default) or `"keep"`: what an exchange answer of "not
    /// consented" does to an active registry tenant.
    pub on_consent_lost: Option<Spanned<String>>,
}

/// `[store]`: where replicas share state (SPEC section 10).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    /// `kind`: `"local"` (default) or `"redis"`.
    pub kind: Option<Spanned<String>>,
    /// `url`: `redis://`, `redis+sentinel://` or `redis+cluster://` URL, `rediss…` for TLS (ACL
    /// user and password may be in it; see [`crate::config::RedisTarget`]); with
    /// `kind = "redis"`, required unless `AADGATE_STORE_URL` is set.
    pub url: Option<Spanned<String>>,
    /// `key_prefix`: every key starts with it; default `"aadgate:"`.
    pub key_prefix: Option<Spanned<String>>,
    /// `timeout`: per store operation; default `"100ms"`.
    pub timeout: Option<Raw<Duration>>,
    /// `encryption_key_file`: 32 bytes (raw, or base64 text) that encrypt app-only tokens in the
    /// store; required with `kind = "redis"`.
    pub encryption_key_file: Option<Spanned<String>>,
}

/// `[onboarding]`: the "sign up my organization" pages (SPEC section 9).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnboardingFile {
    /// `client_id`: the multi-tenant application tenants consent to; required.
    pub client_id: Spanned<String>,
    /// `redirect_uri`: the callback URL registered on the application; required.
    pub redirect_uri: Spanned<String>,
    /// `path_prefix`: where the gateway serves `start` and `callback`; default
    /// `"/.aadgate/onboarding/"`.
    pub path_prefix: Option<Spanned<String>>,
    /// `authority`: the Entra ID login host; default `"https://login.microsoftonline.com"`.
    pub authority: Option<Spanned<String>>,
    /// `scope`: the permissions the administrator consents to; default: the scope of
    /// `verify_exchange` (required without it).
    pub scope: Option<Spanned<String>>,
    /// `verify_exchange`: the `[exchange.NAME]` that proves consent with an app-only token
    /// request; absent = new tenants wait as `pending`.
    pub verify_exchange: Option<Spanned<String>>,
    /// `state_key_file`: the HMAC key for `state` (at least 32 bytes); required.
    pub state_key_file: Spanned<String>,
    /// `state_ttl`: how long a sign-up link stays valid; default `"10m"`.
    pub state_ttl: Option<Raw<Duration>>,
    /// `success_url`: where a successful sign-up is redirected (with `tenant=<tid>`); absent = a
    /// built-in page.
    pub success_url: Option<Spanned<String>>,
}

/// The optional extra tenant allow-list file named by `[tenants] file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantListFile {
    /// `allow`: tenant GUIDs added to `[tenants] allow`; default `[]`.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
}

/// `[clients]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsFile {
    /// `allow`: client ids (`appid`/`azp`) allowed on routes without their own `clients`; default
    /// `[]` = any client.
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    /// `min_auth_strength`: lowest client authentication strength, `0`, `1` or `2`; default `0`.
    pub min_auth_strength: Option<Raw<u8>>,
}

/// `[validators.NAME]`: one flat table for both kinds, so every key keeps its position; which
/// keys a kind accepts is checked when compiling.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorFile {
    /// `kind`: `"http"` or `"cel"`; required; decides which of the other keys are allowed.
    pub kind: Spanned<String>,
    /// `url` (`http`): where the decision request is POSTed; required for `http`.
    pub url: Option<Spanned<String>>,
    /// `timeout` (`http`): bound on one call; default `"500ms"`.
    pub timeout: Option<Raw<Duration>>,
    /// `cache_ttl` (`http`): how long a decision is reused; `"0s"` = no cache; default `"60s"`.
    pub cache_ttl: Option<Raw<Duration>>,
    /// `on_error` (`http`): `"deny"` (default, `503 hook_unavailable`) or `"allow"`.
    pub on_error: Option<Spanned<String>>,
    /// `expr` (`cel`): the CEL expression; required for `cel`.
    pub expr: Option<Spanned<String>>,
    /// `message` (`cel`): the `403 hook_denied` message; default names the validator.
    pub message: Option<Spanned<String>>,
    /// `headers` (`http`): the only headers an allow answer may add upstream; default `[]`.
    pub headers: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// `name`: unique, non-empty; the route's metrics label and log field; required.
    pub name: Spanned<String>,
    /// `path_prefix`: starts with `/`, matched against the normalized path; required.
    pub path_prefix: Spanned<String>,
    /// `host`: exact host match, case-insensitive, port ignored; absent = any host.
    pub host: Option<Spanned<String>>,
    /// `methods`: case-insensitive method names; absent = all methods.
    pub methods: Option<Vec<Spanned<String>>>,
    /// `upstream`: `scheme://host[:port]`, `http`, `https` or `h2c`, no path; required.
    pub upstream: Spanned<String>,
    /// `upstream_protocol`: `"http1"` (default for `http`/`https`) or `"h2"` (`https`: offer h2
    /// then HTTP/1.1 by ALPN; implied by `h2c://`).
    pub upstream_protocol: Option<Spanned<String>>,
    /// `close_on_token_expiry`: close an open WebSocket tunnel when the caller's token expires;
    /// default `false`.
    pub close_on_token_expiry: Option<Raw<bool>>,
    /// `strip_prefix`: removed from the front of the path before forwarding; absent = none.
    pub strip_prefix: Option<Spanned<String>>,
    /// `auth`: `"required"` (default) or `"anonymous"`.
    pub auth: Option<Spanned<String>>,
    /// `token_kind`: `"any"` (default), `"app"` or `"user"`.
    pub token_kind: Option<Spanned<String>>,
    /// `roles_any`: the token's `roles` must contain at least one; default `[]` (no requirement).
    #[serde(default)]
    pub roles_any: Vec<Spanned<String>>,
    /// `roles_all`: the token's `roles` must contain all; default `[]`.
    #[serde(default)]
    pub roles_all: Vec<Spanned<String>>,
    /// `scopes_any`: the token's `scp` must contain at least one; default `[]` (no requirement).
    #[serde(default)]
    pub scopes_any: Vec<Spanned<String>>,
    /// `scopes_all`: the token's `scp` must contain all; default `[]`.
    #[serde(default)]
    pub scopes_all: Vec<Spanned<String>>,
    /// `clients`: replaces `[clients] allow` for this route; absent = the global list.
    pub clients: Option<Vec<Spanned<String>>>,
    /// `min_auth_strength`: `0`, `1` or `2`; raises (never lowers) `[clients] min_auth_strength`.
    pub min_auth_strength: Option<Raw<u8>>,
    /// `validators`: names of `[validators.NAME]` to run, in order; default `[]`.
    #[serde(default)]
    pub validators: Vec<Spanned<String>>,
    /// `pass_authorization`: forward the caller's `Authorization` unchanged; default `true`.
    pub pass_authorization: Option<Raw<bool>>,
    /// `exchange`: name of the `[exchange.NAME]` whose app-only token replaces `Authorization`.
    pub exchange: Option<Spanned<String>>,
    /// `[routes.claim_headers]`: header name = claim; replaces the default set; absent = defaults.
    pub claim_headers: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
}

/// `[exchange.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeFile {
    /// `client_id`: the gateway's application (client) id; required.
    pub client_id: Spanned<String>,
    /// `token_endpoint`: URL containing `{tenantid}`; required.
    pub token_endpoint: Spanned<String>,
    /// `scope`: for a v2 endpoint; exactly one of `scope` and `resource`.
    pub scope: Option<Spanned<String>>,
    /// `resource`: for a v1 endpoint; exactly one of `scope` and `resource`.
    pub resource: Option<Spanned<String>>,
    /// `certificates`: PEM certificate and RSA key pairs; the first signs; the shorthand of
    /// `credentials` made of certificates only. One of `certificates` and `credentials`.
    pub certificates: Option<Spanned<Vec<Spanned<CertificateFile>>>>,
    /// `credentials`: how the gateway proves its identity, tried in order (SPEC section 12).
    pub credentials: Option<Spanned<Vec<Spanned<CredentialFile>>>>,
    /// `send_x5c`: put the certificate chain in the assertion header as `x5c`; default false.
    pub send_x5c: Option<Raw<bool>>,
    /// `client_capabilities`: e.g. `["cp1"]` (continuous access evaluation); default `[]`.
    pub client_capabilities: Option<Spanned<Vec<Spanned<String>>>>,
    /// `timeout`: one token request; default `"10s"`.
    pub timeout: Option<Raw<Duration>>,
    /// `refresh_before_expiry`: renew a cached token this long before it expires; default `"5m"`.
    pub refresh_before_expiry: Option<Raw<Duration>>,
    /// `failure_cache`: how long a failed token request is answered from the cache; default
    /// `"30s"`.
    pub failure_cache: Option<Raw<Duration>>,
    /// `purge_interval`: at most one purge per (tenant, scope) after upstream 401s in this long;
    /// default `"30s"`.
    pub purge_interval: Option<Raw<Duration>>,
    /// `max_tenants`: bound on cached (tenant, scope) tokens, in entries, ≥ 1; default 10000.
    pub max_tenants: Option<Raw<u64>>,
    /// `rewrite_me`: rewrite a `/me` path segment to `/users/<user>`; default `false`.
    pub rewrite_me: Option<Raw<bool>>,
    /// `user_claim`: `"oid"` (default) or `"upn"`: the claim naming the user in that rewrite.
    pub user_claim: Option<Spanned<String>>,
}

/// One `{ cert = "…", key = "…" }` entry of `certificates`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    /// `cert`: path of the PEM certificate, relative to the config file's folder.
    pub cert: Spanned<String>,
    /// `key`: path of the unencrypted PEM RSA key (≥ 2048 bits), relative to the config file's
    /// folder.
    pub key: Spanned<String>,
}

/// One entry of `[exchange.NAME] credentials`: exactly one of `certificate` (with `key`),
/// `federated_token_file` and `managed_identity`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialFile {
    /// `certificate`: PEM certificate (chain) path; with `key`.
    pub certificate: Option<Spanned<String>>,
    /// `key`: the certificate's PEM RSA key path.
    pub key: Option<Spanned<String>>,
    /// `federated_token_file`: the file whose content is the client assertion (workload
    /// identity); `""` or `"$VAR"` read the path from `AZURE_FEDERATED_TOKEN_FILE` or `VAR`.
    pub federated_token_file: Option<Spanned<String>>,
    /// `managed_identity`: `"system"` or a user-assigned identity's client id.
    pub managed_identity: Option<Spanned<String>>,
    /// `managed_identity_endpoint`: base URL of an IMDS-shaped endpoint, instead of IMDS or
    /// `IDENTITY_ENDPOINT`.
    pub managed_identity_endpoint: Option<Spanned<String>>,
}

/// `[[rate_limits]]` (SPEC section 11).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    /// `name`: unique; letters, digits, `-`, `_`, `.`; the metrics label and header policy name;
    /// required.
    pub name: Spanned<String>,
    /// `key`: `"tenant"`, `"client"`, `"tenant_client"` or `"user"`; required.
    pub key: Spanned<String>,
    /// `rate`: requests per `period`, ≥ 1; required.
    pub rate: Raw<u64>,
    /// `period`: at least `"1ms"`; required.
    pub period: Raw<Duration>,
    /// `burst`: requests a fresh key admits at once, ≥ 1; default `rate`.
    pub burst: Option<Raw<u64>>,
    /// `routes`: names of `[[routes]]` it applies to; absent = every authenticated route.
    pub routes: Option<Spanned<Vec<Spanned<String>>>>,
    /// `[rate_limits.overrides]`: key value = `{ rate, burst }`; absent = none.
    pub overrides: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RateOverrideFile>>>>,
}

/// One `"<key value>" = { rate = …, burst = … }` of `[rate_limits.overrides]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverrideFile {
    /// `rate`: ≥ 1; default the limit's `rate`.
    pub rate: Option<Raw<u64>>,
    /// `burst`: ≥ 1; default this override's `rate` when it sets one, else the limit's `burst`.
    pub burst: Option<Raw<u64>>,
}
