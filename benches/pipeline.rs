//! Micro-benchmarks of the validation pipeline, with no network: the `Authenticator` is built
//! from a `config::load_str` config and a fixed key set (`KeyStore::fixed`) made from a key
//! generated at start.
//!
//! - `pipeline/warm_cache`: `Authenticator::authenticate` with a token already in the cache;
//! - `pipeline/cold_cache`: a different token each call (pre-minted), so every call decodes,
//!   verifies the RS256 signature and inserts into the cache;
//! - `scale/*`: a cached token with 1, 1,000 and 100,000 tenants (allow-list and registry), route
//!   selection among 1, 100 and 10,000 routes;
//! - `stages/*`: token parsing, the signature check alone, the SHA-256 cache key, route
//!   matching among 100 routes, and header injection (`Principal::identity_headers`).
//!
//! Run: `cargo bench --bench pipeline` (`-- --quick` for a short run).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aadgate_core::auth::{token, token_hash, Authenticator, RequestParts};
use aadgate_core::config::{self, Config, Route};
use aadgate_core::jwks::{KeySet, KeySource, KeyStore};
use aadgate_core::metrics::Metrics;
use aadgate_core::registry::{AddedBy, Snapshot, TenantRecord, TenantState};
use aadgate_core::routing;
use aadgate_core::runtime::Runtime;
use aadgate_emulator::{SigningKey, TokenSpec};
use criterion::measurement::WallTime;
use criterion::{criterion_main, BenchmarkGroup, Criterion, Throughput};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method};

const TID: &str = "11111111-1111-4111-8111-111111111111";
const AUD: &str = "api://bench";
/// Distinct tokens minted for the cold-cache benchmark (RSA signing costs ~1 ms each).
const COLD_TOKENS: usize = 2000;

fn config_text(extra_routes: usize) -> String {
    let mut s = format!(
        r#"
[server]
listen = ["127.0.0.1:1"]
workers = 2

[identity]
jwks_uri = "http://127.0.0.1:9/keys"
audiences = ["{AUD}"]
token_cache_size = 100000

[tenants]
mode = "allow_list"
allow = ["{TID}"]
issuers = ["https://sts.windows.net/{{tenantid}}/", "https://login.microsoftonline.com/{{tenantid}}/v2.0"]

[[routes]]
name = "api"
path_prefix = "/api/"
upstream = "http://127.0.0.1:2"
roles_any = ["Bench.Read"]
"#
    );
    for i in 0..extra_routes {
        s.push_str(&format!(
            "\n[[routes]]\nname = \"r{i}\"\npath_prefix = \"/svc{i}/v1/\"\nupstream = \"http://127.0.0.1:2\"\nmethods = [\"GET\", \"POST\"]\n"
        ));
    }
    s
}

fn load(extra_routes: usize) -> Config {
    match config::load_str(Path::new("bench.toml"), &config_text(extra_routes)) {
        Ok(c) => c,
        Err(e) => panic!("bench config does not load: {e:?}"),
    }
}

struct Fixture {
    key: SigningKey,
    config: Arc<Config>,
    keys: Arc<KeyStore>,
    metrics: Arc<Metrics>,
}

impl Fixture {
    fn new() -> Fixture {
        let key = SigningKey::generate().expect("key generation");
        let jwks = serde_json::json!({ "keys": [key.jwk(Some("https://login.microsoftonline.com/{tenantid}/v2.0"))] });
        let raw = serde_json::to_vec(&jwks).expect("jwks json");
        let metrics = Arc::new(Metrics::new());
        let set = KeySet::parse(&raw, KeySource::Static).expect("jwks parses");
        let keys = KeyStore::fixed(set, metrics.clone());
        Fixture {
            key,
            config: Arc::new(load(0)),
            keys,
            metrics,
        }
    }

    /// A fresh authenticator (empty token cache) sharing the key store.
    fn authenticator(&self) -> Authenticator {
        Runtime::builder((*self.config).clone())
            .key_store(self.keys.clone())
            .metrics(self.metrics.clone())
            .build()
            .expect("runtime builds")
            .authenticator()
            .clone()
    }

    fn mint(&self, i: usize) -> String {
        self.key.mint(
            &TokenSpec::app(TID, AUD, &["Bench.Read"])
                .with_upn("bench@contoso.example")
                .with_claim("jti", serde_json::Value::from(format!("bench-{i}"))),
        )
    }

    fn route(&self) -> Arc<Route> {
        self.config.routes[0].clone()
    }
}

fn headers_for(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header value"),
    );
    h.insert("accept", HeaderValue::from_static("*/*"));
    h
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Benchmarks `name`: `headers`' token through `auth` on `route`, verified once (and cached)
/// before measuring.
fn bench_warm(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    (auth, route): (&Authenticator, &Arc<Route>),
    headers: &HeaderMap,
) {
    let parts = RequestParts {
        method: &Method::GET,
        path: "/api/orders",
        normalized_path: "/api/orders",
        host: "localhost",
        headers,
    };
    rt.block_on(auth.authenticate(route, &parts))
        .expect("token accepted");
    g.bench_function(name, |b| {
        b.to_async(rt)
            .iter(|| async { black_box(auth.authenticate(route, &parts).await.is_ok()) })
    });
}

fn bench_pipeline(c: &mut Criterion) {
    let fx = Fixture::new();
    let rt = runtime();
    let route = fx.route();
    let method = Method::GET;
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(1));

    // Warm cache: one token, verified once before measuring.
    let auth = fx.authenticator();
    bench_warm(
        &mut g,
        &rt,
        "warm_cache",
        (&auth, &route),
        &headers_for(&fx.mint(0)),
    );

    // Cold cache: every call a new token (decode + RS256 verify + cache insert). When the
    // pre-minted tokens run out, a new authenticator (empty cache) is built outside the timing.
    let tokens: Vec<HeaderMap> = (0..COLD_TOKENS)
        .map(|i| headers_for(&fx.mint(i + 1)))
        .collect();
    g.bench_function("cold_cache", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut auth = fx.authenticator();
            for i in 0..iters as usize {
                let n = i % COLD_TOKENS;
                if n == 0 && i > 0 {
                    auth = fx.authenticator();
                }
                let parts = RequestParts {
                    method: &method,
                    path: "/api/orders",
                    normalized_path: "/api/orders",
                    host: "localhost",
                    headers: &tokens[n],
                };
                let start = Instant::now();
                let ok = rt.block_on(auth.authenticate(&route, &parts)).is_ok();
                total += start.elapsed();
                assert!(ok, "cold token accepted");
            }
            total
        })
    });
    g.finish();
}

fn bench_stages(c: &mut Criterion) {
    let fx = Fixture::new();
    let rt = runtime();
    let raw = fx.mint(0);
    let mut g = c.benchmark_group("stages");

    g.bench_function("token_parse", |b| {
        b.iter(|| black_box(token::parse(black_box(&raw)).is_ok()))
    });

    g.bench_function("token_hash_sha256", |b| {
        b.iter(|| black_box(token_hash(black_box(&raw))))
    });

    let parsed = token::parse(&raw).expect("parses");
    let found = rt
        .block_on(aadgate_core::auth::keys::lookup(
            &fx.keys,
            &parsed.header,
            Duration::ZERO,
        ))
        .expect("key found");
    g.bench_function("signature_verify_rs256", |b| {
        b.iter(|| {
            black_box(
                aadgate_core::auth::signature::verify(
                    black_box(&parsed),
                    &found,
                    jsonwebtoken::Algorithm::RS256,
                )
                .is_ok(),
            )
        })
    });

    // Route matching among 101 routes (100 `/svcN/v1/` + `/api/`), a path near the end.
    let cfg = load(100);
    let path = "/svc97/v1/orders/42";
    g.bench_function("route_match_100", |b| {
        b.iter(|| {
            let p = routing::normalize_path(black_box(path), routing::PathCase::Insensitive)
                .expect("path ok");
            black_box(
                routing::select(&cfg.routes, &Method::GET, "localhost", &p)
                    .map(|r| r.path_prefix.len())
                    .is_ok(),
            )
        })
    });

    // The request's edge on every request: target classification, path normalization (an
    // already-normal path, and one that needs every rewrite) and the inbound header rule over
    // a typical header set with one spoofed `x_auth_roles`.
    let mut inbound = headers_for(&raw);
    for (n, v) in [
        ("user-agent", "Mozilla/5.0"),
        ("accept-encoding", "gzip, br"),
        ("accept-language", "en-US"),
        ("content-type", "application/json"),
        ("x-request-id", "6f1c2d3e-0000-4000-8000-000000000001"),
        ("x-forwarded-for", "10.0.0.1"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("x_auth_roles", "Admin"),
    ] {
        inbound.insert(
            http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
            HeaderValue::from_static(v),
        );
    }
    for (name, target) in [
        (
            "edge_normal_path_and_header_strip",
            "/svc97/v1/orders/42?x=1",
        ),
        (
            "edge_rewritten_path_and_header_strip",
            "/SVC97//v1;x=1/%6Frders/42?x=1",
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let e = routing::edge(&cfg.server, &Method::GET, black_box(target.as_bytes()))
                    .expect("served");
                black_box((
                    e.normalized.len(),
                    cfg.spoofable_headers(black_box(&inbound)),
                ))
            })
        });
    }

    // Header injection: the default claim headers of an app token with a upn.
    let auth = fx.authenticator();
    let headers = headers_for(&raw);
    let method = Method::GET;
    let parts = RequestParts {
        method: &method,
        path: "/api/orders",
        normalized_path: "/api/orders",
        host: "localhost",
        headers: &headers,
    };
    let principal = rt
        .block_on(auth.authenticate(&fx.route(), &parts))
        .expect("token accepted");
    g.bench_function("identity_headers", |b| {
        b.iter(|| black_box(principal.identity_headers().len()))
    });
    g.finish();
}

/// Other tenants than the benchmark's own: distinct GUIDs.
fn other_tenants(n: usize) -> impl Iterator<Item = String> {
    (1..=n).map(|i| format!("{:08x}-0000-4000-8000-{:012x}", i, i))
}

/// The configuration text with `tenants` allowed tenants (the benchmark's own first) and
/// `routes` routes spread over 100 hosts.
fn scale_config(tenants: usize, routes: usize) -> String {
    let mut allow = vec![format!("\"{TID}\"")];
    allow.extend(other_tenants(tenants - 1).map(|t| format!("\"{t}\"")));
    let mut s = config_text(0).replace(
        &format!("allow = [\"{TID}\"]"),
        &format!("allow = [{}]", allow.join(", ")),
    );
    for i in 0..routes {
        s.push_str(&format!(
            "\n[[routes]]\nname = \"s{i}\"\nhost = \"h{}.example\"\npath_prefix = \"/svc{}/v1/\"\nupstream = \"http://127.0.0.1:2\"\n",
            i % 100,
            i / 100
        ));
    }
    s
}

/// The configuration text of `mode = "registry"` with a registry file in `dir` that holds
/// `tenants` active tenants (the benchmark's own among them) and nothing in `allow`, so that
/// every request looks its tenant up in the registry.
fn registry_config(tenants: usize, dir: &Path) -> String {
    let record = |tenant_id: String| TenantRecord {
        tenant_id,
        state: TenantState::Active,
        added_at: 1_800_000_000,
        added_by: AddedBy::Cli,
        changed_at: 1_800_000_000,
        reason: "benchmark".into(),
    };
    let records = std::iter::once(TID.to_string())
        .chain(other_tenants(tenants - 1))
        .map(record)
        .collect();
    let snapshot = Snapshot::from_records(records).expect("registry records");
    let file = dir.join(format!("tenants-{tenants}.json"));
    std::fs::write(&file, snapshot.to_json()).expect("registry file written");
    config_text(0).replace(
        &format!("mode = \"allow_list\"\nallow = [\"{TID}\"]"),
        &format!(
            "mode = \"registry\"\nregistry = {:?}",
            file.display().to_string()
        ),
    )
}

/// Per-request cost against the size of the configuration: a cached token through the whole
/// pipeline with 1, 1,000 and 100,000 tenants (allow-list, and registry), and route selection
/// among 1, 100 and 10,000 routes (the route table, and the one-route-at-a-time rule it
/// replaces).
fn bench_scale(c: &mut Criterion) {
    let fx = Fixture::new();
    let rt = runtime();
    let method = Method::GET;
    let headers = headers_for(&fx.mint(0));
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut g = c.benchmark_group("scale");
    g.throughput(Throughput::Elements(1));
    let modes: [(&str, &dyn Fn(usize) -> String); 2] = [
        ("tenants", &|n| scale_config(n, 0)),
        ("registry_tenants", &|n| registry_config(n, dir.path())),
    ];
    for (mode, text) in modes {
        for tenants in [1, 1_000, 100_000] {
            let config = config::load_str(&dir.path().join("bench.toml"), &text(tenants))
                .expect("scale config loads");
            let auth = Runtime::builder(config)
                .key_store(fx.keys.clone())
                .metrics(fx.metrics.clone())
                .build()
                .expect("runtime builds")
                .authenticator()
                .clone();
            let route = auth.config().routes[0].clone();
            let name = format!("warm_cache_{tenants}_{mode}");
            bench_warm(&mut g, &rt, &name, (&auth, &route), &headers);
        }
    }
    for routes in [1, 100, 10_000] {
        let config = config::load_str(Path::new("bench.toml"), &scale_config(1, routes))
            .expect("scale config loads");
        let table = routing::RouteTable::new(&config.routes);
        // A request for the last host's last service: the far end of the list.
        let host = format!("h{}.example", (routes - 1) % 100);
        let path = format!("/svc{}/v1/orders", (routes - 1) / 100);
        assert!(table.select(&method, &host, &path).is_ok());
        g.bench_function(format!("route_table_{routes}_routes"), |b| {
            b.iter(|| {
                black_box(
                    table
                        .select(&method, black_box(&host), black_box(&path))
                        .is_ok(),
                )
            })
        });
        g.bench_function(format!("route_linear_{routes}_routes"), |b| {
            b.iter(|| {
                black_box(
                    routing::select(&config.routes, &method, black_box(&host), black_box(&path))
                        .is_ok(),
                )
            })
        });
    }
    g.finish();
}

/// The benchmark group `criterion_main!` runs (in a module of its own, because
/// `criterion_group!` defines a `pub fn` that cannot carry a doc comment).
mod groups {
    criterion::criterion_group!(
        benches,
        super::bench_pipeline,
        super::bench_stages,
        super::bench_scale
    );
}
criterion_main!(groups::benches);
