//! `residency-bench memory`: the daemon's resident memory, idle and after
//! many flows.
//!
//! Each round starts a fresh daemon (release build) on a cgroup of its own,
//! with the full default GeoIP database and the API up, as `residency run`
//! runs on a host. Read from `/proc/PID/status`:
//! - **idle**: 5 s after its `started` record;
//! - **after `--flows` flows**: a client in the cgroup sends that many UDP
//!   datagrams to 10 loopback listeners (each one a record today), and the
//!   reading is taken once the daemon's output has stopped growing for 3 s
//!   (every record written and stored).

use std::{
    ffi::OsStr,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use residency_tests::{
    ClientOptions, Daemon, Listener, Op, TestCgroup, privileged_or_skip, run_client,
};

use super::write_section;

/// Monitor mode on loopback (only 10/8 local), flows followed or not.
/// The memory bench does not follow them, so that each datagram is a
/// record: its reading is of 1 M records written and stored (`bench
/// flows` measures the same datagrams with flows followed).
pub(super) fn loopback_monitor(flows: bool) -> String {
    format!(
        r#"
mode = "monitor"
[policy]
# Loopback stands in for the world: only 10/8 is local.
local_networks = ["10.0.0.0/8"]
[kernel]
flows = {flows}
"#
    )
}
/// kB figures of `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Rss {
    pub(super) total: u64,
    anon: u64,
    file: u64,
    shmem: u64,
    peak: u64,
}

pub(super) fn rss(pid: i32) -> anyhow::Result<Rss> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(Rss {
        total: kb("VmRSS:"),
        anon: kb("RssAnon:"),
        file: kb("RssFile:"),
        shmem: kb("RssShmem:"),
        peak: kb("VmHWM:"),
    })
}

/// Waits until `path` has not grown for `quiet`.
pub(super) fn settled(path: &Path, quiet: Duration, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let (mut last, mut since) = (0, Instant::now());
    while Instant::now() < deadline {
        let len = std::fs::metadata(path).map_or(0, |m| m.len());
        if len != last {
            (last, since) = (len, Instant::now());
        } else if since.elapsed() >= quiet {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("the daemon's output kept growing for {limit:?}")
}

fn mb(kb: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "a reading, in MB")]
    let v = kb as f64 / 1024.0;
    format!("{v:.1} MB")
}

pub fn run(db: &Path, rounds: usize, flows: u64, write: Option<PathBuf>) -> anyhow::Result<()> {
    if !privileged_or_skip("bench memory") {
        anyhow::bail!("needs root");
    }
    let listeners: Vec<Listener> = (0..10u8)
        .map(|i| Listener::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 90 + i))))
        .collect::<Result<_, _>>()?;
    let ops: Vec<Op> = listeners.iter().map(|l| Op::Udp(l.udp)).collect();
    let mut idle = Vec::new();
    let mut busy = Vec::new();
    for round in 1..=rounds {
        let cg = TestCgroup::new("memory")?;
        let daemon = Daemon::start_with(
            &loopback_monitor(false),
            &cg,
            &[OsStr::new("--geoip"), db.as_os_str()],
        )?;
        let pid = daemon.pid().context("the daemon's pid")?.as_raw();
        std::thread::sleep(Duration::from_secs(5));
        let at_rest = rss(pid)?;
        run_client(
            &ops,
            &ClientOptions {
                cgroup: Some(&cg),
                repeat: Some(flows / 10),
                ..Default::default()
            },
        )?;
        settled(
            &daemon.output,
            Duration::from_secs(3),
            Duration::from_mins(10),
        )?;
        let after = rss(pid)?;
        eprintln!(
            "memory: round {round}: idle {} (anon {}), after {flows} flows {} (anon {})",
            mb(at_rest.total),
            mb(at_rest.anon),
            mb(after.total),
            mb(after.anon)
        );
        idle.push(at_rest);
        busy.push(after);
        daemon.stop()?;
    }
    let median = |v: &mut Vec<Rss>| {
        v.sort_by_key(|r| r.total);
        v[v.len() / 2]
    };
    let (i, b) = (median(&mut idle), median(&mut busy));
    let mut body = format!(
        "Measured {} by `cargo xtask bench memory` on this 2-core VM: `residency run` (release), \
         the full default GeoIP database ({}), the API up, monitor mode on a cgroup of its own; \
         `/proc/PID/status`, the median of {rounds} fresh daemons.\n\n\
         | | resident (VmRSS) | anonymous | file | shared | peak (VmHWM) |\n|---|---:|---:|---:|---:|---:|\n",
        jiff::Timestamp::now().strftime("%Y-%m-%d"),
        db.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    for (what, r) in [
        ("idle, 5 s after start".to_owned(), i),
        (format!("after {flows} UDP flows, written and stored"), b),
    ] {
        let _ = writeln!(
            body,
            "| {what} | {} | {} | {} | {} | {} |",
            mb(r.total),
            mb(r.anon),
            mb(r.file),
            mb(r.shmem),
            mb(r.peak)
        );
    }
    println!("{body}");
    if let Some(path) = write {
        write_section(&path, "memory", &body)?;
    }
    Ok(())
}
