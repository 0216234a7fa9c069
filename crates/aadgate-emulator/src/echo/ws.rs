//! The echo upstream's WebSocket endpoint, `GET /ws`.
//!
//! After the upgrade the server first sends one text message, the JSON
//! `{"headers":{name:[values]}}` of the upgrade request, so a test sees which identity headers
//! reached the upstream through a tunnel. Then it echoes every text and binary message, answers
//! pings, and records on the [`EchoHandle`] how each connection ended: the client's close frame
//! (code and reason) or a connection dropped without one. Tests wait for that with
//! [`EchoHandle::ws_ended`] instead of sleeping.
//!
//! The handshake is done here over hyper's upgrade (RFC 6455 section 4.2), so the same
//! tungstenite the tests use as a client runs the server side. A `GET /ws` without the upgrade
//! headers (which includes any HTTP/2 request) gets 400; a version other than 13 gets 426.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{headers_json, EchoHandle, EchoState};
use crate::serve::RecordedRequest;

/// How a WebSocket connection to the echo ended, as the upstream saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEnd {
    /// The peer sent a close frame.
    Closed {
        /// Its status code; `None` when the frame carried none (reported as 1005 by browsers).
        code: Option<u16>,
        /// Its reason text (empty when none).
        reason: String,
    },
    /// The connection ended (EOF, reset, protocol error) without a close frame from the peer.
    Dropped,
    /// The echo server shut down and closed the connection itself (code 1001).
    ServerShutdown,
}

/// One WebSocket connection the echo accepted, in the order of their upgrade requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConnection {
    /// The upgrade request as received.
    pub request: RecordedRequest,
    /// Text and binary messages echoed so far.
    pub messages: u64,
    /// How it ended; `None` while it is open.
    pub end: Option<WsEnd>,
}

/// The WebSocket side of the echo state: the connections, and a switch that closes them all
/// when the server shuts down (upgraded connections outlive hyper's graceful shutdown).
pub(super) struct WsState {
    connections: watch::Sender<Vec<WsConnection>>,
    closing: watch::Sender<bool>,
}

impl Default for WsState {
    fn default() -> Self {
        WsState {
            connections: watch::channel(Vec::new()).0,
            closing: watch::channel(false).0,
        }
    }
}

impl WsState {
    /// Closes every open connection (code 1001) and any that opens later.
    pub(super) fn close_all(&self) {
        self.closing.send_replace(true);
    }

    fn open(&self, request: RecordedRequest) -> usize {
        let mut index = 0;
        self.connections.send_modify(|all| {
            index = all.len();
            all.push(WsConnection {
                request,
                messages: 0,
                end: None,
            });
        });
        index
    }

    fn echoed(&self, index: usize) {
        self.connections.send_modify(|all| {
            if let Some(c) = all.get_mut(index) {
                c.messages += 1;
            }
        });
    }

    /// Records the first way connection `index` ended; later reports are ignored.
    fn ended(&self, index: usize, end: WsEnd) {
        self.connections
            .send_if_modified(|all| match all.get_mut(index) {
                Some(c) if c.end.is_none() => {
                    c.end = Some(end);
                    true
                }
                _ => false,
            });
    }
}

impl EchoHandle {
    /// Every WebSocket connection accepted so far, in the order of their upgrade requests.
    pub fn ws_connections(&self) -> Vec<WsConnection> {
        self.inner.state.ws.connections.borrow().clone()
    }

    /// Resolves once connection number `index` (0-based, in upgrade order) has been accepted;
    /// returns it as it is then.
    pub async fn ws_opened(&self, index: usize) -> WsConnection {
        let mut rx = self.inner.state.ws.connections.subscribe();
        // The sender lives in the state for as long as this handle, so this cannot fail.
        let all = rx.wait_for(|all| all.len() > index).await;
        match all {
            Ok(all) => all[index].clone(),
            Err(_) => unreachable!("the echo state outlives its handle"),
        }
    }

    /// Resolves once connection number `index` (0-based, in upgrade order) has ended, with how
    /// it ended: "the upstream saw the tunnel close" for a test, without sleeping.
    pub async fn ws_ended(&self, index: usize) -> WsEnd {
        let mut rx = self.inner.state.ws.connections.subscribe();
        let all = rx
            .wait_for(|all| all.get(index).is_some_and(|c| c.end.is_some()))
            .await;
        match all.ok().and_then(|all| all[index].end.clone()) {
            Some(end) => end,
            None => unreachable!("the echo state outlives its handle"),
        }
    }
}

/// `GET /ws`: checks the upgrade request, answers 101 and echoes on the upgraded connection.
pub(super) async fn upgrade(State(state): State<Arc<EchoState>>, mut req: Request) -> Response {
    state.record(&req);
    let accept = match accept_key(req.headers()) {
        Ok(accept) => accept,
        Err(refusal) => return refusal.into_response(),
    };
    let protocol = first_protocol(req.headers());
    let hello = json!({ "headers": headers_json(req.headers()) }).to_string();
    let index = state.ws.open(RecordedRequest::from_parts(
        req.method(),
        req.uri(),
        req.version(),
        req.headers(),
    ));
    let on_upgrade = hyper::upgrade::on(&mut req);
    let closing = state.ws.closing.subscribe();
    tokio::spawn(async move {
        let end = match on_upgrade.await {
            Ok(upgraded) => {
                let socket =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                echo_messages(socket, hello, closing, &state, index).await
            }
            Err(_) => WsEnd::Dropped,
        };
        state.ws.ended(index, end);
    });

    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(protocol) = protocol {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    }
    response
}

/// Why an upgrade request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// A required header is missing or unusable: 400.
    NotAnUpgrade(&'static str),
    /// `Sec-WebSocket-Version` is not 13: 426 with `Sec-WebSocket-Version: 13` (RFC 6455 4.2.2).
    Version,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::NotAnUpgrade(what) => (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": format!("not a WebSocket upgrade: {what}") })),
            )
                .into_response(),
            Refusal::Version => {
                let mut refusal = (
                    StatusCode::UPGRADE_REQUIRED,
                    Json(json!({ "error": "only WebSocket version 13 is supported" })),
                )
                    .into_response();
                refusal.headers_mut().insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
                refusal
            }
        }
    }
}

/// `Sec-WebSocket-Accept` for a valid upgrade request, or why it is refused.
fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, Refusal> {
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(Refusal::NotAnUpgrade("Connection: upgrade is missing"));
    }
    if !has_token(headers, header::UPGRADE, "websocket") {
        return Err(Refusal::NotAnUpgrade("Upgrade: websocket is missing"));
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Refusal::NotAnUpgrade("Sec-WebSocket-Key is missing"));
    };
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(Refusal::Version);
    }
    HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .map_err(|_| Refusal::NotAnUpgrade("Sec-WebSocket-Key is unusable"))
}

/// True when a comma-separated header (any of its lines) lists `token`, case-insensitively.
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The first subprotocol the client offered, which the echo accepts (it speaks them all alike).
fn first_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL)?.to_str().ok()?;
    let first = offered.split(',').next()?.trim();
    HeaderValue::from_str(first)
        .ok()
        .filter(|_| !first.is_empty())
}

/// Sends the hello, then echoes until the connection ends; returns how it ended.
async fn echo_messages<S>(
    mut socket: WebSocketStream<S>,
    hello: String,
    mut closing: watch::Receiver<bool>,
    state: &EchoState,
    index: usize,
) -> WsEnd
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if socket.send(Message::text(hello)).await.is_err() {
        return WsEnd::Dropped;
    }
    loop {
        let message = tokio::select! {
            // Resolves on `true`, or when the state (and so the server) is gone.
            _ = closing.wait_for(|closing| *closing) => None,
            message = socket.next() => Some(message),
        };
        let Some(message) = message else {
            let frame = CloseFrame {
                code: CloseCode::Away,
                reason: "echo server shutting down".into(),
            };
            let _ = socket.close(Some(frame)).await;
            return WsEnd::ServerShutdown;
        };
        match message {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                state.ws.echoed(index);
                if socket.send(message).await.is_err() {
                    return WsEnd::Dropped;
                }
            }
            // tungstenite has queued the pong; send it now rather than with the next write.
            Some(Ok(Message::Ping(_))) => {
                if socket.flush().await.is_err() {
                    return WsEnd::Dropped;
                }
            }
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(frame))) => {
                let end = match frame {
                    Some(frame) => WsEnd::Closed {
                        code: Some(u16::from(frame.code)),
                        reason: frame.reason.to_string(),
                    },
                    None => WsEnd::Closed {
                        code: None,
                        reason: String::new(),
                    },
                };
                // Recorded at once, so a test waiting for it need not wait for the handshake.
                state.ws.ended(index, end.clone());
                // tungstenite has queued the close reply; reading on sends it and finishes.
                while let Some(Ok(_)) = socket.next().await {}
                return end;
            }
            Some(Err(_)) | None => return WsEnd::Dropped,
        }
    }
}
