//! Enforcement that outlives the daemon: the programs are pinned, so a
//! `kill -9`, a restart and an upgrade leave no moment in which a denied
//! destination is reachable, and the evidence chain says how long each
//! daemon was away. Real programs on a real child cgroup, real sockets on
//! loopback.

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    time::{Duration, Instant},
};

use residency_tests::{
    ClientOptions, Daemon, Listener, Op, TestCgroup, TestPins, action, bpftool_attached,
    privileged_or_skip, run_client, spawn_client, workspace_bin,
};
use serde_json::Value;

const DENIED: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 77);

fn config(extra_kernel: &str) -> String {
    format!(
        r#"
mode = "enforce"
[kernel]
poll_interval_ms = 5
{extra_kernel}

[[deny]]
name = "denied-in-test"
destinations = ["127.0.0.77/32"]
"#
    )
}

/// A daemon of `pins`' instance, keeping its evidence in `state`.
fn start(
    config: &str,
    cg: &TestCgroup,
    pins: &TestPins,
    state: &Path,
    exe_dir: Option<&Path>,
) -> anyhow::Result<Daemon> {
    let args: [&OsStr; 4] = [
        OsStr::new("--instance"),
        OsStr::new(&pins.instance),
        OsStr::new("--state-dir"),
        state.as_os_str(),
    ];
    match exe_dir {
        None => Daemon::start_with(config, cg, &args),
        Some(dir) => Daemon::start_exe(&dir.join("residency"), config, cg, &args),
    }
}

/// The tests here time hand-overs; they take turns rather than share
/// two cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Exit code and everything the command printed.
fn residency(args: &[&OsStr]) -> anyhow::Result<(i32, String)> {
    let (code, out, err) = residency_tests::residency_cli(args)?;
    Ok((code, format!("{out}{err}")))
}

/// `residency detach --instance` of `pins`.
fn detach(pins: &TestPins) -> anyhow::Result<(i32, String)> {
    residency(&[
        OsStr::new("detach"),
        OsStr::new("--instance"),
        OsStr::new(&pins.instance),
    ])
}

fn gap(records: &[Value]) -> Option<&Value> {
    records.iter().find(|r| {
        action(r) == "evidence-gap" && r["residency"]["evidence"]["gap"]["reason"] == "daemon-away"
    })
}

/// `(link id, program id)` of each link pinned for the instance.
fn pinned_links(pins: &TestPins) -> Vec<(String, Option<(u32, u32)>)> {
    let dir = Path::new(residency_daemon::kernel::pins::ROOT)
        .join(&pins.instance)
        .join("links");
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    (name, residency_daemon::kernel::pins::link_ids(&e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Back-to-back clients in the cgroup, each connecting to `addr` every
/// 200 µs for half a second, until stopped.
struct Storm {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<Vec<Value>>>,
}

impl Storm {
    fn start(cg: &TestCgroup, addr: std::net::SocketAddr) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let dir = cg.path.clone();
        let thread = std::thread::spawn(move || {
            let mut reports = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let child = spawn_client(
                    &[Op::Tcp(addr)],
                    &ClientOptions {
                        cgroup_dir: Some(&dir),
                        duration_ms: Some(500),
                        interval_us: Some(200),
                        ..Default::default()
                    },
                )?;
                let out = child.wait_with_output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "storm client: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                reports.push(serde_json::from_slice(&out.stdout)?);
            }
            Ok(reports)
        });
        // Under way before anything is done to the daemon.
        std::thread::sleep(Duration::from_millis(300));
        Storm { stop, thread }
    }

    /// Connects that succeeded, attempts that got EPERM, and the reports.
    fn stop(self) -> anyhow::Result<(u64, u64, Vec<Value>)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let reports = self
            .thread
            .join()
            .map_err(|_| anyhow::anyhow!("the storm thread panicked"))??;
        let (mut ok, mut eperm) = (0, 0);
        for r in &reports {
            let (o, e) = denied_ok_and_eperm(r);
            ok += o;
            eperm += e;
        }
        Ok((ok, eperm, reports))
    }
}

fn denied_ok_and_eperm(report: &Value) -> (u64, u64) {
    let r = &report["ops"][0];
    (
        r["ok"].as_u64().unwrap_or(0),
        r["errors"]["EPERM"].as_u64().unwrap_or(0),
    )
}

#[test]
#[expect(clippy::too_many_lines, reason = "one storm across three hand-overs")]
fn kill_restart_and_upgrade_under_a_connect_storm_let_nothing_through() -> anyhow::Result<()> {
    if !privileged_or_skip("kill_restart_and_upgrade_under_a_connect_storm_let_nothing_through") {
        return Ok(());
    }
    let _serial = serial();
    let cg = TestCgroup::new("persist-storm")?;
    let pins = TestPins::new("storm");
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let denied = Listener::bind(IpAddr::V4(DENIED))?;
    let config = config("");

    // The "new build": the daemon's binary from another place, as a
    // package upgrade puts it. It loads its own programs and swaps them in.
    let next = dir.path().join("next");
    std::fs::create_dir(&next)?;
    std::fs::copy(workspace_bin("residency")?, next.join("residency"))?;

    let first = start(&config, &cg, &pins, &state, None)?;
    let before = pinned_links(&pins);
    assert!(
        before
            .iter()
            .any(|(n, ids)| n == "residency_connect4" && ids.is_some()),
        "no pinned connect4 link: {before:?}"
    );

    // The storm: a connect to the denied address every 200 µs, for as long
    // as the three hand-overs take (clients of half a second each, back to
    // back, so that each reports what it saw).
    let storm = Storm::start(&cg, denied.tcp);
    std::thread::sleep(Duration::from_millis(400));

    // 1. kill -9: nobody reads the ring, the programs go on deciding.
    let _ = first.kill_hard()?;
    std::thread::sleep(Duration::from_millis(400));
    let second = start(&config, &cg, &pins, &state, None)?;
    std::thread::sleep(Duration::from_millis(400));

    // 2. A restart: a clean stop (the programs stay) and a start.
    let second_records = second.stop()?;
    std::thread::sleep(Duration::from_millis(300));
    let third = start(&config, &cg, &pins, &state, None)?;
    std::thread::sleep(Duration::from_millis(400));
    let third_records_stop = third.stop()?;

    // 3. An upgrade: the other binary takes the pinned links over.
    std::thread::sleep(Duration::from_millis(300));
    let upgraded = start(&config, &cg, &pins, &state, Some(&next))?;
    let after = pinned_links(&pins);
    std::thread::sleep(Duration::from_millis(400));
    let (ok, eperm, reports) = storm.stop()?;
    assert_eq!(ok, 0, "connects reached the denied address: {reports:?}");
    assert!(eperm > 1_000, "the storm hardly ran: {eperm} attempts");

    // The same links carry the new programs: ids kept, programs replaced.
    let connect = |links: &[(String, Option<(u32, u32)>)]| {
        links
            .iter()
            .find(|(n, _)| n == "residency_connect4")
            .and_then(|(_, ids)| *ids)
    };
    let (link_before, prog_before) = connect(&before).expect("connect4 before");
    let (link_after, prog_after) = connect(&after).expect("connect4 after");
    assert_eq!(
        link_before, link_after,
        "the link was replaced, not updated"
    );
    assert_ne!(prog_before, prog_after, "the program was not replaced");

    let upgraded_records = upgraded.stop()?;

    // A gap record for each hand-over, each saying enforcement stayed on.
    for (what, records) in [
        ("after kill -9", &second_records),
        ("after the restart", &third_records_stop),
        ("after the upgrade", &upgraded_records),
    ] {
        let g = gap(records).unwrap_or_else(|| {
            let actions: Vec<&str> = records
                .iter()
                .map(action)
                .filter(|a| !a.is_empty())
                .collect();
            panic!("no daemon-away gap {what}: {actions:?}")
        });
        let g = &g["residency"]["evidence"]["gap"];
        assert_eq!(g["enforcement"], "kept", "{what}: {g}");
        assert!(g["milliseconds"].as_u64().is_some(), "{what}: {g}");
        let late = g["decisions_recorded_late"].as_u64().unwrap_or(0);
        let lost = g["decisions_not_recorded"].as_u64().unwrap_or(u64::MAX);
        assert!(
            late + lost > 0,
            "{what}: the storm decided nothing meanwhile? {g}"
        );
    }
    // The kill: decisions made while no daemon ran were waiting in the ring
    // and are recorded by the next daemon, dated before it started.
    let started_at = second_records
        .iter()
        .find(|r| action(r) == "started")
        .and_then(|r| r["@timestamp"].as_str())
        .map(str::to_owned)
        .expect("started");
    let late_blocked = second_records
        .iter()
        .filter(|r| {
            r["residency"]["verdict"] == "blocked"
                && r["@timestamp"].as_str().is_some_and(|t| *t < *started_at)
        })
        .count();
    assert!(late_blocked > 0, "no decision from the gap was recorded");
    // Stops with persist on say so.
    let stopped = third_records_stop
        .iter()
        .find(|r| action(r) == "stopped")
        .expect("stopped");
    assert_eq!(stopped["residency"]["enforcement"], "kept", "{stopped}");

    let (code, text) = residency(&[
        OsStr::new("evidence"),
        OsStr::new("verify"),
        OsStr::new("--store"),
        state.as_os_str(),
    ])?;
    assert_eq!(code, 0, "the chain does not verify: {text}");
    Ok(())
}

#[test]
fn a_clean_stop_keeps_enforcing_until_detach_removes_it() -> anyhow::Result<()> {
    if !privileged_or_skip("a_clean_stop_keeps_enforcing_until_detach_removes_it") {
        return Ok(());
    }
    let _serial = serial();
    let cg = TestCgroup::new("persist-detach")?;
    let pins = TestPins::new("detach");
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let denied = Listener::bind(IpAddr::V4(DENIED))?;
    let in_cgroup = ClientOptions {
        cgroup: Some(&cg),
        ..Default::default()
    };

    let daemon = start(&config(""), &cg, &pins, &state, None)?;
    let records = daemon.stop()?;
    let stopped = records
        .iter()
        .find(|r| action(r) == "stopped")
        .expect("stopped");
    assert_eq!(stopped["residency"]["enforcement"], "kept", "{stopped}");

    // No daemon runs; the policy still decides.
    let report = run_client(&[Op::Tcp(denied.tcp)], &in_cgroup)?;
    assert_eq!(denied_ok_and_eperm(&report), (0, 1), "{report}");
    if let Some(progs) = bpftool_attached(&cg)? {
        assert!(
            progs.iter().any(|p| p.starts_with("cgroup_inet4_connect")),
            "{progs:?}"
        );
    }

    // `residency detach` is what removes it, and says what it removed.
    let (code, text) = detach(&pins)?;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("detached residency_connect4 (link "),
        "{text}"
    );
    assert!(text.contains("removed maps"), "{text}");
    assert!(!pins.exists(), "pins left after detach");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let report = run_client(&[Op::Tcp(denied.tcp)], &in_cgroup)?;
        if denied_ok_and_eperm(&report) == (1, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still blocked after detach: {report}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Again: nothing to do is not an error.
    let (code, text) = detach(&pins)?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("nothing to detach"), "{text}");

    // The next start finds no pins: the gap says nothing was enforced.
    let daemon = start(&config(""), &cg, &pins, &state, None)?;
    let g = daemon.wait_for(Duration::from_secs(5), |r| {
        gap(std::slice::from_ref(r)).is_some()
    })?;
    assert_eq!(
        g["residency"]["evidence"]["gap"]["enforcement"], "off",
        "{g}"
    );
    // A running daemon's instance is not detached without --force.
    let (code, text) = detach(&pins)?;
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("a residency daemon runs it"), "{text}");
    drop(daemon);
    Ok(())
}

#[test]
fn stale_tables_stop_blocking_only_when_configured() -> anyhow::Result<()> {
    if !privileged_or_skip("stale_tables_stop_blocking_only_when_configured") {
        return Ok(());
    }
    let _serial = serial();
    let cg = TestCgroup::new("persist-stale")?;
    let pins = TestPins::new("stale");
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let denied = Listener::bind(IpAddr::V4(DENIED))?;
    let in_cgroup = ClientOptions {
        cgroup: Some(&cg),
        ..Default::default()
    };
    // The daemon's heartbeat comes every stats_interval_ms (1 s): a bound
    // of 3 s is not yet reached just after the kill.
    let config = config("stale_after_secs = 3\nwhen_stale = \"monitor\"");

    let daemon = start(&config, &cg, &pins, &state, None)?;
    let _ = daemon.kill_hard()?;
    // Fresh: the last heartbeat is about a second old at most.
    let report = run_client(&[Op::Tcp(denied.tcp)], &in_cgroup)?;
    assert_eq!(denied_ok_and_eperm(&report), (0, 1), "{report}");
    std::thread::sleep(Duration::from_millis(3_500));
    // Stale, and told to monitor then: the connect goes through.
    let report = run_client(&[Op::Tcp(denied.tcp)], &in_cgroup)?;
    assert_eq!(denied_ok_and_eperm(&report), (1, 0), "{report}");

    // The next daemon reads that decision from the ring: flagged, stale.
    let daemon = start(&config, &cg, &pins, &state, None)?;
    let r = daemon.wait_for(Duration::from_secs(5), |r| r["residency"]["stale"] == true)?;
    assert_eq!(r["residency"]["verdict"], "flagged", "{r}");
    // And with it back, blocking resumes.
    let report = run_client(&[Op::Tcp(denied.tcp)], &in_cgroup)?;
    assert_eq!(denied_ok_and_eperm(&report), (0, 1), "{report}");
    drop(daemon);

    // The default keeps enforcing, however old the tables.
    let cg2 = TestCgroup::new("persist-stale-enforce")?;
    let pins2 = TestPins::new("stale-enforce");
    let state2 = dir.path().join("state2");
    let daemon = start(
        &self::config("stale_after_secs = 1"),
        &cg2,
        &pins2,
        &state2,
        None,
    )?;
    let _ = daemon.kill_hard()?;
    std::thread::sleep(Duration::from_millis(1_500));
    let report = run_client(
        &[Op::Tcp(denied.tcp)],
        &ClientOptions {
            cgroup: Some(&cg2),
            ..Default::default()
        },
    )?;
    assert_eq!(denied_ok_and_eperm(&report), (0, 1), "{report}");
    Ok(())
}
