//! The running configuration and everything built from it, swapped atomically on reload.
//! In-flight requests keep the `Arc<Authenticator>` they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use aadgate_core::config::ConfigErrors;
use aadgate_core::metrics::Metrics;
use aadgate_core::runtime::Runtime;

/// The gateway's shared state.
pub(crate) struct SharedState {
    current: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    /// The config path as given on the command line (not canonicalised).
    pub config_path: PathBuf,
    /// Where background tasks (key store refreshers) run.
    pub control: tokio::runtime::Handle,
    reload_lock: std::sync::Mutex<()>,
}

impl SharedState {
    /// The state for a runtime built from an already-validated configuration; starts it (its
    /// key store's refresh task) on `control`.
    pub(crate) fn new(
        runtime: Runtime,
        config_path: PathBuf,
        control: tokio::runtime::Handle,
    ) -> Arc<Self> {
        runtime.start(&control);
        let metrics = runtime.metrics().clone();
        metrics
            .config_last_reload_success
            .set(aadgate_core::clock::unix_now() as f64);
        Arc::new(SharedState {
            current: ArcSwap::from_pointee(runtime),
            metrics,
            config_path,
            control,
            reload_lock: std::sync::Mutex::new(()),
        })
    }

    /// The runtime for a new request.
    pub(crate) fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }

    /// Loads the configuration file again and swaps it in if valid. A config that fails to load
    /// is refused whole: the running one stays, the failure is logged and counted. What the new
    /// runtime carries over from the running one is decided by [`Runtime::load`].
    pub(crate) fn reload(&self, why: &str) -> Result<(), ConfigErrors> {
        let _serial = self.reload_lock.lock();
        let old = self.current();
        let new = match Runtime::load(&self.config_path, Some(&old)) {
            Ok(r) => r,
            Err(errors) => {
                // Logged before it is counted: whoever sees the count finds the reason logged.
                for e in &errors.0 {
                    tracing::error!(trigger = why, "configuration reload refused: {e}");
                }
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                return Err(errors);
            }
        };
        for w in &new.config().warnings {
            tracing::warn!("{w}");
        }
        let (a, b) = (&old.config().server, &new.config().server);
        let restart_only: Vec<&str> = [
            ("listen", a.listen != b.listen),
            ("admin_listen", a.admin_listen != b.admin_listen),
            ("tls", a.tls != b.tls),
            ("workers", a.workers != b.workers),
            ("shutdown_grace", a.shutdown_grace != b.shutdown_grace),
            ("upgrade_sock", a.upgrade_sock != b.upgrade_sock),
        ]
        .into_iter()
        .filter_map(|(k, changed)| changed.then_some(k))
        .collect();
        if !restart_only.is_empty() {
            tracing::warn!(
                changed = %restart_only.join(", "),
                "these [server] settings apply only after a restart; everything else is applied now"
            );
        }
        if !Arc::ptr_eq(old.keys(), new.keys()) {
            tracing::info!("the key source changed: loading keys from the new source");
        }
        new.start(&self.control);
        self.current.store(Arc::new(new));
        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
        self.metrics
            .config_last_reload_success
            .set(aadgate_core::clock::unix_now() as f64);
        tracing::info!(trigger = why, "configuration reloaded");
        Ok(())
    }

    /// Files whose change triggers a reload: the config and the tenants file.
    pub(crate) fn watched_files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.config_path.clone()];
        if let Some(f) = &self.current().config().tenants.file {
            v.push(f.clone());
        }
        v
    }

    /// Readiness: `Ok(detail)` when keys are loaded (the config is valid by construction).
    pub(crate) fn readiness(&self) -> Result<String, String> {
        let runtime = self.current();
        let ready = match runtime.keys().current() {
            Some(set) => match set.source {
                aadgate_core::jwks::KeySource::CacheFile => format!(
                    "ready: {} signing keys from cache_file (identity provider unreachable)",
                    set.len()
                ),
                _ => format!("ready: {} signing keys", set.len()),
            },
            None => return Err("not ready: signing keys not loaded yet".into()),
        };
        // A shared store that is down degrades the fleet, not this replica: still ready.
        Ok(match runtime.store() {
            Some(store) if !store.is_up() => format!(
                "{ready}; store degraded: {} does not answer (serving from this replica's state)",
                store.describe()
            ),
            Some(store) => format!("{ready}; store up: {}", store.describe()),
            None => ready,
        })
    }
}

/// A cheap fingerprint of the watched files' contents, to ignore events that change nothing.
pub(crate) fn fingerprint(paths: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    paths.iter().map(|p| read_through_links(p)).collect()
}

fn read_through_links(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}
