//! The demo's gRPC part: the emulator's echo service behind the gateway's `h2c://` route, the
//! calls `--once` checks, and the command the banner prints (`grpcurl` when installed, else the
//! bundled `aadgate dev-grpc-call`).

use std::net::SocketAddr;

use aadgate_emulator::grpc::{code_name, Code};
use aadgate_emulator::{EmulatorHandle, GrpcEchoClient, TokenSpec, DEFAULT_TENANT};

/// The echo service's `.proto`, for `grpcurl -proto` (the service has no reflection).
const PROTO: &str = "crates/aadgate-emulator/proto/echo.proto";
/// The method the demo calls.
const METHOD: &str = "aadgate.echo.v1.Echo/Unary";

/// One gRPC call and the status it should get.
pub(crate) struct GrpcScenario {
    pub name: &'static str,
    pub token: Option<String>,
    pub code: Code,
    /// The gateway's reason for a refusal; `None` for a call that reached the service.
    pub reason: Option<&'static str>,
}

/// The calls: an app-only token with the route's role, none, and one without the role.
pub(crate) fn scenarios(idp: &EmulatorHandle, aud: &str) -> Vec<GrpcScenario> {
    let app = |roles: &[&str]| Some(idp.mint(&TokenSpec::app(DEFAULT_TENANT, aud, roles)));
    vec![
        GrpcScenario {
            name: "gRPC call with an app-only token",
            token: app(&["Orders.Read"]),
            code: Code::Ok,
            reason: None,
        },
        GrpcScenario {
            name: "gRPC call without a token",
            token: None,
            code: Code::Unauthenticated,
            reason: Some("missing_token"),
        },
        GrpcScenario {
            name: "gRPC call missing the app role",
            token: app(&["Orders.Write"]),
            code: Code::PermissionDenied,
            reason: Some("missing_role"),
        },
    ]
}

/// Runs each call through the gateway at `base` (cleartext HTTP/2); returns the table and
/// whether every call got its expected status.
pub(crate) async fn run(base: &str, scenarios: &[GrpcScenario]) -> (String, bool) {
    let client = match GrpcEchoClient::connect(base).await {
        Ok(c) => c,
        Err(e) => return (format!("gRPC: cannot connect to {base}: {e}\n"), false),
    };
    let mut rows = Vec::new();
    let mut all = true;
    for s in scenarios {
        let auth = s.token.as_ref().map(|t| format!("Bearer {t}"));
        let metadata: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let (code, reason) = match client.unary("hello", Vec::new(), &metadata).await {
            Ok(_) => (Code::Ok, None),
            Err(status) => (
                status.code(),
                status
                    .metadata()
                    .get("x-aadgate-reason")
                    .and_then(|v| v.to_str().ok())
                    .map(String::from),
            ),
        };
        let ok = code == s.code && reason.as_deref() == s.reason;
        all &= ok;
        let fmt = |c: Code, r: Option<&str>| match r {
            None => code_name(c).to_string(),
            Some(r) => format!("{} {r}", code_name(c)),
        };
        rows.push((
            s.name,
            fmt(s.code, s.reason),
            fmt(code, reason.as_deref()),
            if ok { "PASS" } else { "FAIL" },
        ));
    }
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (a, b, c, d) in rows {
        out.push_str(&format!("{a:<w0$}  {b:<w1$}  {c:<w2$}  {d}\n"));
    }
    (out, all)
}

/// Whether `grpcurl` is on the `PATH`.
fn have_grpcurl() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("grpcurl").is_file()))
}

/// The banner's gRPC section: the commands for each call, with `grpcurl` when it is installed.
pub(crate) fn banner(
    listen: SocketAddr,
    service: SocketAddr,
    scenarios: &[GrpcScenario],
) -> String {
    let grpcurl = have_grpcurl();
    let mut out = format!(
        "gRPC (echo service on h2c://{service}, behind the gateway's route /aadgate.echo.v1.Echo/):\n\n"
    );
    for s in scenarios {
        let expect = match s.reason {
            None => "OK".to_string(),
            Some(r) => format!("{} {r}", code_name(s.code)),
        };
        out.push_str(&format!("# {} -> expect {expect}\n", s.name));
        let line = match (grpcurl, &s.token) {
            (true, Some(t)) => format!(
                "grpcurl -plaintext -proto {PROTO} -H 'authorization: Bearer {t}' -d '{{\"message\":\"hello\"}}' {listen} {METHOD}"
            ),
            (true, None) => format!(
                "grpcurl -plaintext -proto {PROTO} -d '{{\"message\":\"hello\"}}' {listen} {METHOD}"
            ),
            (false, Some(t)) => format!("aadgate dev-grpc-call --token {t} http://{listen}"),
            (false, None) => format!("aadgate dev-grpc-call http://{listen}"),
        };
        out.push_str(&line);
        out.push_str("\n\n");
    }
    if !grpcurl {
        out.push_str("(grpcurl is not installed: these use the bundled client; with grpcurl, point -proto at ");
        out.push_str(PROTO);
        out.push_str(")\n");
    }
    out
}
