//! The running configuration and everything built from it, swapped atomically on reload.
//! In-flight requests keep the `Arc<Authenticator>` they started with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use aadgate_core::auth::{Authenticator, SystemClock, TokenCache};
use aadgate_core::config::{self, Config, ConfigErrors};
use aadgate_core::jwks::KeyStore;
use aadgate_core::metrics::Metrics;

/// The gateway's shared state.
pub struct SharedState {
    current: ArcSwap<Authenticator>,
    pub metrics: Arc<Metrics>,
    /// The config path as given on the command line (not canonicalised).
    pub config_path: PathBuf,
    /// Where background tasks (key store refreshers) run.
    pub control: tokio::runtime::Handle,
    reload_lock: std::sync::Mutex<()>,
}

impl SharedState {
    /// Builds the state for an already-validated configuration and starts its key store.
    pub fn new(
        config: Config,
        config_path: PathBuf,
        metrics: Arc<Metrics>,
        control: tokio::runtime::Handle,
    ) -> Arc<Self> {
        let keys = KeyStore::new(&config.identity, metrics.clone());
        control.spawn(keys.clone().run());
        let auth = Authenticator {
            cache: Arc::new(TokenCache::new(
                config.identity.token_cache_size,
                config.identity.clock_skew,
            )),
            config: Arc::new(config),
            keys,
            metrics: metrics.clone(),
            clock: Arc::new(SystemClock),
        };
        metrics
            .config_last_reload_success
            .set(aadgate_core::jwks::unix_now() as f64);
        Arc::new(SharedState {
            current: ArcSwap::from_pointee(auth),
            metrics,
            config_path,
            control,
            reload_lock: std::sync::Mutex::new(()),
        })
    }

    /// The authenticator for a new request.
    pub fn current(&self) -> Arc<Authenticator> {
        self.current.load_full()
    }

    /// Loads the configuration file again and swaps it in if valid. A config that fails to load
    /// is refused whole: the running one stays, the failure is logged and counted.
    pub fn reload(&self, why: &str) -> Result<(), ConfigErrors> {
        let _serial = self.reload_lock.lock();
        let old = self.current();
        let result = config::load(&self.config_path, Some(&old.config));
        let new_config = match result {
            Ok(c) => c,
            Err(errors) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                for e in &errors.0 {
                    tracing::error!(trigger = why, "configuration reload refused: {e}");
                }
                return Err(errors);
            }
        };
        for w in &new_config.warnings {
            tracing::warn!("{w}");
        }
        let (a, b) = (&old.config.server, &new_config.server);
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
        let listener_change = !restart_only.is_empty();
        if listener_change {
            tracing::warn!(
                changed = %restart_only.join(", "),
                "these [server] settings apply only after a restart; everything else is applied now"
            );
        }
        let same_source = new_config.identity.same_key_source(&old.config.identity);
        let keys = if same_source {
            old.keys.update_intervals(&new_config.identity);
            old.keys.clone()
        } else {
            tracing::info!("the key source changed: loading keys from the new source");
            // Keep serving with the old keys until the new source has loaded its own.
            let keys = KeyStore::new_seeded(
                &new_config.identity,
                self.metrics.clone(),
                old.keys.current(),
            );
            self.control.spawn(keys.clone().run());
            old.keys.stop();
            keys
        };
        let cache = if same_source
            && new_config.identity.token_cache_size == old.config.identity.token_cache_size
            && new_config.identity.clock_skew == old.config.identity.clock_skew
        {
            old.cache.clone()
        } else {
            Arc::new(TokenCache::new(
                new_config.identity.token_cache_size,
                new_config.identity.clock_skew,
            ))
        };
        self.current.store(Arc::new(Authenticator {
            config: Arc::new(new_config),
            keys,
            cache,
            metrics: self.metrics.clone(),
            clock: old.clock.clone(),
        }));
        self.metrics.config_reloads.with_label_values(&["ok"]).inc();
        self.metrics
            .config_last_reload_success
            .set(aadgate_core::jwks::unix_now() as f64);
        tracing::info!(trigger = why, "configuration reloaded");
        Ok(())
    }

    /// Files whose change triggers a reload: the config and the tenants file.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut v = vec![self.config_path.clone()];
        if let Some(f) = &self.current().config.tenants.file {
            v.push(f.clone());
        }
        v
    }

    /// Readiness: `Ok(detail)` when keys are loaded (the config is valid by construction).
    pub fn readiness(&self) -> Result<String, String> {
        let auth = self.current();
        match auth.keys.current() {
            Some(set) => Ok(match set.source {
                aadgate_core::jwks::KeySource::CacheFile => format!(
                    "ready: {} signing keys from cache_file (identity provider unreachable)",
                    set.len()
                ),
                _ => format!("ready: {} signing keys", set.len()),
            }),
            None => Err("not ready: signing keys not loaded yet".into()),
        }
    }
}

/// A cheap fingerprint of the watched files' contents, to ignore events that change nothing.
pub fn fingerprint(paths: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    paths.iter().map(|p| read_through_links(p)).collect()
}

fn read_through_links(p: &Path) -> Option<Vec<u8>> {
    std::fs::read(p).ok()
}
