//! Plumbing shared by the emulator's servers: bind-then-serve with graceful shutdown, and the
//! record of a received request that tests inspect.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;

use axum::Router;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::EmulatorError;

/// One request as a server received it, for assertions in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// Path as received (percent-encoding untouched), without the query.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Headers in arrival order, names lower-case.
    pub headers: Vec<(String, String)>,
    /// Protocol version it arrived with: `HTTP/1.1` or `HTTP/2.0` (`HTTP/2.0` for h2c too).
    pub version: String,
}

impl RecordedRequest {
    pub(crate) fn from_parts(
        method: &http::Method,
        uri: &http::Uri,
        version: http::Version,
        headers: &http::HeaderMap,
    ) -> Self {
        RecordedRequest {
            method: method.as_str().to_string(),
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            headers: headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_string(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            version: version_name(version).to_string(),
        }
    }

    /// The first value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (case-insensitive), in arrival order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Resolves when a server should stop gracefully.
pub(crate) type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A running server (axum, or any other given the listener). Dropping it (or calling [`ServerTask::shutdown`]) starts a graceful
/// shutdown: the listener closes and in-flight requests finish.
pub(crate) struct ServerTask {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl ServerTask {
    /// Binds `listen` first (so port 0 works and the address is known when this returns), then
    /// serves the router `make_router` builds for the bound address on a task of the current
    /// tokio runtime.
    pub(crate) async fn spawn(
        listen: SocketAddr,
        name: &'static str,
        make_router: impl FnOnce(SocketAddr) -> Router,
    ) -> Result<Self, EmulatorError> {
        Self::spawn_with(listen, name, move |listener, addr, stop| {
            let router = make_router(addr);
            async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await
            }
        })
        .await
    }

    /// Binds `listen` first, then runs the server `serve` makes of the listener on a task of the
    /// current tokio runtime. `serve` gets the bound address and the signal that resolves when
    /// the server should stop gracefully (on [`ServerTask::shutdown`] or when this is dropped).
    pub(crate) async fn spawn_with<F, E>(
        listen: SocketAddr,
        name: &'static str,
        serve: impl FnOnce(tokio::net::TcpListener, SocketAddr, StopSignal) -> F,
    ) -> Result<Self, EmulatorError>
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| EmulatorError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| EmulatorError::io(format!("{name}: local address"), e))?;
        let (stop, mut stopped) = watch::channel(false);
        // Resolves on `true`, or when every sender is gone (the owner was dropped).
        let signal: StopSignal = Box::pin(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        });
        let server = serve(listener, addr, signal);
        let join = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::warn!(server = name, error = %e, "server stopped with an error");
            }
        });
        Ok(ServerTask {
            addr,
            stop,
            join: Mutex::new(Some(join)),
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts a graceful shutdown without waiting for it.
    pub(crate) fn trigger_shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Starts a graceful shutdown and waits until the server task has finished.
    pub(crate) async fn shutdown(&self) {
        self.trigger_shutdown();
        let join = lock(&self.join).take();
        if let Some(join) = join {
            let _ = join.await;
        }
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.trigger_shutdown();
    }
}

/// `http://127.0.0.1:PORT` style base URL of a bound address (an unspecified address such as
/// `0.0.0.0` is reported as the loopback address of its family).
pub(crate) fn base_url(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        let loopback: std::net::IpAddr = match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        addr.set_ip(loopback);
    }
    format!("http://{addr}")
}

/// `HTTP/1.1`, `HTTP/2.0`, … : how the emulator's servers name a protocol version in records
/// and JSON echoes.
pub(crate) fn version_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "unknown",
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read-locks an `RwLock`, recovering from poisoning.
pub(crate) fn read<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Write-locks an `RwLock`, recovering from poisoning.
pub(crate) fn write<T>(m: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
