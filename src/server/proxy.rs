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
use aadgate_core::admission::{self, Admitted, RequestHead, RouteChoice};
use aadgate_core::auth::{Principal, Reason, Rejection};
use aadgate_core::config::Route;
use aadgate_core::exchange::rewrite::CLIENT_REQUEST_ID;
use aadgate_core::metrics::NO_ROUTE;
use aadgate_core::reason::Caller;
use aadgate_core::request_id::request_id;
use aadgate_core::runtime::Runtime;

/// The gateway's proxy logic; shared by all worker threads.
pub(crate) struct Gateway {
    pub state: Arc<SharedState>,
}

/// Per-request state.
pub(crate) struct RequestCtx {
    started: Instant,
    request_id: String,
    runtime: Option<Arc<Runtime>>,
    route: Option<Arc<Route>>,
    rejection: Option<Reason>,
    auth_time: Option<Duration>,
    upstream_started: Option<Instant>,
    upstream_status: Option<u16>,
    /// What admission decided: the upstream request is built from it.
    admitted: Option<Admitted>,
    client_request_id: Option<String>,
    /// The verified caller of a request refused after its token was verified.
    caller: Option<Box<Caller>>,
}

/// pingora's request header as admission sees it. Header changes go through pingora's own
/// methods, which keep its record of header-name case in step.
struct Head<'a>(&'a mut RequestHeader);

impl RequestHead for Head<'_> {
    fn method(&self) -> &http::Method {
        &self.0.method
    }

    /// The target as it came on the wire: pingora maps a target in neither origin nor absolute
    /// form to the URI `/` and keeps the bytes, so only they tell what was asked.
    fn raw_target(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.0.raw_path())
    }

    fn headers(&self) -> &http::HeaderMap {
        &self.0.headers
    }

    fn remove_header(&mut self, name: &http::HeaderName) {
        self.0.remove_header(name);
    }

    fn replace_authorization(
        &mut self,
        values: Vec<HeaderValue>,
    ) -> std::result::Result<(), Rejection> {
        self.0.remove_header(&AUTHORIZATION);
        for v in values {
            self.0
                .append_header(AUTHORIZATION, v)
                .map_err(|_| Rejection::new(Reason::BadRequest, "bad Authorization header"))?;
        }
        Ok(())
    }

    fn host(&self) -> Option<&str> {
        self.0
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| self.0.uri.authority().map(|a| a.as_str()))
    }
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

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: String::new(),
            runtime: None,
            route: None,
            rejection: None,
            auth_time: None,
            upstream_started: None,
            upstream_status: None,
            admitted: None,
            client_request_id: None,
            caller: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Instant::now();
        ctx.request_id = request_id(session.req_header().headers.get("x-request-id"));
        let runtime = self.state.current();
        let admitted = admission::admit(
            &runtime,
            &mut Head(session.req_header_mut()),
            &RouteChoice::Select,
        )
        .await;
        ctx.runtime = Some(runtime);
        match admitted {
            Ok(a) => {
                ctx.route = Some(a.route.clone());
                ctx.auth_time = a.auth_time;
                ctx.admitted = Some(a);
                Ok(false)
            }
            Err(refused) => {
                ctx.route = refused.route;
                ctx.auth_time = refused.auth_time;
                let mut rejection = refused.rejection;
                ctx.caller = rejection.caller.take();
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
        let (Some(route), Some(runtime)) = (&ctx.route, &ctx.runtime) else {
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
        let server = &runtime.config().server;
        peer.options.connection_timeout = Some(server.upstream_connect_timeout);
        peer.options.read_timeout = Some(server.upstream_read_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_started = Some(Instant::now());
        let Some(admitted) = &ctx.admitted else {
            return Ok(());
        };
        let route = &admitted.route;
        if let Some(uri) = &admitted.upstream_target {
            upstream.set_uri(uri.clone());
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
        let caller_id = session
            .req_header()
            .headers
            .get(CLIENT_REQUEST_ID)
            .and_then(|v| v.to_str().ok());
        let changes = admitted.upstream_headers(caller_id, std::time::SystemTime::now());
        if changes.remove_authorization {
            upstream.remove_header(&AUTHORIZATION);
        }
        for (name, value) in changes.set {
            if name == CLIENT_REQUEST_ID {
                ctx.client_request_id = value.to_str().ok().map(String::from);
            }
            upstream.insert_header(name, value)?;
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
        if let Some(x) = ctx.admitted.as_ref().and_then(|a| a.exchange.as_ref()) {
            if status == 401 {
                x.upstream_refused();
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
                    exchange = %x.exchanger().settings().name,
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
        let Some(runtime) = &ctx.runtime else { return };
        let m = runtime.metrics();
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
        let principal: Option<&Principal> =
            ctx.admitted.as_ref().and_then(|a| a.principal.as_ref());
        let caller = ctx.caller.as_deref();
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
            latency_ms = millis(total),
            auth_us = ctx.auth_time.map_or(0, |d| d.as_micros() as u64),
            upstream_ms = upstream_time.map_or(0.0, millis),
            tenant_id = principal
                .map(|p| p.tenant_id())
                .or(caller.map(|c| c.tenant_id.as_str()))
                .unwrap_or("-"),
            client_id = principal
                .and_then(|p| p.client_id())
                .or(caller.and_then(|c| c.client_id.as_deref()))
                .unwrap_or("-"),
            client_addr = client_addr.as_deref().unwrap_or("-"),
            error = e.map(|e| e.etype().as_str()).unwrap_or("-"),
            "request"
        );
    }
}

/// A duration in milliseconds, rounded to the microsecond (`0.278`, not `0.27840200000000004`).
fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
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
    use super::{logged_path, millis};
    use std::time::Duration;

    #[test]
    fn durations_in_the_access_log_are_rounded_to_the_microsecond() {
        assert_eq!(millis(Duration::from_nanos(278_402)), 0.278);
        assert_eq!(millis(Duration::from_nanos(278_600)), 0.279);
        assert_eq!(millis(Duration::from_secs(2)), 2000.0);
    }

    #[test]
    fn the_access_log_shows_the_target_as_received_without_its_query() {
        assert_eq!(logged_path(b"x:/admin/users"), "x:/admin/users");
        assert_eq!(logged_path(b"/orders/1?code=secret"), "/orders/1");
        assert_eq!(logged_path(b"http://h/a?q"), "http://h/a");
        assert_eq!(logged_path(&[b'/', 0xff]), "/\u{fffd}");
        assert_eq!(logged_path(&[b'a'; 5000]).len(), 2048);
    }
}
