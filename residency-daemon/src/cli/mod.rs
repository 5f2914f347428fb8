//! The `residency` command line: the top-level parser, and one module per
//! subcommand, each with its arguments and what it does. Errors become
//! exit codes in one place, [`exit`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod api;
mod check;
mod default_config;
mod detach;
mod evidence;
mod exit;
mod explain;
mod flows;
mod lookup;
mod man_pages;
mod probe;
mod replay;
mod report;
mod run;
mod test_policy;
mod violations;

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
                  Exit codes: 0 success, 1 failure, 64 invalid configuration, 65 unusable GeoIP database, 69 API unreachable, 73 output cannot be opened, 77 missing privileges."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Runs the subcommand.
    pub fn execute(self) -> ExitCode {
        self.command.execute()
    }
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
    Run(run::Args),
    /// Check the evidence store (or an export bundle): chain, order,
    /// columns and signed checkpoints.
    #[command(subcommand)]
    Evidence(evidence::Command),
    /// Explain the verdict for one workload and destination: the full chain of reasons.
    ///
    /// Names the workload's tenants and role, the jurisdictions they allow
    /// (the intersection, for a workload that serves several), the rule or
    /// exception that applies, and the GeoIP country, exactly as the kernel
    /// would judge a connect from that workload.
    #[command(
        after_help = "Example:\n  residency explain --config /etc/residency/residency.toml --workload acme-llm --dest 198.51.100.7 --port 443"
    )]
    Explain(explain::Args),
    /// Check a configuration against expected verdicts; exits 1 on any mismatch.
    ///
    /// CASES is a TOML file of [[case]] entries: workload (optional: no
    /// workload means the default policy), destination, port (optional),
    /// expect ("allowed", "flagged" or "blocked"), note (optional). Run it
    /// in CI/CD before deploying a configuration change.
    #[command(
        after_help = "Example CASES file:\n  [[case]]\n  workload = \"acme-llm\"\n  destination = \"198.51.100.7\"\n  expect = \"blocked\"\n  note = \"US LLM endpoint\""
    )]
    TestPolicy(test_policy::Args),
    /// Say what the daemon would decide for addresses, and why, without loading anything.
    ///
    /// Uses the same rules and the same GeoIP tables the kernel would use
    /// (from the configuration and the GeoIP database), and shows what the
    /// full database says about each address.
    #[command(after_help = "Examples:\n  \
        residency lookup 8.8.8.8 2a00:1450:4001::1\n  \
        residency lookup --config /etc/residency/residency.toml --json 203.0.113.9")]
    Lookup(lookup::Args),
    /// Validate a configuration file without loading anything into the kernel.
    ///
    /// Prints a summary and exits 0 if the file is valid; otherwise prints
    /// the first error with its file, line and field, and exits 64.
    Check(check::Args),
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
    Flows(flows::Args),
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
    Violations(violations::Args),
    /// Show what this kernel offers: cgroup v2 mount, tracefs, BTF, program and map support.
    Probe,
    /// Print the built-in configuration: every setting, commented, with its default.
    DefaultConfig,
    /// Judge the recorded flows of a period again under another configuration: what would change.
    ///
    /// Reads the flows from the running daemon's API (the filters of
    /// `residency flows` choose them) and decides each as the kernel would
    /// under CONFIG, without loading anything: the workload by name, then
    /// the host name it resolved (rules, exceptions and the endpoint catalog
    /// that name hosts), else the address against the same GeoIP tables.
    /// Reports, per workload, the flows whose verdict would change, with
    /// examples. With --fail-on-new-blocks it exits 1 if any flow would be
    /// newly blocked: run it in CI/CD before deploying a configuration.
    #[command(after_help = "Examples:\n  \
        sudo residency replay --config new.toml --from 2026-11-01T00:00:00Z\n  \
        sudo residency replay --config new.toml --tenant acme --fail-on-new-blocks\n  \
        residency replay --config new.toml --api http://127.0.0.1:7470 --token-file ./api.token --json")]
    Replay(replay::Args),
    /// Write the record of one tenant's transfers over a period, for an auditor.
    ///
    /// From the running daemon's API: each destination country and
    /// provider with its transfer basis and condition and the flow counts
    /// (GDPR Art. 30(1)(e), Art. 44-49), the violations with their NIS2
    /// timeline and how they were handled, and the evidence proof (the
    /// newest signed checkpoint, and how to verify it offline).
    #[command(after_help = "Examples:\n  \
        sudo residency report --tenant acme --from 2026-11-01T00:00:00Z --to 2026-12-01T00:00:00Z --out acme-2026-11.html\n  \
        sudo residency report --tenant acme --from 2026-11-01T00:00:00Z --to 2026-12-01T00:00:00Z --format json")]
    Report(report::Args),
    /// Detach the programs a daemon left attached, and say what was removed.
    ///
    /// A daemon pins its programs under /sys/fs/bpf/residency/INSTANCE, so
    /// that they keep enforcing the last policy while it is stopped,
    /// restarting or being upgraded (`kernel.persist`, the default), and
    /// after a crash. This is the only command that removes them; from then
    /// on nothing is enforced until a daemon starts again. Refuses while a
    /// daemon runs the instance (stop it first), unless --force.
    #[command(after_help = "Examples:\n  \
        sudo systemctl stop residency && sudo residency detach\n  \
        sudo residency detach --all                            # every instance on this host")]
    Detach(detach::Args),
    /// Write the manual pages (residency.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    ManPages(man_pages::Args),
}

impl Command {
    /// The dispatch table.
    fn execute(self) -> ExitCode {
        match self {
            Command::Run(args) => run::execute(args),
            Command::Evidence(command) => evidence::execute(command),
            Command::Explain(args) => explain::execute(&args),
            Command::TestPolicy(args) => test_policy::execute(&args),
            Command::Lookup(args) => lookup::execute(&args),
            Command::Check(args) => check::execute(&args),
            Command::Flows(args) => flows::execute(args),
            Command::Violations(args) => violations::execute(args),
            Command::Probe => probe::execute(),
            Command::DefaultConfig => default_config::execute(),
            Command::Detach(args) => detach::execute(&args),
            Command::Replay(args) => replay::execute(args),
            Command::Report(args) => report::execute(&args),
            Command::ManPages(args) => man_pages::execute(&args),
        }
    }
}
