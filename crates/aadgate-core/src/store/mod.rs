//! The shared store of fleet mode (SPEC section 10): a Redis server every replica uses for the
//! state they must agree on — the tenant registry ([`RedisRegistry`]), the app-only token cache
//! (second level, encrypted), onboarding `state` single use (`onboarding::RedisLedger`) and
//! rate-limit buckets.
//!
//! Redis being down, slow or restarted never fails a request:
//!
//! - every operation is bounded by `[store] timeout`;
//! - a failed operation marks the store down; while it is down, operations fail at once (no
//!   waiting for a timeout on every request) and callers use what they have in process;
//! - a health task pings every [`HEALTH_INTERVAL`] and marks the store up again when Redis
//!   answers; the connection manager of the `redis` crate reconnects by itself;
//! - `aadgate_store_up` and `aadgate_store_errors_total{op}` say so, and `/readyz` says
//!   "degraded" in its body.
//!
//! The gateway starts while Redis is down: the connection is made lazily.
//!
//! Values that hold app-only tokens are sealed with AES-256-GCM ([`SharedStore::seal`]): a
//! random 96-bit nonce per value, and the key name as associated data, so a value copied to
//! another key does not open.

mod backend;
mod buckets;
mod registry;

pub use crate::config::RedisTarget;
pub use buckets::RedisBuckets;
pub use registry::RedisRegistry;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use std::cell::RefCell;
use std::sync::atomic::AtomicU64;

use crate::config::{redact_url, StoreKind, StoreSettings};
use crate::metrics::Metrics;
use backend::{Backend, Conn};

/// Each store's id, for [`THREAD_CONNECTIONS`].
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's connection to each store: (store id, the store, the generation it was
    /// made in, the connection).
    static THREAD_CONNECTIONS: RefCell<Vec<ThreadConnection>> = const { RefCell::new(Vec::new()) };
}

/// One entry of [`THREAD_CONNECTIONS`].
type ThreadConnection = (u64, std::sync::Weak<SharedStore>, u64, Conn);

/// How often the health task pings Redis.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// Why a store operation did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shared store unavailable: {0}")]
pub struct StoreError(pub String);

/// The Redis store; see the module documentation. Cheap to share (`Arc`).
pub struct SharedStore {
    url: String,
    prefix: String,
    timeout: Duration,
    backend: Backend,
    /// Increased by every failure when the backend renews its connections (Sentinel, Cluster):
    /// a thread's connection of an older generation is replaced on its next use.
    generation: AtomicU64,
    key: LessSafeKey,
    /// Tells this store's connections apart in [`THREAD_CONNECTIONS`].
    id: u64,
    /// This store, weakly: a thread's connection goes when its store does.
    me: std::sync::Weak<SharedStore>,
    up: AtomicBool,
    /// Whether the health task has pinged once (a store down from the start is logged once).
    pinged: AtomicBool,
    /// Why the last ping failed.
    last_error: std::sync::Mutex<Option<String>>,
    /// A fingerprint of the encryption key: a new key makes a new store on reload.
    key_id: [u8; 8],
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl SharedStore {
    /// A store for `settings` (`kind = "redis"`; `None` for the local store). Connects lazily:
    /// nothing is contacted until [`SharedStore::run`] or the first operation.
    pub fn new(
        settings: &StoreSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Arc<SharedStore>>, StoreError> {
        let StoreKind::Redis {
            url,
            target,
            encryption_key,
            ..
        } = &settings.kind
        else {
            metrics.store_up.set(1);
            return Ok(None);
        };
        let backend = Backend::new(target, settings.timeout)?;
        let key = UnboundKey::new(&AES_256_GCM, &encryption_key[..])
            .map_err(|_| StoreError("the encryption key is not an AES-256 key".into()))?;
        metrics.store_up.set(0);
        Ok(Some(Arc::new_cyclic(|me| SharedStore {
            url: url.clone(),
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
            backend,
            generation: AtomicU64::new(0),
            key: LessSafeKey::new(key),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            me: me.clone(),
            up: AtomicBool::new(false),
            pinged: AtomicBool::new(false),
            last_error: std::sync::Mutex::new(None),
            key_id: key_id(&encryption_key[..]),
            metrics,
            stop: tokio::sync::watch::channel(false).0,
        })))
    }

    /// Whether `settings` describe this store (a reload keeps it and its connection).
    pub fn same_settings(&self, settings: &StoreSettings) -> bool {
        matches!(&settings.kind, StoreKind::Redis { url, encryption_key, .. }
            if *url == self.url && key_id(&encryption_key[..]) == self.key_id)
            && settings.key_prefix == self.prefix
            && settings.timeout == self.timeout
    }

    /// The full name of a key: the prefix, then `name`.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Where it connects, without a password, for messages.
    pub fn describe(&self) -> String {
        format!("redis {}", redact_url(&self.url))
    }

    /// Whether the last operation or ping succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Connects, then pings every [`HEALTH_INTERVAL`] until [`SharedStore::stop`], marking the
    /// store up or down.
    pub async fn run(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.ping().await,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }

    /// Ends [`SharedStore::run`].
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Pings once now (for commands that use the store right away, such as `aadgate tenants`).
    pub async fn connect(&self) -> Result<(), StoreError> {
        self.ping().await;
        if self.is_up() {
            return Ok(());
        }
        let why = (self.last_error.lock().ok())
            .and_then(|e| e.clone())
            .unwrap_or_else(|| "no answer".into());
        Err(StoreError(format!(
            "{} does not answer: {why}",
            self.describe()
        )))
    }

    async fn ping(&self) {
        let located = match self.is_up() {
            true => Ok(()),
            // Down: ask Sentinel where the primary is now (a no-op for the other kinds).
            false => {
                match tokio::time::timeout(
                    self.timeout.max(Duration::from_millis(250)),
                    self.backend.locate(),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(StoreError("Sentinel does not answer".into())),
                }
            }
        };
        let result = match located.and_then(|()| self.connection()) {
            Ok(mut conn) => {
                let ping = redis::cmd("PING");
                let answer = tokio::time::timeout(
                    self.timeout.max(Duration::from_millis(250)),
                    ping.query_async::<String>(&mut conn),
                )
                .await;
                match answer {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err(format!(
                        "no answer within {:?}",
                        self.timeout.max(Duration::from_millis(250))
                    )),
                }
            }
            Err(e) => Err(e.0),
        };
        let first = !self.pinged.swap(true, Ordering::Relaxed);
        // A timeout may hide the reason (the connection manager retries a refused sign-in):
        // when it is about to be reported, ask once more without it.
        let result = match result {
            Err(why) if (first || self.is_up()) && why.starts_with("no answer") => Err(self
                .backend
                .diagnose(self.timeout.max(Duration::from_millis(250)))
                .await
                .unwrap_or(why)),
            other => other,
        };
        if let Ok(mut last) = self.last_error.lock() {
            *last = result.as_ref().err().cloned();
        }
        if let (true, Err(why)) = (first, &result) {
            tracing::warn!(store = %self.describe(), error = %why, "shared store does not answer at start-up: serving from this replica's state until it does");
        } else if let (false, Err(why)) = (self.is_up(), &result) {
            tracing::debug!(store = %self.describe(), error = %why, "shared store still down");
        } else if let (true, Err(why)) = (self.is_up(), &result) {
            tracing::warn!(store = %self.describe(), error = %why, "shared store health check failed");
        }
        self.mark(result.is_ok(), None);
    }

    /// The connection of this thread: each thread that talks to Redis (a proxy worker, the
    /// control runtime) has its own multiplexed connection whose driver task runs on its own
    /// runtime, so a request's round trip wakes no other thread.
    fn connection(&self) -> Result<Conn, StoreError> {
        let id = self.id;
        let generation = match self.backend.renews_connections() {
            true => self.generation.load(Ordering::Acquire),
            false => 0,
        };
        let found = THREAD_CONNECTIONS.with(|c| {
            (c.borrow().iter())
                .find(|(i, _, g, _)| *i == id && *g == generation)
                .map(|(_, _, _, conn)| conn.clone())
        });
        if let Some(conn) = found {
            return Ok(conn);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError("no async runtime on this thread".into()));
        }
        let conn = self.backend.connect(self.timeout)?;
        THREAD_CONNECTIONS.with(|c| {
            let mut c = c.borrow_mut();
            // Connections of stores that a reload replaced, and of older generations, are
            // closed here.
            c.retain(|(i, store, _, _)| store.strong_count() > 0 && *i != id);
            c.push((id, self.me.clone(), generation, conn.clone()));
        });
        Ok(conn)
    }

    /// Records the outcome of an operation (`op` counts a failure) and logs a change of state.
    fn mark(&self, ok: bool, op: Option<&'static str>) {
        if let (false, Some(op)) = (ok, op) {
            self.metrics.store_errors.with_label_values(&[op]).inc();
        }
        if !ok && self.backend.renews_connections() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        let was = self.up.swap(ok, Ordering::Relaxed);
        self.metrics.store_up.set(i64::from(ok));
        match (was, ok) {
            (false, true) => {
                tracing::info!(store = %self.describe(), "shared store up: sharing state with the fleet")
            }
            (true, false) => {
                tracing::warn!(store = %self.describe(), "shared store down: serving from what this replica has, with its own token requests and rate-limit buckets")
            }
            _ => {}
        }
    }

    /// Runs one command, bounded by the timeout. While the store is down this fails at once.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        if !self.is_up() {
            self.metrics.store_errors.with_label_values(&[op]).inc();
            return Err(StoreError("down (waiting for the health check)".into()));
        }
        let mut conn = self.connection()?;
        let answer = tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await;
        self.finish(op, answer)
    }

    /// Runs a Lua script, bounded by the timeout; see [`SharedStore::query`].
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        script: &redis::Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, StoreError> {
        if !self.is_up() {
            self.metrics.store_errors.with_label_values(&[op]).inc();
            return Err(StoreError("down (waiting for the health check)".into()));
        }
        let mut conn = self.connection()?;
        let mut invocation = script.prepare_invoke();
        for k in keys {
            invocation.key(*k);
        }
        for a in args {
            invocation.arg(*a);
        }
        let answer =
            tokio::time::timeout(self.timeout, invocation.invoke_async::<T>(&mut conn)).await;
        self.finish(op, answer)
    }

    fn finish<T>(
        &self,
        op: &'static str,
        answer: Result<redis::RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, StoreError> {
        match answer {
            Ok(Ok(v)) => {
                self.mark(true, None);
                Ok(v)
            }
            Ok(Err(e)) if unavailable(&e) => {
                // A replica (the old primary after a failover), a cluster without quorum, a
                // server still loading its data: not this one, or not now.
                self.mark(false, Some(op));
                Err(StoreError(e.to_string()))
            }
            Ok(Err(e)) if e.code().is_some() => {
                // The server answered with an error: it is up, the command is wrong.
                self.metrics.store_errors.with_label_values(&[op]).inc();
                Err(StoreError(e.to_string()))
            }
            Ok(Err(e)) => {
                self.mark(false, Some(op));
                Err(StoreError(e.to_string()))
            }
            Err(_) => {
                self.mark(false, Some(op));
                Err(StoreError(format!("no answer within {:?}", self.timeout)))
            }
        }
    }

    /// `GET name` (the full key).
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.query("get", redis::cmd("GET").arg(key)).await
    }

    /// `SET key value PX ttl`.
    pub async fn set_px(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let ms = ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        self.query(
            "set",
            redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ms),
        )
        .await
    }

    /// `SET key value NX PX ttl`: whether this call set it (a lock, a single use).
    pub async fn set_nx_px(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let ms = ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64;
        let answer: Option<String> = self
            .query(
                "lock",
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms),
            )
            .await?;
        Ok(answer.is_some())
    }

    /// `DEL key`.
    pub async fn del(&self, key: &str) -> Result<(), StoreError> {
        self.query::<i64>("set", redis::cmd("DEL").arg(key))
            .await
            .map(|_| ())
    }

    /// Encrypts `plaintext` for storage under `key`: nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, key: &str, plaintext: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.as_bytes()),
                &mut out,
            )
            .ok()?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&out);
        Some(sealed)
    }

    /// Decrypts what [`SharedStore::seal`] made for `key`; `None` when it does not open (another
    /// key, another key name, tampered).
    pub fn open(&self, key: &str, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// Whether a server's error answer means the store cannot serve now (rather than that the
/// command was wrong).
fn unavailable(e: &redis::RedisError) -> bool {
    matches!(
        e.code(),
        Some("READONLY" | "MASTERDOWN" | "CLUSTERDOWN" | "LOADING" | "TRYAGAIN")
    )
}

/// The first 8 bytes of SHA-256 of `key`: tells keys apart without keeping a copy.
fn key_id(key: &[u8]) -> [u8; 8] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key);
    let mut out = [0u8; 8];
    out.copy_from_slice(&d.as_ref()[..8]);
    out
}

#[cfg(test)]
mod tests;
