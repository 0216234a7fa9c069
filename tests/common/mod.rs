//! Shared harness for end-to-end tests: the real `aadgate` binary on loopback ports chosen at
//! run time, the in-crate AAD emulator and an echo upstream.
#![allow(dead_code)]

pub(crate) mod browser;
pub(crate) mod fleet;
pub(crate) mod redis;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aadgate_emulator::{EchoHandle, EchoServer, Emulator, EmulatorHandle, EmulatorOptions};

pub(crate) const TENANT_A: &str = "11111111-1111-4111-8111-111111111111";
pub(crate) const TENANT_B: &str = "22222222-2222-4222-8222-222222222222";
pub(crate) const TENANT_C: &str = "33333333-3333-4333-8333-333333333333";
pub(crate) const AUD: &str = "api://orders";
pub(crate) const AUD_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
pub(crate) const CLIENT: &str = "0f8a6a48-2c1b-4c57-9d4a-8f0c2b8c1d11";

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The emulator and an echo upstream, in this test's runtime.
pub(crate) struct World {
    pub idp: EmulatorHandle,
    pub echo: EchoHandle,
}

impl World {
    pub(crate) async fn start() -> World {
        let idp = Emulator::start(
            "127.0.0.1:0".parse().expect("addr"),
            EmulatorOptions::default(),
        )
        .await
        .expect("emulator starts");
        let echo = EchoServer::start("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("echo starts");
        World { idp, echo }
    }
}

/// A running gateway process.
pub(crate) struct Gateway {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub log: Arc<Mutex<String>>,
    /// Counts the lines read so far: [`Gateway::wait_for_log`] waits on it.
    log_lines: tokio::sync::watch::Receiver<usize>,
    log_reader: Option<std::thread::JoinHandle<()>>,
}

/// Replaces `{port}`, `{admin}`, `{idp}`, `{echo}`, `{dir}` in a config template.
pub(crate) fn render(
    template: &str,
    port: u16,
    admin: u16,
    world: &World,
    dir: &std::path::Path,
) -> String {
    template
        .replace("{port}", &port.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{idp}", &world.idp.base_url())
        .replace("{echo}", &world.echo.base_url())
        .replace("{dir}", &dir.display().to_string())
}

/// A minimal valid config; tests append routes and sections.
pub(crate) fn base_config(extra_identity: &str, tenants: &str) -> String {
    format!(
        r#"
[server]
listen = ["127.0.0.1:{{port}}"]
admin_listen = "127.0.0.1:{{admin}}"
workers = 2
shutdown_grace = "1s"
upgrade_sock = "{{dir}}/upgrade.sock"

[identity]
metadata_url = "{{idp}}/common/v2.0/.well-known/openid-configuration"
audiences = ["{AUD}", "{AUD_ID}"]
{extra_identity}

[tenants]
{tenants}
"#
    )
}

/// The sign-up tests' routes (a catch-all API route to the echo upstream and an exchange route
/// `/v1.0/` with `[exchange.graph]` for `app`), and `[onboarding]` for `app` with `verify_line`
/// (`verify_exchange = "graph"`, or a `scope` for pending sign-ups). The certificate, its key
/// and the state key are `{dir}/app.crt`, `{dir}/app.key` and `{dir}/state.key`.
pub(crate) fn signup_sections(app: &str, verify_line: &str) -> String {
    format!(
        r#"
[[routes]]
name = "api"
path_prefix = "/"
upstream = "{{echo}}"

[[routes]]
name = "graph"
path_prefix = "/v1.0/"
upstream = "{{echo}}"
exchange = "graph"

[exchange.graph]
client_id = "{app}"
token_endpoint = "{{idp}}/{{tenantid}}/oauth2/v2.0/token"
scope = "https://graph.microsoft.com/.default"
certificates = [ {{ cert = "{{dir}}/app.crt", key = "{{dir}}/app.key" }} ]

[onboarding]
client_id = "{app}"
redirect_uri = "http://127.0.0.1:{{port}}/.aadgate/onboarding/callback"
authority = "{{idp}}"
state_key_file = "{{dir}}/state.key"
{verify_line}
"#
    )
}

impl Gateway {
    /// Writes the config (a template, see [`render`]) and starts `aadgate run` on it; returns
    /// once the data-plane port accepts connections.
    pub(crate) async fn start(template: &str, world: &World) -> Gateway {
        Self::start_with(template, world, &[]).await
    }

    pub(crate) async fn start_with(template: &str, world: &World, args: &[&str]) -> Gateway {
        let p = Prepared::new(template, world);
        let path = p.dir.path().join("aadgate.toml");
        std::fs::write(&path, &p.rendered).expect("write config");
        p.launch(path, args).await
    }
}

/// A rendered config with its ports and folder, before the process starts (for tests that lay
/// the config out themselves, e.g. as a Kubernetes ConfigMap mount).
pub(crate) struct Prepared {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub admin: u16,
    pub rendered: String,
}

impl Prepared {
    pub(crate) fn new(template: &str, world: &World) -> Prepared {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let admin = free_port();
        let rendered = render(template, port, admin, world, dir.path());
        Prepared {
            dir,
            port,
            admin,
            rendered,
        }
    }

    /// Starts `aadgate [args] run -c config_path`.
    pub(crate) async fn launch(self, config_path: PathBuf, args: &[&str]) -> Gateway {
        self.launch_with_env(config_path, args, &[]).await
    }

    /// As [`Prepared::launch`], with environment changes applied after the default
    /// `RUST_LOG`: `(name, Some(value))` sets, `(name, None)` removes.
    pub(crate) async fn launch_with_env(
        self,
        config_path: PathBuf,
        args: &[&str],
        env: &[(&str, Option<&str>)],
    ) -> Gateway {
        let Prepared {
            dir, port, admin, ..
        } = self;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aadgate"));
        cmd.args(args)
            .arg("run")
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info,pingora_core=warn,pingora_proxy=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        let mut child = cmd.spawn().expect("gateway starts");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let log2 = log.clone();
        let (lines_tx, log_lines) = tokio::sync::watch::channel(0usize);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = log2.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
                lines_tx.send_modify(|n| *n += 1);
            }
        });
        let gw = Gateway {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            admin: SocketAddr::from(([127, 0, 0, 1], admin)),
            dir,
            config_path,
            log,
            log_lines,
            log_reader: Some(reader),
        };
        gw.wait_for_port().await;
        gw
    }
}

impl Gateway {
    async fn wait_for_port(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!("gateway did not start:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until `/readyz` answers 200.
    pub(crate) async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(self.admin_url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("gateway not ready:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Waits until the log contains `needle` (access lines are written in batches, off the
    /// request path); panics with the log after 10 s. Returns the log.
    pub(crate) async fn wait_for_log(&self, needle: &str) -> String {
        let mut lines = self.log_lines.clone();
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let logs = self.logs();
                if logs.contains(needle) {
                    return logs;
                }
                if lines.changed().await.is_err() {
                    return self.logs();
                }
            }
        })
        .await;
        match found {
            Ok(logs) if logs.contains(needle) => logs,
            _ => panic!("the log never said {needle:?}:\n{}", self.logs()),
        }
    }

    pub(crate) fn logs(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Sends a signal by name (TERM, HUP, INT, QUIT).
    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Waits for the process to exit and returns its status code.
    pub(crate) fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let status = child.wait().ok()?;
        if let Some(r) = self.log_reader.take() {
            let _ = r.join();
        }
        status.code()
    }

    /// The metrics text.
    pub(crate) async fn metrics(&self) -> String {
        reqwest::get(self.admin_url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A client that never pools connections across tests and follows no redirects.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Reads one counter/gauge sample from Prometheus text: the value of the first line that starts
/// with `name` and contains every `label` fragment.
pub(crate) fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .find(|l| labels.iter().all(|f| l.contains(f)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sends a raw HTTP/1.1 request (no client-side path normalisation) and returns the status code
/// and the `x-aadgate-reason` header.
pub(crate) async fn raw_get(addr: SocketAddr, target: &str) -> (u16, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let reason = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("x-aadgate-reason:"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    (status, reason)
}

/// Sends raw bytes as one HTTP/1.1 request (no client-side normalisation of the target or the
/// header names) and returns the status code, the `x-aadgate-reason` header and the whole
/// response as text.
pub(crate) async fn raw_request(addr: SocketAddr, request: &str) -> (u16, Option<String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let reason = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("x-aadgate-reason:"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string());
    (status, reason, text)
}

/// An upstream that records the head of every request exactly as it arrived on the wire
/// (request line and headers, names in the case sent) and answers `200 ok`, closing the
/// connection.
pub(crate) struct WireUpstream {
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl WireUpstream {
    pub(crate) async fn start() -> WireUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 1 << 20 {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&buf);
                    let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
                    if let Ok(mut h) = recorded.lock() {
                        h.push(head);
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
        WireUpstream { addr, heads }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request head received so far.
    pub(crate) fn heads(&self) -> Vec<String> {
        self.heads.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The request line of the last request received.
    pub(crate) fn last_request_line(&self) -> Option<String> {
        self.heads()
            .last()
            .and_then(|h| h.lines().next().map(String::from))
    }
}

/// `GET path` with `token` as the bearer: the status and `x-aadgate-reason`.
pub(crate) async fn get_status_and_reason(
    gw: &Gateway,
    path: &str,
    token: &str,
) -> (u16, Option<String>) {
    let r = client()
        .get(gw.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("response");
    let reason = r
        .headers()
        .get("x-aadgate-reason")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    (r.status().as_u16(), reason)
}

/// `token` with its claims changed by `f` and the signature kept (so it no longer verifies).
pub(crate) fn tamper_claims(token: &str, f: impl FnOnce(&mut serde_json::Value)) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("json");
    f(&mut claims);
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    )
}

/// `token` with its JOSE header replaced by `header`.
pub(crate) fn with_header(token: &str, header: serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let parts: Vec<&str> = token.split('.').collect();
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        parts[1],
        parts[2]
    )
}
