//! The deployment files agree with what the gateway exports: every metric a Grafana panel
//! queries exists in a real `/metrics` scrape (saved for `promtool check metrics` in CI).

mod common;

use aadgate_emulator::{AppRegistration, MockOutlook, SigningKey, TokenSpec};
use common::*;
use serde_json::Value;

fn metric_names(expr: &str, out: &mut std::collections::BTreeSet<String>) {
    let bytes = expr.as_bytes();
    for prefix in ["aadgate_", "process_"] {
        let mut from = 0;
        while let Some(i) = expr[from..].find(prefix) {
            let start = from + i;
            let boundary = start == 0
                || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
            let end = expr[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit()))
                .map_or(expr.len(), |e| start + e);
            if boundary {
                out.insert(expr[start..end].to_string());
            }
            from = end;
        }
    }
}

fn exprs(v: &Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => metric_names(s, out),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_exists_in_a_real_scrape() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string("deploy/grafana/aadgate-dashboard.json").expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let mut wanted = std::collections::BTreeSet::new();
    exprs(&dashboard, &mut wanted);
    assert!(wanted.len() >= 10, "{wanted:?}");

    let w = World::start().await;
    let outlook = MockOutlook::start("127.0.0.1:0".parse().expect("addr"), w.idp.clone())
        .await
        .expect("outlook");
    let cert = SigningKey::generate().expect("key");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("app.crt"), cert.certificate_pem()).expect("write");
    std::fs::write(dir.path().join("app.key"), cert.private_key_pem()).expect("write");
    let app_id = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c";
    w.idp
        .register_app(AppRegistration::new(app_id).with_certificate(&cert))
        .expect("register");
    w.idp.consent(TENANT_A, app_id, vec!["Mail.Read".into()]);
    let d = dir.path().display();
    let template = base_config("", &format!("allow = [\"{TENANT_A}\"]"))
        + &format!(
            r#"
[validators.no-guests]
kind = "cel"
expr = "!has(claims.acct) || claims.acct == 0"

[[routes]]
name = "orders"
path_prefix = "/orders/"
upstream = "{{echo}}"
validators = ["no-guests"]

[[routes]]
name = "mail"
path_prefix = "/api/v2.0/"
upstream = "{outlook}"
exchange = "outlook"

[exchange.outlook]
client_id = "{app_id}"
token_endpoint = "{{idp}}/{{tenantid}}/oauth2/v2.0/token"
scope = "https://outlook.office365.com/.default"
certificates = [ {{ cert = "{d}/app.crt", key = "{d}/app.key" }} ]

# A generous limit: the rate-limit series exist (the dashboard shows them) without a refusal.
[[rate_limits]]
name = "per-tenant"
key = "tenant"
rate = 1000
period = "1s"
routes = ["orders"]
"#,
            outlook = outlook.base_url()
        );
    let gw = Gateway::start(&template, &w).await;
    gw.wait_ready().await;
    let token = w.idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Orders.Read"]));
    for path in [
        "/orders/1",
        "/orders/1",
        "/api/v2.0/users/x/messages",
        "/api/v2.0/users/x/messages",
    ] {
        let r = client()
            .get(gw.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .expect("response");
        assert_eq!(r.status(), 200, "{path}");
    }
    let guest = w.idp.mint(
        &TokenSpec::app(TENANT_A, AUD, &["Orders.Read"]).with_claim("acct", serde_json::json!(1)),
    );
    assert_eq!(
        client()
            .get(gw.url("/orders/1"))
            .bearer_auth(&guest)
            .send()
            .await
            .expect("r")
            .status(),
        403
    );
    assert_eq!(
        client()
            .get(gw.url("/nowhere"))
            .send()
            .await
            .expect("r")
            .status(),
        404
    );

    let metrics = gw.metrics().await;
    let sample_path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics-sample.prom");
    std::fs::write(&sample_path, &metrics).expect("save the scrape");
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| {
            !metrics
                .lines()
                .any(|l| !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name.as_str()))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard metrics missing from /metrics: {missing:?}"
    );
}

#[test]
fn alert_rules_only_use_exported_metric_names() {
    let rules = std::fs::read_to_string("deploy/prometheus/aadgate-alerts.yaml").expect("rules");
    let mut used = std::collections::BTreeSet::new();
    metric_names(&rules, &mut used);
    let src =
        std::fs::read_to_string("crates/aadgate-core/src/metrics.rs").expect("metrics source");
    for name in used {
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_count")
            .trim_end_matches("_sum");
        let exported = src.contains(&format!("\"{base}\"")) || base.starts_with("process_");
        assert!(
            exported,
            "alert rules use {name}, which aadgate does not export"
        );
    }
}
