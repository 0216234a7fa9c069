//! The pipeline in-process: build an [`Authenticator`] from a configuration file and put it in
//! front of any hyper/axum service with [`AuthLayer`].
//!
//! The layer authenticates every request against one route of the configuration (chosen by
//! name: the application's own router decides which requests reach it), puts the verified
//! [`Principal`] into the request extensions, and answers failures exactly as the gateway does
//! (SPEC section 4: status, JSON body, `x-aadgate-reason`, `WWW-Authenticate`).
//!
//! ```no_run
//! use aadgate_core::auth::Principal;
//! use aadgate_core::layer::{AuthLayer, AuthenticatorExt};
//! use aadgate_core::auth::Authenticator;
//! use axum::{routing::get, Router};
//!
//! async fn me(principal: Principal) -> String {
//!     format!("tenant {} client {:?}", principal.tenant_id(), principal.client_id())
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let auth = Authenticator::from_config_file("conf/emulator.toml").await?;
//! let app = Router::new()
//!     .route("/me", get(me))
//!     .layer(AuthLayer::new(auth, "orders")?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::{HeaderName, HeaderValue, Request, Response};

use crate::auth::{Authenticator, Principal, Rejection, RequestParts, SystemClock, TokenCache};
use crate::config::{AuthMode, Config, ConfigErrors, Route};
use crate::jwks::KeyStore;
use crate::metrics::Metrics;

/// Why an [`Authenticator`] or [`AuthLayer`] could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The configuration file did not load; every error has its `file:line:col`.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// [`AuthLayer::new`] was given a route name the configuration does not define.
    #[error(
        "no route named {0:?} in the configuration (routes are [[routes]] tables with `name = …`)"
    )]
    UnknownRoute(String),
    /// The key refresh task needs a Tokio runtime and none is running on this thread.
    #[error("aadgate needs a Tokio runtime to refresh signing keys; build the authenticator from within one")]
    NoRuntime,
}

/// Loads the configuration at `path` ([`crate::config::load`]) and builds an [`Authenticator`]
/// for it, as [`authenticator_from_config`] does.
///
/// Runs on a Tokio runtime; relative paths in the file resolve against its folder. The signing
/// keys are fetched in the background: requests that arrive before the first fetch wait for it
/// (a bounded time, then `503 keys_unavailable`); call
/// `authenticator.keys.first_load(timeout).await` to wait up front.
pub async fn authenticator_from_file(path: impl AsRef<Path>) -> Result<Authenticator, LayerError> {
    let config = crate::config::load(path.as_ref(), None)?;
    authenticator_from_config(config)
}

/// Builds an [`Authenticator`] for an already-loaded configuration: a [`KeyStore`] for
/// `[identity]` whose refresh task is spawned on the current Tokio runtime (it runs until
/// `authenticator.keys.stop()`), a verified-token cache of `identity.token_cache_size` entries,
/// a fresh [`Metrics`] registry (render it with `authenticator.metrics.render()`), and the
/// system clock.
///
/// Returns [`LayerError::NoRuntime`] when called outside a Tokio runtime.
pub fn authenticator_from_config(config: Config) -> Result<Authenticator, LayerError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| LayerError::NoRuntime)?;
    let metrics = Arc::new(Metrics::new());
    let keys = KeyStore::new(&config.identity, metrics.clone());
    runtime.spawn(keys.clone().run());
    let cache = TokenCache::new(config.identity.token_cache_size, config.identity.clock_skew);
    Ok(Authenticator {
        config: Arc::new(config),
        keys,
        cache: Arc::new(cache),
        metrics,
        clock: Arc::new(SystemClock),
    })
}

/// Constructors of [`Authenticator`] for applications, so they read
/// `Authenticator::from_config_file(path).await`. Import the trait to use them.
pub trait AuthenticatorExt: Sized {
    /// See [`authenticator_from_file`].
    fn from_config_file(
        path: impl AsRef<Path> + Send,
    ) -> impl Future<Output = Result<Self, LayerError>> + Send;

    /// See [`authenticator_from_config`].
    fn from_config(config: Config) -> Result<Self, LayerError>;
}

impl AuthenticatorExt for Authenticator {
    async fn from_config_file(path: impl AsRef<Path> + Send) -> Result<Self, LayerError> {
        authenticator_from_file(path).await
    }

    fn from_config(config: Config) -> Result<Self, LayerError> {
        authenticator_from_config(config)
    }
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

/// A [`tower::Layer`] that authenticates requests for one route of the configuration.
///
/// Wrap any `Service<http::Request<B>, Response = http::Response<ResBody>>` whose body type can
/// be built from [`Bytes`] (axum's `Body`, `http_body_util::Full<Bytes>`, …): `Router::layer`,
/// `Router::route_layer`, `MethodRouter::layer` or `tower::ServiceBuilder`.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
    route: Arc<Route>,
}

impl AuthLayer {
    /// A layer that applies the route named `route` (its `auth`, `token_kind`, roles, scopes,
    /// clients and validators; `path_prefix`, `host`, `methods` and `upstream` are ignored — the
    /// application's router decides which requests get here).
    ///
    /// Returns [`LayerError::UnknownRoute`] when the configuration has no such route.
    pub fn new(authenticator: Authenticator, route: &str) -> Result<Self, LayerError> {
        let found = authenticator
            .config
            .routes
            .iter()
            .find(|r| &*r.name == route)
            .cloned()
            .ok_or_else(|| LayerError::UnknownRoute(route.to_string()))?;
        Ok(Self::for_route(authenticator, found))
    }

    /// A layer for a route built by the caller (e.g. one not in the file).
    pub fn for_route(authenticator: Authenticator, route: Arc<Route>) -> Self {
        AuthLayer {
            auth: Arc::new(authenticator),
            route,
        }
    }

    /// The route this layer applies.
    pub fn route(&self) -> &Arc<Route> {
        &self.route
    }

    /// The authenticator this layer runs.
    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: self.auth.clone(),
            route: self.route.clone(),
        }
    }
}

/// The service [`AuthLayer`] builds.
///
/// Per request, in the gateway's order and with the gateway's functions: removes the inbound
/// headers a caller must not set ([`Config::spoofable_headers`]: `x-auth-*`, claim headers and
/// validators' `headers`, `_` read as `-`); refuses a request target in neither origin nor
/// absolute form, one longer than `server.max_uri_bytes` (`414 uri_too_long`) or an ambiguous
/// path (`400 bad_request`) with [`crate::routing::edge`], on every route; on a route with
/// `auth = "anonymous"` then calls the inner service with nothing more. Otherwise runs
/// [`Authenticator::authenticate`] with the method, the path as received, the normalized path,
/// the `Host` (lower case, without port) and the headers; on success adds the route's claim
/// headers and validator headers to the request, inserts the [`Principal`] into its extensions
/// and calls the inner service; on failure answers with [`rejection_response`] without calling
/// it. Counts `aadgate_requests_total` and `aadgate_auth_duration_seconds` in the
/// authenticator's metrics.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    route: Arc<Route>,
}

fn request_host<B>(req: &Request<B>) -> String {
    let raw = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    crate::routing::normalize_host(raw)
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
        let auth = self.auth.clone();
        let route = self.route.clone();
        Box::pin(async move {
            if let Some(v) = req.headers_mut().get_mut(AUTHORIZATION) {
                v.set_sensitive(true);
            }
            for name in auth.config.spoofable_headers(req.headers()) {
                req.headers_mut().remove(name);
            }
            // The same target and path rules as the gateway, before anything else.
            let raw_target = raw_target(req.uri());
            let edge = match crate::routing::edge(
                &auth.config.server,
                req.method(),
                raw_target.as_bytes(),
            ) {
                Ok(edge) => edge,
                Err(rejection) => return Ok(reject(&auth, &route, &req, &rejection)),
            };
            if route.auth == AuthMode::Anonymous {
                return inner.call(req).await;
            }
            let started = Instant::now();
            let host = request_host(&req);
            let parts = RequestParts {
                method: req.method(),
                path: edge.target.path,
                normalized_path: &edge.normalized,
                host: &host,
                headers: req.headers(),
            };
            let result = auth.authenticate(&route, &parts).await;
            auth.metrics
                .auth_duration
                .with_label_values(&[&*route.name])
                .observe(started.elapsed().as_secs_f64());
            match result {
                Ok(principal) => {
                    for (name, value) in principal.identity_headers() {
                        req.headers_mut().insert(name, value);
                    }
                    req.extensions_mut().insert(principal);
                    let resp = inner.call(req).await?;
                    auth.metrics
                        .request_done(&route.name, resp.status().as_u16(), None);
                    Ok(resp)
                }
                Err(rejection) => Ok(reject(&auth, &route, &req, &rejection)),
            }
        })
    }
}

/// The request target as it came on the wire, as far as the `Uri` keeps it: the whole URI
/// for absolute form, else the path and query (`*` for `OPTIONS *`).
fn raw_target(uri: &http::Uri) -> std::borrow::Cow<'_, str> {
    if uri.scheme().is_some() {
        std::borrow::Cow::Owned(uri.to_string())
    } else {
        std::borrow::Cow::Borrowed(uri.path_and_query().map_or("/", |pq| pq.as_str()))
    }
}

/// Logs and counts a rejection and builds its response.
fn reject<B, ResBody: From<Bytes>>(
    auth: &Authenticator,
    route: &Route,
    req: &Request<B>,
    rejection: &Rejection,
) -> Response<ResBody> {
    let id = request_id(req.headers().get("x-request-id"));
    tracing::info!(
        route = &*route.name,
        status = rejection.status().as_u16(),
        reason = rejection.reason.as_str(),
        request_id = id.as_str(),
        message = rejection.message.as_str(),
        "request rejected"
    );
    auth.metrics.request_done(
        &route.name,
        rejection.status().as_u16(),
        Some(rejection.reason),
    );
    rejection_response(rejection, &id)
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
