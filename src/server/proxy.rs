//! The pingora `ProxyHttp` implementation. Each phase is a thin adapter over named units:
//! routing and authentication in `request_filter`, the peer in `upstream_peer`, header work in
//! `upstream_request_filter`, metrics and the access log once per request in `logging`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use super::state::SharedState;
use aadgate_core::auth::{Authenticator, Principal, Reason, Rejection, RequestParts, TokenKind};
use aadgate_core::config::{AuthMode, Route};
use aadgate_core::exchange::Exchanger;
use aadgate_core::metrics::NO_ROUTE;
use aadgate_core::request_id::request_id;
use aadgate_core::routing;

/// The gateway's proxy logic; shared by all worker threads.
pub struct Gateway {
    pub state: Arc<SharedState>,
}

/// The app-only token a request was sent upstream with (to purge it on an upstream 401).
pub struct ExchangeUse {
    exchanger: Arc<Exchanger>,
    tenant: String,
    token: Arc<str>,
}

/// Per-request state.
pub struct RequestCtx {
    started: Instant,
    request_id: String,
    auth: Option<Arc<Authenticator>>,
    route: Option<Arc<Route>>,
    principal: Option<Principal>,
    rejection: Option<Reason>,
    auth_time: Option<Duration>,
    upstream_started: Option<Instant>,
    upstream_status: Option<u16>,
    /// The origin-form target sent upstream when it differs from the request's own.
    upstream_uri: Option<http::Uri>,
    exchange: Option<ExchangeUse>,
    client_request_id: Option<String>,
}

fn request_host(req: &RequestHeader) -> String {
    let raw = req
        .headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    routing::normalize_host(raw)
}

/// The URI of an origin-form target built for the upstream; one the `http` crate cannot
/// represent is refused here rather than forwarded in some other form.
fn upstream_uri(target: &str) -> std::result::Result<http::Uri, Rejection> {
    target.parse::<http::Uri>().map_err(|_| {
        Rejection::new(
            Reason::BadRequest,
            "the request target cannot be forwarded in origin form",
        )
    })
}

/// Marks every `Authorization` value sensitive, so no `Debug` print of the request (pingora's
/// debug lines print whole request headers, downstream and upstream) shows the caller's
/// token, whatever RUST_LOG says. No-op (and no allocation) without the header.
fn mark_authorization_sensitive(req: &mut RequestHeader) -> std::result::Result<(), Rejection> {
    if req
        .headers
        .get_all(AUTHORIZATION)
        .iter()
        .all(HeaderValue::is_sensitive)
    {
        return Ok(());
    }
    let values: Vec<HeaderValue> = req.headers.get_all(AUTHORIZATION).iter().cloned().collect();
    req.remove_header(&AUTHORIZATION);
    for mut v in values {
        v.set_sensitive(true);
        req.append_header(AUTHORIZATION, v)
            .map_err(|_| Rejection::new(Reason::BadRequest, "bad Authorization header"))?;
    }
    Ok(())
}

/// The request target as received, up to the query, for the access log: a refused target such
/// as `x:/admin` is logged as sent, not as the `/` pingora maps it to. Never the query (it may
/// carry codes or keys). Borrowed unless the target is not UTF-8.
fn logged_path(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    let end = raw.iter().position(|b| *b == b'?').unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end.min(2048)])
}

/// Writes a rejection as the gateway's own JSON response.
async fn respond(session: &mut Session, rejection: &Rejection, request_id: &str) -> Result<()> {
    let body = rejection.body(request_id);
    let headers = rejection.headers(request_id);
    let mut resp = ResponseHeader::build(rejection.status(), Some(headers.len() + 1))?;
    for (name, value) in headers {
        resp.insert_header(name, value)?;
    }
    resp.insert_header("content-length", body.len().to_string())?;
    // A request body the caller is still sending would otherwise have to be drained.
    if session
        .req_header()
        .headers
        .contains_key(http::header::CONTENT_LENGTH)
        || session
            .req_header()
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
    {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

impl Gateway {
    /// Routing, header hygiene and authentication. `Err` is a rejection to answer with.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), Rejection> {
        let auth = self.state.current();
        ctx.auth = Some(auth.clone());
        let cfg = &auth.config;
        let req = session.req_header_mut();
        mark_authorization_sensitive(req)?;
        // Spoofed identity headers never pass, on any route.
        for name in cfg.spoofable_headers(&req.headers) {
            req.remove_header(&name);
        }
        let req = session.req_header();
        let host = request_host(req);
        let method = req.method.clone();
        // The target as it came on the wire: pingora maps a target in neither origin nor
        // absolute form to the URI `/` and keeps the bytes, so only they tell what was asked.
        let edge = routing::edge(&cfg.server, &method, req.raw_path())?;
        let route = routing::select(&cfg.routes, &method, &host, &edge.normalized)?.clone();
        ctx.route = Some(route.clone());
        if let Some(target) = routing::upstream_target(&route, &edge, cfg.server.path_case) {
            ctx.upstream_uri = Some(upstream_uri(&target)?);
        }
        let raw_path = edge.target.path;

        if route.auth == AuthMode::Anonymous {
            return Ok(());
        }

        let started = Instant::now();
        let parts = RequestParts {
            method: &method,
            path: raw_path,
            normalized_path: &edge.normalized,
            host: &host,
            headers: &req.headers,
        };
        let result = auth.authenticate(&route, &parts).await;
        ctx.auth_time = Some(started.elapsed());
        let principal = result?;

        if let Some(exchanger) = &route.exchange {
            let settings = exchanger.settings();
            if settings.rewrite_me {
                if let Some(uri) = ctx.upstream_uri.as_ref() {
                    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
                    if aadgate_core::exchange::has_me_segment(path) {
                        let user = (principal.kind() != TokenKind::App)
                            .then(|| {
                                aadgate_core::exchange::user_value(
                                    principal.token(),
                                    &settings.user_claim,
                                )
                            })
                            .flatten();
                        let Some(user) = user else {
                            return Err(Rejection::new(
                                Reason::WrongTokenKind,
                                format!("the path {raw_path} acts on the signed-in user (/me), but the token has no user ({} claim); call /users/{{id}}/… instead", settings.user_claim),
                            ));
                        };
                        if let Some(rewritten) = aadgate_core::exchange::rewrite_me(path, &user) {
                            ctx.upstream_uri = Some(upstream_uri(&rewritten)?);
                        }
                    }
                }
            }
            let token = exchanger
                .token(principal.tenant_id(), &auth.metrics)
                .await?;
            ctx.exchange = Some(ExchangeUse {
                exchanger: exchanger.clone(),
                tenant: principal.tenant_id().to_string(),
                token: token.access_token,
            });
        }
        ctx.principal = Some(principal);
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: String::new(),
            auth: None,
            route: None,
            principal: None,
            rejection: None,
            auth_time: None,
            upstream_started: None,
            upstream_status: None,
            upstream_uri: None,
            exchange: None,
            client_request_id: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Instant::now();
        ctx.request_id = request_id(session.req_header().headers.get("x-request-id"));
        match self.admit(session, ctx).await {
            Ok(()) => Ok(false),
            Err(rejection) => {
                ctx.rejection = Some(rejection.reason);
                tracing::debug!(request_id = %ctx.request_id, reason = %rejection.reason, message = %rejection.message, "rejected");
                respond(session, &rejection, &ctx.request_id).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(route), Some(auth)) = (&ctx.route, &ctx.auth) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no route selected",
            ));
        };
        let up = &route.upstream;
        let addr = match up.addr {
            Some(a) => a,
            None => resolve(&up.host, up.port).await?,
        };
        let mut peer = HttpPeer::new(addr, up.tls, up.host.clone());
        peer.options.connection_timeout = Some(auth.config.server.upstream_connect_timeout);
        peer.options.read_timeout = Some(auth.config.server.upstream_read_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_started = Some(Instant::now());
        let Some(route) = &ctx.route else {
            return Ok(());
        };
        if let Some(uri) = ctx.upstream_uri.take() {
            upstream.set_uri(uri);
        }
        let original_host = session.req_header().headers.get(HOST).cloned();
        upstream.insert_header(HOST, route.upstream.authority.as_str())?;
        if let Some(h) = original_host {
            upstream.insert_header("x-forwarded-host", h)?;
        }
        upstream.insert_header(
            "x-forwarded-proto",
            if session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .is_some()
            {
                "https"
            } else {
                "http"
            },
        )?;
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = addr.ip().to_string();
            let xff = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip,
            };
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        upstream.insert_header("x-request-id", ctx.request_id.as_str())?;
        if !route.pass_authorization || route.exchange.is_some() {
            upstream.remove_header(&AUTHORIZATION);
        }
        if let Some(p) = &ctx.principal {
            for (name, value) in p.identity_headers() {
                upstream.insert_header(name, value)?;
            }
        }
        if let Some(x) = &ctx.exchange {
            let mut bearer = HeaderValue::try_from(format!("Bearer {}", x.token))
                .or_err(InvalidHTTPHeader, "app-only token is not a header value")?;
            bearer.set_sensitive(true);
            upstream.insert_header(AUTHORIZATION, bearer)?;
            let caller_id = session
                .req_header()
                .headers
                .get("client-request-id")
                .and_then(|v| v.to_str().ok());
            for (name, value) in
                aadgate_core::exchange::exchange_headers(caller_id, std::time::SystemTime::now())
            {
                if name.as_str() == "client-request-id" {
                    ctx.client_request_id = value.to_str().ok().map(String::from);
                }
                upstream.insert_header(name, value)?;
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = resp.status.as_u16();
        ctx.upstream_status = Some(status);
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(x) = &ctx.exchange {
            if status == 401 {
                x.exchanger.purge(&x.tenant, &x.token);
            }
            if status >= 400 {
                let h = |n: &str| {
                    resp.headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_string()
                };
                tracing::warn!(
                    request_id = %ctx.request_id,
                    route = ctx.route.as_ref().map_or(NO_ROUTE, |r| &r.name),
                    exchange = %x.exchanger.settings().name,
                    status,
                    client_request_id = ctx.client_request_id.as_deref().unwrap_or("-"),
                    upstream_request_id = %h("request-id"),
                    x_ms_diagnostics = %h("x-ms-diagnostics"),
                    "upstream refused the app-only request"
                );
            }
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let upstream_failure = matches!(e.esource(), pingora::ErrorSource::Upstream)
            || matches!(
                e.etype(),
                ErrorType::ConnectTimedout
                    | ErrorType::ConnectRefused
                    | ErrorType::ConnectError
                    | ErrorType::ConnectNoRoute
                    | ErrorType::ReadTimedout
                    | ErrorType::WriteTimedout
            );
        if upstream_failure && session.response_written().is_none() {
            let r = Rejection::new(
                Reason::UpstreamUnavailable,
                format!("the upstream did not answer: {}", e.etype().as_str()),
            );
            ctx.rejection = Some(Reason::UpstreamUnavailable);
            if let Err(err) = respond(session, &r, &ctx.request_id).await {
                tracing::debug!(error = %err, "could not send the 502 response");
            }
            return FailToProxy {
                error_code: 502,
                can_reuse_downstream: false,
            };
        }
        let code = match e.etype() {
            ErrorType::HTTPStatus(c) => *c,
            _ if upstream_failure => 502,
            _ => 0,
        };
        if code > 0 && session.response_written().is_none() {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let Some(auth) = &ctx.auth else { return };
        let m = &auth.metrics;
        let route = ctx.route.as_ref().map_or(NO_ROUTE, |r| &r.name);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let reason = ctx.rejection;
        m.request_done(route, status, reason);
        let total = ctx.started.elapsed();
        m.request_duration
            .with_label_values(&[route])
            .observe(total.as_secs_f64());
        if let Some(a) = ctx.auth_time {
            m.auth_duration
                .with_label_values(&[route])
                .observe(a.as_secs_f64());
        }
        let upstream_time = ctx.upstream_started.map(|s| s.elapsed());
        if let Some(u) = upstream_time {
            m.upstream_duration
                .with_label_values(&[route])
                .observe(u.as_secs_f64());
        }
        // The access log line is built only when it is written (RUST_LOG may filter it out).
        if !tracing::enabled!(target: "aadgate::access", tracing::Level::INFO) {
            return;
        }
        let req = session.req_header();
        let client_addr = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(SocketAddr::to_string);
        tracing::info!(
            target: "aadgate::access",
            request_id = %ctx.request_id,
            method = %req.method,
            path = %logged_path(req.raw_path()),
            route,
            status,
            reason = reason.map_or("ok", Reason::as_str),
            upstream_status = ctx.upstream_status.unwrap_or(0),
            latency_ms = total.as_secs_f64() * 1000.0,
            auth_us = ctx.auth_time.map_or(0, |d| d.as_micros() as u64),
            upstream_ms = upstream_time.map_or(0.0, |d| d.as_secs_f64() * 1000.0),
            tenant_id = ctx.principal.as_ref().map_or("-", |p| p.tenant_id()),
            client_id = ctx.principal.as_ref().and_then(|p| p.client_id()).unwrap_or("-"),
            client_addr = client_addr.as_deref().unwrap_or("-"),
            error = e.map(|e| e.etype().as_str()).unwrap_or("-"),
            "request"
        );
    }
}

/// Resolves an upstream host name (without blocking a worker thread).
async fn resolve(host: &str, port: u16) -> Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| Error::because(ErrorType::ConnectNoRoute, format!("resolving {host}"), e))?;
    addrs
        .next()
        .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, format!("{host} has no address")))
}

#[cfg(test)]
mod tests {
    use super::logged_path;

    #[test]
    fn the_access_log_shows_the_target_as_received_without_its_query() {
        assert_eq!(logged_path(b"x:/admin/users"), "x:/admin/users");
        assert_eq!(logged_path(b"/orders/1?code=secret"), "/orders/1");
        assert_eq!(logged_path(b"http://h/a?q"), "http://h/a");
        assert_eq!(logged_path(&[b'/', 0xff]), "/\u{fffd}");
        assert_eq!(logged_path(&[b'a'; 5000]).len(), 2048);
    }
}
