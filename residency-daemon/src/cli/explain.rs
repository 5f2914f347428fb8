//! `residency explain`: the full chain of reasons for one workload and
//! destination (a `lookup` of one address, as that workload).

use std::{path::PathBuf, process::ExitCode};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(short, long, env = "RESIDENCY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// GeoIP database (.mmdb) instead of the configured or found one.
    #[arg(long, value_name = "FILE")]
    geoip: Option<PathBuf>,
    /// The workload, by name.
    #[arg(long)]
    workload: String,
    /// The destination: an address, or a host name (judged by the
    /// endpoint catalog and the rules that name hosts).
    #[arg(long, value_name = "IP|NAME")]
    dest: String,
    /// The destination port (shown; verdicts do not depend on it).
    #[arg(long)]
    port: Option<u16>,
    #[arg(long)]
    json: bool,
}

pub fn execute(args: &Args) -> ExitCode {
    if let Some(p) = args.port {
        eprintln!("(port {p}: verdicts do not depend on the port)");
    }
    let dest = match super::lookup::Target::parse(&args.dest) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("residency explain: {e}");
            return ExitCode::from(64);
        }
    };
    super::lookup::decide_and_print(
        args.config.as_deref(),
        args.geoip.as_deref(),
        Some(&args.workload),
        args.json,
        &[dest],
    )
}
