//! `residency probe`: what this kernel offers.

use std::process::ExitCode;

use residency_daemon::kernel;

pub fn execute() -> ExitCode {
    println!("{}", kernel::probe());
    ExitCode::SUCCESS
}
