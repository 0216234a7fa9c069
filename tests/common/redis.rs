//! A real `redis-server` (Debian's package) for the fleet tests: started on a free loopback port
//! with persistence off, stopped (and restartable on the same port) by the test.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`; killed when dropped.
pub(crate) struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port; `None` (with a notice) when it is not installed
    /// and `CI` is unset — in CI its absence fails the test.
    pub(crate) async fn start() -> Option<RedisServer> {
        if !installed() {
            return None;
        }
        let mut server = RedisServer {
            port: super::free_port(),
            child: None,
        };
        server.restart().await;
        Some(server)
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub(crate) async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.client().get_multiplexed_async_connection().await {
                if redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server (as a crash would) and waits for it to exit.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }

    /// Every key and its value (strings as bytes; hashes as their values joined).
    pub(crate) async fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let mut c = self
            .client()
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query_async(&mut c)
            .await
            .expect("keys");
        let mut out = Vec::new();
        for k in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&k)
                .query_async(&mut c)
                .await
                .expect("type");
            let value: Vec<u8> = match kind.as_str() {
                "string" => redis::cmd("GET")
                    .arg(&k)
                    .query_async(&mut c)
                    .await
                    .expect("get"),
                "hash" => {
                    let vals: Vec<Vec<u8>> = redis::cmd("HVALS")
                        .arg(&k)
                        .query_async(&mut c)
                        .await
                        .expect("hvals");
                    vals.concat()
                }
                _ => Vec::new(),
            };
            out.push((k, value));
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `redis-server` is installed; when it is not, CI fails and elsewhere the test is
/// skipped with a notice.
fn installed() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs redis-server (apt-get install redis-server)"
        );
        eprintln!("skipped: redis-server is not installed");
    }
    found
}

/// Runs `redis-server` with `args`, output discarded.
fn spawn(args: &[String]) -> Child {
    Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

/// One command to `127.0.0.1:port`, polled (bounded) until `ok` accepts the answer.
async fn until_answer<T: redis::FromRedisValue>(
    port: u16,
    cmd: &redis::Cmd,
    what: &str,
    ok: impl Fn(&T) -> bool,
) -> T {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await {
            if let Ok(answer) = cmd.query_async::<T>(&mut c).await {
                if ok(&answer) {
                    return answer;
                }
            }
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = super::free_port();
        if port <= 55535 && std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// A three-node Redis Cluster (three primaries, no replicas), created with `redis-cli --cluster
/// create`; killed when dropped.
pub(crate) struct RedisCluster {
    pub ports: Vec<u16>,
    _dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl RedisCluster {
    /// Starts the nodes, joins them and waits until the cluster state is `ok` on each.
    pub(crate) async fn start() -> Option<RedisCluster> {
        if !installed() {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..3).map(|_| cluster_port()).collect();
        let mut children = Vec::new();
        for port in &ports {
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            children.push(spawn(&[
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--save".into(),
                "".into(),
                "--appendonly".into(),
                "no".into(),
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                conf.display().to_string(),
                "--cluster-node-timeout".into(),
                "2000".into(),
                "--dir".into(),
                dir.path().display().to_string(),
            ]));
        }
        let cluster = RedisCluster {
            ports: ports.clone(),
            _dir: dir,
            children,
        };
        for port in &ports {
            until_answer::<String>(*port, &redis::cmd("PING"), "a cluster node starts", |_| {
                true
            })
            .await;
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let created = tokio::process::Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        for port in &ports {
            until_answer::<String>(
                *port,
                redis::cmd("CLUSTER").arg("INFO"),
                "the cluster state becomes ok",
                |info| info.contains("cluster_state:ok"),
            )
            .await;
        }
        Some(cluster)
    }

    /// `redis+cluster://` with every node as a seed.
    pub(crate) fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// The keys each node holds.
    pub(crate) async fn keys_per_node(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for port in &self.ports {
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("url");
            let mut c = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect");
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("*")
                .query_async(&mut c)
                .await
                .expect("keys");
            out.push(keys);
        }
        out
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A primary, its replica and one Sentinel watching them as `aadgate` (quorum 1, a primary is
/// declared down after 1 s); killed when dropped.
pub(crate) struct RedisSentinel {
    pub primary: u16,
    pub replica: u16,
    pub sentinel: u16,
    _dir: tempfile::TempDir,
    primary_child: Option<Child>,
    others: Vec<Child>,
}

impl RedisSentinel {
    /// Starts the three servers and waits until the Sentinel knows the replica.
    pub(crate) async fn start() -> Option<RedisSentinel> {
        if !installed() {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (primary, replica, sentinel) =
            (super::free_port(), super::free_port(), super::free_port());
        // The replica writes the primary's snapshot to its `--dir`: the test's folder.
        let folder = dir.path().display().to_string();
        let server = |port: u16| -> Vec<String> {
            ["--port", &port.to_string(), "--bind", "127.0.0.1"]
                .into_iter()
                .chain(["--save", "", "--appendonly", "no", "--dir", &folder])
                .map(String::from)
                .collect()
        };
        let primary_child = spawn(&server(primary));
        until_answer::<String>(primary, &redis::cmd("PING"), "the primary starts", |_| true).await;
        let mut replica_args = server(replica);
        replica_args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
        ]);
        let replica_child = spawn(&replica_args);
        until_answer::<String>(
            replica,
            redis::cmd("INFO").arg("replication"),
            "the replica follows the primary",
            |info| info.contains("master_link_status:up"),
        )
        .await;
        // Sentinel rewrites its configuration file: it lives in the test's folder.
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sentinel}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor aadgate 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds aadgate 1000\n\
                 sentinel failover-timeout aadgate 5000\n",
                dir = dir.path().display()
            ),
        )
        .expect("sentinel.conf");
        let sentinel_child = spawn(&[conf.display().to_string(), "--sentinel".into()]);
        until_answer::<Vec<redis::Value>>(
            sentinel,
            redis::cmd("SENTINEL").arg("REPLICAS").arg("aadgate"),
            "the Sentinel finds the replica",
            |replicas| !replicas.is_empty(),
        )
        .await;
        Some(RedisSentinel {
            primary,
            replica,
            sentinel,
            _dir: dir,
            primary_child: Some(primary_child),
            others: vec![replica_child, sentinel_child],
        })
    }

    /// `redis+sentinel://` naming the Sentinel and the service.
    pub(crate) fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/aadgate/0", self.sentinel)
    }

    /// Kills the primary (as a crash would).
    pub(crate) fn kill_primary(&mut self) {
        if let Some(mut c) = self.primary_child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until the Sentinel names the replica as the primary.
    pub(crate) async fn until_failed_over(&self) {
        let replica = self.replica.to_string();
        until_answer::<Vec<String>>(
            self.sentinel,
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg("aadgate"),
            "the Sentinel promotes the replica",
            |addr| addr.get(1) == Some(&replica),
        )
        .await;
        until_answer::<String>(
            self.replica,
            redis::cmd("INFO").arg("replication"),
            "the replica becomes the primary",
            |info| info.contains("role:master"),
        )
        .await;
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        self.kill_primary();
        for c in &mut self.others {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `redis-server` that speaks only TLS (a throwaway self-signed certificate for 127.0.0.1,
/// written to `ca`) and knows one ACL user, with the rules of
/// `deploy/kubernetes/redis/secrets.example.yaml` (the default user off); killed when dropped.
pub(crate) struct RedisTls {
    pub port: u16,
    /// The certificate to trust (`SSL_CERT_FILE` for the gateway).
    pub ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
    child: Child,
}

impl RedisTls {
    /// Starts it and waits until it accepts connections.
    pub(crate) async fn start(user: &str, password: &str) -> Option<RedisTls> {
        if !installed() {
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let (crt, pem) = (dir.path().join("redis.crt"), dir.path().join("redis.key"));
        std::fs::write(&crt, cert.pem()).expect("write");
        std::fs::write(&pem, key.serialize_pem()).expect("write");
        let port = super::free_port();
        let conf = dir.path().join("redis.conf");
        std::fs::write(
            &conf,
            format!(
                "port 0\nbind 127.0.0.1\ntls-port {port}\ntls-cert-file {crt}\n\
                 tls-key-file {pem}\ntls-ca-cert-file {crt}\ntls-auth-clients no\n\
                 save \"\"\nappendonly no\ndir {dir}\nuser default off\n\
                 user {user} on >{password} ~aadgate:* resetchannels +@all -@dangerous\n",
                crt = crt.display(),
                pem = pem.display(),
                dir = dir.path().display(),
            ),
        )
        .expect("redis.conf");
        let child = spawn(&[conf.display().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "redis-server (TLS) did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(RedisTls {
            port,
            ca: crt,
            _dir: dir,
            child,
        })
    }

    /// `rediss://user:password@127.0.0.1:PORT/0`.
    pub(crate) fn url(&self, user: &str, password: &str) -> String {
        format!("rediss://{user}:{password}@127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
