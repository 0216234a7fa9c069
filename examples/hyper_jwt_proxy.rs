//! A hyper reverse proxy that verifies an RS256 bearer token on every request, with no cache:
//! the shape of the `jwt-authorizer` / `jsonwebtoken` proxies users build by hand.
//! `benches/load.sh` measures aadgate against it.
//!
//! ```text
//! hyper_jwt_proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --jwks FILE --aud AUD
//!                 [--threads N]
//! ```
//!
//! Each downstream connection gets its own keep-alive connection to the upstream. A request
//! without a valid token (signature by a key of the JWKS file chosen by `kid`, `exp`/`nbf`,
//! `aud`) is answered `401` without reaching the upstream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

type Body = BoxBody<Bytes, hyper::Error>;

struct Verifier {
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
}

impl Verifier {
    /// The RSA keys of a JWKS document, by `kid`.
    fn from_jwks(doc: &Value, aud: &str) -> Result<Self, String> {
        let mut keys = HashMap::new();
        for k in doc["keys"].as_array().ok_or("the JWKS has no keys array")? {
            let (Some(kid), Some(n), Some(e)) =
                (k["kid"].as_str(), k["n"].as_str(), k["e"].as_str())
            else {
                continue;
            };
            let key = DecodingKey::from_rsa_components(n, e).map_err(|e| format!("{kid}: {e}"))?;
            keys.insert(kid.to_string(), key);
        }
        if keys.is_empty() {
            return Err("the JWKS has no RSA key with a kid".into());
        }
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[aud]);
        Ok(Verifier { keys, validation })
    }

    fn verify(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let Some(key) = decode_header(token)
            .ok()
            .and_then(|h| h.kid)
            .and_then(|kid| self.keys.get(&kid))
        else {
            return false;
        };
        decode::<Value>(token, key, &self.validation).is_ok()
    }
}

fn unauthorized() -> Response<Body> {
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::UNAUTHORIZED;
    resp
}

/// One downstream connection: its requests go, in order, over one upstream connection.
async fn serve(stream: TcpStream, upstream: SocketAddr, verifier: Arc<Verifier>) {
    let sender = match TcpStream::connect(upstream).await {
        Ok(up) => {
            let _ = up.set_nodelay(true);
            match hyper::client::conn::http1::handshake(TokioIo::new(up)).await {
                Ok((sender, conn)) => {
                    tokio::spawn(conn);
                    sender
                }
                Err(_) => return,
            }
        }
        Err(_) => return,
    };
    let sender = Arc::new(Mutex::new(sender));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        let verifier = verifier.clone();
        async move {
            if !verifier.verify(&req) {
                return Ok::<_, Infallible>(unauthorized());
            }
            let mut sender = sender.lock().await;
            match sender.send_request(req).await {
                Ok(resp) => Ok(resp.map(|b| b.boxed())),
                Err(_) => {
                    let mut resp = unauthorized();
                    *resp.status_mut() = StatusCode::BAD_GATEWAY;
                    Ok(resp)
                }
            }
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    jwks: std::path::PathBuf,
    aud: String,
    threads: usize,
}

fn args() -> Result<Args, String> {
    let (mut listen, mut upstream, mut jwks, mut aud, mut threads) = (None, None, None, None, 1);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen: {e}"))?),
            "--upstream" => upstream = Some(value.parse().map_err(|e| format!("--upstream: {e}"))?),
            "--jwks" => jwks = Some(value.into()),
            "--aud" => aud = Some(value),
            "--threads" => threads = value.parse().map_err(|e| format!("--threads: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen ADDR is required")?,
        upstream: upstream.ok_or("--upstream ADDR is required")?,
        jwks: jwks.ok_or("--jwks FILE is required")?,
        aud: aud.ok_or("--aud AUD is required")?,
        threads,
    })
}

fn main() -> ExitCode {
    let fail = |e: String| {
        eprintln!("hyper_jwt_proxy: {e}");
        ExitCode::from(2)
    };
    let a = match args() {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let doc: Value = match std::fs::read(&a.jwks).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return fail(format!("{}: {e}", a.jwks.display())),
        Err(e) => return fail(format!("{}: {e}", a.jwks.display())),
    };
    let verifier = match Verifier::from_jwks(&doc, &a.aud) {
        Ok(v) => Arc::new(v),
        Err(e) => return fail(e),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e.to_string()),
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(a.listen).await {
            Ok(l) => l,
            Err(e) => return fail(format!("{}: {e}", a.listen)),
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(serve(stream, a.upstream, verifier.clone()));
        }
    })
}
