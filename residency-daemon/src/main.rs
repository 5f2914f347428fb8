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
const EXIT_DATAERR: u8 = 65;
const EXIT_CANTCREAT: u8 = 73;
const EXIT_NOPERM: u8 = 77;

#[derive(Parser)]
#[command(
    name = "residency",
    version,
    about = "Watch, and if asked block, where each workload's network traffic goes.",
    long_about = "residency attaches eBPF programs to connect() and sendmsg() in a cgroup v2 \
                  subtree. Every TCP and UDP connect() and every UDP sendto()/sendmsg() with a \
                  destination address (IPv4 and IPv6) is judged in the kernel before a byte \
                  leaves: by the configured rules (deny rules, internal networks, local ranges), \
                  and otherwise by the destination's country, from GeoIP tables, against the \
                  jurisdictions the policy allows. Each decision is reported as one JSON line \
                  with Elastic Common Schema field names. (A connected UDP socket is judged \
                  once, at connect(); raw and packet sockets are not covered.)\n\n\
                  `residency lookup IP...` says what would be decided for an address, and why.\n\n\
                  Start with `residency probe` to see what this kernel offers, \
                  `residency default-config > residency.toml` for a commented configuration, \
                  and `sudo residency run --config residency.toml`.",
    after_help = "Logs go to standard error; set RESIDENCY_LOG (e.g. RESIDENCY_LOG=debug) to change how much.\n\
                  Exit codes: 0 success, 1 failure, 64 invalid configuration, 65 unusable GeoIP database, 73 output cannot be opened, 77 missing privileges."
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
        /// GeoIP database (.mmdb) instead of `geoip.database` and the
        /// search of the usual places.
        #[arg(long, value_name = "FILE")]
        geoip: Option<PathBuf>,
        /// Accept a configuration file that others than root can write. The
        /// daemon refuses one otherwise: whoever can write it controls the
        /// policy. For development only.
        #[arg(long)]
        allow_insecure_config: bool,
    },
    /// Explain the verdict for one workload and destination: the full chain of reasons.
    ///
    /// Names the workload's tenants and role, the jurisdictions they allow
    /// (the intersection, for a workload that serves several), the rule or
    /// exception that applies, and the GeoIP country, exactly as the kernel
    /// would judge a connect from that workload.
    #[command(
        after_help = "Example:\n  residency explain --config /etc/residency/residency.toml --workload acme-llm --dest 198.51.100.7 --port 443"
    )]
    Explain {
        #[arg(short, long, env = "RESIDENCY_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// GeoIP database (.mmdb) instead of the configured or found one.
        #[arg(long, value_name = "FILE")]
        geoip: Option<PathBuf>,
        /// The workload, by name.
        #[arg(long)]
        workload: String,
        /// The destination address.
        #[arg(long)]
        dest: std::net::IpAddr,
        /// The destination port (shown; verdicts do not depend on it).
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration against expected verdicts; exits 1 on any mismatch.
    ///
    /// CASES is a TOML file of [[case]] entries: workload (optional: no
    /// workload means the default policy), destination, port (optional),
    /// expect ("allowed", "flagged" or "blocked"), note (optional). Run it
    /// in CI/CD before deploying a configuration change.
    #[command(
        after_help = "Example CASES file:\n  [[case]]\n  workload = \"acme-llm\"\n  destination = \"198.51.100.7\"\n  expect = \"blocked\"\n  note = \"US LLM endpoint\""
    )]
    TestPolicy {
        #[arg(short, long, env = "RESIDENCY_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        geoip: Option<PathBuf>,
        /// The cases file.
        cases: PathBuf,
    },
    /// Say what the daemon would decide for addresses, and why, without loading anything.
    ///
    /// Uses the same rules and the same GeoIP tables the kernel would use
    /// (from the configuration and the GeoIP database), and shows what the
    /// full database says about each address.
    #[command(after_help = "Examples:\n  \
        residency lookup 8.8.8.8 2a00:1450:4001::1\n  \
        residency lookup --config /etc/residency/residency.toml --json 203.0.113.9")]
    Lookup {
        /// Configuration file (default: the built-in one).
        #[arg(short, long, env = "RESIDENCY_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// GeoIP database (.mmdb) instead of the configured or found one.
        #[arg(long, value_name = "FILE")]
        geoip: Option<PathBuf>,
        /// One JSON object per address instead of text.
        #[arg(long)]
        json: bool,
        /// Decide as for this workload (default: a process no workload
        /// selects, under the default policy).
        #[arg(long)]
        workload: Option<String>,
        /// IPv4 or IPv6 addresses.
        #[arg(required = true, value_name = "IP")]
        ips: Vec<std::net::IpAddr>,
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
                    "{}: valid: mode {}, cgroup /{}, allowed {}, unknown destinations: {}, \
                     {} deny rule(s), {} internal network rule(s)",
                    c.source,
                    c.mode.as_str(),
                    c.kernel.cgroup.display(),
                    c.policy.allowed_names.join(", "),
                    c.policy.unknown.as_str(),
                    c.deny_rules().count(),
                    c.rules
                        .iter()
                        .filter(|r| matches!(
                            r.kind,
                            residency_daemon::config::RuleKind::Internal(_)
                        ))
                        .count(),
                );
                if !c.tenants.is_empty() || !c.workloads.is_empty() {
                    println!(
                        "{} tenant(s), {} workload(s), {} exception(s)",
                        c.tenants.len(),
                        c.workloads.len(),
                        c.exceptions.len()
                    );
                }
                for w in c.warnings(jiff::Timestamp::now()) {
                    eprintln!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Lookup {
            config,
            geoip,
            json,
            workload,
            ips,
        } => lookup_command(
            config.as_deref(),
            geoip.as_deref(),
            workload.as_deref(),
            json,
            &ips,
        ),
        Command::Explain {
            config,
            geoip,
            workload,
            dest,
            port,
            json,
        } => {
            if let Some(p) = port {
                eprintln!("(port {p}: verdicts do not depend on the port)");
            }
            lookup_command(
                config.as_deref(),
                geoip.as_deref(),
                Some(&workload),
                json,
                &[dest],
            )
        }
        Command::TestPolicy {
            config,
            geoip,
            cases,
        } => test_policy_command(config.as_deref(), geoip.as_deref(), &cases),
        Command::Run {
            config,
            cgroup,
            output,
            geoip,
            allow_insecure_config,
        } => run_command(config, cgroup, output, geoip, allow_insecure_config),
    }
}

fn run_command(
    config: Option<PathBuf>,
    cgroup: Option<PathBuf>,
    output: Option<PathBuf>,
    geoip: Option<PathBuf>,
    allow_insecure_config: bool,
) -> ExitCode {
    // The file is checked and read once, here; reloads do the same.
    let parsed = match config.as_deref().map_or_else(Config::builtin, |p| {
        residency_daemon::control::read_config(p, !allow_insecure_config)
    }) {
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
        geoip,
        config_path: config,
        allow_insecure_config,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(residency_daemon::run(parsed, options)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                RunError::Config(_) => ExitCode::from(EXIT_CONFIG),
                RunError::Output(_) => ExitCode::from(EXIT_CANTCREAT),
                RunError::Geo(_) => ExitCode::from(EXIT_DATAERR),
                RunError::Kernel(k) if k.is_permission() => ExitCode::from(EXIT_NOPERM),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn test_policy_command(
    config: Option<&std::path::Path>,
    geoip: Option<&std::path::Path>,
    cases: &std::path::Path,
) -> ExitCode {
    let config = match config.map_or_else(Config::builtin, Config::from_file) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let text = match std::fs::read_to_string(cases) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: cannot read the file: {e}", cases.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match residency_daemon::test_policy(&config, geoip, &text, &cases.display().to_string()) {
        Ok(results) => {
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
        Err(RunError::Config(e)) => config_error(&e),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_DATAERR)
        }
    }
}

fn lookup_command(
    config: Option<&std::path::Path>,
    geoip: Option<&std::path::Path>,
    workload: Option<&str>,
    json: bool,
    ips: &[std::net::IpAddr],
) -> ExitCode {
    let config = match config.map_or_else(Config::builtin, Config::from_file) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    match residency_daemon::lookup(&config, geoip, workload, ips) {
        Ok(reports) => {
            for r in &reports {
                if json {
                    println!("{}", lookup_json(r));
                } else {
                    print!("{}", lookup_text(r));
                }
            }
            ExitCode::SUCCESS
        }
        Err(e @ RunError::UnknownWorkload { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_DATAERR)
        }
    }
}

fn verdict_word(v: residency_common::Verdict) -> &'static str {
    residency_daemon::sinks::ecs::verdict_str(v)
}

fn lookup_text(r: &residency_daemon::LookupReport) -> String {
    use std::fmt::Write as _;
    let d = &r.decision;
    let mut out = String::new();
    let _ = writeln!(out, "{}", r.ip);
    let _ = writeln!(out, "  verdict:    {}", verdict_word(d.verdict));
    let by = residency_daemon::sinks::ecs::kind_str(d.kind);
    match &r.rule {
        Some(rule) => {
            let _ = writeln!(
                out,
                "  decided by: {by} (rule \"{rule}\", id {})",
                d.rule_id
            );
        }
        None => {
            let _ = writeln!(out, "  decided by: {by}");
        }
    }
    if let Some(c) = d.country {
        let _ = writeln!(out, "  country:    {c} (as the kernel judges it)");
    }
    if let Some(det) = &r.detail {
        let mut parts = Vec::new();
        if let Some(c) = det.country {
            parts.push(format!("located {c}"));
        }
        if let Some(c) = det.registered_country {
            parts.push(format!("registered {c}"));
        }
        if let Some(c) = &det.continent {
            parts.push(format!("continent {c}"));
        }
        if let Some(n) = det.asn {
            parts.push(
                format!("AS{n} {}", det.as_org.as_deref().unwrap_or(""))
                    .trim_end()
                    .to_owned(),
            );
        }
        if !parts.is_empty() {
            let _ = writeln!(out, "  database:   {}", parts.join(", "));
        }
    }
    match &r.database {
        Some((label, path)) => {
            let _ = writeln!(out, "  data:       {label} ({})", path.display());
        }
        None => {
            let _ = writeln!(out, "  data:       no GeoIP database found");
        }
    }
    for (i, reason) in d.reasons.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {} {reason}",
            if i == 0 { "why:       " } else { "           " }
        );
    }
    out
}

fn lookup_json(r: &residency_daemon::LookupReport) -> serde_json::Value {
    let d = &r.decision;
    serde_json::json!({
        "ip": r.ip.to_string(),
        "verdict": verdict_word(d.verdict),
        "decided_by": residency_daemon::sinks::ecs::kind_str(d.kind),
        "rule": { "id": d.rule_id, "name": r.rule },
        "country": d.country.map(|c| c.to_string()),
        "database": r.detail.as_ref().map(|det| serde_json::json!({
            "country": det.country.map(|c| c.to_string()),
            "registered_country": det.registered_country.map(|c| c.to_string()),
            "continent": det.continent,
            "asn": det.asn,
            "as_org": det.as_org,
        })),
        "geoip": r.database.as_ref().map(|(label, path)| serde_json::json!({ "version": label, "path": path.display().to_string() })),
        "reasons": d.reasons,
    })
}
