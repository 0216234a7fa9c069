//! Measures what one entry of the verified-token cache costs in resident memory: inserts
//! 100,000 verified tokens with realistic Azure AD claims into a cache like the gateway's and
//! reads VmRSS from /proc before and after. Linux only.
//!
//!     cargo run --release --example cache_memory

use std::sync::Arc;

use aadgate_core::auth::VerifiedToken;

fn rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find(|l| l.starts_with("VmRSS"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn main() {
    const N: u32 = 100_000;
    let cache = moka::sync::Cache::<[u8; 32], Arc<VerifiedToken>>::builder()
        .max_capacity(u64::from(N) * 2)
        .build();
    let before = rss_kib().unwrap_or(0);
    for i in 0..N {
        let claims = serde_json::json!({
            "aud": "api://orders",
            "iss": "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0",
            "iat": 1_795_305_177, "nbf": 1_795_305_177, "exp": 1_795_308_777,
            "aio": "E2ZgYJi0bXJ9+vVsU8mU3wA=",
            "azp": "0f8a6a48-2c1b-4c57-9d4a-8f0c2b8c1d11", "azpacr": "2", "idtyp": "app",
            "oid": "9d8c7b6a-5f4e-4d3c-2b1a-0f9e8d7c6b5a",
            "rh": "0.AXEAv4j5cvGGr0GRqy180BHbR0hqig8bLFdMnUqPDCuMHRFxAAA.",
            "roles": ["Orders.Read", "Orders.Write"],
            "sub": "9d8c7b6a-5f4e-4d3c-2b1a-0f9e8d7c6b5a",
            "tid": "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "uti": format!("u{i}xyzxyzxyzxyzxyzxyz"), "ver": "2.0",
        });
        let Some(map) = claims.as_object().cloned() else {
            return;
        };
        let token = VerifiedToken::from_claims(map, Arc::from("kid"));
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(&i.to_le_bytes());
        cache.insert(key, Arc::new(token));
    }
    cache.run_pending_tasks();
    let after = rss_kib().unwrap_or(0);
    let delta = after.saturating_sub(before);
    println!(
        "{} entries: RSS +{} KiB, {} bytes per cached token",
        cache.entry_count(),
        delta,
        delta * 1024 / u64::from(N)
    );
}
