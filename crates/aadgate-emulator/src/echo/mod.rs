//! An echo upstream for the gateway's end-to-end tests, the demo and the benchmarks.
//!
//! One port answers HTTP/1.1 and cleartext HTTP/2 with prior knowledge (h2c), so a test can check
//! which protocol the gateway spoke upstream.
//!
//! | request | answer |
//! |---|---|
//! | `GET /download/{bytes}` | 200, that many bytes of [`download_pattern_byte`], chunked |
//! | `GET /status/{code}` | that status, headers `request-id: <GUID>` and `x-ms-diagnostics: test` |
//! | `GET /hold/{name}` | waits until [`EchoHandle::release`]`(name)`, then answers like any other request |
//! | `POST /upload-echo` | 200, the request body streamed back unchanged (same `content-type`) |
//! | `GET /ws` | WebSocket echo (see [`WsConnection`], [`WsEnd`]): a JSON hello with the upgrade request's headers, then every message back; 400 without the upgrade headers |
//! | `/trailers` | the JSON echo below, then the trailer `x-echo-trailer: done` (HTTP/2; HTTP/1.1 sends none) |
//! | anything else | 200 JSON `{"method","path","query","version","headers":{name:[values]},"body_bytes","body_sha256"}` |
//!
//! `version` is `HTTP/1.1` or `HTTP/2.0`. Bodies are read as a stream and hashed (or echoed)
//! chunk by chunk, so multi-megabyte uploads are never held in memory. Every request is recorded
//! (method, path, query, version, headers) on arrival.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use aws_lc_rs::digest;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Frame;
use serde_json::json;
use tokio::sync::watch;

mod ws;

pub use ws::{WsConnection, WsEnd};

use super::serve::{base_url, lock, version_name, RecordedRequest, ServerTask};
use super::{new_guid, EmulatorError};

/// Size of the chunks `/download/{bytes}` sends.
const DOWNLOAD_CHUNK: u64 = 64 * 1024;

/// Byte number `index` of a `/download/{bytes}` body: `index % 251` (a prime, so the pattern
/// does not line up with chunk or buffer sizes and a lost or repeated chunk is noticed).
pub fn download_pattern_byte(index: u64) -> u8 {
    (index % 251) as u8
}

/// Entry point of the echo upstream; see [`EchoServer::start`].
#[derive(Debug)]
pub struct EchoServer;

/// A running echo server. Cheap to clone; it stops gracefully on [`EchoHandle::shutdown`] or
/// when the last clone is dropped (held requests are released first).
#[derive(Clone)]
pub struct EchoHandle {
    inner: Arc<EchoInner>,
}

impl std::fmt::Debug for EchoHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoHandle")
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

struct EchoInner {
    state: Arc<EchoState>,
    server: ServerTask,
    base_url: String,
}

impl Drop for EchoInner {
    fn drop(&mut self) {
        self.state.release_all();
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct HoldStatus {
    arrived: u64,
    released: bool,
}

#[derive(Default)]
struct EchoState {
    requests: Mutex<Vec<RecordedRequest>>,
    count: AtomicU64,
    holds: Mutex<HashMap<String, watch::Sender<HoldStatus>>>,
    ws: ws::WsState,
}

impl EchoState {
    fn hold(&self, name: &str) -> watch::Sender<HoldStatus> {
        lock(&self.holds)
            .entry(name.to_string())
            .or_insert_with(|| watch::channel(HoldStatus::default()).0)
            .clone()
    }

    /// Lets every held request finish and closes every WebSocket: what stopping the server
    /// needs, since neither would end by itself.
    fn release_all(&self) {
        for hold in lock(&self.holds).values() {
            hold.send_modify(|s| s.released = true);
        }
        self.ws.close_all();
    }

    fn record(&self, req: &Request) {
        self.count.fetch_add(1, Ordering::SeqCst);
        lock(&self.requests).push(RecordedRequest::from_parts(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
        ));
    }
}

impl EchoServer {
    /// Binds `listen` (port 0 picks a free port), then serves on the current tokio runtime.
    pub async fn start(listen: SocketAddr) -> Result<EchoHandle, EmulatorError> {
        let state = Arc::new(EchoState::default());
        let router_state = state.clone();
        let server = ServerTask::spawn(listen, "echo-upstream", move |_| {
            Router::new()
                .route("/download/{bytes}", get(download).fallback(echo))
                .route("/status/{code}", get(status).fallback(echo))
                .route("/hold/{name}", get(hold).fallback(echo))
                .route("/upload-echo", post(upload_echo).fallback(echo))
                .route("/trailers", any(trailers))
                .route("/ws", get(ws::upgrade).fallback(echo))
                .fallback(echo)
                .layer(axum::extract::DefaultBodyLimit::disable())
                .with_state(router_state)
        })
        .await?;
        let base_url = base_url(server.addr());
        Ok(EchoHandle {
            inner: Arc::new(EchoInner {
                state,
                server,
                base_url,
            }),
        })
    }
}

impl EchoHandle {
    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.server.addr()
    }

    /// Every request received so far, oldest first (recorded when its headers arrived).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.state.requests).clone()
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.inner.state.requests).last().cloned()
    }

    /// Number of requests received so far.
    pub fn request_count(&self) -> u64 {
        self.inner.state.count.load(Ordering::SeqCst)
    }

    /// Lets the requests held at `/hold/{name}` complete, and any later ones pass at once.
    pub fn release(&self, name: &str) {
        self.inner
            .state
            .hold(name)
            .send_modify(|s| s.released = true);
    }

    /// Resolves once at least one request to `/hold/{name}` has reached the server.
    pub async fn arrived(&self, name: &str) {
        let mut rx = self.inner.state.hold(name).subscribe();
        // The sender lives in the state map for as long as this handle, so this cannot fail.
        let _ = rx.wait_for(|s| s.arrived > 0).await;
    }

    /// How many requests to `/hold/{name}` have arrived.
    pub fn arrived_count(&self, name: &str) -> u64 {
        self.inner.state.hold(name).borrow().arrived
    }

    /// Releases every held request, closes every WebSocket (code 1001), stops the server
    /// gracefully and waits for it.
    pub async fn shutdown(&self) {
        self.inner.state.release_all();
        self.inner.server.shutdown().await;
    }
}

async fn echo(State(state): State<Arc<EchoState>>, req: Request) -> Response {
    state.record(&req);
    echo_body(req).await
}

async fn echo_body(req: Request) -> Response {
    match echo_json(req).await {
        Ok(json) => Json(json).into_response(),
        Err(response) => response,
    }
}

/// The JSON echo of a request (its body read to the end and hashed), or the 400 answer when the
/// body could not be read.
async fn echo_json(req: Request) -> Result<serde_json::Value, Response> {
    let method = req.method().as_str().to_string();
    let version = version_name(req.version());
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let headers = headers_json(req.headers());
    let mut body = req.into_body();
    let mut hasher = digest::Context::new(&digest::SHA256);
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    hasher.update(&data);
                    body_bytes += data.len() as u64;
                }
            }
            Err(e) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    Json(json!({ "error": format!("request body: {e}") })),
                )
                    .into_response())
            }
        }
    }
    let sha256: String = hasher
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(json!({
        "method": method,
        "path": path,
        "query": query,
        "version": version,
        "headers": headers,
        "body_bytes": body_bytes,
        "body_sha256": sha256,
    }))
}

/// Headers as the echoes report them: `{name: [values in arrival order]}`, names lower-case,
/// values decoded lossily as UTF-8.
fn headers_json(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        map.entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    map
}

/// `POST /upload-echo`: the request body goes back as the response body frame by frame, so a
/// large upload streams through both directions at once and is never held whole.
async fn upload_echo(State(state): State<Arc<EchoState>>, req: Request) -> Response {
    state.record(&req);
    let content_type = req.headers().get(axum::http::header::CONTENT_TYPE).cloned();
    let mut response = Response::new(req.into_body());
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(axum::http::header::CONTENT_TYPE, content_type);
    }
    response
}

/// `/trailers`: the JSON echo followed by the trailer `x-echo-trailer: done`. HTTP/2 always
/// carries trailers; hyper's HTTP/1.1 sends a sized body here and so drops them.
async fn trailers(State(state): State<Arc<EchoState>>, req: Request) -> Response {
    state.record(&req);
    let json = match echo_json(req).await {
        Ok(json) => json,
        Err(response) => return response,
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("x-echo-trailer", HeaderValue::from_static("done"));
    let body = http_body_util::Full::new(Bytes::from(json.to_string()))
        .with_trailers(async move { Some(Ok(trailers)) });
    let mut response = Response::new(Body::new(body));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn download(
    State(state): State<Arc<EchoState>>,
    Path(bytes): Path<String>,
    req: Request,
) -> Response {
    state.record(&req);
    let Ok(end) = bytes.parse::<u64>() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "byte count must be a non-negative integer" })),
        )
            .into_response();
    };
    let mut response = Response::new(Body::new(PatternBody { offset: 0, end }));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// Streams bytes `offset..end` of the download pattern in chunks, without a length (chunked).
struct PatternBody {
    offset: u64,
    end: u64,
}

impl hyper::body::Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.offset >= this.end {
            return Poll::Ready(None);
        }
        let len = DOWNLOAD_CHUNK.min(this.end - this.offset);
        let chunk: Vec<u8> = (this.offset..this.offset + len)
            .map(download_pattern_byte)
            .collect();
        this.offset += len;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.end
    }
}

async fn status(
    State(state): State<Arc<EchoState>>,
    Path(code): Path<String>,
    req: Request,
) -> Response {
    state.record(&req);
    let Some(status) = code
        .parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "status must be 200..=599" })),
        )
            .into_response();
    };
    let mut response = if matches!(status.as_u16(), 204 | 304) {
        status.into_response()
    } else {
        (status, Json(json!({ "status": status.as_u16() }))).into_response()
    };
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&new_guid()) {
        headers.insert("request-id", id);
    }
    headers.insert("x-ms-diagnostics", HeaderValue::from_static("test"));
    response
}

async fn hold(
    State(state): State<Arc<EchoState>>,
    Path(name): Path<String>,
    req: Request,
) -> Response {
    state.record(&req);
    let hold = state.hold(&name);
    let mut rx = hold.subscribe();
    hold.send_modify(|s| s.arrived += 1);
    let _ = rx.wait_for(|s| s.released).await;
    echo_body(req).await
}

#[cfg(test)]
mod tests;
