//! The `aadgate.echo.v1.Echo` service and the server that runs it.
//!
//! [`EchoService`] is a tower service over HTTP requests, written by hand the way tonic's code
//! generator writes one: it routes on the path, decodes with prost, and lets
//! [`tonic::server::Grpc`] frame messages and statuses. On top of what generated code does, it
//! reads the request's headers before tonic sees them (so `metadata` reports exactly what
//! arrived) and adds the trailer `x-echo-trailer: done` to each successful response.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::BodyExt as _;
use tonic::codegen::{BoxFuture, BoxStream, Context, Poll, Service, StdError};
use tonic::metadata::MetadataValue;
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use super::messages::{EchoReply, EchoRequest, FailRequest, StreamRequest};
use super::{Method, ECHO_HEADER, ECHO_TRAILER, MAX_MESSAGE_SIZE, SERVICE_NAME};
use crate::echo::download_pattern_byte;
use crate::serve::{base_url, lock, RecordedRequest, ServerTask};
use crate::EmulatorError;

/// Largest `payload_size` a `ServerStream` request may ask for.
const MAX_STREAM_PAYLOAD: u32 = 16 * 1024 * 1024;

/// Entry point of the gRPC echo server; see [`GrpcEchoServer::start`].
#[derive(Debug)]
pub struct GrpcEchoServer;

impl GrpcEchoServer {
    /// Binds `listen` (port 0 picks a free port), then serves the echo service over cleartext
    /// HTTP/2 with prior knowledge (h2c) on the current tokio runtime. HTTP/1.1 is refused.
    pub async fn start(listen: SocketAddr) -> Result<GrpcEchoHandle, EmulatorError> {
        Self::serve(listen, Server::builder(), "http").await
    }

    /// Like [`GrpcEchoServer::start`], over TLS with ALPN `h2`, presenting the certificate
    /// chain `cert_pem` with its private key `key_pem` (PEM). The base URL is
    /// `https://127.0.0.1:PORT`, so a client that checks the name needs a certificate for that
    /// IP address (or must name another host).
    pub async fn start_tls(
        listen: SocketAddr,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<GrpcEchoHandle, EmulatorError> {
        super::ensure_tls_provider();
        let tls = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
        let builder = Server::builder()
            .tls_config(tls)
            .map_err(|e| EmulatorError::Certificate(format!("gRPC echo TLS: {e}")))?;
        Self::serve(listen, builder, "https").await
    }

    async fn serve(
        listen: SocketAddr,
        builder: Server,
        scheme: &str,
    ) -> Result<GrpcEchoHandle, EmulatorError> {
        let service = EchoService::default();
        let serving = service.clone();
        let server = ServerTask::spawn_with(listen, "grpc-echo", move |listener, _, stop| {
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            async move {
                builder
                    .serve_with_incoming_shutdown(serving, incoming, stop)
                    .await
            }
        })
        .await?;
        let base_url = base_url(server.addr()).replacen("http", scheme, 1);
        Ok(GrpcEchoHandle {
            inner: Arc::new(GrpcInner {
                service,
                server,
                base_url,
            }),
        })
    }
}

/// A running gRPC echo server. Cheap to clone; it stops gracefully on
/// [`GrpcEchoHandle::shutdown`] or when the last clone is dropped.
#[derive(Clone)]
pub struct GrpcEchoHandle {
    inner: Arc<GrpcInner>,
}

struct GrpcInner {
    service: EchoService,
    server: ServerTask,
    base_url: String,
}

impl std::fmt::Debug for GrpcEchoHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcEchoHandle")
            .field("base_url", &self.inner.base_url)
            .finish_non_exhaustive()
    }
}

impl GrpcEchoHandle {
    /// `http://127.0.0.1:PORT` (`https://` for [`GrpcEchoServer::start_tls`]): what a gRPC
    /// client or a gateway route (`h2c://127.0.0.1:PORT`) points at.
    pub fn base_url(&self) -> String {
        self.inner.base_url.clone()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.server.addr()
    }

    /// Number of gRPC requests received so far (any path, including unknown methods).
    pub fn calls(&self) -> u64 {
        self.inner.service.calls()
    }

    /// Every request received so far, oldest first (method, path, version, headers as they
    /// arrived).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.service.requests()
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.inner.service.state.requests).last().cloned()
    }

    /// Stops the server gracefully (calls in flight finish) and waits for it.
    pub async fn shutdown(&self) {
        self.inner.server.shutdown().await;
    }
}

/// The `aadgate.echo.v1.Echo` service as a tower service over HTTP/2 requests. Mount it in any
/// tonic server; [`GrpcEchoServer`] runs one. Clones share their counters.
#[derive(Clone, Default)]
pub struct EchoService {
    state: Arc<EchoState>,
}

impl std::fmt::Debug for EchoService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoService")
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct EchoState {
    calls: AtomicU64,
    requests: Mutex<Vec<RecordedRequest>>,
}

impl EchoService {
    /// Number of requests this service (and its clones) received.
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Every request this service (and its clones) received, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }
}

impl NamedService for EchoService {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for EchoService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.state.calls.fetch_add(1, Ordering::SeqCst);
        lock(&self.state.requests).push(RecordedRequest::from_parts(
            req.method(),
            req.uri(),
            req.version(),
            req.headers(),
        ));
        let Some(method) = Method::from_path(req.uri().path()) else {
            let status = Status::unimplemented(format!("no method {}", req.uri().path()));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let metadata = metadata_of(req.headers());
        Box::pin(async move {
            let response = match method {
                Method::Unary => grpc().unary(Unary { metadata }, req).await,
                Method::ServerStream => {
                    grpc()
                        .server_streaming(ServerStream { metadata }, req)
                        .await
                }
                Method::Fail => grpc().unary(Fail { metadata }, req).await,
            };
            Ok(response.map(with_echo_trailer))
        })
    }
}

/// tonic's framing for one call, with the echo's message size limits both ways.
fn grpc<E, D>() -> Grpc<ProstCodec<E, D>>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    Grpc::new(ProstCodec::default())
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// Adds `x-echo-trailer: done` to the trailers of a response. A response that has none (a
/// trailers-only error) is left as it is.
fn with_echo_trailer(body: tonic::body::Body) -> tonic::body::Body {
    tonic::body::Body::new(body.map_frame(|frame| match frame.into_trailers() {
        Ok(mut trailers) => {
            trailers.insert(ECHO_TRAILER, http::HeaderValue::from_static("done"));
            hyper::body::Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }))
}

/// A request's headers as the replies report them: name to values joined with `", "`.
fn metadata_of(headers: &http::HeaderMap) -> BTreeMap<String, String> {
    let mut metadata: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        metadata
            .entry(name.as_str().to_string())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    metadata
}

/// `Unary`: the message and payload back, with the request's metadata.
struct Unary {
    metadata: BTreeMap<String, String>,
}

impl UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFuture<tonic::Response<EchoReply>, Status>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let EchoRequest { message, payload } = request.into_inner();
        let mut response = tonic::Response::new(EchoReply {
            message,
            payload,
            metadata: std::mem::take(&mut self.metadata),
        });
        response
            .metadata_mut()
            .insert(ECHO_HEADER, MetadataValue::from_static("unary"));
        Box::pin(std::future::ready(Ok(response)))
    }
}

/// `ServerStream`: `count` replies of `payload_size` bytes, produced as the client reads them.
struct ServerStream {
    metadata: BTreeMap<String, String>,
}

impl ServerStreamingService<StreamRequest> for ServerStream {
    type Response = EchoReply;
    type ResponseStream = BoxStream<EchoReply>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<StreamRequest>) -> Self::Future {
        let StreamRequest {
            count,
            payload_size,
        } = request.into_inner();
        if payload_size > MAX_STREAM_PAYLOAD {
            let status = Status::invalid_argument(format!(
                "payload_size {payload_size} is over {MAX_STREAM_PAYLOAD}"
            ));
            return Box::pin(std::future::ready(Err(status)));
        }
        // One buffer shared by every reply (cloning `Bytes` copies nothing).
        let payload: Bytes = (0..u64::from(payload_size))
            .map(download_pattern_byte)
            .collect();
        let mut metadata = Some(std::mem::take(&mut self.metadata));
        let replies = futures_util::stream::iter(0..count).map(move |i| {
            Ok(EchoReply {
                message: format!("reply {i}"),
                payload: payload.clone(),
                metadata: metadata.take().unwrap_or_default(),
            })
        });
        let mut response = tonic::Response::new(Box::pin(replies) as Self::ResponseStream);
        response
            .metadata_mut()
            .insert(ECHO_HEADER, MetadataValue::from_static("server-stream"));
        Box::pin(std::future::ready(Ok(response)))
    }
}

/// `Fail`: ends with the status asked for (code 0 answers a reply with the message).
struct Fail {
    metadata: BTreeMap<String, String>,
}

impl UnaryService<FailRequest> for Fail {
    type Response = EchoReply;
    type Future = BoxFuture<tonic::Response<EchoReply>, Status>;

    fn call(&mut self, request: tonic::Request<FailRequest>) -> Self::Future {
        let FailRequest { code, message } = request.into_inner();
        let outcome = match Code::from_i32(code) {
            Code::Ok => Ok(tonic::Response::new(EchoReply {
                message,
                payload: Bytes::new(),
                metadata: std::mem::take(&mut self.metadata),
            })),
            code => Err(Status::new(code, message)),
        };
        Box::pin(std::future::ready(outcome))
    }
}
