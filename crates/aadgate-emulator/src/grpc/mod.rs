//! A gRPC echo service, `aadgate.echo.v1.Echo`, and the clients that call it: what the
//! gateway's gRPC tests, its demo and its benchmarks talk to (SPEC section 13).
//!
//! - [`GrpcEchoServer`]: the service on tonic over h2c (or TLS with ALPN `h2`), with `Unary`,
//!   `ServerStream` and `Fail`; it reports each request's metadata back, sets header and trailer
//!   metadata, and accepts messages up to [`MAX_MESSAGE_SIZE`] both ways;
//! - [`GrpcEchoClient`]: a client that keeps response headers and trailers apart and returns the
//!   [`Status`] of a failed call with its metadata (e.g. the gateway's `x-aadgate-reason`);
//! - [`grpc_call`]: one `Unary` call summarised on one line, for `aadgate demo` when `grpcurl`
//!   is absent;
//! - [`grpc_load`]: unary calls as fast as possible over several HTTP/2 connections, for the
//!   benchmarks.
//!
//! The messages and the service are written by hand (no protoc, no build script) the way tonic's
//! generated code is; the service definition is [`ECHO_PROTO`], also in `proto/echo.proto`, so
//! generic clients such as `grpcurl -proto` can call it.

mod call;
mod client;
mod load;
mod messages;
mod server;

pub use call::grpc_call;
pub use client::{GrpcClientError, GrpcEchoClient, StreamOutcome, UnaryOutcome};
pub use load::{grpc_load, LoadReport, LoadStop};
pub use messages::{EchoReply, EchoRequest, FailRequest, StreamRequest};
pub use server::{EchoService, GrpcEchoHandle, GrpcEchoServer};
/// gRPC status codes and statuses, as the client returns them and tests compare them.
pub use tonic::{Code, Status};

/// The service definition in protobuf syntax (documentation; nothing compiles it). Write it to a
/// file for `grpcurl -proto`.
pub const ECHO_PROTO: &str = include_str!("../../proto/echo.proto");

/// Fully qualified service name: the first segment of every method path.
pub const SERVICE_NAME: &str = "aadgate.echo.v1.Echo";

/// Largest encoded message either side accepts or sends: 16 MiB of payload plus room for the
/// other fields (tonic's default limit is 4 MiB).
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024 + 64 * 1024;

/// Response header metadata the service sets (value: `unary` or `server-stream`).
pub const ECHO_HEADER: &str = "x-echo-header";

/// Trailer metadata the service sets on every successful call (value: `done`).
pub const ECHO_TRAILER: &str = "x-echo-trailer";

/// The service's methods, with their paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Unary,
    ServerStream,
    Fail,
}

impl Method {
    /// The method's name after the service name in its path.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Method::Unary => "Unary",
            Method::ServerStream => "ServerStream",
            Method::Fail => "Fail",
        }
    }

    /// The method a request path names, if any.
    pub(crate) fn from_path(path: &str) -> Option<Method> {
        let name = path
            .strip_prefix('/')?
            .strip_prefix(SERVICE_NAME)?
            .strip_prefix('/')?;
        [Method::Unary, Method::ServerStream, Method::Fail]
            .into_iter()
            .find(|m| m.name() == name)
    }
}

/// Selects aws-lc-rs as the process's rustls provider unless one is already installed. A
/// process that links both rustls providers (pingora brings ring) has no default, and tonic's
/// TLS would panic on first use.
pub(crate) fn ensure_tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// The canonical upper-case name of a status code, as gRPC's documentation spells it
/// (`OK`, `UNAUTHENTICATED`, …).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests;
