//! Flows followed in the kernel: real TCP transfers and UDP storms on
//! loopback, from a test cgroup, with the daemon's real programs.
//!
//! - A TCP connection's totals records (`flow-update` while it moves
//!   bytes, `flow-end` when it closes) carry the decision's flow id, the
//!   bytes and packets each way, and when it was established; their bytes
//!   match what the client and server moved, within the IP and TCP headers,
//!   including what the stack sent after the application closed.
//! - Repeated datagrams to one destination are one decision record and a
//!   count; a blocked destination is refused on every datagram; a socket
//!   keeps a flow per destination (up to 16), and ends the one it used
//!   least recently, reported, to begin another.
//! - The transfer summary, `/v1/flows`, `/metrics` and `evidence verify`
//!   all add the same bytes up.
//! - Connections beyond `kernel.max_flows` at once are recorded, and the
//!   totals the kernel could not follow are counted and said in the chain.

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use residency_tests::{
    BulkServer, ClientOptions, Daemon, Listener, Op, TestCgroup, TestPins, acme_config, action,
    de_us_db, flows, is_totals, privileged_or_skip, residency_cli, run_client, totals_of,
};
use serde_json::Value;

const DE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 17);
const US: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 33);

/// Tenant acme (EEA only, enforced) on `<root>/llm`, with flows reported
/// every second.
fn config(root: &str) -> String {
    let base = acme_config(root, "\"EEA\"");
    let kernel = "[kernel]\npoll_interval_ms = 5\n";
    assert!(base.contains(kernel), "acme_config changed: {base}");
    base.replace(kernel, &format!("{kernel}flow_report_secs = 1\n"))
}

struct Setup {
    daemon: Daemon,
    llm: std::path::PathBuf,
    /// The evidence store (kept after the daemon stops, for `verify`).
    state: std::path::PathBuf,
    _cgroup: TestCgroup,
    _dir: tempfile::TempDir,
}

fn setup(name: &str) -> anyhow::Result<Setup> {
    setup_with(name, "")
}

/// [`setup`], with `kernel` lines added to `[kernel]`.
fn setup_with(name: &str, kernel: &str) -> anyhow::Result<Setup> {
    let dir = tempfile::tempdir()?;
    let db = de_us_db(dir.path());
    let cgroup = TestCgroup::new(name)?;
    let llm = cgroup.child("llm")?;
    let state = dir.path().join("state");
    let config = config(&cgroup.relative()?).replace("[kernel]\n", &format!("[kernel]\n{kernel}"));
    let daemon = Daemon::start_with(
        &config,
        &cgroup,
        &[
            OsStr::new("--geoip"),
            db.as_os_str(),
            OsStr::new("--state-dir"),
            state.as_os_str(),
        ],
    )?;
    Ok(Setup {
        daemon,
        llm,
        state,
        _cgroup: cgroup,
        _dir: dir,
    })
}

/// Runs `op` once from the test cgroup's `llm` child: the client's report.
fn from_llm(s: &Setup, op: Op) -> anyhow::Result<Value> {
    run_client(
        &[op],
        &ClientOptions {
            cgroup_dir: Some(&s.llm),
            ..Default::default()
        },
    )
}

/// Stops the daemon, then `residency evidence verify` must pass on its
/// store: it adds the bytes up again from the records.
fn verify_after_stop(s: Setup) -> anyhow::Result<()> {
    drop(s.daemon.stop()?);
    verify_store(&s.state)
}

/// `residency evidence verify` must pass on the store in `state`.
fn verify_store(state: &std::path::Path) -> anyhow::Result<()> {
    let (code, stdout, stderr) = residency_cli(&[
        OsStr::new("evidence"),
        OsStr::new("verify"),
        OsStr::new("--store"),
        state.as_os_str(),
    ])?;
    assert_eq!(code, 0, "{stdout}{stderr}");
    Ok(())
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Bytes on the wire for `payload` bytes of TCP: the payload, the
/// headers of each packet, the handshake, ACKs and the FIN exchange, and
/// a retransmitted segment or two (on loopback too, rarely: one run here
/// counted 3,097,996 for 3,000,000, one 64 KiB segment and a half more).
fn within_headers(got: u64, payload: u64) -> bool {
    got >= payload && got <= payload + payload / 20 + 20_000
}

#[test]
fn a_tcp_connection_is_totalled_while_it_lasts_and_at_its_end() -> anyhow::Result<()> {
    if !privileged_or_skip("a_tcp_connection_is_totalled_while_it_lasts_and_at_its_end") {
        return Ok(());
    }
    let s = setup("flows-tcp")?;
    // 3 MB up; 400 KB back in 4 pieces 700 ms apart, so that the
    // connection lasts about 2 s and is reported while it lasts.
    let server = BulkServer::start(IpAddr::V4(DE), 400_000, 4, Duration::from_millis(700))?;
    let sent: u64 = 3_000_000;
    let report = from_llm(
        &s,
        Op::Bulk {
            addr: server.addr,
            bytes: sent,
        },
    )?;
    let op = &report["ops"][0];
    assert_eq!(op["ok"], 1, "{report}");
    let received = u(&op["received"]);
    assert_eq!(received, 400_000, "{report}");
    let end = s.daemon.wait_for(Duration::from_secs(15), |r| {
        action(r) == "flow-end" && r["destination"]["port"] == server.addr.port()
    })?;
    let id = end["residency"]["flow"]["id"]
        .as_str()
        .expect("a flow id")
        .to_owned();
    // One decision, naming the same flow.
    let records = s.daemon.records()?;
    let decisions: Vec<&Value> = flows(&records)
        .into_iter()
        .filter(|r| r["residency"]["flow"]["id"] == id.as_str())
        .collect();
    assert_eq!(decisions.len(), 1, "{decisions:#?}");
    let d = decisions[0];
    assert_eq!(d["event"]["action"], "connect");
    assert_eq!(d["residency"]["verdict"], "allowed");
    assert_eq!(d["residency"]["tenants"][0], "acme");

    // The end: what moved, both ways, within the headers.
    let out = u(&end["source"]["bytes"]);
    let back = u(&end["destination"]["bytes"]);
    assert!(
        within_headers(out, sent),
        "sent {sent}, counted {out}: {end}"
    );
    assert!(
        within_headers(back, received),
        "received {received}, counted {back}: {end}"
    );
    assert_eq!(u(&end["network"]["bytes"]), out + back);
    assert!(u(&end["source"]["packets"]) >= sent / 65_536, "{end}");
    assert_eq!(end["residency"]["flow"]["stage"], "closed");
    assert_eq!(end["residency"]["flow"]["established"], true, "{end}");
    assert!(u(&end["residency"]["flow"]["connect_ns"]) > 0, "{end}");
    assert_eq!(end["residency"]["flow"]["calls"], 1);
    assert_eq!(end["event"]["type"][1], "end");
    assert!(end["event"]["end"].is_string(), "{end}");
    assert!(u(&end["event"]["duration"]) >= 1_500_000_000, "{end}");
    // The end names the decision's tenant, country and basis: the
    // summary counts its bytes under them.
    assert_eq!(end["residency"]["tenants"][0], "acme");
    assert_eq!(end["residency"]["country"], "DE");
    assert_eq!(
        end["residency"]["transfer_basis"],
        d["residency"]["transfer_basis"]
    );

    // Reported while it lasted: updates before the end, growing, and the
    // deltas add up to the end's totals.
    let reports = totals_of(&records, &id);
    assert!(
        reports.len() >= 2,
        "a 2-second connection reported every second: {reports:#?}"
    );
    assert!(
        reports[..reports.len() - 1]
            .iter()
            .all(|r| action(r) == "flow-update")
    );
    let mut sum = (0, 0);
    let mut last = 0;
    for r in &reports {
        let t = u(&r["destination"]["bytes"]);
        assert!(t >= last, "totals only grow: {reports:#?}");
        last = t;
        sum.0 += u(&r["residency"]["flow"]["delta"]["bytes_out"]);
        sum.1 += u(&r["residency"]["flow"]["delta"]["bytes_in"]);
    }
    assert_eq!(sum, (out, back), "deltas add up to the totals");
    assert!(
        u(&reports[0]["destination"]["bytes"]) < back,
        "the first update came before the last reply piece"
    );

    api_adds_up(&s.daemon, &id, out, back)?;
    refused_is_not_established(&s)?;
    sent_after_close_is_counted(&s)?;
    verify_after_stop(s)
}

/// A client that writes 30 MB and closes at once, to a server that reads
/// only a second later: part of the data leaves after `close()` (the
/// socket is released first), and the flow's end still counts it all.
fn sent_after_close_is_counted(s: &Setup) -> anyhow::Result<()> {
    let server = BulkServer::late_reader(IpAddr::V4(DE), Duration::from_secs(1))?;
    let sent: u64 = 30_000_000;
    let report = from_llm(
        s,
        Op::Send {
            addr: server.addr,
            bytes: sent,
        },
    )?;
    assert_eq!(report["ops"][0]["ok"], 1, "{report}");
    let end = s.daemon.wait_for(Duration::from_secs(15), |r| {
        action(r) == "flow-end" && r["destination"]["port"] == server.addr.port()
    })?;
    let got = server.received.lock().expect("the server's counts").clone();
    assert_eq!(got, [sent], "the server read it all");
    let out = u(&end["source"]["bytes"]);
    assert!(
        within_headers(out, sent),
        "sent {sent} then closed, counted {out}: {end}"
    );
    assert_eq!(end["residency"]["flow"]["tcp_state"], "close", "{end}");
    Ok(())
}

/// A `connect()` the destination refuses: its flow ends never established.
fn refused_is_not_established(s: &Setup) -> anyhow::Result<()> {
    let closed = std::net::TcpListener::bind((DE, 0))?.local_addr()?;
    // (Dropped: nothing listens there now.)
    let report = run_client(
        &[Op::Tcp(closed)],
        &ClientOptions {
            cgroup_dir: Some(&s.llm),
            ..Default::default()
        },
    )?;
    assert_eq!(report["ops"][0]["errors"]["ECONNREFUSED"], 1, "{report}");
    let end = s.daemon.wait_for(Duration::from_secs(10), |r| {
        action(r) == "flow-end" && r["destination"]["port"] == closed.port()
    })?;
    let flow = &end["residency"]["flow"];
    assert_eq!(flow["established"], false, "{end}");
    assert!(flow.get("connect_ns").is_none(), "{end}");
    assert_eq!(flow["tcp_state"], "close", "{end}");
    assert_eq!(end["source"]["packets"], 1, "the SYN alone: {end}");
    Ok(())
}

/// The API: the summary adds the bytes of flow `id` under acme/DE, the
/// flow listing carries its totals, and `/metrics` counts them.
fn api_adds_up(daemon: &Daemon, id: &str, out: u64, back: u64) -> anyhow::Result<()> {
    // The output file is written before each batch goes to the store:
    // wait for the store to have it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let summary = daemon.get_json("/v1/transfers/summary?tenant=acme")?;
        let (bo, bi): (u64, u64) = summary["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["country"] == "DE")
            .map(|r| (u(&r["bytes_out"]), u(&r["bytes_in"])))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        if (bo, bi) == (out, back) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline && bo <= out && bi <= back,
            "the summary's bytes {bo}/{bi} are not the flow's {out}/{back}: {summary}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let listed = daemon.get_json("/v1/flows?tenant=acme")?;
    let item = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["record"]["residency"]["flow"]["id"] == id)
        .expect("the decision is listed");
    assert_eq!(item["totals"]["bytes_out"], out, "{item}");
    assert_eq!(item["totals"]["bytes_in"], back, "{item}");
    assert_eq!(item["totals"]["ended"], true, "{item}");
    assert!(
        !listed["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| is_totals(&i["record"])),
        "totals records are not listed as decisions"
    );
    let (_, metrics) = daemon.get("/metrics")?;
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("residency_flow_bytes_total{")
                && l.contains("direction=\"out\"")
                && l.contains("tenant=\"acme\"")
                && l.contains("country=\"DE\"")
        })
        .unwrap_or_else(|| panic!("no bytes series for acme/DE: {metrics}"));
    let counted: u64 = line.rsplit(' ').next().unwrap_or("0").parse()?;
    assert_eq!(counted, out, "{line}");

    Ok(())
}

/// More connected sockets at once than the kernel follows
/// (`kernel.max_flows`): every connection is decided and recorded; those
/// beyond the bound have no totals, and say so (counted, and a
/// `flow-totals-lost` record in the chain).
#[test]
fn connections_beyond_max_flows_are_recorded_and_counted() -> anyhow::Result<()> {
    const FOLLOWED: usize = 16;
    const OPEN: usize = 24;
    if !privileged_or_skip("connections_beyond_max_flows_are_recorded_and_counted") {
        return Ok(());
    }
    let s = setup_with("flows-bound", &format!("max_flows = {FOLLOWED}\n"))?;
    let server = BulkServer::start(IpAddr::V4(DE), 3_000, 3, Duration::from_secs(1))?;
    hold_at_once(&s.llm, server.addr, OPEN)?;
    let to_server = |r: &Value| r["destination"]["port"] == server.addr.port();
    let lost = s
        .daemon
        .wait_for(Duration::from_secs(15), |r| action(r) == "flow-totals-lost")?;
    assert_eq!(
        u(&lost["residency"]["count"]),
        u64::try_from(OPEN - FOLLOWED)?,
        "{lost}"
    );
    let records = s.daemon.records()?;
    let decisions = flows(&records).into_iter().filter(|r| to_server(r)).count();
    assert_eq!(decisions, OPEN, "every connection is recorded");
    let ends: Vec<&Value> = records
        .iter()
        .filter(|r| action(r) == "flow-end" && to_server(r))
        .collect();
    assert_eq!(ends.len(), FOLLOWED, "{ends:#?}");
    for end in &ends {
        assert!(within_headers(u(&end["source"]["bytes"]), 1_000), "{end}");
        assert!(
            within_headers(u(&end["destination"]["bytes"]), 3_000),
            "{end}"
        );
    }
    let (_, metrics) = s.daemon.get("/metrics")?;
    let dropped = metrics
        .lines()
        .find_map(|l| l.strip_prefix("residency_kernel_flows_dropped "))
        .unwrap_or_else(|| panic!("no kernel_flows_dropped: {metrics}"));
    assert_eq!(dropped.trim().parse::<usize>()?, OPEN - FOLLOWED);
    verify_after_stop(s)
}

/// `n` connections from `llm` to `addr` (a `BulkServer` whose reply comes
/// in 3 pieces a second apart, so each lasts at least 2 s and all are open
/// at once), each sending 1,000 bytes; returns once all have ended.
fn hold_at_once(llm: &std::path::Path, addr: std::net::SocketAddr, n: usize) -> anyhow::Result<()> {
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let llm = llm.to_path_buf();
            std::thread::spawn(move || {
                run_client(
                    &[Op::Bulk { addr, bytes: 1_000 }],
                    &ClientOptions {
                        cgroup_dir: Some(&llm),
                        ..Default::default()
                    },
                )
            })
        })
        .collect();
    for c in clients {
        let report = c.join().expect("a client thread")?;
        assert_eq!(report["ops"][0]["ok"], 1, "{report}");
    }
    Ok(())
}

/// Flows the kernel could not follow while no daemon ran (the programs
/// stay after a clean stop) are recorded by the next daemon: it counts on
/// from what the previous one accounted for, kept in the pinned state.
#[test]
fn flows_not_followed_while_no_daemon_ran_are_recorded_by_the_next() -> anyhow::Result<()> {
    const FOLLOWED: usize = 16;
    const OPEN: usize = 24;
    if !privileged_or_skip("flows_not_followed_while_no_daemon_ran_are_recorded_by_the_next") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let db = de_us_db(dir.path());
    let cgroup = TestCgroup::new("flows-downtime")?;
    let llm = cgroup.child("llm")?;
    let state = dir.path().join("state");
    // Removed when dropped, after the second daemon has stopped.
    let pins = TestPins::new("flows-downtime");
    let config = config(&cgroup.relative()?)
        .replace("[kernel]\n", &format!("[kernel]\nmax_flows = {FOLLOWED}\n"));
    let args = [
        OsStr::new("--geoip"),
        db.as_os_str(),
        OsStr::new("--state-dir"),
        state.as_os_str(),
        OsStr::new("--instance"),
        OsStr::new(&pins.instance),
    ];
    let first = Daemon::start_with(&config, &cgroup, &args)?;
    // A clean stop leaves the programs deciding (`persist`, the default).
    drop(first.stop()?);
    assert!(pins.exists(), "a clean stop removed the pins");

    let server = BulkServer::start(IpAddr::V4(DE), 3_000, 3, Duration::from_secs(1))?;
    hold_at_once(&llm, server.addr, OPEN)?;

    let second = Daemon::start_with(&config, &cgroup, &args)?;
    let lost = second.wait_for(Duration::from_secs(15), |r| action(r) == "flow-totals-lost")?;
    assert_eq!(
        u(&lost["residency"]["count"]),
        u64::try_from(OPEN - FOLLOWED)?,
        "{lost}"
    );
    let to_server = |r: &Value| r["destination"]["port"] == server.addr.port();
    // The decisions and the followed flows' ends waited in the pinned ring
    // for this daemon.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (decisions, ends) = loop {
        let records = second.records()?;
        let decisions = flows(&records).into_iter().filter(|r| to_server(r)).count();
        let ends = records
            .iter()
            .filter(|r| action(r) == "flow-end" && to_server(r))
            .count();
        if (decisions >= OPEN && ends >= FOLLOWED) || std::time::Instant::now() >= deadline {
            break (decisions, ends);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(decisions, OPEN, "every connection is recorded");
    assert_eq!(
        ends, FOLLOWED,
        "every followed connection's end is recorded"
    );
    drop(second.stop()?);
    verify_store(&state)
}

#[test]
fn repeated_datagrams_are_one_decision_and_a_count() -> anyhow::Result<()> {
    if !privileged_or_skip("repeated_datagrams_are_one_decision_and_a_count") {
        return Ok(());
    }
    let s = setup("flows-udp")?;
    let de = Listener::bind(IpAddr::V4(DE))?;
    let us = Listener::bind(IpAddr::V4(US))?;
    let opts = ClientOptions {
        cgroup_dir: Some(&s.llm),
        ..Default::default()
    };
    // 20,000 datagrams to Germany over about 2.5 s (so that repeats are
    // decided again in full after each second), and 300 to the US, which
    // acme forbids: each one refused.
    let to_de = run_client(
        &[Op::Udp(de.udp)],
        &ClientOptions {
            repeat: Some(20_000),
            interval_us: Some(100),
            ..opts.clone()
        },
    )?;
    assert_eq!(to_de["ops"][0]["ok"], 20_000, "{to_de}");
    let to_us = run_client(
        &[Op::Udp(us.udp)],
        &ClientOptions {
            repeat: Some(300),
            ..opts.clone()
        },
    )?;
    assert_eq!(to_us["ops"][0]["ok"], 0, "{to_us}");
    assert_eq!(to_us["ops"][0]["errors"]["EPERM"], 300, "{to_us}");
    // A socket that alternates between two destinations keeps a flow for
    // each; one that sends to 17 (one more than the kernel keeps per
    // socket) ends the least recently used to begin the 17th.
    let alternating = run_client(
        &[Op::Udp(de.udp), Op::Udp(us.udp)],
        &ClientOptions {
            repeat: Some(3),
            ..opts.clone()
        },
    )?;
    let alt_pid = u(&alternating["pid"]);
    let many: Vec<Listener> = (0..17u8)
        .map(|i| Listener::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 1, 10 + i))))
        .collect::<Result<_, _>>()?;
    let spread = run_client(
        &many.iter().map(|l| Op::Udp(l.udp)).collect::<Vec<_>>(),
        &opts,
    )?;
    let spread_pid = u(&spread["pid"]);
    let de_pid = u(&to_de["pid"]);
    let us_pid = u(&to_us["pid"]);
    // Each client closed its socket: three flow-ends for the two storms
    // are there once the last one is.
    s.daemon.wait_for(Duration::from_secs(15), |r| {
        action(r) == "flow-end" && u(&r["process"]["pid"]) == spread_pid
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let records = s.daemon.records()?;
    let of = |pid: u64, port: u16| -> Vec<&Value> {
        flows(&records)
            .into_iter()
            .filter(|r| u(&r["process"]["pid"]) == pid && r["destination"]["port"] == port)
            .collect()
    };
    let de_decisions = of(de_pid, de.udp.port());
    assert_eq!(de_decisions.len(), 1, "one decision: {de_decisions:#?}");
    let id = de_decisions[0]["residency"]["flow"]["id"]
        .as_str()
        .unwrap_or("");
    let de_totals = totals_of(&records, id);
    let end = de_totals.last().expect("totals");
    assert_eq!(action(end), "flow-end");
    assert_eq!(end["residency"]["flow"]["calls"], 20_000, "{end}");
    assert_eq!(end["source"]["packets"], 20_000, "{end}");
    // Each datagram of 1 byte: 20 (IP) + 8 (UDP) + 1.
    assert_eq!(end["source"]["bytes"], 20_000 * 29, "{end}");

    let us_decisions = of(us_pid, us.udp.port());
    assert_eq!(us_decisions.len(), 1, "{us_decisions:#?}");
    assert_eq!(us_decisions[0]["residency"]["verdict"], "blocked");
    let id = us_decisions[0]["residency"]["flow"]["id"]
        .as_str()
        .unwrap_or("");
    let end = *totals_of(&records, id).last().expect("totals");
    assert_eq!(end["residency"]["flow"]["calls"], 300, "{end}");
    assert_eq!(end["source"]["packets"], 0, "refused: nothing left: {end}");

    per_destination(&records, alt_pid, spread_pid);
    verify_after_stop(s)
}

/// A socket that alternated between two destinations (`alt_pid`), and one
/// that sent to 17 (`spread_pid`): their decisions and flow ends.
fn per_destination(records: &[Value], alt_pid: u64, spread_pid: u64) {
    // Alternating: two decisions, each flow ended with its 3 calls.
    let ends = |pid: u64| -> Vec<(String, u64)> {
        records
            .iter()
            .filter(|r| action(r) == "flow-end" && u(&r["process"]["pid"]) == pid)
            .map(|r| {
                (
                    r["residency"]["flow"]["stage"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                    u(&r["residency"]["flow"]["calls"]),
                )
            })
            .collect()
    };
    let of_pid = |pid: u64| {
        flows(records)
            .into_iter()
            .filter(|r| u(&r["process"]["pid"]) == pid)
            .count()
    };
    assert_eq!(of_pid(alt_pid), 2);
    assert_eq!(
        ends(alt_pid),
        [("closed".to_owned(), 3), ("closed".to_owned(), 3)]
    );
    // 17 destinations: 17 decisions; the first flow was superseded to
    // make room (reported then, not lost), the other 16 closed.
    assert_eq!(of_pid(spread_pid), 17);
    let mut stages: Vec<String> = ends(spread_pid).into_iter().map(|(s, _)| s).collect();
    assert_eq!(stages.len(), 17, "{stages:?}");
    assert_eq!(stages.remove(0), "superseded");
    assert!(stages.iter().all(|s| s == "closed"), "{stages:?}");
}
