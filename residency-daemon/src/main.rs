//! The `residency` command: parses the command line, sets up logging, and
//! hands over to the subcommand (`cli/`, one file each).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

mod cli;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_env("RESIDENCY_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    cli.execute()
}
