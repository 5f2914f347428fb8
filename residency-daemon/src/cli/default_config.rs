//! `residency default-config`: the built-in configuration, commented.

use std::process::ExitCode;

pub fn execute() -> ExitCode {
    print!("{}", residency_daemon::config::DEFAULT_CONFIG);
    ExitCode::SUCCESS
}
