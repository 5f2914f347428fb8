//! End-to-end: pod identity from a real container runtime.
//!
//! A containerd of the test's own (Debian's, CRI plugin, runc with the
//! cgroupfs driver) runs two pods in two namespaces the way kubelet makes
//! them: metadata, labels and annotations on the sandbox, host network, a
//! pod cgroup in kubelet's cgroupfs layout under a test cgroup
//! (`<test>/kubepods/besteffort/pod<uid>`), and a busybox container each,
//! created from the image id as kubelet does. residency's CRI reader then
//! lists them, and the cgroup path each container's process really sits in
//! (`/proc/<pid>/cgroup`) resolves to the right pod, namespace, labels,
//! container name and image name.
//!
//! Nothing here attaches BPF programs; the containers do not use the
//! network.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use residency_pods::cri::{Cri, PodIndex};
use residency_tests::runtime::{
    BUSYBOX_IMAGE, ContainerSpec, Containerd, PodSpec, cgroup_of, container_log, containerd_or_skip,
};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario: two pods made, read, resolved, removed"
)]
fn cri_names_the_pod_and_container_of_each_real_cgroup() -> anyhow::Result<()> {
    if !containerd_or_skip("pods::cri_names_the_pod_and_container_of_each_real_cgroup") {
        return Ok(());
    }
    let cd = Containerd::start()?;
    eprintln!(
        "containerd answered the CRI {:?} after it was spawned",
        cd.started_in
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut kubelet = cd.kubelet().await?;

        let mut shop = PodSpec::new("web-7d9f8", "shop");
        shop.labels = labels(&[("app", "web"), ("residency.io/tenant", "eu-acme")]);
        shop.annotations = labels(&[("residency.io/owner", "team-web")]);
        let mut crm = PodSpec::new("sync-0", "crm");
        crm.labels = labels(&[("app", "crm-sync"), ("tier", "batch")]);

        let started = Instant::now();
        let pod_a = kubelet.run_pod(&shop).await?;
        let sandbox_ready = started.elapsed();
        let a = kubelet
            .start_container(
                &pod_a,
                &ContainerSpec::new("app", &["sh", "-c", "echo ready; exec sleep 300"]),
            )
            .await?;
        eprintln!(
            "RunPodSandbox took {sandbox_ready:?}; to the container started {:?}",
            started.elapsed()
        );
        let pod_b = kubelet.run_pod(&crm).await?;
        let b = kubelet
            .start_container(&pod_b, &ContainerSpec::new("agent", &["sleep", "300"]))
            .await?;

        // The cgroups the containers' processes really sit in.
        let cg_a = cgroup_of(kubelet.pid(&a.id).await?)?;
        let cg_b = cgroup_of(kubelet.pid(&b.id).await?)?;
        ensure!(
            cg_a == format!("{}/{}", pod_a.cgroup, a.id),
            "container a sits in {cg_a}, not under its pod cgroup {}",
            pod_a.cgroup
        );
        ensure!(
            cg_b.ends_with(&format!("/kubepods/besteffort/pod{}/{}", crm.uid, b.id)),
            "{cg_b}"
        );

        // residency's reader.
        let mut cri = Cri::connect(cd.socket(), Duration::from_secs(10)).await?;
        let version = cri.version().await?;
        ensure!(version.starts_with("containerd "), "{version}");
        let pods = cri.pods().await?;
        ensure!(cri.skipped().is_empty(), "skipped: {:?}", cri.skipped());
        let listed_a = pods
            .iter()
            .find(|p| p.uid == shop.uid)
            .context("ListPodSandbox lacks pod a")?;
        assert_eq!(listed_a.sandbox_id, pod_a.sandbox_id);
        assert!(listed_a.ready);
        let containers = cri.containers().await?;
        let listed_b = containers
            .iter()
            .find(|c| c.id == b.id)
            .context("ListContainers lacks container b")?;
        assert_eq!(listed_b.pod_uid, crm.uid);
        assert_eq!(listed_b.sandbox_id, pod_b.sandbox_id);
        assert!(listed_b.running);

        let mut index = PodIndex::new();
        let refresh = Instant::now();
        index.refresh(&mut cri).await?;
        eprintln!(
            "PodIndex::refresh ({} pods, {} containers) took {:?}",
            index.pods().count(),
            index.containers().count(),
            refresh.elapsed()
        );
        for (cgroup, spec, container, image) in [
            (&cg_a, &shop, "app", BUSYBOX_IMAGE),
            (&cg_b, &crm, "agent", BUSYBOX_IMAGE),
        ] {
            let (pod, c) = index
                .resolve(cgroup)
                .with_context(|| format!("{cgroup} resolves to no pod"))?;
            assert_eq!(pod.uid, spec.uid, "{cgroup}");
            assert_eq!(pod.name, spec.name, "{cgroup}");
            assert_eq!(pod.namespace, spec.namespace, "{cgroup}");
            assert_eq!(
                pod.labels, spec.labels,
                "{cgroup}: kubelet's labels left out"
            );
            for (k, v) in &spec.annotations {
                assert_eq!(pod.annotations.get(k), Some(v), "{cgroup}");
            }
            let c = c.with_context(|| format!("{cgroup} resolves to no container"))?;
            assert_eq!(c.name, container, "{cgroup}");
            // Created from the image id, named by the runtime's tag.
            assert_eq!(c.image, image, "{cgroup}");
            assert!(c.image_ref.starts_with("sha256:"), "{}", c.image_ref);
        }
        // The sandbox's own cgroup (the pause process) is the pod's, with
        // no container.
        let (pod, c) = index
            .resolve(&format!("{}/{}", pod_a.cgroup, pod_a.sandbox_id))
            .context("the sandbox cgroup resolves to no pod")?;
        assert_eq!(pod.name, shop.name);
        assert!(c.is_none());

        // A container that exits: its code and what it wrote.
        let once = kubelet
            .start_container(
                &pod_b,
                &ContainerSpec::new("once", &["sh", "-c", "echo hello from once; exit 3"]),
            )
            .await?;
        assert_eq!(
            kubelet.wait_exit(&once.id, Duration::from_secs(30)).await?,
            3
        );
        let log = container_log(&once.log_path);
        assert!(log.contains("hello from once"), "log: {log:?}");
        assert!(container_log(&a.log_path).contains("ready"));

        // Pod a goes away; a refresh forgets it, and b stays.
        kubelet.remove_pod(&pod_a).await?;
        index.refresh(&mut cri).await?;
        assert!(index.pod(&shop.uid).is_none());
        assert!(index.resolve(&cg_a).is_none());
        assert_eq!(
            index.resolve(&cg_b).map(|(p, _)| p.name.as_str()),
            Some("sync-0")
        );
        kubelet.remove_pod(&pod_b).await?;
        anyhow::Ok(())
    })
    .with_context(|| format!("containerd log:\n{}", cd.log_tail()))
}

/// An image of only the daemon and the libraries ldd lists (no base image)
/// runs under containerd: the loader and every library are where the
/// binary looks for them.
#[test]
fn an_image_of_only_the_daemon_and_its_libraries_runs() -> anyhow::Result<()> {
    if !containerd_or_skip("pods::an_image_of_only_the_daemon_and_its_libraries_runs") {
        return Ok(());
    }
    let binary = residency_tests::workspace_bin("residency")?;
    let cd = Containerd::start()?;
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("residency.oci.tar");
    let mut image = residency_oci::Image::new(residency_oci::ImageConfig {
        entrypoint: vec!["/usr/bin/residency".into()],
        cmd: vec!["--version".into()],
        ..Default::default()
    });
    image.binary_with_libraries(&binary, "/usr/bin/residency", 0o755)?;
    let written = image.write_archive("residency.test/residency:e2e", &archive)?;
    cd.import(&archive)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut kubelet = cd.kubelet().await?;
        let pod = kubelet
            .run_pod(&PodSpec::new("residency-0", "residency-system"))
            .await?;
        let mut spec = ContainerSpec::new("residency", &["/usr/bin/residency", "--version"]);
        spec.image = written.name.clone();
        let c = kubelet.start_container(&pod, &spec).await?;
        let code = kubelet.wait_exit(&c.id, Duration::from_secs(30)).await?;
        let log = container_log(&c.log_path);
        ensure!(
            code == 0,
            "residency --version exited {code} in its image: {log}"
        );
        ensure!(log.contains("residency"), "{log:?}");
        let mut cri = Cri::connect(cd.socket(), Duration::from_secs(10)).await?;
        let listed = cri.containers().await?;
        let listed = listed
            .iter()
            .find(|l| l.id == c.id)
            .context("the container is not listed")?;
        assert_eq!(listed.image, "residency.test/residency:e2e");
        kubelet.remove_pod(&pod).await?;
        anyhow::Ok(())
    })
    .with_context(|| format!("containerd log:\n{}", cd.log_tail()))
}
