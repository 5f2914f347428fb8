//! Namespace labels from the Kubernetes API: the one thing about a pod the
//! container runtime does not tell.
//!
//! Its place in the data flow: a connection's cgroup leads to its pod
//! (`residency-pods`), the node's container runtime names the pod, its
//! namespace and its labels; a workload selector may also name labels of
//! the pod's *namespace*, which only the API server knows. When the daemon
//! runs with a service account (as the `DaemonSet` in `kubernetes/` does),
//! [`watch_namespaces`] lists namespaces once, then watches them, and keeps
//! a shared map from namespace name to labels current; the enrichment stage
//! reads it with [`NamespaceLabels::get`].
//!
//! The API server is trusted for what it says, not for how much: the map
//! keeps at most [`Limits::max_namespaces`] namespaces and
//! [`Limits::max_labels`] labels each, so a hostile or broken answer cannot
//! grow the daemon without bound. Errors (an unreachable server, a refused
//! token, an answer that does not parse, an expired watch) are logged and
//! retried with exponential backoff; the labels already known stay until a
//! new complete list replaces them.
#![forbid(unsafe_code)]

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use tracing::{debug, info, warn};

/// Where the service account's token is mounted in a pod.
const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// Why the watch could not start. Once started, errors are retried, not
/// returned.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "not running with a Kubernetes service account (KUBERNETES_SERVICE_HOST, \
         KUBERNETES_SERVICE_PORT and {SERVICE_ACCOUNT_TOKEN} are needed): {0}"
    )]
    InCluster(#[from] kube::config::InClusterError),
    #[error("cannot use the kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        source: kube::config::KubeconfigError,
    },
    #[error("cannot make a Kubernetes API client: {0}")]
    Client(#[from] kube::Error),
}

/// How to reach the API server.
#[derive(Debug, Clone)]
pub enum Source {
    /// The pod's service account: the in-cluster environment variables,
    /// token and CA certificate.
    InCluster,
    /// A kubeconfig file, its current context (tests, or a daemon run
    /// outside the cluster).
    Kubeconfig(PathBuf),
}

/// What is kept of an answer, at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Namespaces; further ones are not kept (and logged).
    pub max_namespaces: usize,
    /// Labels per namespace; the first ones by key are kept.
    pub max_labels: usize,
    /// A label key's length (Kubernetes allows a 253-byte prefix, `/` and
    /// a 63-byte name); longer keys are dropped.
    pub max_key_len: usize,
    /// A label value's length (63 in Kubernetes); longer values are dropped.
    pub max_value_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_namespaces: 10_000,
            max_labels: 64,
            max_key_len: 317,
            max_value_len: 63,
        }
    }
}

/// How the watch behaves; [`watch_namespaces`] uses the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    pub limits: Limits,
    /// The first wait after an error; it doubles on each further error.
    pub backoff_initial: Duration,
    /// The longest wait between retries.
    pub backoff_max: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Labels of one namespace.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Default)]
struct Shared {
    namespaces: HashMap<String, Labels>,
    synced: bool,
}

/// Namespace name to labels, kept current by [`watch_namespaces`]. Cheap to
/// clone; every clone sees the same map.
#[derive(Debug, Clone, Default)]
pub struct NamespaceLabels {
    shared: Arc<RwLock<Shared>>,
}

impl NamespaceLabels {
    /// The labels of `namespace`, if the API server has told of it.
    #[must_use]
    pub fn get(&self, namespace: &str) -> Option<Labels> {
        self.read(|s| s.namespaces.get(namespace).cloned())
    }

    /// How many namespaces are known.
    #[must_use]
    pub fn len(&self) -> usize {
        self.read(|s| s.namespaces.len())
    }

    /// Whether no namespace is known.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a complete list has been received (until then, a namespace
    /// not found may simply not have been listed yet).
    #[must_use]
    pub fn synced(&self) -> bool {
        self.read(|s| s.synced)
    }

    fn read<T>(&self, f: impl FnOnce(&Shared) -> T) -> T {
        // A writer that panicked left a map that is still whole (each
        // change is one insert, remove or swap): keep using it.
        f(&self.shared.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
        f(&mut self.shared.write().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Whether the daemon runs with a service account: the in-cluster
/// environment variables are set and the token file exists.
#[must_use]
pub fn in_cluster() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some_and(|v| !v.is_empty())
        && std::env::var_os("KUBERNETES_SERVICE_PORT").is_some_and(|v| !v.is_empty())
        && Path::new(SERVICE_ACCOUNT_TOKEN).is_file()
}

/// Starts a task that lists, then watches, namespaces and keeps the map
/// current, with the default [`WatchOptions`]. See [`watch_namespaces_with`].
///
/// # Errors
/// When no client can be made from `source`.
pub async fn watch_namespaces(
    source: Source,
) -> Result<(NamespaceLabels, tokio::sync::watch::Receiver<u64>), KubeError> {
    watch_namespaces_with(source, WatchOptions::default()).await
}

/// Starts a task that lists, then watches, namespaces and keeps the map
/// current. Returns the map and a receiver whose value (a change count)
/// changes on every change of the map, the first complete list included.
///
/// The task runs on the current tokio runtime until every receiver is
/// dropped. Errors are logged and retried with backoff; the labels already
/// known are kept until a new complete list replaces them. An expired
/// watch (410 Gone) starts over with a new list.
///
/// # Errors
/// When no client can be made from `source` (no service account, an
/// unreadable kubeconfig). Nothing is asked of the API server before the
/// task runs, so an unreachable one is not an error here.
pub async fn watch_namespaces_with(
    source: Source,
    options: WatchOptions,
) -> Result<(NamespaceLabels, tokio::sync::watch::Receiver<u64>), KubeError> {
    let config = match &source {
        Source::InCluster => kube::Config::incluster()?,
        Source::Kubeconfig(path) => {
            let err = |source| KubeError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
    };
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config)?;
    let labels = NamespaceLabels::default();
    let (tx, rx) = tokio::sync::watch::channel(0_u64);
    let task = Task {
        labels: labels.clone(),
        tx,
        limits: options.limits,
        pending: None,
        over_cap: 0,
    };
    info!(%server, "watching namespaces for their labels");
    tokio::spawn(task.run(client, options));
    Ok((labels, rx))
}

/// The watching task's state.
struct Task {
    labels: NamespaceLabels,
    tx: tokio::sync::watch::Sender<u64>,
    limits: Limits,
    /// A list in progress: it replaces the map whole once complete, so a
    /// list that fails halfway loses nothing already known.
    pending: Option<HashMap<String, Labels>>,
    /// Namespaces not kept for the cap, since the last complete list.
    over_cap: u64,
}

impl Task {
    async fn run(mut self, client: Client, options: WatchOptions) {
        let api: Api<Namespace> = Api::all(client);
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()));
        let mut delay = options.backoff_initial;
        loop {
            let event = tokio::select! {
                () = self.tx.closed() => {
                    debug!("namespace watch: no one is listening any more; stopping");
                    return;
                }
                event = events.next() => event,
            };
            match event {
                Some(Ok(event)) => {
                    // Progress resets the backoff; the Init that starts every
                    // list attempt is not progress (a server that fails every
                    // list would otherwise be asked again at the first delay).
                    if !matches!(event, watcher::Event::Init) {
                        delay = options.backoff_initial;
                    }
                    self.apply(event);
                }
                Some(Err(e)) => {
                    warn!(
                        error = %e,
                        retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                        known = self.labels.len(),
                        "namespace watch failed; retrying, and keeping the labels already known"
                    );
                    tokio::select! {
                        () = self.tx.closed() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(options.backoff_max);
                }
                None => {
                    // The watcher retries for ever; it does not end.
                    warn!("namespace watch ended; namespace labels are no longer updated");
                    return;
                }
            }
        }
    }

    fn apply(&mut self, event: watcher::Event<Namespace>) {
        match event {
            watcher::Event::Init => {
                self.pending = Some(HashMap::new());
                self.over_cap = 0;
            }
            watcher::Event::InitApply(ns) => {
                if let Some((name, labels)) = self.kept(ns)
                    && let Some(pending) = self.pending.as_mut()
                {
                    if pending.len() < self.limits.max_namespaces || pending.contains_key(&name) {
                        pending.insert(name, labels);
                    } else {
                        self.over_cap += 1;
                    }
                }
            }
            watcher::Event::InitDone => {
                let listed = self.pending.take().unwrap_or_default();
                let count = listed.len();
                let first = self.labels.write(|s| {
                    s.namespaces = listed;
                    !std::mem::replace(&mut s.synced, true)
                });
                if self.over_cap > 0 {
                    warn!(
                        kept = count,
                        not_kept = self.over_cap,
                        cap = self.limits.max_namespaces,
                        "more namespaces than the cap; the others' labels are unknown"
                    );
                }
                if first {
                    info!(namespaces = count, "namespace labels synced");
                } else {
                    debug!(namespaces = count, "namespaces listed again");
                }
                self.changed();
            }
            watcher::Event::Apply(ns) => {
                let Some((name, labels)) = self.kept(ns) else {
                    return;
                };
                let max = self.limits.max_namespaces;
                let changed = self.labels.write(|s| {
                    if s.namespaces.get(&name) == Some(&labels) {
                        return Some(false);
                    }
                    if s.namespaces.len() >= max && !s.namespaces.contains_key(&name) {
                        return None;
                    }
                    s.namespaces.insert(name.clone(), labels);
                    Some(true)
                });
                match changed {
                    Some(true) => {
                        debug!(namespace = %name, "namespace labels changed");
                        self.changed();
                    }
                    Some(false) => {}
                    None => {
                        self.over_cap += 1;
                        // Once per power of two: a flood does not flood the log.
                        if self.over_cap.is_power_of_two() {
                            warn!(
                                namespace = %name,
                                not_kept = self.over_cap,
                                cap = max,
                                "more namespaces than the cap; this one's labels are unknown"
                            );
                        }
                    }
                }
            }
            watcher::Event::Delete(ns) => {
                let Some(name) = ns.metadata.name else {
                    return;
                };
                if self.labels.write(|s| s.namespaces.remove(&name).is_some()) {
                    debug!(namespace = %name, "namespace deleted");
                    self.changed();
                }
            }
        }
    }

    /// A namespace's name and the labels kept of it, within the limits;
    /// `None` for a namespace without a usable name.
    fn kept(&self, ns: Namespace) -> Option<(String, Labels)> {
        let name = ns.metadata.name.filter(|n| !n.is_empty() && n.len() <= 253);
        let Some(name) = name else {
            warn!("the API server sent a namespace without a usable name; ignored");
            return None;
        };
        let all = ns.metadata.labels.unwrap_or_default();
        let total = all.len();
        let labels: Labels = all
            .into_iter()
            .filter(|(k, v)| {
                !k.is_empty()
                    && k.len() <= self.limits.max_key_len
                    && v.len() <= self.limits.max_value_len
            })
            .take(self.limits.max_labels)
            .collect();
        if labels.len() < total {
            warn!(
                namespace = %name,
                labels = total,
                kept = labels.len(),
                "namespace has labels over the limits (count or length); the others are not kept"
            );
        }
        Some((name, labels))
    }

    fn changed(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn ns(name: &str, labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    fn task(limits: Limits) -> (Task, tokio::sync::watch::Receiver<u64>) {
        let (tx, rx) = tokio::sync::watch::channel(0);
        let task = Task {
            labels: NamespaceLabels::default(),
            tx,
            limits,
            pending: None,
            over_cap: 0,
        };
        (task, rx)
    }

    #[test]
    fn a_list_replaces_the_map_only_once_complete() {
        let (mut t, rx) = task(Limits::default());
        t.apply(watcher::Event::Init);
        t.apply(watcher::Event::InitApply(ns("a", &[("team", "x")])));
        assert!(!t.labels.synced());
        assert_eq!(t.labels.len(), 0, "nothing until the list is complete");
        t.apply(watcher::Event::InitDone);
        assert!(t.labels.synced());
        assert_eq!(t.labels.get("a").unwrap()["team"], "x");
        assert_eq!(*rx.borrow(), 1);

        // A new list that fails halfway (Init, some items, then Init again)
        // leaves the old map in place.
        t.apply(watcher::Event::Init);
        t.apply(watcher::Event::InitApply(ns("b", &[])));
        assert_eq!(t.labels.get("a").unwrap()["team"], "x");
        t.apply(watcher::Event::Init);
        t.apply(watcher::Event::InitApply(ns("c", &[])));
        t.apply(watcher::Event::InitDone);
        assert_eq!(t.labels.get("a"), None, "gone from the complete list");
        assert_eq!(t.labels.get("b"), None, "only in the abandoned list");
        assert!(t.labels.get("c").is_some());
    }

    #[test]
    fn apply_and_delete_notify_only_on_change() {
        let (mut t, rx) = task(Limits::default());
        t.apply(watcher::Event::Apply(ns("a", &[("k", "v")])));
        assert_eq!(*rx.borrow(), 1);
        t.apply(watcher::Event::Apply(ns("a", &[("k", "v")])));
        assert_eq!(*rx.borrow(), 1, "the same labels again: no change");
        t.apply(watcher::Event::Apply(ns("a", &[("k", "w")])));
        assert_eq!(*rx.borrow(), 2);
        t.apply(watcher::Event::Delete(ns("a", &[])));
        assert_eq!(*rx.borrow(), 3);
        assert!(t.labels.is_empty());
        t.apply(watcher::Event::Delete(ns("a", &[])));
        assert_eq!(*rx.borrow(), 3);
    }

    #[test]
    fn caps_hold_against_a_hostile_answer() {
        let limits = Limits {
            max_namespaces: 2,
            max_labels: 2,
            max_key_len: 10,
            max_value_len: 5,
        };
        let (mut t, _rx) = task(limits);
        t.apply(watcher::Event::Init);
        for i in 0..100 {
            t.apply(watcher::Event::InitApply(ns(&format!("n{i}"), &[])));
        }
        t.apply(watcher::Event::InitDone);
        assert_eq!(t.labels.len(), 2);
        t.apply(watcher::Event::Apply(ns("more", &[])));
        assert_eq!(t.labels.len(), 2);
        assert!(t.labels.get("more").is_none());
        // An update of a kept one still applies, with its labels cut.
        t.apply(watcher::Event::Apply(ns(
            "n0",
            &[
                ("a", "1"),
                ("b", "too-long-value"),
                ("a-very-long-key", "1"),
                ("c", "3"),
                ("d", "4"),
            ],
        )));
        let got = t.labels.get("n0").unwrap();
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            [("a".into(), "1".into()), ("c".into(), "3".into())]
        );
        t.apply(watcher::Event::Apply(ns("", &[])));
        assert_eq!(t.labels.len(), 2);
    }
}
