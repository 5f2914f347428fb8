//! The workload stage: which cgroups select which workload, kept current
//! as cgroups come and go.
//!
//! The kernel keys policies by cgroup id and walks up to the nearest listed
//! ancestor, so only the cgroups a selector names directly are listed; a
//! container or scope created under a workload's cgroup is covered from its
//! first call, with no help from here. What this module adds is cgroups
//! that match a selector by themselves (a glob over pod cgroups, a unit that
//! starts later): a scan at start and at every policy load, and inotify on
//! the whole cgroup2 tree in between.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use std::sync::Arc;

use crate::config::{Config, PodFacts};

/// One cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    pub id: u64,
    /// Relative to the cgroup2 mount, `/`-rooted (as in `/proc/PID/cgroup`).
    pub path: String,
}

/// Every cgroup under `mount` (including the root), depth first. Unreadable
/// directories are skipped: a cgroup removed during the walk is no error.
#[must_use]
pub fn scan(mount: &Path) -> Vec<Cgroup> {
    let mut out = Vec::new();
    let mut stack = vec![mount.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        out.push(Cgroup {
            id: meta.ino(),
            path: relative(mount, &dir),
        });
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    out
}

/// `/`-rooted path of `dir` relative to `mount`.
#[must_use]
pub fn relative(mount: &Path, dir: &Path) -> String {
    let rel = dir.strip_prefix(mount).unwrap_or(Path::new(""));
    format!("/{}", rel.display())
}

/// The pods the node runs, by UID, as far as the runtime has said.
pub type PodsByUid = HashMap<String, Arc<PodFacts>>;

/// The pod whose own cgroup `path` is (not a container's below it), if
/// Kubernetes selection is on and the runtime has named the pod.
#[must_use]
pub fn pod_of<'a>(config: &Config, path: &str, pods: &'a PodsByUid) -> Option<&'a PodFacts> {
    if !config.kubernetes.enabled {
        return None;
    }
    let cg = residency_pods::parse(path)?;
    if cg.container.is_some() {
        return None;
    }
    pods.get(&cg.uid).map(AsRef::as_ref)
}

/// The workload (policy index, from 1) a cgroup selects by itself, if any:
/// the first workload in the configuration whose cgroup or unit selector
/// matches, or, for a pod's own cgroup, whose pod selector matches the pod
/// (label-chosen workloads come after every configured one).
#[must_use]
pub fn workload_for(config: &Config, path: &str, pods: &PodsByUid) -> Option<u32> {
    let pod = pod_of(config, path, pods);
    let kube = &config.kubernetes;
    config
        .workloads
        .iter()
        .position(|w| {
            w.selectors.matches_cgroup(path)
                || pod.is_some_and(|p| {
                    w.selectors.pods.as_ref().is_some_and(|s| {
                        s.matches(p, kube.tenant_label.as_deref(), &kube.role_label)
                    })
                })
        })
        .and_then(|i| u32::try_from(i + 1).ok())
}

/// `(cgroup id, policy index)` for every cgroup that selects a workload.
#[must_use]
pub fn assignments(config: &Config, cgroups: &[Cgroup], pods: &PodsByUid) -> Vec<(u64, u32)> {
    cgroups
        .iter()
        .filter_map(|c| workload_for(config, &c.path, pods).map(|i| (c.id, i)))
        .collect()
}

/// An id first seen in a record makes the tree rescan at most this often.
const RESCAN_AT_MOST_EVERY: Duration = Duration::from_secs(1);

/// Knows the cgroup tree: id -> path, for records; kept current by the
/// control task from inotify.
pub struct Tree {
    mount: PathBuf,
    by_id: HashMap<u64, String>,
    scanned: Instant,
    rescan_every: Duration,
}

impl Tree {
    /// Scans the tree now; returns it and every cgroup in it.
    #[must_use]
    pub fn new(mount: &Path) -> (Self, Vec<Cgroup>) {
        let mut t = Tree {
            mount: mount.to_path_buf(),
            by_id: HashMap::new(),
            scanned: Instant::now(),
            rescan_every: RESCAN_AT_MOST_EVERY,
        };
        let all = t.rescan();
        (t, all)
    }

    pub fn rescan(&mut self) -> Vec<Cgroup> {
        let all = scan(&self.mount);
        self.by_id = all.iter().map(|c| (c.id, c.path.clone())).collect();
        self.scanned = Instant::now();
        all
    }

    /// How often an unknown id may rescan the tree (tests use zero).
    pub fn set_rescan_interval(&mut self, every: Duration) {
        self.rescan_every = every;
    }

    #[must_use]
    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// Every cgroup known now (no rescan).
    #[must_use]
    pub fn all(&self) -> Vec<Cgroup> {
        self.by_id
            .iter()
            .map(|(&id, path)| Cgroup {
                id,
                path: path.clone(),
            })
            .collect()
    }

    /// The path of a cgroup id. An id not known yet (a cgroup first seen in
    /// a record, made between two inotify events being handled) rescans
    /// the tree, at most once a second: a burst of records from cgroups
    /// already gone costs one walk, not one each.
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        if self.scanned.elapsed() < self.rescan_every {
            return None;
        }
        self.rescan();
        self.by_id.get(&id).cloned()
    }

    /// Records a new directory; returns its cgroup.
    pub fn added(&mut self, dir: &Path) -> Option<Cgroup> {
        let id = std::fs::metadata(dir).ok()?.ino();
        let path = relative(&self.mount, dir);
        self.by_id.insert(id, path.clone());
        Some(Cgroup { id, path })
    }

    /// Forgets a removed directory; returns its id if it was known.
    pub fn removed(&mut self, dir: &Path) -> Option<u64> {
        let path = relative(&self.mount, dir);
        let id = self
            .by_id
            .iter()
            .find(|(_, p)| **p == path)
            .map(|(id, _)| *id)?;
        self.by_id.remove(&id);
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_and_matches_by_glob_and_unit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for p in [
            "system.slice/crm.service",
            "system.slice/other.service",
            "kubepods/pod-a/c1",
            "kubepods/pod-b/c2",
            "user.slice/user-1000.slice/user@1000.service/app.slice/crm.service",
        ] {
            std::fs::create_dir_all(root.join(p)).unwrap();
        }
        let config = Config::from_toml(
            r#"
[[tenant]]
id = "acme"
allowed = ["EEA"]
[[workload]]
name = "crm"
role = "crm-sync"
tenants = ["acme"]
unit = "crm.service"
[[workload]]
name = "pods"
role = "llm"
tenants = ["acme"]
cgroup = ["/kubepods/*/c*"]
"#,
            "t",
        )
        .unwrap();
        let all = scan(root);
        assert!(all.iter().any(|c| c.path == "/"));
        let got: HashMap<String, u32> = all
            .iter()
            .filter_map(|c| {
                workload_for(&config, &c.path, &PodsByUid::new()).map(|i| (c.path.clone(), i))
            })
            .collect();
        assert_eq!(got.get("/system.slice/crm.service"), Some(&1));
        assert_eq!(got.get("/kubepods/pod-a/c1"), Some(&2));
        assert_eq!(got.get("/kubepods/pod-b/c2"), Some(&2));
        assert_eq!(got.get("/kubepods/pod-a"), None, "globs do not cross '/'");
        assert_eq!(
            got.get("/user.slice/user-1000.slice/user@1000.service/app.slice/crm.service"),
            None,
            "any user can name a unit crm.service; units under /user.slice are not matched"
        );
        assert_eq!(got.len(), 3);
        assert_eq!(assignments(&config, &all, &PodsByUid::new()).len(), 3);

        let (mut tree, _) = Tree::new(root);
        let c1 = all.iter().find(|c| c.path == "/kubepods/pod-a/c1").unwrap();
        assert_eq!(tree.path_of(c1.id).as_deref(), Some("/kubepods/pod-a/c1"));
        // An id first seen in a record: found by rescanning, but not more
        // often than allowed.
        std::fs::create_dir(root.join("kubepods/pod-b/c4")).unwrap();
        let c4 = std::fs::metadata(root.join("kubepods/pod-b/c4"))
            .unwrap()
            .ino();
        assert_eq!(tree.path_of(c4), None, "rescanned less than a second ago");
        tree.set_rescan_interval(Duration::ZERO);
        assert_eq!(tree.path_of(c4).as_deref(), Some("/kubepods/pod-b/c4"));
        std::fs::create_dir(root.join("kubepods/pod-a/c3")).unwrap();
        let added = tree.added(&root.join("kubepods/pod-a/c3")).unwrap();
        assert_eq!(
            workload_for(&config, &added.path, &PodsByUid::new()),
            Some(2)
        );
        assert_eq!(
            tree.removed(&root.join("kubepods/pod-a/c3")),
            Some(added.id)
        );
    }

    #[test]
    fn a_pods_own_cgroup_takes_its_workload_and_containers_do_not() {
        let config = Config::from_toml(
            r#"
[kubernetes]
[[tenant]]
id = "acme"
allowed = ["EEA"]
[[workload]]
name = "vllm"
role = "llm"
tenants = ["acme"]
namespace = "inference"
"#,
            "t",
        )
        .unwrap();
        let uid = "0f2b7c1e-9d4a-4e8b-a1c2-3d4e5f607182";
        let mut pods = PodsByUid::new();
        pods.insert(
            uid.to_owned(),
            Arc::new(PodFacts {
                namespace: "inference".to_owned(),
                ..PodFacts::default()
            }),
        );
        let pod = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        );
        let ctr = format!("{pod}/cri-containerd-{}.scope", "a".repeat(64));
        assert_eq!(workload_for(&config, &pod, &pods), Some(1));
        assert_eq!(
            workload_for(&config, &ctr, &pods),
            None,
            "covered through its pod"
        );
        assert_eq!(
            workload_for(&config, &pod, &PodsByUid::new()),
            None,
            "not named yet"
        );
        let other = Config::from_toml(
            "[kubernetes]\n[[tenant]]\nid = \"acme\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"acme\"]\nnamespace = \"batch\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(workload_for(&other, &pod, &pods), None);
    }
}
