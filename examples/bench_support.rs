//! Helpers for the scripts in `benches/`: fast upstreams (HTTP/1.1 and gRPC), a bulk token
//! minter and a gRPC load client.
//!
//! ```text
//! bench_support upstream --listen 127.0.0.1:PORT [--threads N]
//!     a minimal hyper HTTP/1.1 server answering every request with 200 "ok" (keep-alive);
//!     unlike the emulator's echo server it records nothing, so it stays fast and flat.
//! bench_support grpc-upstream --listen 127.0.0.1:PORT
//!     the gRPC service `aadgate.echo.v1.Echo` over h2c with only its `Unary` method (the
//!     emulator's messages, on tonic), on one current-thread runtime; the reply carries the
//!     message and payload back. Unlike the emulator's `GrpcEchoServer` it neither records the
//!     requests nor copies their metadata into the reply, so it stays fast and flat.
//! bench_support grpc-load --url URL [--token-file FILE] --connections C --concurrency N
//!                         (--duration SECS | --calls TOTAL)
//!     `Unary` calls as fast as possible for SECS seconds (or TOTAL calls in all) over C HTTP/2
//!     connections with N calls in flight on each (`aadgate_emulator::grpc_load` on one
//!     current-thread runtime), with
//!     `authorization: Bearer <first line of FILE>` when given. Prints one line,
//!     `calls/s p50_us p99_us errors`; exits 1 when a call failed, printing the first failure.
//! bench_support mint --key FILE --count N --out FILE [--kind valid|badsig|unknownkid]
//!                    [--tid T] [--aud A] [--roles R1,R2] [--lifetime SECS] [--threads N]
//!     N distinct RS256 tokens, one per line, signed by the key in FILE (the PEM bundle shared
//!     with `aadgate dev-idp --key FILE`, created when missing). `badsig`: the header names the
//!     key's kid but the signature is made with another key; `unknownkid`: a kid that is in no
//!     key set. Minting runs on all cores (RSA-2048 signing is ~1 ms per token).
//! ```

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aadgate_emulator::grpc::{EchoReply, EchoRequest, Status, SERVICE_NAME};
use aadgate_emulator::{grpc_load, LoadStop, SigningKey, TokenSpec};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tonic_prost::ProstCodec;

fn usage() -> ExitCode {
    eprintln!(
        "usage:\n  bench_support upstream --listen ADDR [--threads N]\n  bench_support grpc-upstream --listen ADDR\n  bench_support grpc-load --url URL [--token-file FILE] --connections C --concurrency N (--duration SECS | --calls TOTAL)\n  bench_support mint --key FILE --count N --out FILE [--kind valid|badsig|unknownkid] [--tid T] [--aud A] [--roles R1,R2] [--lifetime SECS] [--threads N]"
    );
    ExitCode::from(2)
}

/// `--name value` pairs after the subcommand.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return usage();
    };
    let rest = &args[1..];
    let result = match cmd.as_str() {
        "upstream" => upstream(rest),
        "grpc-upstream" => grpc_upstream(rest),
        "grpc-load" => grpc_load_run(rest),
        "mint" => mint(rest),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_support {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn ok(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

fn upstream(args: &[String]) -> Result<(), String> {
    let listen: SocketAddr = flag(args, "--listen")
        .ok_or("--listen ADDR is required")?
        .parse()
        .map_err(|e| format!("--listen: {e}"))?;
    let threads: usize = flag(args, "--threads")
        .unwrap_or("1")
        .parse()
        .map_err(|e| format!("--threads: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("bind {listen}: {e}"))?;
        eprintln!("upstream listening on {listen}");
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service_fn(ok))
                    .await;
            });
        }
    })
}

/// The path of the only method the benchmark echo serves.
fn unary_path() -> String {
    format!("/{SERVICE_NAME}/Unary")
}

/// `aadgate.echo.v1.Echo` with only `Unary`: the tower service tonic serves.
#[derive(Clone)]
struct BenchEcho {
    unary: Arc<str>,
}

impl NamedService for BenchEcho {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for BenchEcho
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
        if req.uri().path() != &*self.unary {
            let status = Status::unimplemented(format!("no method {}", req.uri().path()));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(async move {
            let codec = ProstCodec::<EchoReply, EchoRequest>::default();
            Ok(Grpc::new(codec).unary(UnaryEcho, req).await)
        })
    }
}

/// `Unary`: the message and payload back.
struct UnaryEcho;

impl UnaryService<EchoRequest> for UnaryEcho {
    type Response = EchoReply;
    type Future = BoxFuture<tonic::Response<EchoReply>, Status>;

    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let EchoRequest { message, payload } = request.into_inner();
        let reply = EchoReply {
            message,
            payload,
            metadata: Default::default(),
        };
        Box::pin(std::future::ready(Ok(tonic::Response::new(reply))))
    }
}

fn grpc_upstream(args: &[String]) -> Result<(), String> {
    let listen: SocketAddr = flag(args, "--listen")
        .ok_or("--listen ADDR is required")?
        .parse()
        .map_err(|e| format!("--listen: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| format!("bind {listen}: {e}"))?;
        eprintln!("gRPC echo listening on {listen} (h2c)");
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let echo = BenchEcho {
            unary: unary_path().into(),
        };
        Server::builder()
            .serve_with_incoming(echo, incoming)
            .await
            .map_err(|e| format!("serve: {e}"))
    })
}

/// A required `--name N` flag parsed as a number.
fn number<T: std::str::FromStr>(args: &[String], name: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    flag(args, name)
        .ok_or_else(|| format!("{name} N is required"))?
        .parse()
        .map_err(|e| format!("{name}: {e}"))
}

fn grpc_load_run(args: &[String]) -> Result<(), String> {
    let url = flag(args, "--url").ok_or("--url URL is required")?;
    let connections: usize = number(args, "--connections")?;
    let concurrency: usize = number(args, "--concurrency")?;
    let stop = match (flag(args, "--duration"), flag(args, "--calls")) {
        (Some(_), None) => {
            let duration: f64 = number(args, "--duration")?;
            if !(duration.is_finite() && duration > 0.0) {
                return Err("--duration must be a positive number of seconds".into());
            }
            LoadStop::After(Duration::from_secs_f64(duration))
        }
        (None, Some(_)) => LoadStop::Calls(number(args, "--calls")?),
        _ => return Err("give either --duration SECS or --calls TOTAL".into()),
    };
    let token = match flag(args, "--token-file") {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
            let first = text.lines().next().unwrap_or_default().trim().to_string();
            if first.is_empty() {
                return Err(format!("{path}: no token on the first line"));
            }
            Some(first)
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let report = rt
        .block_on(grpc_load(
            url,
            token.as_deref(),
            connections,
            concurrency,
            stop,
        ))
        .map_err(|e| e.to_string())?;
    println!(
        "{:.1} {} {} {}",
        report.calls_per_second(),
        report.p50.as_micros(),
        report.p99.as_micros(),
        report.errors
    );
    if report.errors > 0 {
        return Err(format!(
            "{} of {} calls failed; the first: {}",
            report.errors,
            report.calls + report.errors,
            report.first_error.as_deref().unwrap_or("(not recorded)")
        ));
    }
    Ok(())
}

fn mint(args: &[String]) -> Result<(), String> {
    let key_path = PathBuf::from(flag(args, "--key").ok_or("--key FILE is required")?);
    let out_path = PathBuf::from(flag(args, "--out").ok_or("--out FILE is required")?);
    let count: usize = flag(args, "--count")
        .ok_or("--count N is required")?
        .parse()
        .map_err(|e| format!("--count: {e}"))?;
    let kind = flag(args, "--kind").unwrap_or("valid");
    let tid = flag(args, "--tid").unwrap_or("11111111-1111-4111-8111-111111111111");
    let aud = flag(args, "--aud").unwrap_or("api://bench");
    let roles: Vec<&str> = flag(args, "--roles")
        .unwrap_or("Bench.Read")
        .split(',')
        .filter(|r| !r.is_empty())
        .collect();
    let lifetime: i64 = flag(args, "--lifetime")
        .unwrap_or("86400")
        .parse()
        .map_err(|e| format!("--lifetime: {e}"))?;
    let threads: usize = match flag(args, "--threads") {
        Some(t) => t.parse().map_err(|e| format!("--threads: {e}"))?,
        None => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let key = SigningKey::load_or_create(&key_path).map_err(|e| e.to_string())?;
    let (signer, spec) = match kind {
        "valid" => (key.clone(), TokenSpec::app(tid, aud, &roles)),
        "badsig" => {
            let other = SigningKey::generate().map_err(|e| e.to_string())?;
            let spec = TokenSpec::app(tid, aud, &roles).with_header("kid", Value::from(key.kid()));
            (other, spec)
        }
        "unknownkid" => (
            key.clone(),
            TokenSpec::app(tid, aud, &roles).with_header("kid", Value::from("bench-unknown-kid")),
        ),
        other => return Err(format!("unknown --kind {other}")),
    };
    let spec = spec.with_lifetime(lifetime);
    let started = Instant::now();
    let threads = threads.clamp(1, 64);
    let per = count.div_ceil(threads);
    // Every token differs already (random `uti`); a serial `jti` makes it explicit.
    let chunks: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let signer = &signer;
                let spec = &spec;
                s.spawn(move || {
                    let from = t * per;
                    let to = ((t + 1) * per).min(count);
                    let mut out = String::with_capacity(to.saturating_sub(from) * 800);
                    for i in from..to {
                        let spec = spec
                            .clone()
                            .with_claim("jti", Value::from(format!("bench-{i}")));
                        out.push_str(&signer.mint(&spec));
                        out.push('\n');
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&out_path).map_err(|e| format!("{}: {e}", out_path.display()))?,
    );
    for c in &chunks {
        file.write_all(c.as_bytes()).map_err(|e| e.to_string())?;
    }
    file.flush().map_err(|e| e.to_string())?;
    eprintln!(
        "minted {count} {kind} tokens into {} in {:.1}s",
        out_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
