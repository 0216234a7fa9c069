//! Helpers for `benches/load.sh`: a fast upstream and a bulk token minter.
//!
//! ```text
//! bench_support upstream --listen 127.0.0.1:PORT [--threads N]
//!     a minimal hyper HTTP/1.1 server answering every request with 200 "ok" (keep-alive);
//!     unlike the emulator's echo server it records nothing, so it stays fast and flat.
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
use std::time::Instant;

use aadgate_emulator::{SigningKey, TokenSpec};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

fn usage() -> ExitCode {
    eprintln!(
        "usage:\n  bench_support upstream --listen ADDR [--threads N]\n  bench_support mint --key FILE --count N --out FILE [--kind valid|badsig|unknownkid] [--tid T] [--aud A] [--roles R1,R2] [--lifetime SECS] [--threads N]"
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
