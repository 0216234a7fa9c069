//! What the shared store adds to an app-only token exchange that misses the in-process cache
//! (`benches/exchange_rtt.sh`, BENCHMARKS.md "The shared store on a cache-missing exchange").
//!
//! In one process: the AAD emulator (token endpoint), and three exchangers of the same
//! application, each asked for tenants it has never seen, so that every call misses its
//! in-process cache:
//!
//! - `local`: no shared store — the token request alone;
//! - `redis miss`: the Redis store, the tenant new to the fleet too — one script that finds no
//!   entry and takes the fleet's lock, then the token request; the sealed entry is written and
//!   the lock released after the caller has its token;
//! - `redis hit`: a second replica on the same Redis asking for the tenants the first one just
//!   fetched — the same script finds the entry; the AES-GCM opening; no token request.
//!
//! The three are interleaved call by call, so drift of a shared machine touches each alike; the
//! second replica reads the entry the first wrote one call earlier (after the first replica's
//! background write has finished: the local call runs in between).
//! Prints p50/p99 of each in microseconds, and a Redis `PING` round trip for scale.
//!
//! Usage: `exchange_rtt --redis redis://127.0.0.1:PORT/0 [--count N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use aadgate_core::certs::load_pair;
use aadgate_core::config::{
    Credential, ExchangeSettings, ExchangeTarget, RedisTarget, StoreKind, StoreSettings,
};
use aadgate_core::exchange::Exchanger;
use aadgate_core::metrics::Metrics;
use aadgate_core::store::SharedStore;
use aadgate_emulator::{AppRegistration, Emulator, EmulatorOptions, SigningKey};

const CLIENT_ID: &str = "5b0e1f7c-1d2e-4c3b-9a8f-7e6d5c4b3a21";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(redis) = flag("--redis") else {
        eprintln!("usage: exchange_rtt --redis redis://127.0.0.1:PORT/0 [--count N]");
        return std::process::ExitCode::from(2);
    };
    let count = flag("--count")
        .and_then(|c| c.parse().ok())
        .unwrap_or(500usize);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    match runtime.block_on(run(&redis, count)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("exchange_rtt: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The `i`th tenant of a series: a GUID of its own.
fn tenant(series: u32, i: usize) -> String {
    format!("{series:08x}-0000-4000-8000-{i:012x}")
}

async fn run(redis: &str, count: usize) -> Result<(), String> {
    let emu = Emulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        EmulatorOptions::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    // A throwaway certificate for the gateway's application.
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let key = SigningKey::generate().map_err(|e| e.to_string())?;
    let (crt, pem) = (dir.path().join("app.crt"), dir.path().join("app.key"));
    std::fs::write(&crt, key.certificate_pem()).map_err(|e| e.to_string())?;
    std::fs::write(&pem, key.private_key_pem()).map_err(|e| e.to_string())?;
    let cert = load_pair(&crt, &pem).map_err(|e| format!("{e:?}"))?;
    emu.register_app(AppRegistration::new(CLIENT_ID).with_certificate_der(cert.cert_der.clone()))
        .map_err(|e| e.to_string())?;
    emu.consent(&tenant(3, 0), CLIENT_ID, vec!["User.Read.All".into()]);
    for i in 0..count {
        for series in [1, 2] {
            emu.consent(&tenant(series, i), CLIENT_ID, vec!["User.Read.All".into()]);
        }
    }
    let settings = ExchangeSettings {
        name: "graph".into(),
        client_id: CLIENT_ID.into(),
        token_endpoint: emu.token_endpoint_template(),
        target: ExchangeTarget::Scope("https://graph.microsoft.com/.default".into()),
        certificates: vec![cert],
        credentials: vec![Credential::Certificate(0)],
        send_x5c: false,
        client_capabilities: Vec::new(),
        federated_audience: "api://AzureADTokenExchange".into(),
        timeout: Duration::from_secs(10),
        refresh_before_expiry: Duration::from_secs(300),
        failure_cache: Duration::from_secs(30),
        purge_interval: Duration::from_secs(30),
        max_tenants: 100_000,
        rewrite_me: false,
        user_claim: "oid".into(),
    };
    let metrics = Arc::new(Metrics::new());
    let store_settings = StoreSettings {
        kind: StoreKind::Redis {
            url: redis.to_string(),
            target: Box::new(RedisTarget::parse(redis)?),
            encryption_key: Arc::new([7u8; 32]),
            encryption_key_file: "bench".into(),
        },
        ..StoreSettings::default()
    };
    let store = SharedStore::new(&store_settings, metrics.clone())
        .map_err(|e| e.to_string())?
        .ok_or("no store")?;
    tokio::spawn(store.clone().run());
    store.connect().await.map_err(|e| e.to_string())?;
    let local = Exchanger::new(settings.clone()).with_metrics(&metrics);
    let first = Exchanger::new(settings.clone())
        .with_metrics(&metrics)
        .with_store(Some(store.clone()));
    let second = Exchanger::new(settings)
        .with_metrics(&metrics)
        .with_store(Some(store.clone()));

    // Warm-up: connections, the assertion signer, the emulator's keys.
    for x in [&local, &first, &second] {
        x.token(&tenant(3, 0), &metrics)
            .await
            .map_err(|r| r.to_string())?;
    }
    let mut times: [Vec<u64>; 5] = Default::default();
    let plain_key = store.key("bench:plain");
    store
        .set_px(&plain_key, &[b'x'; 1600], Duration::from_secs(600))
        .await
        .map_err(|e| e.to_string())?;
    let mut ping = redis::cmd("PING");
    let ping = ping.arg("x");
    for i in 0..count {
        let t = Instant::now();
        first
            .token(&tenant(2, i), &metrics)
            .await
            .map_err(|r| r.to_string())?;
        times[1].push(t.elapsed().as_micros() as u64);
        let t = Instant::now();
        local
            .token(&tenant(1, i), &metrics)
            .await
            .map_err(|r| r.to_string())?;
        times[0].push(t.elapsed().as_micros() as u64);
        // The entry the first replica wrote one iteration ago (its write follows its answer),
        // and a plain GET of a value of the same size, in alternating order.
        for step in [i % 2, 1 - i % 2] {
            let t = Instant::now();
            if step == 0 && i > 0 {
                second
                    .token(&tenant(2, i - 1), &metrics)
                    .await
                    .map_err(|r| r.to_string())?;
                times[2].push(t.elapsed().as_micros() as u64);
            } else if step == 1 {
                store.get(&plain_key).await.map_err(|e| e.to_string())?;
                times[4].push(t.elapsed().as_micros() as u64);
            }
        }
        let t = Instant::now();
        store
            .query::<String>("get", ping)
            .await
            .map_err(|e| e.to_string())?;
        times[3].push(t.elapsed().as_micros() as u64);
    }
    second
        .token(&tenant(2, count - 1), &metrics)
        .await
        .map_err(|r| r.to_string())?;
    let requests = emu.token_request_count();
    let expected = 2 * count as u64 + 2;
    if requests != expected {
        return Err(format!(
            "{requests} token requests, expected {expected}: the second replica did not read the shared entries"
        ));
    }
    println!("calls per row: {count} (each a tenant new to that exchanger)");
    println!("| exchange | p50 µs | p99 µs | mean µs |");
    println!("|---|---:|---:|---:|");
    let names = [
        "local store: token request",
        "Redis store, new to the fleet: script (no entry, lock taken) + token request",
        "Redis store, fetched by another replica: script (entry) + open",
        "Redis PING (for scale)",
        "Redis GET of a 1.6 KB value (for scale)",
    ];
    for (name, mut t) in names.iter().zip(times) {
        t.sort_unstable();
        let at = |q: f64| t[((t.len() - 1) as f64 * q).round() as usize];
        let mean = t.iter().sum::<u64>() / t.len() as u64;
        println!("| {name} | {} | {} | {mean} |", at(0.5), at(0.99));
    }
    Ok(())
}
