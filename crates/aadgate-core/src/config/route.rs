//! The compiled form of `[[routes]]`: where requests go, what they need, and which identity
//! headers they carry upstream.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};

/// `auth = …`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// `"required"` (default): a valid bearer token is needed.
    Required,
    /// `"anonymous"`: no token is looked at; no claim headers, hooks or exchange.
    Anonymous,
}

/// `token_kind = …`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKindRequirement {
    /// `"any"` (default): app-only tokens, user tokens and tokens of neither kind.
    Any,
    /// `"app"`: only app-only tokens; others are `403 wrong_token_kind`.
    App,
    /// `"user"`: only delegated (user) tokens; others are `403 wrong_token_kind`.
    User,
}

/// Where a claim header's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimSource {
    /// A claim by name; lists are comma-joined, `scp` split on spaces.
    Claim(String),
    /// `appid` or `azp`, whichever identified the client.
    ClientId,
    /// `upn`, else `preferred_username`.
    Upn,
    /// `app` or `user`.
    TokenKind,
}

/// The HTTP version the gateway speaks to a route's upstream (SPEC section 13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (`http://`, `https://`).
    Http1,
    /// `https://` with `upstream_protocol = "h2"`: ALPN offers `h2`, then `http/1.1`.
    H2,
    /// `h2c://`: cleartext HTTP/2 with prior knowledge (gRPC services).
    H2c,
}

impl UpstreamProtocol {
    /// Whether requests may go upstream as HTTP/2.
    pub fn is_h2(self) -> bool {
        !matches!(self, UpstreamProtocol::Http1)
    }
}

/// Where requests of a route go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `https` (TLS verified, SNI = `host`) rather than `http` or `h2c`.
    pub tls: bool,
    /// HTTP/1.1, h2 over TLS, or h2c.
    pub protocol: UpstreamProtocol,
    /// The host as written, without IPv6 brackets; resolved when a request is forwarded.
    pub host: String,
    /// The port as written, else 443 for `https` and 80 for `http`.
    pub port: u16,
    /// Set when `host` is an IP literal, so no resolution is needed.
    pub addr: Option<SocketAddr>,
    /// `host[:port]`, sent as the `Host` header.
    pub authority: String,
    /// `authority` as a header value, made once.
    pub host_header: HeaderValue,
}

/// One `[[routes]]` entry, compiled.
#[derive(Debug)]
pub struct Route {
    /// The route's position in `[[routes]]`: per-route state the runtime keeps (metric
    /// handles) is found by it.
    pub index: usize,
    /// `name`: unique; the `route` label of metrics and the route field of logs and hooks.
    pub name: Arc<str>,
    /// Lower-case, without port.
    pub host: Option<String>,
    /// `path_prefix`: in normalized form (ASCII case folded unless `path_case = "sensitive"`); the
    /// longest one the request's normalized path starts with wins.
    pub path_prefix: String,
    /// `methods`: upper-cased; `None` = all methods.
    pub methods: Option<Vec<Method>>,
    /// Where matching requests are forwarded.
    pub upstream: Upstream,
    /// `strip_prefix`: normalized like `path_prefix` and a prefix of it; removed before forwarding.
    pub strip_prefix: Option<String>,
    /// `auth`: whether a token is needed at all.
    pub auth: AuthMode,
    /// `token_kind`: which kind of token the route accepts.
    pub token_kind: TokenKindRequirement,
    /// `roles_any`: the token's `roles` must contain at least one; empty = no requirement.
    pub roles_any: Vec<String>,
    /// `roles_all`: the token's `roles` must contain every one.
    pub roles_all: Vec<String>,
    /// `scopes_any`: the token's `scp` must contain at least one; empty = no requirement.
    pub scopes_any: Vec<String>,
    /// `scopes_all`: the token's `scp` must contain every one.
    pub scopes_all: Vec<String>,
    /// Lower-case client ids that replace `[clients].allow`; `None` = use the global list.
    pub clients: Option<HashSet<String>>,
    /// The effective minimum: the larger of the global and the route's value.
    pub min_auth_strength: u8,
    /// The names of the validators to run, in order (each is a key of `Config::validators`).
    pub validators: Vec<String>,
    /// `pass_authorization`: forward the caller's `Authorization` unchanged (default true); on an
    /// `exchange` route the header is replaced whatever this says.
    pub pass_authorization: bool,
    /// The `[exchange.NAME]` whose app-only token replaces the caller's (a key of
    /// `Config::exchanges`).
    pub exchange: Option<String>,
    /// The headers sent upstream after the checks passed and their sources: the route's
    /// `[routes.claim_headers]`, else [`default_claim_headers`]; empty = no identity headers.
    pub claim_headers: Vec<(HeaderName, ClaimSource)>,
    /// `close_on_token_expiry`: an open WebSocket tunnel is closed when the caller's token
    /// expires.
    pub close_on_token_expiry: bool,
    /// Set once a gRPC call was sent to this route's HTTP/1.1 upstream and the gateway logged
    /// why that cannot work (once per route and configuration).
    pub warned_grpc_over_http1: std::sync::atomic::AtomicBool,
}
/// The claim headers sent when a route configures none (SPEC section 3).
pub fn default_claim_headers() -> Vec<(HeaderName, ClaimSource)> {
    vec![
        (
            HeaderName::from_static("x-auth-tenant-id"),
            ClaimSource::Claim("tid".into()),
        ),
        (
            HeaderName::from_static("x-auth-object-id"),
            ClaimSource::Claim("oid".into()),
        ),
        (
            HeaderName::from_static("x-auth-client-id"),
            ClaimSource::ClientId,
        ),
        (
            HeaderName::from_static("x-auth-subject"),
            ClaimSource::Claim("sub".into()),
        ),
        (
            HeaderName::from_static("x-auth-roles"),
            ClaimSource::Claim("roles".into()),
        ),
        (
            HeaderName::from_static("x-auth-scopes"),
            ClaimSource::Claim("scp".into()),
        ),
        (HeaderName::from_static("x-auth-upn"), ClaimSource::Upn),
        (
            HeaderName::from_static("x-auth-token-kind"),
            ClaimSource::TokenKind,
        ),
    ]
}

#[cfg(test)]
impl Route {
    /// A route to `http://127.0.0.1:1` with no requirements, for stage tests.
    pub(crate) fn for_test(name: &str, prefix: &str) -> Route {
        Route {
            index: 0,
            name: Arc::from(name),
            host: None,
            path_prefix: prefix.into(),
            methods: None,
            upstream: Upstream {
                tls: false,
                protocol: UpstreamProtocol::Http1,
                host: "127.0.0.1".into(),
                port: 1,
                addr: None,
                authority: "127.0.0.1:1".into(),
                host_header: HeaderValue::from_static("127.0.0.1:1"),
            },
            strip_prefix: None,
            auth: AuthMode::Required,
            token_kind: TokenKindRequirement::Any,
            roles_any: vec![],
            roles_all: vec![],
            scopes_any: vec![],
            scopes_all: vec![],
            clients: None,
            min_auth_strength: 0,
            validators: vec![],
            pass_authorization: true,
            exchange: None,
            claim_headers: default_claim_headers(),
            close_on_token_expiry: false,
            warned_grpc_over_http1: Default::default(),
        }
    }
}
