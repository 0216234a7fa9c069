//! The tenant registry (SPEC section 9): which tenants signed up, in what state, since when and
//! why, kept in a store every replica reads.
//!
//! - [`Snapshot`] is the registry's content and the pure rules of every change ([`Change`]).
//! - [`RegistryStore`] is where it lives: [`FileStore`] (a JSON file written atomically) today;
//!   a shared store implements the same four operations.
//! - [`Registry`] is the running view: the last snapshot read (one atomic load per request), the
//!   changes this process makes (applied at once, then persisted), and [`Registry::run`], which
//!   reads the store again whenever it changed (checked every [`POLL_INTERVAL`]), so a change
//!   made by `aadgate tenants` or another replica applies within a second.
//!
//! A store that cannot be read keeps the last good snapshot in force: no tenant is lost because
//! a file was unreadable for a while. The error is logged once, counted in
//! `aadgate_store_errors_total{op="get"}` and shown by `GET /tenants`.

mod file;
mod snapshot;

pub use file::FileStore;
pub use snapshot::{format_time, AddedBy, Applied, Change, Snapshot, TenantRecord, TenantState};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;

use crate::metrics::Metrics;

/// How often [`Registry::run`] asks the store whether it changed.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Why the registry could not be read or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The tenant id is not a GUID.
    #[error("{0:?} is not a tenant id: use the tenant's GUID (Microsoft Entra admin center > Overview > Tenant ID)")]
    NotAGuid(String),
    /// The tenant is not in the registry.
    #[error("tenant {0} is not in the registry")]
    UnknownTenant(String),
    /// `approve` of a tenant that is not `pending`.
    #[error("tenant {tenant} is {state}, not pending; only a pending tenant can be approved")]
    NotPending {
        /// The tenant.
        tenant: String,
        /// Its state.
        state: TenantState,
    },
    /// The store cannot be read or written (I/O, permissions, invalid content).
    #[error("{0}")]
    Unavailable(String),
}

/// A store version: changes whenever the stored registry may have changed.
pub type Version = String;

/// Where the registry lives. Every operation is complete or has no effect: a reader never
/// sees half a change, and a failed write leaves the stored registry as it was.
#[async_trait]
pub trait RegistryStore: Send + Sync + std::fmt::Debug {
    /// Says where the registry lives, for messages (`file /var/lib/aadgate/tenants.json`).
    fn describe(&self) -> String;

    /// Whether the store counts its own failures in `aadgate_store_errors_total` (a shared
    /// store does); otherwise the registry counts them.
    fn counts_errors(&self) -> bool {
        false
    }

    /// The stored version, cheaply (`None`: nothing stored yet).
    async fn version(&self) -> Result<Option<Version>, RegistryError>;

    /// The stored registry and its version (an empty registry when nothing is stored yet).
    async fn load(&self) -> Result<(Snapshot, Option<Version>), RegistryError>;

    /// Applies `change` to the stored registry at `now` (Unix seconds), atomically with respect
    /// to other writers, and returns the registry after it and what the change did.
    async fn update(
        &self,
        change: &Change,
        now: i64,
    ) -> Result<(Snapshot, Option<Version>, Applied), RegistryError>;
    /// Writes `snapshot` into a store that lost its registry (nothing stored), unless another
    /// writer stored one meanwhile. Returns whether it wrote. Stores that cannot lose their
    /// content without an operator's act (a file) do nothing.
    async fn restore(&self, _snapshot: &Snapshot) -> Result<bool, RegistryError> {
        Ok(false)
    }
}

/// The running view of the registry; see the module documentation.
#[derive(Debug)]
pub struct Registry {
    store: Arc<dyn RegistryStore>,
    current: ArcSwap<Snapshot>,
    version: Mutex<Option<Version>>,
    /// The last read error, while it lasts (shown by `GET /tenants`).
    error: Mutex<Option<String>>,
    /// Revocations made in this process that the store did not take yet: applied again to
    /// every read, and stored again, until a write succeeds.
    unsaved: Mutex<Vec<Change>>,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Registry {
    /// Reads `store` once. Fails when the store holds something that cannot be read: a gateway
    /// must not start without knowing its tenants.
    pub async fn open(
        store: Arc<dyn RegistryStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Registry>, RegistryError> {
        let (snapshot, version) = store.load().await?;
        Ok(Arc::new(Self::with(store, metrics, snapshot, version)))
    }

    /// Reads `store` from synchronous code (the store's reads block); see [`Registry::open`].
    pub fn open_blocking(
        store: Arc<dyn RegistryStore>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Registry>, RegistryError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| RegistryError::Unavailable(format!("cannot read the registry: {e}")))?;
        let (snapshot, version) = match tokio::runtime::Handle::try_current() {
            // Inside a runtime: read on a plain thread, which may block.
            Ok(_) => std::thread::scope(|s| {
                s.spawn(|| runtime.block_on(store.load()))
                    .join()
                    .unwrap_or_else(|_| {
                        Err(RegistryError::Unavailable("registry read panicked".into()))
                    })
            })?,
            Err(_) => runtime.block_on(store.load())?,
        };
        Ok(Arc::new(Self::with(store, metrics, snapshot, version)))
    }

    /// A registry not read yet: empty, with the error "not read yet" until its poll task reads
    /// the store (a shared store that may be down at start-up).
    pub fn unread(store: Arc<dyn RegistryStore>, metrics: Arc<Metrics>) -> Arc<Registry> {
        let registry = Self::with(store, metrics, Snapshot::default(), None);
        if let Ok(mut e) = registry.error.lock() {
            *e = Some("not read yet".to_string());
        }
        Arc::new(registry)
    }

    fn with(
        store: Arc<dyn RegistryStore>,
        metrics: Arc<Metrics>,
        snapshot: Snapshot,
        version: Option<Version>,
    ) -> Registry {
        let registry = Registry {
            store,
            current: ArcSwap::from_pointee(snapshot),
            version: Mutex::new(version),
            error: Mutex::new(None),
            unsaved: Mutex::new(Vec::new()),
            metrics,
            stop: tokio::sync::watch::channel(false).0,
        };
        registry.count_states();
        registry
    }

    /// The store it reads.
    pub fn store(&self) -> &Arc<dyn RegistryStore> {
        &self.store
    }

    /// The registry as last read or changed.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The state of `tid` (lower case), one atomic load and one lookup.
    pub fn state(&self, tid: &str) -> Option<TenantState> {
        self.current.load().get(tid).map(|r| r.state)
    }

    /// When `tid` became `active` (Unix seconds), if it is.
    pub fn active_since(&self, tid: &str) -> Option<i64> {
        let snapshot = self.current.load();
        let record = snapshot.get(tid)?;
        (record.state == TenantState::Active).then_some(record.changed_at)
    }

    /// The last error reading the store, while it lasts.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    /// Applies `change`: in the store, then in this process at once. Fails (and changes
    /// nothing) when the store cannot be written or the change does not apply.
    pub async fn apply(&self, change: &Change) -> Result<Applied, RegistryError> {
        let now = crate::clock::unix_now();
        let result = self.store.update(change, now).await;
        let (snapshot, version, applied) = result.inspect_err(|e| {
            if matches!(e, RegistryError::Unavailable(_)) && !self.store.counts_errors() {
                self.metrics.store_errors.with_label_values(&["set"]).inc();
            }
        })?;
        self.install(snapshot, version);
        Ok(applied)
    }

    /// Consent lost (SPEC section 9): an active `tid` becomes `revoked` in this process at
    /// once and then in the store. Returns whether it was active. A store that cannot be written
    /// is logged; the tenant stays refused here regardless.
    pub async fn revoke(&self, tid: &str, reason: &str) -> bool {
        let change = Change::Revoke {
            tenant: tid.to_string(),
            reason: reason.to_string(),
        };
        let now = crate::clock::unix_now();
        let mut local = (*self.snapshot()).clone();
        match local.apply(&change, now) {
            Ok(Applied::Changed) => {}
            _ => return false,
        }
        self.current.store(Arc::new(local));
        self.count_states();
        self.metrics.tenant_revocations.inc();
        tracing::warn!(tenant = tid, reason, "tenant revoked: consent withdrawn");
        if let Err(e) = self.apply(&change).await {
            tracing::error!(tenant = tid, error = %e, store = %self.store.describe(), "the revocation could not be stored; the tenant stays revoked in this process, and storing is retried");
            if let Ok(mut unsaved) = self.unsaved.lock() {
                unsaved.push(change);
            }
        }
        true
    }

    /// Stores the revocations a failed write left behind; keeps those that fail again.
    async fn store_unsaved(&self) {
        let pending = match self.unsaved.lock() {
            Ok(mut u) if !u.is_empty() => std::mem::take(&mut *u),
            _ => return,
        };
        let mut left = Vec::new();
        for change in pending {
            if self.apply(&change).await.is_err() {
                left.push(change);
            }
        }
        if let Ok(mut u) = self.unsaved.lock() {
            u.extend(left);
        }
    }

    /// Reads the store again if its version changed. Returns whether the snapshot changed.
    pub async fn refresh(&self) -> bool {
        self.store_unsaved().await;
        let seen = self.version.lock().ok().and_then(|v| v.clone());
        let result = match self.store.version().await {
            Ok(v) if v == seen && self.error().is_none() => return false,
            // A registry that existed and is gone (an unmounted volume, a deleted file, a
            // shared store restarted without persistence) is not an empty registry: the last
            // one read stays in force, and a shared store gets it back.
            Ok(None) if seen.is_some() => self.gone().await,
            Ok(_) => self.store.load().await,
            Err(e) => Err(e),
        };
        match result {
            Ok((mut snapshot, version)) => {
                for change in self.unsaved.lock().map(|u| u.clone()).unwrap_or_default() {
                    let _ = snapshot.apply(&change, crate::clock::unix_now());
                }
                if let Ok(mut e) = self.error.lock() {
                    if e.take().is_some() {
                        tracing::info!(store = %self.store.describe(), "tenant registry readable again");
                    }
                }
                let changed = snapshot != **self.current.load();
                self.install(snapshot, version);
                changed
            }
            Err(e) => {
                if !self.store.counts_errors() {
                    self.metrics.store_errors.with_label_values(&["get"]).inc();
                }
                let message = e.to_string();
                if let Ok(mut last) = self.error.lock() {
                    if last.as_deref() != Some(&message) {
                        tracing::error!(store = %self.store.describe(), error = %message, "tenant registry unreadable; the last registry read stays in force");
                        *last = Some(message);
                    }
                }
                false
            }
        }
    }

    /// The store lost the registry: restore it from this process's copy where the store allows
    /// (then read it again), else report it.
    async fn gone(&self) -> Result<(Snapshot, Option<Version>), RegistryError> {
        let copy = self.snapshot();
        if !copy.is_empty() && self.store.restore(&copy).await.unwrap_or(false) {
            tracing::warn!(store = %self.store.describe(), tenants = copy.len(), "the tenant registry was gone from the store; restored it from this replica's copy");
            return self.store.load().await;
        }
        Err(RegistryError::Unavailable(format!(
            "{}: the registry is gone (deleted, unmounted, or the store lost its data); recreate it, e.g. from a backup, or with `aadgate tenants add`",
            self.store.describe()
        )))
    }

    /// Refreshes every [`POLL_INTERVAL`] until [`Registry::stop`].
    pub async fn run(self: Arc<Self>) {
        let mut stop = self.stop.subscribe();
        if *stop.borrow() {
            return;
        }
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.refresh().await;
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }

    /// Ends [`Registry::run`].
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    fn install(&self, snapshot: Snapshot, version: Option<Version>) {
        self.current.store(Arc::new(snapshot));
        if let Ok(mut v) = self.version.lock() {
            *v = version;
        }
        self.count_states();
    }

    fn count_states(&self) {
        let snapshot = self.current.load();
        for state in TenantState::ALL {
            let n = snapshot.count(state);
            self.metrics
                .tenants
                .with_label_values(&[state.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests;
