//! aadgate: a reverse-proxy authentication gateway for HTTP APIs protected by Azure AD /
//! Microsoft Entra ID. The decision is the `aadgate-core` crate; this binary owns the transport
//! (pingora), the CLI, `explain` and `demo`.
#![forbid(unsafe_code)]

mod access_log;
mod cli;
mod demo;
mod explain;
mod log_writer;
mod server;
mod tenants_cli;

use std::process::ExitCode;

/// mimalloc instead of the system allocator: cheaper per-request allocations (pingora allocates
/// a 64 KiB body buffer per proxied response) and less memory held per cached token; measured
/// in BENCHMARKS.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use cli::{Cli, Command, RunArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::init_logging(cli.log_format);
    let code = dispatch(cli);
    log_writer::flush();
    code
}

/// Runs the command.
fn dispatch(cli: Cli) -> ExitCode {
    let need_config = || {
        cli.config.clone().ok_or_else(|| {
            eprintln!("aadgate: a configuration file is needed: -c FILE (or AADGATE_CONFIG)");
            ExitCode::from(2)
        })
    };
    match cli.command {
        None | Some(Command::Run(_)) => {
            let path = match need_config() {
                Ok(p) => p,
                Err(code) => return code,
            };
            let upgrade = matches!(cli.command, Some(Command::Run(RunArgs { upgrade: true })));
            match server::run(path, upgrade) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Check) => {
            let path = match need_config() {
                Ok(p) => p,
                Err(code) => return code,
            };
            // The runtime is built as the gateway would build it (a CEL expression that does
            // not compile is an error too); nothing is fetched or started.
            match aadgate_core::runtime::Runtime::load(&path, None) {
                Ok(runtime) => {
                    let c = runtime.config();
                    for w in &c.warnings {
                        eprintln!("warning: {w}");
                    }
                    println!("{}: ok ({} routes)", path.display(), c.routes.len());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprintln!("{errors}");
                    ExitCode::from(2)
                }
            }
        }
        Some(Command::Explain(args)) => {
            let path = match need_config() {
                Ok(p) => p,
                Err(code) => return code,
            };
            explain::main(&path, &args)
        }
        Some(Command::Demo(args)) => demo::main(&args),
        Some(Command::Tenants(args)) => {
            let path = match need_config() {
                Ok(p) => p,
                Err(code) => return code,
            };
            tenants_cli::main(&path, &args)
        }
        Some(Command::DevIdp(args)) => {
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("aadgate: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(aadgate_emulator::run_dev_idp(
                aadgate_emulator::DevIdpOptions::from(args),
            )) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("aadgate dev-idp: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::DevGrpcCall(args)) => dev_grpc_call(&args),
        Some(Command::DevToken(args)) => {
            match aadgate_emulator::run_dev_token(aadgate_emulator::DevTokenOptions::from(args)) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("aadgate dev-token: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `aadgate dev-grpc-call`: one call, one line; exit 0 when the call returned OK.
fn dev_grpc_call(args: &cli::DevGrpcCallArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("aadgate dev-grpc-call: {e}");
            return ExitCode::FAILURE;
        }
    };
    let call = aadgate_emulator::grpc_call(&args.url, args.token.as_deref(), &args.message);
    match rt.block_on(call) {
        Ok(line) => {
            println!("{line}");
            if line.starts_with("OK") {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("aadgate dev-grpc-call: {e}");
            ExitCode::from(2)
        }
    }
}
