//! `aadgate demo`: the AAD emulator, an echo upstream, a mock Microsoft Graph and the gateway in one
//! process, with `conf/demo.toml`; prints ready-to-run `curl` commands, or with `--once` runs
//! every scenario and prints a table.

mod grpc;

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

use crate::cli::DemoArgs;
use crate::server::ServerError;
use aadgate_core::config::{self, Config, UpstreamProtocol};
use aadgate_emulator::{
    AppRegistration, EchoServer, Emulator, EmulatorError, EmulatorHandle, EmulatorOptions,
    GrpcEchoServer, MockGraph, TokenSpec, DEFAULT_TENANT,
};

/// The demo's second tenant: allowed by the gateway, but it never consented to the gateway's
/// application, so exchange routes refuse its callers.
pub(crate) const FABRIKAM: &str = "f1e2d3c4-b5a6-4978-8a9b-0c1d2e3f4a5b";
/// A tenant the gateway does not allow.
pub(crate) const WOODGROVE: &str = "a9b8c7d6-e5f4-4a3b-9c2d-1e0f9a8b7c6d";
/// The organization that signs up during the demo (admin consent), and its domain name.
pub(crate) const NORTHWIND: &str = "5c4b3a29-1807-4f6e-8d5c-4b3a29180706";
const NORTHWIND_NAME: &str = "northwind.example";

/// Why `aadgate demo` could not start, or `--once` could not run its scenarios.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DemoError {
    /// The demo configuration has errors (usually: not run from the repository root).
    #[error("{0}\n(run the demo from the repository root, or pass --demo-config)")]
    Config(config::ConfigErrors),
    /// The demo configuration has no `listen` address.
    #[error("the demo config has no listen address")]
    NoListen,
    /// The demo configuration has no `admin_listen` (the demo waits on `/readyz`).
    #[error("the demo config needs admin_listen")]
    NoAdminListen,
    /// The demo configuration has no `metadata_url` (the emulator's address).
    #[error("the demo config needs metadata_url pointing at the emulator")]
    NoMetadataUrl,
    /// `metadata_url` is not a URL.
    #[error("metadata_url {url:?} is not a URL: {error}")]
    BadMetadataUrl {
        url: String,
        error: <reqwest::Url as std::str::FromStr>::Err,
    },
    /// `metadata_url` names no address the emulator could listen on.
    #[error("metadata_url has no usable address")]
    NoEmulatorAddress,
    /// No plain route has an upstream address for the echo server.
    #[error("the demo config needs a route to the echo upstream")]
    NoEchoRoute,
    /// No exchange route has an upstream address for the mock Graph.
    #[error("the demo config needs an exchange route to the mock Microsoft Graph")]
    NoGraphRoute,
    /// The tokio runtime for the emulator and the upstreams cannot be built.
    #[error("cannot start the demo runtime: {0}")]
    Runtime(std::io::Error),
    /// One of the demo's own servers cannot start (usually: its port is taken).
    #[error("cannot start the {what} on {addr}: {error} (is another `aadgate demo` running?)")]
    Start {
        what: &'static str,
        addr: SocketAddr,
        error: EmulatorError,
    },
    /// The gateway's application cannot be registered with the emulator.
    #[error("{0}")]
    RegisterApp(EmulatorError),
    /// `--once`: the gateway did not answer `/readyz` in time.
    #[error("the gateway did not become ready within 30 s")]
    NotReady,
    /// The gateway itself failed to start.
    #[error("{0}")]
    Server(ServerError),
}

/// Where the demo's own servers listen, read from the demo configuration: the emulator at
/// `metadata_url`'s host and port, the echo upstream at the first plain HTTP/1.1 route's
/// upstream, the mock Microsoft Graph at the first exchange route's upstream, and the gRPC echo at
/// the first `h2c://` route's upstream (none without one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addresses {
    pub emulator: SocketAddr,
    pub echo: SocketAddr,
    pub graph: SocketAddr,
    pub grpc: Option<SocketAddr>,
}

impl Addresses {
    /// Reads the addresses from `config`.
    pub(crate) fn from_config(config: &Config) -> Result<Addresses, DemoError> {
        let url = config
            .identity
            .metadata_url
            .as_deref()
            .ok_or(DemoError::NoMetadataUrl)?;
        let url = reqwest::Url::parse(url).map_err(|error| DemoError::BadMetadataUrl {
            url: url.to_string(),
            error,
        })?;
        let emulator = url
            .socket_addrs(|| None)
            .ok()
            .and_then(|a| a.first().copied())
            .ok_or(DemoError::NoEmulatorAddress)?;
        let upstream = |exchange: bool| {
            config
                .routes
                .iter()
                .find(|r| {
                    r.exchange.is_some() == exchange
                        && r.upstream.protocol == UpstreamProtocol::Http1
                        && r.upstream.addr.is_some()
                })
                .and_then(|r| r.upstream.addr)
        };
        let grpc = config
            .routes
            .iter()
            .find(|r| r.upstream.protocol == UpstreamProtocol::H2c)
            .and_then(|r| r.upstream.addr);
        Ok(Addresses {
            emulator,
            echo: upstream(false).ok_or(DemoError::NoEchoRoute)?,
            graph: upstream(true).ok_or(DemoError::NoGraphRoute)?,
            grpc,
        })
    }
}

/// One demo request and the outcome it should get.
#[derive(Debug, Clone)]
pub(crate) struct Scenario {
    pub name: &'static str,
    pub path: &'static str,
    pub token: Option<String>,
    pub status: u16,
    /// `None` for a proxied answer.
    pub reason: Option<&'static str>,
}

fn tamper(token: &str) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: serde_json::Value = URL_SAFE_NO_PAD
        .decode(parts.get(1).copied().unwrap_or_default())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    claims["roles"] = json!(["Orders.Read", "Orders.Admin"]);
    format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts.get(2).copied().unwrap_or_default()
    )
}

/// One row of the scenario table: name, path, token, expected status and reason.
type Row = (
    &'static str,
    &'static str,
    Option<String>,
    u16,
    Option<&'static str>,
);

/// The scenario table, with tokens freshly minted by the emulator: first the token checks,
/// then the route checks (token kind, client strength, validator, exchange, anonymous).
pub(crate) fn scenarios(idp: &EmulatorHandle, aud: &str) -> Vec<Scenario> {
    token_rows(idp, aud)
        .into_iter()
        .chain(route_rows(idp, aud))
        .map(|(name, path, token, status, reason)| Scenario {
            name,
            path,
            token,
            status,
            reason,
        })
        .collect()
}

/// The caller's tokens the demo mints: a daemon of the default tenant with `Orders.Read`, and
/// a user (ada@contoso.com) with `profile.read Mail.Read`.
fn daemon_and_user(idp: &EmulatorHandle, aud: &str) -> (String, String) {
    let daemon = idp.mint(&TokenSpec::app(DEFAULT_TENANT, aud, &["Orders.Read"]));
    let user = idp.mint(
        &TokenSpec::user(DEFAULT_TENANT, aud, "profile.read Mail.Read").with_upn("ada@contoso.com"),
    );
    (daemon, user)
}

fn token_rows(idp: &EmulatorHandle, aud: &str) -> Vec<Row> {
    let app = |tid: &str, roles: &[&str]| Some(idp.mint(&TokenSpec::app(tid, aud, roles)));
    let (daemon, user) = daemon_and_user(idp, aud);
    let other_api = idp.mint(&TokenSpec::app(
        DEFAULT_TENANT,
        "api://someone-else",
        &["Orders.Read"],
    ));
    let expired =
        idp.mint(&TokenSpec::app(DEFAULT_TENANT, aud, &["Orders.Read"]).with_lifetime(-7200));
    let orders = "/api/orders/42";
    vec![
        (
            "valid app-only token",
            orders,
            Some(daemon.clone()),
            200,
            None,
        ),
        ("valid user token", "/api/profile/me", Some(user), 200, None),
        ("no token", orders, None, 401, Some("missing_token")),
        (
            "tenant not on the allow-list",
            orders,
            app(WOODGROVE, &["Orders.Read"]),
            401,
            Some("tenant_not_allowed"),
        ),
        (
            "missing app role",
            orders,
            app(DEFAULT_TENANT, &["Orders.Write"]),
            403,
            Some("missing_role"),
        ),
        (
            "token for another API",
            orders,
            Some(other_api),
            401,
            Some("bad_audience"),
        ),
        ("expired token", orders, Some(expired), 401, Some("expired")),
        (
            "forged claims",
            orders,
            Some(tamper(&daemon)),
            401,
            Some("bad_signature"),
        ),
    ]
}

fn route_rows(idp: &EmulatorHandle, aud: &str) -> Vec<Row> {
    let (daemon, user) = daemon_and_user(idp, aud);
    let secret_client = TokenSpec::app(DEFAULT_TENANT, aud, &["Jobs.Run"]).with_auth_strength("1");
    let guest = TokenSpec::app(DEFAULT_TENANT, aud, &["Orders.Read"]).with_claim("acct", json!(1));
    let unconsented = idp.mint(&TokenSpec::app(FABRIKAM, aud, &["Orders.Read"]));
    vec![
        (
            "app-only token on a user route",
            "/api/profile/me",
            Some(daemon.clone()),
            403,
            Some("wrong_token_kind"),
        ),
        (
            "client secret instead of certificate",
            "/api/jobs/run",
            Some(idp.mint(&secret_client)),
            403,
            Some("weak_client_auth"),
        ),
        (
            "guest account (CEL validator)",
            "/api/orders/42",
            Some(idp.mint(&guest)),
            403,
            Some("hook_denied"),
        ),
        (
            "app-only mail call through the exchange",
            "/v1.0/users/ada@contoso.com/messages",
            Some(daemon),
            200,
            None,
        ),
        (
            "user /me mail call through the exchange",
            "/v1.0/me/messages",
            Some(user),
            200,
            None,
        ),
        (
            "mail call from an unconsented tenant",
            "/v1.0/users/bob@fabrikam.com/messages",
            Some(unconsented),
            403,
            Some("tenant_not_consented"),
        ),
        ("public health check", "/health", None, 200, None),
        before_signup_row(idp, aud),
    ]
}

/// Northwind before its sign-up: refused like any tenant that is not onboarded.
fn before_signup_row(idp: &EmulatorHandle, aud: &str) -> Row {
    (
        "organization that has not signed up",
        "/api/orders/42",
        Some(idp.mint(&TokenSpec::app(NORTHWIND, aud, &["Orders.Read"]))),
        401,
        Some("tenant_not_allowed"),
    )
}

/// Northwind after its sign-up: accepted, and the exchange gets tokens in it.
fn after_signup_scenarios(idp: &EmulatorHandle, aud: &str) -> Vec<Scenario> {
    let daemon = idp.mint(&TokenSpec::app(NORTHWIND, aud, &["Orders.Read"]));
    vec![
        Scenario {
            name: "signed-up organization",
            path: "/api/orders/42",
            token: Some(daemon.clone()),
            status: 200,
            reason: None,
        },
        Scenario {
            name: "signed-up organization's mail call (exchange)",
            path: "/v1.0/users/ada@northwind.example/messages",
            token: Some(daemon),
            status: 200,
            reason: None,
        },
    ]
}

/// The sign-up as a browser would make it, without one: the gateway's start link, the
/// emulator's consent page, Accept for `tenant`, the gateway's callback page. Returns the
/// callback page's status line, or what went wrong.
pub(crate) async fn sign_up(base: &str, start_path: &str, tenant: &str) -> Result<String, String> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let location = |r: &reqwest::Response| {
        r.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| format!("{} answered {} without a redirect", r.url(), r.status()))
    };
    let err = |e: reqwest::Error| e.to_string();
    let start = client
        .get(format!("{base}{start_path}"))
        .send()
        .await
        .map_err(err)?;
    let consent_url = location(&start)?;
    let page = client.get(&consent_url).send().await.map_err(err)?;
    if page.status() != 200 {
        return Err(format!("the consent page answered {}", page.status()));
    }
    let url = reqwest::Url::parse(&consent_url).map_err(|e| e.to_string())?;
    let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    form.push(("tenant".into(), tenant.into()));
    form.push(("decision".into(), "accept".into()));
    let mut action = url.clone();
    action.set_query(None);
    let accepted = client.post(action).form(&form).send().await.map_err(err)?;
    let callback = location(&accepted)?;
    let done = client.get(&callback).send().await.map_err(err)?;
    let status = done.status().as_u16();
    let body = done.text().await.map_err(err)?;
    if status == 200 && body.contains("signed up") {
        Ok(format!("{status} signed up"))
    } else {
        Err(format!("the callback answered {status}: {body}"))
    }
}

struct Demo {
    idp: EmulatorHandle,
}

async fn start_world(config: Config, at: Addresses) -> Result<Demo, DemoError> {
    let busy =
        |what: &'static str, addr: SocketAddr| move |error| DemoError::Start { what, addr, error };
    let idp = Emulator::start(at.emulator, EmulatorOptions::default())
        .await
        .map_err(busy("AAD emulator", at.emulator))?;
    let echo = EchoServer::start(at.echo)
        .await
        .map_err(busy("echo upstream", at.echo))?;
    let graph = MockGraph::start(at.graph, idp.clone())
        .await
        .map_err(busy("mock Microsoft Graph", at.graph))?;
    if let Some(addr) = at.grpc {
        let grpc = GrpcEchoServer::start(addr)
            .await
            .map_err(busy("gRPC echo service", addr))?;
        std::mem::forget(grpc);
    }
    // The handles stop their servers when dropped; the demo runs until the process exits.
    std::mem::forget(echo);
    std::mem::forget(graph);
    for s in config.exchanges.values() {
        let mut app = AppRegistration::new(&s.client_id)
            .with_display_name("aadgate demo gateway")
            .with_app_roles(["Mail.Read"]);
        for c in &s.certificates {
            app = app.with_certificate_der(c.cert_der.clone());
        }
        // The sign-up pages' callback, registered as the app's redirect URI.
        if let Some(o) = config.onboarding.as_ref() {
            if o.client_id.eq_ignore_ascii_case(&s.client_id) {
                app = app.with_redirect_uri(&o.redirect_uri);
            }
        }
        idp.register_app(app).map_err(DemoError::RegisterApp)?;
        idp.consent(DEFAULT_TENANT, &s.client_id, vec!["Mail.Read".into()]);
    }
    idp.add_tenant(FABRIKAM);
    idp.add_tenant_name(NORTHWIND_NAME, NORTHWIND);
    Ok(Demo { idp })
}

/// Waits (bounded) until the keys are loaded (`/readyz`) and the data-plane port accepts.
async fn wait_ready(admin: SocketAddr, listen: SocketAddr) -> Result<(), DemoError> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("http://{admin}/readyz")).send().await {
            if r.status() == 200 && tokio::net::TcpStream::connect(listen).await.is_ok() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(DemoError::NotReady);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs every scenario against the gateway at `base`; returns the table and whether all matched.
pub(crate) async fn run_scenarios(base: &str, scenarios: &[Scenario]) -> (String, bool) {
    let client = reqwest::Client::new();
    let mut all = true;
    let mut rows = vec![(
        "scenario".to_string(),
        "expected".to_string(),
        "got".to_string(),
        "".to_string(),
    )];
    for s in scenarios {
        let mut req = client.get(format!("{base}{}", s.path));
        if let Some(t) = &s.token {
            req = req.bearer_auth(t);
        }
        let (status, reason) = match req.send().await {
            Ok(r) => (
                r.status().as_u16(),
                r.headers()
                    .get("x-aadgate-reason")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from),
            ),
            Err(e) => (0, Some(format!("request failed: {e}"))),
        };
        let ok = status == s.status && reason.as_deref() == s.reason;
        all &= ok;
        let fmt = |st: u16, r: Option<&str>| format!("{st} {}", r.unwrap_or("ok"));
        rows.push((
            s.name.to_string(),
            fmt(s.status, s.reason),
            fmt(status, reason.as_deref()),
            if ok { "PASS".into() } else { "FAIL".into() },
        ));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (a, b, c, d) in rows {
        out.push_str(&format!("{a:<w0$}  {b:<w1$}  {c:<w2$}  {d}\n"));
    }
    out.push_str(&format!(
        "{} scenarios, {}\n",
        scenarios.len(),
        if all {
            "all as expected"
        } else {
            "SOME FAILED"
        }
    ));
    (out, all)
}

fn banner(base: &str, admin: SocketAddr, at: Addresses, scenarios: &[Scenario]) -> String {
    let mut out = String::new();
    out.push_str("aadgate demo is running:\n");
    out.push_str(&format!("  gateway        {base}   (conf/demo.toml)\n"));
    out.push_str(&format!(
        "  admin          http://{admin}   (/metrics /healthz /readyz)\n"
    ));
    out.push_str(&format!("  AAD emulator   http://{}\n", at.emulator));
    out.push_str(&format!("  echo upstream  http://{}\n", at.echo));
    out.push_str(&format!("  mock Graph     http://{}\n", at.graph));
    if let Some(g) = at.grpc {
        out.push_str(&format!("  gRPC echo      h2c://{g}\n"));
    }
    out.push('\n');
    out.push_str("Try these (tokens minted just now, valid for an hour):\n\n");
    for s in scenarios {
        out.push_str(&format!(
            "# {} -> expect {} {}\n",
            s.name,
            s.status,
            s.reason.unwrap_or("ok")
        ));
        match &s.token {
            Some(t) => out.push_str(&format!(
                "curl -i -H 'Authorization: Bearer {t}' {base}{}\n\n",
                s.path
            )),
            None => out.push_str(&format!("curl -i {base}{}\n\n", s.path)),
        }
    }
    out.push_str("Explain any token:  aadgate explain -c conf/demo.toml --route orders <TOKEN>\n");
    out.push_str(
        "Mint more:          aadgate dev-token --help   (the demo's emulator uses its own key)\n",
    );
    out.push_str("Stop with Ctrl-C.\n");
    out
}

/// The sign-up path of the demo configuration (`None` without `[onboarding]`). Also starts
/// the demo's registry afresh, so every run begins with no organization signed up.
fn fresh_sign_up(config: &Config) -> Option<String> {
    if let Some(file) = &config.tenants.registry {
        let _ = std::fs::remove_file(file);
    }
    (config.onboarding.as_ref()).map(|o| format!("{}start", o.path_prefix))
}

/// `--once`: Northwind signs up without a browser, then its callers are served.
async fn once_sign_up(base: &str, start: &str, after: &[Scenario]) -> bool {
    let signed = sign_up(base, start, NORTHWIND).await;
    let ok = signed.is_ok();
    match &signed {
        Ok(line) => println!("sign-up of {NORTHWIND_NAME} (admin consent, Accept): {line}  PASS"),
        Err(e) => println!("sign-up of {NORTHWIND_NAME} (admin consent, Accept): {e}  FAIL"),
    }
    let (text, after_ok) = run_scenarios(base, after).await;
    println!("\nafter the sign-up:\n{text}");
    ok && after_ok
}

fn sign_up_banner(base: &str, start: &str, idp: &EmulatorHandle, aud: &str) -> String {
    let token = idp.mint(&TokenSpec::app(NORTHWIND, aud, &["Orders.Read"]));
    format!(
        "Sign up an organization (admin consent): open {base}{start} in your browser, pick\n\
         {NORTHWIND_NAME} and press Accept. Then its callers are served:\n\n\
         curl -i -H 'Authorization: Bearer {token}' {base}/api/orders/42\n\n\
         The registry:  aadgate tenants list -c conf/demo.toml   (or GET /tenants on the admin listener)\n"
    )
}

/// `aadgate demo [--once]`.
pub(crate) fn main(args: &DemoArgs) -> ExitCode {
    let fail = |e: DemoError| {
        eprintln!("aadgate demo: {e}");
        ExitCode::FAILURE
    };
    let path: &Path = &args.demo_config;
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => return fail(DemoError::Config(e)),
    };
    let Some(listen) = config.server.listen.first().copied() else {
        return fail(DemoError::NoListen);
    };
    let Some(admin) = config.server.admin_listen else {
        return fail(DemoError::NoAdminListen);
    };
    let aud = config
        .identity
        .audiences
        .first()
        .cloned()
        .unwrap_or_default();
    let at = match Addresses::from_config(&config) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(DemoError::Runtime(e)),
    };
    let start_path = fresh_sign_up(&config);
    let demo = match rt.block_on(start_world(config, at)) {
        Ok(d) => d,
        Err(e) => return fail(e),
    };
    let base = format!("http://{listen}");
    let table = scenarios(&demo.idp, &aud);
    let grpc_table = grpc::scenarios(&demo.idp, &aud);
    if args.once {
        let base2 = base.clone();
        let after = after_signup_scenarios(&demo.idp, &aud);
        rt.spawn(async move {
            let code = match wait_ready(admin, listen).await {
                Ok(()) => {
                    let (text, mut ok) = run_scenarios(&base2, &table).await;
                    println!("{text}");
                    if at.grpc.is_some() {
                        let (text, grpc_ok) = grpc::run(&base2, &grpc_table).await;
                        println!("over gRPC (HTTP/2):\n{text}");
                        ok &= grpc_ok;
                    }
                    if let Some(start) = &start_path {
                        ok &= once_sign_up(&base2, start, &after).await;
                    }
                    if ok {
                        0
                    } else {
                        1
                    }
                }
                Err(e) => {
                    eprintln!("aadgate demo: {e}");
                    1
                }
            };
            std::process::exit(code);
        });
    } else {
        println!("{}", banner(&base, admin, at, &table));
        if let Some(service) = at.grpc {
            println!("{}", grpc::banner(listen, service, &grpc_table));
        }
        if let Some(start) = &start_path {
            println!("{}", sign_up_banner(&base, start, &demo.idp, &aud));
        }
    }
    // The emulator and upstreams keep running on `rt` while the gateway serves on this thread.
    let _rt = Arc::new(rt);
    match crate::server::run(path.to_path_buf(), false) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(DemoError::Server(e)),
    }
}
