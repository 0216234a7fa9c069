//! The smallest pingora proxy: a `ProxyHttp` with only `upstream_peer`, built from the same lock
//! file and pingora features as the gateway. It is the ceiling `benches/load.sh` and
//! `benches/instructions.sh` measure aadgate against: everything aadgate adds on top of pingora
//! is the difference between the two.
//!
//! ```text
//! bare_pingora --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT [--workers N]
//! ```
//!
//! No logging, no header changes, no routing: every request goes to `--upstream` as it came.
//! It runs on the gateway's allocator (mimalloc) and without downstream modules, as the gateway
//! does, so the difference between the two is what the gateway does per request.

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};

/// The gateway's allocator, so the ceiling and the gateway are measured on the same one
/// (glibc malloc costs pingora ~12k more instructions per request; BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    /// No downstream modules (pingora's default adds a disabled compression module), as in
    /// the gateway.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

/// `--listen`, `--upstream` and `--workers` from the command line.
fn args() -> std::result::Result<(SocketAddr, SocketAddr, usize), String> {
    let mut listen = None;
    let mut upstream = None;
    let mut workers = 1;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen: {e}"))?),
            "--upstream" => upstream = Some(value.parse().map_err(|e| format!("--upstream: {e}"))?),
            "--workers" => workers = value.parse().map_err(|e| format!("--workers: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok((
        listen.ok_or("--listen ADDR is required")?,
        upstream.ok_or("--upstream ADDR is required")?,
        workers,
    ))
}

fn main() -> ExitCode {
    let (listen, upstream, workers) = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bare_pingora: {e}\nusage: bare_pingora --listen ADDR --upstream ADDR [--workers N]");
            return ExitCode::from(2);
        }
    };
    // No graceful period: the benchmark stops it with SIGTERM and waits for it.
    let conf = ServerConf {
        threads: workers,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run_forever()
}
