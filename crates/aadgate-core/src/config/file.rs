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
    pub server: Option<Spanned<ServerFile>>,
    pub identity: Option<Spanned<IdentityFile>>,
    pub tenants: Option<Spanned<TenantsFile>>,
    pub clients: Option<Spanned<ClientsFile>>,
    pub validators: BTreeMap<String, Spanned<ValidatorFile>>,
    pub declared_validators: BTreeSet<String>,
    pub routes: Vec<Spanned<RouteFile>>,
    pub exchange: BTreeMap<String, Spanned<ExchangeFile>>,
    pub declared_exchanges: BTreeSet<String>,
}

/// The top-level tables a configuration file may have.
const SECTIONS: [&str; 7] = [
    "server",
    "identity",
    "tenants",
    "clients",
    "validators",
    "routes",
    "exchange",
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
    pub listen: Spanned<Vec<Spanned<String>>>,
    pub admin_listen: Option<Spanned<String>>,
    pub workers: Option<Spanned<usize>>,
    pub max_token_bytes: Option<Spanned<usize>>,
    pub max_uri_bytes: Option<Spanned<usize>>,
    pub path_case: Option<Spanned<String>>,
    pub upstream_connect_timeout: Option<Raw<Duration>>,
    pub upstream_read_timeout: Option<Raw<Duration>>,
    pub shutdown_grace: Option<Raw<Duration>>,
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
    pub refresh_interval: Option<Raw<Duration>>,
    pub min_refetch_interval: Option<Raw<Duration>>,
    pub cache_file: Option<Spanned<String>>,
    pub token_cache_size: Option<Raw<u64>>,
    pub clock_skew: Option<Raw<Duration>>,
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
    pub min_auth_strength: Option<Raw<u8>>,
}

/// `[validators.NAME]`: one flat table for both kinds, so every key keeps its position; which
/// keys a kind accepts is checked when compiling.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidatorFile {
    pub kind: Spanned<String>,
    pub url: Option<Spanned<String>>,
    pub timeout: Option<Raw<Duration>>,
    pub cache_ttl: Option<Raw<Duration>>,
    pub on_error: Option<Spanned<String>>,
    pub expr: Option<Spanned<String>>,
    pub message: Option<Spanned<String>>,
    pub headers: Option<Spanned<Vec<Spanned<String>>>>,
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
    pub min_auth_strength: Option<Raw<u8>>,
    #[serde(default)]
    pub validators: Vec<Spanned<String>>,
    pub pass_authorization: Option<Raw<bool>>,
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
    pub timeout: Option<Raw<Duration>>,
    pub refresh_before_expiry: Option<Raw<Duration>>,
    pub failure_cache: Option<Raw<Duration>>,
    pub purge_interval: Option<Raw<Duration>>,
    pub max_tenants: Option<Raw<u64>>,
    pub rewrite_me: Option<Raw<bool>>,
    pub user_claim: Option<Spanned<String>>,
}

/// One `{ cert = "…", key = "…" }` entry of `certificates`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}
