//! Which Kubernetes pod and container a cgroup belongs to, read from its
//! path: the first step of pod identity. The container runtime's CRI API
//! then names the pod, its namespace and labels, and the container's name
//! and image: [`cri`] reads it, and [`cri::PodIndex::resolve`] joins both.
//!
//! kubelet makes one cgroup per pod under a `kubepods` tree and the runtime
//! one per container under it. The layout depends on the cgroup driver
//! (systemd or cgroupfs), the pod's quality-of-service class (guaranteed
//! pods sit directly under `kubepods`, burstable and best-effort ones under
//! a class cgroup) and the
//! runtime (containerd, CRI-O, Docker):
//!
//! - systemd: `/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope`, where
//!   `<uid_>` is the pod UID with `_` for `-`, and the scope is
//!   `cri-containerd-`, `crio-` or `docker-` followed by the container id;
//! - cgroupfs: `/kubepods/burstable/pod<uid>/<id>` (CRI-O: `crio-<id>`).
//!
//! CRI-O also makes a `crio-conmon-<id>` sibling for its monitor process,
//! which is not the container; with crun, the container's processes sit in
//! a `container` child of its cgroup. Anything above `kubepods` (a node
//! running in a container, `kubelet.slice`) is ignored. A path that does
//! not follow these layouts is not a pod's: [`parse`] says `None` rather
//! than guess.

pub mod cri;

use std::fmt;

/// The pod's quality-of-service class, from the cgroup it sits under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// As Kubernetes writes it (`status.qosClass`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Qos::Guaranteed => "Guaranteed",
            Qos::Burstable => "Burstable",
            Qos::BestEffort => "BestEffort",
        }
    }
}

/// kubelet's cgroup driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

/// The container runtime, when the path says (cgroupfs paths of
/// containerd and Docker carry only the id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// A bare id (cgroupfs driver, containerd or Docker).
    Unnamed,
}

/// What a cgroup path says about a pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodCgroup {
    /// The pod's UID, with dashes, lower case.
    pub uid: String,
    pub qos: Qos,
    pub driver: Driver,
    /// The container, when the path goes below the pod's cgroup.
    pub container: Option<ContainerCgroup>,
}

/// A container's cgroup within a pod's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerCgroup {
    /// The runtime's container id (64 hex digits), lower case.
    pub id: String,
    pub runtime: Runtime,
    /// CRI-O's monitor (`crio-conmon-<id>`): a process of the runtime's,
    /// not of the container.
    pub conmon: bool,
}

impl fmt::Display for PodCgroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pod {} ({})", self.uid, self.qos.as_str())?;
        if let Some(c) = &self.container {
            write!(f, ", container {}", &c.id[..12.min(c.id.len())])?;
        }
        Ok(())
    }
}

/// The pod (and container) a cgroup path belongs to, or `None` when the
/// path is not under a kubelet `kubepods` tree in a layout it makes. The
/// path is relative to the cgroup2 mount (as in `/proc/PID/cgroup`).
#[must_use]
pub fn parse(path: &str) -> Option<PodCgroup> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if let Some(at) = parts.iter().position(|p| *p == "kubepods.slice") {
        return systemd(&parts[at + 1..]);
    }
    let at = parts.iter().position(|p| *p == "kubepods")?;
    cgroupfs(&parts[at + 1..])
}

/// Below `kubepods.slice`.
fn systemd(rest: &[&str]) -> Option<PodCgroup> {
    let (qos, rest) = match *rest.first()? {
        "kubepods-burstable.slice" => (Qos::Burstable, &rest[1..]),
        "kubepods-besteffort.slice" => (Qos::BestEffort, &rest[1..]),
        _ => (Qos::Guaranteed, rest),
    };
    let prefix = match qos {
        Qos::Guaranteed => "kubepods-pod",
        Qos::Burstable => "kubepods-burstable-pod",
        Qos::BestEffort => "kubepods-besteffort-pod",
    };
    let pod = rest.first()?.strip_prefix(prefix)?.strip_suffix(".slice")?;
    // systemd reads `-` in a unit name as a level of slices, so kubelet
    // writes the UID's dashes as `_`; a dash here is not its layout.
    if pod.contains('-') {
        return None;
    }
    let uid = uid(&pod.replace('_', "-"))?;
    let container = match rest.get(1) {
        None => None,
        Some(scope) => Some(systemd_scope(scope)?),
    };
    // crun puts the processes in a `container` child; nothing else nests.
    if rest.len() > 3 || (rest.len() == 3 && rest[2] != "container") {
        return None;
    }
    Some(PodCgroup {
        uid,
        qos,
        driver: Driver::Systemd,
        container,
    })
}

fn systemd_scope(scope: &str) -> Option<ContainerCgroup> {
    let name = scope.strip_suffix(".scope")?;
    let (runtime, conmon, id) = if let Some(id) = name.strip_prefix("cri-containerd-") {
        (Runtime::Containerd, false, id)
    } else if let Some(id) = name.strip_prefix("crio-conmon-") {
        (Runtime::CriO, true, id)
    } else if let Some(id) = name.strip_prefix("crio-") {
        (Runtime::CriO, false, id)
    } else if let Some(id) = name.strip_prefix("docker-") {
        (Runtime::Docker, false, id)
    } else {
        return None;
    };
    Some(ContainerCgroup {
        id: container_id(id)?,
        runtime,
        conmon,
    })
}

/// Below `kubepods`.
fn cgroupfs(rest: &[&str]) -> Option<PodCgroup> {
    let (qos, rest) = match *rest.first()? {
        "burstable" => (Qos::Burstable, &rest[1..]),
        "besteffort" => (Qos::BestEffort, &rest[1..]),
        _ => (Qos::Guaranteed, rest),
    };
    let uid = uid(rest.first()?.strip_prefix("pod")?)?;
    let container = match rest.get(1) {
        None => None,
        Some(dir) => Some(cgroupfs_container(dir)?),
    };
    if rest.len() > 3 || (rest.len() == 3 && rest[2] != "container") {
        return None;
    }
    Some(PodCgroup {
        uid,
        qos,
        driver: Driver::Cgroupfs,
        container,
    })
}

fn cgroupfs_container(dir: &str) -> Option<ContainerCgroup> {
    let (runtime, conmon, id) = if let Some(id) = dir.strip_prefix("crio-conmon-") {
        (Runtime::CriO, true, id)
    } else if let Some(id) = dir.strip_prefix("crio-") {
        (Runtime::CriO, false, id)
    } else {
        (Runtime::Unnamed, false, dir)
    };
    Some(ContainerCgroup {
        id: container_id(id)?,
        runtime,
        conmon,
    })
}

/// A pod UID: 8-4-4-4-12 hex digits.
fn uid(s: &str) -> Option<String> {
    // A static pod's UID is kubelet's hash of its manifest: 32 hex digits.
    if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(s.to_ascii_lowercase());
    }
    let groups: Vec<&str> = s.split('-').collect();
    let shape = [8, 4, 4, 4, 12];
    let ok = groups.len() == shape.len()
        && groups
            .iter()
            .zip(shape)
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| s.to_ascii_lowercase())
}

/// A container id: 64 hex digits.
fn container_id(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
    const UID_: &str = "0a1b2c3d_4e5f_6789_abcd_ef0123456789";
    const ID: &str = "3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7";

    fn pod(qos: Qos, driver: Driver, runtime: Option<Runtime>) -> PodCgroup {
        PodCgroup {
            uid: UID.into(),
            qos,
            driver,
            container: runtime.map(|runtime| ContainerCgroup {
                id: ID.into(),
                runtime,
                conmon: false,
            }),
        }
    }

    #[test]
    fn systemd_driver_every_qos_and_runtime() {
        for (qos, class) in [
            (Qos::Guaranteed, ""),
            (Qos::Burstable, "burstable"),
            (Qos::BestEffort, "besteffort"),
        ] {
            let (dir, prefix) = if class.is_empty() {
                (String::new(), "kubepods-pod".to_owned())
            } else {
                (
                    format!("/kubepods-{class}.slice"),
                    format!("kubepods-{class}-pod"),
                )
            };
            let pod_dir = format!("/kubepods.slice{dir}/{prefix}{UID_}.slice");
            assert_eq!(
                parse(&pod_dir),
                Some(pod(qos, Driver::Systemd, None)),
                "{pod_dir}"
            );
            for (scope, runtime) in [
                ("cri-containerd", Runtime::Containerd),
                ("crio", Runtime::CriO),
                ("docker", Runtime::Docker),
            ] {
                let path = format!("{pod_dir}/{scope}-{ID}.scope");
                assert_eq!(
                    parse(&path),
                    Some(pod(qos, Driver::Systemd, Some(runtime))),
                    "{path}"
                );
                // crun's `container` child is the same container.
                let crun = format!("{path}/container");
                assert_eq!(parse(&crun), parse(&path), "{crun}");
            }
        }
    }

    #[test]
    fn cgroupfs_driver_every_qos_and_runtime() {
        for (qos, class) in [
            (Qos::Guaranteed, ""),
            (Qos::Burstable, "/burstable"),
            (Qos::BestEffort, "/besteffort"),
        ] {
            let pod_dir = format!("/kubepods{class}/pod{UID}");
            assert_eq!(
                parse(&pod_dir),
                Some(pod(qos, Driver::Cgroupfs, None)),
                "{pod_dir}"
            );
            let bare = format!("{pod_dir}/{ID}");
            assert_eq!(
                parse(&bare),
                Some(pod(qos, Driver::Cgroupfs, Some(Runtime::Unnamed))),
                "{bare}"
            );
            let crio = format!("{pod_dir}/crio-{ID}");
            assert_eq!(
                parse(&crio),
                Some(pod(qos, Driver::Cgroupfs, Some(Runtime::CriO))),
                "{crio}"
            );
        }
    }

    #[test]
    fn crio_conmon_is_not_the_container() {
        for path in [
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-conmon-{ID}.scope"
            ),
            format!("/kubepods/burstable/pod{UID}/crio-conmon-{ID}"),
        ] {
            let p = parse(&path).unwrap();
            let c = p.container.unwrap();
            assert!(c.conmon, "{path}");
            assert_eq!(c.runtime, Runtime::CriO);
        }
    }

    #[test]
    fn a_prefix_above_kubepods_is_ignored() {
        // A node in a container (kind), or kubelet under its own slice.
        let path = format!(
            "/kubelet.slice/kubelet-kubepods.slice/../kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        assert!(parse(&path).is_some());
        let nested = format!("/docker/abc/kubepods/besteffort/pod{UID}/{ID}");
        assert_eq!(
            parse(&nested),
            Some(pod(
                Qos::BestEffort,
                Driver::Cgroupfs,
                Some(Runtime::Unnamed)
            ))
        );
    }

    #[test]
    fn anything_else_is_not_a_pod() {
        for path in [
            String::new(),
            "/".into(),
            "/system.slice/containerd.service".into(),
            "/kubepods.slice".into(),
            "/kubepods".into(),
            "/kubepods/burstable".into(),
            // A UID of the wrong shape, or the systemd form under cgroupfs.
            "/kubepods/pod1234".into(),
            format!("/kubepods/pod{UID_}"),
            format!("/kubepods.slice/kubepods-pod{UID}.slice"),
            // A QoS class and a pod prefix that disagree.
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-besteffort-pod{UID_}.slice"),
            // A container id that is not 64 hex digits, an unknown scope.
            format!("/kubepods/pod{UID}/{}", &ID[..63]),
            format!("/kubepods/pod{UID}/zz{}", &ID[2..]),
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/runc-{ID}.scope"),
            // Deeper than any runtime nests.
            format!("/kubepods/pod{UID}/{ID}/a/b"),
            format!("/kubepods/pod{UID}/{ID}/other"),
        ] {
            assert_eq!(parse(&path), None, "{path}");
        }
    }

    #[test]
    fn ids_are_lower_case_and_display_is_short() {
        let upper = format!("/kubepods/pod{}/{}", UID.to_uppercase(), ID.to_uppercase());
        let p = parse(&upper).unwrap();
        assert_eq!(p.uid, UID);
        assert_eq!(p.container.as_ref().unwrap().id, ID);
        assert_eq!(
            p.to_string(),
            format!("pod {UID} (Guaranteed), container {}", &ID[..12])
        );
    }

    #[test]
    fn static_pods_have_a_hash_for_a_uid() {
        let hash = "6d1c0a7b2e9f4c3d8a5b0e1f2a3b4c5d";
        let sd = parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{hash}.slice/cri-containerd-{ID}.scope"
        ))
        .unwrap();
        assert_eq!(sd.uid, hash);
        assert_eq!(sd.container.unwrap().id, ID);
        let fs = parse(&format!("/kubepods/pod{hash}/{ID}")).unwrap();
        assert_eq!(fs.uid, hash);
        assert!(parse(&format!("/kubepods/pod{}/{ID}", &hash[..31])).is_none());
    }
}
