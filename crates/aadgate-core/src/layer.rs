//! The pipeline in-process: build a [`Runtime`] from a configuration file and put it in front
//! of any hyper/axum service with [`AuthLayer`].
//!
//! The layer admits every request for one route of the configuration (chosen by name: the
//! application's own router decides which requests reach it) with the gateway's own
//! [`admission`] step, puts the verified [`Principal`] into the request
//! extensions — and on a route with `exchange`, the [`ExchangeGrant`] whose app-only token of
//! the caller's tenant replaces the caller's `Authorization` — and answers failures exactly as
//! the gateway does (SPEC section 4: status, JSON body, `x-aadgate-reason`,
//! `WWW-Authenticate`).
//!
//! ```no_run
//! use aadgate_core::auth::Principal;
//! use aadgate_core::layer::AuthLayer;
//! use aadgate_core::runtime::Runtime;
//! use axum::{routing::get, Router};
//!
//! async fn me(principal: Principal) -> String {
//!     format!("tenant {} client {:?}", principal.tenant_id(), principal.client_id())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::from_config_file("conf/emulator.toml").await?;
//! let app = Router::new()
//!     .route("/me", get(me))
//!     .layer(AuthLayer::new(runtime, "orders")?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH};
use http::{HeaderName, HeaderValue, Request, Response};

pub use crate::admission::ExchangeGrant;
use crate::admission::{self, Admitted, Refused, RouteChoice};
use crate::auth::Principal;
use crate::config::Route;
use crate::exchange::rewrite::CLIENT_REQUEST_ID;
use crate::metrics::NO_ROUTE;
use crate::ratelimit::RateLimitState;
use crate::reason::Rejection;
use crate::runtime::Runtime;
pub use crate::runtime::StartError;

/// Why an [`AuthLayer`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The runtime did not build or start (a configuration error, or no Tokio runtime).
    #[error(transparent)]
    Start(#[from] StartError),
    /// [`AuthLayer::new`] was given a route name the configuration does not define.
    #[error(
        "no route named {0:?} in the configuration (routes are [[routes]] tables with `name = …`)"
    )]
    UnknownRoute(String),
}

pub use crate::request_id::request_id;

/// The gateway's own response for `rejection`: its status, `content-type: application/json`,
/// `x-aadgate-reason`, `x-request-id`, `cache-control: no-store`, `WWW-Authenticate` (401s, and
/// 403s for missing roles or scopes), `Retry-After` (when set) and the JSON body
/// `{"error", "reason", "message", "request_id"}`.
pub fn rejection_response<B: From<Bytes>>(rejection: &Rejection, request_id: &str) -> Response<B> {
    let body = Bytes::from(rejection.body(request_id));
    let len = body.len();
    let mut resp = Response::new(B::from(body));
    *resp.status_mut() = rejection.status();
    let headers = resp.headers_mut();
    for (name, value) in rejection.headers(request_id) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.insert(n, v);
        }
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// The gRPC form of the gateway's response for `rejection` (SPEC section 13): HTTP 200 with no
/// body, `content-type: application/grpc`, `grpc-status`, `grpc-message` and the other headers
/// of [`rejection_response`] — a trailers-only response, so gRPC clients see the status and
/// the reason.
pub fn grpc_rejection_response<B: From<Bytes>>(
    rejection: &Rejection,
    request_id: &str,
) -> Response<B> {
    let mut resp = Response::new(B::from(Bytes::new()));
    let headers = resp.headers_mut();
    for (name, value) in rejection.grpc_headers(request_id) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(n, v);
        }
    }
    resp
}

/// A [`tower::Layer`] that admits requests for one route of the configuration.
///
/// Wrap any `Service<http::Request<B>, Response = http::Response<ResBody>>` whose body type can
/// be built from [`Bytes`] (axum's `Body`, `http_body_util::Full<Bytes>`, …): `Router::layer`,
/// `Router::route_layer`, `MethodRouter::layer` or `tower::ServiceBuilder`.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    runtime: Runtime,
    route: Arc<Route>,
}

impl AuthLayer {
    /// A layer that applies the route named `route`: its `auth`, `token_kind`, roles, scopes,
    /// clients, validators, `pass_authorization`, claim headers and `exchange`.
    /// `path_prefix`, `host`, `methods`, `strip_prefix`, `upstream` and the exchange's
    /// `rewrite_me` are not used: the application's router decides which requests get here and
    /// owns its paths.
    ///
    /// Returns [`LayerError::UnknownRoute`] when the configuration has no such route.
    pub fn new(runtime: Runtime, route: &str) -> Result<Self, LayerError> {
        let found = runtime
            .config()
            .routes
            .iter()
            .find(|r| &*r.name == route)
            .cloned()
            .ok_or_else(|| LayerError::UnknownRoute(route.to_string()))?;
        Ok(Self::for_route(runtime, found))
    }

    /// A layer for a route built by the caller (e.g. one not in the file). The validators and
    /// the exchange it names must be in the runtime's configuration; a request on a route
    /// naming a missing one is refused (`503`).
    pub fn for_route(runtime: Runtime, route: Arc<Route>) -> Self {
        AuthLayer { runtime, route }
    }

    /// The route this layer applies.
    pub fn route(&self) -> &Arc<Route> {
        &self.route
    }

    /// The runtime this layer admits with.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            runtime: self.runtime.clone(),
            choice: RouteChoice::Fixed(self.route.clone()),
        }
    }
}

/// The service [`AuthLayer`] builds.
///
/// Per request it runs [`admission::admit`] — the gateway's own admission: header hygiene
/// (`x-auth-*`, claim headers and validators' `headers` removed, `_` read as `-`), the request
/// target and path checks (`414 uri_too_long`, `400 bad_request`), then, unless the route is
/// anonymous, the token pipeline and, on an exchange route, the app-only token of the caller's
/// tenant. On success it sets the upstream headers admission names (claim headers, validator
/// headers, and on an exchange route `Authorization: Bearer <app-only token>` with the
/// `client-request-id` headers; `Authorization` is removed when `pass_authorization = false`),
/// inserts the [`Principal`] and the [`ExchangeGrant`] into the extensions and calls the inner
/// service; an inner answer of 401 on an exchange route drops that app-only token from the
/// cache, as the gateway does on an upstream 401. On a rate-limited route the inner service's
/// response gets `RateLimit-Policy` and `RateLimit` appended. On failure it answers with
/// [`rejection_response`] without calling the inner service. Counts
/// `aadgate_requests_total` and `aadgate_auth_duration_seconds` in the runtime's metrics.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    runtime: Runtime,
    choice: RouteChoice,
}

impl<S, B, ResBody> tower::Service<Request<B>> for AuthService<S>
where
    S: tower::Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: From<Bytes> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // The clone is not ready; the ready one handles this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let runtime = self.runtime.clone();
        let choice = self.choice.clone();
        Box::pin(async move {
            let admitted = admission::admit(&runtime, &mut req, &choice).await;
            let metrics = runtime.metrics();
            let observe = |route: &str, auth_time: Option<std::time::Duration>| {
                if let Some(t) = auth_time {
                    metrics
                        .auth_duration
                        .with_label_values(&[route])
                        .observe(t.as_secs_f64());
                }
            };
            let a = match admitted {
                Ok(a) => a,
                Err(refused) => {
                    let route = refused.route.as_ref().map_or(NO_ROUTE, |r| &*r.name);
                    observe(route, refused.auth_time);
                    return Ok(reject(&runtime, route, &req, &refused));
                }
            };
            observe(&a.route.name, a.auth_time);
            forward(&mut req, &a);
            let route = a.route.clone();
            let exchange = a.exchange.clone();
            let limits = a.rate_limit.clone();
            if let Some(p) = a.principal {
                req.extensions_mut().insert(p);
            }
            if let Some(x) = a.exchange {
                req.extensions_mut().insert(x);
            }
            let mut resp = inner.call(req).await?;
            if let Some(limits) = limits {
                add_rate_limit_headers(resp.headers_mut(), &limits);
            }
            let status = resp.status().as_u16();
            if let (401, Some(x)) = (status, &exchange) {
                x.upstream_refused();
            }
            metrics.request_done(&route.name, status, None);
            Ok(resp)
        })
    }
}

/// `RateLimit-Policy` and `RateLimit` on an admitted request's response (SPEC section 11),
/// appended to any the inner service set.
fn add_rate_limit_headers(headers: &mut http::HeaderMap, limits: &RateLimitState) {
    for (name, value) in limits.headers() {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
}

/// Applies admission's header changes to the request the inner service gets.
fn forward<B>(req: &mut Request<B>, a: &Admitted) {
    let caller_id = req
        .headers()
        .get(CLIENT_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let changes = a.upstream_headers(caller_id.as_deref(), SystemTime::now());
    let headers = req.headers_mut();
    if changes.remove_authorization {
        headers.remove(AUTHORIZATION);
    }
    for (name, value) in changes.set {
        headers.insert(name, value);
    }
}

/// Logs and counts a refusal and builds its response.
fn reject<B, ResBody: From<Bytes>>(
    runtime: &Runtime,
    route: &str,
    req: &Request<B>,
    refused: &Refused,
) -> Response<ResBody> {
    let rejection = &refused.rejection;
    let id = request_id(req.headers().get("x-request-id"));
    tracing::info!(
        route,
        status = rejection.status().as_u16(),
        reason = rejection.reason.as_str(),
        request_id = id.as_str(),
        message = rejection.message.as_str(),
        "request rejected"
    );
    runtime
        .metrics()
        .request_done(route, rejection.status().as_u16(), Some(rejection.reason));
    if crate::reason::is_grpc(req.headers()) {
        grpc_rejection_response(rejection, id.as_str())
    } else {
        rejection_response(rejection, id.as_str())
    }
}

/// A handler argument (`async fn h(principal: Principal)`) for routes behind [`AuthLayer`].
/// Without the layer (or on an anonymous route) the request fails with `500` and a message
/// naming the mistake. With the `axum` feature.
#[cfg(feature = "axum")]
impl<St: Send + Sync> axum::extract::FromRequestParts<St> for Principal {
    type Rejection = (http::StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &St,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Principal>().cloned().ok_or((
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "no aadgate Principal on this request: put the handler behind aadgate_core::layer::AuthLayer on a route with auth = \"required\"",
        ))
    }
}

/// A handler argument (`async fn h(grant: ExchangeGrant)`) for exchange routes behind
/// [`AuthLayer`]: the app-only token of the caller's tenant, to call the API the exchange is
/// for. On a route without `exchange` the request fails with `500` and a message naming the
/// mistake. With the `axum` feature.
#[cfg(feature = "axum")]
impl<St: Send + Sync> axum::extract::FromRequestParts<St> for ExchangeGrant {
    type Rejection = (http::StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &St,
    ) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<ExchangeGrant>().cloned().ok_or((
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "no app-only token on this request: put the handler behind aadgate_core::layer::AuthLayer on a route with `exchange = NAME`",
        ))
    }
}
