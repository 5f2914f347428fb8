//! The `residency` command's behaviour that needs no root: configuration
//! checking, the built-in configuration, and exit codes.

use std::process::Command;

fn residency() -> Command {
    Command::new(env!("CARGO_BIN_EXE_residency"))
}

#[test]
fn default_config_round_trips_through_check() {
    let out = residency().arg("default-config").output().unwrap();
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("residency.toml");
    std::fs::write(&path, &out.stdout).unwrap();
    let out = residency()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("valid: mode monitor"), "{stdout}");
}

#[test]
fn check_reports_file_line_and_field_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[deny]]\nname = \"us-llm\"\ndestinations = [\"203.0.113.0/24\", \"not-an-ip\"]\n",
    )
    .unwrap();
    let out = residency()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3: deny[0].destinations[1]"), "{err}");
    assert!(err.contains("not-an-ip"), "{err}");
}

#[test]
fn check_refuses_enforcing_on_the_whole_host() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("root.toml");
    std::fs::write(
        &path,
        "mode = \"enforce\"\n[[deny]]\nname = \"x\"\ndestinations = [\"203.0.113.0/24\"]\n",
    )
    .unwrap();
    let out = residency()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("allow_enforce_at_root"));
}

#[test]
fn missing_config_file_is_a_config_error() {
    let out = residency()
        .args(["run", "--config", "/nonexistent/residency.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the file"));
}

#[test]
fn help_teaches_the_first_steps() {
    let out = residency().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "residency probe",
        "default-config",
        "check",
        "run",
        "Exit codes",
        "RESIDENCY_LOG",
    ] {
        assert!(help.contains(want), "--help lacks {want:?}:\n{help}");
    }
    let out = residency().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--config",
        "--cgroup",
        "--output",
        "Needs root",
        "events-lost",
        "Examples",
    ] {
        assert!(help.contains(want), "run --help lacks {want:?}:\n{help}");
    }
}

#[test]
fn probe_names_the_cgroup2_mount_from_mountinfo() {
    let out = residency().arg("probe").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut f = left.split_whitespace();
        let root = f.nth(3)?;
        let point = f.next()?;
        (right.starts_with("cgroup2 ") && root == "/").then(|| point.to_owned())
    });
    let line = text
        .lines()
        .find(|l| l.starts_with("cgroup v2:"))
        .expect("cgroup v2 line");
    match mount {
        Some(m) => assert!(line.ends_with(&m), "{line} vs {m}"),
        None => assert!(line.contains("not mounted"), "{line}"),
    }
    for key in [
        "kernel:",
        "tracefs:",
        "BTF:",
        "cgroup sock_addr progs:",
        "BPF ring buffer:",
    ] {
        assert!(text.contains(key), "probe lacks {key}:\n{text}");
    }
}

#[test]
fn lookup_explains_each_verdict() {
    use geoip::testdb::{Entry, Layout, write};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.mmdb");
    write(
        &db,
        Layout::GeoIp2,
        "Test-Country",
        1_800_000_000,
        &[
            Entry {
                network: "198.51.100.0/24",
                country: Some("US"),
                asn: Some(64_496),
                as_org: Some("Example Inc"),
                ..Default::default()
            },
            Entry::country("2001:db8:de::/48", "DE"),
        ],
    );
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "mode = \"enforce\"\n[kernel]\ncgroup = \"/w\"\n[policy]\nallowed = [\"EEA\"]\nunknown = \"block\"\n\
         [[internal]]\nname = \"dc-zurich\"\ndestinations = [\"10.20.0.0/16\"]\njurisdiction = \"CH\"\n",
    )
    .unwrap();
    let out = residency()
        .args(["lookup", "--json", "--config"])
        .arg(&config)
        .arg("--geoip")
        .arg(&db)
        .args([
            "198.51.100.7",
            "2001:db8:de::1",
            "10.20.0.5",
            "10.99.0.1",
            "203.0.113.1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let get = |i: usize, k: &str| lines[i][k].clone();
    assert_eq!(get(0, "verdict"), "blocked");
    assert_eq!(get(0, "country"), "US");
    assert_eq!(lines[0]["database"]["asn"], 64_496);
    assert_eq!(lines[0]["geoip"]["version"], "Test-Country@1800000000");
    assert_eq!(get(1, "verdict"), "allowed");
    assert_eq!(get(1, "country"), "DE");
    assert_eq!(
        (get(2, "verdict"), get(2, "decided_by")),
        ("blocked".into(), "internal".into())
    );
    assert_eq!(lines[2]["rule"]["name"], "dc-zurich");
    assert_eq!(get(3, "decided_by"), "local");
    assert_eq!(
        (get(4, "verdict"), get(4, "decided_by")),
        ("blocked".into(), "unknown".into())
    );
    assert!(
        lines[4]["reasons"]
            .to_string()
            .contains("unknown destinations"),
        "{}",
        lines[4]
    );

    // The text form says the same, for people.
    let out = residency()
        .args(["lookup", "--config"])
        .arg(&config)
        .arg("--geoip")
        .arg(&db)
        .arg("198.51.100.7")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("verdict:    blocked"), "{text}");
    assert!(text.contains("US is not allowed (EEA)"), "{text}");
    assert!(text.contains("AS64496 Example Inc"), "{text}");
}

#[test]
fn lookup_cites_a_condition_for_its_country_only() {
    use geoip::testdb::{Entry, Layout, write};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("t.mmdb");
    write(
        &db,
        Layout::GeoIp2,
        "Test-Country",
        1_800_000_000,
        &[
            Entry::country("81.2.69.0/24", "GB"),
            Entry::country("198.51.100.0/24", "CA"),
            Entry::country("203.0.113.0/24", "US"),
        ],
    );
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "mode = \"enforce\"\n[kernel]\ncgroup = \"/w\"\n[policy]\n\
         allowed = [\"EEA\", \"ADEQUACY\", \"US-DPF\"]\n",
    )
    .unwrap();
    let lookup = |ip: &str| {
        let out = residency()
            .args(["lookup", "--config"])
            .arg(&config)
            .arg("--geoip")
            .arg(&db)
            .arg(ip)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let gb = lookup("81.2.69.142");
    assert!(gb.contains("GB is allowed"), "{gb}");
    assert!(!gb.contains("condition") && !gb.contains("PIPEDA"), "{gb}");
    let ca = lookup("198.51.100.7");
    assert!(
        ca.contains(
            "the transfer basis for CA (adequacy) holds only on a condition: \
             commercial organisations subject to PIPEDA only (Decision 2002/2/EC)"
        ),
        "{ca}"
    );
    let us = lookup("203.0.113.7");
    assert!(
        us.contains("the transfer basis for US (dpf) holds only on a condition")
            && us.contains("Data Privacy Framework")
            && !us.contains("PIPEDA"),
        "{us}"
    );
}

#[test]
fn lookup_with_a_broken_database_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("broken.mmdb");
    std::fs::write(&db, b"garbage").unwrap();
    let out = residency()
        .args(["lookup", "--geoip"])
        .arg(&db)
        .arg("8.8.8.8")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.mmdb is not a usable MaxMind DB file"),
        "{err}"
    );
}

fn example(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config")
        .join(name)
}

fn example_db(dir: &std::path::Path) -> std::path::PathBuf {
    use geoip::testdb::{Entry, Layout, write};
    let db = dir.join("example.mmdb");
    write(
        &db,
        Layout::GeoIp2,
        "Test-Country",
        1,
        &[
            Entry::country("192.0.2.0/24", "DE"),
            Entry::country("198.51.100.0/24", "US"),
        ],
    );
    db
}

#[test]
fn the_tenant_example_checks_and_passes_its_cases() {
    let out = residency()
        .args(["check", "--config"])
        .arg(example("example-tenants.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let db = example_db(dir.path());
    let out = residency()
        .args(["test-policy", "--config"])
        .arg(example("example-tenants.toml"))
        .arg("--geoip")
        .arg(&db)
        .arg(example("example-cases.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().last().unwrap_or("") == "5 passed, 0 failed",
        "{stdout}"
    );
}

#[test]
fn test_policy_fails_with_a_readable_diff() {
    let dir = tempfile::tempdir().unwrap();
    let db = example_db(dir.path());
    let cases = dir.path().join("cases.toml");
    std::fs::write(
        &cases,
        "[[case]]\nworkload = \"llm-inference\"\ndestination = \"198.51.100.10\"\nexpect = \"allowed\"\nnote = \"wrong on purpose\"\n\
         [[case]]\nworkload = \"llm-inference\"\ndestination = \"192.0.2.10\"\nexpect = \"allowed\"\n",
    )
    .unwrap();
    let out = residency()
        .args(["test-policy", "--config"])
        .arg(example("example-tenants.toml"))
        .arg("--geoip")
        .arg(&db)
        .arg(&cases)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("MISMATCH llm-inference -> 198.51.100.10 (wrong on purpose): expected allowed, got blocked"),
        "{stdout}"
    );
    assert!(
        stdout.contains("US is not allowed (the intersection of"),
        "the reasons follow: {stdout}"
    );
    assert!(stdout.contains("1 passed, 1 failed"), "{stdout}");

    // A malformed cases file: file, line, field.
    std::fs::write(
        &cases,
        "[[case]]\ndestination = \"1.2.3.4\"\nexpect = \"denied\"\n",
    )
    .unwrap();
    let out = residency()
        .args(["test-policy", "--config"])
        .arg(example("example-tenants.toml"))
        .arg("--geoip")
        .arg(&db)
        .arg(&cases)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cases.toml:3: case[0].expect"));
}

#[test]
fn explain_gives_the_chain_of_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let db = example_db(dir.path());
    let out = residency()
        .args(["explain", "--config"])
        .arg(example("example-tenants.toml"))
        .arg("--geoip")
        .arg(&db)
        .args([
            "--workload",
            "log-shipper",
            "--dest",
            "198.51.100.20",
            "--port",
            "6514",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("verdict:    allowed"), "{text}");
    assert!(
        text.contains("workload \"log-shipper\" (logging) serves tenant(s) acme, globex"),
        "{text}"
    );
    assert!(
        text.contains("exception \"siem-us-scc\" (basis: scc"),
        "{text}"
    );
    let out = residency()
        .args(["explain", "--config"])
        .arg(example("example-tenants.toml"))
        .args(["--workload", "nope", "--dest", "1.2.3.4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no workload \"nope\""));
}

#[test]
fn a_config_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("open.toml");
    std::fs::write(&path, "mode = \"monitor\"\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = residency()
        .args([
            "run",
            "--output",
            "/dev/null",
            "--cgroup",
            "/nonexistent",
            "--config",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("writable by its group or by everyone") || err.contains("not root"),
        "{err}"
    );
    // The development flag lets it through to the next check.
    let out = residency()
        .args([
            "run",
            "--allow-insecure-config",
            "--output",
            "/dev/null",
            "--cgroup",
            "/nonexistent",
            "--config",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("writable by"),
        "refused anyway"
    );
}
