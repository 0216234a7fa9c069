//! Admission: what happens to a request before it may go on, in one function both adapters
//! call — the pingora gateway (`src/server/proxy.rs` in the binary) and the tower
//! [`AuthLayer`](crate::layer::AuthLayer).
//!
//! [`admit`] runs, in order:
//!
//! 1. **header hygiene**: `Authorization` values marked sensitive (never printed by `Debug`);
//!    the headers a caller must not set removed ([`Config::spoofable_headers`]);
//! 2. **target and path checks** ([`routing::edge`]): `414 uri_too_long`, `400 bad_request`;
//! 3. **route**: selected by host, method and normalized path ([`RouteTable::select`](routing::RouteTable::select)), or the one
//!    the layer was built for; the origin-form target for the upstream
//!    ([`routing::upstream_target`]);
//! 4. **authenticate** ([`Authenticator::authenticate`](crate::auth::Authenticator::authenticate),
//!    SPEC section 1 steps 2–8), unless the route is anonymous;
//! 5. **`/me` rewrite** of the upstream target on exchange routes with `rewrite_me` (gateway
//!    only: behind the layer the application's router owns its paths);
//! 6. **rate limits** ([`RateLimiter::admit`](crate::ratelimit::RateLimiter::admit), SPEC
//!    section 11): every `[[rate_limits]]` entry of the route, keyed by the verified caller, so
//!    a request refused by any step before spends no quota, and a rate-limited one costs no
//!    token request: `429 rate_limited`;
//! 7. **exchange**: the app-only token of the caller's tenant ([`Exchanger::token`]).
//!
//! The result, [`Admitted`], says what to forward: the route, the target, the
//! [`Principal`] and the headers to set upstream ([`Admitted::upstream_headers`]). A refusal is
//! a [`Refused`], answered with the gateway's own response (SPEC section 4).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::auth::{Principal, RequestParts, TokenKind};
use crate::config::{AuthMode, Config, ConsentLost, Route};
use crate::exchange::{self, Exchanger};
use crate::ratelimit::{CallerKeys, RateLimitState};
use crate::reason::{Reason, Rejection};
use crate::routing;
use crate::runtime::Runtime;

/// The parts of a request admission reads and changes, whatever the transport's request type.
pub trait RequestHead {
    /// The method.
    fn method(&self) -> &Method;
    /// The request target as received on the wire (origin form `/a?b`, absolute form
    /// `http://h/a`, or `*`).
    fn raw_target(&self) -> Cow<'_, [u8]>;
    /// The headers.
    fn headers(&self) -> &HeaderMap;
    /// Removes every value of `name`.
    fn remove_header(&mut self, name: &HeaderName);
    /// Replaces the `Authorization` values with `values` (the same values, marked sensitive).
    fn replace_authorization(&mut self, values: Vec<HeaderValue>) -> Result<(), Rejection>;
    /// The `Host` header, else the authority of an absolute-form target.
    fn host(&self) -> Option<&str>;
}

impl<B> RequestHead for http::Request<B> {
    fn method(&self) -> &Method {
        self.method()
    }

    fn raw_target(&self) -> Cow<'_, [u8]> {
        let uri = self.uri();
        if uri.scheme().is_some() {
            Cow::Owned(uri.to_string().into_bytes())
        } else {
            Cow::Borrowed(
                uri.path_and_query()
                    .map_or("/", |pq| pq.as_str())
                    .as_bytes(),
            )
        }
    }

    fn headers(&self) -> &HeaderMap {
        self.headers()
    }

    fn remove_header(&mut self, name: &HeaderName) {
        self.headers_mut().remove(name);
    }

    fn replace_authorization(&mut self, values: Vec<HeaderValue>) -> Result<(), Rejection> {
        let headers = self.headers_mut();
        headers.remove(AUTHORIZATION);
        for v in values {
            headers.append(AUTHORIZATION, v);
        }
        Ok(())
    }

    fn host(&self) -> Option<&str> {
        self.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.uri().authority().map(|a| a.as_str()))
    }
}

/// Which route applies.
#[derive(Debug, Clone)]
pub enum RouteChoice {
    /// Select by host, method and path (the gateway).
    Select,
    /// This route, whatever the path (the layer: the application's router chose). The
    /// upstream target is left alone.
    Fixed(Arc<Route>),
}

/// A request that may go on.
#[derive(Debug)]
pub struct Admitted {
    /// The route it matched.
    pub route: Arc<Route>,
    /// The origin-form target to send upstream when it differs from the request's own
    /// (`strip_prefix`, an absolute-form target, the `/me` rewrite).
    pub upstream_target: Option<http::Uri>,
    /// The verified caller; `None` on an anonymous route.
    pub principal: Option<Principal>,
    /// The app-only token that replaces the caller's, on an exchange route.
    pub exchange: Option<ExchangeGrant>,
    /// How long authentication took (not set on anonymous routes).
    pub auth_time: Option<Duration>,
    /// The rate limits that admitted it, for the `RateLimit-Policy` and `RateLimit` headers of
    /// the response; `None` when no limit applies to the route.
    pub rate_limit: Option<RateLimitState>,
}

/// A request refused: answer `rejection` (SPEC section 4).
#[derive(Debug)]
pub struct Refused {
    /// The route, when one was selected before the refusal.
    pub route: Option<Arc<Route>>,
    /// Why.
    pub rejection: Rejection,
    /// How long authentication ran, when it ran.
    pub auth_time: Option<Duration>,
}

/// The app-only token a request goes upstream with.
#[derive(Debug, Clone)]
pub struct ExchangeGrant {
    exchanger: Arc<Exchanger>,
    tenant: String,
    token: Arc<str>,
}

impl ExchangeGrant {
    /// The exchanger that obtained it.
    pub fn exchanger(&self) -> &Arc<Exchanger> {
        &self.exchanger
    }

    /// The caller's tenant it was issued for.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The access token.
    pub fn access_token(&self) -> &str {
        &self.token
    }

    /// The `Authorization: Bearer …` value, marked sensitive.
    pub fn bearer(&self) -> Option<HeaderValue> {
        let mut v = HeaderValue::try_from(format!("Bearer {}", self.token)).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// The upstream answered 401 to this token: drop it from the cache (rate-limited by the
    /// exchange's `purge_interval`). True when it was purged.
    pub fn upstream_refused(&self) -> bool {
        self.exchanger.purge(&self.tenant, &self.token)
    }
}

/// What to change on the forwarded request's headers.
#[derive(Debug, Default)]
pub struct UpstreamHeaders {
    /// Remove the caller's `Authorization` (`pass_authorization = false`, or an exchange route
    /// whose token replaces it).
    pub remove_authorization: bool,
    /// Headers to set (replacing any value): the identity headers, validator headers and, on
    /// an exchange route, `Authorization` with the app-only token and the request-id headers.
    pub set: Vec<(HeaderName, HeaderValue)>,
}

impl Admitted {
    /// The header changes for the upstream request. `client_request_id` is the caller's
    /// `client-request-id` (kept on exchange routes, else one is made); `now` dates the request.
    pub fn upstream_headers(
        &self,
        client_request_id: Option<&str>,
        now: SystemTime,
    ) -> UpstreamHeaders {
        let mut out = UpstreamHeaders {
            remove_authorization: !self.route.pass_authorization || self.route.exchange.is_some(),
            set: Vec::new(),
        };
        if let Some(p) = &self.principal {
            out.set = p.identity_headers();
        }
        if let Some(x) = &self.exchange {
            if let Some(bearer) = x.bearer() {
                out.set.push((AUTHORIZATION, bearer));
            }
            out.set
                .extend(exchange::exchange_headers(client_request_id, now));
        }
        out
    }
}

/// Admits or refuses `req` under `runtime` (see the module documentation for the steps).
/// `req` is changed in place: spoofable headers removed, `Authorization` marked sensitive.
pub async fn admit<R: RequestHead + ?Sized>(
    runtime: &Runtime,
    req: &mut R,
    choice: &RouteChoice,
) -> Result<Admitted, Refused> {
    let refused = |route: Option<&Arc<Route>>, auth_time, rejection| Refused {
        route: route.cloned(),
        rejection,
        auth_time,
    };
    // Refusals before routing name the layer's route (the gateway has none yet).
    let fixed = match choice {
        RouteChoice::Fixed(route) => Some(route),
        RouteChoice::Select => None,
    };
    let cfg = runtime.config();
    hygiene(cfg, req).map_err(|r| refused(fixed, None, r))?;
    let raw = req.raw_target();
    let edge =
        routing::edge(&cfg.server, req.method(), &raw).map_err(|r| refused(fixed, None, r))?;
    let host = routing::normalize_host(req.host().unwrap_or(""));
    let route = match choice {
        RouteChoice::Fixed(route) => route.clone(),
        RouteChoice::Select => runtime
            .route_table()
            .select(req.method(), &host, &edge.normalized)
            .map_err(|r| refused(None, None, r))?
            .clone(),
    };
    let mut upstream_target = match choice {
        RouteChoice::Fixed(_) => None,
        RouteChoice::Select => routing::upstream_target(&route, &edge, cfg.server.path_case)
            .map(|t| origin_uri(&t))
            .transpose()
            .map_err(|r| refused(Some(&route), None, r))?,
    };
    if route.auth == AuthMode::Anonymous {
        return Ok(Admitted {
            route,
            upstream_target,
            principal: None,
            exchange: None,
            auth_time: None,
            rate_limit: None,
        });
    }
    let auth = runtime.authenticator();
    let started = Instant::now();
    let parts = RequestParts {
        method: req.method(),
        path: edge.target.path,
        normalized_path: &edge.normalized,
        host: &host,
        headers: req.headers(),
    };
    let result = auth.authenticate(&route, &parts).await;
    let auth_time = Some(started.elapsed());
    let principal = result.map_err(|r| refused(Some(&route), auth_time, r))?;
    let exchanger =
        route_exchanger(runtime, &route).map_err(|r| refused(Some(&route), auth_time, r))?;
    if let (Some(exchanger), RouteChoice::Select, Some(uri)) = (exchanger, choice, &upstream_target)
    {
        let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
        if let Some(rewritten) = me_rewrite(exchanger, &principal, edge.target.path, path)
            .map_err(|r| refused(Some(&route), auth_time, r))?
        {
            upstream_target = Some(rewritten);
        }
    }
    let rate_limit = rate_limit(runtime, &route, &principal)
        .await
        .map_err(|r| refused(Some(&route), auth_time, r))?;
    let exchange = match exchanger {
        None => None,
        Some(exchanger) => {
            let token = exchange_token(runtime, exchanger, principal.tenant_id())
                .await
                .map_err(|r| refused(Some(&route), auth_time, r))?;
            Some(ExchangeGrant {
                exchanger: exchanger.clone(),
                tenant: principal.tenant_id().to_string(),
                token: token.access_token,
            })
        }
    };
    Ok(Admitted {
        route,
        upstream_target,
        principal: Some(principal),
        exchange,
        auth_time,
        rate_limit,
    })
}

/// The exchanger of the route's `exchange`, if it has one; `503` when it names none configured.
fn route_exchanger<'r>(
    runtime: &'r Runtime,
    route: &Route,
) -> Result<Option<&'r Arc<Exchanger>>, Rejection> {
    let Some(name) = &route.exchange else {
        return Ok(None);
    };
    runtime.exchanger(name).map(Some).ok_or_else(|| {
        Rejection::new(
            Reason::ExchangeUnavailable,
            format!("exchange {name:?} is not configured"),
        )
    })
}

/// Step 6: the route's rate limits for the verified caller (keys read only when one applies).
async fn rate_limit(
    runtime: &Runtime,
    route: &Route,
    principal: &Principal,
) -> Result<Option<RateLimitState>, Rejection> {
    let limiter = runtime.rate_limiter();
    if !limiter.applies(route) {
        return Ok(None);
    }
    let token = principal.token();
    let user = token.claim_text("oid").or_else(|| token.claim_text("sub"));
    let keys = CallerKeys {
        tenant: principal.tenant_id(),
        client: principal.client_id(),
        user: user.as_deref(),
    };
    let now = runtime.authenticator().clock().now_micros();
    limiter
        .admit(route, &keys, now)
        .await
        .map_err(|r| r.from_caller(principal.tenant_id(), principal.client_id()))
}

/// Step 7: the app-only token of `tid`. With a tenant registry, a failure cached from before the
/// tenant became `active` is not answered again, and a "not consented" answer for an active
/// tenant revokes it (`on_consent_lost = "revoke"`, SPEC section 9).
async fn exchange_token(
    runtime: &Runtime,
    exchanger: &Exchanger,
    tid: &str,
) -> Result<exchange::AppToken, Rejection> {
    let registry = runtime.registry();
    if let Some(since) = registry.and_then(|r| r.active_since(tid)) {
        exchanger.forget_failure_before(tid, since);
    }
    let answer = exchanger.token(tid, runtime.metrics()).await;
    if let (Err(r), Some(registry)) = (&answer, registry) {
        let revoke = runtime.config().tenants.on_consent_lost == ConsentLost::Revoke;
        if r.reason == Reason::TenantNotConsented && revoke {
            let why = format!("consent withdrawn: {}", r.message);
            registry.revoke(tid, &why).await;
        }
    }
    answer
}

/// Step 1: `Authorization` marked sensitive (no allocation when it is already, or absent), and
/// the headers a caller must not set removed, on every route.
fn hygiene<R: RequestHead + ?Sized>(cfg: &Config, req: &mut R) -> Result<(), Rejection> {
    let auth_values = req.headers().get_all(AUTHORIZATION);
    if !auth_values.iter().all(HeaderValue::is_sensitive) {
        let values = auth_values
            .iter()
            .map(|v| {
                let mut v = v.clone();
                v.set_sensitive(true);
                v
            })
            .collect();
        req.replace_authorization(values)?;
    }
    for name in cfg.spoofable_headers(req.headers()) {
        req.remove_header(&name);
    }
    Ok(())
}

/// The `/me` rewrite of an exchange with `rewrite_me`: `Ok(Some(uri))` when `path` has a `me`
/// segment and the token names a user; `403 wrong_token_kind` when it has one and the token
/// names no user (an app-only token has no "me").
fn me_rewrite(
    exchanger: &Exchanger,
    principal: &Principal,
    received: &str,
    path: &str,
) -> Result<Option<http::Uri>, Rejection> {
    let settings = exchanger.settings();
    if !settings.rewrite_me || !exchange::has_me_segment(path) {
        return Ok(None);
    }
    let user = (principal.kind() != TokenKind::App)
        .then(|| exchange::user_value(principal.token(), &settings.user_claim))
        .flatten();
    let Some(user) = user else {
        return Err(Rejection::new(
            Reason::WrongTokenKind,
            format!(
                "the path {received} acts on the signed-in user (/me), but the token has no user ({} claim); call /users/{{id}}/… instead",
                settings.user_claim
            ),
        ));
    };
    exchange::rewrite_me(path, &user)
        .map(|t| origin_uri(&t))
        .transpose()
}

/// The URI of an origin-form target built for the upstream; one the `http` crate cannot
/// represent is refused rather than forwarded in some other form.
fn origin_uri(target: &str) -> Result<http::Uri, Rejection> {
    target.parse::<http::Uri>().map_err(|_| {
        Rejection::new(
            Reason::BadRequest,
            "the request target cannot be forwarded in origin form",
        )
    })
}
