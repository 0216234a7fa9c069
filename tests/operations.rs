//! End-to-end operations: metrics, readiness, hot reload (SIGHUP, file change, Kubernetes
//! ConfigMap symlink swap, a refused broken config), graceful shutdown, request ids and logs.

mod common;

use std::time::{Duration, Instant};

use aadgate_emulator::TokenSpec;
use common::*;

fn config(allow: &[&str]) -> String {
    let allow: Vec<String> = allow.iter().map(|t| format!("\"{t}\"")).collect();
    base_config(
        "",
        &format!("mode = \"allow_list\"\nallow = [{}]\n", allow.join(", ")),
    ) + r#"
[[routes]]
name = "orders"
path_prefix = "/orders/"
upstream = "{echo}"
roles_any = ["Orders.Read"]

[[routes]]
name = "hold"
path_prefix = "/hold/"
upstream = "{echo}"
"#
}

fn token(w: &World, tid: &str) -> String {
    w.idp.mint(&TokenSpec::app(tid, AUD, &["Orders.Read"]))
}

async fn status(gw: &Gateway, path: &str, token: Option<&str>) -> u16 {
    let mut r = client().get(gw.url(path));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    r.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

/// Polls the metrics until `name{labels}` reaches `at_least` (bounded).
async fn wait_metric(gw: &Gateway, name: &str, labels: &[&str], at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if sample(&gw.metrics().await, name, labels).unwrap_or(0.0) >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} never reached {at_least}:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_the_spec_names_and_move_by_the_expected_amounts() {
    let w = World::start().await;
    let gw = Gateway::start(&config(&[TENANT_A]), &w).await;
    gw.wait_ready().await;
    let t = token(&w, TENANT_A);
    assert_eq!(status(&gw, "/orders/1", Some(&t)).await, 200);
    assert_eq!(status(&gw, "/orders/2", Some(&t)).await, 200);
    assert_eq!(status(&gw, "/orders/3", None).await, 401);
    assert_eq!(status(&gw, "/nowhere", None).await, 404);
    assert_eq!(
        status(&gw, "/orders/4", Some(&token(&w, TENANT_B))).await,
        401
    );
    let m = gw.metrics().await;
    let get = |name: &str, labels: &[&str]| sample(&m, name, labels);
    assert_eq!(
        get(
            "aadgate_requests_total",
            &["reason=\"ok\"", "route=\"orders\"", "status=\"200\""]
        ),
        Some(2.0)
    );
    assert_eq!(
        get(
            "aadgate_requests_total",
            &[
                "reason=\"missing_token\"",
                "route=\"orders\"",
                "status=\"401\""
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "aadgate_requests_total",
            &[
                "reason=\"route_not_found\"",
                "route=\"-\"",
                "status=\"404\""
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "aadgate_requests_total",
            &[
                "reason=\"tenant_not_allowed\"",
                "route=\"orders\"",
                "status=\"401\""
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        get(
            "aadgate_request_duration_seconds_count",
            &["route=\"orders\""]
        ),
        Some(4.0)
    );
    assert_eq!(
        get("aadgate_auth_duration_seconds_count", &["route=\"orders\""]),
        Some(4.0)
    );
    assert_eq!(
        get(
            "aadgate_upstream_duration_seconds_count",
            &["route=\"orders\""]
        ),
        Some(2.0)
    );
    assert_eq!(get("aadgate_token_cache_misses_total", &[]), Some(2.0));
    assert_eq!(get("aadgate_token_cache_hits_total", &[]), Some(1.0));
    assert_eq!(
        get("aadgate_jwks_fetch_total", &["result=\"ok\""]),
        Some(1.0)
    );
    assert_eq!(
        get("aadgate_jwks_fetch_total", &["result=\"error\""]),
        Some(0.0)
    );
    assert_eq!(get("aadgate_jwks_keys", &[]), Some(1.0));
    assert!(get("aadgate_jwks_last_success_timestamp_seconds", &[]).unwrap_or(0.0) > 1.7e9);
    assert_eq!(
        get("aadgate_config_reloads_total", &["result=\"ok\""]),
        Some(0.0)
    );
    assert_eq!(
        get("aadgate_config_reloads_total", &["result=\"error\""]),
        Some(0.0)
    );
    assert!(
        get("aadgate_config_last_reload_success_timestamp_seconds", &[]).unwrap_or(0.0) > 1.7e9
    );
    assert_eq!(
        get(
            "aadgate_build_info",
            &[concat!("version=\"", env!("CARGO_PKG_VERSION"), "\"")]
        ),
        Some(1.0)
    );
    assert!(get("process_resident_memory_bytes", &[]).unwrap_or(0.0) > 0.0);
    for tenant in [TENANT_A, TENANT_B] {
        assert!(!m.contains(tenant), "a tenant id leaked into a label");
    }
    assert_eq!(
        client()
            .get(gw.admin_url("/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
    let ready = client()
        .get(gw.admin_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    assert!(ready
        .text()
        .await
        .unwrap_or_default()
        .contains("signing keys"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_new_allow_list_while_an_in_flight_request_completes() {
    let w = World::start().await;
    let gw = Gateway::start(&config(&[TENANT_A]), &w).await;
    gw.wait_ready().await;
    let ta = token(&w, TENANT_A);
    let tb = token(&w, TENANT_B);
    // A slow request, held at the upstream.
    let url = gw.url("/hold/slow-1");
    let ta2 = ta.clone();
    let slow = tokio::spawn(async move {
        client()
            .get(url)
            .bearer_auth(ta2)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    });
    w.echo.arrived("slow-1").await;

    let new = std::fs::read_to_string(&gw.config_path)
        .expect("read")
        .replace(
            &format!("allow = [\"{TENANT_A}\"]"),
            &format!("allow = [\"{TENANT_B}\"]"),
        );
    std::fs::write(&gw.config_path, new).expect("write");
    gw.signal("HUP");
    wait_metric(&gw, "aadgate_config_reloads_total", &["result=\"ok\""], 1.0).await;

    assert_eq!(
        status(&gw, "/orders/1", Some(&tb)).await,
        200,
        "new tenant admitted"
    );
    assert_eq!(
        status(&gw, "/orders/1", Some(&ta)).await,
        401,
        "old tenant refused"
    );
    w.echo.release("slow-1");
    assert_eq!(
        slow.await.expect("task"),
        200,
        "the in-flight request completed"
    );
    assert!(gw.logs().contains("configuration reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_is_refused_and_the_running_one_keeps_serving() {
    let w = World::start().await;
    let gw = Gateway::start(&config(&[TENANT_A]), &w).await;
    gw.wait_ready().await;
    let good = std::fs::read_to_string(&gw.config_path).expect("read");
    std::fs::write(
        &gw.config_path,
        good.replace("[[routes]]", "[[routes]]\nunknown_key = 1"),
    )
    .expect("write");
    gw.signal("HUP");
    wait_metric(
        &gw,
        "aadgate_config_reloads_total",
        &["result=\"error\""],
        1.0,
    )
    .await;
    assert_eq!(
        status(&gw, "/orders/1", Some(&token(&w, TENANT_A))).await,
        200
    );
    assert_eq!(
        client()
            .get(gw.admin_url("/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );
    let logs = gw.logs();
    assert!(
        logs.contains("configuration reload refused") && logs.contains("aadgate.toml:"),
        "{logs}"
    );
    assert_eq!(
        sample(
            &gw.metrics().await,
            "aadgate_config_reloads_total",
            &["result=\"ok\""]
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_file_reloads_without_a_signal() {
    let w = World::start().await;
    let gw = Gateway::start(&config(&[TENANT_A]), &w).await;
    gw.wait_ready().await;
    let new = std::fs::read_to_string(&gw.config_path)
        .expect("read")
        .replace(
            &format!("\"{TENANT_A}\"]"),
            &format!("\"{TENANT_A}\", \"{TENANT_B}\"]"),
        );
    let tmp = gw.config_path.with_extension("new");
    std::fs::write(&tmp, new).expect("write");
    std::fs::rename(&tmp, &gw.config_path).expect("rename");
    wait_metric(&gw, "aadgate_config_reloads_total", &["result=\"ok\""], 1.0).await;
    assert_eq!(
        status(&gw, "/orders/1", Some(&token(&w, TENANT_B))).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_configmap_symlink_swap_reloads() {
    let w = World::start().await;
    let p = Prepared::new(&config(&[TENANT_A]), &w);
    // The layout kubelet makes: aadgate.toml -> ..data/aadgate.toml, ..data -> ..2026_v1.
    let mount = p.dir.path().join("mount");
    let v1 = mount.join("..2026_v1");
    std::fs::create_dir_all(&v1).expect("mkdir");
    std::fs::write(v1.join("aadgate.toml"), &p.rendered).expect("write");
    std::os::unix::fs::symlink("..2026_v1", mount.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/aadgate.toml", mount.join("aadgate.toml")).expect("symlink");
    let next = p.rendered.replace(
        &format!("allow = [\"{TENANT_A}\"]"),
        &format!("allow = [\"{TENANT_B}\"]"),
    );
    let gw = p.launch(mount.join("aadgate.toml"), &[]).await;
    gw.wait_ready().await;
    assert_eq!(
        status(&gw, "/orders/1", Some(&token(&w, TENANT_B))).await,
        401
    );

    let v2 = mount.join("..2026_v2");
    std::fs::create_dir_all(&v2).expect("mkdir");
    std::fs::write(v2.join("aadgate.toml"), next).expect("write");
    std::os::unix::fs::symlink("..2026_v2", mount.join("..data_tmp")).expect("symlink");
    std::fs::rename(mount.join("..data_tmp"), mount.join("..data")).expect("atomic swap");
    std::fs::remove_dir_all(&v1).expect("cleanup");
    wait_metric(&gw, "aadgate_config_reloads_total", &["result=\"ok\""], 1.0).await;
    assert_eq!(
        status(&gw, "/orders/1", Some(&token(&w, TENANT_B))).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenants_file_is_hot_reloaded() {
    let w = World::start().await;
    let template = config(&[]).replace("allow = []", "allow = []\nfile = \"tenants.toml\"");
    let p = Prepared::new(&template, &w);
    std::fs::write(
        p.dir.path().join("tenants.toml"),
        format!("allow = [\"{TENANT_A}\"]\n"),
    )
    .expect("write");
    let path = p.dir.path().join("aadgate.toml");
    std::fs::write(&path, &p.rendered).expect("write");
    let dir = p.dir.path().to_path_buf();
    let gw = p.launch(path, &[]).await;
    gw.wait_ready().await;
    assert_eq!(
        status(&gw, "/orders/1", Some(&token(&w, TENANT_A))).await,
        200
    );
    assert_eq!(
        status(&gw, "/orders/1", Some(&token(&w, TENANT_B))).await,
        401
    );
    std::fs::write(
        dir.join("tenants.toml"),
        format!("allow = [\"{TENANT_A}\", \"{TENANT_B}\"]\n"),
    )
    .expect("write");
    wait_metric(&gw, "aadgate_config_reloads_total", &["result=\"ok\""], 1.0).await;
    assert_eq!(
        status(&gw, "/orders/1", Some(&token(&w, TENANT_B))).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_in_flight_request_and_exits_zero() {
    let w = World::start().await;
    let mut gw = Gateway::start(&config(&[TENANT_A]), &w).await;
    gw.wait_ready().await;
    let url = gw.url("/hold/drain-1");
    let t = token(&w, TENANT_A);
    let slow = tokio::spawn(async move {
        client()
            .get(url)
            .bearer_auth(t)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    });
    w.echo.arrived("drain-1").await;
    gw.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.logs().contains("SIGTERM") {
        assert!(Instant::now() < deadline, "SIGTERM not noticed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.echo.release("drain-1");
    assert_eq!(slow.await.expect("task"), 200);
    let code = tokio::task::spawn_blocking(move || gw.wait_exit())
        .await
        .expect("join");
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_when_valid_and_json_logs_never_contain_the_token() {
    let w = World::start().await;
    let gw = Gateway::start_with(&config(&[TENANT_A]), &w, &["--log-format", "json"]).await;
    gw.wait_ready().await;
    let t = token(&w, TENANT_A);
    let r = client()
        .get(gw.url("/orders/1"))
        .bearer_auth(&t)
        .header("x-request-id", "req-123.abc")
        .send()
        .await
        .expect("r");
    assert_eq!(r.headers()["x-request-id"], "req-123.abc");
    assert_eq!(
        w.echo.last_request().expect("req").header("x-request-id"),
        Some("req-123.abc")
    );
    let r = client()
        .get(gw.url("/orders/1"))
        .bearer_auth(&t)
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .expect("r");
    let id = r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    let r = client().get(gw.url("/orders/1")).send().await.expect("r");
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    // A malformed token must not leak either.
    let junk = format!("{}.zzz", t);
    let _ = client()
        .get(gw.url("/orders/1"))
        .bearer_auth(&junk)
        .send()
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw.logs().matches("\"request_id\"").count() < 4 {
        assert!(
            Instant::now() < deadline,
            "access log lines missing:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let logs = gw.logs();
    let payload = t.split('.').nth(1).unwrap_or("none");
    assert!(!logs.contains(payload), "token material in logs");
    for line in logs.lines().filter(|l| l.contains("\"request_id\"")) {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
        assert!(
            v["route"].is_string()
                && v["status"].is_number()
                && v["reason"].is_string()
                && v["latency_ms"].is_number()
        );
    }
    assert!(logs.contains(&format!("\"tenant_id\":\"{TENANT_A}\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_upgrade_hands_the_listeners_to_a_new_process() {
    let w = World::start().await;
    let mut old = Gateway::start(&config(&[TENANT_A]), &w).await;
    old.wait_ready().await;
    let t = token(&w, TENANT_A);
    assert_eq!(status(&old, "/orders/1", Some(&t)).await, 200);
    let url = old.url("/orders/1");
    let readyz = old.admin_url("/readyz");

    // The new process waits on upgrade_sock for the listening sockets.
    let mut new = std::process::Command::new(env!("CARGO_BIN_EXE_aadgate"))
        .args(["run", "--upgrade", "-c"])
        .arg(&old.config_path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("new process");
    let sock = old.dir.path().join("upgrade.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "the new process never opened upgrade_sock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    old.signal("QUIT");
    let code = tokio::task::spawn_blocking(move || old.wait_exit())
        .await
        .expect("join");
    assert_eq!(
        code,
        Some(0),
        "the old process exits cleanly after handing over"
    );

    // Same ports, new process: requests keep being served, and the admin port moves over too.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let api = client()
            .get(&url)
            .bearer_auth(&t)
            .send()
            .await
            .map(|r| r.status().as_u16());
        let admin = client()
            .get(&readyz)
            .send()
            .await
            .map(|r| r.status().as_u16());
        if matches!((api, admin), (Ok(200), Ok(200))) {
            break;
        }
        assert!(Instant::now() < deadline, "the new process does not serve");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = new.kill();
    let _ = new.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_the_token_was_verified_names_the_caller_in_the_access_log() {
    let w = World::start().await;
    let gw = Gateway::start_with(&config(&[TENANT_A]), &w, &["--log-format", "json"]).await;
    gw.wait_ready().await;
    let client_id = aadgate_emulator::DEFAULT_CLIENT_ID;
    let no_role = w
        .idp
        .mint(&TokenSpec::app(TENANT_A, AUD, &["Orders.Write"]));
    assert_eq!(status(&gw, "/orders/1", Some(&no_role)).await, 403);
    assert_eq!(status(&gw, "/orders/1", None).await, 401);
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let lines: Vec<serde_json::Value> = gw
            .logs()
            .lines()
            .filter(|l| l.contains("\"request_id\""))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= 2 {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "access log lines missing:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let refused = lines
        .iter()
        .find(|l| l["reason"] == "missing_role")
        .expect("the missing_role line");
    assert_eq!(refused["tenant_id"], TENANT_A, "{refused}");
    assert_eq!(refused["client_id"], client_id, "{refused}");
    let anonymous = lines
        .iter()
        .find(|l| l["reason"] == "missing_token")
        .expect("the missing_token line");
    assert_eq!(
        anonymous["tenant_id"], "-",
        "no token, no caller: {anonymous}"
    );
    for l in &lines {
        // Rounded to the microsecond: at most three decimals.
        let latency = l["latency_ms"].to_string();
        let decimals = latency.split('.').nth(1).map_or(0, str::len);
        assert!(decimals <= 3, "latency_ms {latency} in {l}");
    }
}
