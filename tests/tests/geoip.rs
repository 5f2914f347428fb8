//! End-to-end: country verdicts in the kernel from a GeoIP database, over
//! IPv4 and IPv6, and a hot swap of the database under load.
//!
//! Test databases are written here. They place loopback sub-ranges and the
//! ULA addresses of test hosts (in a network namespace made by the test) in
//! different countries, and the configuration takes loopback and ULA out of
//! the local ranges so that GeoIP judges them.

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use geoip::testdb::{Entry, Layout, write};
use nix::sys::signal::{Signal, kill};
use residency_tests::{
    ClientOptions, Daemon, Listener, NetNs, Op, TestCgroup, action, flows, privileged_or_skip,
    run_client, spawn_client,
};
use serde_json::Value;

/// EEA only, enforcing; unknown destinations flagged; loopback and ULA are
/// not local here, so that the test database decides them.
const EEA_ONLY: &str = r#"
mode = "enforce"
[kernel]
poll_interval_ms = 5
[policy]
allowed = ["EEA"]
unknown = "flag"
local_networks = ["10.0.0.0/8"]
"#;

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn write_db(path: &Path, epoch: u64, entries: &[Entry]) {
    write(
        path,
        Layout::GeoIp2,
        "residency-test-Country",
        epoch,
        entries,
    );
}

fn by_pid(records: &[Value], pid: u64) -> Vec<&Value> {
    flows(records)
        .into_iter()
        .filter(|f| f["process"]["pid"] == pid)
        .collect()
}

fn errno(report: &Value, i: usize, name: &str) -> u64 {
    report["ops"][i]["errors"][name].as_u64().unwrap_or(0)
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario, checked field by field"
)]
fn countries_decide_over_ipv4_and_ipv6() -> anyhow::Result<()> {
    if !privileged_or_skip("countries_decide_over_ipv4_and_ipv6") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("countries.mmdb");
    write_db(
        &db,
        1_800_000_000,
        &[
            Entry {
                network: "127.0.0.16/28",
                country: Some("DE"),
                continent: Some("EU"),
                asn: Some(64_501),
                as_org: Some("Test DE"),
                ..Default::default()
            },
            Entry::country("127.0.0.32/28", "US"),
            // A whole /16 (level 1 of the IPv4 layout) and a /24 (level 2).
            Entry::country("127.1.0.0/16", "FR"),
            Entry::country("127.2.3.0/24", "US"),
            Entry::country("fd00:77:1::/48", "DE"),
            Entry::country("fd00:77:2::/48", "US"),
            Entry::country("fd00:77:3::/48", "DE"),
        ],
    );
    let mut ns = NetNs::new(&["fd00:77:1::/48", "fd00:77:2::/48", "fd00:77:3::/48"])?;
    let hosts = ns.serve()?;
    let (de6_tcp, de6_udp) = hosts[0];
    let (us6_tcp, us6_udp) = hosts[1];
    let (zurich_tcp, _) = hosts[2];
    let de4 = Listener::bind(v4(17))?;
    let us4 = Listener::bind(v4(33))?;
    let unknown4 = Listener::bind(v4(99))?;
    let fr_slash16 = Listener::bind(IpAddr::V4(Ipv4Addr::new(127, 1, 2, 3)))?;
    let us_slash24 = Listener::bind(IpAddr::V4(Ipv4Addr::new(127, 2, 3, 4)))?;

    let cg = TestCgroup::new("geo")?;
    // An internal network, judged by its jurisdiction (CH: not EEA) rather
    // than by GeoIP (which places it in DE).
    let config = format!(
        "{EEA_ONLY}\n[[internal]]\nname = \"dc-zurich\"\ndestinations = [\"fd00:77:3::/48\"]\njurisdiction = \"CH\"\n"
    );
    let daemon = Daemon::start_with(&config, &cg, &[OsStr::new("--geoip"), db.as_os_str()])?;
    let loaded = daemon.wait_for(Duration::from_secs(10), |r| action(r) == "geoip-loaded")?;
    assert_eq!(loaded["residency"]["geoip"]["generation"], 1);
    assert_eq!(
        loaded["residency"]["geoip"]["database"],
        "residency-test-Country"
    );

    let ops = [
        Op::Tcp(de4.tcp),
        Op::Udp(de4.udp),
        Op::Tcp(us4.tcp),
        Op::Udp(us4.udp),
        Op::Tcp(de6_tcp),
        Op::Udp(de6_udp),
        Op::Tcp(us6_tcp),
        Op::Udp(us6_udp),
        Op::Tcp(unknown4.tcp),
        Op::Tcp(zurich_tcp),
        Op::Tcp(fr_slash16.tcp),
        Op::Tcp(us_slash24.tcp),
    ];
    let report = run_client(
        &ops,
        &ClientOptions {
            cgroup: Some(&cg),
            ..Default::default()
        },
    )?;
    for (i, op) in ops.iter().enumerate() {
        let to_us = matches!(i, 2 | 3 | 6 | 7 | 9 | 11);
        if to_us {
            assert_eq!(
                errno(&report, i, "EPERM"),
                1,
                "{op} (US) must fail with EPERM: {report}"
            );
        } else {
            assert_eq!(report["ops"][i]["ok"], 1, "{op} must go through: {report}");
        }
    }
    let pid = report["pid"].as_u64().unwrap_or(0);
    let records = daemon.stop()?;
    let mine = by_pid(&records, pid);
    assert_eq!(mine.len(), ops.len(), "one record per call: {mine:#?}");
    let find = |addr: SocketAddr, transport: &str| -> &Value {
        mine.iter()
            .find(|f| {
                f["destination"]["ip"] == addr.ip().to_string()
                    && f["destination"]["port"] == addr.port()
                    && f["network"]["transport"] == transport
            })
            .copied()
            .unwrap_or_else(|| panic!("no record for {transport} {addr}"))
    };
    for (addr, transport, country, verdict) in [
        (de4.tcp, "tcp", "DE", "allowed"),
        (de4.udp, "udp", "DE", "allowed"),
        (us4.tcp, "tcp", "US", "blocked"),
        (us4.udp, "udp", "US", "blocked"),
        (de6_tcp, "tcp", "DE", "allowed"),
        (de6_udp, "udp", "DE", "allowed"),
        (us6_tcp, "tcp", "US", "blocked"),
        (us6_udp, "udp", "US", "blocked"),
    ] {
        let f = find(addr, transport);
        assert_eq!(f["residency"]["verdict"], verdict, "{f}");
        assert_eq!(f["residency"]["decided_by"], "geoip", "{f}");
        assert_eq!(f["residency"]["country"], country, "{f}");
        assert_eq!(f["destination"]["geo"]["country_iso_code"], country, "{f}");
        assert_eq!(f["residency"]["geoip"]["generation"], 1, "{f}");
        assert_eq!(
            f["residency"]["geoip"]["database"], "residency-test-Country",
            "{f}"
        );
        assert_eq!(
            f["residency"]["geoip"]["build_epoch"], 1_800_000_000u64,
            "{f}"
        );
    }
    let de = find(de4.tcp, "tcp");
    assert_eq!(de["destination"]["as"]["number"], 64_501);
    assert_eq!(de["destination"]["as"]["organization"]["name"], "Test DE");
    assert_eq!(de["destination"]["geo"]["continent_code"], "EU");
    // No country: the policy's choice for unknown destinations (flag).
    let unknown = find(unknown4.tcp, "tcp");
    assert_eq!(unknown["residency"]["verdict"], "flagged");
    assert_eq!(unknown["residency"]["decided_by"], "unknown");
    for (addr, country, verdict) in [
        (fr_slash16.tcp, "FR", "allowed"),
        (us_slash24.tcp, "US", "blocked"),
    ] {
        let f = find(addr, "tcp");
        assert_eq!(
            (
                f["residency"]["country"].as_str(),
                f["residency"]["verdict"].as_str()
            ),
            (Some(country), Some(verdict)),
            "{f}"
        );
    }

    // The kernel and `residency lookup` (the userspace decision, from the
    // same configuration and database) agree on every destination.
    let config_file = dir.path().join("residency.toml");
    std::fs::write(&config_file, &config)?;
    let ips: Vec<String> = mine
        .iter()
        .filter_map(|f| f["destination"]["ip"].as_str().map(str::to_owned))
        .collect();
    let out = std::process::Command::new(residency_tests::workspace_bin("residency")?)
        .args(["lookup", "--json", "--config"])
        .arg(&config_file)
        .arg("--geoip")
        .arg(&db)
        .args(&ips)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(answers.len(), mine.len(), "one answer per destination");
    for (f, a) in mine.iter().zip(&answers) {
        assert_eq!(f["destination"]["ip"].as_str(), a["ip"].as_str());
        assert_eq!(
            f["residency"]["verdict"], a["verdict"],
            "kernel {f}\nlookup {a}"
        );
        assert_eq!(
            f["residency"]["decided_by"], a["decided_by"],
            "kernel {f}\nlookup {a}"
        );
        assert_eq!(
            f["residency"]["country"].as_str(),
            a["country"].as_str(),
            "kernel {f}\nlookup {a}"
        );
    }

    let zurich = find(zurich_tcp, "tcp");
    assert_eq!(zurich["residency"]["verdict"], "blocked", "{zurich}");
    assert_eq!(zurich["residency"]["decided_by"], "internal");
    assert_eq!(zurich["residency"]["country"], "CH");
    assert_eq!(zurich["rule"]["name"], "dc-zurich");
    Ok(())
}

#[test]
fn a_changed_file_is_picked_up_without_a_signal() -> anyhow::Result<()> {
    if !privileged_or_skip("a_changed_file_is_picked_up_without_a_signal") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("watched.mmdb");
    write_db(&db, 1_800_000_010, &[Entry::country("127.0.0.64/28", "US")]);
    let cg = TestCgroup::new("watch")?;
    let config = EEA_ONLY.replace("[policy]", "[geoip]\ncheck_interval_secs = 1\n[policy]");
    let daemon = Daemon::start_with(&config, &cg, &[OsStr::new("--geoip"), db.as_os_str()])?;
    daemon.wait_for(Duration::from_secs(10), |r| action(r) == "geoip-loaded")?;
    write_db(&db, 1_800_000_011, &[Entry::country("127.0.0.64/28", "DE")]);
    let swapped = daemon.wait_for(Duration::from_secs(15), |r| {
        action(r) == "geoip-loaded" && r["residency"]["geoip"]["generation"] == 2
    })?;
    assert_eq!(
        swapped["residency"]["geoip"]["build_epoch"],
        1_800_000_011u64
    );
    let target = Listener::bind(v4(65))?;
    let r = run_client(
        &[Op::Tcp(target.tcp)],
        &ClientOptions {
            cgroup: Some(&cg),
            ..Default::default()
        },
    )?;
    assert_eq!(r["ops"][0]["ok"], 1, "DE now: allowed: {r}");
    daemon.stop()?;
    Ok(())
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: storm, swap, refused file, then the books"
)]
fn hot_swap_under_load_changes_verdicts_and_loses_nothing() -> anyhow::Result<()> {
    if !privileged_or_skip("hot_swap_under_load_changes_verdicts_and_loses_nothing") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("swap.mmdb");
    write_db(&db, 1_800_000_001, &[Entry::country("127.0.0.48/28", "US")]);
    let target = Listener::bind(v4(49))?;
    let cg = TestCgroup::new("swap")?;
    let daemon = Daemon::start_with(EEA_ONLY, &cg, &[OsStr::new("--geoip"), db.as_os_str()])?;
    daemon.wait_for(Duration::from_secs(10), |r| action(r) == "geoip-loaded")?;

    // A steady storm of connects and sends (a few thousand a second) for
    // three seconds; the database changes under it.
    let storm = spawn_client(
        &[Op::Tcp(target.tcp), Op::Udp(target.udp)],
        &ClientOptions {
            cgroup: Some(&cg),
            duration_ms: Some(3000),
            interval_us: Some(100),
            ..Default::default()
        },
    )?;
    std::thread::sleep(Duration::from_secs(1));
    write_db(&db, 1_800_000_002, &[Entry::country("127.0.0.48/28", "DE")]);
    kill(daemon.pid().expect("running"), Signal::SIGHUP)?;
    let swapped = daemon.wait_for(Duration::from_secs(10), |r| {
        action(r) == "geoip-loaded" && r["residency"]["geoip"]["generation"] == 2
    })?;
    assert_eq!(
        swapped["residency"]["geoip"]["build_epoch"],
        1_800_000_002u64
    );
    let out = storm.wait_with_output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;

    // A broken file is refused and the second generation stays in force.
    std::fs::write(&db, b"not a database")?;
    kill(daemon.pid().expect("running"), Signal::SIGHUP)?;
    daemon.wait_for(Duration::from_secs(10), |r| action(r) == "geoip-refused")?;
    let after = run_client(
        &[Op::Udp(target.udp)],
        &ClientOptions {
            cgroup: Some(&cg),
            ..Default::default()
        },
    )?;
    assert_eq!(
        after["ops"][0]["ok"], 1,
        "the refused file must not change verdicts: {after}"
    );

    let records = daemon.stop()?;
    let pid = report["pid"].as_u64().unwrap_or(0);
    let mine = by_pid(&records, pid);
    let ok =
        report["ops"][0]["ok"].as_u64().unwrap_or(0) + report["ops"][1]["ok"].as_u64().unwrap_or(0);
    let eperm = errno(&report, 0, "EPERM") + errno(&report, 1, "EPERM");
    let calls = ok + eperm;
    assert!(
        ok > 0 && eperm > 0,
        "the storm must span the swap: {report}"
    );
    // A connect is one record; repeated datagrams on the storm's socket
    // are one decision per flow, whose end counts the calls it covered.
    // The swap ends a flow (its generation changed): every call is
    // accounted for under the generation that decided it.
    let weight = |f: &Value| -> u64 {
        if f["network"]["transport"] == "tcp" {
            return 1;
        }
        let id = f["residency"]["flow"]["id"].as_str().unwrap_or("");
        residency_tests::totals_of(&records, id)
            .last()
            .map_or(0, |end| {
                end["residency"]["flow"]["calls"].as_u64().unwrap_or(0)
            })
    };
    assert_eq!(
        mine.iter().map(|f| weight(f)).sum::<u64>(),
        calls,
        "every call is a record or counted in its flow's end"
    );
    assert!(
        mine.iter()
            .filter(|f| f["network"]["transport"] == "udp")
            .count()
            >= 2,
        "the swap begins a new datagram flow"
    );
    assert!(
        records.iter().all(|r| action(r) != "events-lost"),
        "nothing lost"
    );

    // Each record is judged by the generation it names, and never without
    // one: no lookup missed during the swap.
    let mut blocked = 0;
    let mut allowed = 0;
    let mut last_gen = 0;
    let mut sorted = mine.clone();
    sorted.sort_by_key(|f| f["residency"]["boot_ns"].as_u64());
    for f in sorted {
        let generation = f["residency"]["geoip"]["generation"].as_u64().unwrap_or(0);
        match generation {
            1 => {
                assert_eq!(f["residency"]["country"], "US", "{f}");
                assert_eq!(f["residency"]["verdict"], "blocked", "{f}");
                // The version named is the one that decided, never its
                // successor's or predecessor's.
                assert_eq!(
                    f["residency"]["geoip"]["build_epoch"], 1_800_000_001u64,
                    "{f}"
                );
                blocked += weight(f);
            }
            2 => {
                assert_eq!(f["residency"]["country"], "DE", "{f}");
                assert_eq!(f["residency"]["verdict"], "allowed", "{f}");
                assert_eq!(
                    f["residency"]["geoip"]["build_epoch"], 1_800_000_002u64,
                    "{f}"
                );
                allowed += weight(f);
            }
            other => panic!("record without a table generation ({other}): {f}"),
        }
        assert!(generation >= last_gen, "generations go forward in time");
        last_gen = generation;
    }
    assert_eq!(
        (blocked, allowed),
        (eperm, ok),
        "records match what the client saw"
    );
    Ok(())
}

/// The real default database (fetched by `cargo xtask`), loaded into the
/// kernel as a whole.
#[test]
fn the_full_default_database_loads_into_the_kernel() -> anyhow::Result<()> {
    if !privileged_or_skip("the_full_default_database_loads_into_the_kernel") {
        return Ok(());
    }
    let path = std::env::var_os("RESIDENCY_DEFAULT_GEOIP").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/geoip/geo-whois-asn-country.mmdb"),
        std::path::PathBuf::from,
    );
    if !path.is_file() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but {} is missing: `cargo xtask test` fetches it",
            path.display()
        );
        eprintln!(
            "SKIPPED the_full_default_database_loads_into_the_kernel: {} is missing; `cargo xtask test` fetches it",
            path.display()
        );
        return Ok(());
    }
    let cg = TestCgroup::new("fulldb")?;
    let daemon = Daemon::start_with(EEA_ONLY, &cg, &[OsStr::new("--geoip"), path.as_os_str()])?;
    let loaded = daemon.wait_for(Duration::from_mins(1), |r| action(r) == "geoip-loaded")?;
    let g = &loaded["residency"]["geoip"];
    assert!(g["networks_v4"].as_u64().unwrap_or(0) > 400_000, "{g}");
    assert!(g["networks_v6"].as_u64().unwrap_or(0) > 300_000, "{g}");
    assert!(g["v4_level3_blocks"].as_u64().unwrap_or(0) > 0, "{g}");
    // The daemon keeps working with the full tables in: a call is judged.
    let l = Listener::bind(v4(1))?;
    let r = run_client(
        &[Op::Udp(l.udp)],
        &ClientOptions {
            cgroup: Some(&cg),
            ..Default::default()
        },
    )?;
    let records = daemon.stop()?;
    let mine = by_pid(&records, r["pid"].as_u64().unwrap_or(0));
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["residency"]["geoip"]["generation"], 1);
    Ok(())
}
