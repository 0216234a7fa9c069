//! End-to-end: fleet mode on the Redis deployments operators run besides one plain server
//! (SPEC section 10) — a real three-node Redis Cluster, a primary with a replica under a real
//! Sentinel that fails over while the gateways serve, and a server that speaks only TLS with
//! an ACL user.

mod common;

use common::fleet::*;
use common::redis::{RedisCluster, RedisSentinel, RedisTls};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_a_redis_cluster_shares_tokens_the_registry_and_limits() {
    let Some(cluster) = RedisCluster::start().await else {
        return;
    };
    let limit = tenant_limit("per-tenant", 5);
    let url = cluster.url();
    let f = fleet_on(cluster, &url, 2, &limit).await;
    // Failures counted before the first health check (a registry read at start-up) are not
    // this test's business; none may follow.
    let mut errors_before = Vec::new();
    for gw in &f.gws {
        errors_before.push(sample(
            &gw.metrics().await,
            "aadgate_store_errors_total",
            &[],
        ));
    }
    f.onboard(TENANT_B).await;
    // Every replica misses its own token cache at once: one token request for the cluster.
    f.miss_everywhere(TENANT_B, 4).await;
    assert_eq!(f.token_requests(TENANT_B), 1, "one token request");
    // One bucket for the fleet: the burst is admitted once across both replicas.
    let mut statuses = Vec::new();
    for i in 0..10 {
        statuses.push(f.get(&f.gws[i % 2], TENANT_B, "/orders").await.0);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    // The keys live on the cluster's nodes; the registry's keys share one slot (their hash tag),
    // which its multi-key scripts need.
    let per_node = f.redis.keys_per_node().await;
    let all: Vec<&String> = per_node.iter().flatten().collect();
    for prefix in [
        "aadgate:apptoken:",
        "aadgate:ratelimit:",
        "aadgate:{tenants}",
    ] {
        assert!(
            all.iter().any(|k| k.starts_with(prefix)),
            "{prefix}: {all:?}"
        );
    }
    let with_registry: Vec<_> = (per_node.iter())
        .filter(|keys| keys.iter().any(|k| k.contains("{tenants}")))
        .collect();
    assert_eq!(with_registry.len(), 1, "{per_node:?}");
    for (gw, before) in f.gws.iter().zip(errors_before) {
        assert_eq!(
            sample(&gw.metrics().await, "aadgate_store_errors_total", &[]),
            before,
            "{}",
            gw.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_follows_a_sentinel_failover_without_failing_a_request() {
    let Some(sentinel) = RedisSentinel::start().await else {
        return;
    };
    let url = sentinel.url();
    let mut f = fleet_on(sentinel, &url, 2, "").await;
    f.w.idp.consent(TENANT_B, APP, roles());
    assert_eq!(f.cli(&f.gws[0], &["add", TENANT_B]).await.0, 0);
    for gw in &f.gws {
        f.until(gw, TENANT_B, 200).await;
    }
    let mut failures = Vec::new();
    let mut check = |answers: Vec<(u16, String)>| {
        failures.extend(answers.into_iter().filter(|(s, _)| *s != 200));
    };
    check(round(&f).await);
    // The primary crashes: the replicas serve from what they have until Sentinel promotes the
    // replica, then find the new primary by themselves.
    f.redis.kill_primary();
    for gw in &f.gws {
        check(round(&f).await);
        f.until_metric(gw, "aadgate_store_up", 0.0).await;
    }
    check(round(&f).await);
    f.redis.until_failed_over().await;
    for gw in &f.gws {
        f.until_metric(gw, "aadgate_store_up", 1.0).await;
    }
    check(round(&f).await);
    assert!(failures.is_empty(), "{failures:?}");
    // The registry survived on the promoted replica, and a change made now reaches everyone.
    let (code, out) = f.cli(&f.gws[1], &["show", TENANT_B]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("active"), "{out}");
    f.w.idp.consent(TENANT_C, APP, roles());
    let (code, out) = f.cli(&f.gws[1], &["add", TENANT_C]).await;
    assert_eq!(code, 0, "{out}");
    for gw in &f.gws {
        f.until(gw, TENANT_C, 200).await;
    }
    let logs = f.gws[0].logs();
    assert!(logs.contains("shared store up"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_redis_over_tls_with_an_acl_user_shares_tokens() {
    const USER: &str = "aadgate";
    const PASSWORD: &str = "test-only-redis-password";
    let Some(redis) = RedisTls::start(USER, PASSWORD).await else {
        return;
    };
    let url = redis.url(USER, PASSWORD);
    let ca = redis.ca.display().to_string();
    let f = fleet_on_with_env(redis, &url, 2, "", &[("SSL_CERT_FILE", &ca)]).await;
    f.onboard(TENANT_B).await;
    f.miss_everywhere(TENANT_B, 4).await;
    // One token request for the fleet: the entry, the lock and the registry are all within
    // the ACL's `~aadgate:*`, over TLS.
    assert_eq!(f.token_requests(TENANT_B), 1, "one token request");
    let logs = f.gws[0].logs();
    assert!(!logs.contains(PASSWORD), "the password is logged:\n{logs}");

    // A wrong password: the gateway serves from its own state and says why.
    let wrong = format!(
        "rediss://{USER}:not-the-password@127.0.0.1:{}/0",
        f.redis.port
    );
    let template = base_config("", &format!("allow = [\"{TENANT_A}\"]\n"))
        + &format!(
            r#"
[store]
kind = "redis"
url = "{wrong}"
encryption_key_file = "{{dir}}/store.key"

[[routes]]
name = "api"
path_prefix = "/"
upstream = "{{echo}}"
"#
        );
    let p = Prepared::new(&template, &f.w);
    std::fs::write(p.dir.path().join("store.key"), STORE_KEY).expect("store key");
    let path = p.dir.path().join("aadgate.toml");
    std::fs::write(&path, &p.rendered).expect("config");
    let gw = p
        .launch_with_env(path, &[], &[("SSL_CERT_FILE", Some(ca.as_str()))])
        .await;
    gw.wait_ready().await;
    assert_eq!(f.get(&gw, TENANT_A, "/x").await.0, 200);
    let logs = gw
        .wait_for_log("shared store does not answer at start-up")
        .await;
    // Redis's refusal, not a timeout, is what the operator reads.
    assert!(
        logs.to_ascii_lowercase()
            .contains("password authentication failed"),
        "{logs}"
    );
    assert!(!logs.contains("not-the-password"), "{logs}");
    assert_eq!(
        sample(&gw.metrics().await, "aadgate_store_up", &[]),
        Some(0.0)
    );
}
