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

fn main() -> anyhow::Result<()> {
    let BenchCmd::Connect {
        rounds,
        connects,
        sends,
        write,
    } = Cli::parse().bench;
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
                    let config = Config::from_toml(MONITOR_CONFIG, "bench")?;
                    let mount = residency_tests::cgroup2_mount()?;
                    let target = kernel::CgroupTarget::resolve(&mount, &cg.path)?;
                    let _guard = runtime.enter();
                    let compiled = residency_daemon::policy::compile(&config);
                    let (k, _geo, _) = kernel::start(&config, &compiled, target, None)?;
                    let drain = runtime.spawn(discard(k.events));
                    let t = storm(&cg, Op::Tcp(listener.tcp), connects)?;
                    let u = storm(&cg, Op::Udp(listener.udp), sends)?;
                    drain.abort();
                    drop(k.attached);
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
                    let count = |pid: u64| {
                        flows(&records)
                            .iter()
                            .filter(|f| f["process"]["pid"] == pid)
                            .count() as u64
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
