//! The protobuf messages of `aadgate.echo.v1` (see `proto/echo.proto`), derived with prost.

use std::collections::BTreeMap;

use bytes::Bytes;

/// `EchoRequest`: the argument of `Unary`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    /// Text echoed back in the reply's `message`.
    #[prost(string, tag = "1")]
    pub message: String,
    /// Bytes echoed back in the reply's `payload`.
    #[prost(bytes = "bytes", tag = "2")]
    pub payload: Bytes,
}

/// `EchoReply`: what `Unary` and each `ServerStream` message answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    /// The request's message (`Unary`), or `reply N` (`ServerStream`, N from 0).
    #[prost(string, tag = "1")]
    pub message: String,
    /// The request's payload (`Unary`), or `payload_size` bytes (`ServerStream`).
    #[prost(bytes = "bytes", tag = "2")]
    pub payload: Bytes,
    /// The request's metadata as the service received it: header name (lower-case) to its
    /// values joined with `", "`. Empty in `ServerStream` replies after the first.
    #[prost(btree_map = "string, string", tag = "3")]
    pub metadata: BTreeMap<String, String>,
}

/// `StreamRequest`: the argument of `ServerStream`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamRequest {
    /// How many replies to stream.
    #[prost(uint32, tag = "1")]
    pub count: u32,
    /// Payload bytes in each reply (at most 16 MiB).
    #[prost(uint32, tag = "2")]
    pub payload_size: u32,
}

/// `FailRequest`: the argument of `Fail`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FailRequest {
    /// The gRPC status code to end the call with (0..=16; others end it with `UNKNOWN`).
    #[prost(int32, tag = "1")]
    pub code: i32,
    /// The status message (`grpc-message`).
    #[prost(string, tag = "2")]
    pub message: String,
}
