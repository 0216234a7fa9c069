//! The smallest pingora proxy: a `ProxyHttp` with only `upstream_peer`, built from the same lock
//! file and pingora features as the gateway. It is the ceiling `benches/load.sh` and
//! `benches/instructions.sh` measure aadgate against: everything aadgate adds on top of pingora
//! is the difference between the two.
//!
//! ```text
//! bare_pingora --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT [--workers N] [--h2c true]
//! ```
//!
//! No logging, no header changes, no routing: every request goes to `--upstream` as it came.
//! With `--h2c true` it accepts cleartext HTTP/2 beside HTTP/1.1 and speaks HTTP/2 with prior
//! knowledge to the upstream, sharing connections as the gateway does for an `h2c://` upstream
//! (the ceiling of `benches/protocols.sh`'s gRPC rows).
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
    h2c: bool,
}

/// Streams per upstream HTTP/2 connection, as the gateway sets for `h2c://` upstreams.
const H2_STREAMS_PER_CONNECTION: usize = 100;

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    /// No downstream modules (pingora's default adds a disabled compression module), as in
    /// the gateway.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.h2c {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = H2_STREAMS_PER_CONNECTION;
        }
        Ok(Box::new(peer))
    }
}

/// The command line.
struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
    h2c: bool,
}

/// `--listen`, `--upstream`, `--workers` and `--h2c` from the command line.
fn args() -> std::result::Result<Args, String> {
    let mut listen = None;
    let mut upstream = None;
    let mut workers = 1;
    let mut h2c = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen: {e}"))?),
            "--upstream" => upstream = Some(value.parse().map_err(|e| format!("--upstream: {e}"))?),
            "--workers" => workers = value.parse().map_err(|e| format!("--workers: {e}"))?,
            "--h2c" => h2c = value.parse().map_err(|e| format!("--h2c: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen ADDR is required")?,
        upstream: upstream.ok_or("--upstream ADDR is required")?,
        workers,
        h2c,
    })
}

fn main() -> ExitCode {
    let Args {
        listen,
        upstream,
        workers,
        h2c,
    } = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bare_pingora: {e}\nusage: bare_pingora --listen ADDR --upstream ADDR [--workers N] [--h2c true|false]");
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
    let mut service =
        pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream, h2c });
    if let Some(proxy) = service.app_logic_mut() {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = h2c;
        proxy.server_options = Some(options);
    }
    service.add_tcp(&listen.to_string());
    server.add_service(service);
    server.run_forever()
}
