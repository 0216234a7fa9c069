//! How the store reaches Redis: one server through the `redis` crate's connection manager (it
//! reconnects by itself), the primary that Sentinel names (found again after every failure, so
//! a failover is followed), or a Redis Cluster through the crate's cluster connection (it follows
//! `MOVED`/`ASK` and slot changes by itself).
//!
//! Every thread keeps its own connection (see `SharedStore::connection`); this module makes
//! them. A connection is tied to a *generation*: after a failure the store starts a new one, and
//! connections of an older generation are replaced on their next use. Standalone connections
//! are kept across generations (the connection manager already reconnects to the one address
//! there is).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Cmd, ConnectionAddr, Pipeline, RedisFuture, TlsMode, Value};

use super::StoreError;
use crate::config::redis_url::{redact, Cluster, RedisTarget, Sentinel};

/// The clients a store makes its connections from.
pub(super) enum Backend {
    /// One server.
    Standalone(redis::Client),
    /// Sentinel, and the primary it named last (`None` until asked, and after a failure).
    Sentinel {
        sentinel: tokio::sync::Mutex<SentinelClient>,
        primary: std::sync::Mutex<Option<redis::Client>>,
    },
    /// A Redis Cluster.
    Cluster(ClusterClient),
}

/// One thread's connection.
#[derive(Clone)]
pub(super) enum Conn {
    /// To one server (standalone, or the primary of the generation).
    Single(ConnectionManager),
    /// To a cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Backend {
    /// The clients for `target`; nothing is contacted yet.
    pub(super) fn new(target: &RedisTarget, timeout: Duration) -> Result<Backend, StoreError> {
        tls_provider();
        match target {
            RedisTarget::Standalone(url) => redis::Client::open(url.as_str())
                .map(Backend::Standalone)
                .map_err(|e| StoreError(format!("{}: {e}", redact(url)))),
            RedisTarget::Sentinel(s) => Ok(Backend::Sentinel {
                sentinel: tokio::sync::Mutex::new(sentinel_client(s)?),
                primary: std::sync::Mutex::new(None),
            }),
            RedisTarget::Cluster(c) => cluster_client(c, timeout).map(Backend::Cluster),
        }
    }

    /// Whether connections must be remade after a failure (the primary may have moved, or a
    /// cluster connection may have given up).
    pub(super) fn renews_connections(&self) -> bool {
        !matches!(self, Backend::Standalone(_))
    }

    /// Asks Sentinel for the primary again (nothing to do for the other kinds): called by the
    /// health check while the store is down, so that the next generation's connections go to
    /// whichever node Sentinel names now.
    pub(super) async fn locate(&self) -> Result<(), StoreError> {
        let Backend::Sentinel { sentinel, primary } = self else {
            return Ok(());
        };
        let client = sentinel
            .lock()
            .await
            .async_get_client()
            .await
            .map_err(|e| StoreError(format!("Sentinel names no reachable primary: {e}")))?;
        if let Ok(mut p) = primary.lock() {
            *p = Some(client);
        }
        Ok(())
    }

    /// Why a connection cannot be made now, found with a fresh connection and a `PING` outside
    /// the connection manager (whose retries can turn a refusal such as `WRONGPASS` or an
    /// untrusted certificate into a mere timeout); `None` when it works.
    pub(super) async fn diagnose(&self, timeout: Duration) -> Option<String> {
        let attempt = async {
            match self {
                Backend::Cluster(client) => {
                    let mut c = client.get_async_connection().await?;
                    redis::cmd("PING").query_async::<String>(&mut c).await
                }
                _ => {
                    let client = match self {
                        Backend::Standalone(client) => client.clone(),
                        Backend::Sentinel { primary, .. } => {
                            match primary.lock().ok().and_then(|p| p.clone()) {
                                Some(client) => client,
                                None => return Ok(String::new()),
                            }
                        }
                        Backend::Cluster(_) => return Ok(String::new()),
                    };
                    let mut c = client.get_multiplexed_async_connection().await?;
                    redis::cmd("PING").query_async::<String>(&mut c).await
                }
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {timeout:?}")),
        }
    }

    /// A new connection, made lazily (it connects on first use) with `timeout`.
    pub(super) fn connect(&self, timeout: Duration) -> Result<Conn, StoreError> {
        let client = match self {
            Backend::Standalone(client) => client.clone(),
            Backend::Sentinel { primary, .. } => primary
                .lock()
                .ok()
                .and_then(|p| p.clone())
                .ok_or_else(|| StoreError("Sentinel has not named a primary yet".into()))?,
            Backend::Cluster(client) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeout.max(Duration::from_millis(250)))
                    .set_response_timeout(timeout);
                return Ok(Conn::Cluster(
                    client.get_pending_async_connection_with_config(config),
                ));
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(250))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        ConnectionManager::new_lazy_with_config(client, config)
            .map(Conn::Single)
            .map_err(|e| StoreError(e.to_string()))
    }
}

/// The `redis` crate's TLS (`rediss`) uses rustls's process-wide provider, which rustls cannot
/// choose by itself when the build holds more than one: aws-lc-rs, the one the rest of the
/// gateway uses, is installed when none is.
fn tls_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

fn sentinel_client(s: &Sentinel) -> Result<SentinelClient, StoreError> {
    let addrs = s
        .sentinels
        .iter()
        .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
    let mut b = SentinelClientBuilder::new(addrs, &s.service, SentinelServerType::Master)
        .map_err(|e| StoreError(e.to_string()))?
        .set_client_to_redis_db(s.db);
    if s.tls {
        b = b
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
    }
    if let Some(u) = &s.auth.username {
        b = b.set_client_to_redis_username(u);
    }
    if let Some(p) = &s.auth.password {
        b = b.set_client_to_redis_password(p);
    }
    if let Some(u) = &s.sentinel_auth.username {
        b = b.set_client_to_sentinel_username(u);
    }
    if let Some(p) = &s.sentinel_auth.password {
        b = b.set_client_to_sentinel_password(p);
    }
    b.build().map_err(|e| StoreError(e.to_string()))
}

fn cluster_client(c: &Cluster, timeout: Duration) -> Result<ClusterClient, StoreError> {
    let scheme = if c.tls { "rediss" } else { "redis" };
    let nodes: Vec<String> = c
        .nodes
        .iter()
        .map(|(host, port)| match host.contains(':') {
            true => format!("{scheme}://[{host}]:{port}"),
            false => format!("{scheme}://{host}:{port}"),
        })
        .collect();
    let mut b = ClusterClient::builder(nodes)
        .retries(1)
        .connection_timeout(timeout.max(Duration::from_millis(250)))
        .response_timeout(timeout);
    if c.tls {
        b = b.tls(TlsMode::Secure);
    }
    if let Some(u) = &c.auth.username {
        b = b.username(u);
    }
    if let Some(p) = &c.auth.password {
        b = b.password(p);
    }
    b.build().map_err(|e| StoreError(e.to_string()))
}
