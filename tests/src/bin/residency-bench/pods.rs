//! `residency-bench pods`: how soon a new pod's policy is in the kernel,
//! and what the daemon costs with many pods on the node, on a real
//! containerd driven through the CRI as kubelet drives it.
//!
//! For each of `--pods` pods (labelled for tenant acme, EEA only, enforce):
//! a prober process polls for the pod's cgroup to appear (kubelet's
//! cgroupfs layout; runc makes it while `RunPodSandbox` runs), notes the
//! time, makes a cgroup below it, moves itself in and connects to a "US"
//! loopback address every 100 µs until the kernel says EPERM: the moment
//! the pod's policy is in force for anything in the pod. Meanwhile the
//! bench, as kubelet, runs the sandbox and then starts the pod's first
//! container. Reported from the pod cgroup's appearance: the policy in the
//! kernel, the sandbox ready (`RunPodSandbox` returned) and the first
//! container started (`StartContainer` returned), p50 and p99; and how many
//! pods had their policy before their first container started.
//!
//! Then `--memory-pods` pods (sandboxes only) run at once, and the daemon's
//! resident memory (`VmRSS`, `VmHWM`) is read before and with them, with the
//! time one CRI listing of them all takes.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use residency_tests::{
    Daemon, Listener, de_us_db,
    runtime::{ContainerSpec, Containerd, PodSpec, containerd_or_skip},
};

use super::write_section;

fn config(socket: &Path) -> String {
    format!(
        r#"
mode = "monitor"
[kernel]
poll_interval_ms = 5
[policy]
# Loopback stands in for the world here (the test database places it).
local_networks = ["10.0.0.0/8"]
[kubernetes]
cri_socket = "{}"
namespace_labels = "off"
[[tenant]]
id = "acme"
allowed = ["EEA"]
mode = "enforce"
"#,
        socket.display()
    )
}

/// Monotonic nanoseconds, comparable between processes.
fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// The prober (run as `residency-bench pod-probe`): waits for `pod_dir`,
/// prints the time it appeared, joins a cgroup below it and connects to
/// `dest` until EPERM; prints that time. Both on standard output as
/// `appeared <ns>` and `enforced <ns>`.
///
/// # Errors
/// If the pod's cgroup does not appear, or no EPERM comes within `limit`.
pub fn probe(pod_dir: &Path, dest: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while !pod_dir.exists() {
        ensure!(
            start.elapsed() < limit,
            "{} never appeared",
            pod_dir.display()
        );
        std::thread::sleep(Duration::from_micros(50));
    }
    let appeared = mono_ns();
    let mine = pod_dir.join("probe");
    std::fs::create_dir(&mine).with_context(|| format!("creating {}", mine.display()))?;
    std::fs::write(mine.join("cgroup.procs"), std::process::id().to_string())?;
    loop {
        match TcpStream::connect_timeout(&dest, Duration::from_secs(1)) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EPERM) => break,
            _ => {}
        }
        ensure!(start.elapsed() < limit, "no EPERM within {limit:?}");
        std::thread::sleep(Duration::from_micros(100));
    }
    let enforced = mono_ns();
    println!("appeared {appeared}\nenforced {enforced}");
    Ok(())
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "an index into a short vector"
    )]
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Milliseconds from the pod's cgroup appearing.
struct Sample {
    policy: f64,
    ready: f64,
    started: f64,
}

pub fn run(pods: usize, memory_pods: usize, write: Option<PathBuf>) -> anyhow::Result<()> {
    if !containerd_or_skip("bench pods") {
        bail!(
            "the pods benchmark needs root and containerd (`cargo xtask bench pods` installs it)"
        );
    }
    let cd = Containerd::start()?;
    let dir = tempfile::tempdir()?;
    let db = de_us_db(dir.path());
    let us = Listener::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 33)))?;
    let daemon = Daemon::start_with(
        &config(cd.socket()),
        cd.node(),
        &[OsStr::new("--geoip"), db.as_os_str()],
    )?;
    let daemon_pid = daemon
        .pid()
        .context("the daemon has no pid")?
        .as_raw()
        .unsigned_abs();
    let mount = residency_tests::cgroup2_mount()?;
    let kubepods = mount.join(cd.kubepods()?.trim_start_matches('/'));
    let me = std::env::current_exe()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut samples = Vec::new();
    let rss_idle = status_kib(daemon_pid, "VmRSS:")?;
    let (list_ms, rss_after, rss_pods, hwm_pods) = rt.block_on(async {
        let mut kubelet = cd.kubelet().await?;
        for i in 0..pods {
            let mut spec = PodSpec::new(&format!("llm-{i}"), "team-eu");
            spec.labels = BTreeMap::from([
                ("residency.io/tenant".to_owned(), "acme".to_owned()),
                ("residency.io/role".to_owned(), "llm".to_owned()),
            ]);
            let pod_dir = kubepods.join(format!("besteffort/pod{}", spec.uid));
            let prober = Command::new(&me)
                .arg("pod-probe")
                .arg(&pod_dir)
                .arg(us.tcp.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?;
            let pod = kubelet.run_pod(&spec).await?;
            let ready = mono_ns();
            kubelet
                .start_container(&pod, &ContainerSpec::new("server", &["sleep", "30"]))
                .await?;
            let started = mono_ns();
            let out = prober.wait_with_output()?;
            ensure!(
                out.status.success(),
                "the prober of pod {i} failed: {}",
                daemon.stderr_text()
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |name: &str| -> anyhow::Result<u64> {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                    .with_context(|| format!("prober said no {name}: {text}"))
            };
            let appeared = field("appeared ")?;
            let enforced = field("enforced ")?;
            let ms = |t: u64| (t.saturating_sub(appeared)) as f64 / 1e6;
            samples.push(Sample {
                policy: ms(enforced),
                ready: ms(ready),
                started: ms(started),
            });
            let _ = std::fs::remove_dir(pod_dir.join("probe"));
            kubelet.remove_pod(&pod).await?;
        }
        // After the timed pods came and went (their flows recorded), before
        // the many.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = status_kib(daemon_pid, "VmRSS:")?;
        // Many pods at once, sandboxes only.
        let mut running = Vec::new();
        for i in 0..memory_pods {
            let mut spec = PodSpec::new(&format!("idle-{i}"), "batch");
            spec.labels = BTreeMap::from([("residency.io/tenant".to_owned(), "acme".to_owned())]);
            running.push(kubelet.run_pod(&spec).await?);
            if (i + 1) % 100 == 0 {
                eprintln!("{} pods running", i + 1);
            }
        }
        // Let the daemon list them all (its resync runs every 10 s).
        tokio::time::sleep(Duration::from_secs(12)).await;
        let mut cri =
            residency_pods::cri::Cri::connect(cd.socket(), Duration::from_secs(10)).await?;
        let t = Instant::now();
        let listed = cri.pods().await?.len() + cri.containers().await?.len();
        let list_ms = t.elapsed().as_secs_f64() * 1e3;
        ensure!(
            listed >= memory_pods,
            "the runtime lists {listed} of {memory_pods} pods"
        );
        let rss = status_kib(daemon_pid, "VmRSS:")?;
        let hwm = status_kib(daemon_pid, "VmHWM:")?;
        for p in &running {
            kubelet.remove_pod(p).await?;
        }
        anyhow::Ok((list_ms, rss_after, rss, hwm))
    })?;
    drop(daemon.stop()?);
    let before = samples.iter().filter(|s| s.policy < s.started).count();
    let col = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
    let mut table = String::new();
    writeln!(
        table,
        "Measured by `cargo xtask bench pods` (`residency-bench pods --pods {pods} --memory-pods \
         {memory_pods}`): Debian's containerd {} with runc, pods made through the CRI as kubelet \
         makes them (cgroupfs layout, host network), the daemon attached to the node's cgroup \
         with `[kubernetes]`. Times are from the pod's cgroup appearing (runc makes it during \
         `RunPodSandbox`).\n",
        containerd_version()
    )?;
    writeln!(
        table,
        "| from the pod's cgroup appearing to | p50 | p99 | max |"
    )?;
    writeln!(table, "|---|---|---|---|")?;
    for (name, v) in [
        (
            "its policy in the kernel (first EPERM inside the pod)",
            col(|s| s.policy),
        ),
        (
            "the sandbox ready (`RunPodSandbox` returned)",
            col(|s| s.ready),
        ),
        (
            "its first container started (`StartContainer` returned)",
            col(|s| s.started),
        ),
    ] {
        writeln!(
            table,
            "| {name} | {:.1} ms | {:.1} ms | {:.1} ms |",
            percentile(v.clone(), 50.0),
            percentile(v.clone(), 99.0),
            percentile(v, 100.0)
        )?;
    }
    writeln!(
        table,
        "\nPods whose policy was in the kernel before their first container started: **{before} of {}**.\n",
        samples.len()
    )?;
    writeln!(table, "| daemon memory | VmRSS | VmHWM (peak) |")?;
    writeln!(table, "|---|---|---|")?;
    writeln!(
        table,
        "| idle, no pods | {:.1} MiB | |",
        rss_idle as f64 / 1024.0
    )?;
    writeln!(
        table,
        "| after the {pods} timed pods came and went (their flows recorded) | {:.1} MiB | |",
        rss_after as f64 / 1024.0
    )?;
    writeln!(
        table,
        "| {memory_pods} pods on the node | {:.1} MiB | {:.1} MiB |",
        rss_pods as f64 / 1024.0,
        hwm_pods as f64 / 1024.0
    )?;
    writeln!(
        table,
        "\nOne CRI listing (`ListPodSandbox` + `ListContainers`) of {memory_pods} pods took {list_ms:.1} ms."
    )?;
    print!("{table}");
    if let Some(path) = write {
        write_section(&path, "pods", &table)?;
        println!("written to {}", path.display());
    }
    Ok(())
}

fn containerd_version() -> String {
    Command::new("containerd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".to_owned())
}
