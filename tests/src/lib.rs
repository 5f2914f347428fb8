//! Test support for residency's privileged end-to-end tests and benchmarks.
//!
//! Everything here works on real things: a child cgroup made for the test,
//! the real `residency` binary attached to it, and client processes that move
//! themselves into it and open real sockets to loopback. Each resource is an
//! RAII guard that cleans up after itself, also when a test fails:
//! [`TestCgroup`] removes its directory, [`Daemon`] stops the daemon it
//! started (by pid), [`Listener`] closes its sockets.
//!
//! Safety rules of these machines, enforced here: programs that can deny are
//! only ever attached to a [`TestCgroup`], never to the cgroup2 root, and
//! clients only talk to loopback addresses.

pub mod machine;
pub mod receivers;
pub mod runtime;

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{IpAddr, SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

/// Whether privileged tests can run. Without root they skip with a message,
/// except in CI (`CI=true`), where skipping would hide a failure, so they
/// fail instead.
///
/// # Panics
/// Under `CI=true` without root.
#[must_use]
pub fn privileged_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: CI=true but not running as root: privileged tests must run in CI"
    );
    eprintln!(
        "SKIPPED {test}: needs root (loads BPF programs and creates cgroups); run `cargo xtask test` as root"
    );
    false
}

/// The cgroup2 mount point, from /proc/self/mountinfo (never assumed).
///
/// # Errors
/// If no cgroup2 hierarchy is mounted.
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    for line in info.lines() {
        // ... mount_point ... - fstype source options
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(point) = left.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(point.replace("\\040", " ")));
        }
    }
    bail!("no cgroup2 mount in /proc/self/mountinfo")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A child cgroup of the cgroup2 root, made for one test and removed when
/// dropped.
#[derive(Debug)]
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    /// Creates `<mount>/residency-test-<pid>-<n>-<label>`.
    ///
    /// # Errors
    /// If the directory cannot be made.
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let mount = cgroup2_mount()?;
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = mount.join(format!("residency-test-{}-{n}-{label}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TestCgroup { path })
    }

    /// The cgroup id: the directory's inode number.
    ///
    /// # Errors
    /// If the directory is gone.
    pub fn id(&self) -> anyhow::Result<u64> {
        use std::os::unix::fs::MetadataExt as _;
        Ok(fs::metadata(&self.path)?.ino())
    }
}

impl TestCgroup {
    /// Makes a child cgroup (and its parents) under this one: a workload's
    /// cgroup in a test. Removed with this one.
    ///
    /// # Errors
    /// If the directory cannot be made.
    pub fn child(&self, rel: &str) -> anyhow::Result<PathBuf> {
        let path = self.path.join(rel);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(path)
    }

    /// The path relative to the cgroup2 mount, as selectors name it.
    ///
    /// # Errors
    /// If the mount cannot be found.
    pub fn relative(&self) -> anyhow::Result<String> {
        let mount = cgroup2_mount()?;
        Ok(format!(
            "/{}",
            self.path
                .strip_prefix(&mount)
                .unwrap_or(&self.path)
                .display()
        ))
    }
}

/// Every directory under `root` (itself included), deepest first.
fn dirs_bottom_up(root: &Path) -> Vec<PathBuf> {
    let mut all = vec![root.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        if let Ok(entries) = fs::read_dir(&all[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    all.push(e.path());
                }
            }
        }
        i += 1;
    }
    all.reverse();
    all
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Clients exit on their own; give stragglers a moment, then remove
        // every child cgroup, deepest first, and this one.
        for _ in 0..50 {
            for dir in dirs_bottom_up(&self.path) {
                let _ = fs::remove_dir(&dir);
            }
            if !self.path.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "warning: could not remove test cgroup {}",
            self.path.display()
        );
    }
}

/// A pin instance of a test's own (`/sys/fs/bpf/residency/<name>`): the
/// programs a test attaches are pinned there, and removing the pins on drop
/// detaches whatever is left, even when the test fails.
#[derive(Debug)]
pub struct TestPins {
    pub instance: String,
}

impl TestPins {
    /// A unique instance name for `label`.
    #[must_use]
    pub fn new(label: &str) -> Self {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        TestPins {
            instance: format!("test-{}-{n}-{label}", std::process::id()),
        }
    }

    /// Opens the instance (mounting bpffs if needed), for `kernel::start`.
    ///
    /// # Errors
    /// As `Pins::open`.
    pub fn open(&self) -> anyhow::Result<residency_daemon::kernel::Pins> {
        Ok(residency_daemon::kernel::Pins::open(&self.instance)?)
    }

    /// Whether the instance has pins now.
    #[must_use]
    pub fn exists(&self) -> bool {
        Path::new(residency_daemon::kernel::pins::ROOT)
            .join(&self.instance)
            .exists()
    }
}

impl Drop for TestPins {
    fn drop(&mut self) {
        if self.exists()
            && let Err(e) = residency_daemon::kernel::pins::detach(&self.instance, true)
        {
            eprintln!("warning: could not remove test pins {}: {e}", self.instance);
        }
    }
}

/// Path of a binary of this workspace, next to the running executable
/// (`target/<profile>/` for tests in `deps/` and for binaries alike).
/// `RESIDENCY_BIN_DIR` overrides the directory.
///
/// # Errors
/// If the binary has not been built.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let dir = if let Some(d) = std::env::var_os("RESIDENCY_BIN_DIR") {
        PathBuf::from(d)
    } else {
        let exe = std::env::current_exe()?;
        let mut dir = exe
            .parent()
            .context("executable has no directory")?
            .to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        dir
    };
    let path = dir.join(name);
    ensure!(
        path.is_file(),
        "{} is not built; `cargo xtask test` builds it (or `cargo build -p residency-daemon -p residency-tests`)",
        path.display()
    );
    Ok(path)
}

/// A `residency run` process attached to a test cgroup, writing records to a
/// file that the test reads.
pub struct Daemon {
    child: Option<Child>,
    pub output: PathBuf,
    pub stderr: PathBuf,
    /// The evidence directory (store, key, API token, `api.addr`).
    pub state: PathBuf,
    /// The API's unix socket.
    pub socket: PathBuf,
    /// The pin instance, when the harness chose it (removed on drop, which
    /// detaches what the daemon left attached). A test that passes
    /// `--instance` owns its pins.
    pub pins: Option<TestPins>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Writes `config` to a file, starts the daemon on `cgroup`, and waits
    /// until its `started` record appears (the programs are attached then).
    ///
    /// # Errors
    /// If the daemon exits or does not start within 20 s; the error carries
    /// its standard error.
    pub fn start(config: &str, cgroup: &TestCgroup) -> anyhow::Result<Self> {
        Self::start_with(config, cgroup, &[])
    }

    /// Like [`Daemon::start`], with extra arguments for `residency run`.
    ///
    /// # Errors
    /// As [`Daemon::start`].
    pub fn start_with(
        config: &str,
        cgroup: &TestCgroup,
        extra: &[&std::ffi::OsStr],
    ) -> anyhow::Result<Self> {
        Self::start_exe(&workspace_bin("residency")?, config, cgroup, extra)
    }

    /// Like [`Daemon::start_with`], running the daemon binary at `exe` (a
    /// copy elsewhere, as an upgrade installs one).
    ///
    /// # Errors
    /// As [`Daemon::start`].
    pub fn start_exe(
        exe: &Path,
        config: &str,
        cgroup: &TestCgroup,
        extra: &[&std::ffi::OsStr],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        // An explicit --config among the extra arguments names the file
        // (one a test rewrites to reload); otherwise `config` is written.
        let own_config = !extra.iter().any(|a| *a == "--config");
        let config_path = dir.path().join("residency.toml");
        if own_config {
            fs::write(&config_path, config)?;
        }
        let output = dir.path().join("events.jsonl");
        let stderr = dir.path().join("stderr.log");
        let state = dir.path().join("state");
        let socket = dir.path().join("api.sock");
        let mut cmd = Command::new(exe);
        cmd.arg("run");
        // Each daemon has its own store and an API on a free port, so that
        // tests can run side by side.
        if !extra.iter().any(|a| *a == "--state-dir") {
            cmd.arg("--state-dir").arg(&state);
        }
        cmd.arg("--api-listen")
            .arg("127.0.0.1:0")
            .arg("--api-socket")
            .arg(&socket);
        // Each daemon pins its programs in an instance of its own.
        let pins = if extra.iter().any(|a| *a == "--instance") {
            None
        } else {
            let pins = TestPins::new("daemon");
            cmd.arg("--instance").arg(&pins.instance);
            Some(pins)
        };
        if own_config {
            cmd.arg("--config").arg(&config_path);
        }
        let child = cmd
            .arg("--cgroup")
            .arg(&cgroup.path)
            .arg("--output")
            .arg(&output)
            .args(extra)
            .env("RESIDENCY_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr)?)
            .spawn()?;
        let mut daemon = Daemon {
            child: Some(child),
            output,
            stderr,
            state,
            socket,
            pins,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if daemon.records()?.iter().any(|r| action(r) == "started") {
                return Ok(daemon);
            }
            if let Some(child) = daemon.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "daemon exited with {status} before starting: {}",
                    daemon.stderr_text()
                );
            }
            if Instant::now() > deadline {
                bail!("daemon did not start within 20 s: {}", daemon.stderr_text());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET `path` from the daemon's API over its root-only socket:
    /// (status, body).
    ///
    /// # Errors
    /// If the request cannot be made.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        use residency_api::client::{Client, Target};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = Client::new(Target::Socket(self.socket.clone()), None);
        let reply = rt.block_on(client.request(hyper::Method::GET, path, None))?;
        Ok((
            reply.status,
            String::from_utf8_lossy(&reply.body).into_owned(),
        ))
    }

    /// GET `path` as JSON, which must answer 200.
    ///
    /// # Errors
    /// If the request fails, answers otherwise, or is not JSON.
    pub fn get_json(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.get(path)?;
        ensure!(status == 200, "GET {path}: {status} {body}");
        serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
    }

    /// The daemon's process id (to signal it).
    #[must_use]
    pub fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
            .map(Pid::from_raw)
    }

    /// Waits until a record matching `pred` has been written.
    ///
    /// # Errors
    /// If none appears within `timeout`.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.records()?.into_iter().find(|r| pred(r)) {
                return Ok(r);
            }
            ensure!(
                Instant::now() < deadline,
                "no such record within {timeout:?}: {}",
                self.stderr_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's standard error so far.
    #[must_use]
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Every complete record written so far.
    ///
    /// # Errors
    /// If a complete line is not JSON.
    pub fn records(&self) -> anyhow::Result<Vec<Value>> {
        read_records(&self.output)
    }

    /// Sends SIGTERM, waits for a clean exit, and returns every record.
    ///
    /// # Errors
    /// If the daemon does not exit cleanly within 20 s.
    pub fn stop(self) -> anyhow::Result<Vec<Value>> {
        self.stop_with(Signal::SIGTERM)
    }

    /// Like [`Daemon::stop`], with another signal (SIGINT is Ctrl-C).
    ///
    /// # Errors
    /// If the daemon does not exit cleanly within 20 s.
    pub fn stop_with(mut self, signal: Signal) -> anyhow::Result<Vec<Value>> {
        self.terminate(signal)?;
        self.records()
    }

    /// Sends SIGTERM, waits for a clean exit, and returns the first record
    /// `pick` chooses, reading the output a line at a time: for runs whose
    /// records would not fit in memory as JSON values.
    ///
    /// # Errors
    /// If the daemon does not exit cleanly within 20 s, or the output
    /// cannot be read.
    pub fn stop_finding(mut self, pick: impl Fn(&Value) -> bool) -> anyhow::Result<Option<Value>> {
        use std::io::BufRead as _;
        self.terminate(Signal::SIGTERM)?;
        let file = std::io::BufReader::new(std::fs::File::open(&self.output)?);
        for line in file.lines() {
            let v: Value = serde_json::from_str(&line?)?;
            if pick(&v) {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// Sends SIGTERM, waits for a clean exit, and returns the output file
    /// as written: to compare with the evidence store byte for byte.
    ///
    /// # Errors
    /// If the daemon does not exit cleanly within 20 s, or the output
    /// cannot be read.
    pub fn stop_raw(mut self) -> anyhow::Result<Vec<u8>> {
        self.terminate(Signal::SIGTERM)?;
        Ok(fs::read(&self.output)?)
    }

    fn terminate(&mut self, signal: Signal) -> anyhow::Result<()> {
        let mut child = self.child.take().context("already stopped")?;
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        kill(pid, signal)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "daemon did not stop within 20 s of SIGTERM: {}",
                    self.stderr_text()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        ensure!(
            status.success(),
            "daemon exited with {status}: {}",
            self.stderr_text()
        );
        Ok(())
    }
}

impl Daemon {
    /// Kills the daemon with SIGKILL, as a crash or the OOM killer would,
    /// and returns the records it had written.
    ///
    /// # Errors
    /// If it was already stopped, or the output cannot be read.
    pub fn kill_hard(mut self) -> anyhow::Result<Vec<Value>> {
        let mut child = self.child.take().context("already stopped")?;
        kill(Pid::from_raw(i32::try_from(child.id())?), Signal::SIGKILL)?;
        child.wait()?;
        self.records()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Only the process this guard started, by its pid.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A GeoIP test database, `c.mmdb` in `dir`, that places 127.0.0.16/28 in
/// Germany and 127.0.0.32/28 in the US (loopback stands in for the world).
#[must_use]
pub fn de_us_db(dir: &Path) -> PathBuf {
    use geoip::testdb::{Entry, Layout, write};
    let db = dir.join("c.mmdb");
    write(
        &db,
        Layout::IpLocationDb,
        "t",
        1,
        &[
            Entry::country("127.0.0.16/28", "DE"),
            Entry::country("127.0.0.32/28", "US"),
        ],
    );
    db
}

/// Reads JSON-lines records, ignoring a trailing partial line.
///
/// # Errors
/// If the file cannot be read or a complete line is not JSON.
pub fn read_records(path: &Path) -> anyhow::Result<Vec<Value>> {
    let Ok(file) = fs::File::open(path) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut reader = BufReader::new(file);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || !line.ends_with('\n') {
            return Ok(out);
        }
        out.push(serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?);
    }
}

/// `event.action` of a record.
#[must_use]
pub fn action(record: &Value) -> &str {
    record["event"]["action"].as_str().unwrap_or("")
}

/// Flow records (connect/sendmsg decisions), without the flows' totals
/// records.
#[must_use]
pub fn flows(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["event"]["dataset"] == "residency.flow" && !is_totals(r))
        .collect()
}

/// Whether a record is a flow's totals (`flow-update`, `flow-end`).
#[must_use]
pub fn is_totals(record: &Value) -> bool {
    matches!(action(record), "flow-update" | "flow-end")
}

/// The totals records of the flow `id` (`residency.flow.id`), in order.
#[must_use]
pub fn totals_of<'a>(records: &'a [Value], id: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| is_totals(r) && r["residency"]["flow"]["id"] == id)
        .collect()
}

/// One operation of the test client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    /// A DNS query for `name` (`{i}`: the pass number) to `server`:53 and
    /// its answer, timed.
    Dns {
        name: String,
        server: IpAddr,
    },
    /// A DNS query, then a timed TCP connect to the answer's address on
    /// `port`.
    DnsTcp {
        name: String,
        server: IpAddr,
        port: u16,
    },
    /// Connect, send `bytes`, close the sending side, read until the
    /// server closes.
    Bulk {
        addr: SocketAddr,
        bytes: u64,
    },
    /// Connect, send `bytes`, close at once (what is still queued goes out
    /// after `close()`).
    Send {
        addr: SocketAddr,
        bytes: u64,
    },
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Tcp(a) => write!(f, "tcp:{a}"),
            Op::Udp(a) => write!(f, "udp:{a}"),
            Op::Dns { name, server } => write!(f, "dns:{name}@{server}"),
            Op::DnsTcp { name, server, port } => write!(f, "dnstcp:{name}@{server}:{port}"),
            Op::Bulk { addr, bytes } => write!(f, "bulk:{bytes}@{addr}"),
            Op::Send { addr, bytes } => write!(f, "send:{bytes}@{addr}"),
        }
    }
}

/// How the test client should run.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions<'a> {
    /// Join this cgroup before doing anything.
    pub cgroup: Option<&'a TestCgroup>,
    /// Join this cgroup directory instead (a child of a test cgroup).
    pub cgroup_dir: Option<&'a Path>,
    /// Drop to this uid and gid after joining.
    pub uid: Option<u32>,
    /// Repeat the operation list this many times (default 1).
    pub repeat: Option<u64>,
    /// Report per-call latency statistics.
    pub timing: bool,
    /// Repeat for this long instead of `repeat` times.
    pub duration_ms: Option<u64>,
    /// Pause between passes over the operations.
    pub interval_us: Option<u64>,
    /// Run the client from this path (a link to it whose name becomes the
    /// process name) instead of the built binary.
    pub exe: Option<&'a Path>,
}

/// Runs `egress-client` and returns its JSON report: `pid`, and per
/// operation `ok`, `errors` (errno -> count), and with `timing` the latency
/// percentiles.
///
/// # Errors
/// If the client cannot run or fails outside its operations.
pub fn run_client(ops: &[Op], options: &ClientOptions<'_>) -> anyhow::Result<Value> {
    let child = spawn_client(ops, options)?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "egress-client failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("egress-client output is not JSON")
}

/// Starts `egress-client` without waiting for it (for storms that run
/// while the test does something else); collect it with
/// [`std::process::Child::wait_with_output`].
///
/// # Errors
/// If an address is neither loopback nor a test host, or it cannot start.
pub fn spawn_client(ops: &[Op], options: &ClientOptions<'_>) -> anyhow::Result<Child> {
    for op in ops {
        let a = match op {
            Op::Tcp(a) | Op::Udp(a) | Op::Bulk { addr: a, .. } | Op::Send { addr: a, .. } => a.ip(),
            Op::Dns { server, .. } | Op::DnsTcp { server, .. } => *server,
        };
        ensure!(
            is_loopback(a) || is_test_host(a),
            "test traffic must stay on loopback or the test hosts: {a}"
        );
    }
    let client = match options.exe {
        Some(p) => p.to_path_buf(),
        None => workspace_bin("egress-client")?,
    };
    let dir = options
        .cgroup_dir
        .map(Path::to_path_buf)
        .or_else(|| options.cgroup.map(|cg| cg.path.clone()));
    let mut cmd = if let Some(dir) = &dir {
        // As systemd and container runtimes do: the process enters its
        // cgroup first and then execs the program, so the program starts
        // (and is seen starting) inside the cgroup.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
            .arg("sh")
            .arg(dir)
            .arg(&client)
            .arg("--cgroup")
            .arg(dir);
        cmd
    } else {
        Command::new(&client)
    };
    if let Some(uid) = options.uid {
        cmd.arg("--uid").arg(uid.to_string());
    }
    if let Some(n) = options.repeat {
        cmd.arg("--repeat").arg(n.to_string());
    }
    if options.timing {
        cmd.arg("--timing");
    }
    if let Some(ms) = options.duration_ms {
        cmd.arg("--duration-ms").arg(ms.to_string());
    }
    if let Some(us) = options.interval_us {
        cmd.arg("--interval-us").arg(us.to_string());
    }
    cmd.args(ops.iter().map(ToString::to_string));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(child)
}

/// The ULA prefix used only for the test hosts this crate creates in its
/// own network namespaces.
pub const TEST_HOSTS: &str = "fd00:77::/32";

/// Whether `ip` is one of the test hosts' addresses.
#[must_use]
pub fn is_test_host(ip: IpAddr) -> bool {
    TEST_HOSTS
        .parse::<ipnet::IpNet>()
        .is_ok_and(|n| n.contains(&ip))
}

/// Loopback, including IPv4-mapped loopback.
#[must_use]
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Loopback listeners for TCP (accepting and closing in a thread) and UDP
/// (bound, never read), closed on drop.
pub struct Listener {
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
    _udp: UdpSocket,
}

impl Listener {
    /// Binds both on `ip` (a loopback address) with free ports.
    ///
    /// # Errors
    /// If binding fails.
    pub fn bind(ip: IpAddr) -> anyhow::Result<Self> {
        ensure!(is_loopback(ip), "listeners stay on loopback");
        let tcp = listen_tcp(SocketAddr::new(ip, 0))?;
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_addr = tcp.local_addr()?;
        let stop2 = stop.clone();
        // A blocking accept loop keeps the backlog empty during connect
        // storms; dropping the listener wakes it with one last connect.
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((s, _)) = tcp.accept() {
                    drop(s);
                }
            }
        });
        Ok(Listener {
            tcp: tcp_addr,
            udp: udp.local_addr()?,
            stop,
            thread: Some(thread),
            _udp: udp,
        })
    }
}

/// A loopback TCP server for bulk transfers: each connection is read to
/// its end, then answered with `reply` bytes in `chunks` pieces, `pause`
/// apart, and closed. What each connection sent is kept, in order.
pub struct BulkServer {
    pub addr: SocketAddr,
    /// Bytes received per connection, in the order they ended.
    pub received: Arc<std::sync::Mutex<Vec<u64>>>,
    _thread: thread::JoinHandle<()>,
}

impl BulkServer {
    /// Serves on `ip` (loopback) at a free port until the process ends.
    ///
    /// # Errors
    /// If binding fails.
    pub fn start(ip: IpAddr, reply: u64, chunks: u64, pause: Duration) -> anyhow::Result<Self> {
        Self::serve(ip, Duration::ZERO, reply, chunks, pause)
    }

    /// A server that begins reading each connection only `delay` after
    /// accepting it, and answers nothing: a client's data waits in the
    /// kernel's buffers meanwhile.
    ///
    /// # Errors
    /// If binding fails.
    pub fn late_reader(ip: IpAddr, delay: Duration) -> anyhow::Result<Self> {
        Self::serve(ip, delay, 0, 0, Duration::ZERO)
    }

    fn serve(
        ip: IpAddr,
        delay: Duration,
        reply: u64,
        chunks: u64,
        pause: Duration,
    ) -> anyhow::Result<Self> {
        use std::io::{Read as _, Write as _};
        ensure!(is_loopback(ip), "bulk servers stay on loopback");
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))?;
        let addr = listener.local_addr()?;
        let received = Arc::new(std::sync::Mutex::new(Vec::new()));
        let got = received.clone();
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut s) = conn else { continue };
                let got = got.clone();
                thread::spawn(move || {
                    thread::sleep(delay);
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut n = 0u64;
                    while let Ok(k) = s.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        n += k as u64;
                    }
                    let piece = vec![0xa5u8; usize::try_from(reply / chunks.max(1)).unwrap_or(0)];
                    for i in 0..chunks {
                        if i > 0 {
                            thread::sleep(pause);
                        }
                        if s.write_all(&piece).is_err() {
                            break;
                        }
                    }
                    drop(s);
                    if let Ok(mut g) = got.lock() {
                        g.push(n);
                    }
                });
            }
        });
        Ok(BulkServer {
            addr,
            received,
            _thread: thread,
        })
    }
}

/// A TCP listener with the system's maximum backlog. std's fixed backlog of
/// 128 overflows during connect storms when the accept thread is briefly
/// descheduled; the kernel then drops SYNs and the client waits a second to
/// retransmit, which would be charged to whatever is being measured.
///
/// # Errors
/// If the socket cannot be bound.
pub fn listen_tcp(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind, listen, socket,
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )?;
    listen(&fd, Backlog::MAXCONN)?;
    Ok(TcpListener::from(fd))
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::net::TcpStream::connect_timeout(&self.tcp, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether bpftool can run. Its checks are skipped without it, except under
/// CI=true, where `cargo xtask test` has installed it and a skip would hide
/// a missing check.
fn have_bpftool() -> anyhow::Result<bool> {
    let found = Command::new("bpftool")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but bpftool is missing: `cargo xtask test` installs it"
        );
        eprintln!("note: bpftool is not installed; its independent checks are skipped");
    }
    Ok(found)
}

/// What is still attached to `cgroup` after its links were closed,
/// waiting up to `within` for the list to empty: the kernel releases a
/// closed link's attachment soon after the close, not always before it
/// returns (seen here: one of four programs still listed right after the
/// drop). `None` without bpftool.
///
/// # Errors
/// If bpftool fails.
pub fn bpftool_attached_after_detach(
    cgroup: &TestCgroup,
    within: std::time::Duration,
) -> anyhow::Result<Option<Vec<String>>> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let progs = bpftool_attached(cgroup)?;
        if progs.as_ref().is_none_or(Vec::is_empty) || std::time::Instant::now() >= deadline {
            return Ok(progs);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Programs attached to a cgroup, as `bpftool` sees them (an independent
/// check of what the daemon says). `None` if bpftool is not installed.
///
/// # Errors
/// If bpftool runs but fails.
pub fn bpftool_attached(cgroup: &TestCgroup) -> anyhow::Result<Option<Vec<String>>> {
    if !have_bpftool()? {
        return Ok(None);
    }
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&cgroup.path)
        .arg("-j")
        .output()?;
    ensure!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Ok(Some(Vec::new()));
    }
    let v: Value = serde_json::from_str(&text)?;
    Ok(Some(
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        format!(
                            "{}:{}",
                            p["attach_type"].as_str().unwrap_or("?"),
                            p["name"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    ))
}

/// Size in bytes of each attached program's instructions after the
/// verifier (`bytes_xlated`), by attach type. `None` without bpftool.
///
/// # Errors
/// If bpftool runs but fails.
pub fn bpftool_xlated_bytes(cgroup: &TestCgroup) -> anyhow::Result<Option<Vec<(String, u64)>>> {
    if !have_bpftool()? {
        return Ok(None);
    }
    let out = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(&cgroup.path)
        .arg("-j")
        .output()?;
    ensure!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let attached: Value = serde_json::from_slice(&out.stdout)?;
    let mut sizes = Vec::new();
    for p in attached.as_array().into_iter().flatten() {
        let id = p["id"].as_u64().context("program id")?;
        let info = Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string(), "-j"])
            .output()?;
        let info: Value = serde_json::from_slice(&info.stdout)?;
        sizes.push((
            p["attach_type"].as_str().unwrap_or("?").to_owned(),
            info["bytes_xlated"].as_u64().context("bytes_xlated")?,
        ));
    }
    sizes.sort();
    Ok(Some(sizes))
}

/// A test host: a network namespace made for one test, joined to this one
/// by a veth pair, with addresses from [`TEST_HOSTS`]. Dropping it deletes
/// the namespace, which takes the veth pair with it.
pub struct NetNs {
    pub name: String,
    /// Addresses of the host inside the namespace.
    pub hosts: Vec<IpAddr>,
    server: Option<Child>,
}

static NETNS_SEQ: AtomicU32 = AtomicU32::new(0);

impl NetNs {
    /// Creates the namespace with one host address per `/48` given (e.g.
    /// `fd00:77:1::/48` gives the host `fd00:77:1::2`, and this side
    /// `fd00:77:1::1`).
    ///
    /// # Errors
    /// If `ip` fails (iproute2 missing, no privileges).
    pub fn new(subnets: &[&str]) -> anyhow::Result<Self> {
        let n = NETNS_SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("rzt{}n{n}", std::process::id());
        let outer = format!("rzo{}n{n}", std::process::id() % 100_000);
        let inner = format!("rzi{}n{n}", std::process::id() % 100_000);
        let ip = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .context("running ip (iproute2)")?;
            ensure!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        ip(&["netns", "add", &name])?;
        let mut ns = NetNs {
            name: name.clone(),
            hosts: Vec::new(),
            server: None,
        };
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ])?;
        ip(&["link", "set", &inner, "netns", &name])?;
        ip(&["link", "set", &outer, "up"])?;
        ip(&["-n", &name, "link", "set", &inner, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        for subnet in subnets {
            let net: ipnet::Ipv6Net = subnet.parse()?;
            ensure!(
                is_test_host(IpAddr::V6(net.network())),
                "{subnet} is not in {TEST_HOSTS}"
            );
            let base = u128::from(net.network());
            let this = std::net::Ipv6Addr::from(base | 1);
            let host = std::net::Ipv6Addr::from(base | 2);
            let p = net.prefix_len();
            ip(&[
                "addr",
                "add",
                &format!("{this}/{p}"),
                "dev",
                &outer,
                "nodad",
            ])?;
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{host}/{p}"),
                "dev",
                &inner,
                "nodad",
            ])?;
            ns.hosts.push(IpAddr::V6(host));
        }
        Ok(ns)
    }

    /// Starts `test-listener` in the namespace on every host address, and
    /// returns the TCP and UDP addresses it bound (same port for both).
    ///
    /// # Errors
    /// If the listener does not start.
    pub fn serve(&mut self) -> anyhow::Result<Vec<(SocketAddr, SocketAddr)>> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(workspace_bin("test-listener")?);
        for h in &self.hosts {
            cmd.arg(SocketAddr::new(*h, 0).to_string());
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("listener stdout")?;
        self.server = Some(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let bound: Value =
            serde_json::from_str(&line).context("listener did not report its sockets")?;
        bound
            .as_array()
            .context("listener output")?
            .iter()
            .map(|b| {
                Ok((
                    b["tcp"].as_str().context("tcp")?.parse()?,
                    b["udp"].as_str().context("udp")?.parse()?,
                ))
            })
            .collect()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            // The listener this guard started, by its pid.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A real DNS server for the name tests and benchmarks: dnsmasq from
/// Debian, in the foreground, on a loopback address of the test's choosing
/// (port 53), answering only from the records it is given. Stopped by its
/// pid on drop.
pub struct Dnsmasq {
    child: Child,
}

impl Dnsmasq {
    /// Starts dnsmasq on `listen`:53 with `hosts` (an /etc/hosts-style
    /// list) and `extra` configuration lines, and waits until it answers.
    /// `None` (with a message) when dnsmasq is not installed outside CI.
    ///
    /// # Errors
    /// In CI when dnsmasq is missing; when it exits or does not answer.
    pub fn start(
        dir: &Path,
        listen: &str,
        hosts: &str,
        extra: &str,
    ) -> anyhow::Result<Option<Self>> {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists());
        let Some(bin) = bin else {
            if std::env::var_os("CI").is_some() {
                bail!("dnsmasq is missing; `cargo xtask test` installs dnsmasq-base");
            }
            eprintln!("SKIPPED: dnsmasq is not installed (cargo xtask test installs it)");
            return Ok(None);
        };
        let hosts_file = dir.join("dnsmasq.hosts");
        fs::write(&hosts_file, hosts)?;
        let conf = format!(
            "no-resolv\nno-hosts\nno-poll\nbind-interfaces\nlisten-address={listen}\nport=53\n\
             local-ttl=300\naddn-hosts={hosts}\n{extra}",
            hosts = hosts_file.display()
        );
        let conf_file = dir.join("dnsmasq.conf");
        fs::write(&conf_file, conf)?;
        let child = Command::new(bin)
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", conf_file.display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .arg("--user=root")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting dnsmasq")?;
        let mut d = Dnsmasq { child };
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe = std::net::UdpSocket::bind("127.0.0.1:0")?;
        probe.set_read_timeout(Some(Duration::from_millis(200)))?;
        // Any answer will do: the server is up.
        let query = [
            0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, b'x', 0, 0, 1, 0, 1,
        ];
        loop {
            let _ = probe.send_to(&query, (listen, 53));
            let mut buf = [0u8; 512];
            if probe.recv(&mut buf).is_ok() {
                return Ok(Some(d));
            }
            if let Some(status) = d.child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = d.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                bail!("dnsmasq exited ({status}): {err}");
            }
            ensure!(Instant::now() < deadline, "dnsmasq did not answer in 20 s");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Dnsmasq {
    /// Its process id (to pin it to a CPU in benchmarks).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        // Only the process this guard started, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every stored record as (seq, kind column, canonical bytes), decoded
/// the way the daemon's readers do (read-only, beside a running daemon).
///
/// # Errors
/// If the store cannot be read or a record not decoded.
pub fn stored_records(state: &Path) -> anyhow::Result<Vec<(i64, String, Vec<u8>)>> {
    let c = rusqlite::Connection::open_with_flags(
        state.join("evidence.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let dicts = residency_evidence::codec::Dicts::default();
    let mut stmt = c.prepare("SELECT seq, kind, body, dict FROM records ORDER BY seq")?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(seq, kind, body, dict)| {
            let body = dicts
                .decode(&c, dict, &body)
                .map_err(|e| anyhow::anyhow!("record {seq}: {e}"))?
                .into_owned();
            Ok((seq, kind, body))
        })
        .collect()
}

/// Runs the built `residency` with `args`: exit code, standard output,
/// standard error.
///
/// # Errors
/// If the binary is not built or cannot run.
pub fn residency_cli(args: &[&std::ffi::OsStr]) -> anyhow::Result<(i32, String, String)> {
    let out = Command::new(workspace_bin("residency")?)
        .args(args)
        .env("NO_COLOR", "1")
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The configuration of [`AcmeFlows`]: monitor mode, tenant acme enforcing
/// `acme_allows` (TOML list items, e.g. `"EEA"`) on workload `acme-llm`
/// in the cgroup `<root>/llm`; loopback stands in for the world (only
/// 10/8 is local); a checkpoint signed every second.
#[must_use]
pub fn acme_config(root: &str, acme_allows: &str) -> String {
    format!(
        r#"
mode = "monitor"
[kernel]
poll_interval_ms = 5
[policy]
# Loopback stands in for the world here: only 10/8 counts as local.
local_networks = ["10.0.0.0/8"]
[evidence]
checkpoint_records = 1000
checkpoint_interval_secs = 1

[[tenant]]
id = "acme"
allowed = [{acme_allows}]
mode = "enforce"

[[workload]]
name = "acme-llm"
role = "llm"
tenants = ["acme"]
cgroup = ["{root}/llm"]
"#
    )
}

/// Tenant acme's flows, as the report and dashboard tests read them: a
/// daemon on [`acme_config`] allowing the EEA, with a GeoIP database that
/// puts 127.0.0.17 in Germany and 127.0.0.33 in the US, and six connects
/// from `acme-llm`: four to Germany (allowed) and two to the US (blocked:
/// a violation of acme's policy).
pub struct AcmeFlows {
    pub daemon: Daemon,
    /// The test cgroup's path relative to the cgroup2 root (for
    /// [`acme_config`]).
    pub root: String,
    /// Holds the GeoIP database, and whatever else the test writes.
    pub dir: tempfile::TempDir,
    _listeners: (Listener, Listener),
    _cgroup: TestCgroup,
}

impl AcmeFlows {
    /// Starts the daemon on a test cgroup named `name` and makes the six
    /// connects (they may not be stored yet when this returns).
    ///
    /// # Errors
    /// If the cgroup, the listeners, the daemon or the client fail.
    pub fn start(name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let db = de_us_db(dir.path());
        let de = Listener::bind(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 17)))?;
        let us = Listener::bind(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 33)))?;
        let cgroup = TestCgroup::new(name)?;
        let llm = cgroup.child("llm")?;
        let root = cgroup.relative()?;
        let daemon = Daemon::start_with(
            &acme_config(&root, "\"EEA\""),
            &cgroup,
            &[std::ffi::OsStr::new("--geoip"), db.as_os_str()],
        )?;
        run_client(
            &[Op::Tcp(de.tcp), Op::Tcp(de.tcp), Op::Tcp(us.tcp)],
            &ClientOptions {
                cgroup_dir: Some(&llm),
                repeat: Some(2),
                ..Default::default()
            },
        )?;
        Ok(AcmeFlows {
            daemon,
            root,
            dir,
            _listeners: (de, us),
            _cgroup: cgroup,
        })
    }

    /// `residency ARGS --api <the daemon's socket> --json`, parsed.
    ///
    /// # Errors
    /// If the command fails or does not print JSON.
    pub fn api(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
        all.extend([
            std::ffi::OsStr::new("--api"),
            self.daemon.socket.as_os_str(),
            std::ffi::OsStr::new("--json"),
        ]);
        let (code, out, err) = residency_cli(&all)?;
        ensure!(code == 0, "residency {args:?} failed ({code}): {err}");
        Ok(serde_json::from_str(&out)?)
    }
}
