//! End-to-end: pods named and judged by their namespace and labels, on a
//! real container runtime.
//!
//! A containerd of the test's own (Debian's, CRI plugin, runc, cgroupfs
//! layout under a test "node" cgroup) runs pods the way kubelet makes them:
//! sandbox first, then a busybox container that connects out (host
//! network: loopback only). The daemon is attached to the node cgroup with
//! `[kubernetes]` pointing at that containerd's CRI socket. A test GeoIP
//! database places 127.0.0.16/28 in Germany and 127.0.0.32/28 in the US.
//!
//! - `team-eu/llm-0`, labelled `residency.io/tenant: acme` (EEA only,
//!   enforce) and `residency.io/role: llm`, is blocked (EPERM) from the US
//!   address on its first container's first call, started right after the
//!   sandbox as kubelet does: the pod's policy was in the kernel before its
//!   first container ran.
//! - `team-us/llm-0`, labelled for tenant globex (US allowed), reaches the
//!   same address.
//! - `crm/sync-0`, selected by a configured workload (`namespace = "crm"`,
//!   `pod_labels = { app = "crm-sync" }`, tenant acme), is blocked from the
//!   US and reaches Germany.
//!
//! Every flow names its pod, namespace, labels, container and image.

use std::{
    collections::BTreeMap,
    ffi::OsStr,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use anyhow::{Context as _, ensure};
use residency_tests::{
    Daemon, Listener, de_us_db, flows,
    runtime::{
        BUSYBOX_IMAGE, ContainerSpec, Containerd, Kubelet, PodSpec, RunningPod, container_log,
        containerd_or_skip,
    },
};
use serde_json::Value;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn config(socket: &std::path::Path) -> String {
    format!(
        r#"
mode = "monitor"
[kernel]
poll_interval_ms = 5
[policy]
allowed = ["EEA"]
# Loopback stands in for the world here (the test database places it).
local_networks = ["10.0.0.0/8"]
[kubernetes]
cri_socket = "{}"
namespace_labels = "off"

[[tenant]]
id = "acme"
allowed = ["EEA"]
mode = "enforce"

[[tenant]]
id = "globex"
allowed = ["EEA", "US"]
mode = "enforce"

[[workload]]
name = "crm-sync"
role = "crm-sync"
tenants = ["acme"]
namespace = "crm"
pod_labels = {{ app = "crm-sync" }}
"#,
        socket.display()
    )
}

/// A container that connects to each address in turn (`nc`, no data) and
/// prints what happened.
fn client(targets: &[std::net::SocketAddr]) -> ContainerSpec {
    let mut script = String::new();
    for t in targets {
        let _ = write!(
            script,
            "if nc -w 2 {} {} </dev/null; then echo 'ok {t}'; else echo 'failed {t}'; fi; ",
            t.ip(),
            t.port()
        );
    }
    ContainerSpec::new("client", &["sh", "-c", &script])
}

/// Runs a pod and, at once, its client container; waits for it to exit;
/// returns the pod and what the client printed.
async fn run(
    kubelet: &mut Kubelet,
    spec: &PodSpec,
    targets: &[std::net::SocketAddr],
) -> anyhow::Result<(RunningPod, String, String)> {
    let pod = kubelet.run_pod(spec).await?;
    let c = kubelet.start_container(&pod, &client(targets)).await?;
    let code = kubelet.wait_exit(&c.id, Duration::from_secs(20)).await?;
    let log = container_log(&c.log_path);
    ensure!(code == 0, "client in {} exited {code}: {log}", spec.name);
    Ok((pod, c.id, log))
}

fn flow_of<'a>(
    records: &'a [Value],
    namespace: &str,
    dest: std::net::SocketAddr,
) -> anyhow::Result<&'a Value> {
    flows(records)
        .into_iter()
        .find(|f| {
            f["orchestrator"]["namespace"] == namespace
                && f["destination"]["ip"] == dest.ip().to_string()
                && f["destination"]["port"] == dest.port()
        })
        .with_context(|| format!("no flow from namespace {namespace} to {dest}"))
}

#[test]
fn pods_are_named_and_judged_by_namespace_and_labels() -> anyhow::Result<()> {
    if !containerd_or_skip("pod_policy::pods_are_named_and_judged_by_namespace_and_labels") {
        return Ok(());
    }
    let cd = Containerd::start()?;
    let dir = tempfile::tempdir()?;
    let db = de_us_db(dir.path());
    let us = Listener::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 33)))?;
    let de = Listener::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 17)))?;
    let daemon = Daemon::start_with(
        &config(cd.socket()),
        cd.node(),
        &[OsStr::new("--geoip"), db.as_os_str()],
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (eu_log, us_log, crm_log, eu_pod, eu_container) = rt.block_on(async {
        let mut kubelet = cd.kubelet().await?;
        let mut eu = PodSpec::new("llm-0", "team-eu");
        eu.labels = labels(&[
            ("app", "vllm"),
            ("residency.io/tenant", "acme"),
            ("residency.io/role", "llm"),
        ]);
        let mut usp = PodSpec::new("llm-0", "team-us");
        usp.labels = labels(&[("app", "vllm"), ("residency.io/tenant", "globex")]);
        let mut crm = PodSpec::new("sync-0", "crm");
        crm.labels = labels(&[("app", "crm-sync")]);
        let (eu_pod, eu_container, eu_log) = run(&mut kubelet, &eu, &[us.tcp]).await?;
        let (us_pod, _, us_log) = run(&mut kubelet, &usp, &[us.tcp]).await?;
        let (crm_pod, _, crm_log) = run(&mut kubelet, &crm, &[us.tcp, de.tcp]).await?;
        for p in [&us_pod, &crm_pod] {
            kubelet.remove_pod(p).await?;
        }
        anyhow::Ok((eu_log, us_log, crm_log, eu_pod, eu_container))
    })?;
    eprintln!("team-eu: {eu_log}team-us: {us_log}crm: {crm_log}");
    let stderr = daemon.stderr_text();
    let wait = daemon.wait_for(Duration::from_secs(10), |r| {
        r["orchestrator"]["namespace"] == "crm" && r["destination"]["ip"] == "127.0.0.17"
    });
    let records = daemon.stop()?;
    if wait.is_err() || !eu_log.contains("not permitted") {
        for f in flows(&records) {
            eprintln!("{f}");
        }
        eprintln!("daemon: {stderr}");
    }
    wait?;
    ensure!(
        eu_log.contains(&format!("failed {}", us.tcp)) && eu_log.contains("not permitted"),
        "the EU tenant's pod reached the US on its first call: {eu_log}"
    );
    ensure!(
        us_log.contains(&format!("ok {}", us.tcp)),
        "the pod of the tenant that allows the US was stopped: {us_log}"
    );
    ensure!(
        crm_log.contains(&format!("failed {}", us.tcp))
            && crm_log.contains(&format!("ok {}", de.tcp)),
        "the configured workload's pod was not judged by it: {crm_log}"
    );

    let eu = flow_of(&records, "team-eu", us.tcp)?;
    assert_eq!(eu["event"]["outcome"], "failure", "{eu}");
    assert_eq!(eu["residency"]["verdict"], "blocked", "{eu}");
    assert_eq!(eu["residency"]["workload"]["name"], "pods:acme/llm", "{eu}");
    assert_eq!(eu["orchestrator"]["resource"]["name"], "llm-0");
    assert_eq!(eu["orchestrator"]["resource"]["type"], "pod");
    assert_eq!(eu["orchestrator"]["resource"]["id"], eu_pod.spec.uid);
    assert_eq!(eu["container"]["id"], eu_container);
    assert_eq!(eu["container"]["name"], "client");
    assert_eq!(eu["container"]["image"]["name"], BUSYBOX_IMAGE);
    let labels = eu["orchestrator"]["resource"]["label"].to_string();
    assert!(labels.contains("residency.io/tenant:acme"), "{labels}");
    let us_flow = flow_of(&records, "team-us", us.tcp)?;
    assert_eq!(us_flow["residency"]["verdict"], "allowed", "{us_flow}");
    assert_eq!(
        us_flow["residency"]["workload"]["name"],
        "pods:globex/other"
    );
    let crm_us = flow_of(&records, "crm", us.tcp)?;
    assert_eq!(crm_us["residency"]["verdict"], "blocked", "{crm_us}");
    assert_eq!(crm_us["residency"]["workload"]["name"], "crm-sync");
    let crm_de = flow_of(&records, "crm", de.tcp)?;
    assert_eq!(crm_de["residency"]["verdict"], "allowed", "{crm_de}");
    Ok(())
}

/// A Kubernetes API server that answers as a real one did: the namespace
/// list recorded in `residency-daemon/crates/kube/tests/data/` (namespace
/// `acme-prod` labelled `residency.io/tenant: acme`), and a watch that
/// stays open with nothing new. No API server can be installed on these
/// machines, so recorded answers stand in for one. Returns a kubeconfig
/// that points at it.
fn recorded_api(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use http_body_util::Full;
    use hyper::{body::Bytes, server::conn::http1, service::service_fn};
    let list = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../residency-daemon/crates/kube/tests/data/namespaces-list.json"),
    )?;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the recorded API");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let list = list.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let list = list.clone();
                        async move {
                            let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
                            if watch {
                                // Nothing changes: the watch stays open.
                                tokio::time::sleep(Duration::from_hours(1)).await;
                            }
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(list)))
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
    });
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: recorded\n  cluster:\n    server: http://{addr}\n\
             users:\n- name: residency\n  user:\n    token: recorded-token\n\
             contexts:\n- name: recorded\n  context:\n    cluster: recorded\n    user: residency\n\
             current-context: recorded\n"
        ),
    )?;
    Ok(kubeconfig)
}

#[test]
fn a_namespace_label_names_the_tenant_of_its_pods() -> anyhow::Result<()> {
    if !containerd_or_skip("pod_policy::a_namespace_label_names_the_tenant_of_its_pods") {
        return Ok(());
    }
    let cd = Containerd::start()?;
    let dir = tempfile::tempdir()?;
    let db = de_us_db(dir.path());
    let kubeconfig = recorded_api(dir.path())?;
    let us = Listener::bind(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 33)))?;
    let config = format!(
        r#"
mode = "monitor"
[kernel]
poll_interval_ms = 5
[policy]
allowed = ["EEA"]
local_networks = ["10.0.0.0/8"]
[kubernetes]
cri_socket = "{}"
namespace_labels = "on"
kubeconfig = "{}"
[[tenant]]
id = "acme"
allowed = ["EEA"]
mode = "enforce"
"#,
        cd.socket().display(),
        kubeconfig.display()
    );
    let daemon = Daemon::start_with(&config, cd.node(), &[OsStr::new("--geoip"), db.as_os_str()])?;
    // The namespace list is read before pods are judged by it.
    daemon.wait_for(Duration::from_secs(10), |_| {
        daemon.stderr_text().contains("watching namespace labels")
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (acme_log, default_log) = rt.block_on(async {
        let mut kubelet = cd.kubelet().await?;
        // No tenant label of its own: its namespace's says acme.
        let acme = PodSpec::new("worker-0", "acme-prod");
        let plain = PodSpec::new("worker-0", "default");
        // Give the watch its first list before the pods come.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, _, acme_log) = run(&mut kubelet, &acme, &[us.tcp]).await?;
        let (_, _, default_log) = run(&mut kubelet, &plain, &[us.tcp]).await?;
        anyhow::Ok((acme_log, default_log))
    })?;
    let stderr = daemon.stderr_text();
    let records = daemon.stop()?;
    ensure!(
        acme_log.contains("not permitted"),
        "the pod in acme's namespace was not judged as acme's: {acme_log}\n{stderr}"
    );
    ensure!(
        default_log.contains(&format!("ok {}", us.tcp)),
        "a pod of an unlabelled namespace was blocked: {default_log}"
    );
    let f = flow_of(&records, "acme-prod", us.tcp)?;
    assert_eq!(f["residency"]["workload"]["name"], "pods:acme/other", "{f}");
    assert_eq!(f["residency"]["verdict"], "blocked");
    let f = flow_of(&records, "default", us.tcp)?;
    assert_eq!(f["residency"]["policy"]["index"], 0, "{f}");
    Ok(())
}
