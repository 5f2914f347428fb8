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
