//! Request errors: one [`Reason`] per reason code of SPEC section 4, and the one place that
//! turns a [`Rejection`] into an HTTP response (status, JSON body, `x-aadgate-reason`,
//! `WWW-Authenticate`, `Retry-After`).

use std::fmt;
use std::time::Duration;

use http::StatusCode;

/// Why the gateway answered a request itself. The string form is the `reason` code that
/// appears in bodies, headers, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `bad_request`, 400: a request target in neither origin nor absolute form, or a path with a
    /// `.`/`..` segment, an encoded `/` or `\`, a NUL or a malformed escape; before routing.
    BadRequest,
    /// `uri_too_long`, 414: the request target is longer than `server.max_uri_bytes`; checked
    /// first.
    UriTooLong,
    /// `route_not_found`, 404: no route's host, methods and path prefix match the request.
    RouteNotFound,
    /// `missing_token`, 401: no bearer token on an `auth = "required"` route; its
    /// `WWW-Authenticate` has no `error` attribute (RFC 6750).
    MissingToken,
    /// `malformed_token`, 401: not a JWS compact token, bad base64url or JSON, duplicate keys, a
    /// `crit` header, a non-numeric time claim, two `Authorization` headers, or longer than
    /// `server.max_token_bytes`.
    MalformedToken,
    /// `unsupported_alg`, 401: the header's `alg` is not in `identity.algorithms` (`none` and `HS*`
    /// never are).
    UnsupportedAlg,
    /// `unknown_kid`, 401: no key with the token's `kid` (or `x5t`), even after an allowed refetch;
    /// or the token names neither.
    UnknownKid,
    /// `bad_signature`, 401: the signature does not verify (or is empty); a token with a `nonce`
    /// header (a Microsoft Graph token) is told it was not issued for this API.
    BadSignature,
    /// `expired`, 401: `exp` is missing, or `exp` + `clock_skew` is not after now.
    Expired,
    /// `not_yet_valid`, 401: `nbf` or `iat` is more than `clock_skew` in the future.
    NotYetValid,
    /// `bad_audience`, 401: no `aud` entry is in `identity.audiences`.
    BadAudience,
    /// `not_access_token`, 401: neither `appid` nor `azp` (an ID token or another kind of token);
    /// checked after the audience, before the issuer.
    NotAccessToken,
    /// `bad_issuer`, 401: `tid` missing or not a GUID, `iss` matching no issuer template for that
    /// `tid`, or the signing key's `issuer` not matching.
    BadIssuer,
    /// `tenant_not_allowed`, 401: the tenant is not in the allow-list, or the tenant hook said no.
    TenantNotAllowed,
    /// `tenant_denied`, 401: the tenant is in `tenants.deny` (checked before every mode).
    TenantDenied,
    /// `client_not_allowed`, 403: the client (`appid`/`azp`) is not in the route's or the global
    /// client allow-list.
    ClientNotAllowed,
    /// `weak_client_auth`, 403: `appidacr`/`azpacr` is below the route's `min_auth_strength`.
    WeakClientAuth,
    /// `wrong_token_kind`, 403: an app-only token on a `token_kind = "user"` route, or the other
    /// way round (or a token of neither kind); also a `/me` rewrite for an app-only caller.
    WrongTokenKind,
    /// `missing_role`, 403: the route's `roles_any`/`roles_all` are not met; `WWW-Authenticate`
    /// carries `error="insufficient_scope"`.
    MissingRole,
    /// `missing_scope`, 403: the route's `scopes_any`/`scopes_all` are not met; `WWW-Authenticate`
    /// carries `error="insufficient_scope"`.
    MissingScope,
    /// `hook_denied`, 403: a validator (HTTP or CEL) said no; the message is the validator's.
    HookDenied,
    /// `hook_unavailable`, 503: a validator failed or timed out and its `on_error` is `"deny"`.
    HookUnavailable,
    /// `keys_unavailable`, 503: no JWKS has been loaded yet (nor read from `cache_file`).
    KeysUnavailable,
    /// `tenant_not_consented`, 403: the token endpoint says the exchange app is not consented to,
    /// or not found in, the caller's tenant (AADSTS700016, 65001, 7000112, 500011, …).
    TenantNotConsented,
    /// `exchange_unavailable`, 503: the token endpoint is unreachable or erroring; has
    /// `Retry-After`.
    ExchangeUnavailable,
    /// `upstream_unavailable`, 502: the upstream refused, reset or timed out before answering.
    UpstreamUnavailable,
    /// `rate_limited`, 429: a `[[rate_limits]]` entry that applies to the route is exhausted for
    /// the caller's key; has `Retry-After`, `RateLimit-Policy` and `RateLimit`.
    RateLimited,
    /// `registry_unavailable`, 503: a sign-up could not be recorded because the tenant registry
    /// cannot be written (the sign-up pages only; requests are served from the registry last
    /// read).
    RegistryUnavailable,
}

impl Reason {
    /// Every reason, in SPEC order (for docs, tests and pre-registered metric series).
    pub const ALL: [Reason; 28] = [
        Reason::BadRequest,
        Reason::UriTooLong,
        Reason::RouteNotFound,
        Reason::MissingToken,
        Reason::MalformedToken,
        Reason::UnsupportedAlg,
        Reason::UnknownKid,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::BadAudience,
        Reason::NotAccessToken,
        Reason::BadIssuer,
        Reason::TenantNotAllowed,
        Reason::TenantDenied,
        Reason::ClientNotAllowed,
        Reason::WeakClientAuth,
        Reason::WrongTokenKind,
        Reason::MissingRole,
        Reason::MissingScope,
        Reason::HookDenied,
        Reason::HookUnavailable,
        Reason::KeysUnavailable,
        Reason::TenantNotConsented,
        Reason::ExchangeUnavailable,
        Reason::UpstreamUnavailable,
        Reason::RateLimited,
        Reason::RegistryUnavailable,
    ];

    /// The reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::UriTooLong => "uri_too_long",
            Reason::RouteNotFound => "route_not_found",
            Reason::MissingToken => "missing_token",
            Reason::MalformedToken => "malformed_token",
            Reason::UnsupportedAlg => "unsupported_alg",
            Reason::UnknownKid => "unknown_kid",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::BadAudience => "bad_audience",
            Reason::NotAccessToken => "not_access_token",
            Reason::BadIssuer => "bad_issuer",
            Reason::TenantNotAllowed => "tenant_not_allowed",
            Reason::TenantDenied => "tenant_denied",
            Reason::ClientNotAllowed => "client_not_allowed",
            Reason::WeakClientAuth => "weak_client_auth",
            Reason::WrongTokenKind => "wrong_token_kind",
            Reason::MissingRole => "missing_role",
            Reason::MissingScope => "missing_scope",
            Reason::HookDenied => "hook_denied",
            Reason::HookUnavailable => "hook_unavailable",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::TenantNotConsented => "tenant_not_consented",
            Reason::ExchangeUnavailable => "exchange_unavailable",
            Reason::UpstreamUnavailable => "upstream_unavailable",
            Reason::RateLimited => "rate_limited",
            Reason::RegistryUnavailable => "registry_unavailable",
        }
    }

    /// The HTTP status of a response with this reason.
    pub fn status(self) -> StatusCode {
        match self {
            Reason::BadRequest => StatusCode::BAD_REQUEST,
            Reason::UriTooLong => StatusCode::URI_TOO_LONG,
            Reason::RouteNotFound => StatusCode::NOT_FOUND,
            Reason::MissingToken
            | Reason::MalformedToken
            | Reason::UnsupportedAlg
            | Reason::UnknownKid
            | Reason::BadSignature
            | Reason::Expired
            | Reason::NotYetValid
            | Reason::BadAudience
            | Reason::NotAccessToken
            | Reason::BadIssuer
            | Reason::TenantNotAllowed
            | Reason::TenantDenied => StatusCode::UNAUTHORIZED,
            Reason::ClientNotAllowed
            | Reason::WeakClientAuth
            | Reason::WrongTokenKind
            | Reason::MissingRole
            | Reason::MissingScope
            | Reason::HookDenied
            | Reason::TenantNotConsented => StatusCode::FORBIDDEN,
            Reason::HookUnavailable | Reason::KeysUnavailable | Reason::ExchangeUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Reason::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Reason::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Reason::RegistryUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC status code of this reason's rejection of a gRPC call (SPEC section 13), from its
    /// HTTP status: 401 → 16 `UNAUTHENTICATED`, 403 → 7 `PERMISSION_DENIED`, 404 → 12
    /// `UNIMPLEMENTED`, 400/414 → 3 `INVALID_ARGUMENT`, 429 → 8 `RESOURCE_EXHAUSTED`, 502/503 → 14
    /// `UNAVAILABLE`.
    pub fn grpc_code(self) -> u8 {
        grpc_code_of(self.status())
    }

    /// The OAuth-style `error` field of the JSON body (SPEC section 8).
    pub fn oauth_error(self) -> &'static str {
        match self {
            Reason::BadRequest | Reason::UriTooLong => "invalid_request",
            Reason::RouteNotFound => "not_found",
            Reason::MissingToken => "unauthorized",
            Reason::MalformedToken
            | Reason::UnsupportedAlg
            | Reason::UnknownKid
            | Reason::BadSignature
            | Reason::Expired
            | Reason::NotYetValid
            | Reason::BadAudience
            | Reason::NotAccessToken
            | Reason::BadIssuer
            | Reason::TenantNotAllowed
            | Reason::TenantDenied => "invalid_token",
            Reason::MissingRole | Reason::MissingScope => "insufficient_scope",
            Reason::ClientNotAllowed
            | Reason::WeakClientAuth
            | Reason::WrongTokenKind
            | Reason::HookDenied
            | Reason::TenantNotConsented => "access_denied",
            Reason::HookUnavailable
            | Reason::KeysUnavailable
            | Reason::ExchangeUnavailable
            | Reason::RegistryUnavailable => "temporarily_unavailable",
            Reason::UpstreamUnavailable => "bad_gateway",
            Reason::RateLimited => "too_many_requests",
        }
    }

    /// The RFC 6750 `error` attribute of `WWW-Authenticate`, or `None` when the header carries
    /// no `error` (missing token) or is not sent at all.
    fn challenge_error(self) -> Option<&'static str> {
        match self.status() {
            StatusCode::UNAUTHORIZED if self == Reason::MissingToken => None,
            StatusCode::UNAUTHORIZED => Some("invalid_token"),
            _ if matches!(self, Reason::MissingRole | Reason::MissingScope) => {
                Some("insufficient_scope")
            }
            _ => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request the gateway refuses, with a message in the caller's terms. The message never
/// contains the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Decides the status, the body's `reason` and `error` fields and the challenge.
    pub reason: Reason,
    /// Human text for the body's `message` and the challenge's `error_description`; never the
    /// token.
    pub message: String,
    /// For 503s: how long the caller should wait (`Retry-After`, whole seconds, rounded up).
    pub retry_after: Option<Duration>,
    /// Who the verified token says the caller is, when the request was refused after the token
    /// was verified (tenant not allowed, missing role, hook denied…), for the access log. Never
    /// part of the response.
    pub caller: Option<Box<Caller>>,
    /// Further response headers (`RateLimit-Policy` and `RateLimit` on a `429 rate_limited`).
    pub extra_headers: Vec<(&'static str, String)>,
}

/// The verified caller of a refused request: tenant (`tid`) and client application
/// (`appid`/`azp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The lower-case tenant id.
    pub tenant_id: String,
    /// The client application id, when the token names one.
    pub client_id: Option<String>,
}

impl Rejection {
    /// A rejection with `reason` and `message`.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Rejection {
            reason,
            message: message.into(),
            retry_after: None,
            caller: None,
            extra_headers: Vec::new(),
        }
    }

    /// Adds a response header (lower-case name).
    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.extra_headers.push((name, value));
        self
    }

    /// Names the verified caller (see [`Rejection::caller`]).
    pub fn from_caller(mut self, tenant_id: &str, client_id: Option<&str>) -> Self {
        self.caller = Some(Box::new(Caller {
            tenant_id: tenant_id.to_string(),
            client_id: client_id.map(str::to_string),
        }));
        self
    }

    /// Adds a `Retry-After`.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.reason.status()
    }

    /// The `WWW-Authenticate` value, when this rejection has one (401s, and 403s for missing
    /// roles or scopes).
    pub fn challenge(&self) -> Option<String> {
        let status = self.status();
        if self.reason == Reason::MissingToken {
            return Some("Bearer realm=\"aadgate\"".to_string());
        }
        let error = self.reason.challenge_error()?;
        debug_assert!(status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN);
        Some(format!(
            "Bearer realm=\"aadgate\", error=\"{error}\", error_description=\"{}\"",
            rfc6750_description(&self.message)
        ))
    }

    /// The JSON body.
    pub fn body(&self, request_id: &str) -> Vec<u8> {
        let body = serde_json::json!({
            "error": self.reason.oauth_error(),
            "reason": self.reason.as_str(),
            "message": self.message,
            "request_id": request_id,
        });
        let mut out = serde_json::to_vec(&body).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Every header of the response except `content-length`, as (name, value) pairs.
    pub fn headers(&self, request_id: &str) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("content-type", "application/json".to_string()),
            ("x-aadgate-reason", self.reason.as_str().to_string()),
            ("x-request-id", request_id.to_string()),
            ("cache-control", "no-store".to_string()),
        ];
        if let Some(c) = self.challenge() {
            h.push(("www-authenticate", c));
        }
        if let Some(after) = self.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            h.push(("retry-after", secs.max(1).to_string()));
        }
        h.extend(self.extra_headers.iter().cloned());
        h
    }
}

/// The gRPC status code for an HTTP status of the gateway's own answers (SPEC section 13); any
/// other status is 2 `UNKNOWN`.
pub fn grpc_code_of(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 | 414 => 3,
        401 => 16,
        403 => 7,
        404 => 12,
        429 => 8,
        502..=504 => 14,
        _ => 2,
    }
}

/// Whether a request is a gRPC call: its `content-type` is `application/grpc` or starts with
/// `application/grpc+` / `application/grpc;` (gRPC over HTTP/2), or is gRPC-Web
/// (`application/grpc-web…`), whose clients read the status from the headers the same way.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| is_grpc_content_type(v.as_bytes()))
}

fn is_grpc_content_type(v: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    v.len() >= GRPC.len()
        && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(v.get(GRPC.len()), None | Some(b'+' | b';' | b'-'))
}

/// Bytes kept as they are in `grpc-message`: printable ASCII except `%` (the gRPC HTTP/2
/// protocol's percent-encoding; everything else, including non-ASCII UTF-8, is `%XX`).
const GRPC_MESSAGE_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

impl Rejection {
    /// The headers of the gRPC form of this rejection (SPEC section 13): a trailers-only
    /// response, HTTP 200, `content-type: application/grpc`, `grpc-status`, `grpc-message` (the
    /// message, percent-encoded), and the same `x-aadgate-reason`, `x-request-id`,
    /// `WWW-Authenticate`, `Retry-After` and extra headers as the HTTP form. No body.
    pub fn grpc_headers(&self, request_id: &str) -> Vec<(&'static str, String)> {
        let mut h = vec![
            ("content-type", "application/grpc".to_string()),
            ("grpc-status", self.reason.grpc_code().to_string()),
            (
                "grpc-message",
                percent_encoding::utf8_percent_encode(&self.message, GRPC_MESSAGE_ESCAPED)
                    .to_string(),
            ),
        ];
        h.extend(
            self.headers(request_id)
                .into_iter()
                .filter(|(name, _)| *name != "content-type"),
        );
        h
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

impl std::error::Error for Rejection {}

/// RFC 6750 allows only %x20-21 / %x23-5B / %x5D-7E in `error_description`: no `"` or `\`,
/// nothing outside printable ASCII.
fn rfc6750_description(message: &str) -> String {
    message
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            ' '..='~' => c,
            _ => '?',
        })
        .take(300)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_the_grpc_status_of_its_http_status() {
        for r in Reason::ALL {
            let want = match r.status().as_u16() {
                401 => 16,
                403 => 7,
                404 => 12,
                400 | 414 => 3,
                429 => 8,
                502 | 503 => 14,
                other => panic!("{r}: status {other} has no gRPC mapping in SPEC section 13"),
            };
            assert_eq!(r.grpc_code(), want, "{r}");
        }
    }

    #[test]
    fn grpc_content_types_are_recognised_exactly() {
        for (ct, want) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC;charset=utf-8", true),
            ("application/grpc-web+proto", true),
            ("application/grpcx", false),
            ("application/json", false),
            ("application/grp", false),
        ] {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(ct),
            );
            assert_eq!(is_grpc(&h), want, "{ct}");
        }
        assert!(!is_grpc(&http::HeaderMap::new()));
    }

    #[test]
    fn the_grpc_form_is_trailers_only_with_an_encoded_message() {
        let r = Rejection::new(Reason::MissingRole, "needs role Orders.Read — 100% café\n")
            .retry_after(Duration::from_millis(1500));
        let h = r.grpc_headers("req-1");
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("content-type"), Some("application/grpc"));
        assert_eq!(get("grpc-status"), Some("7"));
        assert_eq!(
            get("grpc-message"),
            Some("needs role Orders.Read %E2%80%94 100%25 caf%C3%A9%0A")
        );
        assert_eq!(get("x-aadgate-reason"), Some("missing_role"));
        assert_eq!(get("x-request-id"), Some("req-1"));
        assert_eq!(get("retry-after"), Some("2"));
        assert!(get("www-authenticate").is_some_and(|v| v.contains("insufficient_scope")));
        assert_eq!(h.iter().filter(|(k, _)| *k == "content-type").count(), 1);
    }

    #[test]
    fn every_reason_maps_to_the_spec_status_and_error() {
        let table = [
            ("bad_request", 400, "invalid_request"),
            ("uri_too_long", 414, "invalid_request"),
            ("route_not_found", 404, "not_found"),
            ("missing_token", 401, "unauthorized"),
            ("malformed_token", 401, "invalid_token"),
            ("unsupported_alg", 401, "invalid_token"),
            ("unknown_kid", 401, "invalid_token"),
            ("bad_signature", 401, "invalid_token"),
            ("expired", 401, "invalid_token"),
            ("not_yet_valid", 401, "invalid_token"),
            ("bad_audience", 401, "invalid_token"),
            ("not_access_token", 401, "invalid_token"),
            ("bad_issuer", 401, "invalid_token"),
            ("tenant_not_allowed", 401, "invalid_token"),
            ("tenant_denied", 401, "invalid_token"),
            ("client_not_allowed", 403, "access_denied"),
            ("weak_client_auth", 403, "access_denied"),
            ("wrong_token_kind", 403, "access_denied"),
            ("missing_role", 403, "insufficient_scope"),
            ("missing_scope", 403, "insufficient_scope"),
            ("hook_denied", 403, "access_denied"),
            ("hook_unavailable", 503, "temporarily_unavailable"),
            ("keys_unavailable", 503, "temporarily_unavailable"),
            ("tenant_not_consented", 403, "access_denied"),
            ("exchange_unavailable", 503, "temporarily_unavailable"),
            ("upstream_unavailable", 502, "bad_gateway"),
            ("rate_limited", 429, "too_many_requests"),
            ("registry_unavailable", 503, "temporarily_unavailable"),
        ];
        assert_eq!(table.len(), Reason::ALL.len());
        for (reason, (code, status, error)) in Reason::ALL.iter().zip(table) {
            assert_eq!(reason.as_str(), code);
            assert_eq!(reason.status().as_u16(), status, "{code}");
            assert_eq!(reason.oauth_error(), error, "{code}");
        }
    }

    #[test]
    fn missing_token_challenge_has_no_error_attribute() {
        let r = Rejection::new(Reason::MissingToken, "no token");
        assert_eq!(r.challenge().as_deref(), Some("Bearer realm=\"aadgate\""));
    }

    #[test]
    fn invalid_token_challenge_escapes_the_description() {
        let r = Rejection::new(Reason::BadAudience, "audience \"x\" \\ é");
        assert_eq!(
            r.challenge().as_deref(),
            Some("Bearer realm=\"aadgate\", error=\"invalid_token\", error_description=\"audience 'x' / ?\"")
        );
    }

    #[test]
    fn missing_role_challenge_is_insufficient_scope_and_other_403s_have_none() {
        assert!(Rejection::new(Reason::MissingRole, "m")
            .challenge()
            .is_some_and(|c| c.contains("error=\"insufficient_scope\"")));
        assert_eq!(
            Rejection::new(Reason::ClientNotAllowed, "m").challenge(),
            None
        );
        assert_eq!(
            Rejection::new(Reason::UpstreamUnavailable, "m").challenge(),
            None
        );
    }

    #[test]
    fn retry_after_is_rounded_up_to_whole_seconds() {
        let r = Rejection::new(Reason::ExchangeUnavailable, "m")
            .retry_after(Duration::from_millis(1200));
        assert!(r.headers("id").contains(&("retry-after", "2".to_string())));
        let r =
            Rejection::new(Reason::ExchangeUnavailable, "m").retry_after(Duration::from_millis(10));
        assert!(r.headers("id").contains(&("retry-after", "1".to_string())));
    }
}
