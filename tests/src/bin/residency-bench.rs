//! `residency-bench connect`: what residency costs a workload's `connect()`
//! and `sendto()`, measured side by side in one run.
//!
//! A client in a child cgroup makes a storm of loopback TCP connects and a
//! storm of unconnected UDP sends, timing every call. Three cases run
//! interleaved, round after round (the order rotates each round, so drift
//! in the machine does not favour one case):
//!
//! - `none`: no programs attached to the cgroup;
//! - `programs`: the kernel programs attached, with a minimal in-process
//!   reader that drains the ring buffer and discards the records (the cost
//!   of the kernel side alone);
//! - `daemon`: the real `residency run` process attached, enriching every
//!   record and writing it as JSON to a file (the whole cost on this 2-core
//!   machine, where the daemon competes with the client for CPU).
//!
//! - `daemon, wakeup per event`: the daemon again, but with the kernel told
//!   to wake it for every record (`wakeup_kib = 0`): the naive design this
//!   one avoids, kept in the table so the reason stays visible.
//!
//! For the daemon cases the run also checks the books: every call the client
//! made must be in the daemon's output or counted as lost.
#![forbid(unsafe_code)]
#![expect(
    clippy::cast_precision_loss,
    clippy::too_many_lines,
    reason = "a benchmark report: counts far below 2^52 become floats for rates, and each \
              table is written out in one readable sequence"
)]

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use clap::{Parser, Subcommand};
use residency_daemon::{config::Config, kernel};
use residency_tests::{
    ClientOptions, Daemon, Listener, Op, TestCgroup, action, flows, privileged_or_skip, run_client,
};
use serde_json::Value;

#[derive(Parser)]
#[command(about = "residency benchmarks (need root); `cargo xtask bench connect` runs this")]
struct Cli {
    #[command(subcommand)]
    bench: BenchCmd,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// The evidence store: ingest rate, kernel-to-queryable latency, query
    /// latency over a large store, verify speed, and size.
    Evidence {
        /// Records in the store the queries and verify run over.
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
        /// Records in the timed ingest (pre-encoded, held in memory).
        #[arg(long, default_value_t = 1_000_000)]
        ingest: u64,
        /// Queries per filter shape.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Events per second for the latency case.
        #[arg(long, default_value_t = 50_000)]
        rate: u64,
        /// Seconds of paced traffic per round of the latency case.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Rounds of the latency case (each with a fresh daemon).
        #[arg(long, default_value_t = 3)]
        latency_rounds: usize,
        /// Run the latency case only (no table is written).
        #[arg(long)]
        latency_only: bool,
        /// Where the scratch store goes (default /var/tmp; needs ~6 GB
        /// for 10 M records).
        #[arg(long)]
        scratch: Option<PathBuf>,
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// SIEM sinks: alerts per second per sink type to real receivers on
    /// loopback, and connect latency with a dead sink and a live one.
    Siem {
        /// Alerts per sink type (the webhook gets a tenth: one request
        /// each).
        #[arg(long, default_value_t = 20_000)]
        alerts: u64,
        /// Rounds of the kernel-path cases.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// TCP connects per case per round.
        #[arg(long, default_value_t = 20_000)]
        connects: u64,
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// 1,000 workload policies with the full GeoIP tables: connect cost,
    /// and how long a policy reload takes.
    Policy {
        /// The GeoIP database (default: `RESIDENCY_DEFAULT_GEOIP`).
        #[arg(long, env = "RESIDENCY_DEFAULT_GEOIP")]
        db: PathBuf,
        /// Workloads (each with its own policy and cgroup).
        #[arg(long, default_value_t = 1000)]
        workloads: usize,
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        #[arg(long, default_value_t = 20_000)]
        connects: u64,
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Process tracking: the cost of starting a process (fork + exec +
    /// exit) inside the watched cgroup and outside it, with and without
    /// the daemon's tracepoints.
    Process {
        /// Rounds of the cases.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Processes started per case per round.
        #[arg(long, default_value_t = 2000)]
        spawns: u64,
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// The full GeoIP database: prepare and load time, kernel memory (ours
    /// and a naive trie), userspace lookups, connect cost with the tables
    /// and during a hot swap.
    Geoip {
        /// The database (default: `RESIDENCY_DEFAULT_GEOIP`, which
        /// `cargo xtask bench geoip` sets to the fetched CC0 file).
        #[arg(long, env = "RESIDENCY_DEFAULT_GEOIP")]
        db: PathBuf,
        /// Rounds of the connect cases.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// TCP connects per case per round.
        #[arg(long, default_value_t = 20_000)]
        connects: u64,
        /// Markdown file to write the tables into (between markers).
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Name tracking: `connect()` right after a DNS answer with the name
    /// programs and without, DNS answers per second with no name lost, and
    /// the kernel name map's memory at 100,000 names and its bound.
    Names {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Connects (each after its own DNS answer) per case per round.
        #[arg(long, default_value_t = 10_000)]
        connects: u64,
        /// DNS queries in the answers-per-second case.
        #[arg(long, default_value_t = 50_000)]
        answers: u64,
        /// Distinct names that fill the kernel name map.
        #[arg(long, default_value_t = 100_000)]
        fill: u32,
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Pods on a real containerd: from a pod's cgroup appearing to its
    /// policy in the kernel (and to its sandbox ready and first container
    /// started), and the daemon's memory with many pods on the node.
    Pods {
        /// Pods timed one after another.
        #[arg(long, default_value_t = 100)]
        pods: usize,
        /// Pods running at once for the memory case.
        #[arg(long, default_value_t = 500)]
        memory_pods: usize,
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Start and upgrade with the full GeoIP tables: from spawning the
    /// daemon to its programs (and, for an upgrade, the new policy) in
    /// force, and whether any denied connect got through meanwhile.
    Upgrade {
        /// Start-then-upgrade rounds.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// The GeoIP database (default: `RESIDENCY_DEFAULT_GEOIP`).
        #[arg(long, env = "RESIDENCY_DEFAULT_GEOIP")]
        db: PathBuf,
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// (Used by `upgrade`.) Joins CGROUP and connects to KEEP (and UNTIL)
    /// until EPERM; prints the time and how many connects got through.
    #[command(hide = true)]
    UpgradeProbe {
        cgroup: PathBuf,
        keep: std::net::SocketAddr,
        #[arg(long)]
        until: Option<std::net::SocketAddr>,
    },
    /// The daemon's resident memory, idle with the full `GeoIP` tables and
    /// the API up, and after many flows.
    Memory {
        /// The full database (default: `RESIDENCY_DEFAULT_GEOIP`).
        #[arg(long, env = "RESIDENCY_DEFAULT_GEOIP")]
        db: PathBuf,
        /// Fresh daemons measured (the median is reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// UDP datagrams sent (each a record) before the second reading.
        #[arg(long, default_value_t = 1_000_000)]
        flows: u64,
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Following flows: connect, sendto and bulk TCP cost with flows off
    /// and on, the daemon, and the nftables country set; then the evidence
    /// of 1 M datagrams to 10 destinations with flows off and on.
    Flows {
        /// The full database (default: `RESIDENCY_DEFAULT_GEOIP`): the
        /// daemon's, and the nftables set's US prefixes.
        #[arg(long, env = "RESIDENCY_DEFAULT_GEOIP")]
        db: PathBuf,
        #[arg(long, default_value_t = 15)]
        rounds: usize,
        /// TCP connects per case per round.
        #[arg(long, default_value_t = 10_000)]
        connects: u64,
        /// UDP sends per case per round.
        #[arg(long, default_value_t = 50_000)]
        sends: u64,
        /// MiB per bulk transfer (five per case per round).
        #[arg(long, default_value_t = 128)]
        bulk_mib: u64,
        /// Datagrams of the evidence volume case.
        #[arg(long, default_value_t = 1_000_000)]
        datagrams: u64,
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// The dashboard over a large store: each page's answer time over
    /// HTTP and its load in Chromium.
    Ui {
        /// Records in the store.
        #[arg(long, default_value_t = 10_000_000)]
        records: u64,
        /// Requests per page.
        #[arg(long, default_value_t = 50)]
        loads: usize,
        /// Where the scratch store goes (default /var/tmp; 10 M records
        /// take about 6 GB).
        #[arg(long)]
        scratch: Option<PathBuf>,
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// Under a real systemd (a booted container): from `systemctl start`
    /// to ready, with the full `GeoIP` database and without one.
    Systemd {
        /// The full database (default: `RESIDENCY_DEFAULT_GEOIP`, which
        /// `cargo xtask bench systemd` sets to the fetched CC0 file).
        #[arg(long, env = "RESIDENCY_DEFAULT_GEOIP")]
        db: PathBuf,
        /// Starts per case.
        #[arg(long, default_value_t = 9)]
        runs: usize,
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// (Used by `pods`.) Waits for a pod's cgroup, joins a cgroup below it
    /// and connects to DEST until EPERM; prints both times.
    #[command(hide = true)]
    PodProbe {
        pod_dir: PathBuf,
        dest: std::net::SocketAddr,
    },
    /// Latency of connect and sendto without programs, with programs, with the daemon.
    Connect {
        /// Rounds of the three cases.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// TCP connects per case per round.
        #[arg(long, default_value_t = 20_000)]
        connects: u64,
        /// UDP sends per case per round.
        #[arg(long, default_value_t = 100_000)]
        sends: u64,
        /// Markdown file to write the table into (between markers).
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    None,
    Programs,
    Daemon,
    DaemonWakeEach,
}

impl Case {
    const ALL: [Case; 4] = [
        Case::None,
        Case::Programs,
        Case::Daemon,
        Case::DaemonWakeEach,
    ];
    fn name(self) -> &'static str {
        match self {
            Case::None => "no programs",
            Case::Programs => "programs attached",
            Case::Daemon => "programs + daemon",
            Case::DaemonWakeEach => "programs + daemon, wakeup per event",
        }
    }
}

/// One storm's numbers.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    p50: f64,
    p99: f64,
    per_sec: f64,
}

#[derive(Default)]
struct Books {
    calls: u64,
    reported: u64,
    lost: u64,
}

const MONITOR_CONFIG: &str = r#"
mode = "monitor"

# The built-in example rule: every lookup walks the deny tries.
[[deny]]
name = "example-documentation-ranges"
destinations = ["192.0.2.0/24", "2001:db8::/32"]
"#;

#[path = "residency-bench/evidence.rs"]
mod evidence_bench;
#[path = "residency-bench/flows.rs"]
mod flows_bench;
#[path = "residency-bench/memory.rs"]
mod memory_bench;
#[path = "residency-bench/names.rs"]
mod names_bench;
#[path = "residency-bench/pods.rs"]
mod pods_bench;
#[path = "residency-bench/siem.rs"]
mod siem_bench;
#[path = "residency-bench/systemd.rs"]
mod systemd_bench;
#[path = "residency-bench/ui.rs"]
mod ui_bench;
#[path = "residency-bench/upgrade.rs"]
mod upgrade_bench;

fn main() -> anyhow::Result<()> {
    let (rounds, connects, sends, write) = match Cli::parse().bench {
        BenchCmd::Evidence {
            records,
            ingest,
            queries,
            rate,
            seconds,
            latency_rounds,
            latency_only,
            scratch,
            write,
        } => {
            return evidence_bench::main(
                &evidence_bench::Args {
                    records,
                    ingest,
                    queries,
                    rate,
                    seconds,
                    latency_rounds,
                    latency_only,
                    scratch,
                },
                write.as_deref(),
            );
        }
        BenchCmd::Connect {
            rounds,
            connects,
            sends,
            write,
        } => (rounds, connects, sends, write),
        BenchCmd::Geoip {
            db,
            rounds,
            connects,
            write,
        } => return geoip_bench::run(&db, rounds, connects, write.as_deref()),
        BenchCmd::Policy {
            db,
            workloads,
            rounds,
            connects,
            write,
        } => return policy_bench::run(&db, workloads, rounds, connects, write.as_deref()),
        BenchCmd::Process {
            rounds,
            spawns,
            write,
        } => return process_bench::run(rounds, spawns, write.as_deref()),
        BenchCmd::Names {
            rounds,
            connects,
            answers,
            fill,
            write,
        } => {
            if !privileged_or_skip("residency-bench names") {
                bail!("needs root");
            }
            return names_bench::run(rounds, connects, answers, fill, write.as_deref());
        }
        BenchCmd::Pods {
            pods,
            memory_pods,
            write,
        } => return pods_bench::run(pods, memory_pods, write),
        BenchCmd::Upgrade { rounds, db, write } => return upgrade_bench::run(rounds, &db, write),
        BenchCmd::UpgradeProbe {
            cgroup,
            keep,
            until,
        } => return upgrade_bench::probe(&cgroup, keep, until, Duration::from_secs(50)),
        BenchCmd::Systemd { db, runs, write } => return systemd_bench::run(&db, runs, write),
        BenchCmd::Memory {
            db,
            rounds,
            flows,
            write,
        } => return memory_bench::run(&db, rounds, flows, write),
        BenchCmd::Flows {
            db,
            rounds,
            connects,
            sends,
            bulk_mib,
            datagrams,
            write,
        } => {
            return flows_bench::run(
                &db,
                &flows_bench::Args {
                    rounds,
                    connects,
                    sends,
                    bulk_mib,
                    datagrams,
                },
                write,
            );
        }
        BenchCmd::Ui {
            records,
            loads,
            scratch,
            write,
        } => return ui_bench::run(records, loads, scratch, write.as_deref()),
        BenchCmd::PodProbe { pod_dir, dest } => {
            return pods_bench::probe(&pod_dir, dest, Duration::from_secs(30));
        }
        BenchCmd::Siem {
            alerts,
            rounds,
            connects,
            write,
        } => {
            if !privileged_or_skip("residency-bench siem") {
                bail!("needs root");
            }
            return siem_bench::run(alerts, rounds, connects, write.as_deref());
        }
    };
    if !privileged_or_skip("residency-bench connect") {
        bail!("needs root");
    }
    ensure!(
        rounds > 0 && connects > 0 && sends > 0,
        "counts must be positive"
    );

    let listener = Listener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let cg = TestCgroup::new("bench")?;
    let runtime = tokio::runtime::Runtime::new()?;

    // Warm-up: fault in the client, the listener and the socket paths.
    storm(&cg, Op::Tcp(listener.tcp), connects / 10)?;
    storm(&cg, Op::Udp(listener.udp), sends / 10)?;

    let mut tcp: Vec<(usize, Case, Sample)> = Vec::new();
    let mut udp: Vec<(usize, Case, Sample)> = Vec::new();
    let mut books = Books::default();
    for round in 0..rounds {
        for i in 0..Case::ALL.len() {
            let case = Case::ALL[(i + round) % Case::ALL.len()];
            eprintln!("round {}/{rounds}: {}", round + 1, case.name());
            let (t, u) = match case {
                Case::None => (
                    storm(&cg, Op::Tcp(listener.tcp), connects)?,
                    storm(&cg, Op::Udp(listener.udp), sends)?,
                ),
                Case::Programs => {
                    let attached = Programs::attach(MONITOR_CONFIG, &cg, &runtime)?;
                    let t = storm(&cg, Op::Tcp(listener.tcp), connects)?;
                    let u = storm(&cg, Op::Udp(listener.udp), sends)?;
                    drop(attached);
                    (t, u)
                }
                Case::Daemon | Case::DaemonWakeEach => {
                    let config = if case == Case::Daemon {
                        MONITOR_CONFIG.to_owned()
                    } else {
                        MONITOR_CONFIG.replace(
                            "mode = \"monitor\"",
                            "mode = \"monitor\"\n[kernel]\nwakeup_kib = 0",
                        )
                    };
                    let daemon = Daemon::start(&config, &cg)?;
                    let (t, tcp_pid) = storm_pid(&cg, Op::Tcp(listener.tcp), connects)?;
                    let (u, udp_pid) = storm_pid(&cg, Op::Udp(listener.udp), sends)?;
                    let records = daemon.stop()?;
                    // A connect is one record; repeated datagrams are one
                    // decision whose flow's end counts the calls it covered.
                    let count = |pid: u64| -> u64 {
                        flows(&records)
                            .iter()
                            .filter(|f| f["process"]["pid"] == pid)
                            .map(|f| match f["residency"]["flow"]["id"].as_str() {
                                Some(id) if f["network"]["transport"] == "udp" => {
                                    residency_tests::totals_of(&records, id).last().map_or(
                                        1,
                                        |end| {
                                            end["residency"]["flow"]["calls"].as_u64().unwrap_or(1)
                                        },
                                    )
                                }
                                _ => 1,
                            })
                            .sum()
                    };
                    books.calls += connects + sends;
                    books.reported += count(tcp_pid) + count(udp_pid);
                    books.lost += records
                        .iter()
                        .filter(|r| action(r) == "events-lost")
                        .map(|r| r["residency"]["lost"]["count"].as_u64().unwrap_or(0))
                        .sum::<u64>();
                    (t, u)
                }
            };
            tcp.push((round, case, t));
            udp.push((round, case, u));
        }
    }
    drop(cg);
    ensure!(
        books.reported + books.lost == books.calls,
        "books do not balance: {} calls, {} reported, {} lost",
        books.calls,
        books.reported,
        books.lost
    );

    let (table, met) = render(rounds, connects, sends, &tcp, &udp, &books);
    println!("{table}");
    if let Some(path) = write {
        write_section(&path, "connect", &table)?;
        eprintln!("wrote the table to {}", path.display());
    }
    // The table is written either way: a missed target is a result to show.
    ensure!(met, "a target was missed; see the table");
    Ok(())
}

/// The kernel programs attached to a cgroup without the daemon: a minimal
/// in-process reader drains the ring buffer and discards the records.
/// Detached (and unpinned) on drop.
struct Programs {
    drain: tokio::task::JoinHandle<()>,
    attached: Option<kernel::Attached>,
    _pins: residency_tests::TestPins,
}

impl Programs {
    fn attach(
        config: &str,
        cg: &TestCgroup,
        runtime: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Self> {
        let config = Config::from_toml(config, "bench")?;
        let mount = residency_tests::cgroup2_mount()?;
        let target = kernel::CgroupTarget::resolve(&mount, &cg.path)?;
        let _guard = runtime.enter();
        let compiled = residency_daemon::policy::compile(&config, jiff::Timestamp::now());
        let pins = residency_tests::TestPins::new("bench");
        let k = kernel::start(
            &config.kernel,
            &config.names,
            config.may_block(),
            &compiled,
            &[],
            target,
            None,
            pins.open()?,
        )?
        .kernel;
        Ok(Programs {
            drain: runtime.spawn(discard(k.events)),
            attached: Some(k.attached),
            _pins: pins,
        })
    }
}

impl Drop for Programs {
    fn drop(&mut self) {
        self.drain.abort();
        drop(self.attached.take());
    }
}

async fn discard(mut events: kernel::EventRing) {
    loop {
        tokio::select! {
            r = events.readable() => if r.is_err() { return },
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        events.drain(usize::MAX, |_| {});
    }
}

fn storm(cg: &TestCgroup, op: Op, n: u64) -> anyhow::Result<Sample> {
    storm_pid(cg, op, n).map(|(s, _)| s)
}

fn storm_pid(cg: &TestCgroup, op: Op, n: u64) -> anyhow::Result<(Sample, u64)> {
    let report = run_client(
        &[op],
        &ClientOptions {
            cgroup: Some(cg),
            repeat: Some(n),
            timing: true,
            ..Default::default()
        },
    )?;
    let r = &report["ops"][0];
    ensure!(
        r["ok"].as_u64() == Some(n),
        "not every call succeeded: {report}"
    );
    let num = |v: &Value| v.as_f64().context("missing number");
    #[expect(clippy::cast_precision_loss, reason = "call counts far below 2^52")]
    let per_sec = n as f64 / (num(&report["wall_ns"])? / 1e9);
    Ok((
        Sample {
            p50: num(&r["p50_ns"])?,
            p99: num(&r["p99_ns"])?,
            per_sec,
        },
        report["pid"].as_u64().context("pid")?,
    ))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

fn summary(samples: &[(usize, Case, Sample)], case: Case) -> Sample {
    let of = |f: fn(&Sample) -> f64| {
        median(
            samples
                .iter()
                .filter(|(_, c, _)| *c == case)
                .map(|(_, _, s)| f(s))
                .collect(),
        )
    };
    Sample {
        p50: of(|s| s.p50),
        p99: of(|s| s.p99),
        per_sec: of(|s| s.per_sec),
    }
}

/// The p50 ratio to "no programs" of each round (same round, so that drift
/// between rounds cancels): (median, min, max) as percentages.
fn round_ratios(samples: &[(usize, Case, Sample)], case: Case) -> (f64, f64, f64) {
    let mut ratios: Vec<f64> = Vec::new();
    for (round, c, s) in samples {
        if *c != case {
            continue;
        }
        if let Some((_, _, base)) = samples
            .iter()
            .find(|(r, c, _)| r == round && *c == Case::None)
            && base.p50 > 0.0
        {
            ratios.push((s.p50 / base.p50 - 1.0) * 100.0);
        }
    }
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(ratios), min, max)
}

/// Issue target: `connect()` p50 with the daemon consuming within +15% of no
/// programs, and no event lost.
const CONNECT_P50_TARGET_PCT: f64 = 15.0;

fn render(
    rounds: usize,
    connects: u64,
    sends: u64,
    tcp: &[(usize, Case, Sample)],
    udp: &[(usize, Case, Sample)],
    books: &Books,
) -> (String, bool) {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured {} on Linux {kernel}, {cpus} CPUs, by `cargo xtask bench connect`: \
         {rounds} rounds, each with {connects} loopback TCP connects and {sends} UDP sends per \
         case, cases interleaved. p50 and p99 are per call (every call timed on its own), \
         the median over rounds; \"p50 vs none\" compares each round with the same round's \
         no-programs case and gives the median and, in brackets, the range over rounds.\n",
        jiff::Zoned::now().strftime("%Y-%m-%d")
    );
    for (title, samples) in [("TCP connect()", tcp), ("UDP sendto()", udp)] {
        let base = summary(samples, Case::None);
        let _ = writeln!(
            out,
            "| {title} | p50 | p99 | calls/s | p50 vs none | p99 vs none |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        for case in Case::ALL {
            let s = summary(samples, case);
            let (mid, lo, hi) = round_ratios(samples, case);
            let _ = writeln!(
                out,
                "| {} | {:.2} µs | {:.2} µs | {:.0} | {mid:+.1}% [{lo:+.1}, {hi:+.1}] | {} |",
                case.name(),
                s.p50 / 1e3,
                s.p99 / 1e3,
                s.per_sec,
                ratio(s.p99, base.p99),
            );
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "Events in the daemon cases: {} calls, {} reported, {} lost (counted by the kernel and \
         reported as `events-lost` records).\n",
        books.calls, books.reported, books.lost
    );
    let (connect_p50, _, _) = round_ratios(tcp, Case::Daemon);
    let p50_met = connect_p50 <= CONNECT_P50_TARGET_PCT;
    let loss_met = books.lost == 0;
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let _ = writeln!(
        out,
        "Targets: connect() p50 with the daemon consuming {connect_p50:+.1}% (target at most \
         +{CONNECT_P50_TARGET_PCT:.0}%): {}; events lost {} (target 0): {}.",
        verdict(p50_met),
        books.lost,
        verdict(loss_met)
    );
    (out, p50_met && loss_met)
}

fn ratio(x: f64, base: f64) -> String {
    if base <= 0.0 {
        return "n/a".to_owned();
    }
    format!("{:+.1}%", (x / base - 1.0) * 100.0)
}

/// Replaces the text between `<!-- bench:NAME:begin -->` and
/// `<!-- bench:NAME:end -->` (appending the section if absent).
fn write_section(path: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- bench:{name}:begin -->");
    let end = format!("<!-- bench:{name}:end -->");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{begin}\n{body}{end}");
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &text[..b], &text[e + end.len()..]),
        _ => format!("{text}\n{block}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

mod geoip_bench {
    //! `residency-bench geoip`.

    use std::{
        fmt::Write as _,
        net::{IpAddr, Ipv4Addr},
        path::Path,
        process::Command,
        time::{Duration, Instant},
    };

    use anyhow::{Context as _, ensure};
    use geoip::CountryCode;
    use ipnet::IpNet;
    use residency_daemon::{config::Config, geodb, kernel, policy};
    use residency_tests::{
        ClientOptions, Daemon, Listener, NetNs, Op, TestCgroup, privileged_or_skip, run_client,
    };
    use serde_json::Value;

    use super::{median, write_section};

    /// Monitor mode, EEA allowed, nothing local: loopback is judged by the
    /// tables, through their deepest path (see `bench_db`).
    const CONFIG: &str = r#"
mode = "monitor"
[kernel]
poll_interval_ms = 10
[policy]
allowed = ["EEA"]
local_networks = ["10.0.0.0/8"]
"#;

    pub fn run(
        db: &Path,
        rounds: usize,
        connects: u64,
        write: Option<&Path>,
    ) -> anyhow::Result<()> {
        if !privileged_or_skip("residency-bench geoip") {
            anyhow::bail!("needs root");
        }
        ensure!(
            db.is_file(),
            "{} is missing: `cargo xtask geoip` fetches it",
            db.display()
        );
        let mut out = String::new();
        let date = jiff::Zoned::now().strftime("%Y-%m-%d").to_string();
        let kernel_release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "Measured {date} on Linux {kernel_release}, 2 CPUs, by `cargo xtask bench geoip`, with \
             the default CC0 database ({}).\n",
            db.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        );

        // 1. Preparing and loading the full database, three times.
        let cg = TestCgroup::new("bench-geo")?;
        let runtime = tokio::runtime::Runtime::new()?;
        let _enter = runtime.enter();
        let config = Config::from_toml(CONFIG, "bench")?;
        let compiled = policy::compile(&config, jiff::Timestamp::now());
        let mount = residency_tests::cgroup2_mount()?;
        let mut prepare_ms = Vec::new();
        let mut load_ms = Vec::new();
        let mut memory = Vec::new();
        let mut measured = Vec::new();
        let mut prepared = None;
        let mut swap_ms = Vec::new();
        for _ in 0..3 {
            let p = geodb::prepare(db, None)?;
            prepare_ms.push(p.elapsed.as_secs_f64() * 1e3);
            let target = kernel::CgroupTarget::resolve(&mount, &cg.path)?;
            let bench_pins = residency_tests::TestPins::new("bench");
            let started = kernel::start(
                &config.kernel,
                &config.names,
                config.may_block(),
                &compiled,
                &[],
                target,
                None,
                bench_pins.open()?,
            )?;
            let (k, mut maps) = (started.kernel, started.geo);
            settle();
            let before = kernel_memory_now()?;
            let installed = maps.install(&p.v4, &p.v6)?;
            measured.push(kernel_memory_now()?.saturating_sub(before) as f64);
            load_ms.push(installed.fill.as_secs_f64() * 1e3);
            memory.push(table_memory()?);
            // A hot swap: a second generation built and switched in while
            // the first is in force.
            let t = Instant::now();
            maps.install(&p.v4, &p.v6)?;
            swap_ms.push(t.elapsed().as_secs_f64() * 1e3);
            drop(k);
            prepared = Some(p);
        }
        let p = prepared.context("prepared")?;
        let stats = &p.stats;
        let (level1, level2, level3, trie6) = memory[memory.len() - 1];
        let naive = naive_v4_trie(db)?;

        let _ = writeln!(out, "| full database | value |");
        let _ = writeln!(out, "|---|---:|");
        let _ = writeln!(
            out,
            "| networks in the file (IPv4 / IPv6) | {} / {} |",
            stats.networks_v4, stats.networks_v6
        );
        let _ = writeln!(
            out,
            "| prefixes after merging (IPv4 / IPv6) | {} / {} |",
            stats.prefixes_v4, stats.prefixes_v6
        );
        let _ = writeln!(
            out,
            "| IPv4 layout: split /16s (level 2) / split /24s (level 3) | {} / {} |",
            p.v4.l2.len(),
            p.v4.l3.len()
        );
        let prep = median(prepare_ms.clone());
        let load = median(load_ms.clone());
        let _ = writeln!(
            out,
            "| open + flatten + lay out (median of 3) | {prep:.0} ms |"
        );
        let _ = writeln!(
            out,
            "| create and fill the kernel maps (median of 3) | {load:.0} ms |"
        );
        let _ = writeln!(
            out,
            "| total, file to kernel (goal at most 2 s) | {:.2} s: {} |",
            (prep + load) / 1e3,
            if prep + load <= 2000.0 {
                "met"
            } else {
                "NOT met"
            }
        );
        let _ = writeln!(
            out,
            "| hot swap: build a new generation and switch (median of 3) | {:.0} ms |",
            median(swap_ms)
        );
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let _ = writeln!(
            out,
            "| kernel memory: IPv4 levels 1 / 2 / 3 | {:.1} / {:.1} / {:.1} MiB |",
            mib(level1),
            mib(level2),
            mib(level3)
        );
        let _ = writeln!(out, "| kernel memory: IPv6 trie | {:.1} MiB |", mib(trie6));
        let _ = writeln!(
            out,
            "| kernel memory, all tables, by the kernel's per-map accounting | {:.1} MiB |",
            mib(level1 + level2 + level3 + trie6)
        );
        let _ = writeln!(
            out,
            "| kernel memory, all tables, measured (slab + vmalloc growth while loading, median of 3) | {:.1} MiB |",
            median(measured) / (1024.0 * 1024.0)
        );
        let _ = writeln!(
            out,
            "| reference: the IPv4 data as one naive LPM trie: per-map accounting / measured | {:.1} / {:.1} MiB, filled in {:.0} ms |",
            mib(naive.0),
            naive.2 / (1024.0 * 1024.0),
            naive.1
        );
        out.push('\n');

        // 2. Userspace lookups.
        let lookups = userspace_lookups(&p)?;
        let _ = writeln!(out, "| userspace lookups, one core | per second |");
        let _ = writeln!(out, "|---|---:|");
        for (name, rate) in &lookups {
            let _ = writeln!(out, "| {name} | {rate:.0} |");
        }
        let cached = lookups
            .iter()
            .find(|(n, _)| n.starts_with("enrichment"))
            .map_or(0.0, |(_, r)| *r);
        let _ = writeln!(
            out,
            "\nGoal: at least 2,000,000 enrichment lookups per second with the hot path cached: {}.\n",
            if cached >= 2e6 { "met" } else { "NOT met" }
        );

        // 3. connect() with the full tables, and during hot swaps.
        let bench_db = tempfile::Builder::new().suffix(".mmdb").tempfile()?;
        std::fs::write(bench_db.path(), bench_db_bytes(&p)?)?;
        out.push_str(&connect_cases(&cg, bench_db.path(), rounds, connects)?);
        drop(cg);

        println!("{out}");
        if let Some(path) = write {
            write_section(path, "geoip", &out)?;
            eprintln!("wrote the tables to {}", path.display());
        }
        Ok(())
    }

    /// Kernel memory in use that BPF maps draw from: unreclaimable slab
    /// (trie nodes) plus vmalloc (large arrays), in bytes, from
    /// /proc/meminfo. The difference across a load is what the load took,
    /// allocator overhead and trie interior nodes included, which the
    /// kernel's per-map accounting leaves out.
    /// Lets the kernel finish freeing maps dropped earlier (it frees them
    /// after an RCU grace period, in the background), so that a memory
    /// difference measures only what comes next.
    fn settle() {
        std::thread::sleep(Duration::from_secs(2));
    }

    fn kernel_memory_now() -> anyhow::Result<u64> {
        let info = std::fs::read_to_string("/proc/meminfo")?;
        let field = |name: &str| -> u64 {
            info.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Ok(field("SUnreclaim:") + field("VmallocUsed:"))
    }

    /// Memory of the inner maps in force, from bpftool (the kernel's own
    /// accounting): level 1, 2, 3 and the IPv6 trie.
    fn table_memory() -> anyhow::Result<(u64, u64, u64, u64)> {
        let inner = |outer: &str| -> anyhow::Result<u64> {
            let dump = Command::new("bpftool")
                .args(["map", "dump", "name", outer, "-j"])
                .output()?;
            let v: Value = serde_json::from_slice(&dump.stdout).context("bpftool map dump")?;
            let bytes: Vec<u8> = v[0]["value"]
                .as_array()
                .context("inner map id")?
                .iter()
                .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
                .collect();
            let id = u32::from_le_bytes(bytes.try_into().map_err(|_| anyhow::anyhow!("id bytes"))?);
            let show = Command::new("bpftool")
                .args(["map", "show", "id", &id.to_string(), "-j"])
                .output()?;
            let v: Value = serde_json::from_slice(&show.stdout)?;
            v["bytes_memlock"].as_u64().context("bytes_memlock")
        };
        Ok((
            inner("GEO4_L1")?,
            inner("GEO4_L2")?,
            inner("GEO4_L3")?,
            inner("GEO6")?,
        ))
    }

    /// A capacity nothing else uses, to find the naive trie again in bpftool.
    const MARK: u32 = 1_999_993;

    /// The IPv4 data as one LPM trie, the layout this design replaces:
    /// (per-map accounting, fill time in ms, measured growth).
    fn naive_v4_trie(db: &Path) -> anyhow::Result<(u64, f64, f64)> {
        use aya::maps::{LpmTrie, MapData, lpm_trie::Key};
        let database = geoip::Database::open(db)?;
        let tables = geoip::flatten(&database)?;
        let mut trie: LpmTrie<MapData, [u8; 4], u16> =
            LpmTrie::create(MARK, residency_common::BPF_F_NO_PREALLOC)?;
        settle();
        let before = kernel_memory_now()?;
        let t = Instant::now();
        for (net, c) in &tables.v4 {
            trie.insert(
                &Key::new(u32::from(net.prefix_len()), net.network().octets()),
                c.index(),
                0,
            )?;
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let grown = kernel_memory_now()?.saturating_sub(before) as f64;
        let list = Command::new("bpftool")
            .args(["map", "show", "-j"])
            .output()?;
        let maps: Value = serde_json::from_slice(&list.stdout)?;
        let bytes = maps
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["type"] == "lpm_trie" && m["max_entries"] == MARK)
            .filter_map(|m| m["bytes_memlock"].as_u64())
            .max()
            .context("the naive trie is not visible to bpftool")?;
        drop(trie);
        Ok((bytes, ms, grown))
    }

    fn userspace_lookups(p: &geodb::Prepared) -> anyhow::Result<Vec<(String, f64)>> {
        let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let n = 1_000_000u32;
        let addrs: Vec<IpAddr> = (0..n)
            .map(|_| {
                #[expect(clippy::cast_possible_truncation, reason = "any 32 bits")]
                IpAddr::V4(Ipv4Addr::from(next() as u32))
            })
            .collect();
        let rate = |count: usize, d: Duration| count as f64 / d.as_secs_f64();
        let mut out = Vec::new();

        let t = Instant::now();
        let mut found = 0usize;
        for a in &addrs {
            if let Ok(Some(_)) = p.db.lookup(*a) {
                found += 1;
            }
        }
        out.push((
            "full database lookup (maxminddb), random IPv4".to_owned(),
            rate(addrs.len(), t.elapsed()),
        ));
        ensure!(found > 0, "no random address found a record");

        let t = Instant::now();
        let mut hits = 0usize;
        for a in &addrs {
            if p.kernel_country(*a).is_some() {
                hits += 1;
            }
        }
        out.push((
            "kernel IPv4 layout, same lookup in userspace".to_owned(),
            rate(addrs.len(), t.elapsed()),
        ));
        ensure!(hits > 0);

        // Enrichment: what the daemon does per event. Destinations recur, so
        // the working set is small: 4,096 addresses, looked up 2,000,000 times.
        let generation = geodb::Generation {
            number: 1,
            version: std::sync::Arc::new(p.db.version().clone()),
            path: std::path::PathBuf::new(),
            db: p.db.clone(),
            asn: None,
        };
        let mut cache = geodb::DetailCache::new(65_536);
        let working: Vec<IpAddr> = addrs.iter().take(4096).copied().collect();
        for a in &working {
            cache.get(&generation, *a);
        }
        let t = Instant::now();
        let total = 2_000_000usize;
        for i in 0..total {
            std::hint::black_box(cache.get(&generation, working[i % working.len()]));
        }
        out.push((
            "enrichment, cached (4,096 destinations)".to_owned(),
            rate(total, t.elapsed()),
        ));
        Ok(out)
    }

    /// The full database plus test ranges that exercise the deepest lookup
    /// paths: 127.0.0.1 sits in a split /24 (level 3), and the IPv6 test
    /// host in the trie.
    pub fn bench_db_bytes(p: &geodb::Prepared) -> anyhow::Result<Vec<u8>> {
        let de: CountryCode = "DE".parse()?;
        let us: CountryCode = "US".parse()?;
        let networks =
            p.v6.iter()
                .map(|(n, c)| (IpNet::V6(*n), *c))
                .chain(flatten_v4(p))
                .chain([
                    ("127.0.0.0/25".parse::<IpNet>()?, de),
                    ("127.0.0.128/25".parse()?, us),
                    (IpNet::V6("fd00:77:1::/48".parse()?), de),
                ]);
        Ok(geoip::testdb::build_countries(
            "residency-bench-Country",
            1,
            networks,
        )?)
    }

    fn flatten_v4(p: &geodb::Prepared) -> Vec<(IpNet, CountryCode)> {
        let tables = geoip::flatten(&p.db).map(|t| t.v4).unwrap_or_default();
        tables.into_iter().map(|(n, c)| (IpNet::V4(n), c)).collect()
    }

    fn connect_cases(
        cg: &TestCgroup,
        db: &Path,
        rounds: usize,
        connects: u64,
    ) -> anyhow::Result<String> {
        let l4 = Listener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
        // IPv6 has only one loopback address, ::1, which a MaxMind tree
        // cannot place (::/96 is its IPv4 space): use a test host in a
        // network namespace instead.
        let mut ns = NetNs::new(&["fd00:77:1::/48"])?;
        let (host6_tcp, _) = ns.serve()?[0];
        let storm = |op: Op, n: u64, duration: Option<u64>| -> anyhow::Result<(f64, f64, u64)> {
            let r = run_client(
                &[op],
                &ClientOptions {
                    cgroup: Some(cg),
                    repeat: Some(n),
                    duration_ms: duration,
                    timing: true,
                    ..Default::default()
                },
            )?;
            let o = &r["ops"][0];
            Ok((
                o["p50_ns"].as_f64().unwrap_or(0.0),
                o["p99_ns"].as_f64().unwrap_or(0.0),
                o["ok"].as_u64().unwrap_or(0),
            ))
        };
        storm(Op::Tcp(l4.tcp), connects / 10, None)?;
        // (case, family) -> per-round (p50, p99)
        let mut rows: Vec<Row> = Vec::new();
        let mut record = |case: &'static str, fam: &'static str, v: (f64, f64)| {
            if let Some(r) = rows.iter_mut().find(|(c, f, _)| *c == case && *f == fam) {
                r.2.push(v);
            } else {
                rows.push((case, fam, vec![v]));
            }
        };
        let db_arg = [std::ffi::OsStr::new("--geoip"), db.as_os_str()];
        for round in 0..rounds {
            eprintln!("geoip connect round {}/{rounds}", round + 1);
            for case in 0..3 {
                match case {
                    0 => {
                        let (a, b, _) = storm(Op::Tcp(l4.tcp), connects, None)?;
                        record("no programs", "IPv4", (a, b));
                        let (a, b, _) = storm(Op::Tcp(host6_tcp), connects, None)?;
                        record("no programs", "IPv6", (a, b));
                    }
                    1 => {
                        let d = Daemon::start_with(CONFIG, cg, &db_arg)?;
                        d.wait_for(Duration::from_mins(1), |r| {
                            residency_tests::action(r) == "geoip-loaded"
                        })?;
                        let (a, b, _) = storm(Op::Tcp(l4.tcp), connects, None)?;
                        record("full tables + daemon", "IPv4", (a, b));
                        let (a, b, _) = storm(Op::Tcp(host6_tcp), connects, None)?;
                        record("full tables + daemon", "IPv6", (a, b));
                        let records = d.stop()?;
                        check_judged(&records)?;
                    }
                    _ => {
                        let d = Daemon::start_with(CONFIG, cg, &db_arg)?;
                        d.wait_for(Duration::from_mins(1), |r| {
                            residency_tests::action(r) == "geoip-loaded"
                        })?;
                        // Ask for a reload and storm while it is built and
                        // switched in (about a second of work).
                        nix::sys::signal::kill(
                            d.pid().context("pid")?,
                            nix::sys::signal::Signal::SIGHUP,
                        )?;
                        let (a, b, _) = storm(Op::Tcp(l4.tcp), u64::MAX, Some(2500))?;
                        record("full tables + daemon, during a hot swap", "IPv4", (a, b));
                        d.wait_for(Duration::from_mins(1), |r| {
                            residency_tests::action(r) == "geoip-loaded"
                                && r["residency"]["geoip"]["generation"] == 2
                        })?;
                        let records = d.stop()?;
                        check_judged(&records)?;
                    }
                }
            }
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| connect(), judged by the tables | p50 | p99 | p50 vs none | p99 vs none |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|");
        let base = |fam: &str| {
            rows.iter()
                .find(|(c, f, _)| *c == "no programs" && *f == fam)
                .map_or((1.0, 1.0), |(_, _, v)| {
                    (
                        median(v.iter().map(|x| x.0).collect()),
                        median(v.iter().map(|x| x.1).collect()),
                    )
                })
        };
        let mut met = true;
        for (case, fam, v) in &rows {
            let p50 = median(v.iter().map(|x| x.0).collect());
            let p99 = median(v.iter().map(|x| x.1).collect());
            let (b50, b99) = base(fam);
            let r50 = (p50 / b50 - 1.0) * 100.0;
            let r99 = (p99 / b99 - 1.0) * 100.0;
            if *case != "no programs" && (r50 > 10.0 || r99 > 20.0) {
                met = false;
            }
            let _ = writeln!(
                out,
                "| {case}, {fam} | {:.2} µs | {:.2} µs | {r50:+.1}% | {r99:+.1}% |",
                p50 / 1e3,
                p99 / 1e3
            );
        }
        let _ = writeln!(
            out,
            "\n{rounds} rounds of {connects} connects per case (the hot-swap case storms for 2.5 s \
             while a reload runs, and every call in it must be judged by a table generation); \
             medians over rounds. Goal with the full tables, also during a swap: at most +10% at \
             p50 and +20% at p99: {}.",
            if met { "met" } else { "NOT met" }
        );
        Ok(out)
    }

    /// (case, family, per-round (p50, p99))
    type Row = (&'static str, &'static str, Vec<(f64, f64)>);

    /// Every record in a bench run was judged by a table generation.
    fn check_judged(records: &[Value]) -> anyhow::Result<()> {
        let flows = residency_tests::flows(records);
        ensure!(!flows.is_empty(), "no flows recorded");
        for f in flows {
            ensure!(
                f["residency"]["decided_by"] == "geoip"
                    && f["residency"]["geoip"]["generation"].as_u64().unwrap_or(0) > 0,
                "a call was not judged by the tables: {f}"
            );
        }
        ensure!(
            records
                .iter()
                .all(|r| residency_tests::action(r) != "events-lost"),
            "events were lost"
        );
        Ok(())
    }
}

mod policy_bench {
    //! `residency-bench policy`.

    use std::{
        fmt::Write as _,
        net::{IpAddr, Ipv4Addr},
        path::Path,
        time::{Duration, Instant},
    };

    use anyhow::{Context as _, ensure};
    use residency_daemon::geodb;
    use residency_tests::{
        ClientOptions, Daemon, Listener, Op, TestCgroup, action, privileged_or_skip, run_client,
    };

    use super::{median, write_section};

    /// A configuration with `n` workloads of 50 tenants, each workload in
    /// its own cgroup under `root`.
    fn config(root: &str, n: usize, salt: u32) -> String {
        let mut c = format!(
            "# salt {salt}\nmode = \"monitor\"\n[kernel]\npoll_interval_ms = 10\n[geoip]\ncheck_interval_secs = 3600\n\
             [policy]\nallowed = [\"EEA\"]\nlocal_networks = [\"10.0.0.0/8\"]\n"
        );
        let sets = [
            "\"EEA\"",
            "\"EEA\", \"ADEQUACY\"",
            "\"DE\", \"AT\", \"CH\"",
            "\"EU\"",
            "\"EEA\", \"GB\"",
        ];
        for t in 0..50 {
            let _ = write!(
                c,
                "[[tenant]]\nid = \"t{t}\"\nallowed = [{}]\n",
                sets[t % sets.len()]
            );
        }
        let roles = ["llm", "crm-sync", "logging", "backup", "other"];
        for w in 0..n {
            let _ = write!(
                c,
                "[[workload]]\nname = \"w{w}\"\nrole = \"{}\"\ntenants = [\"t{}\"]\ncgroup = [\"{root}/w{w}\"]\n",
                roles[w % roles.len()],
                w % 50
            );
        }
        for e in 0..20 {
            let _ = write!(
                c,
                "[[exception]]\nname = \"e{e}\"\ndestinations = [\"198.18.{e}.0/24\"]\nbasis = \"scc\"\n\
                 justification = \"benchmark\"\nexpires = \"2099-01-01\"\ntenants = [\"t{}\"]\n",
                e % 50
            );
        }
        c
    }

    /// One storm's timings.
    struct Sample {
        p50: f64,
        p99: f64,
        /// The programs' own time per call, by the kernel's statistics.
        program_ns: f64,
    }

    impl Sample {
        fn untimed((p50, p99): (f64, f64)) -> Self {
            Sample {
                p50,
                p99,
                program_ns: 0.0,
            }
        }
    }

    fn daemon_args<'a>(db: &'a Path, config: &'a Path) -> [&'a std::ffi::OsStr; 4] {
        [
            std::ffi::OsStr::new("--geoip"),
            db.as_os_str(),
            std::ffi::OsStr::new("--config"),
            config.as_os_str(),
        ]
    }

    fn median_of(v: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
        median(v.iter().map(f).collect())
    }

    /// Total run time (ns) and run count of every loaded residency program.
    fn program_time() -> anyhow::Result<(u64, u64)> {
        let mut total = (0u64, 0u64);
        for p in aya::programs::loaded_programs() {
            let p = p.context("listing loaded programs")?;
            if p.name_as_str().is_some_and(|n| n.starts_with("residency_")) {
                let ns = u64::try_from(p.run_time().as_nanos()).unwrap_or(u64::MAX);
                total = (total.0 + ns, total.1 + p.run_count());
            }
        }
        Ok(total)
    }

    pub fn run(
        db: &Path,
        workloads: usize,
        rounds: usize,
        connects: u64,
        write: Option<&Path>,
    ) -> anyhow::Result<()> {
        if !privileged_or_skip("residency-bench policy") {
            anyhow::bail!("needs root");
        }
        ensure!(
            db.is_file(),
            "{} is missing: `cargo xtask geoip` fetches it",
            db.display()
        );
        let prepared = geodb::prepare(db, None)?;
        let bench_db = tempfile::Builder::new().suffix(".mmdb").tempfile()?;
        std::fs::write(
            bench_db.path(),
            super::geoip_bench::bench_db_bytes(&prepared)?,
        )?;
        drop(prepared);

        let cg = TestCgroup::new("bench-policy")?;
        let root = cg.relative()?;
        let t = Instant::now();
        for w in 0..workloads {
            cg.child(&format!("w{w}"))?;
        }
        let mkdir_ms = t.elapsed().as_secs_f64() * 1e3;
        let middle = workloads / 2;
        let direct = cg.path.join(format!("w{middle}"));
        let nested = cg.child(&format!("w{middle}/pod/container/task"))?;
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("residency.toml");
        std::fs::write(&config_path, config(&root, workloads, 0))?;
        let l4 = Listener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST))?;

        let storm = |cgroup: &Path, n: u64| -> anyhow::Result<(f64, f64)> {
            let r = run_client(
                &[Op::Tcp(l4.tcp)],
                &ClientOptions {
                    cgroup_dir: Some(cgroup),
                    repeat: Some(n),
                    timing: true,
                    ..Default::default()
                },
            )?;
            let o = &r["ops"][0];
            ensure!(
                o["ok"].as_u64() == Some(n),
                "not every connect succeeded: {r}"
            );
            Ok((
                o["p50_ns"].as_f64().unwrap_or(0.0),
                o["p99_ns"].as_f64().unwrap_or(0.0),
            ))
        };
        storm(&direct, connects / 10)?;

        let plain_path = dir.path().join("default-only.toml");
        std::fs::write(&plain_path, config(&root, 0, 0))?;
        // The kernel's own account of the programs' time per call, which
        // the noise of a whole connect() does not blur.
        let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics")?;
        let timed = |cgroup: &Path| -> anyhow::Result<Sample> {
            let before = program_time()?;
            let (p50, p99) = storm(cgroup, connects)?;
            let after = program_time()?;
            let calls = after.1.saturating_sub(before.1);
            ensure!(
                calls >= connects,
                "the programs ran {calls} times for {connects} connects"
            );
            Ok(Sample {
                p50,
                p99,
                program_ns: after.0.saturating_sub(before.0) as f64 / calls as f64,
            })
        };
        let mut base_direct = Vec::new();
        let mut base_nested = Vec::new();
        let mut plain_direct = Vec::new();
        let mut with_direct = Vec::new();
        let mut with_nested = Vec::new();
        let mut start_ms = Vec::new();
        let mut reload_wall_ms = Vec::new();
        let mut reload_load_ms = Vec::new();
        for round in 0..rounds {
            eprintln!("policy round {}/{rounds}", round + 1);
            // The order of the daemon cases alternates, so drift in the
            // machine does not favour one.
            for case in if round % 2 == 0 { [0, 1, 2] } else { [0, 2, 1] } {
                match case {
                    0 => {
                        base_direct.push(Sample::untimed(storm(&direct, connects)?));
                        base_nested.push(Sample::untimed(storm(&nested, connects)?));
                    }
                    1 => {
                        let d = Daemon::start_with(
                            "",
                            &cg,
                            &daemon_args(bench_db.path(), &plain_path),
                        )?;
                        d.wait_for(Duration::from_mins(1), |r| action(r) == "geoip-loaded")?;
                        plain_direct.push(timed(&direct)?);
                        let records = d.stop()?;
                        ensure!(
                            records.iter().all(|r| action(r) != "events-lost"),
                            "events were lost"
                        );
                    }
                    _ => {
                        let t = Instant::now();
                        let d = Daemon::start_with(
                            "",
                            &cg,
                            &daemon_args(bench_db.path(), &config_path),
                        )?;
                        d.wait_for(Duration::from_mins(1), |r| action(r) == "geoip-loaded")?;
                        start_ms.push(t.elapsed().as_secs_f64() * 1e3);
                        with_direct.push(timed(&direct)?);
                        with_nested.push(timed(&nested)?);
                        // A reload: a changed file (new hash) and SIGHUP.
                        std::fs::write(
                            &config_path,
                            config(&root, workloads, u32::try_from(round + 1).unwrap_or(0)),
                        )?;
                        let t = Instant::now();
                        nix::sys::signal::kill(
                            d.pid().context("pid")?,
                            nix::sys::signal::Signal::SIGHUP,
                        )?;
                        let note = d.wait_for(Duration::from_mins(1), |r| {
                            action(r) == "policy-loaded"
                                && r["residency"]["policy"]["generation"] == 2
                        })?;
                        reload_wall_ms.push(t.elapsed().as_secs_f64() * 1e3);
                        reload_load_ms.push(
                            note["residency"]["policy"]["load_ms"]
                                .as_f64()
                                .unwrap_or(0.0),
                        );
                        let records = d.stop()?;
                        let flows = residency_tests::flows(&records);
                        ensure!(
                            flows.iter().any(|f| f["residency"]["workload"]["name"]
                                == format!("w{middle}").as_str()),
                            "the storm's connects were not attributed to workload w{middle}"
                        );
                        ensure!(
                            records.iter().all(|r| action(r) != "events-lost"),
                            "events were lost"
                        );
                    }
                }
            }
        }

        let mut out = String::new();
        let _ = writeln!(
            out,
            "Measured {} by `cargo xtask bench policy`: {workloads} workloads (each its own policy and \
             cgroup) of 50 tenants, 20 exceptions, the full CC0 GeoIP tables; {rounds} rounds of \
             {connects} loopback TCP connects per case, judged through the deepest GeoIP path.\n",
            jiff::Zoned::now().strftime("%Y-%m-%d")
        );
        let _ = writeln!(
            out,
            "| connect() from | programs | p50 | p99 | p50 vs none | p99 vs none | program time per call |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|");
        let mut met = true;
        let many = format!("{workloads} workload policies + daemon");
        // Each case against no programs in the same cgroup: a deeper cgroup
        // costs the kernel something of its own (charging up the tree).
        for (name, programs, v, base, goal) in [
            (
                "the workload's cgroup",
                "none",
                &base_direct,
                &base_direct,
                false,
            ),
            (
                "the workload's cgroup",
                "default policy only + daemon",
                &plain_direct,
                &base_direct,
                false,
            ),
            (
                "the workload's cgroup",
                many.as_str(),
                &with_direct,
                &base_direct,
                true,
            ),
            (
                "three cgroups below it",
                "none",
                &base_nested,
                &base_nested,
                false,
            ),
            (
                "three cgroups below it",
                many.as_str(),
                &with_nested,
                &base_nested,
                true,
            ),
        ] {
            let (p50, p99) = (median_of(v, |s| s.p50), median_of(v, |s| s.p99));
            let r50 = (p50 / median_of(base, |s| s.p50) - 1.0) * 100.0;
            let r99 = (p99 / median_of(base, |s| s.p99) - 1.0) * 100.0;
            if goal && r50 > 10.0 {
                met = false;
            }
            let program = median_of(v, |s| s.program_ns);
            let _ = writeln!(
                out,
                "| {name} | {programs} | {:.2} µs | {:.2} µs | {r50:+.1}% | {r99:+.1}% | {} |",
                p50 / 1e3,
                p99 / 1e3,
                if program > 0.0 {
                    format!("{program:.0} ns")
                } else {
                    "-".to_owned()
                }
            );
        }
        let _ = writeln!(out, "\n| {workloads} workloads | value |");
        let _ = writeln!(out, "|---|---:|");
        let _ = writeln!(
            out,
            "| daemon start to GeoIP and policy in force (median) | {:.0} ms |",
            median(start_ms)
        );
        let _ = writeln!(
            out,
            "| policy reload: SIGHUP to `policy-loaded` record (median) | {:.0} ms |",
            median(reload_wall_ms)
        );
        let _ = writeln!(
            out,
            "| of which building and switching the kernel maps (median) | {:.0} ms |",
            median(reload_load_ms)
        );
        let _ = writeln!(
            out,
            "| creating the {workloads} test cgroups (setup, for scale) | {mkdir_ms:.0} ms |"
        );
        let _ = writeln!(
            out,
            "\nGoal: connect() p50 within +10% of no programs with {workloads} policies and the full \
             GeoIP tables: {}.",
            if met { "met" } else { "NOT met" }
        );
        drop(cg);
        println!("{out}");
        if let Some(path) = write {
            write_section(path, "policy", &out)?;
            eprintln!("wrote the tables to {}", path.display());
        }
        ensure!(met, "a target was missed; see the table");
        Ok(())
    }
}

mod process_bench {
    //! `residency-bench process`.

    use std::{fmt::Write as _, path::Path, process::Command, time::Duration};

    use anyhow::{Context as _, ensure};
    use residency_tests::{Daemon, TestCgroup, action, privileged_or_skip};

    use super::{median, write_section};

    /// Starts `n` processes (`/bin/true`, each a fork, an exec and an exit)
    /// from a shell that first enters `cgroup`; returns µs per process.
    fn spawn_storm(cgroup: &Path, n: u64) -> anyhow::Result<f64> {
        let script = format!(
            r#"echo $$ > "$1/cgroup.procs" || exit 1
s=$(date +%s%N); i=0
while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done
e=$(date +%s%N); echo $((e - s))"#
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .arg("sh")
            .arg(cgroup)
            .output()
            .context("running the spawn storm")?;
        ensure!(
            out.status.success(),
            "the spawn storm failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("the storm's timing")?;
        #[expect(clippy::cast_precision_loss, reason = "small counts")]
        Ok(ns / 1e3 / n as f64)
    }

    pub fn run(rounds: usize, spawns: u64, write: Option<&Path>) -> anyhow::Result<()> {
        if !privileged_or_skip("residency-bench process") {
            anyhow::bail!("needs root");
        }
        ensure!(rounds > 0 && spawns > 0, "counts must be positive");
        // One parent: the daemon watches `watched`; `outside` is a sibling
        // whose processes the tracepoints see and drop.
        let cg = TestCgroup::new("bench-process")?;
        let watched = cg.child("watched")?;
        let outside = TestCgroup::new("bench-process-outside")?;
        let (mut base_in, mut base_out, mut with_in, mut with_out) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut dropped = 0u64;
        for round in 0..rounds {
            eprintln!("process round {}/{rounds}", round + 1);
            base_in.push(spawn_storm(&watched, spawns)?);
            base_out.push(spawn_storm(&outside.path, spawns)?);
            let d = Daemon::start("mode = \"monitor\"\n[kernel]\npoll_interval_ms = 10\n", &cg)?;
            d.wait_for(Duration::from_secs(30), |r| action(r) == "started")?;
            with_in.push(spawn_storm(&watched, spawns)?);
            with_out.push(spawn_storm(&outside.path, spawns)?);
            let records = d.stop()?;
            let stopped = records
                .iter()
                .find(|r| action(r) == "stopped")
                .context("no stopped record")?;
            dropped += stopped["residency"]["counters"]["process_records_dropped"]
                .as_u64()
                .unwrap_or(0);
        }
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Measured {} by `cargo xtask bench process`: {rounds} rounds of {spawns} processes \
             (`/bin/true` from a shell loop: fork, exec, exit) per case; medians over rounds.\n",
            jiff::Zoned::now().strftime("%Y-%m-%d")
        );
        let _ = writeln!(
            out,
            "| a process started | no daemon | daemon with process tracking | difference |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for (name, base, with) in [
            ("inside the watched cgroup (reported)", &base_in, &with_in),
            (
                "outside it (seen by the tracepoints, dropped)",
                &base_out,
                &with_out,
            ),
        ] {
            let (b, w) = (median(base.clone()), median(with.clone()));
            let _ = writeln!(
                out,
                "| {name} | {b:.0} µs | {w:.0} µs | {:+.1}% |",
                (w / b - 1.0) * 100.0
            );
        }
        let _ = writeln!(
            out,
            "\nProcess records the kernel could not write (ring buffer full), over all rounds: {dropped}."
        );
        drop(cg);
        drop(outside);
        println!("{out}");
        if let Some(path) = write {
            write_section(path, "process", &out)?;
            eprintln!("wrote the table to {}", path.display());
        }
        Ok(())
    }
}
