//! End-to-end: tenants, workloads and exceptions, enforced per workload.
//!
//! One test cgroup holds a cgroup per workload of tenant "acme" (EEA only):
//! an LLM server (enforce), a backup agent (monitor) and a log shipper
//! (with an SCC exception to a "US" address). A test database places
//! loopback sub-ranges in DE and the US.

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use geoip::testdb::{Entry, Layout, write};
use nix::sys::signal::{Signal, kill};
use residency_tests::{
    ClientOptions, Daemon, Listener, Op, TestCgroup, action, flows, privileged_or_skip, run_client,
};
use serde_json::Value;

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn config(root: &str, acme_allowed: &str) -> String {
    format!(
        r#"
mode = "monitor"
[kernel]
poll_interval_ms = 5
[geoip]
check_interval_secs = 1
[policy]
allowed = ["EEA"]
local_networks = ["10.0.0.0/8"]

[[tenant]]
id = "acme"
name = "ACME GmbH"
allowed = [{acme_allowed}]
mode = "enforce"

[[workload]]
name = "acme-llm"
role = "llm"
tenants = ["acme"]
cgroup = ["{root}/llm"]

[[workload]]
name = "acme-backup"
role = "backup"
tenants = ["acme"]
mode = "monitor"
cgroup = ["{root}/backup"]

[[workload]]
name = "acme-logs"
role = "logging"
tenants = ["acme"]
cgroup = ["{root}/logging"]

[[exception]]
name = "acme-logs-to-us-siem"
destinations = ["127.0.0.32/28"]
basis = "scc"
justification = "SCC 2021/914 module 2 with Example SIEM Inc., signed 2026-03-01"
expires = "2099-01-01"
tenants = ["acme"]
roles = ["logging"]
"#
    )
}

/// A database that places 127.0.0.32/28 in the US, and nothing else.
fn us_only_db(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("c.mmdb");
    write(
        &db,
        Layout::IpLocationDb,
        "t",
        1,
        &[Entry::country("127.0.0.32/28", "US")],
    );
    db
}

/// The daemon on `cg`, with a configuration file it can reload.
fn start_from_file(cg: &TestCgroup, db: &Path, config: &Path) -> anyhow::Result<Daemon> {
    Daemon::start_with(
        "",
        cg,
        &[
            OsStr::new("--geoip"),
            db.as_os_str(),
            OsStr::new("--config"),
            config.as_os_str(),
        ],
    )
}

fn client(dir: &Path, op: Op) -> anyhow::Result<Value> {
    run_client(
        &[op],
        &ClientOptions {
            cgroup_dir: Some(dir),
            ..Default::default()
        },
    )
}

fn eperm(r: &Value) -> bool {
    r["ops"][0]["errors"]["EPERM"] == 1
}

fn ok(r: &Value) -> bool {
    r["ops"][0]["ok"] == 1
}

fn record_of<'a>(records: &'a [Value], report: &Value) -> &'a Value {
    let pid = report["pid"].as_u64().unwrap_or(0);
    let mine: Vec<&Value> = flows(records)
        .into_iter()
        .filter(|f| f["process"]["pid"] == pid)
        .collect();
    assert_eq!(mine.len(), 1, "one record for the call: {mine:#?}");
    mine[0]
}

#[test]
#[expect(clippy::too_many_lines, reason = "the issue's scenario, step by step")]
fn tenants_workloads_and_exceptions_are_enforced_per_workload() -> anyhow::Result<()> {
    if !privileged_or_skip("tenants_workloads_and_exceptions_are_enforced_per_workload") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("countries.mmdb");
    write(
        &db,
        Layout::GeoIp2,
        "residency-test-Country",
        1_800_000_100,
        &[
            Entry::country("127.0.0.16/28", "DE"),
            Entry::country("127.0.0.32/28", "US"),
            Entry::country("127.0.0.48/28", "FR"),
        ],
    );
    let de = Listener::bind(v4(17))?;
    let us = Listener::bind(v4(33))?;
    let fr = Listener::bind(v4(49))?;

    let cg = TestCgroup::new("tenants")?;
    let root = cg.relative()?;
    let llm = cg.child("llm")?;
    let backup = cg.child("backup")?;
    let logging = cg.child("logging")?;
    let config_path = dir.path().join("residency.toml");
    std::fs::write(&config_path, config(&root, "\"EEA\""))?;

    // The daemon takes the configuration from a file it can reload.
    let daemon = start_from_file(&cg, &db, &config_path)?;
    daemon.wait_for(Duration::from_secs(10), |r| action(r) == "geoip-loaded")?;
    let loaded = daemon.wait_for(Duration::from_secs(10), |r| action(r) == "policy-loaded")?;
    let hash1 = loaded["residency"]["policy"]["hash"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert_eq!(hash1.len(), 64, "a SHA-256: {loaded}");

    // The LLM server (enforce): blocked to the US, allowed to DE. The
    // client exits right after its call, long before the daemon reads the
    // record: it is named from the kernel's exec record, not from /proc.
    let llm_us = client(&llm, Op::Tcp(us.tcp))?;
    assert!(eperm(&llm_us), "llm -> US must fail with EPERM: {llm_us}");
    let llm_de = client(&llm, Op::Tcp(de.tcp))?;
    assert!(ok(&llm_de), "llm -> DE must connect: {llm_de}");
    // The backup agent (monitor): reaches the US, flagged.
    let backup_us = client(&backup, Op::Tcp(us.tcp))?;
    assert!(ok(&backup_us), "backup is in monitor mode: {backup_us}");
    // The log shipper: reaches the US through its SCC exception.
    let logs_us = client(&logging, Op::Udp(us.udp))?;
    assert!(ok(&logs_us), "logging has an exception: {logs_us}");
    // A process in a cgroup created under the LLM workload after the
    // policy was loaded: blocked from its first connect.
    let newborn = cg.child("llm/new-container")?;
    let new_us = client(&newborn, Op::Tcp(us.tcp))?;
    assert!(
        eperm(&new_us),
        "a new child cgroup of llm inherits its policy: {new_us}"
    );

    // Tighten: acme now allows FR only. The next connect to DE is blocked.
    std::fs::write(&config_path, config(&root, "\"FR\""))?;
    kill(daemon.pid().expect("running"), Signal::SIGHUP)?;
    let reloaded = daemon.wait_for(Duration::from_secs(10), |r| {
        action(r) == "policy-loaded" && r["residency"]["policy"]["generation"] == 2
    })?;
    let hash2 = reloaded["residency"]["policy"]["hash"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert_ne!(hash1, hash2);
    let tightened = client(&llm, Op::Tcp(de.tcp))?;
    assert!(eperm(&tightened), "DE is no longer allowed: {tightened}");
    let fr_ok = client(&llm, Op::Tcp(fr.tcp))?;
    assert!(ok(&fr_ok), "FR is: {fr_ok}");

    // A broken file is refused; the tightened policy stays in force.
    std::fs::write(
        &config_path,
        "[[tenant]]\nid = \"acme\"\nallowed = [\"NOWHERE\"]\n",
    )?;
    kill(daemon.pid().expect("running"), Signal::SIGHUP)?;
    let refused = daemon.wait_for(Duration::from_secs(10), |r| action(r) == "policy-refused")?;
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or("")
            .contains("NOWHERE"),
        "the refusal says what was wrong: {refused}"
    );
    let still = client(&llm, Op::Tcp(de.tcp))?;
    assert!(eperm(&still), "the old policy stays in force: {still}");

    let records = daemon.stop()?;

    let r = record_of(&records, &llm_us);
    assert_eq!(r["residency"]["verdict"], "blocked");
    assert_eq!(r["residency"]["workload"]["name"], "acme-llm");
    assert_eq!(r["residency"]["workload"]["role"], "llm");
    assert_eq!(r["residency"]["tenants"][0], "acme");
    assert_eq!(r["residency"]["country"], "US");
    assert_eq!(r["residency"]["policy"]["hash"], hash1.as_str());
    assert_eq!(r["residency"]["policy"]["generation"], 1);
    // Who: the executable and command line, and the cgroup by path.
    let client_bin = residency_tests::workspace_bin("egress-client")?;
    assert_eq!(
        r["process"]["executable"],
        client_bin.to_str().unwrap_or(""),
        "{r}"
    );
    assert_eq!(r["process"]["args"][0], client_bin.to_str().unwrap_or(""));
    assert!(
        r["process"]["command_line"]
            .as_str()
            .unwrap_or("")
            .contains(&format!("tcp:{}", us.tcp)),
        "{r}"
    );
    assert_eq!(r["residency"]["cgroup"]["path"], format!("{root}/llm"));

    let r = record_of(&records, &llm_de);
    assert_eq!(r["residency"]["verdict"], "allowed");

    let r = record_of(&records, &backup_us);
    assert_eq!(r["residency"]["verdict"], "flagged");
    assert_eq!(r["residency"]["workload"]["name"], "acme-backup");
    assert_eq!(r["residency"]["mode"], "monitor");

    let r = record_of(&records, &logs_us);
    assert_eq!(r["residency"]["verdict"], "allowed");
    assert_eq!(r["residency"]["decided_by"], "exception");
    assert_eq!(r["rule"]["name"], "acme-logs-to-us-siem");
    assert_eq!(r["residency"]["exception"]["basis"], "scc");
    assert!(
        r["residency"]["exception"]["justification"]
            .as_str()
            .unwrap_or("")
            .contains("SCC")
    );

    let r = record_of(&records, &new_us);
    assert_eq!(r["residency"]["workload"]["name"], "acme-llm");

    let r = record_of(&records, &tightened);
    assert_eq!(r["residency"]["policy"]["generation"], 2);
    assert_eq!(r["residency"]["policy"]["hash"], hash2.as_str());
    assert_eq!(r["residency"]["country"], "DE");

    let r = record_of(&records, &still);
    assert_eq!(
        r["residency"]["policy"]["generation"], 2,
        "the refused file never took effect"
    );
    Ok(())
}

/// A process no workload selects gets the default policy.
#[test]
fn unknown_workloads_get_the_default_policy() -> anyhow::Result<()> {
    if !privileged_or_skip("unknown_workloads_get_the_default_policy") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let db = us_only_db(dir.path());
    let us = Listener::bind(v4(34))?;
    let cg = TestCgroup::new("default")?;
    let root = cg.relative()?;
    let other = cg.child("other")?;
    let config = format!(
        "mode = \"enforce\"\n[policy]\nallowed = [\"EEA\"]\nlocal_networks = [\"10.0.0.0/8\"]\n\
         [[tenant]]\nid = \"acme\"\nallowed = [\"US-DPF\"]\n\
         [[workload]]\nname = \"w\"\nrole = \"other\"\ntenants = [\"acme\"]\ncgroup = [\"{root}/w\"]\n"
    );
    let daemon = Daemon::start_with(&config, &cg, &[OsStr::new("--geoip"), db.as_os_str()])?;
    daemon.wait_for(Duration::from_secs(10), |r| action(r) == "geoip-loaded")?;
    let r = client(&other, Op::Tcp(SocketAddr::new(us.tcp.ip(), us.tcp.port())))?;
    assert!(eperm(&r), "the default policy allows the EEA only: {r}");
    let records = daemon.stop()?;
    let rec = record_of(&records, &r);
    assert_eq!(rec["residency"]["policy"]["index"], 0);
    assert!(rec["residency"].get("workload").is_none());
    Ok(())
}

/// A process that connected from a cgroup before the daemon saw the
/// cgroup (and so under the default policy) gets the workload's policy as
/// soon as the daemon has added it: the kernel's remembered answer for that
/// cgroup is dropped, not kept.
#[test]
fn a_cgroup_seen_late_takes_its_workload_policy() -> anyhow::Result<()> {
    if !privileged_or_skip("a_cgroup_seen_late_takes_its_workload_policy") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let db = us_only_db(dir.path());
    let us = Listener::bind(v4(35))?;
    let cg = TestCgroup::new("late")?;
    let root = cg.relative()?;
    let config = format!(
        "mode = \"monitor\"\n[kernel]\npoll_interval_ms = 5\n[policy]\nallowed = [\"EEA\"]\n\
         local_networks = [\"10.0.0.0/8\"]\n\
         [[tenant]]\nid = \"acme\"\nallowed = [\"EEA\"]\nmode = \"enforce\"\n\
         [[workload]]\nname = \"jobs\"\nrole = \"crm-sync\"\ntenants = [\"acme\"]\n\
         cgroup = [\"{root}/job-*\"]\n"
    );
    let daemon = Daemon::start_with(&config, &cg, &[OsStr::new("--geoip"), db.as_os_str()])?;
    daemon.wait_for(Duration::from_secs(10), |r| action(r) == "geoip-loaded")?;
    let pid = daemon.pid().expect("running");

    // With the daemon stopped, the job's cgroup appears and its process
    // connects: nothing has told the kernel about the cgroup yet.
    kill(pid, Signal::SIGSTOP)?;
    wait_until_stopped(pid)?;
    let early = (|| {
        let job = cg.child("job-1/task")?;
        let r = client(&job, Op::Tcp(us.tcp))?;
        anyhow::Ok((job, r))
    })();
    kill(pid, Signal::SIGCONT)?;
    let (job, early) = early?;
    assert!(ok(&early), "the default policy only flags: {early}");

    // Once the daemon has caught up, the same cgroup is the workload's.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let late = loop {
        let r = client(&job, Op::Tcp(us.tcp))?;
        if eperm(&r) || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        eperm(&late),
        "the cgroup's workload (enforce, EEA only) blocks the US: {late}"
    );
    let records = daemon.stop()?;
    assert_eq!(
        record_of(&records, &early)["residency"]["policy"]["index"],
        0
    );
    let r = record_of(&records, &late);
    assert_eq!(r["residency"]["workload"]["name"], "jobs");
    assert_eq!(r["residency"]["verdict"], "blocked");
    Ok(())
}

/// SIGSTOP takes effect asynchronously: waits until every thread of `pid`
/// is stopped (state `T` in `/proc`).
fn wait_until_stopped(pid: nix::unistd::Pid) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut all = true;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let stat = std::fs::read_to_string(task?.path().join("stat")).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("");
            all &= state == "T";
        }
        if all {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Workloads selected by uid and by process name, in the kernel: no cgroup
/// of theirs is listed, and the selectors change with a reload.
#[test]
fn uid_and_process_name_select_workloads() -> anyhow::Result<()> {
    if !privileged_or_skip("uid_and_process_name_select_workloads") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let db = us_only_db(dir.path());
    let us = Listener::bind(v4(36))?;
    let cg = TestCgroup::new("selectors")?;
    let config = |selector: &str| {
        format!(
            "mode = \"monitor\"\n[kernel]\npoll_interval_ms = 5\n[policy]\nallowed = [\"EEA\"]\n\
             local_networks = [\"10.0.0.0/8\"]\n\
             [[tenant]]\nid = \"acme\"\nallowed = [\"EEA\"]\nmode = \"enforce\"\n\
             [[workload]]\nname = \"agent\"\nrole = \"backup\"\ntenants = [\"acme\"]\n{selector}\n"
        )
    };
    let config_path = dir.path().join("residency.toml");
    std::fs::write(&config_path, config("uid = 65534"))?;
    let daemon = start_from_file(&cg, &db, &config_path)?;
    daemon.wait_for(Duration::from_secs(10), |r| action(r) == "geoip-loaded")?;
    let as_nobody = |cg: &TestCgroup| {
        run_client(
            &[Op::Tcp(us.tcp)],
            &ClientOptions {
                cgroup: Some(cg),
                uid: Some(65534),
                ..Default::default()
            },
        )
    };
    let as_root = |cg: &TestCgroup| {
        run_client(
            &[Op::Tcp(us.tcp)],
            &ClientOptions {
                cgroup: Some(cg),
                ..Default::default()
            },
        )
    };
    let nobody = as_nobody(&cg)?;
    assert!(eperm(&nobody), "uid 65534 is the agent's: {nobody}");
    let root = as_root(&cg)?;
    assert!(
        ok(&root),
        "root is no one's: default policy, flagged: {root}"
    );

    std::fs::write(&config_path, config("process = \"egress-client\""))?;
    kill(daemon.pid().expect("running"), Signal::SIGHUP)?;
    daemon.wait_for(Duration::from_secs(10), |r| {
        action(r) == "policy-loaded" && r["residency"]["policy"]["generation"] == 2
    })?;
    let by_name = as_root(&cg)?;
    assert!(
        eperm(&by_name),
        "the agent is now selected by name: {by_name}"
    );

    let records = daemon.stop()?;
    for (report, workload) in [
        (&nobody, Some("agent")),
        (&root, None),
        (&by_name, Some("agent")),
    ] {
        let r = record_of(&records, report);
        assert_eq!(r["residency"]["workload"]["name"].as_str(), workload, "{r}");
    }
    Ok(())
}

/// A workload of two tenants gets the intersection of their countries, in
/// the kernel; an IPv6 exception (to a test host in a network namespace)
/// applies until it expires, and the daemon says so when it does; a changed
/// file is picked up without a signal.
#[test]
fn intersections_expiry_and_file_changes() -> anyhow::Result<()> {
    if !privileged_or_skip("intersections_expiry_and_file_changes") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("c.mmdb");
    write(
        &db,
        Layout::GeoIp2,
        "t",
        1,
        &[
            Entry::country("fd00:77:11::/48", "US"),
            Entry::country("fd00:77:12::/48", "DE"),
            Entry::country("127.0.0.48/28", "FR"),
        ],
    );
    let mut ns = residency_tests::NetNs::new(&["fd00:77:11::/48", "fd00:77:12::/48"])?;
    let hosts = ns.serve()?;
    let (us6, _) = hosts[0];
    let (de6, _) = hosts[1];
    let fr = Listener::bind(v4(50))?;
    let cg = TestCgroup::new("expiry")?;
    let root = cg.relative()?;
    let shared = cg.child("shared")?;
    // Whole seconds, a few from now: the daemon starts well within them.
    let expires = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 4)?;
    let config = |globex: &str| {
        format!(
            "mode = \"monitor\"\n[kernel]\npoll_interval_ms = 5\n[geoip]\ncheck_interval_secs = 1\n\
             [policy]\nallowed = [\"EEA\"]\nlocal_networks = [\"10.0.0.0/8\"]\n\
             [[tenant]]\nid = \"acme\"\nallowed = [\"EEA\"]\nmode = \"enforce\"\n\
             [[tenant]]\nid = \"globex\"\nallowed = [{globex}]\n\
             [[workload]]\nname = \"shared-llm\"\nrole = \"llm\"\ntenants = [\"acme\", \"globex\"]\n\
             cgroup = [\"{root}/shared\"]\n\
             [[exception]]\nname = \"us-relay\"\ndestinations = [\"fd00:77:11::/48\"]\nbasis = \"dpf\"\n\
             justification = \"DPF-certified relay, listed 2026-01-10\"\nexpires = \"{expires}\"\n\
             tenants = [\"acme\", \"globex\"]\n"
        )
    };
    let config_path = dir.path().join("residency.toml");
    std::fs::write(&config_path, config("\"DE\", \"US\""))?;
    let daemon = start_from_file(&cg, &db, &config_path)?;
    daemon.wait_for(Duration::from_secs(10), |r| action(r) == "geoip-loaded")?;
    assert!(
        jiff::Timestamp::now() < expires,
        "the daemon took too long to start for this test"
    );

    // EEA ∩ {DE, US} = {DE}: FR is blocked, DE allowed; the US only
    // through the exception.
    let fr_blocked = client(&shared, Op::Tcp(fr.tcp))?;
    assert!(eperm(&fr_blocked), "FR is not globex's: {fr_blocked}");
    let de_ok = client(&shared, Op::Tcp(de6))?;
    assert!(ok(&de_ok), "DE is both tenants': {de_ok}");
    let us_before = client(&shared, Op::Tcp(us6))?;
    assert!(ok(&us_before), "the exception is in force: {us_before}");

    let expiry_note = daemon.wait_for(Duration::from_secs(15), |r| {
        action(r) == "exception-expired"
    })?;
    assert!(
        jiff::Timestamp::now() >= expires,
        "not before its time: {expiry_note}"
    );
    let us_after = client(&shared, Op::Tcp(us6))?;
    assert!(eperm(&us_after), "the exception has expired: {us_after}");

    // globex now allows FR too; the daemon sees the file change by itself.
    std::fs::write(&config_path, config("\"DE\", \"FR\", \"US\""))?;
    let reloaded = daemon.wait_for(Duration::from_secs(15), |r| {
        action(r) == "policy-loaded" && r["residency"]["policy"]["generation"] == 3
    })?;
    let fr_now = client(&shared, Op::Tcp(fr.tcp))?;
    assert!(ok(&fr_now), "FR is now both tenants': {fr_now}");

    let records = daemon.stop()?;
    let r = record_of(&records, &us_before);
    assert_eq!(r["residency"]["decided_by"], "exception", "{r}");
    assert_eq!(r["residency"]["exception"]["name"], "us-relay");
    assert_eq!(r["residency"]["exception"]["basis"], "dpf");
    assert_eq!(r["residency"]["tenants"][1], "globex");
    let r = record_of(&records, &us_after);
    assert_eq!(r["residency"]["verdict"], "blocked");
    assert_eq!(r["residency"]["decided_by"], "geoip");
    assert_eq!(r["residency"]["policy"]["generation"], 2);
    let r = record_of(&records, &fr_now);
    assert_eq!(
        r["residency"]["policy"]["hash"],
        reloaded["residency"]["policy"]["hash"]
    );
    Ok(())
}
