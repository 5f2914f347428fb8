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
