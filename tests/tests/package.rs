//! The Debian package, as `cargo xtask package --debug` builds it (the dev
//! build, stripped: the same packaging as a release, without a release
//! build's time).
//!
//! First what it holds, read with dpkg-deb (and lintian, where it is
//! installed; under CI it must be): the files and their modes, the conffile,
//! the unit as the repository has it, the maintainer scripts. Then what it
//! does to a host under a real systemd ([`Machine`]): `dpkg -i` enables the
//! unit without starting it; the installed configuration passes `residency
//! check`; enforcement configured and started blocks a denied destination;
//! an upgrade with the daemon running lets no connect to it through and
//! restarts the daemon; `dpkg -r` stops it and leaves nothing deciding;
//! `dpkg --purge` leaves only the evidence store.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, PoisonError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use residency_tests::{machine::Machine, privileged_or_skip, workspace_bin};
use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The version `cargo xtask package` gives by default (the changelog's).
fn version(revision: u32) -> String {
    format!("{}-{revision}", env!("CARGO_PKG_VERSION"))
}

/// The package of `version`, made once per test process with `cargo xtask
/// package --debug --no-build`: of the debug binary the other end-to-end
/// tests run, already built, as they expect it (no compile in the test).
fn package(version: &str) -> anyhow::Result<PathBuf> {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    // One build at a time: they share the man page directory.
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(deb) = built.get(version) {
        return Ok(deb.clone());
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package-test");
    let started = Instant::now();
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Without what `cargo test` set for this test: build scripts that read
    // those variables would be re-run, and the daemon rebuilt, because they
    // differ from a build's from a shell (the xtask drops them too).
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str()
            && (key.starts_with("CARGO_PKG_")
                || matches!(
                    key,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_BIN_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                ))
        {
            cargo.env_remove(key);
        }
    }
    let made = cargo
        .args(["xtask", "package", "--debug", "--no-build", "--out"])
        .arg(&out)
        .args(["--deb-version", version])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo xtask package")?;
    ensure!(
        made.status.success(),
        "cargo xtask package failed: {}",
        made.status
    );
    let deb = PathBuf::from(
        String::from_utf8(made.stdout)?
            .lines()
            .last()
            .context("cargo xtask package printed nothing")?
            .trim(),
    );
    ensure!(deb.is_file(), "{} was not written", deb.display());
    eprintln!(
        "built {} ({} bytes) in {:.1?}",
        deb.display(),
        fs::metadata(&deb)?.len(),
        started.elapsed()
    );
    built.insert(version.to_owned(), deb.clone());
    Ok(deb)
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// `dpkg-deb -c`: path (without the leading `.`) to (mode string, owner,
/// size).
fn contents(deb: &Path) -> anyhow::Result<BTreeMap<String, (String, String, u64)>> {
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    let mut files = BTreeMap::new();
    for line in listing.lines() {
        // drwxr-xr-x 0/0  0 2026-12-07 00:00 ./usr/
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f.len() >= 6, "unexpected dpkg-deb -c line: {line}");
        let path = f[5].trim_start_matches('.').to_owned();
        files.insert(path, (f[0].to_owned(), f[1].to_owned(), f[2].parse()?));
    }
    Ok(files)
}

#[test]
fn the_package_holds_the_daemon_its_unit_a_safe_config_the_geoip_data_and_man_pages() {
    let deb = package(&version(1)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    control_fields(&deb).unwrap();
    files_and_modes(&deb).unwrap();
    maintainer_scripts(&deb, &tmp.path().join("control")).unwrap();
    what_the_files_say(&deb, &tmp.path().join("tree")).unwrap();
    lintian(&deb);
}

fn control_fields(deb: &Path) -> anyhow::Result<()> {
    let field = |name: &str| -> anyhow::Result<String> {
        Ok(run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))?
            .trim()
            .to_owned())
    };
    assert_eq!(field("Package")?, "residency");
    assert_eq!(field("Version")?, version(1));
    let arch = run(Command::new("dpkg").arg("--print-architecture"))?;
    assert_eq!(field("Architecture")?, arch.trim());
    let depends = field("Depends")?;
    assert!(depends.contains("libc6"), "Depends: {depends}");
    assert!(
        depends.contains("init-system-helpers"),
        "Depends: {depends}"
    );
    Ok(())
}

/// Files, owners and modes.
fn files_and_modes(deb: &Path) -> anyhow::Result<()> {
    let files = contents(deb)?;
    let expect = [
        ("/usr/bin/residency", "-rwxr-xr-x"),
        ("/etc/residency/", "drwxr-xr-x"),
        ("/etc/residency/residency.toml", "-rw-r-----"),
        ("/usr/lib/systemd/system/residency.service", "-rw-r--r--"),
        (
            "/usr/share/residency/geoip/geo-whois-asn-country.mmdb",
            "-rw-r--r--",
        ),
        ("/usr/share/man/man1/residency.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/residency-run.1.gz", "-rw-r--r--"),
        ("/usr/share/man/man1/residency-check.1.gz", "-rw-r--r--"),
        ("/usr/share/doc/residency/copyright", "-rw-r--r--"),
        ("/usr/share/doc/residency/changelog.Debian.gz", "-rw-r--r--"),
    ];
    for (path, mode) in expect {
        let (m, owner, _) = files
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in the package: {files:#?}"));
        assert_eq!(m, mode, "{path}");
        assert_eq!(owner, "0/0", "{path} must be root's");
    }
    // Nothing outside the places a package of this kind owns.
    let allowed = [
        "/usr/bin/",
        "/etc/residency/",
        "/usr/lib/systemd/system/",
        "/usr/share/residency/",
        "/usr/share/man/man1/",
        "/usr/share/doc/residency/",
        "/usr/share/lintian/overrides/",
    ];
    for path in files.keys() {
        let is_parent = allowed.iter().any(|a| a.starts_with(path.as_str()));
        assert!(
            is_parent || allowed.iter().any(|a| path.starts_with(a)),
            "{path} is outside what the package should install"
        );
    }
    // The whole CC0 database, byte for byte the size of the fetched one.
    let db = workspace_root().join("data/geoip/geo-whois-asn-country.mmdb");
    assert_eq!(
        files["/usr/share/residency/geoip/geo-whois-asn-country.mmdb"].2,
        fs::metadata(&db)?.len()
    );
    Ok(())
}

/// The control archive: the conffile list and the maintainer scripts.
fn maintainer_scripts(deb: &Path, control: &Path) -> anyhow::Result<()> {
    run(Command::new("dpkg-deb").arg("-e").arg(deb).arg(control))?;
    assert_eq!(
        fs::read_to_string(control.join("conffiles"))?,
        "/etc/residency/residency.toml\n"
    );
    let script = |name: &str| fs::read_to_string(control.join(name));
    for name in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(name)))
            .unwrap_or_else(|e| panic!("{name} is not valid sh: {e}"));
        assert!(
            !script(name)?.contains("#DEBHELPER#"),
            "{name}: marker left"
        );
    }
    let postinst = script("postinst")?;
    assert!(postinst.contains("deb-systemd-helper enable residency.service"));
    assert!(
        postinst.contains("deb-systemd-invoke try-restart residency.service"),
        "an upgrade restarts the service only if it runs"
    );
    // (The message to the administrator, a here-document, may say how to.)
    let code: Vec<&str> = postinst
        .split("<<'MSG'")
        .enumerate()
        .map(|(i, part)| {
            if i == 0 {
                part
            } else {
                part.split_once("\nMSG\n").map_or("", |(_, rest)| rest)
            }
        })
        .collect();
    assert!(
        code.iter()
            .all(|c| !c.contains("deb-systemd-invoke start") && !c.contains("systemctl start")),
        "installing must never start enforcement: {postinst}"
    );
    let prerm = script("prerm")?;
    // Stopped first (cargo-deb's fragment), then detached.
    let stop = prerm.find("deb-systemd-invoke stop").unwrap_or(usize::MAX);
    let detach = prerm.find("residency detach --all").unwrap_or(0);
    assert!(
        stop < detach,
        "prerm must stop the service before detaching: {prerm}"
    );
    assert!(
        prerm.contains(r#"[ "$1" = remove ]"#),
        "stop only on removal"
    );
    assert!(prerm.contains("residency detach --all"), "{prerm}");
    assert!(prerm.contains("rm -rf /sys/fs/bpf/residency"), "{prerm}");
    Ok(())
}

/// The contents themselves.
fn what_the_files_say(deb: &Path, tree: &Path) -> anyhow::Result<()> {
    let root = workspace_root();
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(tree))?;
    // The unit is the repository's, not a copy.
    assert_eq!(
        fs::read(tree.join("usr/lib/systemd/system/residency.service"))?,
        fs::read(root.join("systemd/residency.service"))?
    );
    // The packaged binary runs, and passes its own configuration: monitor
    // mode, the packaged database.
    let binary = tree.join("usr/bin/residency");
    let v = run(Command::new(&binary).arg("--version"))?;
    assert_eq!(v.trim(), format!("residency {}", env!("CARGO_PKG_VERSION")));
    let config = tree.join("etc/residency/residency.toml");
    let check = run(Command::new(&binary)
        .arg("check")
        .arg("--config")
        .arg(&config))?;
    assert!(check.contains("valid: mode monitor"), "{check}");
    let text = fs::read_to_string(&config)?;
    assert!(
        text.contains("database = \"/usr/share/residency/geoip/geo-whois-asn-country.mmdb\""),
        "{text}"
    );
    // The man page is roff with the subcommands and the files.
    let page = run(Command::new("gzip")
        .arg("-dc")
        .arg(tree.join("usr/share/man/man1/residency.1.gz")))?;
    assert!(page.contains(".TH residency 1"), "{page}");
    assert!(page.contains("residency\\-run(1)"));
    assert!(page.contains(".SH FILES"));
    // Debian's copyright format, the GeoIP data under its own license.
    let copyright = fs::read_to_string(tree.join("usr/share/doc/residency/copyright"))?;
    assert!(
        copyright.starts_with(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
        )
    );
    assert!(copyright.contains("License: Apache-2.0"));
    assert!(copyright.contains("License: CC0-1.0"));
    Ok(())
}

/// Debian's own package checker, where it is installed (`cargo xtask test`
/// installs it; CI must run it).
fn lintian(deb: &Path) {
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .arg(deb)
        .output();
    match lintian {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            eprintln!("lintian:\n{text}{}", String::from_utf8_lossy(&out.stderr));
            assert!(
                out.status.success(),
                "lintian found errors or warnings:\n{text}"
            );
        }
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but lintian cannot run: {e}"
            );
            eprintln!("SKIPPED the lintian check: {e} (cargo xtask test installs lintian)");
        }
    }
}

/// What `egress-client` reported for one operation: successful connects,
/// and failures by errno.
fn op<'a>(report: &'a Value, name: &str) -> (u64, &'a serde_json::Map<String, Value>) {
    let op = report["ops"]
        .as_array()
        .and_then(|ops| ops.iter().find(|o| o["op"] == name))
        .unwrap_or_else(|| panic!("no {name} in {report}"));
    (
        op["ok"].as_u64().unwrap_or_default(),
        op["errors"].as_object().expect("errors"),
    )
}

const DENIED: &str = "tcp:127.0.0.2:7070";
const ALLOWED: &str = "tcp:127.0.0.3:7070";

/// The cgroup the enforcing configuration watches, inside the machine.
const CGROUP: &str = "/sys/fs/cgroup/restest";

/// The configuration an administrator writes to enforce: a deny rule for
/// 127.0.0.2 (the machine's own loopback: it has a private network) in a
/// child cgroup made for the test, never the machine's root.
const ENFORCE: &str = r#"mode = "enforce"

[kernel]
cgroup = "/restest"

[geoip]
database = "/usr/share/residency/geoip/geo-whois-asn-country.mmdb"

[output]
events = "/var/log/residency/events.json"

[api]
# A free port: the API token and address files are made, and purge must
# remove them.
listen = "127.0.0.1:0"

[[deny]]
name = "package-test"
destinations = ["127.0.0.2/32"]
"#;

/// Runs the client in the machine's test cgroup: `repeat` passes over
/// both destinations.
fn client(machine: &Machine, repeat: u32) -> anyhow::Result<Value> {
    let client = workspace_bin("egress-client")?;
    let out = machine.run(&[
        client.to_str().context("path")?,
        "--cgroup",
        CGROUP,
        "--repeat",
        &repeat.to_string(),
        DENIED,
        ALLOWED,
    ]);
    ensure!(
        out.status.success(),
        "egress-client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn state(machine: &Machine, what: &str) -> String {
    String::from_utf8_lossy(&machine.sh(&format!("systemctl {what} residency")).stdout)
        .trim()
        .to_owned()
}

fn dpkg(machine: &Machine, args: &str) -> anyhow::Result<String> {
    let started = Instant::now();
    let out = machine.sh(&format!("dpkg {args} </dev/null 2>&1"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("dpkg {args} ({:.1?}):\n{text}", started.elapsed());
    ensure!(
        out.status.success(),
        "dpkg {args} failed ({}): {text}",
        out.status
    );
    Ok(text)
}

#[test]
fn the_package_installs_enabled_not_started_keeps_enforcing_across_an_upgrade_and_purges_to_the_evidence()
 {
    if !privileged_or_skip("package lifecycle under systemd") {
        return;
    }
    let test_started = Instant::now();
    let v1 = package(&version(1)).unwrap();
    let v2 = package(&version(2)).unwrap();
    let machine = Machine::boot("package").unwrap();
    // The host image's policy-rc.d (a container build's "start no
    // service") would stop deb-systemd-invoke from starting, restarting or
    // stopping anything, and make "not started on install" hold trivially.
    // A real host has none.
    machine.sh_ok("rm -f /usr/sbin/policy-rc.d").unwrap();
    machine
        .copy_in(&v1, "/root/residency-1.deb", 0o644)
        .unwrap();
    machine
        .copy_in(&v2, "/root/residency-2.deb", 0o644)
        .unwrap();

    install(&machine).unwrap();
    let old_pid = enforce(&machine).unwrap();
    upgrade(&machine, &old_pid).unwrap();
    remove(&machine).unwrap();
    purge(&machine).unwrap();
    eprintln!("package lifecycle test: {:.1?}", test_started.elapsed());
}

/// Install: enabled, not started, nothing attached.
fn install(machine: &Machine) -> anyhow::Result<()> {
    let out = dpkg(machine, "-i /root/residency-1.deb")?;
    assert!(out.contains("enabled but not started"), "{out}");
    assert_eq!(state(machine, "is-enabled"), "enabled");
    assert_eq!(
        state(machine, "is-active"),
        "inactive",
        "installing must not start enforcement"
    );
    assert_eq!(
        machine
            .sh_ok("readlink -f /etc/systemd/system/multi-user.target.wants/residency.service")?
            .trim(),
        "/usr/lib/systemd/system/residency.service"
    );
    let modes = machine.sh_ok(
        "stat -c '%n %a %U:%G' /usr/bin/residency /etc/residency \
             /etc/residency/residency.toml /var/lib/residency /var/log/residency \
             /usr/lib/systemd/system/residency.service \
             /usr/share/residency/geoip/geo-whois-asn-country.mmdb \
             /usr/share/man/man1/residency.1.gz",
    )?;
    assert_eq!(
        modes,
        "/usr/bin/residency 755 root:root\n\
         /etc/residency 755 root:root\n\
         /etc/residency/residency.toml 640 root:root\n\
         /var/lib/residency 700 root:root\n\
         /var/log/residency 755 root:root\n\
         /usr/lib/systemd/system/residency.service 644 root:root\n\
         /usr/share/residency/geoip/geo-whois-asn-country.mmdb 644 root:root\n\
         /usr/share/man/man1/residency.1.gz 644 root:root\n"
    );
    let check = machine.sh_ok("residency check --config /etc/residency/residency.toml")?;
    assert!(check.contains("valid: mode monitor"), "{check}");
    // The unit starts the binary the package installed.
    let exec = machine.unit_property("residency", "ExecStart")?;
    assert!(
        exec.contains("path=/usr/bin/residency "),
        "ExecStart: {exec}"
    );
    machine.sh_ok("systemd-analyze verify residency.service")?;
    Ok(())
}

/// Enforce: a deny rule in a child cgroup, started by hand.
/// Returns the daemon's `MainPID`.
fn enforce(machine: &Machine) -> anyhow::Result<String> {
    machine.write("/etc/residency/residency.toml", ENFORCE, 0o640)?;
    machine.sh_ok(&format!("mkdir {CGROUP}"))?;
    let listener = workspace_bin("test-listener")?;
    machine.sh_ok(&format!(
        "systemd-run --unit=restest-listener --quiet {} 127.0.0.2:7070 127.0.0.3:7070",
        listener.display()
    ))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while machine
        .sh_ok("ss -Htln 'sport = :7070'")
        .unwrap_or_default()
        .lines()
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "the listener did not come up");
        thread::sleep(Duration::from_millis(20));
    }
    let before = client(machine, 5)?;
    assert_eq!(
        op(&before, DENIED).0,
        5,
        "before the daemon, nothing blocks"
    );
    let started = Instant::now();
    machine
        .systemctl(&["start", "residency"])
        .unwrap_or_else(|e| panic!("{e}\n{}", machine.journal("residency")));
    eprintln!("systemctl start residency: {:.1?}", started.elapsed());
    let blocked = client(machine, 5)?;
    let (ok, errors) = op(&blocked, DENIED);
    assert_eq!(ok, 0, "denied destination reached: {blocked}");
    assert_eq!(
        errors.get("EPERM").and_then(Value::as_u64),
        Some(5),
        "{blocked}"
    );
    assert_eq!(op(&blocked, ALLOWED).0, 5, "{blocked}");
    machine.unit_property("residency", "MainPID")
}

/// Upgrade with the daemon running, under a connect storm from the
/// cgroup: not one connect to the denied destination gets through, and
/// the daemon runs again, a new process.
fn upgrade(machine: &Machine, old_pid: &str) -> anyhow::Result<()> {
    machine.sh_ok("rm -f /run/restest-stop")?;
    let client_bin = workspace_bin("egress-client")?;
    let storm = machine
        .command(&[
            client_bin.to_str().context("path")?,
            "--cgroup",
            CGROUP,
            "--until-file",
            "/run/restest-stop",
            "--interval-us",
            "1000",
            DENIED,
            ALLOWED,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    thread::sleep(Duration::from_millis(300));
    let upgrade_started = Instant::now();
    let out = dpkg(machine, "-i /root/residency-2.deb")?;
    let upgrade_took = upgrade_started.elapsed();
    thread::sleep(Duration::from_millis(300));
    machine.sh_ok("touch /run/restest-stop")?;
    let storm = storm.wait_with_output()?;
    assert!(
        storm.status.success(),
        "egress-client: {}",
        String::from_utf8_lossy(&storm.stderr)
    );
    let storm: Value = serde_json::from_slice(&storm.stdout)?;
    eprintln!("upgrade took {upgrade_took:.1?}; storm: {storm}");
    let (ok, errors) = op(&storm, DENIED);
    let (allowed_ok, _) = op(&storm, ALLOWED);
    assert!(allowed_ok > 0, "the storm made no connects: {storm}");
    // kernel.persist: the programs stay pinned and attached
    // while the old daemon stops and the new one starts.
    assert_eq!(
        ok, 0,
        "{ok} connects reached the denied destination during the upgrade: {storm}\n{out}"
    );
    assert_eq!(errors.keys().collect::<Vec<_>>(), ["EPERM"], "{storm}");
    assert_eq!(
        machine.sh_ok("dpkg-query -W -f '${Version}' residency")?,
        version(2)
    );
    assert_eq!(
        state(machine, "is-active"),
        "active",
        "{}",
        machine.journal("residency")
    );
    let new_pid = machine.unit_property("residency", "MainPID")?;
    assert_ne!(new_pid, old_pid, "the upgrade did not restart the daemon");
    assert_ne!(new_pid, "0");
    // The administrator's configuration survives the upgrade (no prompt).
    assert_eq!(
        fs::read_to_string(machine.path("/etc/residency/residency.toml"))?,
        ENFORCE
    );
    // What purge is to remove later.
    for file in ["api.token", "api.addr"] {
        assert!(
            machine.path("/var/lib/residency").join(file).is_file(),
            "the running daemon made no {file}"
        );
    }
    Ok(())
}

/// Remove: stopped, the program files gone, the configuration kept,
/// and nothing left deciding in the kernel.
fn remove(machine: &Machine) -> anyhow::Result<()> {
    dpkg(machine, "-r residency")?;
    assert_eq!(state(machine, "is-active"), "inactive");
    for gone in [
        "/usr/bin/residency",
        "/usr/lib/systemd/system/residency.service",
        "/usr/share/residency",
    ] {
        assert!(!machine.path(gone).exists(), "{gone} left after dpkg -r");
    }
    assert_eq!(
        fs::read_to_string(machine.path("/etc/residency/residency.toml"))?,
        ENFORCE,
        "dpkg -r keeps the conffile"
    );
    let pins = machine.sh("ls -A /sys/fs/bpf/residency");
    assert!(
        !pins.status.success(),
        "pins left after dpkg -r: {}",
        String::from_utf8_lossy(&pins.stdout)
    );
    let attached = machine.sh_ok(&format!("bpftool cgroup show {CGROUP}"))?;
    assert_eq!(attached.trim(), "", "programs left attached: {attached}");
    let after = client(machine, 5)?;
    assert_eq!(
        op(&after, DENIED).0,
        5,
        "the denied destination must be reachable once the package is removed: {after}"
    );

    Ok(())
}

/// Purge: everything but the evidence store.
fn purge(machine: &Machine) -> anyhow::Result<()> {
    let out = dpkg(machine, "--purge residency")?;
    assert!(
        out.contains("kept the evidence store in /var/lib/residency"),
        "{out}"
    );
    let places = [
        "/etc/residency",
        "/var/lib/residency",
        "/var/log/residency",
        "/usr/share/residency",
        "/usr/lib/systemd/system",
        "/etc/systemd/system/multi-user.target.wants",
    ];
    // (Of the unit directories, only what names residency.)
    let listing = machine
        .sh(&format!(
            "for d in {}; do echo \"== $d\"; ls -lA $d 2>&1 | \
             if [ \"${{d#*/systemd/}}\" != \"$d\" ]; then grep residency || echo '(no residency)'; else cat; fi; done",
            places.join(" ")
        ))
        .stdout;
    eprintln!("after purge:\n{}", String::from_utf8_lossy(&listing));
    for gone in [
        "/etc/residency",
        "/var/log/residency",
        "/usr/share/residency",
        "/usr/lib/systemd/system/residency.service",
        "/etc/systemd/system/multi-user.target.wants/residency.service",
        "/etc/systemd/system/residency.service",
        "/var/lib/residency/api.token",
        "/var/lib/residency/api.addr",
    ] {
        assert!(
            machine
                .sh(&format!("test -e {gone} || test -L {gone}"))
                .status
                .code()
                == Some(1),
            "{gone} left after purge"
        );
    }
    let kept = machine.sh_ok("ls -A /var/lib/residency")?;
    for file in ["evidence.db", "evidence.key"] {
        assert!(kept.lines().any(|l| l == file), "{file} not kept: {kept}");
    }
    assert!(
        !machine
            .sh("dpkg-query -W -f '${Status}' residency")
            .status
            .success(),
        "dpkg still knows the package after purge"
    );
    // What purge kept is still verifiable evidence (with the workspace's
    // binary: the package's is gone).
    let residency = workspace_bin("residency")?;
    machine.sh_ok(&format!(
        "{} evidence verify --store /var/lib/residency",
        residency.display()
    ))?;
    Ok(())
}
