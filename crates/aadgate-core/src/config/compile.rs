//! Compiles the file model into the runtime model, reporting every semantic error at once.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use serde_spanned::Spanned;

use super::error::{ConfigErrors, Reporter};
use super::file::{self, ConfigFile, Raw};
use super::model::*;
use crate::auth::hooks::{HttpValidatorSettings, OnError, Validator};
use crate::exchange::{ExchangeSettings, ExchangeTarget, Exchanger};

/// Default `[server] max_token_bytes`.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Default `[server] max_uri_bytes`.
pub const DEFAULT_MAX_URI_BYTES: usize = 8192;
/// Default `[identity] refresh_interval`.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(3600);
/// Default `[identity] min_refetch_interval`.
pub const DEFAULT_MIN_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// Default `[identity] clock_skew`.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(300);
/// Default `[identity] token_cache_size`.
pub const DEFAULT_TOKEN_CACHE_SIZE: u64 = 100_000;
/// Default `[exchange.NAME] purge_interval`.
pub const DEFAULT_PURGE_INTERVAL: Duration = Duration::from_secs(30);
/// The AAD issuer templates used when `[tenants] issuers` is absent.
pub const DEFAULT_ISSUERS: [&str; 2] = [
    "https://sts.windows.net/{tenantid}/",
    "https://login.microsoftonline.com/{tenantid}/v2.0",
];

/// Reads and compiles the configuration at `path`. `previous`, the running configuration on a
/// reload, lets stateful parts (hook decision caches, app-only token caches) carry over when
/// their settings did not change.
pub fn load(path: &Path, previous: Option<&Config>) -> Result<Config, ConfigErrors> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![super::ConfigError {
            file: path.to_path_buf(),
            line: 1,
            col: 1,
            message: format!("cannot read the configuration file: {e}"),
        }])
    })?;
    load_str(path, &source, previous)
}

/// Compiles configuration text as if read from `path` (relative paths resolve against its
/// folder).
pub fn load_str(
    path: &Path,
    source: &str,
    previous: Option<&Config>,
) -> Result<Config, ConfigErrors> {
    let mut r = Reporter::new(path, source);
    let Some(parsed) = file::parse(source, &mut r) else {
        return Err(ConfigErrors(r.errors));
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut c = Compiler {
        r,
        base,
        path_case: PathCase::default(),
    };
    let config = c.config(path, parsed, previous);
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
                self.r.error(v.span(), m);
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

    fn config(&mut self, path: &Path, f: ConfigFile, previous: Option<&Config>) -> Option<Config> {
        let server = f.server.as_ref().and_then(|s| self.server(s));
        let identity = f.identity.as_ref().and_then(|s| self.identity(s));
        let tenants = f.tenants.as_ref().and_then(|s| self.tenants(s, &f));
        let clients = self.clients(f.clients.as_ref());
        let validators = self.validators(&f.validators, previous);
        let exchanges = self.exchanges(&f.exchange, previous);
        let routes = self.routes(&f, &validators, &exchanges, &clients);

        let mut claim_header_names: HashSet<HeaderName> = default_claim_headers()
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        for route in &routes {
            claim_header_names.extend(route.claim_headers.iter().map(|(h, _)| h.clone()));
        }
        let validator_header_names = self.validator_headers(&f, &claim_header_names);
        Some(Config {
            path: path.to_path_buf(),
            server: server?,
            identity: identity?,
            tenants: tenants?,
            clients,
            validators,
            routes,
            exchanges,
            claim_header_names,
            validator_header_names,
            warnings: Vec::new(),
        })
    }

    fn socket_addr(&mut self, s: &Spanned<String>) -> Option<SocketAddr> {
        match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.r.error(
                    s.span(),
                    format!(
                        "{:?} is not a socket address; write IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::]:8080\"",
                        s.get_ref()
                    ),
                );
                None
            }
        }
    }

    fn server(&mut self, s: &Spanned<file::ServerFile>) -> Option<ServerSettings> {
        let f = s.get_ref();
        let mut listen = Vec::new();
        if f.listen.get_ref().is_empty() {
            self.r
                .error(f.listen.span(), "`listen` needs at least one address");
        }
        for a in f.listen.get_ref() {
            if let Some(a) = self.socket_addr(a) {
                listen.push(a);
            }
        }
        let admin_listen = f.admin_listen.as_ref().and_then(|a| self.socket_addr(a));
        let workers = match &f.workers {
            Some(w) if *w.get_ref() == 0 => {
                self.r.error(w.span(), "`workers` must be at least 1");
                1
            }
            Some(w) => *w.get_ref(),
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let max_token_bytes = match &f.max_token_bytes {
            Some(m) if *m.get_ref() < 64 => {
                self.r
                    .error(m.span(), "`max_token_bytes` must be at least 64");
                DEFAULT_MAX_TOKEN_BYTES
            }
            Some(m) => *m.get_ref(),
            None => DEFAULT_MAX_TOKEN_BYTES,
        };
        let max_uri_bytes = match &f.max_uri_bytes {
            Some(m) if *m.get_ref() < 64 => {
                self.r
                    .error(m.span(), "`max_uri_bytes` must be at least 64");
                DEFAULT_MAX_URI_BYTES
            }
            Some(m) => *m.get_ref(),
            None => DEFAULT_MAX_URI_BYTES,
        };
        self.path_case = match f.path_case.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "insensitive")) => PathCase::Insensitive,
            Some((_, "sensitive")) => PathCase::Sensitive,
            Some((p, other)) => {
                self.r.error(
                    p.span(),
                    format!("path_case {other:?} is not \"insensitive\" or \"sensitive\""),
                );
                PathCase::Insensitive
            }
        };
        let tls = f.tls.as_ref().map(|t| {
            let t = t.get_ref();
            let cert = self.path(t.cert.get_ref());
            let key = self.path(t.key.get_ref());
            if !cert.is_file() {
                self.r.error(
                    t.cert.span(),
                    format!("TLS certificate {} cannot be read", cert.display()),
                );
            }
            if !key.is_file() {
                self.r.error(
                    t.key.span(),
                    format!("TLS key {} cannot be read", key.display()),
                );
            }
            TlsSettings { cert, key }
        });
        Some(ServerSettings {
            listen,
            admin_listen,
            workers,
            max_token_bytes,
            max_uri_bytes,
            path_case: self.path_case,
            upstream_connect_timeout: self.dur(&f.upstream_connect_timeout, Duration::from_secs(5)),
            upstream_read_timeout: self.dur(&f.upstream_read_timeout, Duration::from_secs(60)),
            shutdown_grace: self.dur(&f.shutdown_grace, Duration::from_secs(30)),
            upgrade_sock: f.upgrade_sock.as_ref().map(|p| self.path(p.get_ref())),
            tls,
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

    fn identity(&mut self, s: &Spanned<file::IdentityFile>) -> Option<IdentitySettings> {
        let f = s.get_ref();
        if f.metadata_url.is_none() && f.jwks_uri.is_none() {
            self.r.error(
                s.span(),
                "[identity] needs `metadata_url` or `jwks_uri`, e.g. metadata_url = \"https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration\"",
            );
        }
        let metadata_url = f
            .metadata_url
            .as_ref()
            .and_then(|u| self.url(u, "metadata_url"));
        let jwks_uri = f.jwks_uri.as_ref().and_then(|u| self.url(u, "jwks_uri"));
        let mut algorithms = Vec::new();
        match &f.algorithms {
            None => algorithms.push(jsonwebtoken::Algorithm::RS256),
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.r.error(list.span(), "`algorithms` must not be empty");
                }
                for a in list.get_ref() {
                    match a.get_ref().as_str() {
                        "RS256" => algorithms.push(jsonwebtoken::Algorithm::RS256),
                        "RS384" => algorithms.push(jsonwebtoken::Algorithm::RS384),
                        "RS512" => algorithms.push(jsonwebtoken::Algorithm::RS512),
                        "PS256" => algorithms.push(jsonwebtoken::Algorithm::PS256),
                        "PS384" => algorithms.push(jsonwebtoken::Algorithm::PS384),
                        "PS512" => algorithms.push(jsonwebtoken::Algorithm::PS512),
                        other => self.r.error(
                            a.span(),
                            format!("algorithm {other:?} is not supported; Azure AD signs with RS256 (allowed: RS256, RS384, RS512, PS256, PS384, PS512)"),
                        ),
                    }
                }
            }
        }
        let audiences: Vec<String> = f
            .audiences
            .get_ref()
            .iter()
            .map(|a| a.get_ref().clone())
            .collect();
        if audiences.is_empty() {
            self.r.error(
                f.audiences.span(),
                "`audiences` must name at least one audience (your API's App ID URI and/or client id)",
            );
        }
        for a in f.audiences.get_ref() {
            if a.get_ref().trim().is_empty() {
                self.r.error(a.span(), "an audience must not be empty");
            }
        }
        let refresh_interval = self.dur_at_least(
            &f.refresh_interval,
            DEFAULT_REFRESH_INTERVAL,
            Duration::from_secs(1),
            "`refresh_interval` must be at least 1s",
        );
        let min_refetch_interval = self.dur_at_least(
            &f.min_refetch_interval,
            DEFAULT_MIN_REFETCH_INTERVAL,
            Duration::from_secs(1),
            "`min_refetch_interval` must be at least 1s",
        );
        let token_cache_size = f
            .token_cache_size
            .as_ref()
            .and_then(|v| self.raw(v))
            .unwrap_or(DEFAULT_TOKEN_CACHE_SIZE);
        let clock_skew = self.dur(&f.clock_skew, DEFAULT_CLOCK_SKEW);
        Some(IdentitySettings {
            metadata_url,
            jwks_uri,
            refresh_interval,
            min_refetch_interval,
            cache_file: f.cache_file.as_ref().map(|p| self.path(p.get_ref())),
            token_cache_size,
            clock_skew,
            algorithms,
            audiences,
        })
    }

    fn tenant_ids(&mut self, list: &[Spanned<String>], what: &str) -> HashSet<String> {
        let mut out = HashSet::new();
        for t in list {
            if is_guid(t.get_ref()) {
                out.insert(t.get_ref().to_ascii_lowercase());
            } else {
                self.r.error(
                    t.span(),
                    format!(
                        "{what} entry {:?} is not a tenant id; use the tenant's GUID (Azure portal > Microsoft Entra ID > Overview > Tenant ID), not a domain name",
                        t.get_ref()
                    ),
                );
            }
        }
        out
    }

    fn tenants(
        &mut self,
        s: &Spanned<file::TenantsFile>,
        whole: &ConfigFile,
    ) -> Option<TenantSettings> {
        let f = s.get_ref();
        let mut allow = self.tenant_ids(&f.allow, "`allow`");
        let deny = self.tenant_ids(&f.deny, "`deny`");
        let mode = match f.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("allow_list", _)) => TenantMode::AllowList,
            Some(("any", _)) => TenantMode::Any,
            Some(("hook", span)) => match &f.hook {
                None => {
                    self.r
                        .error(span, "mode = \"hook\" needs `hook = \"VALIDATOR\"`");
                    TenantMode::Any
                }
                Some(h) => {
                    if !whole.declared_validators.contains(h.get_ref()) {
                        self.r.error(
                            h.span(),
                            format!(
                                "no validator named {:?} (define [validators.{}])",
                                h.get_ref(),
                                h.get_ref()
                            ),
                        );
                    }
                    TenantMode::Hook(h.get_ref().clone())
                }
            },
            Some((other, span)) => {
                self.r.error(
                    span,
                    format!(
                        "unknown tenant mode {other:?}; use \"allow_list\", \"any\" or \"hook\""
                    ),
                );
                TenantMode::AllowList
            }
        };
        if f.hook.is_some() && !matches!(mode, TenantMode::Hook(_)) {
            if let Some(h) = &f.hook {
                self.r
                    .error(h.span(), "`hook` is only used with mode = \"hook\"");
            }
        }
        let file = f.file.as_ref().map(|p| {
            let path = self.path(p.get_ref());
            match load_tenant_file(&path) {
                Ok(extra) => allow.extend(extra),
                Err(e) => self.r.error(p.span(), e),
            }
            path
        });
        let issuers: Vec<String> = match &f.issuers {
            None => DEFAULT_ISSUERS.iter().map(|s| s.to_string()).collect(),
            Some(list) => {
                if list.get_ref().is_empty() {
                    self.r.error(list.span(), "`issuers` must not be empty");
                }
                list.get_ref()
                    .iter()
                    .map(|i| {
                        if !i.get_ref().starts_with("https://")
                            && !i.get_ref().starts_with("http://")
                        {
                            self.r
                                .error(i.span(), format!("issuer {:?} is not a URL", i.get_ref()));
                        }
                        i.get_ref().clone()
                    })
                    .collect()
            }
        };
        Some(TenantSettings {
            mode,
            allow,
            deny,
            issuers,
            file,
        })
    }

    fn clients(&mut self, s: Option<&Spanned<file::ClientsFile>>) -> ClientSettings {
        let Some(s) = s else {
            return ClientSettings::default();
        };
        let f = s.get_ref();
        let allow = self.client_ids(&f.allow);
        let min_auth_strength = match &f.min_auth_strength {
            Some(m) => self.strength(m),
            None => 0,
        };
        ClientSettings {
            allow,
            min_auth_strength,
        }
    }

    fn strength(&mut self, m: &Raw<u8>) -> u8 {
        let Some(v) = self.raw(m) else { return 0 };
        if v > 2 {
            self.r.error(
                m.span(),
                "`min_auth_strength` is 0 (public client), 1 (secret) or 2 (certificate)",
            );
        }
        v
    }

    fn client_ids(&mut self, list: &[Spanned<String>]) -> HashSet<String> {
        let mut out = HashSet::new();
        for c in list {
            if c.get_ref().trim().is_empty() {
                self.r.error(c.span(), "a client id must not be empty");
            }
            out.insert(c.get_ref().to_ascii_lowercase());
        }
        out
    }

    fn validators(
        &mut self,
        map: &std::collections::BTreeMap<String, Spanned<file::ValidatorFile>>,
        previous: Option<&Config>,
    ) -> HashMap<String, Arc<Validator>> {
        let mut out = HashMap::new();
        for (name, v) in map {
            let f = v.get_ref();
            let validator = match f.kind.get_ref().as_str() {
                "http" => {
                    for (present, key) in
                        [(f.expr.is_some(), "expr"), (f.message.is_some(), "message")]
                    {
                        if present {
                            self.r.error(
                                v.span(),
                                format!("`{key}` is for kind = \"cel\" validators"),
                            );
                        }
                    }
                    let Some(url) = &f.url else {
                        self.r.error(
                            v.span(),
                            format!("validator {name:?} (kind = \"http\") needs `url`"),
                        );
                        continue;
                    };
                    let Some(url_s) = self.url(url, "url") else {
                        continue;
                    };
                    let on_error = match f
                        .on_error
                        .as_ref()
                        .map(|o| (o.get_ref().as_str(), o.span()))
                    {
                        None | Some(("deny", _)) => OnError::Deny,
                        Some(("allow", _)) => OnError::Allow,
                        Some((other, span)) => {
                            self.r.error(
                                span,
                                format!("on_error must be \"deny\" or \"allow\", not {other:?}"),
                            );
                            OnError::Deny
                        }
                    };
                    let headers = self.hook_headers(f.headers.as_ref());
                    let settings = HttpValidatorSettings {
                        url: url_s,
                        headers,
                        timeout: self.dur(&f.timeout, Duration::from_millis(500)),
                        cache_ttl: self.dur(&f.cache_ttl, Duration::from_secs(60)),
                        on_error,
                    };
                    let reuse = previous
                        .and_then(|p| p.validators.get(name))
                        .filter(|old| old.same_http_settings(&settings))
                        .cloned();
                    reuse.unwrap_or_else(|| Arc::new(Validator::http(name, settings)))
                }
                "cel" => {
                    for (present, key) in [
                        (f.url.is_some(), "url"),
                        (f.timeout.is_some(), "timeout"),
                        (f.cache_ttl.is_some(), "cache_ttl"),
                        (f.on_error.is_some(), "on_error"),
                        (f.headers.is_some(), "headers"),
                    ] {
                        if present {
                            self.r.error(
                                v.span(),
                                format!("`{key}` is for kind = \"http\" validators"),
                            );
                        }
                    }
                    let Some(expr) = &f.expr else {
                        self.r.error(
                            v.span(),
                            format!("validator {name:?} (kind = \"cel\") needs `expr`"),
                        );
                        continue;
                    };
                    let message = f.message.as_ref().map_or_else(
                        || format!("denied by validator {name:?}"),
                        |m| m.get_ref().clone(),
                    );
                    match Validator::cel(name, expr.get_ref(), message) {
                        Ok(v) => Arc::new(v),
                        Err((line, col, msg)) => {
                            // Point inside the string: the expression starts after the opening
                            // quote (or triple quote) of the TOML string.
                            let raw_start = expr.span().start;
                            let mut quote_len = self.quote_len(raw_start);
                            // TOML drops a newline right after an opening triple quote.
                            if quote_len == 3 {
                                let rest = &self.r.source()[raw_start + 3..];
                                if rest.starts_with("\r\n") {
                                    quote_len += 2;
                                } else if rest.starts_with('\n') {
                                    quote_len += 1;
                                }
                            }
                            let offset = self.offset_in_expr(
                                raw_start + quote_len,
                                expr.get_ref(),
                                line,
                                col,
                            );
                            self.r
                                .error(offset..offset, format!("CEL expression: {msg}"));
                            continue;
                        }
                    }
                }
                other => {
                    self.r.error(
                        f.kind.span(),
                        format!("unknown validator kind {other:?}; use \"http\" or \"cel\""),
                    );
                    continue;
                }
            };
            out.insert(name.clone(), validator);
        }
        out
    }

    /// A validator's `headers`: lower-case header names the hook may add upstream. `x-auth-*`,
    /// hop-by-hop and framing headers, and names with `_` (read as `-` by CGI/WSGI servers, so
    /// ambiguous) are errors at their position. Claim headers are checked once every route is
    /// known ([`Compiler::validator_headers`]).
    fn hook_headers(&mut self, list: Option<&Spanned<Vec<Spanned<String>>>>) -> Vec<HeaderName> {
        let mut out = Vec::new();
        for h in list.map(|l| l.get_ref().as_slice()).unwrap_or_default() {
            let lower = h.get_ref().to_ascii_lowercase();
            let Ok(name) = HeaderName::from_bytes(lower.as_bytes()) else {
                self.r.error(
                    h.span(),
                    format!("{:?} is not a valid header name", h.get_ref()),
                );
                continue;
            };
            if lower.contains('_') {
                self.r.error(
                    h.span(),
                    format!(
                        "header {lower:?} contains '_'; many servers read it as '-', so write {:?}",
                        lower.replace('_', "-")
                    ),
                );
            } else if lower.starts_with("x-auth-") {
                self.r.error(
                    h.span(),
                    format!("{lower:?} cannot be a validator header: x-auth-* headers carry the verified identity and come from the token only"),
                );
            } else if is_hop_or_reserved(&lower) || lower == "proxy-connection" {
                self.r.error(
                    h.span(),
                    format!("{lower:?} cannot be a validator header: the proxy owns it"),
                );
            } else if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    /// Every header any validator may add (`Config::validator_header_names`); a name that is
    /// also a claim header of some route (or a default claim header) is an error at its position.
    fn validator_headers(
        &mut self,
        whole: &ConfigFile,
        claim_headers: &HashSet<HeaderName>,
    ) -> HashSet<HeaderName> {
        let mut out = HashSet::new();
        for v in whole.validators.values() {
            let Some(list) = &v.get_ref().headers else {
                continue;
            };
            for h in list.get_ref() {
                let lower = h.get_ref().to_ascii_lowercase();
                let Ok(name) = HeaderName::from_bytes(lower.as_bytes()) else {
                    continue; // reported by hook_headers
                };
                if claim_headers.contains(&name) {
                    self.r.error(
                        h.span(),
                        format!(
                            "{lower:?} is a claim header; a validator cannot set identity headers"
                        ),
                    );
                } else {
                    out.insert(name);
                }
            }
        }
        out
    }

    fn quote_len(&self, at: usize) -> usize {
        let src = self.r.source();
        let rest = &src[at.min(src.len())..];
        if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
            3
        } else {
            1
        }
    }

    fn offset_in_expr(&self, start: usize, expr: &str, line: usize, col: usize) -> usize {
        // CEL positions are 1-based line and column within the expression.
        let mut off = 0usize;
        for (i, l) in expr.split_inclusive('\n').enumerate() {
            if i + 1 == line {
                let c = l
                    .char_indices()
                    .nth(col.saturating_sub(1))
                    .map_or(l.len(), |(b, _)| b);
                return start + off + c;
            }
            off += l.len();
        }
        start
    }

    fn exchanges(
        &mut self,
        map: &std::collections::BTreeMap<String, Spanned<file::ExchangeFile>>,
        previous: Option<&Config>,
    ) -> HashMap<String, Arc<Exchanger>> {
        let mut out = HashMap::new();
        for (name, e) in map {
            let f = e.get_ref();
            let client_id = f.client_id.get_ref().trim().to_string();
            if client_id.is_empty() {
                self.r
                    .error(f.client_id.span(), "`client_id` must not be empty");
            }
            let endpoint = f.token_endpoint.get_ref().clone();
            if !endpoint.contains("{tenantid}") {
                self.r.error(
                    f.token_endpoint.span(),
                    "`token_endpoint` must contain {tenantid}: the app-only token is requested from the caller's tenant, never from common/organizations",
                );
            }
            let probe = endpoint.replace("{tenantid}", "00000000-0000-0000-0000-000000000000");
            if reqwest::Url::parse(&probe)
                .map(|u| u.scheme() != "https" && u.scheme() != "http")
                .unwrap_or(true)
            {
                self.r.error(
                    f.token_endpoint.span(),
                    format!("`token_endpoint` {endpoint:?} is not an http(s) URL"),
                );
            }
            let target = match (&f.scope, &f.resource) {
                (Some(s), None) => ExchangeTarget::Scope(s.get_ref().clone()),
                (None, Some(r)) => ExchangeTarget::Resource(r.get_ref().clone()),
                (Some(s), Some(_)) => {
                    self.r.error(
                        s.span(),
                        "set `scope` (v2 token endpoint) or `resource` (v1 endpoint), not both",
                    );
                    continue;
                }
                (None, None) => {
                    self.r.error(
                        e.span(),
                        "[exchange] needs `scope` (v2 endpoint, e.g. \"https://outlook.office365.com/.default\") or `resource` (v1 endpoint)",
                    );
                    continue;
                }
            };
            if f.certificates.get_ref().is_empty() {
                self.r.error(
                    f.certificates.span(),
                    "`certificates` needs at least one { cert, key } pair",
                );
            }
            let mut certificates = Vec::new();
            for c in f.certificates.get_ref() {
                let cert_path = self.path(c.get_ref().cert.get_ref());
                let key_path = self.path(c.get_ref().key.get_ref());
                match crate::exchange::certs::load_pair(&cert_path, &key_path) {
                    Ok(loaded) => {
                        if let Some(w) = loaded.expiry_warning() {
                            self.r.warn(c.get_ref().cert.span(), w);
                        }
                        certificates.push(loaded);
                    }
                    Err(crate::exchange::certs::CertError::Cert(m)) => {
                        self.r.error(c.get_ref().cert.span(), m)
                    }
                    Err(crate::exchange::certs::CertError::Key(m)) => {
                        self.r.error(c.get_ref().key.span(), m)
                    }
                }
            }
            let user_claim = match &f.user_claim {
                None => "oid".to_string(),
                Some(u) if u.get_ref() == "oid" || u.get_ref() == "upn" => u.get_ref().clone(),
                Some(u) => {
                    self.r.error(u.span(), "`user_claim` is \"oid\" or \"upn\"");
                    "oid".to_string()
                }
            };
            let max_tenants = match f.max_tenants.as_ref().map(|m| (self.raw(m), m.span())) {
                None | Some((None, _)) => 10_000,
                Some((Some(0), span)) => {
                    self.r.error(span, "`max_tenants` must be at least 1");
                    10_000
                }
                Some((Some(n), _)) => n,
            };
            let rewrite_me = f
                .rewrite_me
                .as_ref()
                .and_then(|b| self.raw(b))
                .unwrap_or(false);
            let settings = ExchangeSettings {
                name: name.clone(),
                client_id,
                token_endpoint: endpoint,
                target,
                certificates,
                timeout: self.dur(&f.timeout, Duration::from_secs(10)),
                refresh_before_expiry: self.dur(&f.refresh_before_expiry, Duration::from_secs(300)),
                failure_cache: self.dur(&f.failure_cache, Duration::from_secs(30)),
                purge_interval: self.dur(&f.purge_interval, DEFAULT_PURGE_INTERVAL),
                max_tenants,
                rewrite_me,
                user_claim,
            };
            let reuse = previous
                .and_then(|p| p.exchanges.get(name))
                .filter(|old| old.settings() == &settings)
                .cloned();
            out.insert(
                name.clone(),
                reuse.unwrap_or_else(|| Arc::new(Exchanger::new(settings))),
            );
        }
        out
    }

    fn upstream(&mut self, s: &Spanned<String>) -> Option<Upstream> {
        let text = s.get_ref();
        let bad = |msg: &str| {
            format!("upstream {text:?} {msg}; write scheme://host[:port], e.g. \"http://127.0.0.1:3000\"")
        };
        let url = match reqwest::Url::parse(text) {
            Ok(u) => u,
            Err(_) => {
                self.r.error(s.span(), bad("is not a URL"));
                return None;
            }
        };
        let tls = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => {
                self.r.error(s.span(), bad("must use http or https"));
                return None;
            }
        };
        if !(url.path() == "/" || url.path().is_empty())
            || url.query().is_some()
            || url.fragment().is_some()
        {
            self.r
                .error(s.span(), bad("must not have a path, query or fragment"));
            return None;
        }
        if !url.username().is_empty() || url.password().is_some() {
            self.r.error(s.span(), bad("must not carry credentials"));
            return None;
        }
        let Some(host) = url.host_str() else {
            self.r.error(s.span(), bad("has no host"));
            return None;
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let addr = IpAddr::from_str(&host)
            .ok()
            .map(|ip| SocketAddr::new(ip, port));
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or(&host)),
            None => url.host_str().unwrap_or(&host).to_string(),
        };
        Some(Upstream {
            tls,
            host,
            port,
            addr,
            authority,
        })
    }

    fn routes(
        &mut self,
        whole: &ConfigFile,
        validators: &HashMap<String, Arc<Validator>>,
        exchanges: &HashMap<String, Arc<Exchanger>>,
        clients: &ClientSettings,
    ) -> Vec<Arc<Route>> {
        let list = &whole.routes;
        let mut out = Vec::new();
        let mut names: HashMap<String, ()> = HashMap::new();
        if list.is_empty() {
            // Not an error: a gateway with no routes answers 404 route_not_found to everything,
            // which `aadgate check` users may want while building a config up.
        }
        for rs in list {
            let f = rs.get_ref();
            let name = f.name.get_ref().clone();
            if name.trim().is_empty() {
                self.r
                    .error(f.name.span(), "route `name` must not be empty");
            }
            if names.insert(name.clone(), ()).is_some() {
                self.r
                    .error(f.name.span(), format!("duplicate route name {name:?}"));
            }
            // Prefixes are matched against normalized request paths, so they are normalized
            // (and folded, unless path_case = "sensitive") the same way here.
            let prefix = f.path_prefix.get_ref();
            let prefix = match crate::routing::normalize_path(prefix, self.path_case) {
                Ok(p) => p.into_owned(),
                Err(e) => {
                    self.r.error(
                        f.path_prefix.span(),
                        format!("path_prefix {prefix:?}: {}", e.message),
                    );
                    prefix.clone()
                }
            };
            let strip_prefix = f.strip_prefix.as_ref().and_then(|sp| {
                let normal = crate::routing::normalize_path(sp.get_ref(), self.path_case)
                    .ok()
                    .filter(|n| prefix.starts_with(n.as_ref()));
                if normal.is_none() {
                    self.r.error(
                        sp.span(),
                        format!("strip_prefix {:?} must start with '/' and be a prefix of path_prefix {prefix:?}", sp.get_ref()),
                    );
                }
                normal.map(|n| n.into_owned())
            });
            let host = f.host.as_ref().map(|h| {
                let h = h.get_ref().to_ascii_lowercase();
                h.rsplit_once(':')
                    .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                    .map_or(h.clone(), |(n, _)| n.to_string())
            });
            let methods = f.methods.as_ref().map(|ms| {
                ms.iter()
                    .filter_map(|m| {
                        match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                            Ok(m) => Some(m),
                            Err(_) => {
                                self.r.error(
                                    m.span(),
                                    format!("{:?} is not an HTTP method", m.get_ref()),
                                );
                                None
                            }
                        }
                    })
                    .collect::<Vec<_>>()
            });
            let upstream = self.upstream(&f.upstream);
            let auth = match f.auth.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
                None | Some(("required", _)) => AuthMode::Required,
                Some(("anonymous", _)) => AuthMode::Anonymous,
                Some((other, span)) => {
                    self.r.error(
                        span,
                        format!("auth must be \"required\" or \"anonymous\", not {other:?}"),
                    );
                    AuthMode::Required
                }
            };
            let token_kind = match f
                .token_kind
                .as_ref()
                .map(|a| (a.get_ref().as_str(), a.span()))
            {
                None | Some(("any", _)) => TokenKindRequirement::Any,
                Some(("app", _)) => TokenKindRequirement::App,
                Some(("user", _)) => TokenKindRequirement::User,
                Some((other, span)) => {
                    self.r.error(
                        span,
                        format!("token_kind must be \"any\", \"app\" or \"user\", not {other:?}"),
                    );
                    TokenKindRequirement::Any
                }
            };
            let strings = |v: &Vec<Spanned<String>>| {
                v.iter().map(|s| s.get_ref().clone()).collect::<Vec<_>>()
            };
            let route_clients = f.clients.as_ref().map(|c| self.client_ids(c));
            let min_auth_strength = match &f.min_auth_strength {
                Some(m) => self.strength(m).max(clients.min_auth_strength),
                None => clients.min_auth_strength,
            };
            let mut route_validators = Vec::new();
            for v in &f.validators {
                match validators.get(v.get_ref()) {
                    Some(val) => route_validators.push(val.clone()),
                    // Declared but invalid: its own error was reported already.
                    None if whole.declared_validators.contains(v.get_ref()) => {}
                    None => self.r.error(
                        v.span(),
                        format!(
                            "no validator named {:?} (define [validators.{}])",
                            v.get_ref(),
                            v.get_ref()
                        ),
                    ),
                }
            }
            let exchange = f
                .exchange
                .as_ref()
                .and_then(|e| match exchanges.get(e.get_ref()) {
                    Some(x) => Some(x.clone()),
                    // Declared but invalid: its own error was reported already.
                    None if whole.declared_exchanges.contains(e.get_ref()) => None,
                    None => {
                        self.r.error(
                            e.span(),
                            format!(
                                "no exchange named {:?} (define [exchange.{}])",
                                e.get_ref(),
                                e.get_ref()
                            ),
                        );
                        None
                    }
                });
            if auth == AuthMode::Anonymous {
                for (present, key) in [
                    (exchange.is_some(), "exchange"),
                    (!route_validators.is_empty(), "validators"),
                    (
                        !f.roles_any.is_empty() || !f.roles_all.is_empty(),
                        "roles_any/roles_all",
                    ),
                    (
                        !f.scopes_any.is_empty() || !f.scopes_all.is_empty(),
                        "scopes_any/scopes_all",
                    ),
                    (f.token_kind.is_some(), "token_kind"),
                    (f.clients.is_some(), "clients"),
                ] {
                    if present {
                        let span = f.auth.as_ref().map_or(f.name.span(), |a| a.span());
                        self.r.error(span, format!("route {name:?} is anonymous, so `{key}` would never apply; remove it or set auth = \"required\""));
                    }
                }
            }
            let claim_headers = match &f.claim_headers {
                None => default_claim_headers(),
                Some(map) => {
                    let mut v = Vec::new();
                    for (h, claim) in map.get_ref() {
                        let lower = h.get_ref().to_ascii_lowercase();
                        match HeaderName::from_bytes(lower.as_bytes()) {
                            Ok(hn) => {
                                if is_hop_or_reserved(&lower) {
                                    self.r.error(
                                        h.span(),
                                        format!("{lower:?} cannot be a claim header"),
                                    );
                                }
                                let source = match claim.get_ref().as_str() {
                                    "" => {
                                        self.r.error(claim.span(), "claim name must not be empty");
                                        continue;
                                    }
                                    "client_id" => ClaimSource::ClientId,
                                    "token_kind" => ClaimSource::TokenKind,
                                    "upn_or_preferred_username" => ClaimSource::Upn,
                                    c => ClaimSource::Claim(c.to_string()),
                                };
                                v.push((hn, source));
                            }
                            Err(_) => self.r.error(
                                h.span(),
                                format!("{:?} is not a valid header name", h.get_ref()),
                            ),
                        }
                    }
                    v
                }
            };
            let pass_authorization = f.pass_authorization.as_ref().and_then(|p| self.raw(p));
            if exchange.is_some() && pass_authorization == Some(true) {
                if let Some(p) = &f.pass_authorization {
                    self.r.error(p.span(), "a route with `exchange` replaces Authorization; pass_authorization = true contradicts it");
                }
            }
            let Some(upstream) = upstream else { continue };
            out.push(Arc::new(Route {
                name: Arc::from(name.as_str()),
                host,
                path_prefix: prefix,
                methods,
                upstream,
                strip_prefix,
                auth,
                token_kind,
                roles_any: strings(&f.roles_any),
                roles_all: strings(&f.roles_all),
                scopes_any: strings(&f.scopes_any),
                scopes_all: strings(&f.scopes_all),
                clients: route_clients,
                min_auth_strength,
                validators: route_validators,
                pass_authorization: pass_authorization.unwrap_or(true),
                exchange,
                claim_headers,
            }));
        }
        out
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

/// Reads the tenant allow-list file (`allow = ["GUID", …]`); errors name the file's own line.
pub fn load_tenant_file(path: &Path) -> Result<HashSet<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("tenant file {} cannot be read: {e}", path.display()))?;
    let mut r = Reporter::new(path, &text);
    let parsed: file::TenantListFile = match toml::from_str(&text) {
        Ok(p) => p,
        Err(e) => {
            let err = r.at(e.span().unwrap_or(0..0), e.message().trim_end().to_string());
            return Err(format!("in tenant file: {err}"));
        }
    };
    let mut out = HashSet::new();
    for t in &parsed.allow {
        if is_guid(t.get_ref()) {
            out.insert(t.get_ref().to_ascii_lowercase());
        } else {
            r.error(
                t.span(),
                format!("{:?} is not a tenant id (GUID)", t.get_ref()),
            );
        }
    }
    match r.errors.first() {
        Some(e) => Err(format!("in tenant file: {e}")),
        None => Ok(out),
    }
}
