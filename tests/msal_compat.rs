//! Microsoft's own client library against the emulator: MSAL for Python (from PyPI, installed by
//! `.ci/run`) runs the client-credentials grant against `aadgate dev-idp --tls` — the real
//! binary on a port chosen at run time, trusted through the `SSL_CERT_FILE` /
//! `REQUESTS_CA_BUNDLE` line the emulator prints.
//!
//! MSAL insists on an `https://` authority and, for an authority host it does not know, on
//! `instance_discovery=False` (it would otherwise ask login.microsoftonline.com about the host).
//! It signs its certificate assertion with `x5t` base64url *with* `=` padding (a thumbprint
//! given as hex), or with `x5t#S256` and an `x5c` chain (a public certificate given), and
//! sends a client secret as `client_secret`.
//!
//! Without MSAL for Python (`python3 -c "import msal"` fails) the test says so and passes,
//! unless `CI` is set: in CI it must run.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aadgate_emulator::{SigningKey, DEFAULT_TENANT};
use serde_json::Value;

const CLIENT: &str = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c";
/// A tenant where the app has no service principal (nobody consented).
const OTHER_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

/// The client-credentials grant with MSAL for Python; one JSON result per case on stdout.
const SCRIPT: &str = r#"
import base64, json, sys
import msal

cfg = json.loads(sys.argv[1])
key = open(cfg["key"]).read()
cert = open(cfg["cert"]).read()
cases = {
    "thumbprint": (cfg["tenant"], {"private_key": key, "thumbprint": cfg["thumbprint"]}),
    "public_certificate": (cfg["tenant"], {"private_key": key, "public_certificate": cert}),
    "unconsented": (cfg["other_tenant"], {"private_key": key, "thumbprint": cfg["thumbprint"]}),
    "secret": (cfg["tenant"], "not-a-secret-of-this-app"),
}
out = {}
for name, (tenant, credential) in cases.items():
    app = msal.ConfidentialClientApplication(
        cfg["client_id"],
        authority=cfg["base"] + "/" + tenant,
        client_credential=credential,
        instance_discovery=False,
        timeout=30,
    )
    result = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    if "access_token" in result:
        payload = result["access_token"].split(".")[1]
        payload += "=" * (-len(payload) % 4)
        out[name] = {"claims": json.loads(base64.urlsafe_b64decode(payload))}
    else:
        out[name] = {
            "error": result.get("error"),
            "error_codes": result.get("error_codes"),
            "error_description": result.get("error_description"),
        }
print(json.dumps(out))
"#;

/// Kills the emulator when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn msal_available() -> bool {
    Command::new("python3")
        .args(["-c", "import msal"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `aadgate dev-idp --tls` with the app's certificate and consent; returns the process
/// and its base URL, read from the banner.
fn start_dev_idp(dir: &Path, cert: &Path) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aadgate"))
        .args(["dev-idp", "--listen", "127.0.0.1:0", "--tls", "--key"])
        .arg(dir.join("dev-key.pem"))
        .arg("--app")
        .arg(format!("{CLIENT}={}", cert.display()))
        .arg("--consent")
        .arg(format!("{DEFAULT_TENANT}={CLIENT}:Mail.Read"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("aadgate dev-idp starts");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut base = None;
    let mut banner = String::new();
    // The banner ends with "Press Ctrl-C to stop." once the emulator listens.
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("dev-idp banner incomplete:\n{banner}"));
        banner.push_str(&line);
        banner.push('\n');
        if let Some(url) = line.split("listening on ").nth(1) {
            base = Some(url.trim().to_string());
        }
        if line.starts_with("Press Ctrl-C") {
            break;
        }
    }
    let ca = dir.join("dev-ca.pem");
    assert!(
        banner.contains(&format!(
            "export SSL_CERT_FILE={0} REQUESTS_CA_BUNDLE={0}",
            ca.display()
        )),
        "{banner}"
    );
    let base = base.unwrap_or_else(|| panic!("no URL in the banner:\n{banner}"));
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    (running, base)
}

#[test]
fn msal_for_python_gets_tokens_and_entra_ids_errors_from_dev_idp_over_tls() {
    if !msal_available() {
        if std::env::var_os("CI").is_some() {
            panic!("MSAL for Python is not installed (python3 -m pip install msal), and CI is set");
        }
        eprintln!(
            "SKIPPED msal_compat: `python3 -c \"import msal\"` fails; install it with \
             `python3 -m pip install msal` to run this test"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let app = SigningKey::generate().expect("app key");
    let (key_path, cert_path) = (dir.path().join("app.key"), dir.path().join("app.crt"));
    std::fs::write(&key_path, app.private_key_pem()).expect("key file");
    std::fs::write(&cert_path, app.certificate_pem()).expect("cert file");
    let (_idp, base) = start_dev_idp(dir.path(), &cert_path);

    let ca = dir.path().join("dev-ca.pem");
    let config = serde_json::json!({
        "base": base,
        "tenant": DEFAULT_TENANT,
        "other_tenant": OTHER_TENANT,
        "client_id": CLIENT,
        "key": key_path,
        "cert": cert_path,
        "thumbprint": app.thumbprint_hex(),
    });
    let output = Command::new("python3")
        .args(["-c", SCRIPT, &config.to_string()])
        .env("SSL_CERT_FILE", &ca)
        .env("REQUESTS_CA_BUNDLE", &ca)
        .output()
        .expect("python3 runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "MSAL script failed:\n{stderr}");
    let results: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("MSAL script output is not JSON ({e}):\n{stderr}"));

    for case in ["thumbprint", "public_certificate"] {
        let claims = &results[case]["claims"];
        assert_eq!(
            claims["roles"],
            serde_json::json!(["Mail.Read"]),
            "{case}: {results}"
        );
        assert_eq!(claims["tid"], DEFAULT_TENANT, "{case}");
        assert_eq!(claims["appid"], CLIENT, "{case}");
        assert_eq!(claims["aud"], "https://graph.microsoft.com", "{case}");
    }
    // No service principal in that tenant: what Entra ID answers the client-credentials grant.
    let unconsented = &results["unconsented"];
    assert_eq!(unconsented["error"], "unauthorized_client", "{results}");
    assert_eq!(unconsented["error_codes"], serde_json::json!([700_016]));
    assert!(unconsented["error_description"]
        .as_str()
        .is_some_and(|d| d.starts_with("AADSTS700016:")));
    // The app has no secret: the secret is invalid.
    let secret = &results["secret"];
    assert_eq!(secret["error"], "invalid_client", "{results}");
    assert_eq!(secret["error_codes"], serde_json::json!([7_000_215]));
}
