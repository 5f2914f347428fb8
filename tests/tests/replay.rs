//! What-if replay on a store of real flows: a daemon records real connects
//! (loopback stands in for Germany and the US through a test GeoIP
//! database), then `residency replay` judges them again under other
//! configurations, through the daemon's API.

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use residency_tests::{
    ClientOptions, Daemon, Listener, Op, TestCgroup, de_us_db, privileged_or_skip, run_client,
    workspace_bin,
};
use serde_json::Value;

fn config(mode: &str, allowed: &str) -> String {
    format!(
        r#"
mode = "{mode}"
[kernel]
poll_interval_ms = 5
[policy]
allowed = [{allowed}]
# Loopback stands in for the world here (the test database places it).
local_networks = ["10.0.0.0/8"]
"#
    )
}

/// `residency replay` with `config` against the daemon's API socket:
/// exit code and the JSON report.
fn replay(
    dir: &Path,
    name: &str,
    config: &str,
    db: &Path,
    socket: &Path,
) -> anyhow::Result<(i32, Value)> {
    let file = dir.join(name);
    std::fs::write(&file, config)?;
    let out = Command::new(workspace_bin("residency")?)
        .args([
            OsStr::new("replay"),
            OsStr::new("--config"),
            file.as_os_str(),
            OsStr::new("--geoip"),
            db.as_os_str(),
            OsStr::new("--fail-on-new-blocks"),
            OsStr::new("--api"),
            socket.as_os_str(),
            OsStr::new("--json"),
        ])
        .output()?;
    let code = out.status.code().unwrap_or(-1);
    let report = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "replay printed no report ({e}, exit {code}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((code, report))
}

#[test]
fn replay_turns_exactly_the_expected_flows_and_the_same_policy_changes_nothing()
-> anyhow::Result<()> {
    if !privileged_or_skip(
        "replay_turns_exactly_the_expected_flows_and_the_same_policy_changes_nothing",
    ) {
        return Ok(());
    }
    let cg = TestCgroup::new("replay")?;
    let dir = tempfile::tempdir()?;
    let db = de_us_db(dir.path());
    let de = Listener::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 17)))?;
    let us = Listener::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 33)))?;
    let old = config("monitor", "\"EEA\"");
    let daemon = Daemon::start_with(&old, &cg, &[OsStr::new("--geoip"), db.as_os_str()])?;

    // Three connects to Germany (allowed), two to the US (flagged).
    let report = run_client(
        &[
            Op::Tcp(de.tcp),
            Op::Tcp(de.tcp),
            Op::Tcp(de.tcp),
            Op::Tcp(us.tcp),
            Op::Tcp(us.tcp),
        ],
        &ClientOptions {
            cgroup: Some(&cg),
            ..Default::default()
        },
    )?;
    assert!(
        report["ops"].as_array().is_some_and(|a| a.len() == 5),
        "{report}"
    );

    // The same configuration changes nothing, once all five are stored.
    let deadline = Instant::now() + Duration::from_secs(10);
    let same = loop {
        let (code, r) = replay(dir.path(), "same.toml", &old, &db, &daemon.socket)?;
        if r["flows"] == 5 {
            assert_eq!(code, 0, "{r}");
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the flows never reached the store: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(same["unchanged"], 5, "{same}");
    assert_eq!(same["changes"].as_array().map(Vec::len), Some(0), "{same}");

    // Enforcing the same jurisdictions blocks exactly the two US flows.
    let (code, strict) = replay(
        dir.path(),
        "strict.toml",
        &config("enforce", "\"EEA\""),
        &db,
        &daemon.socket,
    )?;
    assert_eq!(code, 1, "--fail-on-new-blocks must fail: {strict}");
    assert_eq!(strict["flows"], 5, "{strict}");
    assert_eq!(strict["unchanged"], 3, "{strict}");
    assert_eq!(strict["new_blocks"], 2, "{strict}");
    let changes = strict["changes"].as_array().cloned().unwrap_or_default();
    assert_eq!(changes.len(), 1, "{strict}");
    assert_eq!(changes[0]["from"], "flagged");
    assert_eq!(changes[0]["to"], "blocked");
    assert_eq!(changes[0]["flows"], 2);
    for e in changes[0]["examples"].as_array().into_iter().flatten() {
        assert_eq!(e["destination"], "127.0.0.33", "{e}");
        assert_eq!(e["port"], us.tcp.port(), "{e}");
    }

    // Allowing the US as well turns the two flagged flows to allowed, and
    // blocks nothing new.
    let (code, loose) = replay(
        dir.path(),
        "loose.toml",
        &config("monitor", "\"EEA\", \"US\""),
        &db,
        &daemon.socket,
    )?;
    assert_eq!(code, 0, "{loose}");
    assert_eq!(loose["new_blocks"], 0, "{loose}");
    assert_eq!(loose["unchanged"], 3, "{loose}");
    let changes = loose["changes"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        changes
            .iter()
            .map(|c| (c["from"].as_str(), c["to"].as_str(), c["flows"].as_u64()))
            .collect::<Vec<_>>(),
        [(Some("flagged"), Some("allowed"), Some(2))],
        "{loose}"
    );
    daemon.stop()?;
    Ok(())
}
