//! The file model: serde types that mirror the TOML document one to one.
//!
//! Every table and every value that a later validation step may need to point at is wrapped in
//! [`Spanned`], so errors can name the file, line and column. Nothing here has defaults beyond
//! "absent"; defaults and meaning are applied when the file model is compiled into the runtime
//! model (`super::compile`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_spanned::Spanned;

use super::duration::Duration;

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub server: Spanned<ServerFile>,
    pub identity: Spanned<IdentityFile>,
    pub tenants: Spanned<TenantsFile>,
    #[serde(default)]
    pub clients: Option<Spanned<ClientsFile>>,
    #[serde(default)]
    pub validators: BTreeMap<String, Spanned<ValidatorFile>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteFile>>,
    #[serde(default)]
    pub exchange: BTreeMap<String, Spanned<ExchangeFile>>,
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Spanned<Vec<Spanned<String>>>,
    pub admin_listen: Option<Spanned<String>>,
    pub workers: Option<Spanned<usize>>,
    pub max_token_bytes: Option<Spanned<usize>>,
    pub max_uri_bytes: Option<Spanned<usize>>,
    pub path_case: Option<Spanned<String>>,
    pub upstream_connect_timeout: Option<Spanned<Duration>>,
    pub upstream_read_timeout: Option<Spanned<Duration>>,
    pub shutdown_grace: Option<Spanned<Duration>>,
    pub upgrade_sock: Option<Spanned<String>>,
    pub tls: Option<Spanned<TlsFile>>,
}

/// `[server] tls = { cert = …, key = … }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[identity]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    pub metadata_url: Option<Spanned<String>>,
    pub jwks_uri: Option<Spanned<String>>,
    pub refresh_interval: Option<Spanned<Duration>>,
    pub min_refetch_interval: Option<Spanned<Duration>>,
    pub cache_file: Option<Spanned<String>>,
    pub token_cache_size: Option<Spanned<u64>>,
    pub clock_skew: Option<Spanned<Duration>>,
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub audiences: Spanned<Vec<Spanned<String>>>,
}

/// `[tenants]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    pub issuers: Option<Spanned<Vec<Spanned<String>>>>,
    pub file: Option<Spanned<String>>,
    pub hook: Option<Spanned<String>>,
}

/// The optional extra tenant allow-list file named by `[tenants] file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantListFile {
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
}

/// `[clients]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsFile {
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    pub min_auth_strength: Option<Spanned<u8>>,
}

/// `[validators.NAME]`: one flat table for both kinds, so every key keeps its position; which
/// keys a kind accepts is checked when compiling.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorFile {
    pub kind: Spanned<String>,
    pub url: Option<Spanned<String>>,
    pub timeout: Option<Spanned<Duration>>,
    pub cache_ttl: Option<Spanned<Duration>>,
    pub on_error: Option<Spanned<String>>,
    pub expr: Option<Spanned<String>>,
    pub message: Option<Spanned<String>>,
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Spanned<String>,
    pub path_prefix: Spanned<String>,
    pub host: Option<Spanned<String>>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub upstream: Spanned<String>,
    pub strip_prefix: Option<Spanned<String>>,
    pub auth: Option<Spanned<String>>,
    pub token_kind: Option<Spanned<String>>,
    #[serde(default)]
    pub roles_any: Vec<Spanned<String>>,
    #[serde(default)]
    pub roles_all: Vec<Spanned<String>>,
    #[serde(default)]
    pub scopes_any: Vec<Spanned<String>>,
    #[serde(default)]
    pub scopes_all: Vec<Spanned<String>>,
    pub clients: Option<Vec<Spanned<String>>>,
    pub min_auth_strength: Option<Spanned<u8>>,
    #[serde(default)]
    pub validators: Vec<Spanned<String>>,
    pub pass_authorization: Option<Spanned<bool>>,
    pub exchange: Option<Spanned<String>>,
    pub claim_headers: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
}

/// `[exchange.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeFile {
    pub client_id: Spanned<String>,
    pub token_endpoint: Spanned<String>,
    pub scope: Option<Spanned<String>>,
    pub resource: Option<Spanned<String>>,
    pub certificates: Spanned<Vec<Spanned<CertificateFile>>>,
    pub timeout: Option<Spanned<Duration>>,
    pub refresh_before_expiry: Option<Spanned<Duration>>,
    pub failure_cache: Option<Spanned<Duration>>,
    pub max_tenants: Option<Spanned<u64>>,
    pub rewrite_me: Option<Spanned<bool>>,
    pub user_claim: Option<Spanned<String>>,
}

/// One `{ cert = "…", key = "…" }` entry of `certificates`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}
