//! End-to-end: the daemon runs from its own image inside containerd, as the
//! `DaemonSet` runs it, and watches the node's pods.
//!
//! The image is residency's own layout (`residency_oci::daemon`, which
//! `cargo xtask image` also writes) around the debug binary (stripped of
//! debug sections to keep the archive small). It runs in a pod the way
//! `kubernetes/daemonset.yaml` asks for: host network and host PID, not
//! privileged: every capability dropped but `BPF`, `PERFMON`, `NET_ADMIN`,
//! `SYS_ADMIN` and `SYS_PTRACE`; the host's cgroup2 tree, bpffs and tracefs,
//! the runtime's socket directory (read-only), the configuration and an
//! evidence directory from the host. Its programs attach to the test
//! "node" cgroup (never the cgroup2 root). A pod labelled for the EU
//! tenant is then blocked from a "US" loopback address, and the record the
//! containerised daemon writes names that pod.

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use residency_tests::{
    Listener, TestPins, action, cgroup2_mount, de_us_db, flows, read_records,
    runtime::{ContainerSpec, Containerd, PodSpec, container_log, containerd_or_skip},
    workspace_bin,
};

const IMAGE: &str = "residency.test/residency:e2e";

/// The debug daemon without its debug sections, in residency's image.
fn daemon_image(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let stripped = dir.join("residency");
    let out = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(workspace_bin("residency")?)
        .arg(&stripped)
        .output()
        .context("objcopy (binutils)")?;
    ensure!(
        out.status.success(),
        "objcopy --strip-debug failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let archive = dir.join("residency.oci.tar");
    residency_oci::daemon::DaemonImage {
        binary: &stripped,
        config: String::new(),
        geoip: None,
        ca_bundle: None,
        labels: std::collections::BTreeMap::new(),
    }
    .build()?
    .write_archive(IMAGE, &archive)?;
    Ok(archive)
}

#[test]
#[expect(clippy::too_many_lines, reason = "one story, start to stop")]
fn the_daemon_runs_from_its_image_and_watches_the_pods() -> anyhow::Result<()> {
    if !containerd_or_skip("daemon_image::the_daemon_runs_from_its_image_and_watches_the_pods") {
        return Ok(());
    }
    let cd = Containerd::start()?;
    let host = tempfile::tempdir()?;
    let etc = host.path().join("etc");
    let state = host.path().join("state");
    std::fs::create_dir_all(&etc)?;
    std::fs::create_dir_all(&state)?;
    for d in [&etc, &state] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    }
    cd.import(&daemon_image(host.path())?)?;
    let _db = de_us_db(&etc);
    let us = Listener::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 33)))?;
    let mount = cgroup2_mount()?;
    let node = cd.node().path.clone();
    let socket_dir = cd.socket().parent().context("socket dir")?.to_path_buf();
    // The host's bpffs, as a node's systemd mounts it: the daemon pins its
    // programs there through the hostPath, and they outlive its container.
    residency_daemon::kernel::pins::ensure_bpffs()?;
    let pins = TestPins::new("image");
    let instance = pins.instance.clone();
    std::fs::write(
        etc.join("residency.toml"),
        format!(
            r#"
mode = "monitor"
[kernel]
cgroup = "{node}"
instance = "{instance}"
poll_interval_ms = 5
[geoip]
database = "/etc/residency/c.mmdb"
[policy]
allowed = ["EEA"]
local_networks = ["10.0.0.0/8"]
[output]
events = "/var/lib/residency/events.jsonl"
[evidence]
directory = "/var/lib/residency"
[api]
listen = "127.0.0.1:0"
socket = "/var/lib/residency/api.sock"
[kubernetes]
cri_socket = "/run/containerd/containerd.sock"
namespace_labels = "off"
[[tenant]]
id = "acme"
allowed = ["EEA"]
mode = "enforce"
"#,
            node = node
                .strip_prefix(&mount)
                .map(|p| format!("/{}", p.display()))
                .unwrap_or_default()
        ),
    )?;
    let events = state.join("events.jsonl");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut kubelet = cd.kubelet().await?;
        let mut ds = PodSpec::new("residency-x7k2p", "residency-system");
        ds.host_pid = true;
        let ds_pod = kubelet.run_pod(&ds).await?;
        let mut spec = ContainerSpec::new("residency", &[]);
        spec.image = IMAGE.to_owned();
        // The image's entrypoint and arguments, as the DaemonSet leaves them.
        spec.command = vec![
            "/usr/bin/residency".into(),
            "run".into(),
            "--config".into(),
            "/etc/residency/residency.toml".into(),
        ];
        spec.drop_all = true;
        spec.add_capabilities = ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]
            .map(str::to_owned)
            .to_vec();
        spec.mounts = vec![
            (mount.clone(), mount.display().to_string(), false),
            ("/sys/fs/bpf".into(), "/sys/fs/bpf".into(), false),
            (
                "/sys/kernel/tracing".into(),
                "/sys/kernel/tracing".into(),
                false,
            ),
            (socket_dir.clone(), "/run/containerd".into(), true),
            (etc.clone(), "/etc/residency".into(), true),
            (state.clone(), "/var/lib/residency".into(), false),
        ];
        // The runtime's socket is named containerd.sock in its directory.
        ensure!(
            cd.socket().file_name() == Some(OsStr::new("containerd.sock")),
            "the test containerd's socket is not containerd.sock"
        );
        let daemon = kubelet.start_container(&ds_pod, &spec).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if read_records(&events)
                .unwrap_or_default()
                .iter()
                .any(|r| action(r) == "started")
            {
                break;
            }
            let status = kubelet.status(&daemon.id).await?.status.context("status")?;
            ensure!(
                Instant::now() < deadline && status.exit_code == 0 && status.finished_at == 0,
                "the containerised daemon did not start (exit {}): {}",
                status.exit_code,
                container_log(&daemon.log_path)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let mut eu = PodSpec::new("llm-0", "team-eu");
        eu.labels
            .insert("residency.io/tenant".into(), "acme".into());
        let eu_pod = kubelet.run_pod(&eu).await?;
        let client = ContainerSpec::new(
            "client",
            &[
                "sh",
                "-c",
                &format!(
                    "nc -w 2 {} {} </dev/null || echo failed",
                    us.tcp.ip(),
                    us.tcp.port()
                ),
            ],
        );
        let c = kubelet.start_container(&eu_pod, &client).await?;
        kubelet.wait_exit(&c.id, Duration::from_secs(20)).await?;
        let log = container_log(&c.log_path);
        ensure!(
            log.contains("not permitted"),
            "the EU pod reached the US past the containerised daemon: {log}\ndaemon: {}",
            container_log(&daemon.log_path)
        );
        // The record, written by the daemon in its container.
        let deadline = Instant::now() + Duration::from_secs(10);
        let flow = loop {
            let records = read_records(&events)?;
            if let Some(f) = flows(&records)
                .into_iter()
                .find(|f| f["orchestrator"]["namespace"] == "team-eu")
            {
                break f.clone();
            }
            ensure!(Instant::now() < deadline, "no record of the EU pod's flow");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(flow["residency"]["verdict"], "blocked", "{flow}");
        assert_eq!(flow["residency"]["workload"]["name"], "pods:acme/other");
        assert_eq!(flow["orchestrator"]["resource"]["name"], "llm-0");
        assert_eq!(flow["container"]["name"], "client");
        // A clean stop, as a rolling update or `kubectl delete` gives it.
        kubelet
            .stop_container(&daemon.id, Duration::from_secs(20))
            .await?;
        let code = kubelet
            .wait_exit(&daemon.id, Duration::from_secs(25))
            .await?;
        ensure!(
            code == 0,
            "the daemon exited {code}: {}",
            container_log(&daemon.log_path)
        );
        let records = read_records(&events)?;
        let stopped = records
            .iter()
            .find(|r| action(r) == "stopped")
            .context("no stopped record after SIGTERM")?;
        // The programs stay, pinned on the host, for the next daemon pod.
        assert_eq!(stopped["residency"]["enforcement"], "kept", "{stopped}");
        ensure!(
            pins.exists(),
            "no pins on the host after the daemon's container stopped"
        );
        kubelet.remove_pod(&eu_pod).await?;
        kubelet.remove_pod(&ds_pod).await?;
        anyhow::Ok(())
    })
}
