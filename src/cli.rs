//! The command line (SPEC section 2).

use std::net::SocketAddr;
use std::path::PathBuf;

use aadgate_emulator::{
    AppArg, AppRolesArg, ConsentArg, DevIdpOptions, DevTokenOptions, FederatedArg, RedirectUriArg,
    ServiceAccountArg,
};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum LogFormat {
    #[default]
    Text,
    Json,
}

/// aadgate: an authentication gateway for APIs protected by Azure AD / Microsoft Entra ID.
#[derive(Debug, Parser)]
#[command(name = "aadgate", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Log format on stderr (levels from RUST_LOG, default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Configuration file (also AADGATE_CONFIG). With no command, `run` is implied.
    #[arg(short = 'c', long = "config", global = true, env = "AADGATE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve until SIGTERM/SIGINT (then drain in-flight requests).
    Run(RunArgs),
    /// Validate a configuration: exit 0 when valid, 2 with FILE:LINE:COL: reason lines otherwise.
    Check,
    /// Run the full validation pipeline on one token and explain every check.
    Explain(ExplainArgs),
    /// Start the AAD emulator, an echo upstream, a mock Microsoft Graph, a gRPC echo service and the
    /// gateway with conf/demo.toml, and print ready-to-run curl and gRPC commands.
    Demo(DemoArgs),
    /// Run the AAD emulator alone.
    DevIdp(DevIdpArgs),
    /// Mint a token signed by the emulator's key.
    DevToken(DevTokenArgs),
    /// Make one gRPC call to the emulator's echo service (aadgate.echo.v1.Echo/Unary), e.g.
    /// through the gateway, and print its status, reply and metadata on one line.
    DevGrpcCall(DevGrpcCallArgs),
    /// List or change the tenant registry ([tenants] mode = "registry").
    Tenants(crate::tenants_cli::TenantsArgs),
}

/// `dev-grpc-call`: a gRPC client for the demo when `grpcurl` is not installed.
#[derive(Debug, Args)]
pub(crate) struct DevGrpcCallArgs {
    /// Where to call: `http://host:port` (cleartext HTTP/2), the gateway or the service.
    pub url: String,
    /// Send `authorization: Bearer <TOKEN>` (e.g. from `aadgate dev-token`).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// The request's message.
    #[arg(long, default_value = "hello")]
    pub message: String,
}

/// `run`
#[derive(Debug, Args, Default)]
pub(crate) struct RunArgs {
    /// Take over the listening sockets of a running aadgate (graceful upgrade; send the old
    /// process SIGQUIT).
    #[arg(long)]
    pub upgrade: bool,
}

/// `explain`
#[derive(Debug, Args)]
pub(crate) struct ExplainArgs {
    /// Route by name.
    #[arg(long, conflicts_with_all = ["method", "path", "host"])]
    pub route: Option<String>,
    /// Request method for route selection.
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Request path for route selection.
    #[arg(long)]
    pub path: Option<String>,
    /// Request host for route selection.
    #[arg(long)]
    pub host: Option<String>,
    /// A JWKS JSON document to verify against (offline) instead of fetching keys.
    #[arg(long)]
    pub jwks: Option<PathBuf>,
    /// Evaluate at this Unix time instead of now.
    #[arg(long)]
    pub at: Option<i64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// The token, or - to read it from stdin.
    pub token: String,
}

/// `demo`
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Run every scenario, print the table and exit (0 when all got their expected outcome).
    #[arg(long)]
    pub once: bool,
    /// The demo configuration.
    #[arg(long, default_value = "conf/demo.toml")]
    pub demo_config: PathBuf,
}

/// `dev-idp`: the flags of [`DevIdpOptions`].
#[derive(Debug, Clone, Args)]
pub struct DevIdpArgs {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8399")]
    pub listen: SocketAddr,
    /// Signing key file (PEM key + certificate), created on first use.
    /// Default: $XDG_CACHE_HOME/aadgate/dev-key.pem or ~/.cache/aadgate/dev-key.pem.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Register an app with a certificate for the client credentials grant (repeatable).
    #[arg(long = "app", value_name = "CLIENT_ID=CERT_PEM")]
    pub apps: Vec<AppArg>,
    /// Admin-consent an app in a tenant with app roles (repeatable).
    #[arg(long = "consent", value_name = "TENANT=CLIENT_ID:ROLE1,ROLE2")]
    pub consents: Vec<ConsentArg>,
    /// Register a redirect URI of an app for the admin-consent page (repeatable).
    #[arg(long = "redirect-uri", value_name = "CLIENT_ID=URL")]
    pub redirect_uris: Vec<RedirectUriArg>,
    /// Application permissions an app asks for; Accept on the consent page grants them
    /// (repeatable).
    #[arg(long = "app-roles", value_name = "CLIENT_ID=ROLE1,ROLE2")]
    pub app_roles: Vec<AppRolesArg>,
    /// A federated identity credential of an app (repeatable). ISSUER `k8s` is the emulator's
    /// service-account issuer; `managed-identity|system` (or a user-assigned client id) trusts
    /// that managed identity. AUDIENCE defaults to api://AzureADTokenExchange.
    #[arg(long = "federated", value_name = "APP=ISSUER|SUBJECT[|AUDIENCE]")]
    pub federated: Vec<FederatedArg>,
    /// Register a user-assigned managed identity (repeatable); the system-assigned one always
    /// exists.
    #[arg(long = "user-assigned-identity", value_name = "CLIENT_ID")]
    pub user_assigned_identities: Vec<String>,
    /// Write a service-account token of the emulator's k8s issuer to FILE at start (like the
    /// token AKS workload identity projects into a pod).
    #[arg(long = "write-sa-token", value_name = "FILE")]
    pub write_sa_token: Option<PathBuf>,
    /// The service account of that token. Default: default/default.
    #[arg(
        long = "sa",
        value_name = "NAMESPACE/NAME",
        requires = "write_sa_token"
    )]
    pub sa: Option<ServiceAccountArg>,
    /// Serve HTTPS with a local CA and server certificate created beside the key file on
    /// first use (dev-ca.pem, dev-server.pem); prints the SSL_CERT_FILE line to trust it.
    #[arg(long)]
    pub tls: bool,
    /// The base URL the emulator's documents advertise (token endpoint, JWKS, …); an https://
    /// URL turns TLS on. Default: the listen address.
    #[arg(long = "public-url", value_name = "URL")]
    pub public_url: Option<String>,
}

impl From<DevIdpArgs> for DevIdpOptions {
    fn from(args: DevIdpArgs) -> DevIdpOptions {
        DevIdpOptions {
            listen: args.listen,
            key: args.key,
            apps: args.apps,
            consents: args.consents,
            redirect_uris: args.redirect_uris,
            app_roles: args.app_roles,
            federated: args.federated,
            user_assigned_identities: args.user_assigned_identities,
            write_sa_token: args.write_sa_token,
            sa: args.sa,
            tls: args.tls,
            public_url: args.public_url,
        }
    }
}

/// `dev-token` (SPEC section 2): the flags of [`DevTokenOptions`].
#[derive(Debug, Clone, Default, Args)]
pub struct DevTokenArgs {
    /// Tenant id (`tid`). Default: the emulator's default tenant.
    #[arg(long, value_name = "T")]
    pub tid: Option<String>,
    /// Audience (`aud`). Default: api://aadgate-demo.
    #[arg(long, value_name = "A")]
    pub aud: Option<String>,
    /// App roles, comma separated. With roles and no scopes the token is app-only
    /// (`idtyp=app`, certificate strength).
    #[arg(long, value_name = "R,..", value_delimiter = ',')]
    pub roles: Vec<String>,
    /// Delegated scopes (space separated or repeated); makes a user token.
    #[arg(long, value_name = "S", num_args = 1..)]
    pub scp: Vec<String>,
    /// Client application id (`appid` in v1, `azp` in v2).
    #[arg(long, value_name = "C")]
    pub appid: Option<String>,
    /// Token version.
    #[arg(long, value_name = "1|2", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub ver: Option<u8>,
    /// Lifetime in seconds (`exp` = now + SECS; negative for an expired token). Default 3600.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true)]
    pub exp: Option<i64>,
    /// Signing key file, shared with `dev-idp`; created on first use.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Extra claim NAME=JSON (repeatable); a value that is not JSON is taken as a string.
    #[arg(long = "claim", value_name = "NAME=JSON")]
    pub claims: Vec<String>,
    /// Identity type claim (`idtyp`), e.g. `app` or `user`.
    #[arg(long, value_name = "IDTYP")]
    pub idtyp: Option<String>,
}

impl From<DevTokenArgs> for DevTokenOptions {
    fn from(args: DevTokenArgs) -> DevTokenOptions {
        DevTokenOptions {
            tid: args.tid,
            aud: args.aud,
            roles: args.roles,
            scp: args.scp,
            appid: args.appid,
            ver: args.ver,
            exp: args.exp,
            key: args.key,
            claims: args.claims,
            idtyp: args.idtyp,
        }
    }
}

/// Dependencies whose debug and trace lines print requests (headers, bodies): pingora prints
/// the upstream request with its `Authorization`, reqwest/hyper/h2 the token endpoint's
/// requests and answers. Their lines are capped at [`DEPENDENCY_CAP`] whatever `RUST_LOG` says,
/// so no token, assertion or app-only token reaches a log (SPEC section 8, "Logs"). Each entry
/// is a target prefix (`hyper` covers `hyper_util`).
pub(crate) const CAPPED_DEPENDENCIES: [&str; 7] = [
    "pingora",
    "reqwest",
    "hyper",
    "h2",
    "rustls",
    "tokio_rustls",
    "tower",
];

/// The most verbose level [`CAPPED_DEPENDENCIES`] may log at.
pub(crate) const DEPENDENCY_CAP: tracing::Level = tracing::Level::INFO;

/// The filter that enforces [`DEPENDENCY_CAP`]: everything else passes (to `RUST_LOG`'s
/// filter, which still applies).
pub(crate) fn dependency_caps() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::TRACE)
        .with_targets(CAPPED_DEPENDENCIES.map(|t| (t, DEPENDENCY_CAP)))
}

/// Installs the tracing subscriber on stderr: levels from `RUST_LOG` (default `info`), with
/// [`dependency_caps`] on top, in text or JSON. The access log is written in batches
/// ([`crate::log_writer`]).
pub(crate) fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let most_verbose =
        tracing_subscriber::Layer::<tracing_subscriber::Registry>::max_level_hint(&filter);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(dependency_caps());
    let ansi = std::io::stderr().is_terminal();
    crate::access_log::set_style(crate::access_log::Style {
        json: format == LogFormat::Json,
        ansi,
    });
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(crate::log_writer::stderr())
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
        LogFormat::Text => registry.with(layer).try_init(),
    };
    // Dependencies that use the `log` crate (pingora) check this level before anything else:
    // without it every `debug!` of theirs would go through the filters on each request.
    log::set_max_level(log_level(most_verbose));
}

/// The `log` crate's level for the most verbose level `RUST_LOG` lets through.
fn log_level(most_verbose: Option<tracing_subscriber::filter::LevelFilter>) -> log::LevelFilter {
    use tracing_subscriber::filter::LevelFilter;
    match most_verbose {
        None | Some(LevelFilter::TRACE) => log::LevelFilter::Trace,
        Some(LevelFilter::DEBUG) => log::LevelFilter::Debug,
        Some(LevelFilter::INFO) => log::LevelFilter::Info,
        Some(LevelFilter::WARN) => log::LevelFilter::Warn,
        Some(LevelFilter::ERROR) => log::LevelFilter::Error,
        Some(_) => log::LevelFilter::Off,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_crates_level_is_the_most_verbose_one_rust_log_lets_through() {
        use tracing_subscriber::filter::LevelFilter;
        let level = |spec: &str| {
            let filter = tracing_subscriber::EnvFilter::new(spec);
            log_level(
                tracing_subscriber::Layer::<tracing_subscriber::Registry>::max_level_hint(&filter),
            )
        };
        assert_eq!(level("info"), log::LevelFilter::Info);
        assert_eq!(level("warn,aadgate=debug"), log::LevelFilter::Debug);
        assert_eq!(level("off"), log::LevelFilter::Off);
        assert_eq!(level("pingora_core=trace"), log::LevelFilter::Trace);
        assert_eq!(log_level(None), log::LevelFilter::Trace);
        assert_eq!(log_level(Some(LevelFilter::ERROR)), log::LevelFilter::Error);
    }
    use tracing_subscriber::layer::SubscriberExt;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("aadgate").chain(args.iter().copied()))?;
        Ok(cli.command.expect("a command"))
    }

    #[test]
    fn dev_token_flags_map_to_the_emulators_options() {
        let Command::DevToken(args) = parse(&[
            "dev-token",
            "--tid",
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "--aud",
            "api://orders",
            "--scp",
            "Orders.Read Orders.Write",
            "User.Read",
            "--ver",
            "1",
            "--exp",
            "-60",
            "--claim",
            "acct=1",
            "--claim",
            "upn=alice@contoso.example",
            "--idtyp",
            "user",
        ])
        .expect("parse") else {
            panic!("not dev-token");
        };
        let options = DevTokenOptions::from(args);
        assert_eq!(
            options.tid.as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert_eq!(options.aud.as_deref(), Some("api://orders"));
        assert_eq!(options.scp, vec!["Orders.Read Orders.Write", "User.Read"]);
        assert_eq!(options.ver, Some(1));
        assert_eq!(options.exp, Some(-60));
        assert_eq!(options.claims, vec!["acct=1", "upn=alice@contoso.example"]);
        assert_eq!(options.idtyp.as_deref(), Some("user"));
        let spec = aadgate_emulator::dev_token_spec(&options).expect("spec");
        assert_eq!(
            spec.scp.as_deref(),
            Some("Orders.Read Orders.Write User.Read")
        );

        let Command::DevToken(args) =
            parse(&["dev-token", "--roles", "A.Read,B.Write", "--appid", "c1"]).expect("parse")
        else {
            panic!("not dev-token");
        };
        let options = DevTokenOptions::from(args);
        assert_eq!(options.roles, vec!["A.Read", "B.Write"]);
        assert_eq!(options.appid.as_deref(), Some("c1"));

        assert!(parse(&["dev-token", "--ver", "3"]).is_err());
    }

    #[test]
    fn dev_idp_flags_parse_workload_identities_and_tls() {
        let Command::DevIdp(args) = parse(&[
            "dev-idp",
            "--federated",
            "c1=k8s|system:serviceaccount:gateway:aadgate",
            "--federated",
            "c1=managed-identity|system",
            "--user-assigned-identity",
            "6a1f7c2e-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
            "--write-sa-token",
            "/tmp/azure-identity-token",
            "--sa",
            "gateway/aadgate",
            "--public-url",
            "https://idp.localtest.me:8399",
        ])
        .expect("parse") else {
            panic!("not dev-idp");
        };
        let options = DevIdpOptions::from(args);
        assert_eq!(options.federated.len(), 2);
        assert_eq!(options.federated[0].issuer, "k8s");
        assert_eq!(options.user_assigned_identities.len(), 1);
        assert_eq!(
            options.write_sa_token,
            Some(PathBuf::from("/tmp/azure-identity-token"))
        );
        assert_eq!(
            options.sa.as_ref().map(|sa| sa.name.as_str()),
            Some("aadgate")
        );
        assert!(!options.tls);
        assert!(options.serves_tls(), "an https public URL turns TLS on");
        assert!(parse(&["dev-idp", "--tls"]).is_ok());
        assert!(
            parse(&["dev-idp", "--sa", "ns/name"]).is_err(),
            "--sa needs --write-sa-token"
        );
        assert!(parse(&["dev-idp", "--federated", "c1=k8s"]).is_err());
    }

    #[test]
    fn dev_idp_flags_parse_apps_and_consents() {
        let Command::DevIdp(args) = parse(&[
            "dev-idp",
            "--listen",
            "127.0.0.1:0",
            "--app",
            "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c=certs/app.crt",
            "--consent",
            "72f988bf-86f1-41af-91ab-2d7cd011db47=3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c:Mail.Read,Mail.Send",
            "--redirect-uri",
            "3c2a9b8e-5d4f-4e6a-9b1c-7d8e9f0a1b2c=https://api.contoso.com/cb?a=b",
        ])
        .expect("parse") else {
            panic!("not dev-idp");
        };
        let options = DevIdpOptions::from(args);
        assert_eq!(
            options.listen,
            "127.0.0.1:0".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(options.apps[0].cert_pem, PathBuf::from("certs/app.crt"));
        assert_eq!(options.consents[0].roles, vec!["Mail.Read", "Mail.Send"]);
        assert_eq!(
            options.redirect_uris[0].url,
            "https://api.contoso.com/cb?a=b"
        );
        assert!(parse(&["dev-idp", "--consent", "not-a-guid=x:y"]).is_err());
        assert!(parse(&["dev-idp", "--app", "no-equals"]).is_err());
        let Command::DevIdp(defaults) = parse(&["dev-idp"]).expect("parse") else {
            panic!("not dev-idp");
        };
        assert_eq!(
            defaults.listen,
            "127.0.0.1:8399".parse::<SocketAddr>().expect("addr")
        );
    }

    #[test]
    fn dependency_logs_are_capped_at_info_whatever_rust_log_says() {
        let filter = tracing_subscriber::EnvFilter::new("trace,pingora_proxy=trace,reqwest=trace");
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(dependency_caps());
        tracing::subscriber::with_default(subscriber, || {
            for (target, debug_shown) in [
                ("pingora_proxy::proxy_h1", false),
                ("pingora_core::protocols", false),
                ("reqwest::connect", false),
                ("hyper_util::client", false),
                ("h2::codec", false),
                ("rustls::client", false),
                ("aadgate::server::proxy", true),
            ] {
                let debug = tracing::Metadata::new(
                    "test",
                    target,
                    tracing::Level::DEBUG,
                    None,
                    None,
                    None,
                    tracing::field::FieldSet::new(&[], tracing::callsite::Identifier(&CALLSITE)),
                    tracing::metadata::Kind::EVENT,
                );
                let shown = tracing::dispatcher::get_default(|d| d.enabled(&debug));
                assert_eq!(shown, debug_shown, "{target}");
            }
        });
    }

    struct Callsite;
    static CALLSITE: Callsite = Callsite;
    impl tracing::callsite::Callsite for Callsite {
        fn set_interest(&self, _: tracing::subscriber::Interest) {}
        fn metadata(&self) -> &tracing::Metadata<'_> {
            unreachable!("not registered")
        }
    }
}
