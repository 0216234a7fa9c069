//! Prometheus metrics: registered once, in one struct; labels only from configuration names and
//! closed sets (reason codes, results). No label ever carries a tenant, user, client or token.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::reason::Reason;

/// Buckets of `aadgate_request_duration_seconds` and `aadgate_upstream_duration_seconds`:
/// from half a millisecond to a minute.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Buckets of `aadgate_auth_duration_seconds`: a cached token takes microseconds, a signature
/// verification tens of microseconds, a hook call or key refetch milliseconds.
pub const AUTH_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
];

/// Route label for requests that matched no route.
pub const NO_ROUTE: &str = "-";

/// Every metric the gateway exports (the list, with labels, is in `docs/operations.md`).
pub struct Metrics {
    /// The registry all of them are in; [`Metrics::render`] writes it out.
    pub registry: Registry,
    /// `aadgate_requests_total{route, status, reason}`.
    pub requests: IntCounterVec,
    /// `aadgate_request_duration_seconds{route}`: the whole request.
    pub request_duration: HistogramVec,
    /// `aadgate_auth_duration_seconds{route}`: token validation, checks and hooks.
    pub auth_duration: HistogramVec,
    /// `aadgate_upstream_duration_seconds{route}`: upstream request to end of its response.
    pub upstream_duration: HistogramVec,
    /// `aadgate_jwks_fetch_total{result}`: `ok` or `error`.
    pub jwks_fetch: IntCounterVec,
    /// `aadgate_jwks_keys`: signing keys in the current key set.
    pub jwks_keys: IntGauge,
    /// `aadgate_jwks_last_success_timestamp_seconds` (0 = never).
    pub jwks_last_success: Gauge,
    /// `aadgate_token_cache_hits_total`.
    pub token_cache_hits: IntCounter,
    /// `aadgate_token_cache_misses_total`.
    pub token_cache_misses: IntCounter,
    /// `aadgate_validator_requests_total{validator, result}`.
    pub validator_requests: IntCounterVec,
    /// `aadgate_exchange_requests_total{exchange, result}`.
    pub exchange_requests: IntCounterVec,
    /// `aadgate_exchange_credential_total{exchange, kind, result}`: each credential tried for
    /// a token request (`ok`, `rejected` by the token endpoint, `error` of its own source).
    pub exchange_credential: IntCounterVec,
    /// `aadgate_config_reloads_total{result}`: `ok` or `error`.
    pub config_reloads: IntCounterVec,
    /// `aadgate_config_last_reload_success_timestamp_seconds`.
    pub config_last_reload_success: Gauge,
    /// `aadgate_build_info{version}`, always 1.
    pub build_info: IntGaugeVec,
    /// `aadgate_tenants{state}`: registry tenants by state.
    pub tenants: IntGaugeVec,
    /// `aadgate_onboarding_total{result}`: sign-up callbacks by result.
    pub onboarding: IntCounterVec,
    /// `aadgate_tenant_revocations_total`: registry tenants revoked after losing consent.
    pub tenant_revocations: IntCounter,
    /// `aadgate_store_up`: 1 while the store of shared state answers.
    pub store_up: IntGauge,
    /// `aadgate_store_errors_total{op}`: failed store operations.
    pub store_errors: IntCounterVec,
    /// `aadgate_rate_limited_total{route, limit}`: requests refused by a rate limit.
    pub rate_limited: IntCounterVec,
    /// `aadgate_rate_limit_leased_total`: requests admitted from this replica's lease of a
    /// shared bucket, without a round trip to the store.
    pub rate_limit_leased: IntCounter,
}

/// Results of `aadgate_onboarding_total`.
pub const ONBOARDING_RESULTS: [&str; 6] = [
    "ok",
    "pending",
    "denied",
    "not_consented",
    "bad_state",
    "error",
];

/// Operations of `aadgate_store_errors_total`.
pub const STORE_OPS: [&str; 5] = ["get", "set", "lock", "publish", "ratelimit"];

/// The tenant registry's and the store's metrics, every closed-set series present from the
/// start.
fn registry_metrics(
    r: &Registry,
) -> (
    IntGaugeVec,
    IntCounterVec,
    IntCounter,
    IntGauge,
    IntCounterVec,
) {
    let tenants = register(
        r,
        IntGaugeVec::new(
            Opts::new(
                "aadgate_tenants",
                "Tenant registry entries by state (active, pending, revoked).",
            ),
            &["state"],
        ),
    );
    for state in ["active", "pending", "revoked"] {
        tenants.with_label_values(&[state]);
    }
    let onboarding = counter_vec(
        r,
        "aadgate_onboarding_total",
        "Sign-up callbacks by result (ok, pending, denied, not_consented, bad_state, error).",
        &["result"],
    );
    for result in ONBOARDING_RESULTS {
        onboarding.with_label_values(&[result]);
    }
    let revocations = register(
        r,
        IntCounter::new(
            "aadgate_tenant_revocations_total",
            "Registry tenants marked revoked after the token endpoint said the app is no longer consented.",
        ),
    );
    let store_up = register(
        r,
        IntGauge::new(
            "aadgate_store_up",
            "1 while the store of shared state answers (always 1 for the local store).",
        ),
    );
    store_up.set(1);
    let store_errors = counter_vec(
        r,
        "aadgate_store_errors_total",
        "Failed operations on the store of shared state (the tenant registry file for the local store).",
        &["op"],
    );
    for op in STORE_OPS {
        store_errors.with_label_values(&[op]);
    }
    (tenants, onboarding, revocations, store_up, store_errors)
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

/// One route's per-request series (see [`Metrics::route`]).
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    route: Box<str>,
    /// `aadgate_requests_total{route, "200", "ok"}`, the most common outcome by far.
    ok: IntCounter,
    request_duration: Histogram,
    auth_duration: Histogram,
    upstream_duration: Histogram,
}

/// What [`RouteMetrics::request_done`] records about one finished request.
#[derive(Debug, Clone, Copy)]
pub struct RequestOutcome {
    /// The response status (0 when none was sent).
    pub status: u16,
    /// The refusal's reason; `None` for a proxied response (`ok`).
    pub reason: Option<Reason>,
    /// The whole request.
    pub total: Duration,
    /// Token validation, checks and hooks, when they ran.
    pub auth: Option<Duration>,
    /// Upstream request to the end of its response, when the request went upstream.
    pub upstream: Option<Duration>,
}

impl RouteMetrics {
    /// The route these handles count.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Counts one finished request of this route and observes its durations.
    pub fn request_done(&self, metrics: &Metrics, o: &RequestOutcome) {
        if o.status == 200 && o.reason.is_none() {
            self.ok.inc();
        } else {
            metrics.request_done(&self.route, o.status, o.reason);
        }
        self.request_duration.observe(o.total.as_secs_f64());
        if let Some(a) = o.auth {
            self.auth_duration.observe(a.as_secs_f64());
        }
        if let Some(u) = o.upstream {
            self.upstream_duration.observe(u.as_secs_f64());
        }
    }
}

/// Registers `metric` in `r` and gives it back. Definitions are constants of this file, so a
/// bad one or a name registered twice is a programming error found by every test.
fn register<M: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let m = metric.expect("valid metric definition");
    r.register(Box::new(m.clone()))
        .expect("metric registered once");
    m
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn histogram_vec(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(r, HistogramVec::new(opts, &["route"]))
}

/// The per-request metrics: the count by route, status and reason, and the three durations.
fn request_metrics(r: &Registry) -> (IntCounterVec, HistogramVec, HistogramVec, HistogramVec) {
    let requests = counter_vec(
        r,
        "aadgate_requests_total",
        "Requests by route, response status and reason code (ok for proxied responses).",
        &["route", "status", "reason"],
    );
    let request_duration = histogram_vec(
        r,
        "aadgate_request_duration_seconds",
        "Whole request time, from the request head to the end of the response.",
        REQUEST_BUCKETS,
    );
    let auth_duration = histogram_vec(
        r,
        "aadgate_auth_duration_seconds",
        "Time spent validating the token and running the route's checks and hooks.",
        AUTH_BUCKETS,
    );
    let upstream_duration = histogram_vec(
        r,
        "aadgate_upstream_duration_seconds",
        "Time from sending the request upstream to the end of the upstream response.",
        REQUEST_BUCKETS,
    );
    (requests, request_duration, auth_duration, upstream_duration)
}

/// `aadgate_rate_limited_total` and `aadgate_rate_limit_leased_total`.
fn rate_limit_metrics(r: &Registry) -> (IntCounterVec, IntCounter) {
    let rate_limited = counter_vec(
        r,
        "aadgate_rate_limited_total",
        "Requests refused with 429 rate_limited, by route and by the [[rate_limits]] entry that refused them.",
        &["route", "limit"],
    );
    let leased = register(
        r,
        IntCounter::new(
            "aadgate_rate_limit_leased_total",
            "Requests admitted by a shared (Redis) rate limit from this replica's lease of the bucket, without a round trip.",
        ),
    );
    (rate_limited, leased)
}

/// `aadgate_build_info` (set to 1), and the process collector on Linux.
fn build_info(r: &Registry) -> IntGaugeVec {
    let build_info = register(
        r,
        IntGaugeVec::new(
            Opts::new(
                "aadgate_build_info",
                "Always 1; the version label names the build.",
            ),
            &["version"],
        ),
    );
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    #[cfg(target_os = "linux")]
    {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        // Registration only fails on a name clash, which cannot happen in a fresh registry.
        let _ = r.register(Box::new(pc));
    }
    build_info
}

impl Metrics {
    /// Creates and registers every metric, with the closed-set series present from the start.
    pub fn new() -> Self {
        let r = Registry::new();
        let (requests, request_duration, auth_duration, upstream_duration) = request_metrics(&r);
        let (tenants, onboarding, tenant_revocations, store_up, store_errors) =
            registry_metrics(&r);
        let jwks_fetch = counter_vec(
            &r,
            "aadgate_jwks_fetch_total",
            "JWKS fetches by result.",
            &["result"],
        );
        let validator_requests = counter_vec(
            &r,
            "aadgate_validator_requests_total",
            "Validator hook decisions by validator and result (allow, deny, error, cached).",
            &["validator", "result"],
        );
        let exchange_requests = counter_vec(
            &r,
            "aadgate_exchange_requests_total",
            "App-only token lookups by exchange and result (ok, cached, not_consented, error).",
            &["exchange", "result"],
        );
        let exchange_credential = counter_vec(
            &r,
            "aadgate_exchange_credential_total",
            "Credentials tried for app-only token requests by exchange, kind (certificate, federated, managed_identity) and result (ok, rejected, error).",
            &["exchange", "kind", "result"],
        );
        let config_reloads = counter_vec(
            &r,
            "aadgate_config_reloads_total",
            "Configuration reloads by result.",
            &["result"],
        );
        for result in ["ok", "error"] {
            jwks_fetch.with_label_values(&[result]);
            config_reloads.with_label_values(&[result]);
        }
        let build_info = build_info(&r);
        let (rate_limited, rate_limit_leased) = rate_limit_metrics(&r);
        Metrics {
            jwks_keys: register(
                &r,
                IntGauge::new("aadgate_jwks_keys", "Signing keys in the current key set."),
            ),
            jwks_last_success: register(
                &r,
                Gauge::new(
                    "aadgate_jwks_last_success_timestamp_seconds",
                    "Unix time of the last successful JWKS fetch (0 = never).",
                ),
            ),
            token_cache_hits: register(
                &r,
                IntCounter::new(
                    "aadgate_token_cache_hits_total",
                    "Requests whose token was found in the verified-token cache.",
                ),
            ),
            token_cache_misses: register(
                &r,
                IntCounter::new(
                    "aadgate_token_cache_misses_total",
                    "Requests whose token had to be verified.",
                ),
            ),
            config_last_reload_success: register(
                &r,
                Gauge::new(
                    "aadgate_config_last_reload_success_timestamp_seconds",
                    "Unix time the running configuration was loaded.",
                ),
            ),
            registry: r,
            tenants,
            onboarding,
            tenant_revocations,
            store_up,
            store_errors,
            requests,
            request_duration,
            auth_duration,
            upstream_duration,
            jwks_fetch,
            validator_requests,
            exchange_requests,
            exchange_credential,
            config_reloads,
            build_info,
            rate_limited,
            rate_limit_leased,
        }
    }

    /// Counts one finished request. `reason` is `None` for a proxied response (`ok`).
    pub fn request_done(&self, route: &str, status: u16, reason: Option<Reason>) {
        let buf = itoa_status(status);
        let status = std::str::from_utf8(&buf).unwrap_or("000");
        let reason = reason.map_or("ok", Reason::as_str);
        self.requests
            .with_label_values(&[route, status, reason])
            .inc();
    }

    /// One route's handles (`NO_ROUTE` for requests that matched none), resolved once per
    /// route and runtime so a request does not look its series up by label values.
    pub fn route(&self, route: &str) -> RouteMetrics {
        RouteMetrics {
            route: route.into(),
            ok: self.requests.with_label_values(&[route, "200", "ok"]),
            request_duration: self.request_duration.with_label_values(&[route]),
            auth_duration: self.auth_duration.with_label_values(&[route]),
            upstream_duration: self.upstream_duration.with_label_values(&[route]),
        }
    }

    /// The `aadgate_rate_limited_total{route, limit}` series (created at 0 when new), resolved
    /// once per route and limit when the runtime is built.
    pub fn rate_limited(&self, route: &str, limit: &str) -> IntCounter {
        self.rate_limited.with_label_values(&[route, limit])
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn itoa_status(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_set_series_exist_from_start() {
        let m = Metrics::new();
        let text = String::from_utf8(m.render()).expect("utf8");
        for line in [
            "aadgate_config_reloads_total{result=\"ok\"} 0",
            "aadgate_config_reloads_total{result=\"error\"} 0",
            "aadgate_jwks_fetch_total{result=\"ok\"} 0",
            "aadgate_jwks_fetch_total{result=\"error\"} 0",
        ] {
            assert!(text.contains(line), "missing {line}");
        }
    }

    #[test]
    fn requests_are_labelled_with_route_status_and_reason() {
        let m = Metrics::new();
        m.request_done("orders", 200, None);
        m.request_done(NO_ROUTE, 404, Some(Reason::RouteNotFound));
        let text = String::from_utf8(m.render()).expect("utf8");
        assert!(text
            .contains("aadgate_requests_total{reason=\"ok\",route=\"orders\",status=\"200\"} 1"));
        assert!(text.contains(
            "aadgate_requests_total{reason=\"route_not_found\",route=\"-\",status=\"404\"} 1"
        ));
    }
}
