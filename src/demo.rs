//! `aadgate demo`.

use std::process::ExitCode;

use crate::cli::DemoArgs;

/// Entry point of `aadgate demo`.
pub fn main(args: &DemoArgs) -> ExitCode {
    let _ = args;
    eprintln!("aadgate demo: not built yet");
    ExitCode::FAILURE
}
