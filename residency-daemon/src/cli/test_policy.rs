//! `residency test-policy`: a configuration against expected verdicts, as
//! a CI/CD pipeline runs it before deploying a change.

use std::{path::PathBuf, process::ExitCode};

use residency_daemon::config::{Config, ConfigError};

use super::exit;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short, long, env = "RESIDENCY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[arg(long, value_name = "FILE")]
    geoip: Option<PathBuf>,
    /// The cases file.
    cases: PathBuf,
}

pub fn execute(args: &Args) -> ExitCode {
    let config = match args
        .config
        .as_deref()
        .map_or_else(Config::builtin, Config::from_file)
    {
        Ok(c) => c,
        Err(e) => return exit::config(&e),
    };
    let source = args.cases.display().to_string();
    let text = match std::fs::read_to_string(&args.cases) {
        Ok(t) => t,
        Err(e) => {
            return exit::config(&ConfigError::file(
                source,
                format!("cannot read the file: {e}"),
            ));
        }
    };
    let results =
        match residency_daemon::test_policy(&config, args.geoip.as_deref(), &text, &source) {
            Ok(r) => r,
            Err(e) => return exit::lookup(&e),
        };
    let failed = results.iter().filter(|r| !r.passed()).count();
    for r in &results {
        if r.passed() {
            println!("ok       {}: {}", r.label, r.got);
        } else {
            println!(
                "MISMATCH {}: expected {}, got {}",
                r.label, r.expected, r.got
            );
            for reason in &r.reasons {
                println!("           {reason}");
            }
        }
    }
    println!("{} passed, {failed} failed", results.len() - failed);
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
