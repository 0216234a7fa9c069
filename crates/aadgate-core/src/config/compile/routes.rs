//! `[[routes]]`: matching, upstream, policy, validators, exchange and claim headers.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use http::{HeaderName, Method};
use serde_spanned::Spanned;

use super::{is_hop_or_reserved, Compiler};
use crate::config::file::{ConfigFile, RouteFile};
use crate::config::model::*;

impl Compiler<'_> {
    fn upstream(
        &mut self,
        s: &Spanned<String>,
        protocol: Option<&Spanned<String>>,
    ) -> Option<Upstream> {
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
        let (tls, h2c) = match url.scheme() {
            "http" => (false, false),
            "https" => (true, false),
            "h2c" => (false, true),
            _ => {
                self.r.error(s.span(), bad("must use http, https or h2c"));
                return None;
            }
        };
        let protocol = self.upstream_protocol(protocol, tls, h2c)?;
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
        // `h2c` is not a scheme the url crate knows: its default port is 80, like `http`.
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
        // The url crate has checked the host and port, so this cannot fail in practice.
        let Ok(host_header) = http::HeaderValue::from_str(&authority) else {
            self.r
                .error(s.span(), bad("has a host that is not a valid Host header"));
            return None;
        };
        Some(Upstream {
            tls,
            protocol,
            host,
            port,
            addr,
            authority,
            host_header,
        })
    }

    /// `upstream_protocol`: `"http1"` or `"h2"`; `h2c://` implies (and only allows) `"h2"`, and
    /// `"h2"` on `http://` is refused with a pointer to `h2c://`.
    fn upstream_protocol(
        &mut self,
        protocol: Option<&Spanned<String>>,
        tls: bool,
        h2c: bool,
    ) -> Option<UpstreamProtocol> {
        let Some(p) = protocol else {
            return Some(if h2c {
                UpstreamProtocol::H2c
            } else {
                UpstreamProtocol::Http1
            });
        };
        match (p.get_ref().as_str(), tls, h2c) {
            ("http1", _, false) => Some(UpstreamProtocol::Http1),
            ("h2", true, _) => Some(UpstreamProtocol::H2),
            ("h2", false, true) => Some(UpstreamProtocol::H2c),
            ("h2", false, false) => {
                self.r.error(p.span(), "upstream_protocol = \"h2\" over cleartext needs the upstream written h2c://host:port (HTTP/2 with prior knowledge)");
                None
            }
            ("http1", _, true) => {
                self.r.error(
                    p.span(),
                    "an h2c:// upstream speaks HTTP/2; remove upstream_protocol or use http://",
                );
                None
            }
            (other, _, _) => {
                self.r.error(
                    p.span(),
                    format!("upstream_protocol {other:?} must be \"http1\" or \"h2\""),
                );
                None
            }
        }
    }

    /// Every `[[routes]]` entry, in file order. A route whose upstream is bad is left out (its
    /// error has been reported); every other mistake is reported and the route kept.
    pub(super) fn routes(
        &mut self,
        whole: &ConfigFile,
        validators: &HashMap<String, ValidatorSettings>,
        exchanges: &HashMap<String, ExchangeSettings>,
        clients: &ClientSettings,
    ) -> Vec<Arc<Route>> {
        let mut out = Vec::new();
        let mut names: HashMap<String, ()> = HashMap::new();
        // An empty list is not an error: a gateway with no routes answers 404 route_not_found to
        // everything, which `aadgate check` users may want while building a config up.
        for rs in &whole.routes {
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
            let (prefix, strip_prefix) = self.route_prefixes(f);
            let host = f.host.as_ref().map(|h| route_host(h.get_ref()));
            let methods = f.methods.as_ref().map(|ms| self.route_methods(ms));
            let upstream = self.upstream(&f.upstream, f.upstream_protocol.as_ref());
            let auth = self.route_auth(f);
            let token_kind = self.route_token_kind(f);
            let route_clients = f.clients.as_ref().map(|c| self.client_ids(c));
            let min_auth_strength = match &f.min_auth_strength {
                Some(m) => self.strength(m).max(clients.min_auth_strength),
                None => clients.min_auth_strength,
            };
            let route_validators = self.route_validators(f, whole, validators);
            let exchange = self.route_exchange(f, whole, exchanges);
            if auth == AuthMode::Anonymous {
                self.anonymous_route_extras(&name, f, exchange.is_some(), &route_validators);
            }
            let claim_headers = match &f.claim_headers {
                None => default_claim_headers(),
                Some(map) => self.claim_headers(map.get_ref()),
            };
            let pass_authorization = self.pass_authorization(f, exchange.is_some());
            let Some(upstream) = upstream else { continue };
            out.push(Arc::new(Route {
                index: out.len(),
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
                close_on_token_expiry: f
                    .close_on_token_expiry
                    .as_ref()
                    .and_then(|b| self.raw(b))
                    .unwrap_or(false),
                warned_grpc_over_http1: Default::default(),
            }));
        }
        out
    }

    /// `path_prefix` and `strip_prefix`, normalized. Prefixes are matched against normalized
    /// request paths, so they are normalized (and folded, unless path_case = "sensitive") the
    /// same way here; `strip_prefix` must be a prefix of `path_prefix`.
    fn route_prefixes(&mut self, f: &RouteFile) -> (String, Option<String>) {
        let prefix = f.path_prefix.get_ref();
        let prefix = match crate::target::normalize_path(prefix, self.path_case) {
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
            let normal = crate::target::normalize_path(sp.get_ref(), self.path_case)
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
        (prefix, strip_prefix)
    }

    /// `methods`: each upper-cased; a name that is not an HTTP method is reported and dropped.
    fn route_methods(&mut self, ms: &[Spanned<String>]) -> Vec<Method> {
        ms.iter()
            .filter_map(
                |m| match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        self.r
                            .error(m.span(), format!("{:?} is not an HTTP method", m.get_ref()));
                        None
                    }
                },
            )
            .collect()
    }

    /// `auth`: "required" (the default) or "anonymous".
    fn route_auth(&mut self, f: &RouteFile) -> AuthMode {
        match f.auth.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
            None | Some(("required", _)) => AuthMode::Required,
            Some(("anonymous", _)) => AuthMode::Anonymous,
            Some((other, span)) => {
                self.r.error(
                    span,
                    format!("auth must be \"required\" or \"anonymous\", not {other:?}"),
                );
                AuthMode::Required
            }
        }
    }

    /// `token_kind`: "any" (the default), "app" or "user".
    fn route_token_kind(&mut self, f: &RouteFile) -> TokenKindRequirement {
        match f
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
        }
    }

    /// The route's `validators`, looked up by name; an undeclared name is an error at its
    /// position, a declared but invalid one was reported already and is skipped.
    fn route_validators(
        &mut self,
        f: &RouteFile,
        whole: &ConfigFile,
        validators: &HashMap<String, ValidatorSettings>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for v in &f.validators {
            match validators.get(v.get_ref()) {
                Some(val) => out.push(val.name.clone()),
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
        out
    }

    /// The route's `exchange`, looked up by name, like [`Compiler::route_validators`].
    fn route_exchange(
        &mut self,
        f: &RouteFile,
        whole: &ConfigFile,
        exchanges: &HashMap<String, ExchangeSettings>,
    ) -> Option<String> {
        let e = f.exchange.as_ref()?;
        match exchanges.get(e.get_ref()) {
            Some(x) => Some(x.name.clone()),
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
        }
    }

    /// On an anonymous route, every key that only applies to authenticated requests is an
    /// error at `auth` (or at `name` when `auth` is absent).
    fn anonymous_route_extras(
        &mut self,
        name: &str,
        f: &RouteFile,
        has_exchange: bool,
        validators: &[String],
    ) {
        for (present, key) in [
            (has_exchange, "exchange"),
            (!validators.is_empty(), "validators"),
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
            (f.close_on_token_expiry.is_some(), "close_on_token_expiry"),
        ] {
            if present {
                let span = f.auth.as_ref().map_or(f.name.span(), |a| a.span());
                self.r.error(span, format!("route {name:?} is anonymous, so `{key}` would never apply; remove it or set auth = \"required\""));
            }
        }
    }

    /// A route's `claim_headers` table: header name → claim. Hop-by-hop and reserved names
    /// and bad header names are errors; an empty claim name drops the entry.
    fn claim_headers(
        &mut self,
        map: &BTreeMap<Spanned<String>, Spanned<String>>,
    ) -> Vec<(HeaderName, ClaimSource)> {
        let mut v = Vec::new();
        for (h, claim) in map {
            let lower = h.get_ref().to_ascii_lowercase();
            match HeaderName::from_bytes(lower.as_bytes()) {
                Ok(hn) => {
                    if is_hop_or_reserved(&lower) {
                        self.r
                            .error(h.span(), format!("{lower:?} cannot be a claim header"));
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

    /// `pass_authorization` as written (`None` when absent or bad); `true` on a route with
    /// `exchange` is an error, since the exchange replaces Authorization.
    fn pass_authorization(&mut self, f: &RouteFile, has_exchange: bool) -> Option<bool> {
        let pass_authorization = f.pass_authorization.as_ref().and_then(|p| self.raw(p));
        if has_exchange && pass_authorization == Some(true) {
            if let Some(p) = &f.pass_authorization {
                self.r.error(p.span(), "a route with `exchange` replaces Authorization; pass_authorization = true contradicts it");
            }
        }
        pass_authorization
    }
}

/// `host`, lower-cased, without a numeric `:port`.
fn route_host(h: &str) -> String {
    let h = h.to_ascii_lowercase();
    h.rsplit_once(':')
        .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
        .map_or(h.clone(), |(n, _)| n.to_string())
}

/// Role and scope lists, without their spans.
fn strings(v: &[Spanned<String>]) -> Vec<String> {
    v.iter().map(|s| s.get_ref().clone()).collect()
}
