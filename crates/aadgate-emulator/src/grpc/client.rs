//! A client of the echo service that shows what a gateway in between did: response header
//! metadata and trailers kept apart, and a failed call's [`Status`] with its metadata.
//!
//! Every method is called as a server-streaming call on the wire-level API (a unary call is one
//! message each way; only the client's bookkeeping differs), because tonic's unary helper merges
//! the trailers into the header metadata.

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::HeaderMap;
use tonic::codec::Streaming;
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue, MetadataKey, MetadataMap};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

use super::messages::{EchoReply, EchoRequest, FailRequest, StreamRequest};
use super::{Method, MAX_MESSAGE_SIZE, SERVICE_NAME};

/// Why a gRPC client could not be set up (a call's own failure is a [`Status`]).
#[derive(Debug, thiserror::Error)]
pub enum GrpcClientError {
    /// The URL is not `http://`, `h2c://` or `https://` with a host and port.
    #[error("invalid gRPC URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The connection (TCP, TLS, HTTP/2) could not be established.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL given.
        url: String,
        /// The error with its causes.
        reason: String,
    },
    /// An argument is out of range (e.g. zero connections for a load run).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// A successful `Unary` or `Fail` call.
#[derive(Debug, Clone)]
pub struct UnaryOutcome {
    /// The reply message.
    pub reply: EchoReply,
    /// Response header metadata (e.g. `x-echo-header`, and what a gateway added).
    pub headers: HeaderMap,
    /// Trailer metadata (`grpc-status: 0`, `x-echo-trailer: done`, …).
    pub trailers: HeaderMap,
}

/// A `ServerStream` call that got its response headers: the replies read, and how it ended.
#[derive(Debug, Clone)]
pub struct StreamOutcome {
    /// Response header metadata.
    pub headers: HeaderMap,
    /// Every reply received, in order.
    pub replies: Vec<EchoReply>,
    /// Trailer metadata when the stream ended with OK (empty otherwise; see `error`).
    pub trailers: HeaderMap,
    /// The status that ended the stream when it was not OK (its metadata holds the trailers
    /// and the response headers).
    pub error: Option<Status>,
}

/// A client of `aadgate.echo.v1.Echo` over one HTTP/2 connection. Cheap to clone; clones share
/// the connection, and calls may run concurrently.
#[derive(Debug, Clone)]
pub struct GrpcEchoClient {
    grpc: tonic::client::Grpc<Channel>,
    /// Path before `/aadgate.echo.v1.Echo/…`, from the URL (empty for none).
    prefix: String,
}

impl GrpcEchoClient {
    /// Connects to `url` over cleartext HTTP/2 with prior knowledge: `http://host:port` or
    /// `h2c://host:port`, optionally with a path prefix that is put before each method's path.
    /// Fails at once if the server cannot be reached; an `https://` URL needs
    /// [`GrpcEchoClient::connect_tls`].
    pub async fn connect(url: &str) -> Result<Self, GrpcClientError> {
        let target = Target::parse(url)?;
        if target.tls {
            return Err(invalid(
                url,
                "https:// needs GrpcEchoClient::connect_tls with the CA certificate",
            ));
        }
        let channel = connect_endpoint(url, target.endpoint).await?;
        Ok(Self::new(channel, target.prefix))
    }

    /// Connects to `https://host:port` over TLS with ALPN `h2`, trusting only the CA
    /// certificate(s) in `ca_pem` and checking the certificate against the URL's host.
    pub async fn connect_tls(url: &str, ca_pem: &[u8]) -> Result<Self, GrpcClientError> {
        super::ensure_tls_provider();
        let target = Target::parse(url)?;
        if !target.tls {
            return Err(invalid(url, "connect_tls needs an https:// URL"));
        }
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        let endpoint = target
            .endpoint
            .tls_config(tls)
            .map_err(|e| GrpcClientError::Connect {
                url: url.to_string(),
                reason: error_chain(&e),
            })?;
        let channel = connect_endpoint(url, endpoint).await?;
        Ok(Self::new(channel, target.prefix))
    }

    /// A client over an existing channel (one HTTP/2 connection), with a path prefix.
    pub(crate) fn new(channel: Channel, prefix: String) -> Self {
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE);
        GrpcEchoClient { grpc, prefix }
    }

    /// Calls `Unary` with `message`, `payload` and the request metadata `metadata` (names
    /// ending in `-bin` carry the value's bytes as binary metadata). Returns the reply with the
    /// response's header and trailer metadata, or the call's status (a gateway's rejection:
    /// its code, message and metadata such as `x-aadgate-reason`).
    pub async fn unary(
        &self,
        message: &str,
        payload: impl Into<Bytes>,
        metadata: &[(&str, &str)],
    ) -> Result<UnaryOutcome, Status> {
        let request = EchoRequest {
            message: message.to_string(),
            payload: payload.into(),
        };
        self.single(Method::Unary, request, metadata).await
    }

    /// Calls `ServerStream` for `count` replies of `payload_size` bytes and reads them all.
    /// `Err` when the call failed before its response headers (e.g. a gateway's rejection);
    /// a stream that failed later is an `Ok` with [`StreamOutcome::error`] set.
    pub async fn server_stream(
        &self,
        count: u32,
        payload_size: u32,
        metadata: &[(&str, &str)],
    ) -> Result<StreamOutcome, Status> {
        let request = StreamRequest {
            count,
            payload_size,
        };
        let (headers, mut stream) = self.start(Method::ServerStream, request, metadata).await?;
        let mut replies = Vec::new();
        let error = loop {
            match stream.message().await {
                Ok(Some(reply)) => replies.push(reply),
                Ok(None) => break None,
                Err(status) => break Some(with_headers(status, &headers)),
            }
        };
        let trailers = match error {
            None => match stream.trailers().await {
                Ok(trailers) => trailers.map(MetadataMap::into_headers).unwrap_or_default(),
                Err(status) => {
                    return Ok(StreamOutcome {
                        headers: headers.clone(),
                        replies,
                        trailers: HeaderMap::new(),
                        error: Some(with_headers(status, &headers)),
                    })
                }
            },
            Some(_) => HeaderMap::new(),
        };
        Ok(StreamOutcome {
            headers,
            replies,
            trailers,
            error,
        })
    }

    /// Calls `Fail`, which ends with `code` and `message` (for `Code::Ok`, a reply carrying
    /// `message`). The returned status is what the client saw, so a gateway's changes show.
    pub async fn fail(
        &self,
        code: Code,
        message: &str,
        metadata: &[(&str, &str)],
    ) -> Result<UnaryOutcome, Status> {
        let request = FailRequest {
            code: code as i32,
            message: message.to_string(),
        };
        self.single(Method::Fail, request, metadata).await
    }

    /// A call with one reply: reads it and then the trailers.
    async fn single<M>(
        &self,
        method: Method,
        request: M,
        metadata: &[(&str, &str)],
    ) -> Result<UnaryOutcome, Status>
    where
        M: prost::Message + Send + Sync + 'static,
    {
        let (headers, mut stream) = self.start(method, request, metadata).await?;
        let reply = stream
            .message()
            .await
            .map_err(|status| with_headers(status, &headers))?
            .ok_or_else(|| Status::internal("the response ended without a reply message"))?;
        let trailers = stream
            .trailers()
            .await
            .map_err(|status| with_headers(status, &headers))?
            .map(MetadataMap::into_headers)
            .unwrap_or_default();
        Ok(UnaryOutcome {
            reply,
            headers,
            trailers,
        })
    }

    /// Sends `request` to `method` and waits for the response headers.
    async fn start<M>(
        &self,
        method: Method,
        request: M,
        metadata: &[(&str, &str)],
    ) -> Result<(HeaderMap, Streaming<EchoReply>), Status>
    where
        M: prost::Message + Send + Sync + 'static,
    {
        let request = with_metadata(request, metadata)?;
        let path = self.path(method)?;
        let mut grpc = self.grpc.clone();
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(format!("connection not ready: {e}")))?;
        let response = grpc
            .server_streaming(request, path, ProstCodec::<M, EchoReply>::default())
            .await?;
        let (headers, stream, _) = response.into_parts();
        Ok((headers.into_headers(), stream))
    }

    fn path(&self, method: Method) -> Result<PathAndQuery, Status> {
        let path = format!("{}/{SERVICE_NAME}/{}", self.prefix, method.name());
        PathAndQuery::try_from(path)
            .map_err(|e| Status::invalid_argument(format!("method path: {e}")))
    }
}

/// A request with metadata entries added; `-bin` names get the value's bytes as binary.
pub(crate) fn with_metadata<M>(
    message: M,
    metadata: &[(&str, &str)],
) -> Result<tonic::Request<M>, Status> {
    let mut request = tonic::Request::new(message);
    for (name, value) in metadata {
        let bad = |e: &dyn std::fmt::Display| {
            Status::invalid_argument(format!("request metadata {name:?}: {e}"))
        };
        if name.ends_with("-bin") {
            let key = MetadataKey::from_bytes(name.as_bytes()).map_err(|e| bad(&e))?;
            let value = BinaryMetadataValue::from_bytes(value.as_bytes());
            request.metadata_mut().append_bin(key, value);
        } else {
            let key = MetadataKey::from_bytes(name.as_bytes()).map_err(|e| bad(&e))?;
            let value = AsciiMetadataValue::try_from(*value).map_err(|e| bad(&e))?;
            request.metadata_mut().append(key, value);
        }
    }
    Ok(request)
}

/// A status with the response headers added to its metadata (a status from the trailers of a
/// response carries only the trailers).
fn with_headers(status: Status, headers: &HeaderMap) -> Status {
    let mut all = headers.clone();
    for (name, value) in status.metadata().clone().into_headers() {
        if let Some(name) = name {
            all.insert(name, value);
        }
    }
    Status::with_metadata(
        status.code(),
        status.message(),
        MetadataMap::from_headers(all),
    )
}

/// A URL split into what tonic connects to and the path prefix of the methods.
pub(crate) struct Target {
    pub(crate) endpoint: Endpoint,
    pub(crate) prefix: String,
    pub(crate) tls: bool,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self, GrpcClientError> {
        let uri: http::Uri = url.parse().map_err(|e| invalid(url, e))?;
        let tls = match uri.scheme_str() {
            Some("http" | "h2c") => false,
            Some("https") => true,
            _ => return Err(invalid(url, "the scheme must be http, h2c or https")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| invalid(url, "no host and port"))?;
        let origin = format!("{}://{authority}", if tls { "https" } else { "http" });
        let endpoint = Endpoint::from_shared(origin)
            .map_err(|e| invalid(url, e))?
            .tcp_nodelay(true)
            .connect_timeout(std::time::Duration::from_secs(10));
        let prefix = uri.path().trim_end_matches('/').to_string();
        Ok(Target {
            endpoint,
            prefix,
            tls,
        })
    }
}

/// Opens the connection of `endpoint` (one HTTP/2 connection per call).
pub(crate) async fn connect_endpoint(
    url: &str,
    endpoint: Endpoint,
) -> Result<Channel, GrpcClientError> {
    endpoint
        .connect()
        .await
        .map_err(|e| GrpcClientError::Connect {
            url: url.to_string(),
            reason: error_chain(&e),
        })
}

pub(crate) fn invalid(url: &str, reason: impl std::fmt::Display) -> GrpcClientError {
    GrpcClientError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    }
}

/// An error with its causes, `outer: inner: …` (tonic's transport error alone says only
/// "transport error").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
