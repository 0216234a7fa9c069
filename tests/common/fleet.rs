//! A fleet: several real gateway processes sharing one Redis deployment, with the emulator.

use std::time::{Duration, Instant};

use aadgate_emulator::{AppRegistration, SigningKey, TokenSpec};

use super::redis::RedisServer;
use super::*;

pub(crate) const APP: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
/// A throwaway test key for the store's encryption (32 bytes).
pub(crate) const STORE_KEY: &[u8; 32] = b"test-only-store-key-32-bytes-000";
pub(crate) const STATE_KEY: &str = "test-only-onboarding-state-key-0123456789";

/// A `[[rate_limits]]` entry named `name`, keyed by tenant, on the route `api`: `burst`
/// requests at once, then one an hour (so a test sees the burst, never a refill).
pub(crate) fn tenant_limit(name: &str, burst: u64) -> String {
    format!(
        "\n[[rate_limits]]\nname = \"{name}\"\nkey = \"tenant\"\nrate = 1\nperiod = \"1h\"\nburst = {burst}\nroutes = [\"api\"]\n"
    )
}

/// Gateways sharing one Redis deployment `S` (a server, a Sentinel set, a cluster).
pub(crate) struct Fleet<S = RedisServer> {
    pub w: World,
    pub redis: S,
    pub gws: Vec<Gateway>,
    /// Environment of the gateways and of `aadgate tenants` (e.g. `SSL_CERT_FILE`).
    pub env: Vec<(String, String)>,
}

pub(crate) fn roles() -> Vec<String> {
    vec!["User.Read.All".to_string()]
}

/// `n` gateways on one Redis server, in registry mode, with an exchange route and sign-up
/// pages; `None` when redis-server is not installed (outside CI).
pub(crate) async fn fleet(n: usize) -> Option<Fleet> {
    fleet_with(n, "").await
}

/// As [`fleet`], with `extra` appended to every gateway's configuration.
pub(crate) async fn fleet_with(n: usize, extra: &str) -> Option<Fleet> {
    let redis = RedisServer::start().await?;
    let url = redis.url();
    Some(fleet_on(redis, &url, n, extra).await)
}

/// `n` gateways on `redis`, reached at `url`, each with `extra` appended to its configuration.
pub(crate) async fn fleet_on<S>(redis: S, url: &str, n: usize, extra: &str) -> Fleet<S> {
    fleet_on_with_env(redis, url, n, extra, &[]).await
}

/// As [`fleet_on`], the gateways and `aadgate tenants` running with `env` set.
pub(crate) async fn fleet_on_with_env<S>(
    redis: S,
    url: &str,
    n: usize,
    extra: &str,
    env: &[(&str, &str)],
) -> Fleet<S> {
    let w = World::start().await;
    let cert = SigningKey::generate().expect("key");
    let mut app = AppRegistration::new(APP)
        .with_certificate(&cert)
        .with_app_roles(roles());
    let mut prepared = Vec::new();
    for _ in 0..n {
        let template = base_config("", "mode = \"registry\"\n")
            + &format!(
                r#"
[store]
kind = "redis"
url = "{url}"
encryption_key_file = "{{dir}}/store.key"
timeout = "200ms"
"#,
            )
            + &signup_sections(APP, "verify_exchange = \"graph\"")
            + extra;
        let p = Prepared::new(&template, &w);
        let dir = p.dir.path();
        std::fs::write(dir.join("app.crt"), cert.certificate_pem()).expect("cert");
        std::fs::write(dir.join("app.key"), cert.private_key_pem()).expect("key");
        std::fs::write(dir.join("store.key"), STORE_KEY).expect("store key");
        std::fs::write(dir.join("state.key"), STATE_KEY).expect("state key");
        app = app.with_redirect_uri(&format!(
            "http://127.0.0.1:{}/.aadgate/onboarding/callback",
            p.port
        ));
        prepared.push(p);
    }
    w.idp.register_app(app).expect("register");
    let mut gws = Vec::new();
    for p in prepared {
        let path = p.dir.path().join("aadgate.toml");
        std::fs::write(&path, &p.rendered).expect("config");
        let vars: Vec<(&str, Option<&str>)> = env.iter().map(|(k, v)| (*k, Some(*v))).collect();
        let gw = p.launch_with_env(path, &[], &vars).await;
        gw.wait_ready().await;
        gws.push(gw);
    }
    let env = (env.iter())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let fleet = Fleet { w, redis, gws, env };
    for gw in &fleet.gws {
        fleet.until_metric(gw, "aadgate_store_up", 1.0).await;
    }
    fleet
}

impl<S> Fleet<S> {
    /// Consents the application in `tid`, adds `tid` with `aadgate tenants add` through the
    /// first replica and waits until every replica lists it.
    pub(crate) async fn onboard(&self, tid: &str) {
        self.w.idp.consent(tid, APP, roles());
        let (code, out) = self.cli(&self.gws[0], &["add", tid]).await;
        assert_eq!(code, 0, "{out}");
        self.until_listed(tid).await;
    }

    /// Forgets the emulator's counts, then sends `per_replica` requests for `tid` to the
    /// exchange route of every replica at once (each misses its own token cache); every answer
    /// must be 200. Returns the answers.
    pub(crate) async fn miss_everywhere(
        &self,
        tid: &str,
        per_replica: usize,
    ) -> Vec<(u16, String)> {
        self.w.idp.reset_counts();
        let calls: Vec<_> = (self.gws.iter())
            .flat_map(|gw| (0..per_replica).map(move |_| gw))
            .map(|gw| self.get(gw, tid, "/v1.0/users/x"))
            .collect();
        let answers = futures_util::future::join_all(calls).await;
        for (status, body) in &answers {
            assert_eq!(*status, 200, "{body}");
        }
        answers
    }

    /// Polls each gateway's admin `/tenants` (no quota spent) until it lists `tid`.
    pub(crate) async fn until_listed(&self, tid: &str) {
        for gw in &self.gws {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let t: serde_json::Value = reqwest::get(gw.admin_url("/tenants"))
                    .await
                    .expect("tenants")
                    .json()
                    .await
                    .expect("json");
                if t["tenants"].to_string().contains(tid) {
                    break;
                }
                assert!(Instant::now() < deadline, "registry change not seen: {t}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    pub(crate) async fn get(&self, gw: &Gateway, tid: &str, path: &str) -> (u16, String) {
        let token = self.w.idp.mint(&TokenSpec::app(tid, AUD, &["Orders.Read"]));
        match client().get(gw.url(path)).bearer_auth(token).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    /// Polls (bounded) until `tid` gets `want` on `gw` (the SPEC's 2 s, with slack for a
    /// loaded machine).
    pub(crate) async fn until(&self, gw: &Gateway, tid: &str, want: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, body) = self.get(gw, tid, "/orders").await;
            if status == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{tid}: {status} not {want}: {body}\n{}",
                gw.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn until_metric(&self, gw: &Gateway, name: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if sample(&gw.metrics().await, name, &[]) == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never {want}:\n{}",
                gw.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn cli(&self, gw: &Gateway, args: &[&str]) -> (i32, String) {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_aadgate"))
            .arg("tenants")
            .args(args)
            .arg("-c")
            .arg(&gw.config_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .await
            .expect("cli");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }

    pub(crate) fn token_requests(&self, tid: &str) -> usize {
        (self.w.idp.token_requests().iter())
            .filter(|r| r.tenant.eq_ignore_ascii_case(tid))
            .count()
    }
}

/// The query of Entra ID's redirect after an administrator of `tid` accepted, for a sign-up
/// started at `gw` (its `state` signed by `gw`).
pub(crate) async fn consent_callback(gw: &Gateway, tid: &str) -> String {
    let start = client()
        .get(gw.url("/.aadgate/onboarding/start"))
        .send()
        .await
        .expect("start");
    let location = start.headers()["location"]
        .to_str()
        .expect("ascii")
        .to_string();
    let state = reqwest::Url::parse(&location)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state");
    format!(
        "admin_consent=True&tenant={tid}&state={}",
        state.replace('.', "%2E")
    )
}

/// One request on each route of each replica, at once.
pub(crate) async fn round<S>(f: &Fleet<S>) -> Vec<(u16, String)> {
    let calls: Vec<_> = f
        .gws
        .iter()
        .flat_map(|gw| {
            [
                f.get(gw, TENANT_B, "/orders"),
                f.get(gw, TENANT_B, "/v1.0/users/x"),
            ]
        })
        .collect();
    futures_util::future::join_all(calls).await
}
