//! The test machine itself: a real systemd boots, it is isolated as the
//! systemd tests need, it can load BPF programs, and dropping it leaves
//! nothing behind on the host.

use std::{fs, time::Instant};

use residency_tests::{cgroup2_mount, machine::Machine, privileged_or_skip};

#[test]
fn a_machine_boots_a_real_systemd_and_leaves_nothing_behind() {
    if !privileged_or_skip("a_machine_boots_a_real_systemd_and_leaves_nothing_behind") {
        return;
    }
    let started = Instant::now();
    let machine = Machine::boot("boots").unwrap();
    eprintln!("booted {} in {:?}", machine.name(), started.elapsed());

    // A real systemd is PID 1, with a pure cgroup2 hierarchy of its own.
    assert_eq!(machine.sh_ok("cat /proc/1/comm").unwrap().trim(), "systemd");
    assert_eq!(
        machine
            .sh_ok("stat -f -c %T /sys/fs/cgroup")
            .unwrap()
            .trim(),
        "cgroup2fs"
    );
    assert_eq!(
        machine.systemctl(&["is-system-running"]).unwrap().trim(),
        "running",
        "failed units: {}",
        machine.systemctl(&["--failed"]).unwrap_or_default()
    );
    // The host's services are masked in the copy.
    assert_eq!(
        machine
            .sh("systemctl is-enabled containerd.service")
            .stdout
            .as_slice(),
        b"masked\n"
    );
    // Its own network: a loopback and nothing else.
    let links = machine.sh_ok("ls /sys/class/net").unwrap();
    assert_eq!(links.split_whitespace().collect::<Vec<_>>(), ["lo"]);
    // Its own machine id.
    assert_ne!(
        fs::read_to_string(machine.path("/etc/machine-id")).unwrap(),
        fs::read_to_string("/etc/machine-id").unwrap_or_default()
    );
    // bpffs is not mounted, but its mount point exists, as on a host.
    assert_eq!(
        machine.sh_ok("stat -f -c %T /sys/fs/bpf").unwrap().trim(),
        "tmpfs",
        "/sys/fs/bpf should be a plain directory on nspawn's /sys"
    );
    // A unit inside (with the machine's capabilities and seccomp filter,
    // not the host's) can call bpf(): nspawn's defaults would refuse it.
    machine
        .sh_ok("systemd-run --wait --pipe --quiet bpftool prog list")
        .unwrap();
    // A process started from the host can join one of the machine's
    // cgroups, as the tests' clients do.
    machine
        .sh_ok("mkdir /sys/fs/cgroup/joined && echo $$ > /sys/fs/cgroup/joined/cgroup.procs && grep -qx $$ /sys/fs/cgroup/joined/cgroup.procs")
        .unwrap();
    // Files written under root() appear inside.
    machine.write("/root/hello", "hi\n", 0o600).unwrap();
    assert_eq!(machine.sh_ok("cat /root/hello").unwrap(), "hi\n");

    let name = machine.name().to_owned();
    let root = machine.root().to_path_buf();
    let cgroup = cgroup2_mount()
        .unwrap()
        .join(format!("residency-machine-{name}"));
    assert!(cgroup.join("payload").is_dir());
    let stopping = Instant::now();
    drop(machine);
    eprintln!("powered off and cleaned up in {:?}", stopping.elapsed());
    assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    assert!(
        !root.parent().unwrap().exists(),
        "{} left behind",
        root.display()
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&name), "mounts left behind: {mounts}");
}

#[test]
fn machines_boot_side_by_side() {
    if !privileged_or_skip("machines_boot_side_by_side") {
        return;
    }
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Machine::boot("side-a"));
        let b = s.spawn(|| Machine::boot("side-b"));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert_ne!(a.name(), b.name());
    a.write("/root/which", "a", 0o600).unwrap();
    assert_eq!(a.sh_ok("cat /root/which").unwrap(), "a");
    assert!(!b.sh("cat /root/which").status.success());
    assert_eq!(b.sh_ok("hostname").unwrap().trim(), b.name());
}
