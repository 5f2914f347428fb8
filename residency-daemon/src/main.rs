//! The `residency` command: a thin shell over the library.
#![forbid(unsafe_code)]

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use residency_daemon::{
    RunError, RunOptions,
    config::{Config, ConfigError, Output},
    kernel,
};
use tracing_subscriber::EnvFilter;

/// Exit codes (sysexits.h): a configuration the daemon refuses, and missing
/// privileges, each get their own, so that service managers and scripts can
/// tell them apart from a crash.
const EXIT_CONFIG: u8 = 64;
const EXIT_CANTCREAT: u8 = 73;
const EXIT_NOPERM: u8 = 77;

#[derive(Parser)]
#[command(
    name = "residency",
    version,
    about = "Watch, and if asked block, where each workload's network traffic goes.",
    long_about = "residency attaches eBPF programs to connect() and sendmsg() in a cgroup v2 \
                  subtree. Every TCP and UDP connect() and every UDP sendto()/sendmsg() with a \
                  destination address (IPv4 and IPv6) is judged in the kernel against the \
                  configured deny rules before a byte leaves, and reported as one JSON line with \
                  Elastic Common Schema field names. (A connected UDP socket is judged once, at \
                  connect(); raw and packet sockets are not covered.)\n\n\
                  Start with `residency probe` to see what this kernel offers, \
                  `residency default-config > residency.toml` for a commented configuration, \
                  and `sudo residency run --config residency.toml`.",
    after_help = "Logs go to standard error; set RESIDENCY_LOG (e.g. RESIDENCY_LOG=debug) to change how much.\n\
                  Exit codes: 0 success, 1 failure, 64 invalid configuration, 73 output cannot be opened, 77 missing privileges."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the kernel programs and report every outbound connection until SIGINT/SIGTERM.
    ///
    /// Needs root. Records go to the configured output (standard output by
    /// default), one JSON object per line: a `started` record once the
    /// programs are attached, one record per connect or sendmsg decision,
    /// an `events-lost` record whenever the kernel could not report some
    /// decisions, and a `stopped` record with totals after the programs are
    /// detached.
    #[command(after_help = "Examples:\n  \
        sudo residency run                                   # built-in config: monitor the whole host\n  \
        sudo residency run --config /etc/residency/residency.toml\n  \
        sudo residency run --cgroup /system.slice/crm-sync.service --output /var/log/residency.jsonl")]
    Run {
        /// Configuration file (TOML). Without it, the built-in default
        /// (`residency default-config` prints it) is used: monitor mode on
        /// the whole host.
        #[arg(short, long, env = "RESIDENCY_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// cgroup v2 directory to watch instead of `kernel.cgroup`: a path
        /// under the cgroup2 mount, or relative to it.
        #[arg(long, value_name = "PATH")]
        cgroup: Option<PathBuf>,
        /// Where to write records instead of `output.events`: a file
        /// (appended to) or `-` for standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Validate a configuration file without loading anything into the kernel.
    ///
    /// Prints a summary and exits 0 if the file is valid; otherwise prints
    /// the first error with its file, line and field, and exits 64.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show what this kernel offers: cgroup v2 mount, tracefs, BTF, program and map support.
    Probe,
    /// Print the built-in configuration: every setting, commented, with its default.
    DefaultConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_env("RESIDENCY_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    match cli.command {
        Command::DefaultConfig => {
            print!("{}", residency_daemon::config::DEFAULT_CONFIG);
            ExitCode::SUCCESS
        }
        Command::Probe => {
            println!("{}", kernel::probe());
            ExitCode::SUCCESS
        }
        Command::Check { config } => match Config::from_file(&config) {
            Ok(c) => {
                let interlock = c.check_enforce_interlock(c.kernel.cgroup.as_os_str().is_empty());
                if let Err(e) = interlock {
                    return config_error(&e);
                }
                println!(
                    "{}: valid: mode {}, cgroup /{}, {} deny rule(s) with {} destination(s)",
                    c.source,
                    c.mode.as_str(),
                    c.kernel.cgroup.display(),
                    c.deny.len(),
                    c.deny.iter().map(|r| r.destinations.len()).sum::<usize>()
                );
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Run {
            config,
            cgroup,
            output,
        } => {
            let config = match config
                .as_deref()
                .map_or_else(Config::builtin, Config::from_file)
            {
                Ok(c) => c,
                Err(e) => return config_error(&e),
            };
            let options = RunOptions {
                cgroup,
                output: output.map(|p| {
                    if p.as_os_str() == "-" {
                        Output::Stdout
                    } else {
                        Output::File(p)
                    }
                }),
            };
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(residency_daemon::run(config, options)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    match e {
                        RunError::Config(_) => ExitCode::from(EXIT_CONFIG),
                        RunError::Output(_) => ExitCode::from(EXIT_CANTCREAT),
                        RunError::Kernel(k) if k.is_permission() => ExitCode::from(EXIT_NOPERM),
                        _ => ExitCode::FAILURE,
                    }
                }
            }
        }
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_CONFIG)
}
