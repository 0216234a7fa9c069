//! The command line (SPEC section 2).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// aadgate: an authentication gateway for APIs protected by Azure AD / Microsoft Entra ID.
#[derive(Debug, Parser)]
#[command(name = "aadgate", version, about, propagate_version = true)]
pub struct Cli {
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
pub enum Command {
    /// Serve until SIGTERM/SIGINT (then drain in-flight requests).
    Run(RunArgs),
    /// Validate a configuration: exit 0 when valid, 2 with FILE:LINE:COL: reason lines otherwise.
    Check,
    /// Run the full validation pipeline on one token and explain every check.
    Explain(ExplainArgs),
    /// Start the AAD emulator, an echo upstream, a mock Outlook API and the gateway with
    /// conf/demo.toml, and print ready-to-run curl commands.
    Demo(DemoArgs),
    /// Run the AAD emulator alone.
    DevIdp(aadgate_emulator::DevIdpArgs),
    /// Mint a token signed by the emulator's key.
    DevToken(aadgate_emulator::DevTokenArgs),
}

/// `run`
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Take over the listening sockets of a running aadgate (graceful upgrade; send the old
    /// process SIGQUIT).
    #[arg(long)]
    pub upgrade: bool,
}

/// `explain`
#[derive(Debug, Args)]
pub struct ExplainArgs {
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
pub struct DemoArgs {
    /// Run every scenario, print the table and exit (0 when all got their expected outcome).
    #[arg(long)]
    pub once: bool,
    /// The demo configuration.
    #[arg(long, default_value = "conf/demo.toml")]
    pub demo_config: PathBuf,
}

/// Dependencies whose debug and trace lines print requests (headers, bodies): pingora prints
/// the upstream request with its `Authorization`, reqwest/hyper/h2 the token endpoint's
/// requests and answers. Their lines are capped at [`DEPENDENCY_CAP`] whatever `RUST_LOG` says,
/// so no token, assertion or app-only token reaches a log (SPEC section 8, "Logs"). Each entry
/// is a target prefix (`hyper` covers `hyper_util`).
pub const CAPPED_DEPENDENCIES: [&str; 7] = [
    "pingora",
    "reqwest",
    "hyper",
    "h2",
    "rustls",
    "tokio_rustls",
    "tower",
];

/// The most verbose level [`CAPPED_DEPENDENCIES`] may log at.
pub const DEPENDENCY_CAP: tracing::Level = tracing::Level::INFO;

/// The filter that enforces [`DEPENDENCY_CAP`]: everything else passes (to `RUST_LOG`'s
/// filter, which still applies).
pub fn dependency_caps() -> tracing_subscriber::filter::Targets {
    tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::TRACE)
        .with_targets(CAPPED_DEPENDENCIES.map(|t| (t, DEPENDENCY_CAP)))
}

/// Installs the tracing subscriber on stderr: levels from `RUST_LOG` (default `info`), with
/// [`dependency_caps`] on top, in text or JSON.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(dependency_caps());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).try_init(),
        LogFormat::Text => registry.with(layer).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

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
