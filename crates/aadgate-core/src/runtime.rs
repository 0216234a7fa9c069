//! The running state: everything built from a [`Config`] that requests are served with — the
//! key store, the verified-token cache, the validators (with their decision caches), the
//! exchangers (with their app-only token caches), the metrics and the clock.
//!
//! [`Builder::build`] is the one place that decides what a reload carries over from the
//! previous runtime:
//!
//! | part | carried over when |
//! |---|---|
//! | key store (and its keys) | the key source (`metadata_url`, `jwks_uri`, `cache_file`) is the same; its intervals are updated. Otherwise a new store serves the old keys until its own first load. |
//! | verified-token cache | the key store is carried over and `token_cache_size` and `clock_skew` are the same |
//! | an HTTP validator (and its decision cache) | its settings are the same |
//! | an exchanger (and its app-only token cache) | its settings are the same |
//! | tenant registry (its last read, its poll task) | the registry file is the same |
//! | shared store (its connection, its health task) | its URL, key prefix and timeout are the same |
//! | onboarding `state`s already used | while the shared store is the same |
//! | a rate limit (and its buckets) | its `name`, `key`, `rate`, `period`, `burst` and `overrides` are the same (`routes` may change); its shared buckets while the shared store is the same |
//! | metrics, clock | always |
//!
//! A CEL validator is compiled again (it holds no state). Building has no side effects on the
//! previous runtime until [`Runtime::start`], so a configuration that fails to build leaves the
//! running one untouched.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::auth::hooks::Validator;
use crate::auth::{self, Authenticator, TokenCache};
use crate::clock::{Clock, SystemClock};
use crate::config::{self, Config, ConfigErrors, Route, ValidatorKind, ValidatorSettings};
use crate::exchange::Exchanger;
use crate::jwks::KeyStore;
use crate::metrics::{Metrics, RouteMetrics, NO_ROUTE};
use crate::onboarding::RedisLedger;
use crate::onboarding::{LocalLedger, Onboarding, StateLedger};
use crate::ratelimit::{Buckets, RateLimiter};
use crate::registry::{FileStore, Registry, RegistryStore};
use crate::routing::RouteTable;
use crate::store::{RedisBuckets, RedisRegistry, SharedStore};

/// Why [`Runtime::from_config_file`] or [`Runtime::from_config`] could not give a running
/// runtime.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration did not load or build; every error has its `file:line:col`.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The key refresh task needs a Tokio runtime and none is running on this thread.
    #[error(
        "aadgate needs a Tokio runtime to refresh signing keys; build the runtime from within one"
    )]
    NoRuntime,
}

/// A configuration and the running parts built from it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Runtime {
    auth: Authenticator,
    routes: Arc<RouteTable>,
    exchangers: Arc<HashMap<String, Arc<Exchanger>>>,
    route_metrics: Arc<RouteMetricsTable>,
    onboarding: Option<Arc<Onboarding>>,
    /// The onboarding `state`s already used, kept across reloads.
    ledger: Arc<dyn StateLedger>,
    /// The shared store (`[store] kind = "redis"`).
    store: Option<Arc<SharedStore>>,
    start: Arc<std::sync::Mutex<Option<Start>>>,
    rate_limiter: Arc<RateLimiter>,
}

/// Every route's metric handles, by [`Route::index`], and those of requests that matched none.
#[derive(Debug)]
struct RouteMetricsTable {
    routes: Vec<RouteMetrics>,
    none: RouteMetrics,
}

/// What [`Runtime::start`] still has to do.
#[derive(Debug)]
struct Start {
    /// The key store was made by this build: its refresh task is not running yet.
    refresh: bool,
    /// The previous runtime's key store, replaced by this one: stopped once this one starts.
    retire: Option<Arc<KeyStore>>,
    /// A tenant registry made by this build: its poll task is not running yet.
    registry: Option<Arc<Registry>>,
    /// The previous runtime's registry, replaced by this one: stopped once this one starts.
    retire_registry: Option<Arc<Registry>>,
    /// A shared store made by this build: its health task is not running yet.
    store: Option<Arc<SharedStore>>,
    /// The previous runtime's shared store, replaced by this one.
    retire_store: Option<Arc<SharedStore>>,
}

/// Builds a [`Runtime`]; see the module documentation for what it carries over.
#[must_use]
pub struct Builder<'a> {
    config: Config,
    previous: Option<&'a Runtime>,
    metrics: Option<Arc<Metrics>>,
    clock: Option<Arc<dyn Clock>>,
    keys: Option<Arc<KeyStore>>,
    token_cache: Option<Arc<TokenCache>>,
    shared_buckets: Option<Arc<dyn Buckets>>,
}

impl<'a> Builder<'a> {
    /// A builder for `config`.
    pub fn new(config: Config) -> Self {
        Builder {
            config,
            previous: None,
            metrics: None,
            clock: None,
            keys: None,
            token_cache: None,
            shared_buckets: None,
        }
    }

    /// The runtime this one replaces (a reload): its parts are reused where the settings
    /// allow, and its metrics and clock always.
    pub fn previous(mut self, previous: &'a Runtime) -> Self {
        self.previous = Some(previous);
        self
    }

    /// The metrics registry to count in (default: the previous runtime's, else a new one).
    pub fn metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The clock (default: the previous runtime's, else the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// A key store to use as it is (e.g. [`KeyStore::fixed`]), instead of one for
    /// `[identity]`; [`Runtime::start`] does not run it.
    pub fn key_store(mut self, keys: Arc<KeyStore>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// A verified-token cache to use as it is (e.g. one shared by several runtimes in a test).
    pub fn token_cache(mut self, cache: Arc<TokenCache>) -> Self {
        self.token_cache = Some(cache);
        self
    }

    /// The shared store of rate-limit buckets (the Redis store's), which decides before the
    /// local buckets (default: the previous runtime's, else none: limits hold per process).
    pub fn shared_buckets(mut self, buckets: Arc<dyn Buckets>) -> Self {
        self.shared_buckets = Some(buckets);
        self
    }

    /// Builds the runtime. Fails only when a validator does not compile (a CEL syntax error,
    /// reported at its place in the file). Nothing is fetched and no task is started: call
    /// [`Runtime::start`].
    pub fn build(self) -> Result<Runtime, ConfigErrors> {
        let prev = self.previous;
        let clock = self
            .clock
            .or_else(|| prev.map(|p| p.auth.clock().clone()))
            .unwrap_or_else(|| Arc::new(SystemClock));
        let metrics = self
            .metrics
            .or_else(|| prev.map(|p| p.auth.metrics().clone()))
            .unwrap_or_else(|| Arc::new(Metrics::new()));
        let validators = validators(&self.config, prev)?;
        let identity = &self.config.identity;
        let mut start = Start {
            refresh: false,
            retire: None,
            registry: None,
            retire_registry: None,
            store: None,
            retire_store: None,
        };
        let store = shared_store(&self.config, prev, &metrics, &mut start)?;
        let exchangers = exchangers(&self.config, prev, &clock, &store, &metrics);
        let registry = registry(&self.config, prev, &metrics, store.as_ref(), &mut start)?;
        let keys = match (self.keys, prev) {
            (Some(keys), _) => keys,
            (None, Some(p)) if identity.same_key_source(&p.config().identity) => {
                p.auth.keys().update_intervals(identity);
                p.auth.keys().clone()
            }
            (None, previous) => {
                start.refresh = true;
                start.retire = previous.map(|p| p.auth.keys().clone());
                // Serve the old source's keys until the new source has loaded its own.
                let seed = previous.and_then(|p| p.auth.keys().current());
                KeyStore::new_seeded(identity, metrics.clone(), seed)
            }
        };
        let cache = self.token_cache.unwrap_or_else(|| match prev {
            Some(p)
                if Arc::ptr_eq(p.auth.keys(), &keys)
                    && identity.token_cache_size == p.config().identity.token_cache_size
                    && identity.clock_skew == p.config().identity.clock_skew =>
            {
                p.auth.token_cache().clone()
            }
            _ => Arc::new(TokenCache::new(
                identity.token_cache_size,
                identity.clock_skew,
            )),
        });
        let auth = Authenticator::from_parts(auth::Parts {
            config: Arc::new(self.config),
            keys,
            cache,
            validators,
            metrics,
            clock,
            registry,
        });
        let ledger = ledger(prev, store.as_ref());
        let onboarding = (auth.config().onboarding.as_ref())
            .map(|o| Arc::new(Onboarding::new(o.clone(), ledger.clone())));
        let route_metrics = RouteMetricsTable {
            routes: (auth.config().routes.iter())
                .map(|r| auth.metrics().route(&r.name))
                .collect(),
            none: auth.metrics().route(NO_ROUTE),
        };
        // The fleet's buckets live in the shared store, when there is one.
        let shared_buckets = (self.shared_buckets).or_else(|| {
            store
                .as_ref()
                .map(|s| Arc::new(RedisBuckets::new(s.clone())) as Arc<dyn Buckets>)
        });
        let rate_limiter = Arc::new(RateLimiter::new(
            &auth.config().rate_limits,
            &auth.config().routes,
            prev.map(|p| &*p.rate_limiter),
            shared_buckets,
            auth.metrics().clone(),
        ));
        Ok(Runtime {
            rate_limiter,
            routes: Arc::new(RouteTable::new(&auth.config().routes)),
            route_metrics: Arc::new(route_metrics),
            auth,
            exchangers: Arc::new(exchangers),
            onboarding,
            ledger,
            store,
            start: Arc::new(std::sync::Mutex::new(Some(start))),
        })
    }
}

/// The shared store of `[store] kind = "redis"`: the previous runtime's when its settings are
/// the same (its connection stays), else a new one (connected lazily by its health task).
fn shared_store(
    config: &Config,
    prev: Option<&Runtime>,
    metrics: &Arc<Metrics>,
    start: &mut Start,
) -> Result<Option<Arc<SharedStore>>, ConfigErrors> {
    let previous = prev.and_then(|p| p.store.clone());
    if let Some(p) = previous.as_ref().filter(|p| p.same_settings(&config.store)) {
        return Ok(Some(p.clone()));
    }
    start.retire_store = previous;
    let store = SharedStore::new(&config.store, metrics.clone()).map_err(|e| {
        ConfigErrors(vec![config::ConfigError {
            file: config.path.clone(),
            line: 1,
            col: 1,
            message: format!("[store]: {e}"),
        }])
    })?;
    start.store = store.clone();
    Ok(store)
}

/// The onboarding ledger: the previous one while the store is the same, else one for the
/// store (Redis, or this process).
fn ledger(prev: Option<&Runtime>, store: Option<&Arc<SharedStore>>) -> Arc<dyn StateLedger> {
    let same = |p: &&Runtime| match (&p.store, store) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    if let Some(p) = prev.filter(same) {
        return p.ledger.clone();
    }
    match store {
        Some(s) => Arc::new(RedisLedger::new(s.clone())),
        None => Arc::new(LocalLedger::default()),
    }
}

/// The tenant registry of `mode = "registry"`: the previous runtime's when it reads the same
/// store, else a new one. A registry file is read now (one that cannot be read fails the
/// build); a registry in Redis is read by its poll task, so the gateway starts while Redis is
/// down.
fn registry(
    config: &Config,
    prev: Option<&Runtime>,
    metrics: &Arc<Metrics>,
    shared: Option<&Arc<SharedStore>>,
    start: &mut Start,
) -> Result<Option<Arc<Registry>>, ConfigErrors> {
    let previous = prev.and_then(|p| p.registry().cloned());
    let wanted: Arc<dyn RegistryStore> =
        match (&config.tenants.mode, &config.tenants.registry, shared) {
            (config::TenantMode::Registry, _, Some(s)) => Arc::new(RedisRegistry::new(s.clone())),
            (config::TenantMode::Registry, Some(path), None) => {
                Arc::new(FileStore::new(path.clone()))
            }
            _ => {
                start.retire_registry = previous;
                return Ok(None);
            }
        };
    let same_store = |p: &&Arc<Registry>| {
        p.store().describe() == wanted.describe()
            && match (shared, prev.and_then(|r| r.store.as_ref())) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    };
    if let Some(p) = previous.as_ref().filter(same_store) {
        return Ok(Some(p.clone()));
    }
    let registry = if shared.is_some() {
        Ok(Registry::unread(wanted, metrics.clone()))
    } else {
        Registry::open_blocking(wanted, metrics.clone())
    };
    let registry = registry.map_err(|e| {
        ConfigErrors(vec![config::ConfigError {
            file: config.path.clone(),
            line: 1,
            col: 1,
            message: format!("[tenants] registry: {e}"),
        }])
    })?;
    start.registry = Some(registry.clone());
    start.retire_registry = previous;
    Ok(Some(registry))
}

/// Every validator: an HTTP one whose settings did not change is the previous runtime's (with
/// its decision cache); a CEL one is compiled, and a compile error is a configuration error at
/// its place in the file.
fn validators(
    config: &Config,
    prev: Option<&Runtime>,
) -> Result<HashMap<String, Arc<Validator>>, ConfigErrors> {
    let mut out = HashMap::new();
    let mut errors = Vec::new();
    for (name, ValidatorSettings { kind, .. }) in &config.validators {
        let validator = match kind {
            ValidatorKind::Http(settings) => prev
                .and_then(|p| p.auth.validator(name))
                .filter(|old| old.same_http_settings(settings))
                .cloned()
                .unwrap_or_else(|| Arc::new(Validator::http(name, settings.clone()))),
            ValidatorKind::Cel(cel) => match Validator::cel(name, &cel.expr, cel.message.clone()) {
                Ok(v) => Arc::new(v),
                Err((line, col, message)) => {
                    errors.push(cel.error_at(line, col, format!("CEL expression: {message}")));
                    continue;
                }
            },
        };
        out.insert(name.clone(), validator);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        errors.sort_by_key(|e| (e.line, e.col));
        Err(ConfigErrors(errors))
    }
}

/// Every exchanger: one whose settings did not change is the previous runtime's (with its
/// app-only token cache).
fn exchangers(
    config: &Config,
    prev: Option<&Runtime>,
    clock: &Arc<dyn Clock>,
    store: &Option<Arc<SharedStore>>,
    metrics: &Metrics,
) -> HashMap<String, Arc<Exchanger>> {
    let same_store = |old: &Exchanger| match (old.store(), store) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    config
        .exchanges
        .iter()
        .map(|(name, settings)| {
            let exchanger = prev
                .and_then(|p| p.exchanger(name))
                .filter(|old| old.settings() == settings && same_store(old))
                .cloned()
                .unwrap_or_else(|| {
                    Arc::new(
                        Exchanger::with_clock(settings.clone(), clock.clone())
                            .with_store(store.clone())
                            .with_metrics(metrics),
                    )
                });
            (name.clone(), exchanger)
        })
        .collect()
}

impl Runtime {
    /// A builder for `config`.
    pub fn builder(config: Config) -> Builder<'static> {
        Builder::new(config)
    }

    /// Loads the configuration at `path` and builds its runtime (not started): every error,
    /// from the file or from compiling a validator, with its `file:line:col`.
    pub fn load(path: &Path, previous: Option<&Runtime>) -> Result<Runtime, ConfigErrors> {
        let config = config::load(path)?;
        let builder = Builder::new(config);
        match previous {
            Some(p) => builder.previous(p).build(),
            None => builder.build(),
        }
    }

    /// Loads the configuration at `path`, builds its runtime with a fresh metrics registry
    /// (render it with `runtime.metrics().render()`) and the system clock, and starts it on the
    /// current Tokio runtime. Relative paths in the file resolve against its folder.
    ///
    /// The signing keys are fetched in the background: requests that arrive before the first
    /// fetch wait for it (a bounded time, then `503 keys_unavailable`); call
    /// `runtime.keys().first_load(timeout).await` to wait up front. The refresh task runs until
    /// [`Runtime::stop`].
    pub async fn from_config_file(path: impl AsRef<Path>) -> Result<Runtime, StartError> {
        let config = config::load(path.as_ref())?;
        Self::from_config(config)
    }

    /// Builds the runtime of an already-loaded configuration and starts it on the current
    /// Tokio runtime, as [`Runtime::from_config_file`] does.
    pub fn from_config(config: Config) -> Result<Runtime, StartError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let runtime = Builder::new(config).build()?;
        runtime.start(&handle);
        Ok(runtime)
    }

    /// Starts what the build left to start: the refresh task of a new key store (spawned on
    /// `handle`), and stops the key store it replaced. Idempotent.
    pub fn start(&self, handle: &tokio::runtime::Handle) {
        let pending = self.start.lock().map(|mut s| s.take()).unwrap_or(None);
        let Some(start) = pending else { return };
        if start.refresh {
            handle.spawn(self.auth.keys().clone().run());
        }
        if let Some(old) = start.retire {
            if !Arc::ptr_eq(&old, self.auth.keys()) {
                old.stop();
            }
        }
        if let Some(store) = start.store {
            handle.spawn(store.run());
        }
        if let Some(old) = start.retire_store {
            if !self.store.as_ref().is_some_and(|s| Arc::ptr_eq(s, &old)) {
                old.stop();
            }
        }
        if let Some(registry) = start.registry {
            handle.spawn(registry.run());
        }
        if let Some(old) = start.retire_registry {
            if !self.registry().is_some_and(|r| Arc::ptr_eq(r, &old)) {
                old.stop();
            }
        }
    }

    /// Stops the background work of its key store and tenant registry (when the runtime is
    /// dropped for good).
    pub fn stop(&self) {
        self.auth.keys().stop();
        if let Some(r) = self.registry() {
            r.stop();
        }
        if let Some(s) = &self.store {
            s.stop();
        }
    }

    /// The shared store (`[store] kind = "redis"`).
    pub fn store(&self) -> Option<&Arc<SharedStore>> {
        self.store.as_ref()
    }

    /// The tenant registry (`[tenants] mode = "registry"`).
    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.auth.registry()
    }

    /// The sign-up pages (`[onboarding]`).
    pub fn onboarding(&self) -> Option<&Arc<Onboarding>> {
        self.onboarding.as_ref()
    }

    /// Answers a request on the sign-up paths (`[onboarding] path_prefix`, matched on the path
    /// as received, before any route), or `None` when `path` is not one of them.
    pub async fn onboarding_page(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        request_id: &str,
    ) -> Option<crate::onboarding::Page> {
        let o = self.onboarding.as_ref().filter(|o| o.owns(path))?;
        let verify = (o.settings().verify_exchange.as_deref())
            .and_then(|name| self.exchanger(name))
            .map(|x| &**x);
        let cx = crate::onboarding::Context {
            deny: &self.config().tenants.deny,
            registry: self.registry().map(|r| &**r),
            verify,
            metrics: self.metrics(),
            now: self.auth.clock().now(),
            request_id,
        };
        Some(o.handle(method, path, query, cx).await)
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<Config> {
        self.auth.config()
    }

    /// The routes, indexed for selection.
    pub fn route_table(&self) -> &RouteTable {
        &self.routes
    }

    /// The metric handles of `route` (`None`: requests that matched no route). A route that is
    /// not this runtime's gets handles looked up by its name.
    pub fn route_metrics(&self, route: Option<&Route>) -> std::borrow::Cow<'_, RouteMetrics> {
        let table = &self.route_metrics;
        let Some(route) = route else {
            return std::borrow::Cow::Borrowed(&table.none);
        };
        match table.routes.get(route.index) {
            Some(m) if m.route() == &*route.name => std::borrow::Cow::Borrowed(m),
            _ => std::borrow::Cow::Owned(self.metrics().route(&route.name)),
        }
    }

    /// The token validation pipeline.
    pub fn authenticator(&self) -> &Authenticator {
        &self.auth
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.auth.metrics()
    }

    /// The signing keys.
    pub fn keys(&self) -> &Arc<KeyStore> {
        self.auth.keys()
    }

    /// The exchanger of `[exchange.NAME]`.
    pub fn exchanger(&self, name: &str) -> Option<&Arc<Exchanger>> {
        self.exchangers.get(name)
    }

    /// The rate limits (`[[rate_limits]]`), with their buckets.
    pub fn rate_limiter(&self) -> &Arc<RateLimiter> {
        &self.rate_limiter
    }

    /// Every exchanger, by name.
    pub fn exchangers(&self) -> impl Iterator<Item = (&str, &Arc<Exchanger>)> {
        self.exchangers.iter().map(|(n, x)| (n.as_str(), x))
    }
}
