//! The limiter with configurations loaded from TOML: scoping, keys, overrides, several limits,
//! reloads, the shared-store fallback, and the Lua script against a real `redis-server` when
//! one is installed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use super::*;
use crate::config::Config;

const T1: &str = "11111111-1111-4111-8111-111111111111";
const T2: &str = "22222222-2222-4222-8222-222222222222";
const C1: &str = "0f8a6a48-2c1b-4c57-9d4a-8f0c2b8c1d11";
const S: u64 = 1_000_000;

fn config(limits: &str) -> Config {
    let toml = format!(
        r#"
[server]
listen = ["127.0.0.1:8080"]
[identity]
jwks_uri = "http://127.0.0.1:1/keys"
audiences = ["api://orders"]
[tenants]
mode = "any"
[[routes]]
name = "orders"
path_prefix = "/orders/"
upstream = "http://127.0.0.1:1"
[[routes]]
name = "files"
path_prefix = "/files/"
upstream = "http://127.0.0.1:1"
[[routes]]
name = "public"
path_prefix = "/public/"
upstream = "http://127.0.0.1:1"
auth = "anonymous"
{limits}"#
    );
    crate::config::load_str(std::path::Path::new("t.toml"), &toml).expect("valid config")
}

fn limiter(c: &Config, previous: Option<&RateLimiter>) -> RateLimiter {
    RateLimiter::new(
        &c.rate_limits,
        &c.routes,
        previous,
        None,
        Arc::new(Metrics::new()),
    )
}

fn route<'c>(c: &'c Config, name: &str) -> &'c Route {
    c.routes.iter().find(|r| &*r.name == name).expect("route")
}

fn caller(tenant: &str) -> CallerKeys<'_> {
    CallerKeys {
        tenant,
        client: Some(C1),
        user: None,
    }
}

/// How many of `n` requests at `now` pass.
async fn admitted(l: &RateLimiter, r: &Route, who: &CallerKeys<'_>, now: u64, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if l.admit(r, who, now).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

const HOURLY: &str = "[[rate_limits]]\nname = \"per-tenant\"\nkey = \"tenant\"\nrate = 1\nperiod = \"1h\"\nburst = 3\n";

#[tokio::test]
async fn a_limit_without_routes_shares_one_bucket_across_every_authenticated_route() {
    let c = config(HOURLY);
    let l = limiter(&c, None);
    let who = caller(T1);
    assert_eq!(admitted(&l, route(&c, "orders"), &who, S, 2).await, 2);
    assert_eq!(admitted(&l, route(&c, "files"), &who, S, 2).await, 1);
    assert!(
        !l.applies(route(&c, "public")),
        "anonymous routes are never limited"
    );
    assert_eq!(
        admitted(&l, route(&c, "orders"), &caller(T2), S, 4).await,
        3,
        "another tenant has its own bucket"
    );
}

#[tokio::test]
async fn a_limit_with_routes_applies_to_those_only() {
    let c = config(&format!("{HOURLY}routes = [\"orders\"]\n"));
    let l = limiter(&c, None);
    let who = caller(T1);
    assert_eq!(admitted(&l, route(&c, "orders"), &who, S, 5).await, 3);
    let files = l.admit(route(&c, "files"), &who, S).await;
    assert_eq!(files, Ok(None), "no limit, no headers");
}

#[tokio::test]
async fn the_headers_name_the_policy_and_the_bucket() {
    let c = config(HOURLY);
    let l = limiter(&c, None);
    let r = route(&c, "orders");
    let first = l
        .admit(r, &caller(T1), S)
        .await
        .expect("ok")
        .expect("state");
    assert_eq!(first.policy(), "\"per-tenant\";q=3;w=10800");
    assert_eq!(first.ratelimit(), "\"per-tenant\";r=2;t=3600");
    admitted(&l, r, &caller(T1), S, 2).await;
    let refused = l.admit(r, &caller(T1), S + 500_000).await.expect_err("429");
    assert_eq!(refused.reason, Reason::RateLimited);
    assert_eq!(refused.retry_after, Some(Duration::from_secs(3600)));
    let h = refused.headers("id");
    assert!(h.contains(&("retry-after", "3600".into())), "{h:?}");
    assert!(
        h.contains(&("ratelimit", "\"per-tenant\";r=0;t=10800".into())),
        "{h:?}"
    );
    assert!(h.contains(&("ratelimit-policy", "\"per-tenant\";q=3;w=10800".into())));
}

#[tokio::test]
async fn an_override_gives_its_key_value_other_numbers() {
    let c = config(&format!(
        "{HOURLY}[rate_limits.overrides]\n\"{}\" = {{ rate = 2, burst = 5 }}\n",
        T2.to_uppercase()
    ));
    let l = limiter(&c, None);
    let r = route(&c, "orders");
    assert_eq!(admitted(&l, r, &caller(T1), S, 9).await, 3);
    assert_eq!(admitted(&l, r, &caller(T2), S, 9).await, 5);
    let state = l
        .admit(r, &caller(T2), S + 1800 * S)
        .await
        .expect("refilled one");
    assert_eq!(
        state.expect("state").policy(),
        "\"per-tenant\";q=5;w=9000",
        "T = 30 min, 5 requests"
    );
}

#[tokio::test]
async fn user_keys_use_oid_and_fall_back_to_sub_and_a_missing_claim_skips_the_limit() {
    let c = config(
        "[[rate_limits]]\nname = \"u\"\nkey = \"user\"\nrate = 1\nperiod = \"1h\"\nburst = 1\n",
    );
    let l = limiter(&c, None);
    let r = route(&c, "orders");
    let oid = "AAAAAAAA-0000-4000-8000-000000000001";
    let a = CallerKeys {
        tenant: T1,
        client: None,
        user: Some(oid),
    };
    let b = CallerKeys {
        tenant: T1,
        client: None,
        user: Some("sub-B"),
    };
    assert_eq!(
        a.value(RateLimitKey::User).as_deref(),
        Some(&*format!("{T1}:{}", oid.to_lowercase()))
    );
    assert_eq!(
        b.value(RateLimitKey::User).as_deref(),
        Some(&*format!("{T1}:sub-B"))
    );
    assert_eq!(admitted(&l, r, &a, S, 2).await, 1);
    assert_eq!(admitted(&l, r, &b, S, 2).await, 1);
    let nobody = CallerKeys {
        tenant: T1,
        client: None,
        user: None,
    };
    assert_eq!(admitted(&l, r, &nobody, S, 3).await, 3);
    assert_eq!(
        CallerKeys {
            tenant: T1,
            client: Some("C"),
            user: None
        }
        .value(RateLimitKey::TenantClient),
        Some(format!("{T1}:c"))
    );
}

#[tokio::test]
async fn a_refusal_by_one_limit_spends_nothing_of_the_others() {
    let per_client = "[[rate_limits]]\nname = \"per-client\"\nkey = \"tenant_client\"\nrate = 1\nperiod = \"1h\"\nburst = 1\n";
    let c = config(&format!("{HOURLY}{per_client}"));
    let l = limiter(&c, None);
    let r = route(&c, "orders");
    let state = l
        .admit(r, &caller(T1), S)
        .await
        .expect("first")
        .expect("state");
    assert_eq!(
        state.policy(),
        "\"per-tenant\";q=3;w=10800, \"per-client\";q=1;w=3600"
    );
    assert_eq!(
        state.ratelimit(),
        "\"per-tenant\";r=2;t=3600, \"per-client\";r=0;t=3600"
    );
    for _ in 0..5 {
        let refused = l
            .admit(r, &caller(T1), S)
            .await
            .expect_err("per-client refuses");
        assert!(refused.message.contains("per-client"));
        assert!(refused.headers("id").contains(&(
            "ratelimit",
            "\"per-tenant\";r=2;t=3600, \"per-client\";r=0;t=3600".into()
        )));
    }
    let other_client = CallerKeys {
        tenant: T1,
        client: Some(T2),
        user: None,
    };
    assert_eq!(
        admitted(&l, r, &other_client, S, 5).await,
        1,
        "per-tenant still had 2, per-client allows 1 for the other client"
    );
    let text = String::from_utf8(l.metrics.render()).expect("utf8");
    assert!(
        text.contains("aadgate_rate_limited_total{limit=\"per-client\",route=\"orders\"} 9"),
        "{text}"
    );
    assert!(text.contains("aadgate_rate_limited_total{limit=\"per-tenant\",route=\"files\"} 0"));
}

#[tokio::test]
async fn a_reload_keeps_the_buckets_of_unchanged_limits_only() {
    let c = config(HOURLY);
    let first = limiter(&c, None);
    let r = route(&c, "orders");
    assert_eq!(admitted(&first, r, &caller(T1), S, 3).await, 3);
    let routes_changed = config(&format!("{HOURLY}routes = [\"orders\", \"files\"]\n"));
    let second = limiter(&routes_changed, Some(&first));
    assert_eq!(
        admitted(&second, route(&routes_changed, "orders"), &caller(T1), S, 1).await,
        0
    );
    let burst_changed = config(&HOURLY.replace("burst = 3", "burst = 4"));
    let third = limiter(&burst_changed, Some(&second));
    assert_eq!(
        admitted(&third, route(&burst_changed, "orders"), &caller(T1), S, 5).await,
        4
    );
}

/// A shared store that fails every call, counting them.
#[derive(Debug, Default)]
struct Down(AtomicUsize);

#[async_trait]
impl Buckets for Down {
    async fn check(
        &self,
        _: &str,
        _: GcraParams,
        _: u64,
        _: Mode,
    ) -> Result<Decision, BucketsError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(BucketsError("connection refused".into()))
    }
}

/// A shared store that records the keys it is asked about and keeps buckets in process.
#[derive(Debug)]
struct Recording(std::sync::Mutex<Vec<String>>, LocalBuckets);

#[async_trait]
impl Buckets for Recording {
    async fn check(
        &self,
        key: &str,
        p: GcraParams,
        now: u64,
        m: Mode,
    ) -> Result<Decision, BucketsError> {
        if let Ok(mut keys) = self.0.lock() {
            keys.push(key.to_string());
        }
        Ok(self.1.step(key, p, now, m))
    }
}

#[tokio::test]
async fn when_the_shared_store_fails_the_local_buckets_enforce_the_full_limit() {
    let c = config(HOURLY);
    let down = Arc::new(Down::default());
    let metrics = Arc::new(Metrics::new());
    let l = RateLimiter::new(
        &c.rate_limits,
        &c.routes,
        None,
        Some(down.clone()),
        metrics.clone(),
    );
    assert_eq!(
        admitted(&l, route(&c, "orders"), &caller(T1), S, 5).await,
        3
    );
    assert_eq!(down.0.load(Ordering::SeqCst), 5);
    // The store counts its own failures (`aadgate_store_errors_total`), not the limiter.
    let text = String::from_utf8(metrics.render()).expect("utf8");
    assert!(
        text.contains("aadgate_store_errors_total{op=\"ratelimit\"} 0"),
        "{text}"
    );
}

#[tokio::test]
async fn the_shared_store_decides_with_namespaced_keys_and_survives_a_reload() {
    let c = config(HOURLY);
    let shared = Arc::new(Recording(
        Default::default(),
        LocalBuckets::new(100, Duration::from_secs(60)),
    ));
    let l = RateLimiter::new(
        &c.rate_limits,
        &c.routes,
        None,
        Some(shared.clone()),
        Arc::new(Metrics::new()),
    );
    assert_eq!(
        admitted(&l, route(&c, "orders"), &caller(T1), S, 4).await,
        3
    );
    assert!(
        l.limits()[0].local().is_empty(),
        "the local buckets were not needed"
    );
    let keys = shared.0.lock().map(|k| k.clone()).unwrap_or_default();
    let key = &keys[0];
    assert!(
        key.starts_with("per-tenant:") && key.ends_with(&format!(":{T1}")),
        "{key}"
    );
    assert_eq!(key.len(), "per-tenant:".len() + 9 + T1.len());
    let again = limiter(&c, Some(&l));
    assert!(
        again.shared().is_none(),
        "RateLimiter::new takes the store it is given"
    );
}

/// The Lua script, run by a real `redis-server` with `redis-cli --eval`, agrees with `gcra`.
#[test]
fn the_lua_script_agrees_with_the_rust_gcra() {
    use std::process::{Command, Stdio};
    let Some(port) = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()
        .map(|a| a.port())
    else {
        return;
    };
    let server = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn();
    let Ok(mut server) = server else {
        eprintln!("redis-server not installed: the Lua script is not run");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("gcra.lua");
    std::fs::write(&script, GCRA_LUA).expect("write script");
    let eval = |key: &str, args: [String; 7]| -> Option<Vec<u64>> {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "--eval"])
            .arg(&script)
            .arg(key)
            .arg(",")
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let nums: Vec<u64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (nums.len() == 5).then_some(nums)
    };
    let started = std::time::Instant::now();
    let p = GcraParams::new(1, Duration::from_secs(3600), 3);
    let now = 1_700_000_000 * S;
    let mut got = None;
    while started.elapsed() < Duration::from_secs(5) && got.is_none() {
        got = eval("probe", gcra_lua_args(p, now, Mode::Peek, 1, 0));
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = (|| {
        got?;
        let mut tat = None;
        let mut steps = Vec::new();
        for (at, mode) in [
            (0, Mode::Spend),
            (0, Mode::Spend),
            (0, Mode::Peek),
            (1, Mode::Spend),
            (2, Mode::Spend),
            (3_600 * S + 5, Mode::Spend),
        ] {
            let (want, t) = gcra::gcra(tat, now + at, p, mode);
            tat = Some(t);
            let v = eval("bucket", gcra_lua_args(p, now + at, mode, 1, 0))?;
            steps.push((want, v, mode));
        }
        // Leases: 4 at once while 8 or more would be admitted, else one.
        let big = GcraParams::new(1, Duration::from_secs(3600), 10);
        let leases = [
            eval("leased", gcra_lua_args(big, now, Mode::Spend, 4, 0))?,
            eval("leased", gcra_lua_args(big, now, Mode::Spend, 4, 0))?,
            eval("leased", gcra_lua_args(big, now, Mode::Peek, 4, 0))?,
            // Three of the first lease given back with a peek: 8 admissible again.
            eval("leased", gcra_lua_args(big, now, Mode::Peek, 1, 3))?,
            // Giving back more than was taken stops at a full bucket.
            eval("leased", gcra_lua_args(big, now, Mode::Peek, 1, 50))?,
        ];
        Some((steps, leases))
    })();
    let _ = server.kill();
    let _ = server.wait();
    let Some((steps, leases)) = result else {
        eprintln!("redis-server did not answer: the Lua script is not run");
        return;
    };
    for (want, got, mode) in steps {
        let want = [
            u64::from(want.allowed),
            want.remaining,
            want.retry_after_us,
            want.reset_after_us,
        ];
        assert_eq!(got[..4], want);
        // Without a lease a spend that is admitted takes one request; a refusal or peek none.
        assert_eq!(got[4], u64::from(mode == Mode::Spend && want[0] == 1));
    }
    // 10 admissible: 4 taken (6 left); 6 admissible < 8: one taken (5 left); a peek takes none.
    assert_eq!((leases[0][0], leases[0][1], leases[0][4]), (1, 6, 4));
    assert_eq!((leases[1][0], leases[1][1], leases[1][4]), (1, 5, 1));
    assert_eq!((leases[2][0], leases[2][1], leases[2][4]), (1, 5, 0));
    assert_eq!((leases[3][0], leases[3][1], leases[3][4]), (1, 8, 0));
    assert_eq!((leases[4][0], leases[4][1], leases[4][4]), (1, 10, 0));
}
