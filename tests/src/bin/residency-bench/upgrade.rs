//! `residency-bench upgrade`: how long a start takes until the programs are
//! in force, and how long an upgrade takes until the new build's programs
//! and policy are, with the full `GeoIP` tables; and whether anything got
//! through in between.
//!
//! Each round, on a cgroup of its own and with the full default database:
//!
//! 1. Cold start: a prober in the cgroup connects to A (denied by the first
//!    policy) every 100 µs; the daemon is spawned; the time to the prober's
//!    first EPERM is the start's.
//! 2. The daemon stops cleanly (its programs stay pinned and deciding).
//! 3. Upgrade: another binary (a copy of the daemon, as a package upgrade
//!    installs it) starts with a policy that also denies B. The prober
//!    connects to A and B alternately: B's first EPERM is the moment the
//!    new programs and policy are in force; every connect to A that
//!    succeeds meanwhile is a hole in enforcement (there must be none).

use std::{
    ffi::OsStr,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use residency_tests::{Daemon, Listener, TestCgroup, TestPins, privileged_or_skip};

use super::write_section;

fn config(deny: &[Ipv4Addr]) -> String {
    let list: Vec<String> = deny.iter().map(|a| format!("\"{a}/32\"")).collect();
    format!(
        r#"
mode = "enforce"
[kernel]
poll_interval_ms = 10
[[deny]]
name = "bench-denied"
destinations = [{}]
"#,
        list.join(", ")
    )
}

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 81);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 82);

/// Monotonic nanoseconds, comparable between processes.
fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

fn eperm(dest: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&dest, Duration::from_secs(1)),
        Err(e) if e.raw_os_error() == Some(nix::libc::EPERM)
    )
}

/// The prober (run as `residency-bench upgrade-probe`): joins `cgroup`,
/// prints `ready`, then connects to `keep` (counting successes) and, with
/// `until`, to it too, every 100 µs, until `until` (or, without it, `keep`)
/// answers EPERM; prints `enforced <mono ns> <successes to keep>`.
///
/// # Errors
/// If no EPERM comes within `limit`.
pub fn probe(
    cgroup: &Path,
    keep: SocketAddr,
    until: Option<SocketAddr>,
    limit: Duration,
) -> anyhow::Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())?;
    println!("ready");
    let start = Instant::now();
    let mut holes = 0u64;
    loop {
        let kept = eperm(keep);
        let done = match until {
            Some(u) => {
                if !kept {
                    holes += 1;
                }
                eperm(u)
            }
            None => kept,
        };
        if done {
            break;
        }
        ensure!(start.elapsed() < limit, "no EPERM within {limit:?}");
        std::thread::sleep(Duration::from_micros(100));
    }
    println!("enforced {} {holes}", mono_ns());
    Ok(())
}

struct Probe(std::process::Child);

impl Probe {
    fn start(cg: &TestCgroup, keep: SocketAddr, until: Option<SocketAddr>) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("upgrade-probe").arg(&cg.path).arg(keep.to_string());
        if let Some(u) = until {
            cmd.arg("--until").arg(u.to_string());
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = child.stdout.as_mut().context("probe stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        ensure!(line.trim() == "ready", "probe: {line}");
        Ok(Probe(child))
    }

    /// `(enforced at, successful connects to the kept destination)`.
    fn wait(self) -> anyhow::Result<(u64, u64)> {
        let out = self.0.wait_with_output()?;
        ensure!(out.status.success(), "probe failed");
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("enforced "))
            .context("probe said nothing")?;
        let mut parts = line.split_whitespace();
        let at = parts.next().context("time")?.parse()?;
        let holes = parts.next().context("holes")?.parse()?;
        Ok((at, holes))
    }
}

fn ms(ns: u64) -> f64 {
    #[expect(clippy::cast_precision_loss, reason = "milliseconds for a table")]
    let v = ns as f64 / 1e6;
    v
}

/// Runs the benchmark.
///
/// # Errors
/// If a daemon does not start, or a prober sees no EPERM.
pub fn run(rounds: usize, db: &Path, write: Option<PathBuf>) -> anyhow::Result<()> {
    if !privileged_or_skip("residency-bench upgrade") {
        bail!("needs root");
    }
    ensure!(db.is_file(), "no GeoIP database at {}", db.display());
    let a = Listener::bind(IpAddr::V4(A))?;
    let b = Listener::bind(IpAddr::V4(B))?;
    let dir = tempfile::tempdir()?;
    let next = dir.path().join("next");
    std::fs::create_dir(&next)?;
    let exe = residency_tests::workspace_bin("residency")?;
    std::fs::copy(&exe, next.join("residency"))?;
    let (mut cold, mut upgrade) = (Vec::new(), Vec::new());
    let mut holes = 0;
    for round in 0..rounds {
        let cg = TestCgroup::new("bench-upgrade")?;
        let pins = TestPins::new("bench-upgrade");
        let state = dir.path().join(format!("state-{round}"));
        let args = [
            OsStr::new("--instance"),
            OsStr::new(&pins.instance),
            OsStr::new("--state-dir"),
            state.as_os_str(),
            OsStr::new("--geoip"),
            db.as_os_str(),
        ];
        let probe = Probe::start(&cg, a.tcp, None)?;
        let t0 = mono_ns();
        let first = Daemon::start_exe(&exe, &config(&[A]), &cg, &args)?;
        let (at, _) = probe.wait()?;
        cold.push(ms(at.saturating_sub(t0)));
        first.stop()?;

        let probe = Probe::start(&cg, a.tcp, Some(b.tcp))?;
        let t0 = mono_ns();
        let second = Daemon::start_exe(&next.join("residency"), &config(&[A, B]), &cg, &args)?;
        let (at, h) = probe.wait()?;
        upgrade.push(ms(at.saturating_sub(t0)));
        holes += h;
        second.stop()?;
        eprintln!(
            "round {}: start {:.0} ms, upgrade {:.0} ms, {h} connects through",
            round + 1,
            cold[round],
            upgrade[round]
        );
    }
    let med = |v: &[f64]| super::median(v.to_vec());
    let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
    let mut body = String::new();
    writeln!(
        body,
        "Full default GeoIP database ({}), release build, {rounds} rounds, each on a cgroup of \
         its own; times from spawning the daemon's process. The upgrade is another binary \
         taking the pinned links over from a cleanly stopped daemon (as `systemctl restart` \
         after a package upgrade does), with a policy that adds a denied address: its first \
         EPERM is the new programs and policy in force. Meanwhile a prober connects to the \
         address both policies deny every 100 µs.\n",
        db.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    )?;
    writeln!(body, "| | median | max |\n|---|---|---|")?;
    for (what, v) in [
        ("start: spawn to programs in force (first EPERM)", &cold),
        (
            "upgrade: spawn to new programs and policy in force",
            &upgrade,
        ),
    ] {
        writeln!(body, "| {what} | {:.0} ms | {:.0} ms |", med(v), max(v))?;
    }
    writeln!(
        body,
        "\nConnects to the denied address that succeeded during the upgrades: **{holes}**.\n"
    )?;
    println!("{body}");
    if let Some(path) = write {
        write_section(&path, "upgrade", &body)?;
    }
    Ok(())
}
