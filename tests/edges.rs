//! End-to-end: the request's edges through the real binary, with raw-socket requests (no
//! client-side normalisation) and an upstream that records what arrives on the wire: request
//! targets, the normalized path routes are matched on, identity headers a caller must not set,
//! secrets in logs at `RUST_LOG=trace`, and the private runtime folder.

mod common;

use aadgate_emulator::{AppRegistration, SigningKey, TokenSpec};
use common::*;

const GATEWAY_APP: &str = "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c";

/// An anonymous `/` route and an `/admin/` route needing the role `Admin`, as in the report
/// that found the bypasses; `/orders/` (anonymous) and `/orders/sync/` (Admin) for the
/// framework-dispatch cases; `/svc/` stripping its prefix.
fn routes(up: &str) -> String {
    format!(
        r#"
[[routes]]
name = "public"
path_prefix = "/"
upstream = "{up}"
auth = "anonymous"

[[routes]]
name = "admin"
path_prefix = "/admin/"
upstream = "{up}"
roles_any = ["Admin"]

[[routes]]
name = "orders"
path_prefix = "/orders/"
upstream = "{up}"
auth = "anonymous"

[[routes]]
name = "orders-sync"
path_prefix = "/orders/sync/"
upstream = "{up}"
roles_any = ["Admin"]

[[routes]]
name = "svc"
path_prefix = "/svc/"
strip_prefix = "/svc"
upstream = "{up}"
auth = "anonymous"
"#
    )
}

async fn start(server_extra: &str) -> (World, WireUpstream, Gateway) {
    let w = World::start().await;
    let up = WireUpstream::start().await;
    let template = base_config("", "mode = \"any\"\n")
        .replace("workers = 2", &format!("workers = 2\n{server_extra}"))
        + &routes(&up.url());
    let gw = Gateway::start(&template, &w).await;
    gw.wait_ready().await;
    (w, up, gw)
}

fn request(method: &str, target: &str, headers: &[(&str, &str)]) -> String {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r
}

async fn send(
    gw: &Gateway,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>) {
    let (status, reason, _) = raw_request(gw.addr, &request(method, target, headers)).await;
    (status, reason)
}

fn bad_request() -> (u16, Option<String>) {
    (400, Some("bad_request".to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targets_in_neither_origin_nor_absolute_form_are_refused_before_the_upstream() {
    let (_w, up, gw) = start("").await;
    for (method, target) in [
        ("GET", "x:/admin/users"),
        ("GET", "admin/users"),
        ("GET", "?q=1"),
        ("GET", "*"),
        ("POST", "*"),
        ("GET", "ftp://localhost/admin/users"),
    ] {
        assert_eq!(
            send(&gw, method, target, &[]).await,
            bad_request(),
            "{method} {target}"
        );
    }
    assert!(
        up.heads().is_empty(),
        "nothing reaches the upstream: {:?}",
        up.heads()
    );

    // OPTIONS * is a request about the server: routed as `/`, forwarded as `*`.
    assert_eq!(send(&gw, "OPTIONS", "*", &[]).await.0, 200);
    assert_eq!(
        up.last_request_line().as_deref(),
        Some("OPTIONS * HTTP/1.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_is_forwarded_in_origin_form_with_the_query_as_received() {
    let (w, up, gw) = start("").await;
    for (target, line) in [
        (
            "http://localhost/orders/1?q=%20&r=%41",
            "GET /orders/1?q=%20&r=%41 HTTP/1.1",
        ),
        ("HTTP://localhost", "GET / HTTP/1.1"),
        ("http://localhost/svc//x;v=1/y?z", "GET /x;v=1/y?z HTTP/1.1"),
    ] {
        assert_eq!(send(&gw, "GET", target, &[]).await.0, 200, "{target}");
        assert_eq!(up.last_request_line().as_deref(), Some(line), "{target}");
    }
    // Absolute form is routed on its path like origin form: the admin route wants a token.
    assert_eq!(
        send(&gw, "GET", "http://localhost/ADMIN/users", &[]).await,
        (401, Some("missing_token".to_string()))
    );
    let admin = w.idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Admin"]));
    let bearer = format!("Bearer {admin}");
    assert_eq!(
        send(
            &gw,
            "GET",
            "https://localhost/admin/users?x=1",
            &[("Authorization", &bearer)]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        up.last_request_line().as_deref(),
        Some("GET /admin/users?x=1 HTTP/1.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_longer_than_max_uri_bytes_is_refused_with_414() {
    let (_w, up, gw) = start("max_uri_bytes = 1024").await;
    let fits = format!("/orders/{}", "a".repeat(1024 - "/orders/".len()));
    assert_eq!(send(&gw, "GET", &fits, &[]).await.0, 200);
    let too_long = format!("{fits}b");
    assert_eq!(
        send(&gw, "GET", &too_long, &[]).await,
        (414, Some("uri_too_long".to_string()))
    );
    // Checked first: a long target in a refused form is still 414.
    let long_bad = format!("x:{too_long}");
    assert_eq!(send(&gw, "GET", &long_bad, &[]).await.0, 414);
    assert_eq!(
        up.heads().len(),
        1,
        "only the target that fits went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_reach_the_route_their_upstream_framework_would_dispatch_them_to() {
    let (w, up, gw) = start("").await;
    // ASP.NET Core routes case-insensitively; Spring/Tomcat drop `;` parameters and read `//`
    // as `/`: each of these is the admin or orders-sync route, which wants a token.
    for target in [
        "/ADMIN/users",
        "/Admin/users",
        "/%61dmin/users",
        "//admin/users",
        "/admin;x/users",
        "/orders//sync/run",
        "/orders/sync;x/run",
        "/ORDERS/Sync/run",
        // The bare path of a prefix ending in `/` is that route's too.
        "/admin",
        "/ADMIN;x",
        "/orders/sync",
    ] {
        assert_eq!(
            send(&gw, "GET", target, &[]).await,
            (401, Some("missing_token".to_string())),
            "{target}"
        );
    }
    // Dot segments, also hidden behind `;` or encoding, are refused outright.
    for target in [
        "/public/..;x/admin/users",
        "/admin/..;/public",
        "/orders/%2e%2e/admin/users",
        "/orders/.;x/sync/run",
        "/orders/a%2Fb",
        "/orders/a%5Cb",
        "/orders/a\\b",
    ] {
        assert_eq!(
            send(&gw, "GET", target, &[]).await,
            bad_request(),
            "{target}"
        );
    }
    assert!(
        up.heads().is_empty(),
        "nothing reaches the upstream: {:?}",
        up.heads()
    );

    // With the role, the upstream gets the path exactly as received.
    let admin = w.idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Admin"]));
    let bearer = format!("Bearer {admin}");
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(
        send(&gw, "GET", "/ADMIN//users;x?q=%41", &auth).await.0,
        200
    );
    assert_eq!(
        up.last_request_line().as_deref(),
        Some("GET /ADMIN//users;x?q=%41 HTTP/1.1")
    );
    // strip_prefix removes the raw segments that normalize to the prefix, keeps the rest.
    assert_eq!(send(&gw, "GET", "/SVC//x;v=1/y", &[]).await.0, 200);
    assert_eq!(
        up.last_request_line().as_deref(),
        Some("GET /x;v=1/y HTTP/1.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_a_caller_sets_never_reach_the_upstream_in_any_spelling() {
    let (w, up, gw) = start("").await;
    let spoofed = [
        ("x_auth_roles", "Admin"),
        ("X_Auth_Tenant_Id", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
        ("X-Auth-Roles", "Admin"),
        ("x-auth_upn", "ceo@contoso.com"),
        ("x-auth-whatever", "1"),
    ];
    // An anonymous route gets no identity header at all.
    assert_eq!(send(&gw, "GET", "/anything", &spoofed).await.0, 200);
    let head = up
        .heads()
        .pop()
        .expect("upstream request")
        .to_ascii_lowercase();
    for line in head.lines().skip(1) {
        assert!(
            !line.starts_with("x-auth") && !line.starts_with("x_auth"),
            "{line} reached the upstream:\n{head}"
        );
    }
    // An authenticated route gets only the gateway's own values.
    let token = w.idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Admin"]));
    let bearer = format!("Bearer {token}");
    let mut headers = spoofed.to_vec();
    headers.push(("Authorization", &bearer));
    assert_eq!(send(&gw, "GET", "/admin/users", &headers).await.0, 200);
    let head = up
        .heads()
        .pop()
        .expect("upstream request")
        .to_ascii_lowercase();
    let identity: Vec<&str> = head
        .lines()
        .filter(|l| l.starts_with("x-auth") || l.starts_with("x_auth"))
        .collect();
    assert!(identity.contains(&format!("x-auth-tenant-id: {TENANT_A}").as_str()));
    assert!(identity.contains(&"x-auth-roles: admin"));
    assert!(
        identity.iter().all(|l| !l.starts_with("x_")
            && !l.starts_with("x-auth_")
            && !l.starts_with("x-auth-whatever")
            && !l.starts_with("x-auth-upn")),
        "{identity:?}"
    );
    assert_eq!(
        identity
            .iter()
            .filter(|l| l.starts_with("x-auth-roles"))
            .count(),
        1
    );
}

/// Every run of base64url characters and dots in `log` that looks like a compact JWS (three
/// non-trivial segments, the first a JSON object).
fn jwt_like(log: &str) -> Vec<String> {
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    log.split(|c: char| !is_b64(c))
        .filter(|run| run.starts_with("eyJ"))
        .filter(|run| {
            let parts: Vec<&str> = run.split('.').collect();
            parts.len() >= 3 && parts.iter().take(3).all(|p| p.len() >= 8)
        })
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_the_log_even_at_trace() {
    let w = World::start().await;
    let up = WireUpstream::start().await;
    let cert_dir = tempfile::tempdir().expect("tempdir");
    let cert = SigningKey::generate().expect("key");
    std::fs::write(cert_dir.path().join("app.crt"), cert.certificate_pem()).expect("write");
    std::fs::write(cert_dir.path().join("app.key"), cert.private_key_pem()).expect("write");
    w.idp
        .register_app(AppRegistration::new(GATEWAY_APP).with_certificate(&cert))
        .expect("register");
    w.idp
        .consent(TENANT_A, GATEWAY_APP, vec!["Mail.Read".into()]);
    let d = cert_dir.path().display();
    let template = base_config("", "mode = \"any\"\n")
        + &routes(&up.url())
        + &format!(
            r#"
[[routes]]
name = "graph"
path_prefix = "/v1.0/"
upstream = "{up}"
exchange = "graph"

[exchange.graph]
client_id = "{GATEWAY_APP}"
token_endpoint = "{{idp}}/{{tenantid}}/oauth2/v2.0/token"
scope = "https://graph.microsoft.com/.default"
certificates = [ {{ cert = "{d}/app.crt", key = "{d}/app.key" }} ]
"#,
            up = up.url()
        );
    let p = Prepared::new(&template, &w);
    let path = p.dir.path().join("aadgate.toml");
    std::fs::write(&path, &p.rendered).expect("write config");
    let gw = p
        .launch_with_env(path, &[], &[("RUST_LOG", Some("trace"))])
        .await;
    gw.wait_ready().await;

    let token = w.idp.mint(&TokenSpec::app(TENANT_A, AUD, &["Admin"]));
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    assert_eq!(send(&gw, "GET", "/admin/users", &auth).await.0, 200);
    assert_eq!(send(&gw, "GET", "/v1.0/users", &auth).await.0, 200);
    let head = up
        .heads()
        .pop()
        .expect("the exchange route's upstream request");
    let app_only = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case("authorization"))
                .map(|(_, v)| v.trim().trim_start_matches("Bearer ").to_string())
        })
        .expect("app-only token upstream");
    assert_ne!(app_only, token);
    // A rejected token is not printed either.
    let forged = format!("{token}x");
    let forged_bearer = format!("Bearer {forged}");
    assert_eq!(
        send(
            &gw,
            "GET",
            "/admin/users",
            &[("Authorization", &forged_bearer)]
        )
        .await
        .0,
        401
    );

    let log = gw.logs();
    assert!(
        log.lines()
            .any(|l| l.contains("TRACE") || l.contains("DEBUG")),
        "the gateway logged at trace"
    );
    let signature = |t: &str| t.rsplit('.').next().unwrap_or_default().to_string();
    for (what, secret) in [
        ("the caller's token", signature(&token)),
        ("the app-only token", signature(&app_only)),
    ] {
        assert!(
            !log.contains(&secret),
            "{what} is in the log:\n{}",
            log.lines()
                .filter(|l| l.contains(&secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    let leaked = jwt_like(&log);
    assert!(leaked.is_empty(), "JWT-like strings in the log: {leaked:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_socket_defaults_to_a_private_runtime_folder() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::start().await;
    let up = WireUpstream::start().await;
    let template = base_config("", "mode = \"any\"\n")
        .replace("upgrade_sock = \"{dir}/upgrade.sock\"\n", "")
        + &routes(&up.url());
    assert!(!template.contains("upgrade_sock"));
    let mode = |d: &std::path::Path| {
        std::fs::metadata(d)
            .map(|m| m.permissions().mode() & 0o777)
            .ok()
    };

    // systemd's RuntimeDirectory= first.
    let run = tempfile::tempdir().expect("tempdir");
    let runtime_directory = run.path().join("rt");
    let p = Prepared::new(&template, &w);
    let path = p.dir.path().join("aadgate.toml");
    std::fs::write(&path, &p.rendered).expect("write config");
    let gw = p
        .launch_with_env(
            path,
            &[],
            &[(
                "RUNTIME_DIRECTORY",
                Some(runtime_directory.to_str().expect("utf-8")),
            )],
        )
        .await;
    assert_eq!(mode(&runtime_directory), Some(0o700), "{}", gw.logs());
    drop(gw);

    // Else $XDG_RUNTIME_DIR/aadgate.
    let xdg = run.path().join("xdg");
    let p = Prepared::new(&template, &w);
    let path = p.dir.path().join("aadgate.toml");
    std::fs::write(&path, &p.rendered).expect("write config");
    let gw = p
        .launch_with_env(
            path,
            &[],
            &[
                ("RUNTIME_DIRECTORY", None),
                ("XDG_RUNTIME_DIR", Some(xdg.to_str().expect("utf-8"))),
            ],
        )
        .await;
    assert_eq!(mode(&xdg.join("aadgate")), Some(0o700), "{}", gw.logs());
    assert!(
        gw.logs()
            .contains(&xdg.join("aadgate").display().to_string()),
        "the folder is logged at start:\n{}",
        gw.logs()
    );
}
