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
    DevIdp(crate::emulator::DevIdpArgs),
    /// Mint a token signed by the emulator's key.
    DevToken(crate::emulator::DevTokenArgs),
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

/// Installs the tracing subscriber on stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
