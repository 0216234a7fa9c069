//! `aadgate explain` (one token per hint, text and JSON, offline JWKS, exit codes) and
//! `aadgate demo --once`.

mod common;

use std::path::Path;
use std::process::Command;

use aadgate_emulator::{SigningKey, TokenSpec};
use common::free_port;
use serde_json::{json, Value};

const T: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const OTHER: &str = "11111111-1111-4111-8111-111111111111";
const AT: i64 = 1_800_000_000;

fn setup(issuers: &str) -> (tempfile::TempDir, SigningKey) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::generate().expect("key");
    std::fs::write(
        dir.path().join("jwks.json"),
        json!({"keys": [key.jwk(Some("https://login.microsoftonline.com/{tenantid}/v2.0"))]})
            .to_string(),
    )
    .expect("jwks");
    let config = format!(
        r#"
[server]
listen = ["127.0.0.1:1"]
[identity]
jwks_uri = "http://127.0.0.1:1/keys"
audiences = ["api://orders"]
[tenants]
allow = ["{T}"]
{issuers}
[[routes]]
name = "daemon"
path_prefix = "/jobs/"
upstream = "http://127.0.0.1:2"
token_kind = "app"
roles_any = ["Jobs.Run"]
min_auth_strength = 2
[[routes]]
name = "user"
path_prefix = "/me/"
upstream = "http://127.0.0.1:2"
token_kind = "user"
scopes_any = ["profile.read"]
"#
    );
    std::fs::write(dir.path().join("c.toml"), config).expect("config");
    (dir, key)
}

fn explain(dir: &Path, route: &str, token: &str, json: bool) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aadgate"));
    cmd.arg("explain")
        .arg("-c")
        .arg(dir.join("c.toml"))
        .arg("--route")
        .arg(route)
        .arg("--jwks")
        .arg(dir.join("jwks.json"))
        .arg("--at")
        .arg(AT.to_string());
    if json {
        cmd.arg("--json");
    }
    let out = cmd.arg(token).output().expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn app() -> TokenSpec {
    TokenSpec::app(T, "api://orders", &["Jobs.Run"]).with_now(AT - 60)
}

fn user() -> TokenSpec {
    TokenSpec::user(T, "api://orders", "profile.read")
        .with_now(AT - 60)
        .with_auth_strength("2")
}

#[test]
fn each_hint_names_the_failing_check_the_reason_and_a_fix() {
    let (dir, key) = setup("");
    // Graph hashes the header's nonce after signing, so the signature never verifies here.
    let graph = {
        let t = key.mint(&app());
        let rest = t
            .split_once('.')
            .map(|(_, r)| r.to_string())
            .unwrap_or_default();
        let header = json!({"typ": "JWT", "alg": "RS256", "kid": key.kid(), "nonce": "abc"});
        use base64::Engine;
        format!(
            "{}.{rest}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(header.to_string())
        )
    };
    let table: Vec<(&str, String, &str, &str, &str)> = vec![
        (
            "daemon",
            key.mint(&user()),
            "route policy",
            "wrong_token_kind",
            "client-credentials",
        ),
        (
            "user",
            key.mint(&app()),
            "route policy",
            "wrong_token_kind",
            "user context",
        ),
        (
            "daemon",
            key.mint(
                &TokenSpec::app(T, "api://orders", &[])
                    .with_now(AT - 60)
                    .without_claim("roles")
                    .with_idtyp("app"),
            ),
            "route policy",
            "missing_role",
            "Application permission",
        ),
        (
            "daemon",
            key.mint(&app().with_auth_strength("1")),
            "client application",
            "weak_client_auth",
            "certificate",
        ),
        (
            "daemon",
            key.mint(
                &TokenSpec::app(T, "https://graph.microsoft.com", &["Jobs.Run"]).with_now(AT - 60),
            ),
            "audience",
            "bad_audience",
            ".default",
        ),
        (
            "daemon",
            {
                let mut id_token = app().with_claim("nonce", json!("n"));
                id_token.appid = None;
                key.mint(&id_token)
            },
            "access token",
            "not_access_token",
            "access token",
        ),
        (
            "daemon",
            graph,
            "signature",
            "bad_signature",
            "Microsoft Graph",
        ),
        (
            "daemon",
            key.mint(&TokenSpec::app(OTHER, "api://orders", &["Jobs.Run"]).with_now(AT - 60)),
            "tenant",
            "tenant_not_allowed",
            "allow",
        ),
        (
            "daemon",
            key.mint(&app().with_header("kid", json!("rotated"))),
            "signing key",
            "unknown_kid",
            "rotate",
        ),
        (
            "daemon",
            key.mint(&app().with_now(AT - 7200)),
            "lifetime",
            "expired",
            "clock",
        ),
        (
            "daemon",
            key.mint(&app().with_now(AT + 3600)),
            "lifetime",
            "not_yet_valid",
            "clock",
        ),
    ];
    for (route, token, check, reason, phrase) in table {
        let (code, out) = explain(dir.path(), route, &token, false);
        assert_eq!(code, 1, "{reason}: {out}");
        let fail_line = out
            .lines()
            .find(|l| l.trim_start().starts_with("FAIL"))
            .unwrap_or_default();
        assert!(
            fail_line.contains(check) && fail_line.contains(reason),
            "{reason}: {fail_line}"
        );
        assert!(out.contains("REJECTED (") && out.contains(reason));
        let fix = out
            .lines()
            .find(|l| l.starts_with("fix:"))
            .unwrap_or_default();
        assert!(
            format!("{fail_line} {fix}")
                .to_lowercase()
                .contains(&phrase.to_lowercase()),
            "{reason}: {fail_line} / {fix}"
        );
        assert!(!out.contains(&token), "the report does not print the token");
    }
}

#[test]
fn a_v1_token_against_v2_only_issuers_points_at_access_token_accepted_version() {
    let (dir, key) = setup("issuers = [\"https://login.microsoftonline.com/{tenantid}/v2.0\"]");
    let (code, out) = explain(dir.path(), "daemon", &key.mint(&app().with_ver(1)), false);
    assert_eq!(code, 1, "{out}");
    let fail_line = out
        .lines()
        .find(|l| l.trim_start().starts_with("FAIL"))
        .unwrap_or_default();
    assert!(
        fail_line.contains("issuer") && fail_line.contains("bad_issuer"),
        "{fail_line}"
    );
    assert!(
        fail_line.contains("accessTokenAcceptedVersion"),
        "{fail_line}"
    );
}

#[test]
fn an_accepted_token_exits_zero_and_shows_times() {
    let (dir, key) = setup("");
    let (code, out) = explain(dir.path(), "daemon", &key.mint(&app()), false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verdict: ACCEPTED"));
    assert!(out.contains("exp =") && out.contains("GMT") && out.contains("ago"));
}

#[test]
fn json_output_parses_and_carries_the_verdict() {
    let (dir, key) = setup("");
    let (code, out) = explain(
        dir.path(),
        "daemon",
        &key.mint(&app().with_roles(&["Other"])),
        true,
    );
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(v["verdict"], "rejected");
    assert_eq!(v["reason"], "missing_role");
    assert_eq!(v["status"], 403);
    assert!(v["hint"].as_str().is_some_and(|h| !h.is_empty()));
    assert!(v["checks"]
        .as_array()
        .is_some_and(|c| c.iter().any(|s| s["ok"] == false)));
    assert_eq!(v["claims"]["tid"], T);
}

#[test]
fn usage_and_config_errors_exit_two() {
    let (dir, key) = setup("");
    let (code, _) = explain(dir.path(), "no-such-route", &key.mint(&app()), false);
    assert_eq!(code, 2);
    let out = Command::new(env!("CARGO_BIN_EXE_aadgate"))
        .args(["explain", "-c", "/nonexistent.toml", "x"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn the_token_can_come_from_stdin() {
    use std::io::Write;
    let (dir, key) = setup("");
    let mut child = Command::new(env!("CARGO_BIN_EXE_aadgate"))
        .arg("explain")
        .arg("-c")
        .arg(dir.path().join("c.toml"))
        .arg("--route")
        .arg("daemon")
        .arg("--jwks")
        .arg(dir.path().join("jwks.json"))
        .arg("--at")
        .arg(AT.to_string())
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("Bearer {}\n", key.mint(&app())).as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("output");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn demo_once_runs_every_scenario_as_expected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = std::fs::read_to_string("conf/demo.toml").expect("demo config");
    for fixed in ["18080", "18180", "18399", "18300", "18301", "18302"] {
        text = text.replace(fixed, &free_port().to_string());
    }
    std::fs::write(dir.path().join("demo.toml"), text).expect("write");
    let certs = dir.path().join("demo");
    std::fs::create_dir_all(&certs).expect("mkdir");
    for f in [
        "THROWAWAY-demo-app.crt",
        "THROWAWAY-demo-app.key",
        "THROWAWAY-onboarding-state.key",
    ] {
        std::fs::copy(Path::new("conf/demo").join(f), certs.join(f)).expect("copy");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_aadgate"))
        .args(["demo", "--once", "--demo-config"])
        .arg(dir.path().join("demo.toml"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("all as expected"));
    assert!(stdout.lines().filter(|l| l.ends_with("PASS")).count() >= 15);
    // The gRPC calls over HTTP/2: allowed, and refused with gRPC statuses.
    for line in [
        "gRPC call with an app-only token",
        "gRPC call without a token",
        "gRPC call missing the app role",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(line) && l.ends_with("PASS")),
            "{line}: {stdout}"
        );
    }
    assert!(stdout.contains("UNAUTHENTICATED missing_token"), "{stdout}");
    assert!(
        stdout
            .contains("sign-up of northwind.example (admin consent, Accept): 200 signed up  PASS"),
        "{stdout}"
    );
}

#[test]
fn the_readme_demo_command_is_the_one_ci_runs() {
    let readme = std::fs::read_to_string("README.md").expect("README");
    let ci = std::fs::read_to_string(".ci/run").expect(".ci/run");
    assert!(readme.contains(".ci/dev demo"), "README's first command");
    assert!(readme.contains(".ci/dev test"), "README's test command");
    assert!(
        ci.contains(".ci/dev demo --once"),
        "CI runs the README's demo command"
    );
    assert!(
        ci.contains(".ci/dev test"),
        "CI runs the README's test command"
    );
}
