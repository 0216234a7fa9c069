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
use pingora::protocols::http::HttpTask;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use super::state::SharedState;
use crate::access_log::{self, AccessLine};
use aadgate_core::admission::{self, Admitted, RequestHead, RouteChoice};
use aadgate_core::auth::{Principal, Reason, Rejection};
use aadgate_core::config::{Route, UpstreamProtocol};
use aadgate_core::exchange::rewrite::CLIENT_REQUEST_ID;
use aadgate_core::metrics::{RequestOutcome, NO_ROUTE};
use aadgate_core::onboarding::Page;
use aadgate_core::reason::Caller;
use aadgate_core::request_id::{request_id, RequestId};
use aadgate_core::runtime::Runtime;

/// The gateway's proxy logic; shared by all worker threads.
pub(crate) struct Gateway {
    pub state: Arc<SharedState>,
}

/// Per-request state.
pub(crate) struct RequestCtx {
    started: Instant,
    request_id: RequestId,
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
    /// A gRPC call (`content-type: application/grpc…`): refusals are gRPC statuses.
    grpc: bool,
    /// An upgrade (WebSocket) request: its tunnel's limits.
    tunnel: Option<Tunnel>,
    /// The body of a response the gateway put in place of the upstream's, until it is sent.
    replacement_body: Option<Bytes>,
    /// That body went out: the upstream's chunks are dropped.
    replaced_body_sent: bool,
}

/// The limits of an upgraded connection (SPEC section 13): idle in both directions for
/// `tunnel_idle_timeout` closes it, and so does the caller's token expiring when the route sets
/// `close_on_token_expiry`.
struct Tunnel {
    idle: Duration,
    /// When the token stops being accepted (`exp` + `clock_skew`).
    deadline: Option<Instant>,
    /// Closed because the token expired: the client is sent a WebSocket close frame.
    expired: bool,
}

impl Tunnel {
    /// The read timeout that ends the tunnel at the deadline at the latest; `None` once the
    /// deadline has passed.
    fn read_timeout(&self, now: Instant) -> Option<Duration> {
        match self.deadline {
            None => Some(self.idle),
            Some(d) => d
                .checked_duration_since(now)
                .filter(|left| !left.is_zero())
                .map(|left| left.min(self.idle)),
        }
    }

    /// Called for each chunk either way: refuses the chunk once the token has expired, and
    /// otherwise renews the downstream read timeout so that a silent tunnel still ends at the
    /// deadline (pingora waits on the downstream read afresh after every chunk).
    fn on_chunk(&mut self, session: &mut Session) -> Result<()> {
        match self.read_timeout(Instant::now()) {
            Some(t) => {
                session.set_read_timeout(Some(t));
                Ok(())
            }
            None => {
                self.expired = true;
                Error::e_explain(ErrorType::ReadTimedout, "the caller's token expired")
            }
        }
    }
}

/// A WebSocket close frame from the server (unmasked, RFC 6455 section 5.5.1): status 1008
/// (policy violation) and the reason `token expired`.
const WS_CLOSE_TOKEN_EXPIRED: &[u8] = b"\x88\x0f\x03\xf0token expired";

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

/// Writes a rejection as the gateway's own JSON response, or for a gRPC call as a
/// trailers-only gRPC status (SPEC section 13).
async fn respond(
    session: &mut Session,
    rejection: &Rejection,
    request_id: &str,
    grpc: bool,
) -> Result<()> {
    if grpc {
        let headers = rejection.grpc_headers(request_id);
        let mut resp = ResponseHeader::build(200, Some(headers.len()))?;
        for (name, value) in headers {
            resp.append_header(name, value)?;
        }
        // HTTP/1.1 (gRPC-Web) needs framing; on HTTP/2 the header block ends the stream.
        if !session.is_http2() {
            resp.insert_header("content-length", "0")?;
        }
        discard_request_body(session);
        // As one header block that ends the stream (a trailers-only response): pingora's
        // `write_response_header` would leave the HTTP/2 stream open until the session
        // finishes, and a session that ends in an error would then reset it.
        session
            .downstream_session
            .response_duplex_vec(vec![HttpTask::Header(Box::new(resp), true)])
            .await?;
        return Ok(());
    }
    let body = rejection.body(request_id);
    let headers = rejection.headers(request_id);
    let mut resp = ResponseHeader::build(rejection.status(), Some(headers.len() + 1))?;
    for (name, value) in headers {
        resp.insert_header(name, value)?;
    }
    resp.insert_header("content-length", body.len().to_string())?;
    discard_request_body(session);
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

/// A request body the caller is still sending would otherwise have to be drained: an HTTP/1.1
/// connection is not kept alive after the answer. (HTTP/2 resets just that stream.)
fn discard_request_body(session: &mut Session) {
    let headers = &session.req_header().headers;
    if headers.contains_key(http::header::CONTENT_LENGTH)
        || headers.contains_key(http::header::TRANSFER_ENCODING)
    {
        session.set_keepalive(None);
    }
}

/// Writes a sign-up page or redirect (`[onboarding]`).
async fn write_page(session: &mut Session, page: Page, head: bool) -> Result<()> {
    let mut resp = ResponseHeader::build(page.status, Some(page.headers.len() + 1))?;
    for (name, value) in page.headers {
        resp.insert_header(name, value)?;
    }
    resp.insert_header("content-length", page.body.len().to_string())?;
    session.write_response_header(Box::new(resp), head).await?;
    if !head {
        session
            .write_response_body(Some(Bytes::from(page.body)), true)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules: pingora's default adds a response compression module that is
    /// disabled, and still runs for every request.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            request_id: RequestId::default(),
            runtime: None,
            route: None,
            rejection: None,
            auth_time: None,
            upstream_started: None,
            upstream_status: None,
            admitted: None,
            client_request_id: None,
            caller: None,
            grpc: false,
            tunnel: None,
            replacement_body: None,
            replaced_body_sent: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Instant::now();
        ctx.request_id = request_id(session.req_header().headers.get("x-request-id"));
        ctx.grpc = aadgate_core::reason::is_grpc(&session.req_header().headers);
        let runtime = self.state.current();
        if runtime.onboarding().is_some() {
            let req = session.req_header();
            let (method, path, query) = (
                req.method.clone(),
                req.uri.path().to_string(),
                req.uri.query().map(str::to_string),
            );
            let page = runtime
                .onboarding_page(&method, &path, query.as_deref(), ctx.request_id.as_str())
                .await;
            if let Some(page) = page {
                ctx.rejection = page.reason;
                ctx.runtime = Some(runtime);
                write_page(session, page, method == http::Method::HEAD).await?;
                return Ok(true);
            }
        }
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
                respond(session, &rejection, ctx.request_id.as_str(), ctx.grpc).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
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
        match up.protocol {
            UpstreamProtocol::Http1 => {
                if ctx.grpc
                    && !route
                        .warned_grpc_over_http1
                        .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::warn!(
                        route = %route.name,
                        upstream = %up.authority,
                        "a gRPC call is going to an HTTP/1.1 upstream, which cannot carry gRPC: write the upstream as h2c://host:port (cleartext HTTP/2) or set upstream_protocol = \"h2\" on an https upstream"
                    );
                }
            }
            // h2 offered first by ALPN, HTTP/1.1 accepted.
            UpstreamProtocol::H2 => peer.options.set_http_version(2, 1),
            // Prior knowledge: no ALPN on cleartext, so HTTP/2 only.
            UpstreamProtocol::H2c => peer.options.set_http_version(2, 2),
        }
        if up.protocol.is_h2() {
            // Requests share the upstream's connections as streams (pingora's default is one
            // stream per connection).
            peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        }
        if session.is_upgrade_req() {
            let tunnel = tunnel_for(
                route,
                runtime,
                ctx.admitted.as_ref(),
                server.tunnel_idle_timeout,
            );
            // Before the 101 the upstream answers within upstream_read_timeout as usual; after
            // it, both directions wait on each other, so the idle limit applies to both reads.
            peer.options.read_timeout = Some(server.upstream_read_timeout.max(tunnel.idle));
            session.set_read_timeout(tunnel.read_timeout(Instant::now()));
            ctx.tunnel = Some(tunnel);
        }
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
        // Header values are prepared ones (shared bytes) or built once; names are static.
        // HTTP/2 callers send `:authority` instead of `Host`.
        let req = session.req_header();
        let original_host = req.headers.get(HOST).cloned().or_else(|| {
            req.uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        upstream.insert_header(HOST, route.upstream.host_header.clone())?;
        if let Some(h) = original_host {
            upstream.insert_header(X_FORWARDED_HOST, h)?;
        }
        let tls = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some();
        upstream.insert_header(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if tls { "https" } else { "http" }),
        )?;
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            let xff = forwarded_for(upstream.headers.get(&XFF_NAME), addr.ip());
            upstream.insert_header(X_FORWARDED_FOR, xff)?;
        }
        upstream.insert_header(X_REQUEST_ID, ctx.request_id.header_value().clone())?;
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
        resp.insert_header(X_REQUEST_ID, ctx.request_id.header_value().clone())?;
        // SPEC section 11: allowed responses of rate-limited routes carry the limits' state,
        // appended to any the upstream sends (structured-field lists combine).
        if let Some(limits) = ctx.admitted.as_ref().and_then(|a| a.rate_limit.as_ref()) {
            for (name, value) in limits.headers() {
                resp.append_header(name, value)?;
            }
        }
        if let Some(x) = ctx.admitted.as_ref().and_then(|a| a.exchange.as_ref()) {
            if status == 401 {
                let challenge = aadgate_core::exchange::claims_challenge(
                    resp.headers
                        .get_all(http::header::WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok()),
                );
                match challenge {
                    Some(claims)
                        if x.exchanger().claims_challenge(
                            x.tenant(),
                            x.access_token(),
                            &claims,
                        ) =>
                    {
                        // The caller's own token was fine: it retries and gets a token that
                        // satisfies the challenge (SPEC section 12).
                        let rejection = Rejection::new(
                            Reason::ExchangeUnavailable,
                            "the upstream asked for a new app-only token (continuous access evaluation claims challenge); retry the request",
                        )
                        .retry_after(Duration::from_secs(1));
                        let body = rejection.body(ctx.request_id.as_str());
                        let mut replaced = ResponseHeader::build(rejection.status(), None)?;
                        for (name, value) in rejection.headers(ctx.request_id.as_str()) {
                            replaced.insert_header(name, value)?;
                        }
                        replaced.insert_header("content-length", body.len().to_string())?;
                        *resp = replaced;
                        ctx.rejection = Some(Reason::ExchangeUnavailable);
                        ctx.replacement_body = Some(Bytes::from(body));
                        return Ok(());
                    }
                    _ => {
                        x.upstream_refused();
                    }
                }
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

    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        match &mut ctx.tunnel {
            Some(t) if session.was_upgraded() => t.on_chunk(session),
            _ => Ok(()),
        }
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        // A response the gateway replaced (a claims challenge): its own body instead of the
        // upstream's, sent with the first chunk.
        if ctx.replacement_body.is_some() || ctx.replaced_body_sent {
            *body = ctx.replacement_body.take();
            ctx.replaced_body_sent = true;
            return Ok(None);
        }
        match &mut ctx.tunnel {
            Some(t) if session.was_upgraded() => t.on_chunk(session).map(|()| None),
            _ => Ok(None),
        }
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if let Some(t) = &mut ctx.tunnel {
            if session.was_upgraded() {
                // A silent tunnel reaches its deadline as a read timeout.
                t.expired |= t.deadline.is_some_and(|d| Instant::now() >= d);
                if t.expired {
                    tracing::info!(request_id = %ctx.request_id, route = ctx.route.as_ref().map_or(NO_ROUTE, |r| &r.name), "tunnel closed: the caller's token expired");
                    let close = Bytes::from_static(WS_CLOSE_TOKEN_EXPIRED);
                    if let Err(err) = session.write_response_body(Some(close), true).await {
                        tracing::debug!(error = %err, "could not send the WebSocket close frame");
                    }
                }
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
        }
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
            if let Err(err) = respond(session, &r, ctx.request_id.as_str(), ctx.grpc).await {
                tracing::debug!(error = %err, "could not send the 502 response");
            }
            return FailToProxy {
                error_code: 502,
                // HTTP/2: "reuse" finishes the stream cleanly, so the answer is not cut by a
                // reset; the connection carries other streams anyway.
                can_reuse_downstream: session.is_http2(),
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
            can_reuse_downstream: session.is_http2() && code > 0,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let Some(runtime) = &ctx.runtime else { return };
        // A gRPC refusal is HTTP 200 on the wire; it counts with its section-4 status.
        let status = match ctx.rejection {
            Some(r) if ctx.grpc => r.status().as_u16(),
            _ => session.response_written().map_or(0, |r| r.status.as_u16()),
        };
        let outcome = RequestOutcome {
            status,
            reason: ctx.rejection,
            total: ctx.started.elapsed(),
            auth: ctx.auth_time,
            upstream: ctx.upstream_started.map(|s| s.elapsed()),
        };
        runtime
            .route_metrics(ctx.route.as_deref())
            .request_done(runtime.metrics(), &outcome);
        // The access log line is built only when it is written (RUST_LOG may filter it out).
        if !access_log::enabled() {
            return;
        }
        let req = session.req_header();
        let principal: Option<&Principal> =
            ctx.admitted.as_ref().and_then(|a| a.principal.as_ref());
        let caller = ctx.caller.as_deref();
        access_log::write(&AccessLine {
            request_id: ctx.request_id.as_str(),
            method: req.method.as_str(),
            proto: match req.version {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            raw_target: req.raw_path(),
            route: ctx.route.as_ref().map_or(NO_ROUTE, |r| &r.name),
            status,
            reason: outcome.reason.map_or("ok", Reason::as_str),
            upstream_status: ctx.upstream_status.unwrap_or(0),
            latency: outcome.total,
            auth: outcome.auth,
            upstream: outcome.upstream,
            tenant_id: principal
                .map(|p| p.tenant_id())
                .or(caller.map(|c| c.tenant_id.as_str()))
                .unwrap_or("-"),
            client_id: principal
                .and_then(|p| p.client_id())
                .or(caller.and_then(|c| c.client_id.as_deref()))
                .unwrap_or("-"),
            client_addr: session.client_addr().and_then(|a| a.as_inet()).copied(),
            error: e.map_or("-", |e| e.etype().as_str()),
        });
    }
}

/// Concurrent streams per HTTP/2 upstream connection before another is opened.
const H2_STREAMS_PER_CONNECTION: usize = 100;

/// The limits of an upgrade request's tunnel: the idle timeout, and on a
/// `close_on_token_expiry` route the moment the caller's token stops being accepted.
fn tunnel_for(
    route: &Route,
    runtime: &Runtime,
    admitted: Option<&Admitted>,
    idle: Duration,
) -> Tunnel {
    let deadline = admitted
        .and_then(|a| a.principal.as_ref())
        .filter(|_| route.close_on_token_expiry)
        .map(|p| {
            let skew = runtime.config().identity.clock_skew.as_micros();
            let until = i128::from(p.token().exp) * 1_000_000 + skew as i128;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i128);
            let left = u64::try_from(until - now).unwrap_or(0);
            Instant::now() + Duration::from_micros(left)
        });
    Tunnel {
        idle,
        deadline,
        expired: false,
    }
}

/// Header names the gateway sets on every proxied request (made once, no parsing per request).
const X_FORWARDED_HOST: &str = "x-forwarded-host";
const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
const X_FORWARDED_FOR: &str = "x-forwarded-for";
const X_REQUEST_ID: &str = "x-request-id";
/// `x-forwarded-for` for lookups (a parsed name is not parsed again).
const XFF_NAME: http::HeaderName = http::HeaderName::from_static(X_FORWARDED_FOR);

/// `x-forwarded-for`: the caller's value (when it is text) with the peer's address appended.
fn forwarded_for(previous: Option<&HeaderValue>, ip: std::net::IpAddr) -> HeaderValue {
    use std::io::Write;
    let prev = previous.and_then(|v| v.to_str().ok());
    let mut out = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 39);
    if let Some(p) = prev {
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b", ");
    }
    match ip {
        std::net::IpAddr::V4(v4) => access_log::put_ipv4(&mut out, v4.octets()),
        // Writing into a Vec cannot fail.
        std::net::IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
    // Visible ASCII from a valid value and an address: always a valid header value.
    HeaderValue::from_maybe_shared(Bytes::from(out)).unwrap_or(HeaderValue::from_static("-"))
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
    use super::{forwarded_for, Tunnel};
    use http::HeaderValue;
    use std::time::{Duration, Instant};

    #[test]
    fn a_tunnel_reads_until_the_idle_limit_or_the_token_deadline_whichever_is_first() {
        let now = Instant::now();
        let idle = Duration::from_secs(300);
        let open = |deadline| Tunnel {
            idle,
            deadline,
            expired: false,
        };
        assert_eq!(open(None).read_timeout(now), Some(idle));
        let soon = now + Duration::from_secs(10);
        assert_eq!(
            open(Some(soon)).read_timeout(now),
            Some(Duration::from_secs(10))
        );
        let late = now + Duration::from_secs(3600);
        assert_eq!(open(Some(late)).read_timeout(now), Some(idle));
        assert_eq!(
            open(Some(now)).read_timeout(now),
            None,
            "expired: no more reads"
        );
        assert_eq!(
            open(Some(now)).read_timeout(now + Duration::from_secs(1)),
            None
        );
    }

    #[test]
    fn the_peer_address_is_appended_to_the_callers_forwarded_for() {
        let ip = "10.0.0.7".parse().expect("ip");
        assert_eq!(forwarded_for(None, ip), "10.0.0.7");
        let prev = HeaderValue::from_static("203.0.113.9");
        assert_eq!(forwarded_for(Some(&prev), ip), "203.0.113.9, 10.0.0.7");
        let v6 = "::1".parse().expect("ip");
        assert_eq!(forwarded_for(Some(&prev), v6), "203.0.113.9, ::1");
        let opaque = HeaderValue::from_bytes(&[b'a', 0xff]).expect("opaque value");
        assert_eq!(
            forwarded_for(Some(&opaque), ip),
            "10.0.0.7",
            "not text: replaced"
        );
    }
}
