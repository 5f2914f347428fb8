//! The pod stage: which Kubernetes pod and container each cgroup belongs
//! to, on a node (`[kubernetes]`).
//!
//! kubelet makes a cgroup per pod and the runtime one per container below
//! it; [`residency_pods::parse`] reads the pod UID and container id from a
//! path. The container runtime names them: a task here asks it over the
//! CRI socket (`ListPodSandbox`, `ListContainers`) at start, whenever the
//! control task sees a pod's cgroup it does not know yet (retrying quickly
//! while the runtime catches up: the cgroup appears before the runtime
//! lists its sandbox), and every [`RESYNC`] in between. Each answer
//! replaces the shared [`Directory`], and the control task is told, so that
//! a new pod's own cgroup gets its workload's policy in the kernel, which
//! covers every container below it from its first call. The writer names
//! each record's pod and container from the same directory.
//!
//! No API-server permission is needed for any of this: the runtime answers
//! on the node. Namespace labels, which the runtime does not carry, come
//! from the optional namespace watch (`residency-kube`).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use residency_pods::cri::{Container, Cri, Pod};
use residency_record::{ContainerInfo, PodInfo};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::{config::PodFacts, workloads::PodsByUid};

/// How often the runtime is asked even when nothing new was seen (pods
/// that ended, missed events).
pub const RESYNC: Duration = Duration::from_secs(10);
/// How long each CRI call may take.
pub const CRI_TIMEOUT: Duration = Duration::from_secs(5);
/// After the runtime could not be reached, the next attempt.
const RECONNECT: Duration = Duration::from_secs(5);
/// While a seen pod is not listed yet: the first retry, doubled up to
/// [`RETRY_MAX`] while the pod is new (the runtime lists a sandbox only
/// when `RunPodSandbox` is done, tens of milliseconds after its cgroup
/// appears), then every [`RETRY_SLOW`], for at most [`GIVE_UP`]. A listing
/// costs the runtime about a millisecond per 10 pods.
const RETRY_FIRST: Duration = Duration::from_millis(2);
const RETRY_MAX: Duration = Duration::from_millis(10);
const FAST_FOR: Duration = Duration::from_secs(2);
const RETRY_SLOW: Duration = Duration::from_millis(250);
const GIVE_UP: Duration = Duration::from_mins(1);

/// What the node runs, as the runtime last said.
#[derive(Debug, Default)]
pub struct Directory {
    /// Bumped at every change.
    pub generation: u64,
    /// By pod UID, for selection.
    pub facts: PodsByUid,
    /// By pod UID: the record's view, without a container.
    pods: HashMap<String, Arc<PodInfo>>,
    /// By container id (sandboxes included): the record's view.
    containers: HashMap<String, Arc<PodInfo>>,
}

/// Shared between the pod task (which writes), the control task and the
/// writer (which read).
pub type SharedPods = Arc<RwLock<Directory>>;

impl Directory {
    /// Built from the runtime's lists; `namespace_labels` says what the
    /// namespace watch knows.
    #[must_use]
    pub fn build(
        pods: &[Pod],
        containers: &[Container],
        namespace_labels: &dyn Fn(&str) -> Option<BTreeMap<String, String>>,
    ) -> Self {
        let mut d = Directory::default();
        let mut by_sandbox: HashMap<&str, &Pod> = HashMap::new();
        // A pod whose sandbox is being replaced has a not-ready one as
        // well: the ready one names the pod (it comes last).
        let mut ordered: Vec<&Pod> = pods.iter().collect();
        ordered.sort_by_key(|p| (p.ready, p.created_ns));
        for p in ordered {
            let info = Arc::new(PodInfo {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                uid: p.uid.clone(),
                labels: p.labels.clone(),
                container: None,
            });
            d.facts.insert(
                p.uid.clone(),
                Arc::new(PodFacts {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    labels: p.labels.clone(),
                    namespace_labels: namespace_labels(&p.namespace),
                }),
            );
            // A sandbox's own cgroup (the pause process) is the pod's.
            d.containers.insert(p.sandbox_id.clone(), info.clone());
            d.pods.insert(p.uid.clone(), info);
            by_sandbox.insert(p.sandbox_id.as_str(), p);
        }
        for c in containers {
            let Some(p) = by_sandbox.get(c.sandbox_id.as_str()) else {
                continue;
            };
            d.containers.insert(
                c.id.clone(),
                Arc::new(PodInfo {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    uid: p.uid.clone(),
                    labels: p.labels.clone(),
                    container: Some(ContainerInfo {
                        id: c.id.clone(),
                        name: c.name.clone(),
                        image: c.image.clone(),
                    }),
                }),
            );
        }
        d
    }

    /// Whether the two say the same of every pod and container.
    fn same_as(&self, other: &Directory) -> bool {
        self.facts == other.facts && self.containers == other.containers
    }

    /// The pod (and container) a cgroup path is in, if it is a pod's and
    /// the runtime has named it. A container the runtime has not listed
    /// yet still gives its pod.
    #[must_use]
    pub fn resolve(&self, path: &str) -> Option<Arc<PodInfo>> {
        let cg = residency_pods::parse(path)?;
        if let Some(c) = &cg.container
            && let Some(info) = self.containers.get(&c.id)
        {
            return Some(info.clone());
        }
        self.pods.get(&cg.uid).cloned()
    }

    /// Whether the pod of a path (and its container, if it names one) is
    /// known.
    #[must_use]
    pub fn knows(&self, uid: &str, container: Option<&str>) -> bool {
        self.pods.contains_key(uid) && container.is_none_or(|c| self.containers.contains_key(c))
    }

    #[must_use]
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }
}

/// Cgroups whose pod the writer remembers.
const CACHED_CGROUPS: usize = 4096;

/// The writer's side: the pod of each record's cgroup, remembered per
/// cgroup id for as long as the directory does not change, so that a
/// record costs a lookup, not a parse of its cgroup path.
pub struct PodCache {
    directory: SharedPods,
    /// cgroup id -> (directory generation, pod).
    cache: lru::LruCache<u64, (u64, Option<Arc<PodInfo>>)>,
}

impl PodCache {
    #[must_use]
    pub fn new(directory: SharedPods) -> Self {
        PodCache {
            directory,
            cache: lru::LruCache::new(
                std::num::NonZeroUsize::new(CACHED_CGROUPS).unwrap_or(std::num::NonZeroUsize::MIN),
            ),
        }
    }

    /// The pod and container of cgroup `id`, whose path is `path`.
    pub fn get(&mut self, id: u64, path: &str) -> Option<Arc<PodInfo>> {
        let d = self
            .directory
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((generation, pod)) = self.cache.get(&id)
            && *generation == d.generation
        {
            return pod.clone();
        }
        let pod = d.resolve(path);
        self.cache.put(id, (d.generation, pod.clone()));
        pod
    }
}

/// A pod (and maybe container) seen in the cgroup tree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Seen {
    pub uid: String,
    pub container: Option<String>,
}

impl Seen {
    /// The pod and container a cgroup path names, if it is a pod's. CRI-O's
    /// monitor cgroup names no container of the pod's.
    #[must_use]
    pub fn of(path: &str) -> Option<Seen> {
        let cg = residency_pods::parse(path)?;
        Some(Seen {
            uid: cg.uid,
            container: cg.container.filter(|c| !c.conmon).map(|c| c.id),
        })
    }
}

/// The control task's side: the directory, its changes, and where to say
/// that a pod was seen.
#[derive(Clone)]
pub struct PodLink {
    pub metrics: crate::metrics::PodMetrics,
    pub directory: SharedPods,
    pub changed: watch::Receiver<u64>,
    pub seen: mpsc::UnboundedSender<Seen>,
}

/// The namespace labels the watch keeps, if it runs.
pub type NamespaceLabels = Arc<dyn Fn(&str) -> Option<BTreeMap<String, String>> + Send + Sync>;

/// The pod task.
pub struct PodTask {
    pub socket: PathBuf,
    pub directory: SharedPods,
    pub changed: watch::Sender<u64>,
    pub seen: mpsc::UnboundedReceiver<Seen>,
    pub namespace_labels: NamespaceLabels,
    /// Fires when namespace labels change.
    pub namespaces_changed: Option<watch::Receiver<u64>>,
    pub metrics: crate::metrics::PodMetrics,
}

/// Makes the link and the task around one directory.
#[must_use]
pub fn link(
    socket: PathBuf,
    namespace_labels: NamespaceLabels,
    namespaces_changed: Option<watch::Receiver<u64>>,
    metrics: crate::metrics::PodMetrics,
) -> (PodLink, PodTask) {
    let directory: SharedPods = Arc::default();
    let (changed_tx, changed_rx) = watch::channel(0);
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    (
        PodLink {
            metrics: metrics.clone(),
            directory: directory.clone(),
            changed: changed_rx,
            seen: seen_tx,
        },
        PodTask {
            socket,
            directory,
            changed: changed_tx,
            seen: seen_rx,
            namespace_labels,
            namespaces_changed,
            metrics,
        },
    )
}

/// Runs until `shutdown` changes.
pub async fn run(mut t: PodTask, mut shutdown: watch::Receiver<bool>) {
    let mut cri: Option<Cri> = None;
    let mut said_unreachable = false;
    // Seen in the tree, not yet listed by the runtime: since when.
    let mut waiting: HashMap<Seen, Instant> = HashMap::new();
    let mut retry = RETRY_FIRST;
    let mut namespaces = t.namespaces_changed.take();
    // Whether to ask the runtime this time round (not when the only news
    // was of pods it has already named).
    let mut ask = true;
    loop {
        if cri.is_none() {
            match connect(&t.socket).await {
                Ok((c, version)) => {
                    info!(socket = %t.socket.display(), runtime = %version, "asking the container runtime which pod each cgroup is");
                    cri = Some(c);
                    said_unreachable = false;
                }
                Err(e) => {
                    if !said_unreachable {
                        warn!(
                            "{e}; records name no pod and pod selectors select nothing until it answers (retrying every {}s)",
                            RECONNECT.as_secs()
                        );
                        said_unreachable = true;
                    }
                    t.metrics.cri_errors.inc();
                }
            }
        }
        if ask
            && let Some(c) = cri.as_mut()
            && !refresh(&t, c, &mut waiting).await
        {
            cri = None;
        }
        ask = true;
        let wait = if cri.is_none() {
            RECONNECT
        } else if waiting.is_empty() {
            retry = RETRY_FIRST;
            RESYNC
        } else if waiting.values().all(|since| since.elapsed() > FAST_FOR) {
            RETRY_SLOW
        } else {
            let w = retry;
            retry = (retry * 2).min(RETRY_MAX);
            w
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            s = t.seen.recv() => {
                let Some(s) = s else { return };
                let mut fresh = vec![s];
                while let Ok(s) = t.seen.try_recv() {
                    fresh.push(s);
                }
                let d = t.directory.read().unwrap_or_else(std::sync::PoisonError::into_inner);
                let unknown: HashSet<Seen> = fresh
                    .into_iter()
                    .filter(|s| !d.knows(&s.uid, s.container.as_deref()))
                    .collect();
                drop(d);
                if unknown.is_empty() {
                    // Nothing to ask: wait again.
                    ask = false;
                    continue;
                }
                retry = RETRY_FIRST;
                let now = Instant::now();
                for s in unknown {
                    waiting.entry(s).or_insert(now);
                }
            }
            () = tokio::time::sleep(wait) => {}
            r = async {
                match namespaces.as_mut() {
                    Some(n) => n.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if r.is_err() {
                    namespaces = None;
                }
            }
        }
    }
}

/// Asks the runtime once and publishes the answer; `false` when the
/// connection failed and must be made again.
async fn refresh(t: &PodTask, c: &mut Cri, waiting: &mut HashMap<Seen, Instant>) -> bool {
    let started = Instant::now();
    match list(c).await {
        Ok((pods, containers, skipped)) => {
            t.metrics
                .cri_seconds
                .observe(started.elapsed().as_secs_f64());
            let n = i64::try_from(skipped.len()).unwrap_or(i64::MAX);
            // Said when it changes, not at every listing.
            if t.metrics.cri_skipped.get() != n {
                t.metrics.cri_skipped.set(n);
                if let Some(first) = skipped.first() {
                    warn!(
                        skipped = skipped.len(),
                        "the container runtime's answer has entries residency cannot use; they are \
                         left out (their flows name no pod): {first}{}",
                        if skipped.len() > 1 { " (and more)" } else { "" }
                    );
                }
            }
            let mut next = Directory::build(&pods, &containers, &*t.namespace_labels);
            let changed = {
                let mut d = t
                    .directory
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if d.same_as(&next) {
                    false
                } else {
                    next.generation = d.generation + 1;
                    *d = next;
                    true
                }
            };
            let d = t
                .directory
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            t.metrics
                .pods
                .set(i64::try_from(d.pod_count()).unwrap_or(i64::MAX));
            waiting.retain(|s, since| {
                !d.knows(&s.uid, s.container.as_deref()) && since.elapsed() < GIVE_UP
            });
            if changed {
                let _ = t.changed.send(d.generation);
            }
            true
        }
        Err(e) => {
            warn!(socket = %t.socket.display(), "the container runtime failed to list pods: {e}; reconnecting");
            t.metrics.cri_errors.inc();
            false
        }
    }
}

async fn connect(socket: &std::path::Path) -> Result<(Cri, String), String> {
    let mut c = Cri::connect(socket, CRI_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let v = c.version().await.map_err(|e| e.to_string())?;
    Ok((c, v))
}

/// The runtime's pods and containers, and the entries of its answers that
/// were skipped as malformed or beyond the caps (with why).
async fn list(c: &mut Cri) -> Result<(Vec<Pod>, Vec<Container>, Vec<String>), String> {
    let pods = c.pods().await.map_err(|e| e.to_string())?;
    let mut skipped: Vec<String> = c.skipped().iter().map(ToString::to_string).collect();
    let containers = c.containers().await.map_err(|e| e.to_string())?;
    skipped.extend(c.skipped().iter().map(ToString::to_string));
    Ok((pods, containers, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, ns: &str, sandbox: &str, labels: &[(&str, &str)]) -> Pod {
        Pod {
            uid: uid.to_owned(),
            name: format!("pod-{ns}"),
            namespace: ns.to_owned(),
            sandbox_id: sandbox.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            annotations: BTreeMap::new(),
            created_ns: 0,
            ready: true,
            attempt: 0,
            dropped: 0,
        }
    }

    #[test]
    fn resolves_pods_containers_and_sandboxes() {
        let uid = "0f2b7c1e-9d4a-4e8b-a1c2-3d4e5f607182";
        let sandbox = "a".repeat(64);
        let ctr = "b".repeat(64);
        let other = "c".repeat(64);
        let pods = [pod(uid, "inference", &sandbox, &[("app", "vllm")])];
        let containers = [Container {
            id: ctr.clone(),
            pod_uid: uid.to_owned(),
            sandbox_id: sandbox.clone(),
            name: "server".to_owned(),
            image: "docker.io/library/busybox:latest".to_owned(),
            image_ref: "sha256:00".to_owned(),
            attempt: 0,
            created_ns: 0,
            running: true,
        }];
        let ns = |n: &str| {
            (n == "inference").then(|| BTreeMap::from([("team".to_owned(), "ml".to_owned())]))
        };
        let d = Directory::build(&pods, &containers, &ns);
        let base = format!("/kubepods/besteffort/pod{uid}");
        let c = d.resolve(&format!("{base}/{ctr}")).unwrap();
        assert_eq!(c.namespace, "inference");
        assert_eq!(c.container.as_ref().unwrap().name, "server");
        let s = d.resolve(&format!("{base}/{sandbox}")).unwrap();
        assert!(s.container.is_none(), "the sandbox is the pod's own");
        let unlisted = d.resolve(&format!("{base}/{other}")).unwrap();
        assert_eq!(
            unlisted.uid, uid,
            "a container not listed yet still has its pod"
        );
        assert!(unlisted.container.is_none());
        assert!(d.resolve("/system.slice/x.service").is_none());
        assert!(d.knows(uid, Some(&ctr)));
        assert!(!d.knows(uid, Some(&other)));
        assert_eq!(
            d.facts[uid].namespace_labels.as_ref().unwrap()["team"],
            "ml"
        );
        let again = Directory::build(&pods, &containers, &ns);
        assert!(d.same_as(&again));
        let relabelled = Directory::build(
            &[pod(uid, "inference", &sandbox, &[("app", "x")])],
            &containers,
            &ns,
        );
        assert!(!d.same_as(&relabelled));
    }
}
