//! A real container runtime for the pod identity tests: Debian's containerd
//! with its CRI plugin, driven the way kubelet drives it.
//!
//! [`Containerd`] starts a containerd of its own (root, state, socket and
//! config in a temporary directory; never the system's `/run/containerd`
//! socket), imports a busybox image built here with `residency-oci` (no
//! image can be pulled on these machines) and stops everything it started
//! when dropped. [`Kubelet`] makes pods as kubelet does: `RunPodSandbox`
//! with metadata, labels and annotations, host network, and a cgroupfs
//! parent under a `kubepods` tree inside a test cgroup
//! (`<test cgroup>/kubepods/besteffort/pod<uid>`, kubelet's cgroupfs
//! layout); then `CreateContainer` from the image id and `StartContainer`.
//!
//! Safety: pods use the host network, so their commands may only talk to
//! loopback; nothing here attaches BPF programs; only processes this
//! containerd started (its shims, the containers in the test cgroup) are
//! stopped, by pid.
//!
//! What containerd 1.6 still puts outside the temporary directory: its
//! shims' sockets go to `/run/containerd/s/<sha256 of the socket path>`
//! (hard-coded there), and runc creates the pod cgroups in every cgroup v1
//! hierarchy of a hybrid layout as well as in cgroup2; both are removed on
//! drop.

use std::{
    collections::BTreeMap,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use k8s_cri::v1 as cri;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{TestCgroup, cgroup2_mount, privileged_or_skip};

/// The busybox image every test pod uses, as sandbox ("pause") image and
/// as client image.
pub const BUSYBOX_IMAGE: &str = "residency.test/busybox:1";

/// Applets linked to `/bin/busybox` in the image.
const APPLETS: &[&str] = &[
    "cat", "echo", "env", "false", "hostname", "id", "ls", "nc", "ps", "sh", "sleep", "true",
    "wget",
];

/// The CRI calls' deadline: generous, the machine may be busy building.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes the busybox test image (Debian's busybox-static and its applet
/// links; entrypoint `sleep infinity`, so that it also serves as the pod
/// sandbox image) to `out`.
///
/// # Errors
/// If `/bin/busybox` is missing or the archive cannot be written.
pub fn busybox_image(out: &Path) -> anyhow::Result<residency_oci::Written> {
    let busybox = Path::new("/bin/busybox");
    ensure!(
        busybox.is_file(),
        "/bin/busybox is missing: install Debian's busybox-static (`cargo xtask test` does)"
    );
    let mut image = residency_oci::Image::new(residency_oci::ImageConfig {
        entrypoint: vec!["/bin/sleep".into()],
        cmd: vec!["infinity".into()],
        env: vec!["PATH=/bin".into()],
        working_dir: Some("/".into()),
        labels: BTreeMap::from([(
            "org.opencontainers.image.description".into(),
            "residency test image: busybox-static".into(),
        )]),
        user: None,
    });
    // busybox-static links nothing; a dynamic busybox brings its libraries.
    image.binary_with_libraries(busybox, "/bin/busybox", 0o755)?;
    for applet in APPLETS {
        image.symlink(&format!("/bin/{applet}"), "busybox")?;
    }
    image.dir("/tmp", 0o1777)?;
    image.dir("/proc", 0o555)?;
    image.dir("/sys", 0o555)?;
    image.dir("/dev", 0o755)?;
    image.dir("/etc", 0o755)?;
    Ok(image.write_archive(BUSYBOX_IMAGE, out)?)
}

/// Whether containerd can be started here: root, and the binaries of
/// Debian's containerd and runc. Without them the test skips with a
/// message, except under `CI=true`, where it fails.
///
/// # Panics
/// Under `CI=true` without root or without containerd.
#[must_use]
pub fn containerd_or_skip(test: &str) -> bool {
    if !privileged_or_skip(test) {
        return false;
    }
    let missing: Vec<&str> = ["containerd", "ctr", "containerd-shim-runc-v2", "runc"]
        .into_iter()
        .filter(|cmd| which(cmd).is_none())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: CI=true but {missing:?} missing: install Debian's containerd and runc \
         (`cargo xtask test` does)"
    );
    eprintln!(
        "SKIPPED {test}: {missing:?} missing; install Debian's containerd and runc, or run \
         `cargo xtask test`, which installs them"
    );
    false
}

fn which(cmd: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain(["/usr/sbin".into(), "/usr/bin".into(), "/sbin".into()])
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// A containerd of the test's own, with the CRI plugin.
pub struct Containerd {
    child: Option<Child>,
    socket: PathBuf,
    snapshotter: &'static str,
    /// The "node": kubelet's `kubepods` tree is made under it.
    node: TestCgroup,
    /// How long containerd took from spawn to answering the CRI.
    pub started_in: Duration,
    /// The busybox image as imported.
    pub busybox: residency_oci::Written,
    // Last: removed after everything in it is unmounted.
    dir: tempfile::TempDir,
}

impl Containerd {
    /// Starts containerd and imports the busybox image; ready for
    /// `RunPodSandbox` when this returns.
    ///
    /// # Errors
    /// If containerd does not start or answer the CRI within 20 s (the
    /// error carries its log), or the image cannot be built or imported.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("residency-containerd-")
            .tempdir()?;
        let d = dir.path();
        let socket = d.join("containerd.sock");
        // overlayfs where the kernel has it; native (plain copies) works
        // everywhere.
        let snapshotter = if fs::read_to_string("/proc/filesystems")
            .is_ok_and(|f| f.lines().any(|l| l.ends_with("\toverlay")))
        {
            "overlayfs"
        } else {
            "native"
        };
        for sub in ["root", "state", "runc", "cni/bin", "cni/conf", "logs"] {
            fs::create_dir_all(d.join(sub))?;
        }
        let config = d.join("config.toml");
        fs::write(&config, config_toml(d, &socket, snapshotter))?;
        let busybox = busybox_image(&d.join("busybox.oci.tar"))?;
        let node = TestCgroup::new("node")?;
        let log = fs::File::create(d.join("containerd.log"))?;
        let started = Instant::now();
        let child = Command::new(which("containerd").context("containerd is not installed")?)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd")?;
        let mut cd = Containerd {
            child: Some(child),
            socket,
            snapshotter,
            node,
            started_in: Duration::ZERO,
            busybox,
            dir,
        };
        cd.wait_ready()?;
        cd.started_in = started.elapsed();
        cd.import(&cd.dir.path().join("busybox.oci.tar"))?;
        Ok(cd)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let rt = runtime()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "containerd exited with {status} before answering: {}",
                    self.log_tail()
                );
            }
            if self.socket.exists() {
                let answer = rt.block_on(async {
                    let mut cri =
                        residency_pods::cri::Cri::connect(&self.socket, Duration::from_secs(2))
                            .await?;
                    cri.version().await
                });
                if answer.is_ok() {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!(
                        "containerd's CRI does not answer: {answer:?}; log: {}",
                        self.log_tail()
                    );
                }
            }
            ensure!(
                Instant::now() < deadline,
                "containerd did not open {} within 20 s: {}",
                self.socket.display(),
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The "node" cgroup: kubelet's `kubepods` tree is under it; the
    /// daemon under test attaches here.
    #[must_use]
    pub fn node(&self) -> &TestCgroup {
        &self.node
    }

    /// The CRI socket.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// containerd's log, for failure messages.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Imports an OCI archive into the CRI's namespace (`k8s.io`) and
    /// unpacks it for the CRI's snapshotter.
    ///
    /// # Errors
    /// If `ctr` fails.
    pub fn import(&self, archive: &Path) -> anyhow::Result<()> {
        let out = Command::new(which("ctr").context("ctr is not installed")?)
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io", "images", "import"])
            .args(["--snapshotter", self.snapshotter])
            .arg(archive)
            .output()?;
        ensure!(
            out.status.success(),
            "ctr images import {} failed: {}{}",
            archive.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// The `kubepods` cgroup of this node, relative to the cgroup2 mount.
    ///
    /// # Errors
    /// If the cgroup2 mount cannot be found.
    pub fn kubepods(&self) -> anyhow::Result<String> {
        Ok(format!("{}/kubepods", self.node.relative()?))
    }

    /// A kubelet for this containerd.
    ///
    /// # Errors
    /// If the CRI socket cannot be reached.
    pub async fn kubelet(&self) -> anyhow::Result<Kubelet> {
        let channel = residency_pods::cri::channel(&self.socket, CALL_TIMEOUT).await?;
        let max = residency_pods::cri::MAX_MESSAGE_BYTES;
        let mut kubelet = Kubelet {
            runtime: cri::runtime_service_client::RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(max),
            images: cri::image_service_client::ImageServiceClient::new(channel)
                .max_decoding_message_size(max),
            kubepods: self.kubepods()?,
            logs: self.dir.path().join("logs"),
            busybox_id: String::new(),
        };
        kubelet.busybox_id = kubelet.image_id(BUSYBOX_IMAGE).await?;
        Ok(kubelet)
    }

    /// Stops and removes every pod through the CRI, as kubelet would when
    /// the node drains.
    fn remove_all_pods(&self) -> anyhow::Result<()> {
        let socket = self.socket.clone();
        // Drop may run inside a test's tokio runtime: use a thread.
        thread::spawn(move || -> anyhow::Result<()> {
            runtime()?.block_on(async move {
                let channel = residency_pods::cri::channel(&socket, CALL_TIMEOUT).await?;
                let mut rt = cri::runtime_service_client::RuntimeServiceClient::new(channel);
                let pods = rt
                    .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                    .await?
                    .into_inner()
                    .items;
                for p in pods {
                    let id = p.id;
                    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await?;
                    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                        .await?;
                }
                Ok(())
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the cleanup thread panicked"))?
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all_pods() {
            eprintln!("warning: removing the test pods through the CRI: {e:#}");
        }
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child);
        }
        // Shims whose containers did not go away, and any process left in
        // the node's cgroup: all started by this containerd.
        let socket = self.socket.to_string_lossy().into_owned();
        for pid in pids_with_arg(&socket) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        for pid in pids_in_cgroup(&self.node.path) {
            let _ = kill(pid, Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(100));
        unmount_under(self.dir.path());
        remove_v1_cgroups(&self.node.path);
        // The node's cgroup2 directory goes with `self.node`, and the
        // directory with `self.dir`, after this.
    }
}

fn stop_child(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Processes whose command line has `arg` as one argument.
fn pids_with_arg(arg: &str) -> Vec<Pid> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let mut cmdline = Vec::new();
        if fs::File::open(e.path().join("cmdline"))
            .and_then(|mut f| f.read_to_end(&mut cmdline))
            .is_ok()
            && cmdline.split(|b| *b == 0).any(|a| a == arg.as_bytes())
        {
            out.push(Pid::from_raw(pid));
        }
    }
    out
}

/// Every process in a cgroup2 directory and below it.
fn pids_in_cgroup(dir: &Path) -> Vec<Pid> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(procs) = fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(
                procs
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .map(Pid::from_raw),
            );
        }
        if let Ok(entries) = fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// Unmounts every mount point under `dir` (container root filesystems,
/// sandbox shm), deepest first.
fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes the cgroup2 directory's namesake in every cgroup v1 hierarchy
/// (runc makes the pod cgroups there too on a hybrid layout).
fn remove_v1_cgroups(v2_dir: &Path) {
    let Ok(mount) = cgroup2_mount() else { return };
    let Ok(rel) = v2_dir.strip_prefix(&mount) else {
        return;
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup") {
            continue;
        }
        let Some(point) = left.split_whitespace().nth(4) else {
            continue;
        };
        let top = Path::new(point).join(rel);
        if !top.exists() {
            continue;
        }
        for _ in 0..50 {
            let mut dirs = vec![top.clone()];
            let mut i = 0;
            while i < dirs.len() {
                if let Ok(entries) = fs::read_dir(&dirs[i]) {
                    dirs.extend(
                        entries
                            .flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
                i += 1;
            }
            for d in dirs.iter().rev() {
                let _ = fs::remove_dir(d);
            }
            if !top.exists() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        if top.exists() {
            eprintln!("warning: could not remove v1 cgroup {}", top.display());
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// containerd's configuration (version 2, as containerd 1.6 reads it).
fn config_toml(dir: &Path, socket: &Path, snapshotter: &str) -> String {
    let d = dir.display();
    let s = socket.display();
    format!(
        r#"# residency test containerd: everything under {d}
version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{s}"

[ttrpc]
  address = "{s}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{BUSYBOX_IMAGE}"
  disable_apparmor = true
  # No CAP_SYS_RESOURCE on these machines: the sandbox's -998 would fail
  # in runc; keep every oom_score_adj at or above containerd's own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  # Pods use the host network: no CNI plugin is needed, the directories
  # only keep containerd away from /etc/cni and /opt/cni.
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni/bin"
    conf_dir = "{d}/cni/conf"
"#
    )
}

/// A pod to run.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    /// The pod UID (8-4-4-4-12 hex digits, as the API server makes them).
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The node's process namespace (`hostPID: true`).
    pub host_pid: bool,
}

impl PodSpec {
    /// A pod with a fresh random UID.
    #[must_use]
    pub fn new(name: &str, namespace: &str) -> Self {
        PodSpec {
            name: name.into(),
            namespace: namespace.into(),
            uid: random_uid(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            host_pid: false,
        }
    }
}

/// A random version 4 UUID, from the kernel's.
///
/// # Panics
/// If /proc/sys/kernel/random/uuid cannot be read.
#[must_use]
pub fn random_uid() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("reading /proc/sys/kernel/random/uuid")
        .trim()
        .to_owned()
}

/// A pod that runs.
#[derive(Debug, Clone)]
pub struct RunningPod {
    pub sandbox_id: String,
    pub spec: PodSpec,
    /// The pod's cgroup, relative to the cgroup2 mount.
    pub cgroup: String,
    pub log_dir: PathBuf,
}

/// A container to run in a pod.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    /// The command (the image's entrypoint is replaced), e.g.
    /// `["sh", "-c", "echo hi"]`.
    pub command: Vec<String>,
    /// The image; [`BUSYBOX_IMAGE`] by default.
    pub image: String,
    /// Host paths mounted into the container: (host, container, read-only).
    pub mounts: Vec<(PathBuf, String, bool)>,
    /// Capabilities added to the runtime's default set (`BPF`, `NET_ADMIN`).
    pub add_capabilities: Vec<String>,
    /// Drop every capability not added (`drop: [ALL]`).
    pub drop_all: bool,
}

impl ContainerSpec {
    #[must_use]
    pub fn new(name: &str, command: &[&str]) -> Self {
        ContainerSpec {
            name: name.into(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            image: BUSYBOX_IMAGE.into(),
            mounts: Vec::new(),
            add_capabilities: Vec::new(),
            drop_all: false,
        }
    }
}

/// A container that was started.
#[derive(Debug, Clone)]
pub struct RunningContainer {
    pub id: String,
    pub log_path: PathBuf,
}

/// A kubelet's side of the CRI, for tests.
pub struct Kubelet {
    runtime: cri::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    images: cri::image_service_client::ImageServiceClient<tonic::transport::Channel>,
    kubepods: String,
    logs: PathBuf,
    busybox_id: String,
}

impl Kubelet {
    /// The image id of a name, waiting up to 10 s for the CRI to see an
    /// image just imported.
    ///
    /// # Errors
    /// If the image does not appear.
    pub async fn image_id(&mut self, name: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self
                .images
                .image_status(cri::ImageStatusRequest {
                    image: Some(cri::ImageSpec {
                        image: name.into(),
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await?
                .into_inner();
            if let Some(image) = status.image {
                return Ok(image.id);
            }
            ensure!(
                Instant::now() < deadline,
                "the CRI does not know image {name}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `RunPodSandbox` for a best-effort pod on the host network, in
    /// kubelet's cgroupfs layout.
    ///
    /// # Errors
    /// If the runtime refuses.
    pub async fn run_pod(&mut self, spec: &PodSpec) -> anyhow::Result<RunningPod> {
        let cgroup = format!("{}/besteffort/pod{}", self.kubepods, spec.uid);
        let log_dir = self
            .logs
            .join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        fs::create_dir_all(&log_dir)?;
        // kubelet's own labels on the sandbox, then the pod's.
        let mut labels: std::collections::HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert("io.kubernetes.pod.name".into(), spec.name.clone());
        labels.insert("io.kubernetes.pod.namespace".into(), spec.namespace.clone());
        labels.insert("io.kubernetes.pod.uid".into(), spec.uid.clone());
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels,
            annotations: spec.annotations.clone().into_iter().collect(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: cgroup.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network(spec.host_pid)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let answer = self
            .runtime
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .with_context(|| format!("RunPodSandbox {}/{}", spec.namespace, spec.name))?
            .into_inner();
        Ok(RunningPod {
            sandbox_id: answer.pod_sandbox_id,
            spec: spec.clone(),
            cgroup,
            log_dir,
        })
    }

    /// `CreateContainer` (from the image id, as kubelet does after
    /// resolving the name) and `StartContainer`.
    ///
    /// # Errors
    /// If the runtime refuses.
    pub async fn start_container(
        &mut self,
        pod: &RunningPod,
        spec: &ContainerSpec,
    ) -> anyhow::Result<RunningContainer> {
        let image_id = if spec.image == BUSYBOX_IMAGE {
            self.busybox_id.clone()
        } else {
            self.image_id(&spec.image).await?
        };
        let log_name = format!("{}/0.log", spec.name);
        fs::create_dir_all(pod.log_dir.join(&spec.name))?;
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: spec.name.clone(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image_id,
                ..Default::default()
            }),
            command: spec.command.clone(),
            log_path: log_name.clone(),
            labels: [
                ("io.kubernetes.container.name", spec.name.as_str()),
                ("io.kubernetes.pod.name", pod.spec.name.as_str()),
                ("io.kubernetes.pod.namespace", pod.spec.namespace.as_str()),
                ("io.kubernetes.pod.uid", pod.spec.uid.as_str()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            mounts: spec
                .mounts
                .iter()
                .map(|(host, container, readonly)| cri::Mount {
                    host_path: host.to_string_lossy().into_owned(),
                    container_path: container.clone(),
                    readonly: *readonly,
                    ..Default::default()
                })
                .collect(),
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(host_network(pod.spec.host_pid)),
                    capabilities: (!spec.add_capabilities.is_empty() || spec.drop_all).then(|| {
                        cri::Capability {
                            add_capabilities: spec.add_capabilities.clone(),
                            drop_capabilities: if spec.drop_all {
                                vec!["ALL".to_owned()]
                            } else {
                                Vec::new()
                            },
                            ..Default::default()
                        }
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let sandbox_config = Self::sandbox_config(pod);
        let id = self
            .runtime
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config),
            })
            .await
            .with_context(|| format!("CreateContainer {}", spec.name))?
            .into_inner()
            .container_id;
        self.runtime
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .with_context(|| format!("StartContainer {}", spec.name))?;
        Ok(RunningContainer {
            id,
            log_path: pod.log_dir.join(log_name),
        })
    }

    fn sandbox_config(pod: &RunningPod) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: pod.spec.name.clone(),
                uid: pod.spec.uid.clone(),
                namespace: pod.spec.namespace.clone(),
                attempt: 0,
            }),
            log_directory: pod.log_dir.to_string_lossy().into_owned(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: pod.cgroup.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(host_network(pod.spec.host_pid)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// `ContainerStatus`, verbose (its `info` has the process id).
    ///
    /// # Errors
    /// If the runtime does not know the container.
    pub async fn status(&mut self, id: &str) -> anyhow::Result<cri::ContainerStatusResponse> {
        Ok(self
            .runtime
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: true,
            })
            .await?
            .into_inner())
    }

    /// The host pid of a running container's first process.
    ///
    /// # Errors
    /// If the container is not running.
    pub async fn pid(&mut self, id: &str) -> anyhow::Result<u32> {
        let status = self.status(id).await?;
        let info = status.info.get("info").context("no verbose info")?;
        let v: serde_json::Value = serde_json::from_str(info)?;
        let pid = v["pid"].as_u64().context("no pid in the verbose info")?;
        ensure!(pid > 0, "container {id} has no process (not running)");
        Ok(u32::try_from(pid)?)
    }

    /// Waits until the container exits; its exit code.
    ///
    /// # Errors
    /// If it still runs after `timeout`.
    pub async fn wait_exit(&mut self, id: &str, timeout: Duration) -> anyhow::Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(id).await?.status.context("no status")?;
            if status.state == cri::ContainerState::ContainerExited as i32 {
                return Ok(status.exit_code);
            }
            ensure!(
                Instant::now() < deadline,
                "container {id} still runs after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `StopContainer`: SIGTERM, then SIGKILL after `grace`.
    ///
    /// # Errors
    /// If the runtime refuses.
    pub async fn stop_container(&mut self, id: &str, grace: Duration) -> anyhow::Result<()> {
        self.runtime
            .stop_container(cri::StopContainerRequest {
                container_id: id.into(),
                timeout: i64::try_from(grace.as_secs()).unwrap_or(30),
            })
            .await?;
        Ok(())
    }

    /// `StopPodSandbox` and `RemovePodSandbox` (its containers go too).
    ///
    /// # Errors
    /// If the runtime refuses.
    pub async fn remove_pod(&mut self, pod: &RunningPod) -> anyhow::Result<()> {
        self.runtime
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
            })
            .await?;
        self.runtime
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.sandbox_id.clone(),
            })
            .await?;
        Ok(())
    }
}

fn host_network(host_pid: bool) -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: if host_pid {
            cri::NamespaceMode::Node
        } else {
            cri::NamespaceMode::Container
        } as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// What a container wrote, from its CRI log file (`<time> <stream> <P|F>
/// <text>` per line; `P` lines continue on the next).
#[must_use]
pub fn container_log(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_, _, tag, msg) = (parts.next(), parts.next(), parts.next(), parts.next());
        out.push_str(msg.unwrap_or_default());
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

/// The cgroup2 path (relative to the mount) of a process, from
/// `/proc/<pid>/cgroup`.
///
/// # Errors
/// If the process is gone.
pub fn cgroup_of(pid: u32) -> anyhow::Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
        .context("no cgroup2 line in /proc/PID/cgroup")
}
