//! End-to-end: a full evidence disk. The state directory is a small tmpfs;
//! a filler file takes its last byte while an enforcing daemon records
//! blocked connects. Enforcement goes on (EPERM), `/readyz` says the store
//! takes no writes, and the output file still gets every record. Once the
//! filler is gone the store takes writes again, starting with a
//! `store-unwritable` gap record that counts exactly the records it missed;
//! the chain verifies and what was stored before is unchanged.

use std::{
    ffi::OsStr,
    io::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use residency_api::client::{Client, Target};
use residency_tests::{
    ClientOptions, Daemon, Listener, Op, TestCgroup, privileged_or_skip, run_client, workspace_bin,
};
use serde_json::Value;

/// Small enough to fill at once, large enough for the store's files.
const TMPFS_SIZE: &str = "16m";

/// A tmpfs mounted for one test, unmounted when dropped (also when the
/// test fails; the daemon using it must be gone by then).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=0700"))
            .arg("residency-full-disk")
            .arg(dir.path())
            .status()?;
        ensure!(status.success(), "mount -t tmpfs failed: {status}");
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a process of the test not yet reaped): detach it
            // now; the kernel frees it when the last user goes.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Takes every free byte of the filesystem at `path` into one file.
fn fill(path: &Path) -> anyhow::Result<u64> {
    let mut file = std::fs::File::create(path)?;
    let mut written = 0u64;
    for chunk in [1 << 20, 4096, 1] {
        let bytes = vec![0x5a_u8; chunk];
        loop {
            match file.write(&bytes) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.raw_os_error() == Some(nix::libc::ENOSPC) => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    ensure!(written > 0, "the filesystem was full already");
    Ok(written)
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn config() -> &'static str {
    r#"
mode = "enforce"
[kernel]
poll_interval_ms = 5
[evidence]
checkpoint_records = 100
checkpoint_interval_secs = 1

[[deny]]
name = "forbidden"
destinations = ["127.0.0.66/32"]
"#
}

/// GET `path` from the daemon's API over its root-only socket: (status,
/// body).
fn get(daemon: &Daemon, path: &str) -> anyhow::Result<(u16, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(Target::Socket(daemon.socket.clone()), None);
    let reply = rt.block_on(client.request(hyper::Method::GET, path, None))?;
    Ok((
        reply.status,
        String::from_utf8_lossy(&reply.body).into_owned(),
    ))
}

fn readyz(daemon: &Daemon) -> anyhow::Result<(u16, Value)> {
    let (status, body) = get(daemon, "/readyz")?;
    Ok((status, serde_json::from_str(&body)?))
}

/// Waits until `/readyz` answers 200 with every check true.
fn wait_ready(daemon: &Daemon, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, ready) = readyz(daemon)?;
        if status == 200 {
            ensure!(
                ready["ready"] == true
                    && ready["checks"]["evidence_store_writable"] == true
                    && ready["checks"]["kernel_programs_attached"] == true,
                "200 but not every check holds: {ready}"
            );
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "not ready within {timeout:?}: {ready}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A metric's value from `/metrics` (each of these is a whole number).
fn metric(daemon: &Daemon, name: &str) -> anyhow::Result<i64> {
    let (_, text) = get(daemon, "/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in /metrics"))
}

/// `n` connects from the cgroup to the forbidden address: the client's
/// pid, and whether every one failed with EPERM.
fn connects(cg: &TestCgroup, to: std::net::SocketAddr, n: u64) -> anyhow::Result<(u64, Value)> {
    let report = run_client(
        &[Op::Tcp(to)],
        &ClientOptions {
            cgroup: Some(cg),
            repeat: Some(n),
            ..Default::default()
        },
    )?;
    let op = &report["ops"][0];
    ensure!(
        op["errors"]["EPERM"] == n && op["ok"] == 0,
        "a connect to the denied address was not refused: {report}"
    );
    Ok((report["pid"].as_u64().unwrap_or(0), report))
}

/// Every stored record as (seq, hash, stored body, dict), straight from
/// the database.
type Row = (i64, Vec<u8>, Vec<u8>, Option<i64>);

fn rows(state: &Path) -> anyhow::Result<Vec<Row>> {
    let c = rusqlite::Connection::open_with_flags(
        state.join("evidence.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mut stmt = c.prepare("SELECT seq, hash, body, dict FROM records ORDER BY seq")?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// Sequence numbers of the stored `evidence-gap` records.
fn gap_seqs(state: &Path) -> anyhow::Result<Vec<i64>> {
    let c = rusqlite::Connection::open_with_flags(
        state.join("evidence.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mut stmt = c.prepare("SELECT seq FROM records WHERE kind = 'evidence-gap' ORDER BY seq")?;
    let seqs = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(seqs)
}

/// Flows of process `pid` among newline-free JSON `lines` (only lines
/// that name the pid at all are parsed).
fn flows_of<'a>(lines: impl IntoIterator<Item = &'a [u8]>, pid: u64) -> anyhow::Result<usize> {
    let needle = format!("\"pid\":{pid}");
    let mut n = 0;
    for line in lines {
        if !line.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            continue;
        }
        let r: Value = serde_json::from_slice(line)?;
        if r["event"]["dataset"] == "residency.flow" && r["process"]["pid"] == pid {
            n += 1;
        }
    }
    Ok(n)
}

#[test]
#[expect(clippy::too_many_lines, reason = "the issue's scenario, step by step")]
fn a_full_evidence_disk_keeps_enforcing_and_records_the_gap_when_space_returns()
-> anyhow::Result<()> {
    if !privileged_or_skip(
        "a_full_evidence_disk_keeps_enforcing_and_records_the_gap_when_space_returns",
    ) {
        return Ok(());
    }
    let began = Instant::now();
    // Declared first, dropped last: the daemon is gone before the unmount.
    let tmpfs = Tmpfs::mount(TMPFS_SIZE)?;
    let state: PathBuf = tmpfs.path().join("state");
    let filler = tmpfs.path().join("filler");
    let cg = TestCgroup::new("full-disk")?;
    let forbidden = Listener::bind(v4(66))?;
    let state_arg = [OsStr::new("--state-dir"), state.as_os_str()];
    // The output file is in the harness's own temporary directory, not on
    // the tmpfs: it is the record of what the store could not keep.
    let first = Daemon::start_with(config(), &cg, &state_arg)?;
    ensure!(
        !first.output.starts_with(tmpfs.path()),
        "the output file is on the tmpfs"
    );

    // Decisions stored while there is room: enough for the store to train
    // its compression dictionary, and then some stored compressed, so
    // that what must survive the full disk includes both.
    connects(&cg, forbidden.tcp, 4200)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let compressed = rows(&state)?.iter().filter(|r| r.3.is_some()).count();
        if compressed > 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no record stored compressed within 20 s: {}",
            first.stderr_text()
        );
        connects(&cg, forbidden.tcp, 10)?;
        std::thread::sleep(Duration::from_millis(50));
    }
    // A clean stop folds the write-ahead log back and truncates it; the
    // daemon that goes on has a log with no room to reuse, so its writes
    // need new space from the start (otherwise tens of thousands of small
    // compressed records fit in the old log's space first).
    let mut output = first.stop_raw()?;
    let first_lines = output
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let daemon = Daemon::start_with(config(), &cg, &state_arg)?;
    // (The started record is written just before the programs count as
    // attached: readiness follows a moment later.)
    wait_ready(&daemon, Duration::from_secs(5)).context("before the disk fills")?;
    let before = rows(&state)?;
    let compressed_before = before.iter().filter(|r| r.3.is_some()).count();

    // The disk fills. Decisions go on, and soon a write of the store's
    // needs a page the filesystem no longer has.
    let taken = fill(&filler)?;
    let full_at = Instant::now();
    let mut storm = 0;
    let ready = loop {
        connects(&cg, forbidden.tcp, 200)?;
        storm += 200;
        let (status, ready) = readyz(&daemon)?;
        if status == 503 {
            break ready;
        }
        ensure!(
            full_at.elapsed() < Duration::from_secs(20),
            "the store still took writes 20 s after the disk filled ({storm} connects): {ready}"
        );
    };
    let unwritable_after = full_at.elapsed();
    assert_eq!(ready["ready"], false, "{ready}");
    assert_eq!(ready["checks"]["evidence_store_writable"], false, "{ready}");
    assert_eq!(ready["checks"]["kernel_programs_attached"], true, "{ready}");
    let error = ready["error"].as_str().unwrap_or_default();
    eprintln!("/readyz while the disk is full: {ready}");
    assert!(
        error.contains("evidence store takes no writes") && error.contains("enforcement goes on"),
        "{ready}"
    );
    assert!(
        daemon.stderr_text().contains("evidence store write failed"),
        "the failure is not in the log: {}",
        daemon.stderr_text()
    );

    // Enforcement goes on while nothing can be stored. The output file
    // has the decisions, and the store counts every line of it that it
    // has not stored.
    let (pid, _) = connects(&cg, forbidden.tcp, 100)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let written = std::fs::read(&daemon.output)?;
        let lines: Vec<&[u8]> = written.split(|&b| b == b'\n').collect();
        // The last piece is what follows the last newline.
        let complete = &lines[..lines.len() - 1];
        if flows_of(complete.iter().copied(), pid)? == 100 {
            break first_lines + complete.len();
        }
        ensure!(
            Instant::now() < deadline,
            "the output file lacks the blocked connects made while the disk was full"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    loop {
        let handled = metric(&daemon, "residency_store_head_seq")?
            + metric(&daemon, "residency_store_records_not_stored_total")?;
        if handled >= i64::try_from(lines)? {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the store neither stored nor counted {lines} output lines (only {handled})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(metric(&daemon, "residency_store_writable")?, 0);
    assert!(metric(&daemon, "residency_store_unwritable_since_seconds")? > 0);
    let still_full = readyz(&daemon)?;
    assert_eq!(still_full.0, 503, "{}", still_full.1);

    // Room again: within the store's retry interval it takes writes, and
    // readiness returns.
    std::fs::remove_file(&filler)?;
    let freed_at = Instant::now();
    wait_ready(&daemon, Duration::from_secs(10)).context("after the disk had room again")?;
    let recovered_after = freed_at.elapsed();
    assert!(
        metric(&daemon, "residency_store_unwritable_since_seconds")? == 0,
        "still marked unwritable"
    );

    // The gap record, as the API serves it: the newest (the restart before
    // the disk filled left a daemon-away gap of its own).
    let gap_seq = *gap_seqs(&state)?
        .last()
        .context("no evidence-gap record in the store")?;
    let (status, body) = get(&daemon, &format!("/v1/flows/{gap_seq}"))?;
    assert_eq!(status, 200, "{body}");
    let served: Value = serde_json::from_str(&body)?;
    let gap = served["record"]["residency"]["evidence"]["gap"].clone();
    assert_eq!(gap["reason"], "store-unwritable", "{served}");
    let not_stored = gap["records_not_stored"].as_u64().unwrap_or(0);
    assert!(not_stored >= 100, "{gap}");
    let after_seq = gap["after_seq"].as_u64().context("no after_seq")?;
    assert_eq!(after_seq + 1, u64::try_from(gap_seq)?, "{gap}");
    assert!(
        gap["until"].is_string() && gap["after"].is_string(),
        "{gap}"
    );
    assert!(gap["milliseconds"].as_u64().unwrap_or(0) > 0, "{gap}");

    // Decisions after it are stored again (checked below: stopping drains
    // everything written into the store first).
    let (pid_after, _) = connects(&cg, forbidden.tcp, 20)?;
    output.extend(daemon.stop_raw()?);

    // The chain verifies as a whole.
    let out = Command::new(workspace_bin("residency")?)
        .args([
            OsStr::new("evidence"),
            OsStr::new("verify"),
            OsStr::new("--store"),
        ])
        .arg(&state)
        .env("NO_COLOR", "1")
        .output()?;
    assert!(
        out.status.success(),
        "verify failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // What was stored before the disk filled is there, byte for byte.
    let after = rows(&state)?;
    for row in &before {
        let now = after
            .iter()
            .find(|r| r.0 == row.0)
            .with_context(|| format!("record {} is gone", row.0))?;
        assert_eq!(now, row, "record {} changed", row.0);
    }

    // The store holds the output file's lines in their order, less exactly
    // the records each gap record counts, in one run right where that gap
    // record is.
    let output: Vec<&[u8]> = output
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut next = 0; // the next output line the store should hold
    let mut missed: Vec<&[u8]> = Vec::new();
    let mut after_gap: Vec<&[u8]> = Vec::new();
    let mut gaps = 0;
    let stored_all = residency_tests::stored_records(&state)?;
    for (seq, kind, body) in &stored_all {
        if kind == "evidence-gap" && output.get(next) != Some(&body.as_slice()) {
            let record: Value = serde_json::from_slice(body)?;
            let gap = &record["residency"]["evidence"]["gap"];
            if gap["reason"] != "store-unwritable" {
                continue; // the store's own note of another kind of gap
            }
            let n = usize::try_from(gap["records_not_stored"].as_u64().unwrap_or(0))?;
            ensure!(
                next + n <= output.len(),
                "gap {seq} counts more than was written"
            );
            missed.extend_from_slice(&output[next..next + n]);
            next += n;
            gaps += 1;
            continue;
        }
        ensure!(
            output.get(next) == Some(&body.as_slice()),
            "stored record {seq} is not output line {}: {}",
            next + 1,
            String::from_utf8_lossy(body)
        );
        if gaps > 0 {
            after_gap.push(body);
        }
        next += 1;
    }
    assert_eq!(next, output.len(), "the store lacks the output's tail");
    assert!(gaps >= 1);
    assert_eq!(
        flows_of(missed.iter().copied(), pid)?,
        100,
        "the connects made while the disk was full are among the records not stored"
    );
    assert_eq!(
        flows_of(after_gap.iter().copied(), pid_after)?,
        20,
        "the connects made after the gap are stored"
    );

    println!(
        "tmpfs {TMPFS_SIZE}: {} records stored before ({compressed_before} compressed); filler {taken} bytes; store unwritable {unwritable_after:?} after the disk filled \
         ({storm} connects); {not_stored} records not stored; ready again {recovered_after:?} after the \
         filler was removed; {gaps} gap record(s); {} records written, {} stored; test took {:?}",
        before.len(),
        output.len(),
        stored_all.len(),
        began.elapsed()
    );
    drop(cg);
    drop(tmpfs);
    Ok(())
}
