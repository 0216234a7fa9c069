//! End-to-end: fleet mode (SPEC section 10) — several real gateway processes sharing a real
//! `redis-server`: one token request for the fleet, the tenant registry and onboarding `state`
//! shared, no clear-text token in Redis, and no failed request when Redis dies and comes back.

mod common;

use std::time::{Duration, Instant};

use aadgate_emulator::TokenSpec;
use common::fleet::*;
use common::*;
use futures_util::StreamExt;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_makes_one_token_request_and_stores_no_token_in_clear() {
    let Some(f) = fleet(3).await else { return };
    f.w.idp.consent(TENANT_B, APP, roles());
    let (code, out) = f.cli(&f.gws[0], &["add", TENANT_B]).await;
    assert_eq!(code, 0, "{out}");
    for gw in &f.gws {
        f.until(gw, TENANT_B, 200).await;
    }
    // Every replica misses its own cache for the new tenant at once.
    let answers = f.miss_everywhere(TENANT_B, 8).await;
    assert_eq!(
        f.token_requests(TENANT_B),
        1,
        "one token request for the fleet"
    );
    // The token the upstream received is nowhere in Redis in clear text.
    let echoed: Value = serde_json::from_str(&answers[0].1).expect("echo json");
    let bearer = echoed["headers"]["authorization"][0]
        .as_str()
        .expect("authorization");
    let token = bearer.trim_start_matches("Bearer ");
    assert!(token.len() > 100, "{bearer}");
    let dump = f.redis.dump().await;
    assert!(
        dump.iter().any(|(k, _)| k.starts_with("aadgate:apptoken:")),
        "{dump:?}"
    );
    for (key, value) in &dump {
        assert!(key.starts_with("aadgate:"), "{key}");
        let text = String::from_utf8_lossy(value);
        assert!(
            !text.contains(token) && !text.contains(&token[..40]),
            "{key} holds the token"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_and_sign_up_links_are_shared_by_the_fleet() {
    let Some(f) = fleet(2).await else { return };
    let (a, b) = (&f.gws[0], &f.gws[1]);
    // App-only tokens that are never fresh: every exchange asks the token endpoint.
    f.w.idp.set_token_lifetime(1);
    // Sign-up through one replica: the other accepts the tenant.
    f.w.idp.consent(TENANT_B, APP, roles());
    let query = consent_callback(a, TENANT_B).await;
    let done = client()
        .get(a.url(&format!("/.aadgate/onboarding/callback?{query}")))
        .send()
        .await
        .expect("callback");
    assert_eq!(done.status(), 200);
    f.until(b, TENANT_B, 200).await;
    // The same link on the other replica: already used.
    let replay = client()
        .get(b.url(&format!("/.aadgate/onboarding/callback?{query}")))
        .send()
        .await
        .expect("replay");
    assert_eq!(replay.status(), 400);
    assert!(replay.text().await.expect("body").contains("already used"));
    // Consent withdrawn, noticed by one replica: refused by both.
    f.w.idp.revoke_consent(TENANT_B, APP);
    let (status, body) = f.get(a, TENANT_B, "/v1.0/users/x").await;
    assert_eq!(status, 403, "{body}");
    f.until(b, TENANT_B, 401).await;
    let (code, out) = f.cli(b, &["show", TENANT_B, "--json"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"revoked\""), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_and_coming_back_fails_no_request() {
    let Some(mut f) = fleet(2).await else { return };
    f.w.idp.consent(TENANT_B, APP, roles());
    assert_eq!(f.cli(&f.gws[0], &["add", TENANT_B]).await.0, 0);
    for gw in &f.gws {
        f.until(gw, TENANT_B, 200).await;
        assert_eq!(f.get(gw, TENANT_B, "/v1.0/users/x").await.0, 200);
    }
    let mut failures = Vec::new();
    for (s, body) in round(&f).await {
        if s != 200 {
            failures.push(body);
        }
    }
    f.redis.kill();
    for gw in &f.gws {
        // Requests keep passing while the replicas find out.
        for (s, body) in round(&f).await {
            if s != 200 {
                failures.push(body);
            }
        }
        f.until_metric(gw, "aadgate_store_up", 0.0).await;
    }
    for _ in 0..5 {
        for (s, body) in round(&f).await {
            if s != 200 {
                failures.push(body);
            }
        }
    }
    let ready = reqwest::get(f.gws[0].admin_url("/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.expect("body").contains("store degraded"));
    let m = f.gws[0].metrics().await;
    assert!(sample(&m, "aadgate_store_errors_total", &[]).is_some());
    // Back: the replicas reconnect by themselves.
    f.redis.restart().await;
    for gw in &f.gws {
        f.until_metric(gw, "aadgate_store_up", 1.0).await;
    }
    for (s, body) in round(&f).await {
        if s != 200 {
            failures.push(body);
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    // Redis came back empty (no persistence here): a replica restores the registry into it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out) = f.cli(&f.gws[1], &["show", TENANT_B]).await;
        if code == 0 {
            assert!(out.contains("active"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "registry not restored: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_for_the_fleet_and_per_replica_without_redis() {
    let limit = tenant_limit("per-tenant", 5);
    let Some(mut f) = fleet_with(3, &limit).await else {
        return;
    };
    assert_eq!(f.cli(&f.gws[0], &["add", TENANT_A]).await.0, 0);
    // Every replica has read the change (seen on its admin listener: no quota spent).
    f.until_listed(TENANT_A).await;
    // 15 requests spread over 3 replicas: the fleet admits the burst once, not 3 times.
    let mut admitted = 0;
    let mut refused = Vec::new();
    for i in 0..15 {
        let (status, _) = f.get(&f.gws[i % 3], TENANT_A, "/orders").await;
        match status {
            200 => admitted += 1,
            s => refused.push(s),
        }
    }
    assert_eq!(admitted, 5, "refused: {refused:?}");
    assert!(refused.iter().all(|s| *s == 429), "{refused:?}");
    let m = f.gws[0].metrics().await;
    assert!(
        sample(&m, "aadgate_rate_limited_total", &["limit=\"per-tenant\""]).unwrap_or(0.0) >= 1.0
    );
    // Redis gone: each replica enforces the full limit on its own.
    f.redis.kill();
    f.until_metric(&f.gws[1], "aadgate_store_up", 0.0).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(f.get(&f.gws[1], TENANT_A, "/orders").await.0);
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429]);
}

#[tokio::test]
async fn a_gateway_starts_and_serves_while_redis_is_down() {
    let w = World::start().await;
    let closed = free_port();
    let template = base_config(
        "",
        &format!("mode = \"registry\"\nallow = [\"{TENANT_A}\"]\n"),
    ) + &format!(
        r#"
[store]
kind = "redis"
url = "redis://127.0.0.1:{closed}/0"
encryption_key_file = "{{dir}}/store.key"

[[routes]]
name = "api"
path_prefix = "/"
upstream = "{{echo}}"
"#
    );
    let p = Prepared::new(&template, &w);
    std::fs::write(p.dir.path().join("store.key"), STORE_KEY).expect("store key");
    let path = p.dir.path().join("aadgate.toml");
    std::fs::write(&path, &p.rendered).expect("config");
    let gw = p.launch(path, &[]).await;
    gw.wait_ready().await;
    let ready = reqwest::get(gw.admin_url("/readyz")).await.expect("readyz");
    assert_eq!(ready.status(), 200);
    assert!(ready.text().await.expect("body").contains("store degraded"));
    // Tenants in `allow` are served; the registry is empty until Redis answers.
    let token = w.idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Orders.Read"]));
    assert_eq!(get_status_and_reason(&gw, "/x", &token).await.0, 200);
    assert_eq!(
        sample(&gw.metrics().await, "aadgate_store_up", &[]),
        Some(0.0)
    );
    // The reason is logged once, at start-up.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw
        .logs()
        .contains("shared store does not answer at start-up")
    {
        assert!(Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // `aadgate tenants` says why, with exit code 3.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_aadgate"))
        .args(["tenants", "list", "-c"])
        .arg(&gw.config_path)
        .output()
        .await
        .expect("cli");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not answer"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_token_from_before_a_withdrawal_does_not_prove_consent() {
    let Some(f) = fleet(1).await else { return };
    let gw = &f.gws[0];
    f.w.idp.consent(TENANT_B, APP, roles());
    assert_eq!(f.cli(gw, &["add", TENANT_B]).await.0, 0);
    f.until(gw, TENANT_B, 200).await;
    // An app-only token for B is now cached in process and in Redis, valid for an hour.
    assert_eq!(f.get(gw, TENANT_B, "/v1.0/users/x").await.0, 200);
    f.w.idp.revoke_consent(TENANT_B, APP);
    // A sign-up callback for B: the proof is a new token request, not the cached token.
    let query = consent_callback(gw, TENANT_B).await;
    let r = client()
        .get(gw.url(&format!("/.aadgate/onboarding/callback?{query}")))
        .send()
        .await
        .expect("callback");
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-aadgate-reason"], "tenant_not_consented");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_key_spends_from_leases_and_the_fleet_never_admits_more_than_the_limit() {
    let limit = tenant_limit("busy", 300);
    let Some(f) = fleet_with(2, &limit).await else {
        return;
    };
    assert_eq!(f.cli(&f.gws[0], &["add", TENANT_A]).await.0, 0);
    f.until_listed(TENANT_A).await;
    // 400 requests, 16 in flight at any time, over both replicas, against a fleet-wide burst
    // of 300 (one token: the requests are what is measured, not minting).
    let token =
        f.w.idp
            .mint(&TokenSpec::app(TENANT_A, AUD, &["Orders.Read"]));
    let http = client();
    let statuses: Vec<(u16, String)> = futures_util::stream::iter(0..400)
        .map(|i| {
            let req = http.get(f.gws[i % 2].url("/orders")).bearer_auth(&token);
            async move {
                match req.send().await {
                    Ok(r) => (r.status().as_u16(), String::new()),
                    Err(e) => (0, e.to_string()),
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let admitted = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert!(
        statuses.iter().all(|(s, _)| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    // Leased requests come out of the fleet's bucket before they are admitted: never more
    // than the limit. Leases stop while fewer than twice their size are left, so at most what
    // each replica still held when its lease expired is lost (31 each).
    assert!(admitted <= 300, "{admitted} admitted");
    assert!(admitted >= 300 - 2 * 31, "{admitted} admitted");
    let mut leased = 0.0;
    for gw in &f.gws {
        leased +=
            sample(&gw.metrics().await, "aadgate_rate_limit_leased_total", &[]).unwrap_or(0.0);
    }
    assert!(leased > 0.0, "no request was admitted from a lease");
}
