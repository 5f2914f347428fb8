//! A real systemd to test the unit under: a container booted by
//! `systemd-nspawn` from an overlay of this machine's own root.
//!
//! PID 1 of these machines is not systemd, so `systemctl start residency`
//! cannot be tried on the host. A [`Machine`] boots the host's own systemd
//! (the `systemd` package is installed, only not running) in a container:
//!
//! - its root is an overlay whose lower layer is a (non-recursive) bind of
//!   `/` and whose upper layer is a tmpfs, so the machine sees the host's
//!   files, including the freshly built binaries under the workspace, and
//!   everything it writes goes to memory and disappears with it;
//! - it has its own network namespace with only a loopback
//!   (`--private-network`): test traffic inside it stays inside it;
//! - it has a pure cgroup2 hierarchy of its own, a child of a cgroup made for
//!   it on the host (`<cgroup2>/residency-machine-<name>`), so programs the
//!   daemon attaches inside never reach the host's cgroup2 root, and several
//!   machines can run at once;
//! - it gets every capability and the `bpf` and `perf_event_open` system
//!   calls, which nspawn's defaults withhold, so the daemon can load and
//!   attach its programs as on a host.
//!
//! Dropping the machine powers it off, kills the nspawn process it started
//! (by pid) if it does not exit, unmounts the overlay, and removes the
//! cgroups nspawn made for it. Pins in the machine's own bpffs go with its
//! mount namespace.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    fs,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    unistd::Pid,
};

/// How long a boot may take before it counts as failed (it takes about
/// 0.5 s on an idle machine; builds running beside it slow it down).
const BOOT_TIMEOUT: Duration = Duration::from_mins(1);
/// How long a clean power-off may take before the nspawn process is killed.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(15);

/// Units enabled on the host that must not start in the copy: the host's
/// own services (a second containerd, postgresql or rsyslog on the host's
/// files) and timers. Those listed in the host's `.wants` directories are
/// masked as well (see [`host_enabled_units`]).
const MASKED: &[&str] = &[
    "containerd.service",
    "postgresql.service",
    "rsyslog.service",
    "e2scrub_reap.service",
    "systemd-timesyncd.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "man-db.timer",
];

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A booted systemd container. See the module documentation.
pub struct Machine {
    name: String,
    dir: PathBuf,
    merged: PathBuf,
    /// Mount points made on the host, in mounting order.
    mounts: Vec<PathBuf>,
    /// Cgroups made on the host for the nspawn process (and so for the
    /// `payload` and `supervisor` cgroups nspawn makes under them).
    cgroups: Vec<PathBuf>,
    nspawn: Option<Child>,
    leader: Option<Pid>,
    log: PathBuf,
    /// nspawn's lock on the image (`/run/systemd/nspawn/locks/inode-DEV:INO`),
    /// left behind when nspawn is killed.
    image_lock: Option<PathBuf>,
}

impl Machine {
    /// Boots a machine and waits until `systemctl is-system-running` says
    /// `running` (or `degraded`: then the failed units are printed).
    ///
    /// `label` names it (`res-<label>-<pid>-<n>`); machines of one test
    /// process never share a name, a directory or a cgroup.
    ///
    /// # Errors
    /// If the overlay cannot be mounted, nspawn exits, or the boot does not
    /// finish within a minute; the error carries the end of the console log.
    pub fn boot(label: &str) -> anyhow::Result<Machine> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let label: String = label
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(30)
            .collect();
        let name = format!("res-{label}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("residency-machine-{name}"));
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut machine = Machine {
            merged: dir.join("merged"),
            log: dir.join("console.log"),
            name,
            dir,
            mounts: Vec::new(),
            cgroups: Vec::new(),
            nspawn: None,
            leader: None,
            image_lock: None,
        };
        // On failure, dropping `machine` undoes whatever was done so far.
        machine.mount_overlay()?;
        machine.prepare_root()?;
        machine.start_nspawn()?;
        machine.wait_running()?;
        machine.make_bpffs_mountpoint()?;
        Ok(machine)
    }

    fn mount_overlay(&mut self) -> anyhow::Result<()> {
        let lower = self.dir.join("lower");
        let ovl = self.dir.join("ovl");
        for d in [&lower, &ovl, &self.merged] {
            fs::create_dir(d)?;
        }
        // Non-recursive: the root file system only, not /proc, /sys or
        // other machines' overlays under it.
        mount(
            Some("/"),
            &lower,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .context("bind-mounting / as the overlay's lower layer")?;
        self.mounts.push(lower.clone());
        // The upper layer must be on another file system than the lower.
        mount(
            Some("tmpfs"),
            &ovl,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("size=2g,mode=0755"),
        )
        .context("mounting the overlay's tmpfs")?;
        self.mounts.push(ovl.clone());
        let (upper, work) = (ovl.join("upper"), ovl.join("work"));
        fs::create_dir(&upper)?;
        fs::create_dir(&work)?;
        fs::set_permissions(&upper, fs::Permissions::from_mode(0o755))?;
        mount(
            Some("overlay"),
            &self.merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(
                format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.display(),
                    upper.display(),
                    work.display()
                )
                .as_str(),
            ),
        )
        .context("mounting the overlay")?;
        self.mounts.push(self.merged.clone());
        let meta = fs::metadata(&self.merged)?;
        {
            use std::os::unix::fs::MetadataExt as _;
            self.image_lock = Some(PathBuf::from(format!(
                "/run/systemd/nspawn/locks/inode-{}:{}",
                meta.dev(),
                meta.ino()
            )));
        }
        Ok(())
    }

    fn prepare_root(&self) -> anyhow::Result<()> {
        let units = self.merged.join("etc/systemd/system");
        let mut masked: Vec<String> = MASKED.iter().map(|s| (*s).to_owned()).collect();
        masked.extend(host_enabled_units());
        for unit in masked {
            let path = units.join(&unit);
            let _ = fs::remove_file(&path);
            symlink("/dev/null", &path).with_context(|| format!("masking {unit}"))?;
        }
        // Its own machine id: with the host's, journald refuses to start
        // ("Host and machine ids are equal").
        let mut id = [0u8; 16];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id))
            .context("reading /dev/urandom")?;
        let id = id.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        fs::write(self.merged.join("etc/machine-id"), format!("{id}\n"))?;
        // Its name as hostname (systemd takes /etc/hostname over nspawn's).
        fs::write(self.merged.join("etc/hostname"), format!("{}\n", self.name))?;
        Ok(())
    }

    fn start_nspawn(&mut self) -> anyhow::Result<()> {
        // nspawn (with --keep-unit, under a PID 1 that is not systemd) puts
        // the container in `payload` and itself in `supervisor` under its
        // own cgroup: give it one per machine, in cgroup2 and in the
        // name=systemd hierarchy of a hybrid host.
        for mount in [Some(crate::cgroup2_mount()?), named_v1_hierarchy("systemd")]
            .into_iter()
            .flatten()
        {
            let cg = mount.join(format!("residency-machine-{}", self.name));
            fs::create_dir(&cg).with_context(|| format!("creating {}", cg.display()))?;
            self.cgroups.push(cg);
        }
        let log = fs::File::create(&self.log)?;
        let mut cmd = Command::new("sh");
        // Join the cgroups, then become nspawn (the pid stays ours to kill).
        cmd.arg("-c")
            .arg(
                r#"n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs" || exit 1; shift; n=$((n - 1)); done; exec "$@""#,
            )
            .arg("sh")
            .arg(self.cgroups.len().to_string())
            .args(&self.cgroups)
            .arg("systemd-nspawn")
            .arg("--boot")
            .arg("--directory")
            .arg(&self.merged)
            .arg("--machine")
            .arg(&self.name)
            // No machined or D-Bus on the host to register with.
            .args(["--register=no", "--keep-unit"])
            // CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN are not in nspawn's
            // default set, and its seccomp filter blocks bpf().
            .args(["--capability=all", "--system-call-filter=bpf perf_event_open"])
            .args(["--private-network", "--console=read-only"])
            // A pure cgroup2 hierarchy inside, as on a current host (the
            // host's own is hybrid).
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.nspawn = Some(cmd.spawn().context("starting systemd-nspawn")?);
        Ok(())
    }

    fn wait_running(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        let deadline = start + BOOT_TIMEOUT;
        loop {
            let child = self.nspawn.as_mut().context("nspawn not started")?;
            if let Some(status) = child.try_wait()? {
                self.nspawn = None;
                bail!(
                    "systemd-nspawn exited with {status}: {}",
                    self.console_tail()
                );
            }
            if self.leader.is_none() {
                self.leader = container_leader(Pid::from_raw(i32::try_from(child.id())?));
            }
            if self.leader.is_some() {
                let out = self.run(&["systemctl", "is-system-running"]);
                let state = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                match state.as_str() {
                    "running" => return Ok(()),
                    "degraded" => {
                        let failed = self.run(&["systemctl", "--failed", "--no-legend"]);
                        eprintln!(
                            "machine {} booted degraded: {}",
                            self.name,
                            String::from_utf8_lossy(&failed.stdout)
                        );
                        return Ok(());
                    }
                    _ => {}
                }
            }
            ensure!(
                Instant::now() < deadline,
                "machine {} did not boot within {BOOT_TIMEOUT:?}: {}",
                self.name,
                self.console_tail()
            );
            thread::sleep(Duration::from_millis(25));
        }
    }

    /// nspawn mounts a read-only tmpfs on the container's /sys with only
    /// the sysfs subtrees it passes through, so /sys/fs/bpf does not exist
    /// in the container. A host always has it (an empty sysfs directory
    /// until bpffs is mounted on it): make the directory, so that the
    /// machine looks like a host whose bpffs is not mounted.
    fn make_bpffs_mountpoint(&self) -> anyhow::Result<()> {
        self.sh_ok(
            "test -d /sys/fs/bpf && exit 0; \
             mount -o remount,rw /sys && mkdir /sys/fs/bpf; rc=$?; \
             mount -o remount,ro /sys; exit $rc",
        )
        .context("making /sys/fs/bpf in the machine")?;
        Ok(())
    }

    /// The machine's name (its hostname too).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The machine's root as the host sees it: files written under it
    /// appear in the machine (they go to the overlay's tmpfs).
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.merged
    }

    /// The pid (on the host) of the machine's systemd.
    ///
    /// # Panics
    /// Never: a booted machine has one.
    #[must_use]
    pub fn leader(&self) -> Pid {
        self.leader.expect("a booted machine has a leader")
    }

    /// The host path of a path inside the machine.
    #[must_use]
    pub fn path(&self, inside: &str) -> PathBuf {
        self.merged.join(inside.trim_start_matches('/'))
    }

    /// Copies a host file into the machine at `inside` with `mode`, making
    /// the directories above it.
    ///
    /// # Errors
    /// If it cannot be copied.
    pub fn copy_in(&self, from: &Path, inside: &str, mode: u32) -> anyhow::Result<()> {
        let to = self.path(inside);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(from, &to)
            .with_context(|| format!("copying {} into the machine", from.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Writes a file in the machine at `inside` with `mode`.
    ///
    /// # Errors
    /// If it cannot be written.
    pub fn write(&self, inside: &str, contents: &str, mode: u32) -> anyhow::Result<()> {
        let to = self.path(inside);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&to, contents)?;
        fs::set_permissions(&to, fs::Permissions::from_mode(mode))?;
        Ok(())
    }

    /// Runs a command inside the machine (all its namespaces, with the
    /// host's root privileges and no seccomp filter) and returns its output.
    ///
    /// The process stays in the test's own cgroup, which lies outside the
    /// machine's cgroup namespace: to run something in one of the
    /// machine's cgroups, have it write its pid to that cgroup's
    /// `cgroup.procs` first (see [`Machine::sh`]).
    #[must_use]
    pub fn run<S: AsRef<OsStr>>(&self, argv: &[S]) -> Output {
        let mut cmd = self.command(argv);
        cmd.stdin(Stdio::null());
        match cmd.output() {
            Ok(out) => out,
            Err(e) => Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: format!("cannot run nsenter: {e}").into_bytes(),
            },
        }
    }

    /// A [`Command`] that runs `argv` inside the machine, to spawn and
    /// collect later (a client running while the test does something else).
    #[must_use]
    pub fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        let mut cmd = Command::new("nsenter");
        // Not the cgroup namespace: a process that entered it while its
        // cgroup lies outside could not move itself into one of the
        // machine's cgroups (the kernel requires both ends to be visible
        // from the writer's namespace).
        cmd.arg("--target")
            .arg(self.leader().to_string())
            .args([
                "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd",
            ])
            .arg("--")
            .args(argv)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_PAGER", "")
            .env("SYSTEMD_COLORS", "0");
        cmd
    }

    /// Runs `sh -c script` inside the machine.
    #[must_use]
    pub fn sh(&self, script: &str) -> Output {
        self.run(&["sh", "-c", script])
    }

    /// Runs `sh -c script` inside the machine and returns its standard
    /// output.
    ///
    /// # Errors
    /// If it exits non-zero; the error carries its output.
    pub fn sh_ok(&self, script: &str) -> anyhow::Result<String> {
        ok(&self.sh(script), script)
    }

    /// Runs `systemctl ARGS` inside the machine and returns its standard
    /// output.
    ///
    /// # Errors
    /// If it exits non-zero; the error carries its output.
    pub fn systemctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = vec!["systemctl", "--no-pager"];
        command.extend_from_slice(args);
        ok(&self.run(&command), &command.join(" "))
    }

    /// A property of a unit (`systemctl show -P`).
    ///
    /// # Errors
    /// If systemctl fails.
    pub fn unit_property(&self, unit: &str, property: &str) -> anyhow::Result<String> {
        Ok(self
            .systemctl(&["show", "-P", property, unit])?
            .trim()
            .to_owned())
    }

    /// The unit's journal (for error messages).
    #[must_use]
    pub fn journal(&self, unit: &str) -> String {
        let out = self.run(&[
            "journalctl",
            "--no-pager",
            "-o",
            "short-monotonic",
            "-u",
            unit,
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The end of the console log (boot messages).
    #[must_use]
    pub fn console_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

fn ok(out: &Output, what: &str) -> anyhow::Result<String> {
    ensure!(
        out.status.success(),
        "`{what}` in the machine failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Units enabled on the host (its `.wants` directories under
/// /etc/systemd/system), except targets: whatever the host's
/// administrator enabled is not for the copy.
fn host_enabled_units() -> Vec<String> {
    let mut units = Vec::new();
    let Ok(dirs) = fs::read_dir("/etc/systemd/system") else {
        return units;
    };
    for dir in dirs.flatten() {
        if !dir.file_name().to_string_lossy().ends_with(".wants") {
            continue;
        }
        for unit in fs::read_dir(dir.path()).into_iter().flatten().flatten() {
            let name = unit.file_name().to_string_lossy().into_owned();
            let kind = Path::new(&name).extension().and_then(OsStr::to_str);
            if matches!(kind, Some("service" | "timer"))
                && !name.contains('@')
                && !units.contains(&name)
            {
                units.push(name);
            }
        }
    }
    units
}

/// The mount point of a named cgroup v1 hierarchy (`name=systemd` on a
/// hybrid host), if there is one.
fn named_v1_hierarchy(name: &str) -> Option<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = format!("name={name}");
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split_whitespace();
        let point = left.split_whitespace().nth(4)?;
        (right.next() == Some("cgroup") && right.nth(1)?.split(',').any(|o| o == want))
            .then(|| PathBuf::from(point))
    })
}

/// The container's PID 1: a child of nspawn (which is its subreaper) in
/// another pid namespace. nspawn's other children (the short-lived outer
/// child that clones it, helpers) share the host's pid namespace.
fn container_leader(nspawn: Pid) -> Option<Pid> {
    let own_ns = fs::read_link("/proc/self/ns/pid").ok()?;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) != Some(nspawn.as_raw()) {
            continue;
        }
        if fs::read_link(entry.path().join("ns/pid")).is_ok_and(|ns| ns != own_ns) {
            return Some(Pid::from_raw(pid));
        }
    }
    None
}

impl Drop for Machine {
    fn drop(&mut self) {
        if let Some(mut child) = self.nspawn.take() {
            if self.leader.is_some() {
                // Bounded: a hung systemd would hold systemctl for 25 s.
                let _ = self.run(&["timeout", "5", "systemctl", "poweroff", "--no-block"]);
            }
            let deadline = Instant::now() + POWEROFF_TIMEOUT;
            let mut exited = false;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    exited = true;
                    break;
                }
                thread::sleep(Duration::from_millis(25));
            }
            if !exited {
                eprintln!(
                    "machine {} did not power off within {POWEROFF_TIMEOUT:?}: killing it",
                    self.name
                );
                // Only what this machine started: the nspawn process, and
                // every process in the cgroup made for it (the container).
                let _ = child.kill();
                if let Some(cg) = self.cgroups.first() {
                    let _ = fs::write(cg.join("cgroup.kill"), "1");
                }
                let _ = child.wait();
                // What nspawn removes when it exits cleanly.
                let _ = fs::remove_dir(Path::new("/run/systemd/nspawn/propagate").join(&self.name));
                if let Some(lock) = &self.image_lock {
                    let _ = fs::remove_file(lock);
                }
                let _ = fs::remove_file(self.dir.join(".#merged.lck"));
            }
        }
        // Overlay, then its tmpfs, then the bind of /.
        for point in self.mounts.drain(..).rev() {
            if umount2(&point, MntFlags::empty()).is_err() {
                // Busy (a process still inside): detach it now; the kernel
                // frees it when the last user goes.
                if let Err(e) = umount2(&point, MntFlags::MNT_DETACH) {
                    eprintln!("warning: cannot unmount {}: {e}", point.display());
                }
            }
        }
        // The cgroups nspawn made (payload/..., supervisor), deepest first.
        for cg in self.cgroups.drain(..) {
            let mut removed = false;
            for _ in 0..100 {
                for dir in crate::dirs_bottom_up(&cg) {
                    let _ = fs::remove_dir(&dir);
                }
                if !cg.exists() {
                    removed = true;
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
            if !removed {
                eprintln!("warning: could not remove cgroup {}", cg.display());
            }
        }
        // Never remove_dir_all here: were an unmount to have failed, it
        // would walk into the bind of the host's root. Only empty
        // directories, one at a time.
        let _ = fs::remove_file(&self.log);
        for d in ["merged", "ovl", "lower"] {
            let _ = fs::remove_dir(self.dir.join(d));
        }
        if let Err(e) = fs::remove_dir(&self.dir) {
            eprintln!("warning: cannot remove {}: {e}", self.dir.display());
        }
    }
}
