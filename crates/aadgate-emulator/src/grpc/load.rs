//! A gRPC load client for the benchmarks: unary calls as fast as possible over several HTTP/2
//! connections, with latency percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::metadata::AsciiMetadataValue;
use tonic_prost::ProstCodec;

use super::client::{connect_endpoint, invalid, GrpcClientError, Target};
use super::messages::{EchoReply, EchoRequest};
use super::{code_name, Method, SERVICE_NAME};

/// What a [`grpc_load`] run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Calls that ended with OK.
    pub calls: u64,
    /// Calls that ended with any other status (or a transport error).
    pub errors: u64,
    /// Median latency of the successful calls (zero when there were none).
    pub p50: Duration,
    /// 99th percentile latency of the successful calls (zero when there were none).
    pub p99: Duration,
    /// Wall time from the first call to the end of the last.
    pub elapsed: Duration,
    /// The first error, for a report that explains a non-zero `errors`.
    pub first_error: Option<String>,
}

impl LoadReport {
    /// Successful calls per second of wall time.
    pub fn calls_per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.calls as f64 / secs
        } else {
            0.0
        }
    }
}

/// When a [`grpc_load`] run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadStop {
    /// When this much time has passed; calls in flight then are finished and counted.
    After(Duration),
    /// When exactly this many calls have been made, over all connections (for instruction
    /// counts per call).
    Calls(u64),
}

/// The calls a run may still start, shared by its workers.
struct Budget {
    deadline: Option<Instant>,
    left: AtomicU64,
}

impl Budget {
    /// True when one more call may start (and counts it).
    fn take(&self) -> bool {
        match self.deadline {
            Some(deadline) => Instant::now() < deadline,
            None => self
                .left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
        }
    }
}

/// Calls `Unary` (a 4-byte message, no payload) at `url` (h2c: `http://host:port`, with an
/// optional path prefix) as fast as possible until `stop`: `connections` HTTP/2 connections,
/// each with `concurrency` calls in flight, and `authorization: Bearer <token>` on each call
/// when `token` is given. Runs on the current tokio runtime (a multi-threaded one uses all its
/// workers).
pub async fn grpc_load(
    url: &str,
    token: Option<&str>,
    connections: usize,
    concurrency: usize,
    stop: LoadStop,
) -> Result<LoadReport, GrpcClientError> {
    if connections == 0 || concurrency == 0 {
        return Err(GrpcClientError::Invalid(
            "connections and concurrency must be at least 1".into(),
        ));
    }
    let target = Target::parse(url)?;
    if target.tls {
        return Err(invalid(url, "the load client speaks h2c only (http://)"));
    }
    let authorization = token
        .map(|token| AsciiMetadataValue::try_from(format!("Bearer {token}")))
        .transpose()
        .map_err(|_| GrpcClientError::Invalid("the token is not printable ASCII".into()))?;
    let path = format!("{}/{SERVICE_NAME}/{}", target.prefix, Method::Unary.name());
    let path = http::uri::PathAndQuery::try_from(path).map_err(|e| invalid(url, e))?;

    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        channels.push(connect_endpoint(url, target.endpoint.clone()).await?);
    }
    let started = Instant::now();
    let budget = Arc::new(match stop {
        LoadStop::After(duration) => Budget {
            deadline: Some(started + duration),
            left: AtomicU64::new(0),
        },
        LoadStop::Calls(n) => Budget {
            deadline: None,
            left: AtomicU64::new(n),
        },
    });
    let mut workers = JoinSet::new();
    for channel in channels {
        for _ in 0..concurrency {
            let grpc = tonic::client::Grpc::new(channel.clone());
            workers.spawn(worker(
                grpc,
                path.clone(),
                authorization.clone(),
                budget.clone(),
            ));
        }
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    while let Some(done) = workers.join_next().await {
        let tally = done.map_err(|e| GrpcClientError::Invalid(format!("load worker: {e}")))?;
        latencies.extend(tally.latencies);
        errors += tally.errors;
        first_error = first_error.or(tally.first_error);
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Ok(LoadReport {
        calls: latencies.len() as u64,
        errors,
        p50: percentile(&latencies, 50),
        p99: percentile(&latencies, 99),
        elapsed,
        first_error,
    })
}

/// What one worker saw.
struct Tally {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

/// Makes calls one after another while the budget lasts.
async fn worker(
    mut grpc: tonic::client::Grpc<tonic::transport::Channel>,
    path: http::uri::PathAndQuery,
    authorization: Option<AsciiMetadataValue>,
    budget: Arc<Budget>,
) -> Tally {
    let mut tally = Tally {
        latencies: Vec::new(),
        errors: 0,
        first_error: None,
    };
    while budget.take() {
        let began = Instant::now();
        let mut request = tonic::Request::new(EchoRequest {
            message: "load".into(),
            payload: Bytes::new(),
        });
        if let Some(value) = &authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        let outcome = match grpc.ready().await {
            Ok(()) => {
                grpc.unary(
                    request,
                    path.clone(),
                    ProstCodec::<EchoRequest, EchoReply>::default(),
                )
                .await
            }
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        match outcome {
            Ok(_) => tally.latencies.push(began.elapsed()),
            Err(status) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| {
                    format!("{}: {}", code_name(status.code()), status.message())
                });
            }
        }
    }
    tally
}

/// The nearest-rank `p`th percentile of sorted `values` (zero for none).
fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let ms = |n: u64| Duration::from_millis(n);
        let values: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&values, 50), ms(50));
        assert_eq!(percentile(&values, 99), ms(99));
        assert_eq!(percentile(&[ms(7)], 99), ms(7));
        assert_eq!(percentile(&[ms(1), ms(2)], 50), ms(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }
}
