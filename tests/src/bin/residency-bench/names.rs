//! `residency-bench names`: what following DNS answers costs, side by side
//! in one run.
//!
//! A client in a child cgroup asks a real DNS server (dnsmasq on
//! 127.53.0.1) for a name and connects to the answer's address, over and
//! over; only the `connect()` is timed. Three cases, interleaved round
//! after round (the order rotates): no programs; the programs with name
//! tracking off; the programs with name tracking on (the DNS program
//! parses every answer and the connect programs look the name up). Then
//! the DNS answers alone: answers per second through the kernel program,
//! and whether every answer's copy reached the reader (no loss of names).
//! Last, the kernel name map filled with 100,000 distinct names: its
//! memory, and its bound (a smaller map evicts the least recently used).

use std::{fmt::Write as _, net::Ipv4Addr, path::Path, process::Command};

use anyhow::{Context as _, ensure};
use residency_daemon::{config::Config, kernel};
use residency_tests::{ClientOptions, Dnsmasq, Listener, Op, TestCgroup, run_client};
use serde_json::Value;

use super::{median, write_section};

const DNS: &str = "127.53.0.1";

/// The machine's CPUs, read before this thread is pinned to one of them.
static CPUS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn config(track: bool, sni: bool, max_entries: u32) -> String {
    format!(
        "mode = \"monitor\"\n[policy]\nallowed = [\"EEA\"]\nlocal_networks = [\"127.53.0.0/16\"]\n\
         [names]\ntrack = {track}\nmax_entries = {max_entries}\nsni = {sni}\n\
         [[endpoint]]\nid = \"bench\"\npattern = \"*.bench.example\"\njurisdiction = [\"DE\"]\n\
         provider = \"Bench\"\nservice = \"Bench\"\nsource = \"benchmark fixture\"\n"
    )
}

/// The kernel side alone, with a reader that counts DNS records.
struct Attached {
    /// Detaches on drop, after `programs`.
    _pins: residency_tests::TestPins,
    programs: kernel::Attached,
    counters: kernel::CounterReader,
    dns_records: std::sync::Arc<std::sync::atomic::AtomicU64>,
    reader: tokio::task::JoinHandle<()>,
}

impl Attached {
    fn detach(self) {
        self.reader.abort();
        drop(self.programs);
    }
}

fn attach(
    runtime: &tokio::runtime::Runtime,
    cg: &TestCgroup,
    track: bool,
    sni: bool,
    max_entries: u32,
) -> anyhow::Result<Attached> {
    let config = Config::from_toml(&config(track, sni, max_entries), "bench")?;
    let mount = residency_tests::cgroup2_mount()?;
    let target = kernel::CgroupTarget::resolve(&mount, &cg.path)?;
    ensure!(
        !target.is_root,
        "benchmarks attach only to their own cgroup"
    );
    let _guard = runtime.enter();
    let compiled = residency_daemon::policy::compile(&config, jiff::Timestamp::now());
    let bench_pins = residency_tests::TestPins::new("bench");
    let k = kernel::start(
        &config.kernel,
        &config.names,
        config.may_block(),
        &compiled,
        &[],
        target,
        None,
        bench_pins.open()?,
    )?
    .kernel;
    let events = k.events;
    let dns_records = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = dns_records.clone();
    let reader = runtime.spawn(async move {
        let mut events = events;
        loop {
            tokio::select! {
                r = events.readable() => if r.is_err() { return },
                () = tokio::time::sleep(std::time::Duration::from_millis(10)) => {}
            }
            events.drain(usize::MAX, |rec| {
                if matches!(rec, Ok(kernel::Decoded::Dns(_))) {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    Ok(Attached {
        programs: k.attached,
        _pins: bench_pins,
        counters: k.counters,
        dns_records,
        reader,
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    None,
    Off,
    OnNoSni,
    On,
}

impl Case {
    const ALL: [Case; 4] = [Case::None, Case::Off, Case::OnNoSni, Case::On];
    fn name(self) -> &'static str {
        match self {
            Case::None => "no programs",
            Case::Off => "programs, name tracking off",
            Case::OnNoSni => "programs, names on, TLS server names off",
            Case::On => "programs, names on (default, with TLS server names)",
        }
    }
}

struct Sample {
    p50: f64,
    p99: f64,
}

fn timed(report: &Value, n: u64) -> anyhow::Result<Sample> {
    let r = &report["ops"][0];
    ensure!(
        r["ok"].as_u64() == Some(n),
        "not every call succeeded: {report}"
    );
    Ok(Sample {
        p50: r["p50_ns"].as_f64().context("p50")?,
        p99: r["p99_ns"].as_f64().context("p99")?,
    })
}

/// `(elements, bytes_memlock)` of the kernel's name map.
fn name_map() -> anyhow::Result<(u64, u64)> {
    let show = Command::new("bpftool")
        .args(["-j", "map", "show", "name", "DNS_NAMES"])
        .output()
        .context("bpftool")?;
    let v: Value = serde_json::from_slice(&show.stdout).context("bpftool map show")?;
    let v = if v.is_array() { v[0].clone() } else { v };
    let memlock = v["bytes_memlock"].as_u64().context("bytes_memlock")?;
    let dump = Command::new("bpftool")
        .args(["map", "dump", "name", "DNS_NAMES"])
        .output()
        .context("bpftool map dump")?;
    let text = String::from_utf8_lossy(&dump.stdout);
    let found = text
        .lines()
        .rev()
        .find_map(|l| {
            l.strip_prefix("Found ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .context("bpftool map dump gave no count")?;
    Ok((found, memlock))
}

pub fn run(
    rounds: usize,
    connects: u64,
    answers: u64,
    fill: u32,
    write: Option<&Path>,
) -> anyhow::Result<()> {
    ensure!(
        rounds > 0 && connects > 0 && answers > 0,
        "counts must be positive"
    );
    let dir = tempfile::tempdir()?;
    let mut hosts = String::with_capacity(usize::try_from(fill).unwrap_or(0) * 32);
    for i in 1..=fill {
        let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 64, 0, 0)) + i);
        let _ = writeln!(hosts, "{a} n{i}.fill.example");
    }
    let Some(dns) = Dnsmasq::start(
        dir.path(),
        DNS,
        &hosts,
        "address=/bench.example/127.0.0.77\n",
    )?
    else {
        anyhow::bail!("dnsmasq is needed: apt-get install dnsmasq-base");
    };
    // The client asks, waits for the answer, then connects: where the
    // scheduler happens to wake it dominates the variance. The DNS server
    // gets CPU 0 and the client (started from this thread) the last CPU.
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    CPUS.store(cpus, std::sync::atomic::Ordering::Relaxed);
    if cpus > 1 {
        let pin = |pid: i32, cpu: usize| {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu)
                .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(pid), &set))
        };
        pin(i32::try_from(dns.pid()).unwrap_or(0), 0)?;
        pin(0, cpus - 1)?;
    }
    let _dns = dns;
    let listener = Listener::bind(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 77)))?;
    let cg = TestCgroup::new("bench-names")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let server: std::net::IpAddr = DNS.parse()?;
    let connect_op = Op::DnsTcp {
        name: "c{i}.bench.example".into(),
        server,
        port: listener.tcp.port(),
    };
    let dns_op = Op::Dns {
        name: "d{i}.bench.example".into(),
        server,
    };
    let client = |op: &Op, n: u64| {
        run_client(
            std::slice::from_ref(op),
            &ClientOptions {
                cgroup: Some(&cg),
                repeat: Some(n),
                timing: true,
                ..Default::default()
            },
        )
    };
    // Warm-up.
    client(&connect_op, connects / 10)?;

    let mut samples: Vec<(usize, Case, Sample)> = Vec::new();
    for round in 0..rounds {
        for k in 0..Case::ALL.len() {
            let case = Case::ALL[(round + k) % Case::ALL.len()];
            let attached = match case {
                Case::None => None,
                Case::Off => Some(attach(&runtime, &cg, false, false, 131_072)?),
                Case::OnNoSni => Some(attach(&runtime, &cg, true, false, 131_072)?),
                Case::On => Some(attach(&runtime, &cg, true, true, 131_072)?),
            };
            let report = client(&connect_op, connects)?;
            samples.push((round, case, timed(&report, connects)?));
            if let Some(a) = attached {
                a.detach();
            }
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }

    // DNS answers alone: per second, and every copy read.
    let mut rates = Vec::new();
    for case in [Case::None, Case::On] {
        let attached = match case {
            Case::On => Some(attach(&runtime, &cg, true, true, 131_072)?),
            _ => None,
        };
        let report = client(&dns_op, answers)?;
        let wall = report["wall_ns"].as_f64().context("wall")? / 1e9;
        #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
        let per_sec = answers as f64 / wall;
        let (copies, dropped) = match &attached {
            Some(a) => {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let n = a.dns_records.load(std::sync::atomic::Ordering::Relaxed);
                let dropped = a.counters.read()?.names_dropped;
                (Some(n), Some(dropped))
            }
            None => (None, None),
        };
        let p50 = report["ops"][0]["p50_ns"].as_f64().unwrap_or(0.0);
        rates.push((case, per_sec, p50, copies, dropped));
        if let Some(a) = attached {
            a.detach();
        }
    }

    // The name map at `fill` distinct names, and a small one that evicts.
    let mut memory = Vec::new();
    for max_entries in [131_072u32, 16_384] {
        let a = attach(&runtime, &cg, true, true, max_entries)?;
        let fill_op = Op::Dns {
            name: "n{i}.fill.example".into(),
            server,
        };
        // Passes count from 1: n1 .. n<fill>.
        client(&fill_op, u64::from(fill))?;
        let (found, memlock) = name_map()?;
        memory.push((max_entries, found, memlock));
        a.detach();
    }

    let table = render(rounds, connects, answers, fill, &samples, &rates, &memory);
    print!("{table}");
    if let Some(path) = write {
        write_section(path, "names", &table)?;
        eprintln!("wrote the table to {}", path.display());
    }
    Ok(())
}

type Rate = (Case, f64, f64, Option<u64>, Option<u64>);

fn render(
    rounds: usize,
    connects: u64,
    answers: u64,
    fill: u32,
    samples: &[(usize, Case, Sample)],
    rates: &[Rate],
    memory: &[(u32, u64, u64)],
) -> String {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let cpus = CPUS.load(std::sync::atomic::Ordering::Relaxed);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured {} on Linux {kernel}, {cpus} CPUs, by `cargo xtask bench names`: {rounds} \
         rounds of {connects} connects per case, each right after a DNS answer from dnsmasq \
         for a fresh name (only `connect()` is timed); cases interleaved. p50 and p99: the \
         median over rounds; \"vs none\": each round against the same round's no-programs \
         case (median [range]). The client is pinned to the last CPU, dnsmasq to CPU 0.\n",
        jiff::Zoned::now().strftime("%Y-%m-%d")
    );
    let _ = writeln!(
        out,
        "| TCP connect() after a DNS answer | p50 | p99 | p50 vs none | p99 vs none |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    let of = |case: Case, f: fn(&Sample) -> f64| {
        median(
            samples
                .iter()
                .filter(|(_, c, _)| *c == case)
                .map(|(_, _, s)| f(s))
                .collect(),
        )
    };
    let vs = |case: Case, f: fn(&Sample) -> f64| {
        let mut r: Vec<f64> = samples
            .iter()
            .filter(|(_, c, _)| *c == case)
            .filter_map(|(round, _, s)| {
                samples
                    .iter()
                    .find(|(r, c, _)| r == round && *c == Case::None)
                    .map(|(_, _, b)| (f(s) / f(b) - 1.0) * 100.0)
            })
            .collect();
        r.sort_by(f64::total_cmp);
        let lo = r.first().copied().unwrap_or(0.0);
        let hi = r.last().copied().unwrap_or(0.0);
        (median(r), lo, hi)
    };
    for case in Case::ALL {
        let (m, lo, hi) = vs(case, |s| s.p50);
        let (m99, _, _) = vs(case, |s| s.p99);
        let _ = writeln!(
            out,
            "| {} | {:.2} µs | {:.2} µs | {m:+.1}% [{lo:+.1}, {hi:+.1}] | {m99:+.1}% |",
            case.name(),
            of(case, |s| s.p50) / 1e3,
            of(case, |s| s.p99) / 1e3,
        );
    }
    let (on, _, _) = vs(Case::On, |s| s.p50);
    let (no_sni, _, _) = vs(Case::OnNoSni, |s| s.p50);
    let verdict = |x: f64| if x <= 10.0 { "met" } else { "NOT met" };
    let _ = writeln!(
        out,
        "\nTarget: connect() p50 with name tracking within +10% of no programs: {on:+.1}% with \
         TLS server names ({}), {no_sni:+.1}% without ({}).\n",
        verdict(on),
        verdict(no_sni)
    );
    let _ = writeln!(
        out,
        "| DNS answers ({answers} queries, one client) | answers/s | query p50 | copies read | lost |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|");
    for (case, per_sec, p50, copies, dropped) in rates {
        let _ = writeln!(
            out,
            "| {} | {per_sec:.0} | {:.1} µs | {} | {} |",
            if *case == Case::None {
                "no programs"
            } else {
                "name tracking on"
            },
            p50 / 1e3,
            copies.map_or("-".into(), |c| c.to_string()),
            dropped.map_or("-".into(), |d| d.to_string()),
        );
    }
    let _ = writeln!(
        out,
        "\n| Name map after {fill} distinct names | entries | kernel memory (memlock) |"
    );
    let _ = writeln!(out, "|---|---:|---:|");
    for (max, found, memlock) in memory {
        #[expect(clippy::cast_precision_loss, reason = "sizes far below 2^52")]
        let mib = *memlock as f64 / (1024.0 * 1024.0);
        let _ = writeln!(out, "| max_entries = {max} | {found} | {mib:.1} MiB |");
    }
    out.push('\n');
    out
}
