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
const EXIT_USAGE: u8 = 2;
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
    Run(RunArgs),
    /// Check the evidence store (or an export bundle): chain, order,
    /// columns and signed checkpoints.
    #[command(subcommand)]
    Evidence(EvidenceCommand),
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
    /// List the decisions the daemon recorded (flows), newest first.
    ///
    /// Asks the running daemon's REST API, and prints a table: sequence
    /// number, time, verdict, workload, tenants, destination, country and
    /// the rule that decided. Filters combine with AND.
    #[command(after_help = "Examples:\n  \
        sudo residency flows                                   # the newest 100 decisions\n  \
        sudo residency flows --verdict blocked --tenant acme\n  \
        sudo residency flows --country US --from 2026-11-01T00:00:00Z --all\n  \
        residency flows --api http://127.0.0.1:7470 --token-file ./api.token --json | jq .\n\n\
        Without --api: the unix socket /run/residency/api.sock when run as root and it exists,\n\
        otherwise http://127.0.0.1:7470 with the token from /var/lib/residency/api.token.")]
    Flows {
        #[command(flatten)]
        filters: FilterArgs,
        #[command(flatten)]
        page: PageArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List violations, or acknowledge or resolve one.
    ///
    /// A violation groups the blocked or flagged flows of one workload to
    /// one destination under one rule until it is resolved. The table
    /// shows each one's state, count, first sighting and its NIS2 early
    /// warning deadline (24 hours after the daemon became aware). `ack`
    /// and `resolve` are recorded in the evidence chain with the note and
    /// who did it.
    #[command(after_help = "Examples:\n  \
        sudo residency violations                              # newest first\n  \
        sudo residency violations --state open --tenant acme\n  \
        sudo residency violations ack 12 --note \"on-call is looking; ticket SEC-42\"\n  \
        sudo residency violations resolve 12 --note \"endpoint moved to eu-west-1\"\n\n\
        Without --api: the unix socket /run/residency/api.sock when run as root and it exists,\n\
        otherwise http://127.0.0.1:7470 with the token from /var/lib/residency/api.token.")]
    Violations {
        #[command(subcommand)]
        action: Option<ViolationAction>,
        #[command(flatten)]
        filters: FilterArgs,
        /// Only violations in this state.
        #[arg(long, value_parser = ["open", "acknowledged", "resolved"])]
        state: Option<String>,
        #[command(flatten)]
        page: PageArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show what this kernel offers: cgroup v2 mount, tracefs, BTF, program and map support.
    Probe,
    /// Print the built-in configuration: every setting, commented, with its default.
    DefaultConfig,
}

/// `residency evidence ...`
#[derive(Debug, Subcommand)]
enum EvidenceCommand {
    /// Re-read every record and report the first whose bytes, order or
    /// chain do not match, and any checkpoint whose signature fails.
    ///
    /// Recomputes the SHA-256 chain from the first record (or from the
    /// signed pruning point), re-derives every indexed column from the
    /// record's bytes, and checks each Ed25519 checkpoint's signature and
    /// chain head. Exits 0 when everything matches, 1 on any fault.
    #[command(after_help = "Examples:\n  \
        residency evidence verify                       # the installed store, /var/lib/residency\n  \
        residency evidence verify --store /srv/residency --public-key KEY\n  \
        residency evidence verify --bundle evidence-2026-11.tar --public-key KEY\n\n\
        KEY is the base64 public key served at /v1/checkpoints/latest (or kept by your SIEM).\n\
        Without it the key beside the store (or in the bundle) is used, which proves\n\
        consistency but not who signed.")]
    Verify {
        /// Evidence directory or database file.
        #[arg(long, value_name = "PATH", default_value = residency_daemon::config::DEFAULT_STATE_DIR, conflicts_with = "bundle")]
        store: PathBuf,
        /// An export bundle (tar from /v1/evidence/export) instead of a store.
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
        /// The Ed25519 public key to trust (base64 or hex).
        #[arg(long, value_name = "KEY")]
        public_key: Option<String>,
        /// A checkpoint kept outside this host (your SIEM's copy, or
        /// /v1/checkpoints/latest saved earlier), as SEQ:HEAD: the chain
        /// must pass through it. Only this catches records cut from, or
        /// rewritten after, the newest checkpoint on the host. Repeatable.
        #[arg(long, value_name = "SEQ:HEAD")]
        checkpoint: Vec<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Options of `residency run`.
#[derive(Debug, clap::Args)]
struct RunArgs {
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
    /// Evidence directory instead of `evidence.directory` (the store,
    /// its signing key and the API token live there).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// API address on loopback instead of `api.listen` (`off`: none; port
    /// 0: any free port, written to api.addr in the evidence directory).
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<String>,
    /// API unix socket instead of `api.socket` (`off`: none).
    #[arg(long, value_name = "PATH")]
    api_socket: Option<PathBuf>,
}

#[expect(clippy::too_many_lines, reason = "one arm per command")]
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
                for sink in &c.sinks {
                    let r = sink.receives;
                    let takes: Vec<&str> = [
                        ("violations", r.violations),
                        ("flows", r.flows),
                        ("checkpoints", r.checkpoints),
                        ("gaps", r.gaps),
                    ]
                    .iter()
                    .filter(|(_, on)| *on)
                    .map(|(n, _)| *n)
                    .collect();
                    println!(
                        "sink {}: {} ({}), receives {}",
                        sink.name,
                        sink.kind(),
                        sink.format,
                        takes.join(", ")
                    );
                }
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
        Command::Flows { filters, page, api } => {
            list_command(Listing::Flows, api_query(filters, &page, None), &page, &api)
        }
        Command::Violations {
            action,
            filters,
            state,
            page,
            api,
        } => violations_command(action, filters, state, &page, &api),
        Command::Run(args) => run_command(args),
        Command::Evidence(EvidenceCommand::Verify {
            store,
            bundle,
            public_key,
            checkpoint,
            json,
        }) => verify_command(
            &store,
            bundle.as_deref(),
            public_key.as_deref(),
            &checkpoint,
            json,
        ),
    }
}

fn run_command(args: RunArgs) -> ExitCode {
    let RunArgs {
        config,
        cgroup,
        output,
        geoip,
        allow_insecure_config,
        state_dir,
        api_listen,
        api_socket,
    } = args;
    let api_listen = match api_listen.as_deref() {
        None => None,
        Some("off") => Some(None),
        Some(a) => match a.parse::<std::net::SocketAddr>() {
            Ok(addr) if addr.ip().is_loopback() => Some(Some(addr)),
            _ => {
                eprintln!(
                    "error: --api-listen {a}: expected a loopback address and port, e.g. 127.0.0.1:7470, or off"
                );
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let api_socket = api_socket.map(|p| (p.as_os_str() != "off").then_some(p));
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
        state_dir,
        api_listen,
        api_socket,
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
                RunError::Config(_) | RunError::Sink(_) => ExitCode::from(EXIT_CONFIG),
                RunError::Output(_) | RunError::Evidence(_) => ExitCode::from(EXIT_CANTCREAT),
                RunError::Geo(_) => ExitCode::from(EXIT_DATAERR),
                RunError::Kernel(k) if k.is_permission() => ExitCode::from(EXIT_NOPERM),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

fn verify_command(
    store: &std::path::Path,
    bundle: Option<&std::path::Path>,
    public_key: Option<&str>,
    checkpoints: &[String],
    json: bool,
) -> ExitCode {
    use residency_daemon::evidence::{chain, verify};
    let key = match public_key.map(chain::parse_public_key).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: --public-key: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut pins = Vec::new();
    for c in checkpoints {
        let parsed = c.split_once(':').and_then(|(seq, head)| {
            Some((seq.trim().parse::<u64>().ok()?, chain::unhex::<32>(head)?))
        });
        let Some(pin) = parsed else {
            eprintln!(
                "error: --checkpoint {c}: expected SEQ:HEAD, the sequence number and the 64 hex digits of the chain head (as /v1/checkpoints/latest gives them)"
            );
            return ExitCode::from(EXIT_USAGE);
        };
        pins.push(pin);
    }
    let is_tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut progress = |done: u64, total: u64| {
        if is_tty && !json {
            eprint!("\rverifying: {done} of {total} records");
        }
    };
    let report = match bundle {
        Some(b) => verify::bundle(b, key),
        None => verify::store(store, key, &pins, &mut progress),
    };
    if is_tty && !json && bundle.is_none() {
        eprintln!();
    }
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_DATAERR);
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(t) => println!("{t}"),
            Err(e) => eprintln!("error: {e}"),
        }
    } else {
        let what = bundle.unwrap_or(store).display();
        println!(
            "{what}: {} records ({}..{}), {:.1} MB in {:.2} s ({:.0} MB/s)",
            report.records,
            report.first_seq.unwrap_or(0),
            report.last_seq.unwrap_or(0),
            report.mb(),
            report.elapsed.as_secs_f64(),
            report.mb_per_s()
        );
        if report.base_seq > 0 {
            println!(
                "  chain starts after record {} (pruned or exported from there)",
                report.base_seq
            );
        }
        println!(
            "  checkpoints: {} of {} valid{}; public key: {}",
            report.checkpoints_valid,
            report.checkpoints,
            report
                .last_signed_seq
                .map_or(String::new(), |s| format!(", newest signed at record {s}")),
            report.key_source
        );
        if report.unsigned_tail > 0 {
            println!(
                "  {} record(s) after the newest checkpoint are chained but not yet signed",
                report.unsigned_tail
            );
        }
        if report.ok() {
            println!("OK: every record and checkpoint matches");
        } else {
            for f in &report.faults {
                println!("FAULT: {}", f.what);
            }
            if report.more_faults > 0 {
                println!("... and {} more faults", report.more_faults);
            }
            if let Some(first) = report.faults.first() {
                eprintln!("error: evidence does not verify: {}", first.what);
            }
        }
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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

use residency_daemon::api::client::{
    self as api_client, Client, ClientError, ListOptions, Listing,
};

/// Filters of `residency flows` and `residency violations`, passed to the
/// API as they are (it checks them and names any that is wrong).
#[derive(Debug, clap::Args)]
struct FilterArgs {
    /// Only at or after this time (RFC 3339, e.g. 2026-11-22T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    from: Option<String>,
    /// Only before this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    to: Option<String>,
    /// Only flows carrying this tenant's data.
    #[arg(long)]
    tenant: Option<String>,
    /// Only this workload, by name.
    #[arg(long)]
    workload: Option<String>,
    /// Only workloads of this role (llm, crm-sync, logging, backup, ...).
    #[arg(long)]
    role: Option<String>,
    /// Only destinations in this country (ISO 3166 alpha-2, any case).
    #[arg(long, value_name = "CC")]
    country: Option<String>,
    /// Only this verdict.
    #[arg(long, value_parser = ["allowed", "flagged", "blocked"])]
    verdict: Option<String>,
    /// Only this destination address.
    #[arg(long, value_name = "IP")]
    dst_ip: Option<std::net::IpAddr>,
    /// Only this destination host name.
    #[arg(long, value_name = "NAME")]
    dst_name: Option<String>,
}

/// Paging of `residency flows` and `residency violations`.
#[derive(Debug, clap::Args)]
struct PageArgs {
    /// Rows per page (1 to 1000; the API's default is 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: Option<u32>,
    /// Follow the pages to the end (with --json: one JSON object per line).
    #[arg(long)]
    all: bool,
    /// Continue after this cursor (the `next` of a previous page).
    #[arg(long, value_name = "N")]
    cursor: Option<u64>,
    /// Oldest first instead of newest first.
    #[arg(long)]
    asc: bool,
}

/// How the API commands reach the daemon.
#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// The API: a unix socket path, or http://HOST:PORT. Default: the
    /// socket /run/residency/api.sock when run as root and it exists, else
    /// <http://127.0.0.1:7470> (the port in /var/lib/residency/api.addr).
    #[arg(long, env = "RESIDENCY_API", value_name = "SOCKET|URL", global = true)]
    api: Option<String>,
    /// The bearer token for TCP (default /var/lib/residency/api.token).
    #[arg(
        long,
        env = "RESIDENCY_API_TOKEN_FILE",
        value_name = "FILE",
        global = true
    )]
    token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// `residency violations ack|resolve`.
#[derive(Debug, Subcommand)]
enum ViolationAction {
    /// Acknowledge an open violation: someone is on it.
    Ack {
        /// The violation's id (the ID column).
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        /// Why: who looked and what happens next (at most 4096 bytes).
        #[arg(long)]
        note: String,
    },
    /// Resolve an open or acknowledged violation: it is dealt with. A
    /// repeat of the same breach afterwards opens a new violation.
    Resolve {
        /// The violation's id (the ID column).
        #[arg(value_parser = clap::value_parser!(i64).range(1..))]
        id: i64,
        /// What was done (at most 4096 bytes).
        #[arg(long)]
        note: String,
    },
}

fn api_query(filters: FilterArgs, page: &PageArgs, state: Option<String>) -> Vec<(String, String)> {
    let FilterArgs {
        from,
        to,
        tenant,
        workload,
        role,
        country,
        verdict,
        dst_ip,
        dst_name,
    } = filters;
    [
        ("from", from),
        ("to", to),
        ("tenant", tenant),
        ("workload", workload),
        ("role", role),
        ("country", country),
        ("verdict", verdict),
        ("dst_ip", dst_ip.map(|ip| ip.to_string())),
        ("dst_name", dst_name),
        ("state", state),
        ("cursor", page.cursor.map(|c| c.to_string())),
        ("order", page.asc.then(|| "asc".to_owned())),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
    .collect()
}

/// Runs one API command: finds the API, runs `f` on a small runtime, and
/// turns its error into a message and an exit code.
fn with_api<F, Fut>(api: &ApiArgs, f: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let client = match Client::discover(api.api.as_deref(), api.token_file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f(client)) {
        Ok(()) => ExitCode::SUCCESS,
        // `residency flows | head`: not an error.
        Err(ClientError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn list_command(
    what: Listing,
    query: Vec<(String, String)>,
    page: &PageArgs,
    api: &ApiArgs,
) -> ExitCode {
    let opts = ListOptions {
        query,
        limit: page.limit,
        all: page.all,
        json: api.json,
    };
    with_api(api, async |client| {
        let mut out = std::io::stdout().lock();
        let listed = api_client::list(&client, what, &opts, &mut out).await?;
        if let (Some(next), false) = (listed.next, opts.json) {
            eprintln!("(more: --cursor {next} for the next page, or --all)");
        }
        Ok(())
    })
}

fn violations_command(
    action: Option<ViolationAction>,
    filters: FilterArgs,
    state: Option<String>,
    page: &PageArgs,
    api: &ApiArgs,
) -> ExitCode {
    let (id, resolve, note) = match action {
        None => {
            return list_command(
                Listing::Violations,
                api_query(filters, page, state),
                page,
                api,
            );
        }
        Some(ViolationAction::Ack { id, note }) => (id, false, note),
        Some(ViolationAction::Resolve { id, note }) => (id, true, note),
    };
    if !api_query(filters, page, state).is_empty() || page.limit.is_some() || page.all {
        eprintln!(
            "error: filters and paging apply to the list; `ack` and `resolve` take an id and --note"
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let json = api.json;
    with_api(api, async |client| {
        let mut out = std::io::stdout().lock();
        api_client::transition(&client, id, resolve, &note, json, &mut out).await?;
        Ok(())
    })
}
