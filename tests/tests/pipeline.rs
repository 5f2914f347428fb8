//! End-to-end: the real `residency` binary, its real kernel programs attached
//! to a child cgroup made for each test, and real client processes opening
//! sockets to loopback from inside that cgroup.
//!
//! Needs root; without it each test skips with a message (and fails under
//! CI=true, where a skip would hide a failure).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::process::CommandExt as _,
};

use residency_tests::{
    ClientOptions, Daemon, Listener, Op, TestCgroup, action, bpftool_attached,
    bpftool_attached_after_detach, flows, privileged_or_skip, run_client, workspace_bin,
};
use serde_json::Value;

const NOBODY: u32 = 65534;

const MONITOR: &str = r#"
mode = "monitor"
[kernel]
poll_interval_ms = 5
"#;

/// Deny rules used by the blocking tests. 127.0.0.66 stands in for a
/// forbidden endpoint; `::1` for a forbidden IPv6 one. Both are loopback, so
/// nothing leaves the machine, and the rules apply only inside the test
/// cgroup.
fn deny_config(mode: &str) -> String {
    format!(
        r#"
mode = "{mode}"
[kernel]
poll_interval_ms = 5

[[deny]]
name = "forbidden-v4"
destinations = ["127.0.0.66/32"]

[[deny]]
name = "forbidden-v6"
destinations = ["::1/128"]
"#
    )
}

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn mapped(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), port)
}

/// The flow records for one operation of one client process.
fn matching<'a>(
    records: &'a [Value],
    pid: u64,
    ip: &str,
    port: u16,
    transport: &str,
) -> Vec<&'a Value> {
    flows(records)
        .into_iter()
        .filter(|f| {
            f["process"]["pid"] == pid
                && f["destination"]["ip"] == ip
                && f["destination"]["port"] == port
                && f["network"]["transport"] == transport
        })
        .collect()
}

fn pid_of(report: &Value) -> u64 {
    report["pid"].as_u64().expect("client reports its pid")
}

fn op_result(report: &Value, i: usize) -> &Value {
    &report["ops"][i]
}

fn errno_count(report: &Value, i: usize, errno: &str) -> u64 {
    op_result(report, i)["errors"][errno].as_u64().unwrap_or(0)
}

#[test]
fn reports_each_connect_and_sendto_once_with_identity() -> anyhow::Result<()> {
    if !privileged_or_skip("reports_each_connect_and_sendto_once_with_identity") {
        return Ok(());
    }
    let cg = TestCgroup::new("identity")?;
    let l4 = Listener::bind(v4(1))?;
    let l6 = Listener::bind(IpAddr::V6(Ipv6Addr::LOCALHOST))?;
    let daemon = Daemon::start(MONITOR, &cg)?;

    let ops = [
        Op::Tcp(l4.tcp),
        Op::Tcp(l6.tcp),
        Op::Udp(l4.udp),
        Op::Udp(l6.udp),
        Op::Tcp(mapped(Ipv4Addr::LOCALHOST, l4.tcp.port())),
    ];
    let report = run_client(
        &ops,
        &ClientOptions {
            cgroup: Some(&cg),
            uid: Some(NOBODY),
            ..Default::default()
        },
    )?;
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(op_result(&report, i)["ok"], 1, "op {op} failed: {report}");
    }
    let pid = pid_of(&report);
    let records = daemon.stop()?;

    let cases = [
        ("127.0.0.1", l4.tcp.port(), "tcp", "ipv4", "connect4", false),
        ("::1", l6.tcp.port(), "tcp", "ipv6", "connect6", false),
        ("127.0.0.1", l4.udp.port(), "udp", "ipv4", "sendmsg4", false),
        ("::1", l6.udp.port(), "udp", "ipv6", "sendmsg6", false),
        // ::ffff:127.0.0.1 on an AF_INET6 socket: reported and judged as IPv4.
        ("127.0.0.1", l4.tcp.port(), "tcp", "ipv4", "connect6", true),
    ];
    let cgroup_id = cg.id()?;
    for (ip, port, transport, ip_type, hook, v4_mapped) in cases {
        let found: Vec<&Value> = matching(&records, pid, ip, port, transport)
            .into_iter()
            .filter(|f| f["residency"]["hook"] == hook)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{transport} {ip}:{port} via {hook}: want exactly one record, got {found:#?}"
        );
        let f = found[0];
        assert_eq!(f["process"]["name"], "egress-client");
        assert_eq!(f["user"]["id"], NOBODY.to_string());
        assert_eq!(f["group"]["id"], NOBODY.to_string());
        assert_eq!(f["network"]["type"], ip_type);
        assert_eq!(f["network"]["direction"], "egress");
        assert_eq!(f["residency"]["verdict"], "allowed");
        assert_eq!(f["residency"]["cgroup"]["id"], cgroup_id);
        assert_eq!(
            f["residency"]["v4_mapped"].as_bool().unwrap_or(false),
            v4_mapped,
            "{f}"
        );
        assert_eq!(f["event"]["outcome"], "success");
    }
    // Nothing else from this client: one record per call.
    let from_client = flows(&records)
        .into_iter()
        .filter(|f| f["process"]["pid"] == pid)
        .count();
    assert_eq!(
        from_client,
        ops.len(),
        "records from the client: {records:#?}"
    );
    Ok(())
}

#[test]
fn processes_outside_the_cgroup_are_not_reported() -> anyhow::Result<()> {
    if !privileged_or_skip("processes_outside_the_cgroup_are_not_reported") {
        return Ok(());
    }
    let cg = TestCgroup::new("outside")?;
    let l4 = Listener::bind(v4(1))?;
    let daemon = Daemon::start(MONITOR, &cg)?;

    let outside = run_client(
        &[Op::Tcp(l4.tcp), Op::Udp(l4.udp)],
        &ClientOptions::default(),
    )?;
    let inside = run_client(
        &[Op::Tcp(l4.tcp)],
        &ClientOptions {
            cgroup: Some(&cg),
            ..Default::default()
        },
    )?;
    // Ctrl-C stops as cleanly as SIGTERM: detached, drained, accounted for.
    let records = daemon.stop_with(nix::sys::signal::Signal::SIGINT)?;
    let stopped = records
        .iter()
        .find(|r| action(r) == "stopped")
        .expect("stopped record");
    assert_eq!(
        stopped["residency"]["counters"]["kernel_submitted"],
        stopped["residency"]["counters"]["received"]
    );

    let outside_pid = pid_of(&outside);
    assert!(
        flows(&records)
            .iter()
            .all(|f| f["process"]["pid"] != outside_pid),
        "a process outside the cgroup was reported: {records:#?}"
    );
    // The control: the same call from inside is reported, so the absence
    // above is not just a daemon that reports nothing.
    assert_eq!(
        matching(&records, pid_of(&inside), "127.0.0.1", l4.tcp.port(), "tcp").len(),
        1
    );
    Ok(())
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: attach, block, record, detach"
)]
fn denied_prefixes_fail_with_eperm_and_are_reported_blocked() -> anyhow::Result<()> {
    if !privileged_or_skip("denied_prefixes_fail_with_eperm_and_are_reported_blocked") {
        return Ok(());
    }
    let cg = TestCgroup::new("enforce")?;
    let allowed = Listener::bind(v4(1))?;
    let forbidden = Listener::bind(v4(66))?;
    let forbidden6 = Listener::bind(IpAddr::V6(Ipv6Addr::LOCALHOST))?;
    // A clean stop detaches only with persist off (the default keeps the
    // programs enforcing; tests/tests/persist.rs covers that).
    let config = deny_config("enforce").replace("[kernel]\n", "[kernel]\npersist = false\n");
    let daemon = Daemon::start(&config, &cg)?;
    let instance = daemon
        .pins
        .as_ref()
        .map(|p| p.instance.clone())
        .unwrap_or_default();
    if let Some(progs) = bpftool_attached(&cg)? {
        // With name tracking or flows followed (both on by default), one
        // packet program per direction, and with flows the socket-release
        // and TCP-state programs; none of them is on the cgroup2 root.
        let mut kinds: Vec<&str> = progs
            .iter()
            .map(|p| p.split(':').next().unwrap_or(""))
            .collect();
        kinds.sort_unstable();
        assert_eq!(
            kinds,
            [
                "cgroup_inet4_connect",
                "cgroup_inet6_connect",
                "cgroup_inet_egress",
                "cgroup_inet_ingress",
                "cgroup_inet_sock_release",
                "cgroup_sock_ops",
                "cgroup_udp4_sendmsg",
                "cgroup_udp6_sendmsg"
            ],
            "connect4/6, sendmsg4/6, the name and the flow programs attached: {progs:?}"
        );
    }

    let ops = [
        Op::Tcp(forbidden.tcp),
        Op::Udp(forbidden.udp),
        Op::Tcp(forbidden6.tcp),
        Op::Udp(forbidden6.udp),
        Op::Tcp(mapped(Ipv4Addr::new(127, 0, 0, 66), forbidden.tcp.port())),
        Op::Udp(mapped(Ipv4Addr::new(127, 0, 0, 66), forbidden.udp.port())),
        Op::Tcp(allowed.tcp),
    ];
    let in_cgroup = ClientOptions {
        cgroup: Some(&cg),
        ..Default::default()
    };
    let report = run_client(&ops, &in_cgroup)?;
    for (i, op) in ops.iter().enumerate().take(6) {
        assert_eq!(
            errno_count(&report, i, "EPERM"),
            1,
            "{op} must fail with EPERM: {report}"
        );
    }
    assert_eq!(
        op_result(&report, 6)["ok"],
        1,
        "the allowed destination must connect: {report}"
    );
    let pid = pid_of(&report);
    let records = daemon.stop()?;

    let expect_blocked = [
        ("127.0.0.66", forbidden.tcp.port(), "tcp", "forbidden-v4"),
        ("127.0.0.66", forbidden.udp.port(), "udp", "forbidden-v4"),
        ("::1", forbidden6.tcp.port(), "tcp", "forbidden-v6"),
        ("::1", forbidden6.udp.port(), "udp", "forbidden-v6"),
    ];
    for (ip, port, transport, rule) in expect_blocked {
        let found = matching(&records, pid, ip, port, transport);
        // The IPv4 destinations are tried twice: directly and IPv4-mapped.
        let want = if ip == "::1" { 1 } else { 2 };
        assert_eq!(found.len(), want, "{transport} {ip}:{port}: {found:#?}");
        for f in found {
            assert_eq!(f["residency"]["verdict"], "blocked", "{f}");
            assert_eq!(f["event"]["outcome"], "failure");
            assert_eq!(f["event"]["type"][1], "denied");
            assert_eq!(f["rule"]["name"], rule);
            assert_eq!(f["residency"]["mode"], "enforce");
        }
    }
    let ok = matching(&records, pid, "127.0.0.1", allowed.tcp.port(), "tcp");
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0]["residency"]["verdict"], "allowed");
    assert_eq!(ok[0]["rule"]["name"], "local-networks");
    assert_eq!(ok[0]["residency"]["decided_by"], "local");

    // Stopped means detached: the pins gone (the daemon removed them, not
    // the harness), nothing left on the cgroup, and the same forbidden
    // connect now reaches the listener.
    let stopped = records
        .iter()
        .find(|r| action(r) == "stopped")
        .expect("stopped record");
    assert_eq!(stopped["residency"]["enforcement"], "off", "{stopped}");
    assert!(
        !std::path::Path::new(residency_daemon::kernel::pins::ROOT)
            .join(&instance)
            .exists(),
        "the daemon left its pins"
    );
    if let Some(progs) = bpftool_attached_after_detach(&cg, std::time::Duration::from_secs(2))? {
        assert!(
            progs.is_empty(),
            "programs left attached after stop: {progs:?}"
        );
    }
    let after = run_client(&[Op::Tcp(forbidden.tcp)], &in_cgroup)?;
    assert_eq!(
        op_result(&after, 0)["ok"],
        1,
        "still blocked after the daemon stopped: {after}"
    );
    Ok(())
}

#[test]
fn monitor_mode_flags_denied_destinations_but_never_blocks() -> anyhow::Result<()> {
    if !privileged_or_skip("monitor_mode_flags_denied_destinations_but_never_blocks") {
        return Ok(());
    }
    let cg = TestCgroup::new("monitor")?;
    let forbidden = Listener::bind(v4(66))?;
    let forbidden6 = Listener::bind(IpAddr::V6(Ipv6Addr::LOCALHOST))?;
    let daemon = Daemon::start(&deny_config("monitor"), &cg)?;
    let started = daemon
        .records()?
        .into_iter()
        .find(|r| action(r) == "started")
        .expect("started record");
    assert_eq!(
        started["residency"]["may_block"], false,
        "monitor mode loads without a deny path"
    );

    let ops = [
        Op::Tcp(forbidden.tcp),
        Op::Udp(forbidden.udp),
        Op::Tcp(forbidden6.tcp),
        Op::Udp(forbidden6.udp),
    ];
    let report = run_client(
        &ops,
        &ClientOptions {
            cgroup: Some(&cg),
            ..Default::default()
        },
    )?;
    for (i, op) in ops.iter().enumerate() {
        assert_eq!(
            op_result(&report, i)["ok"],
            1,
            "monitor mode blocked {op}: {report}"
        );
    }
    let pid = pid_of(&report);
    let records = daemon.stop()?;
    let mine: Vec<&Value> = flows(&records)
        .into_iter()
        .filter(|f| f["process"]["pid"] == pid)
        .collect();
    assert_eq!(mine.len(), 4);
    for f in mine {
        assert_eq!(f["residency"]["verdict"], "flagged", "{f}");
        assert_eq!(f["event"]["outcome"], "success");
        assert!(
            f["rule"]["name"]
                .as_str()
                .unwrap_or("")
                .starts_with("forbidden-")
        );
    }
    Ok(())
}

#[test]
fn a_full_ring_buffer_is_counted_and_reported_never_silent() -> anyhow::Result<()> {
    if !privileged_or_skip("a_full_ring_buffer_is_counted_and_reported_never_silent") {
        return Ok(());
    }
    let cg = TestCgroup::new("drops")?;
    let l4 = Listener::bind(v4(1))?;
    // One page of ring (about 42 records), no wakeups, and a slow timer: a
    // burst of sends must overflow it. Flows are not followed, so that
    // each datagram is a decision record (followed, repeats are counted
    // in the kernel: `tests/flows.rs`).
    let config = "
[kernel]
flows = false
ring_buffer_kib = 4
wakeup_kib = 4
poll_interval_ms = 500
stats_interval_ms = 100
";
    let daemon = Daemon::start(config, &cg)?;
    let sends: u64 = 20_000;
    let report = run_client(
        &[Op::Udp(l4.udp)],
        &ClientOptions {
            cgroup: Some(&cg),
            repeat: Some(sends),
            ..Default::default()
        },
    )?;
    assert_eq!(op_result(&report, 0)["ok"], sends);
    let pid = pid_of(&report);
    let records = daemon.stop()?;

    let reported = matching(&records, pid, "127.0.0.1", l4.udp.port(), "udp").len() as u64;
    let lost: Vec<&Value> = records
        .iter()
        .filter(|r| action(r) == "events-lost")
        .collect();
    let lost_sum: u64 = lost
        .iter()
        .map(|r| r["residency"]["lost"]["count"].as_u64().unwrap_or(0))
        .sum();
    let stopped = records
        .iter()
        .find(|r| action(r) == "stopped")
        .expect("stopped record");
    let counters = &stopped["residency"]["counters"];

    eprintln!(
        "drops: reported {reported} lost {lost_sum} events-lost records {}",
        lost.len()
    );
    assert!(
        lost_sum > 0,
        "a 4 KiB ring cannot hold {sends} records; expected losses: {counters}"
    );
    assert!(reported > 0, "some records must get through");
    // Every call is accounted for: reported or counted as lost, nothing else.
    assert_eq!(
        reported + lost_sum,
        sends,
        "reported {reported} + lost {lost_sum} != {sends} calls"
    );
    assert_eq!(counters["kernel_dropped"], lost_sum);
    assert_eq!(counters["kernel_submitted"], reported);
    assert_eq!(counters["received"], reported);
    Ok(())
}

#[test]
fn start_up_failures_say_why_in_one_line() -> anyhow::Result<()> {
    if !privileged_or_skip("start_up_failures_say_why_in_one_line") {
        return Ok(());
    }
    let bin = workspace_bin("residency")?;
    let dir = tempfile::tempdir()?;

    // A cgroup that does not exist.
    let out = std::process::Command::new(&bin)
        .args([
            "run",
            "--cgroup",
            "/residency-no-such-cgroup",
            "--output",
            "/dev/null",
        ])
        .env("NO_COLOR", "1")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(
        last.starts_with("error: cgroup ") && last.contains("does not exist"),
        "{err}"
    );

    // A configuration mistake: exit 64, with file and line.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "mode = \"monitor\"\n[kernel]\nring_buffer_kib = 3\n")?;
    let out = std::process::Command::new(&bin)
        .arg("run")
        .arg("--config")
        .arg(&bad)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("bad.toml:3: kernel.ring_buffer_kib"), "{err}");

    // Not root: exit 77, and the message says root is needed.
    let cg = TestCgroup::new("noperm")?;
    let out = std::process::Command::new(&bin)
        .args(["run", "--output", "/dev/null", "--cgroup"])
        .arg(&cg.path)
        .uid(NOBODY)
        .gid(NOBODY)
        .env("NO_COLOR", "1")
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(
        err.lines().last().unwrap_or("").contains("needs root"),
        "{err}"
    );
    Ok(())
}
