//! The control path at run time: a new configuration (SIGHUP, or the file
//! changed), exceptions expiring, and cgroups appearing or going.
//!
//! A new configuration is validated and compiled off to the side and
//! installed as a new policy generation in one switch ([`PolicyMaps`]). A
//! file that fails validation is refused with a `policy-refused` record and
//! the policy in force stays: nothing but a valid file changes it. No API
//! and no signal can loosen a running policy by itself.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt as _;
use inotify::{EventMask, Inotify, WatchMask};
use tokio::sync::{mpsc::UnboundedSender, watch};
use tracing::{error, info, warn};

use residency_record::{Lifecycle, PolicyLoaded, Record};

use crate::{
    config::{Config, ConfigError},
    geodb::FileIdentity,
    identity::SharedTree,
    kernel::PolicyMaps,
    policy::{self, Versions},
    workloads::{self, Tree},
};

/// Reads the configuration file, refusing one that anyone but root could
/// change or replace (see [`crate::trust`]): the policy is only as
/// trustworthy as the file it comes from. With `locked` false
/// (`--allow-insecure-config`, for development) it only reads.
///
/// # Errors
/// A [`ConfigError`] saying who can change it and how to fix that, or why
/// it cannot be read or parsed.
pub fn read_config(path: &Path, locked: bool) -> Result<Config, ConfigError> {
    if !locked {
        return Config::from_file(path);
    }
    let source = path.display().to_string();
    let err = |message: String| ConfigError::file(source.clone(), message);
    let mut file = crate::trust::open(path).map_err(|e| err(e.to_string()))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text)
        .map_err(|e| err(format!("cannot read the file: {e}")))?;
    Config::from_toml(&text, &source)
}

/// Everything the control task owns.
pub struct Control {
    pub maps: Option<PolicyMaps>,
    /// The configuration file (`None`: the built-in one, never reloaded).
    pub path: Option<PathBuf>,
    pub identity: FileIdentity,
    pub current: Arc<Config>,
    /// Whether the programs were loaded able to block.
    pub may_block: bool,
    /// Whether they are attached to the cgroup2 root (a reload must pass
    /// the same interlock as the start).
    pub at_root: bool,
    /// Refuse files others can change (see [`crate::trust`]).
    pub locked: bool,
    /// Shared with the writer, which names each record's cgroup.
    pub tree: SharedTree,
    pub versions: Arc<Versions>,
    pub notes: UnboundedSender<Record>,
    pub reload: watch::Receiver<u64>,
    pub interval: Duration,
    /// When the generation in force was compiled (which exceptions it has).
    pub compiled_at: jiff::Timestamp,
    /// After a failed install, not before this.
    pub retry_after: Option<std::time::Instant>,
    /// The pod stage, with `[kubernetes]`.
    pub pods: Option<crate::pods::PodLink>,
    /// Pods' own cgroups listed in the live map, with their policy index.
    pub pod_assigned: std::collections::HashMap<u64, u32>,
}

impl Control {
    /// The pods the runtime has named, for selection (empty without
    /// `[kubernetes]`).
    fn pod_facts(&self) -> workloads::PodsByUid {
        self.pods.as_ref().map_or_else(Default::default, |p| {
            p.directory
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .facts
                .clone()
        })
    }
}

/// After a failed install, the next attempt waits at least this long.
const RETRY: Duration = Duration::from_secs(5);

/// Runs until `shutdown` changes.
pub async fn run(mut c: Control, mut shutdown: watch::Receiver<bool>) {
    let mount = lock(&c.tree).mount().to_path_buf();
    let mut events = start_watching(&mount);
    // Cgroups made between the start-up scan and the watches taking hold.
    reconcile(&mut c);
    loop {
        let now = jiff::Timestamp::now();
        // From when the generation in force was compiled: an exception that
        // expired since then (and whose removal failed) is retried.
        let until_expiry = policy::next_expiry(&c.current, c.compiled_at)
            .map_or(Duration::from_hours(24), |t| {
                Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO)
            })
            .max(
                c.retry_after
                    .map(|t| t.saturating_duration_since(std::time::Instant::now()))
                    .unwrap_or_default(),
            );
        tokio::select! {
            _ = shutdown.changed() => return,
            r = c.reload.changed() => {
                if r.is_err() {
                    return;
                }
                c = reload(c, "SIGHUP").await;
            }
            () = tokio::time::sleep(c.interval) => {
                if let Some(path) = &c.path
                    && FileIdentity::of(path) != c.identity
                {
                    c = reload(c, "the file changed").await;
                }
            }
            () = tokio::time::sleep(until_expiry) => {
                c = reinstall_for_expiry(c).await;
            }
            r = pods_changed(&mut c.pods) => {
                if r {
                    pod_sync(&mut c);
                }
            }
            ev = next_event(&mut events) => {
                match ev {
                    Some(Event::Dir(mask, dir)) => cgroup_event(&mut c, &mut events, mask, &dir),
                    Some(Event::Overflow) => {
                        warn!("the kernel dropped cgroup events (inotify queue full); rescanning");
                        events = start_watching(&mount);
                        reconcile(&mut c);
                    }
                    None => {}
                }
            }
        }
    }
}

type Events = (
    inotify::EventStream<Vec<u8>>,
    std::collections::HashMap<inotify::WatchDescriptor, PathBuf>,
);

fn start_watching(mount: &Path) -> Option<Events> {
    match watch_tree(mount) {
        Ok(e) => Some(e),
        Err(e) => {
            warn!(
                "cannot watch the cgroup tree ({e}); new cgroups are picked up at the next reload"
            );
            None
        }
    }
}

/// Lists in the kernel every cgroup that selects a workload now, and
/// forgets those that no longer exist: for cgroups whose events were missed.
fn reconcile(c: &mut Control) {
    let all = lock(&c.tree).rescan();
    let facts = c.pod_facts();
    let want = workloads::assignments(&c.current, &all, &facts);
    if let Some(maps) = c.maps.as_mut() {
        match maps.sync_cgroups(&want) {
            Ok(0) => {}
            Ok(n) => info!(changed = n, "cgroup selections brought up to date"),
            Err(e) => warn!("cannot bring the cgroup selections up to date: {e}"),
        }
    }
    c.pod_assigned = pod_wants(&c.current, &all, &facts);
    if let Some(p) = &c.pods {
        // Pods whose cgroups were made while nobody watched.
        for s in all.iter().filter_map(|cg| crate::pods::Seen::of(&cg.path)) {
            let _ = p.seen.send(s);
        }
    }
}

/// Resolves when the pod directory changed (`true`), or never without one.
async fn pods_changed(pods: &mut Option<crate::pods::PodLink>) -> bool {
    match pods.as_mut() {
        Some(p) => {
            if p.changed.changed().await.is_ok() {
                true
            } else {
                // The pod task ended (said so itself); nothing more comes.
                *pods = None;
                false
            }
        }
        None => std::future::pending().await,
    }
}

/// The policy index of every pod's own cgroup that selects a workload.
fn pod_wants(
    config: &Config,
    all: &[workloads::Cgroup],
    facts: &workloads::PodsByUid,
) -> std::collections::HashMap<u64, u32> {
    all.iter()
        .filter(|cg| workloads::pod_of(config, &cg.path, facts).is_some())
        .filter_map(|cg| workloads::workload_for(config, &cg.path, facts).map(|i| (cg.id, i)))
        .collect()
}

/// The runtime named new pods (or forgot some): their own cgroups get
/// their workloads' policies, and those of pods that no longer select one
/// lose it.
fn pod_sync(c: &mut Control) {
    let facts = c.pod_facts();
    let all = lock(&c.tree).all();
    let want = pod_wants(&c.current, &all, &facts);
    let Some(maps) = c.maps.as_mut() else {
        return;
    };
    let paths: std::collections::HashMap<u64, &str> =
        all.iter().map(|cg| (cg.id, cg.path.as_str())).collect();
    for (&id, &index) in &want {
        if c.pod_assigned.get(&id) == Some(&index) {
            continue;
        }
        let path = paths.get(&id).copied().unwrap_or_default();
        let workload = c
            .current
            .workload_of(u16::try_from(index).unwrap_or(0))
            .map(|w| w.name.as_str());
        let pod = workloads::pod_of(&c.current, path, &facts);
        match maps.add_cgroup(id, index) {
            Ok(()) => info!(
                cgroup = %path,
                namespace = pod.map(|p| p.namespace.as_str()),
                pod = pod.map(|p| p.name.as_str()),
                workload,
                "pod selects a workload"
            ),
            Err(e) => warn!(cgroup = %path, "cannot add a pod's cgroup to the policy maps: {e}"),
        }
    }
    for id in c.pod_assigned.keys().filter(|id| !want.contains_key(id)) {
        maps.remove_cgroup(*id);
    }
    if let Some(p) = &c.pods {
        p.metrics
            .pods_selected
            .set(i64::try_from(want.len()).unwrap_or(i64::MAX));
    }
    c.pod_assigned = want;
}

fn watch_tree(mount: &Path) -> std::io::Result<Events> {
    let inotify = Inotify::init()?;
    let stream = inotify.into_event_stream(vec![0u8; 16 * 1024])?;
    let mut dirs = std::collections::HashMap::new();
    for c in workloads::scan(mount) {
        let dir = mount.join(c.path.trim_start_matches('/'));
        if let Ok(wd) = stream.watches().add(&dir, mask()) {
            dirs.insert(wd, dir);
        }
    }
    Ok((stream, dirs))
}

fn mask() -> WatchMask {
    WatchMask::CREATE | WatchMask::DELETE | WatchMask::ONLYDIR | WatchMask::DONT_FOLLOW
}

enum Event {
    /// A directory was made or removed.
    Dir(EventMask, PathBuf),
    /// The kernel's queue overflowed: events were lost.
    Overflow,
}

async fn next_event(events: &mut Option<Events>) -> Option<Event> {
    let Some((stream, dirs)) = events.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        let ev = match stream.next().await {
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                warn!("cgroup events failed ({e}); new cgroups are picked up at the next reload");
                *events = None;
                return None;
            }
            None => {
                warn!("cgroup events ended; new cgroups are picked up at the next reload");
                *events = None;
                return None;
            }
        };
        if ev.mask.contains(EventMask::Q_OVERFLOW) {
            return Some(Event::Overflow);
        }
        if !ev.mask.contains(EventMask::ISDIR) {
            continue;
        }
        let (Some(parent), Some(name)) = (dirs.get(&ev.wd), ev.name) else {
            continue;
        };
        return Some(Event::Dir(ev.mask, parent.join(name)));
    }
}

fn cgroup_event(c: &mut Control, events: &mut Option<Events>, what: EventMask, dir: &Path) {
    if what.contains(EventMask::CREATE) {
        let facts = c.pod_facts();
        // The directory and anything made under it before the watch took.
        for sub in workloads::scan(dir) {
            let sub_dir = dir.join(sub.path.trim_start_matches('/'));
            if let Some((stream, dirs)) = events.as_mut()
                && let Ok(wd) = stream.watches().add(&sub_dir, mask())
            {
                dirs.insert(wd, sub_dir.clone());
            }
            let Some(cg) = lock(&c.tree).added(&sub_dir) else {
                continue;
            };
            if let Some(p) = &c.pods
                && let Some(seen) = crate::pods::Seen::of(&cg.path)
            {
                // The runtime is asked; when it names the pod, pod_sync
                // lists the pod's cgroup.
                let _ = p.seen.send(seen);
            }
            if let Some(index) = workloads::workload_for(&c.current, &cg.path, &facts)
                && let Some(maps) = c.maps.as_mut()
            {
                if workloads::pod_of(&c.current, &cg.path, &facts).is_some() {
                    c.pod_assigned.insert(cg.id, index);
                }
                match maps.add_cgroup(cg.id, index) {
                    Ok(()) => {
                        info!(cgroup = %cg.path, workload = ?c.current.workload_of(u16::try_from(index).unwrap_or(0)).map(|w| &w.name), "new cgroup selects a workload");
                    }
                    Err(e) => {
                        warn!(cgroup = %cg.path, "cannot add a cgroup to the policy maps: {e}");
                    }
                }
            }
        }
    } else if what.contains(EventMask::DELETE)
        && let Some(id) = lock(&c.tree).removed(dir)
        && let Some(maps) = c.maps.as_mut()
    {
        maps.remove_cgroup(id);
        c.pod_assigned.remove(&id);
    }
}

fn lock(tree: &SharedTree) -> std::sync::MutexGuard<'_, Tree> {
    tree.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A `policy-refused` record: the policy in force stays.
fn refused_note(message: String, fields: serde_json::Value) -> Record {
    Record::note(Lifecycle::PolicyRefused, message, fields)
}

async fn reload(mut c: Control, why: &str) -> Control {
    let Some(path) = c.path.clone() else {
        info!("{why}: the built-in configuration is in force; there is no file to reload");
        return c;
    };
    c.identity = FileIdentity::of(&path);
    let refused = |c: &Control, error: String| {
        warn!(path = %path.display(), "new configuration refused, the policy in force stays: {error}");
        let _ = c.notes.send(refused_note(
            format!("configuration {} was refused; the policy in force stays: {error}", path.display()),
            serde_json::json!({ "policy": { "path": path.display().to_string(), "error": error, "hash_in_force": c.current.hash } }),
        ));
    };
    let config = match read_config(&path, c.locked) {
        Ok(config) => config,
        Err(e) => {
            refused(&c, e.to_string());
            return c;
        }
    };
    if let Err(e) = config.check_enforce_interlock(c.at_root) {
        refused(&c, e.to_string());
        return c;
    }
    if config.may_block() && !c.may_block {
        refused(
            &c,
            "it enforces, but the running programs were loaded in monitor mode, with blocking \
             compiled out; restart the daemon to enforce"
                .to_owned(),
        );
        return c;
    }
    if config.kernel.cgroup != c.current.kernel.cgroup {
        warn!("kernel.cgroup changed; the programs stay attached where they are until a restart");
    }
    install(c, Arc::new(config), Lifecycle::PolicyLoaded).await
}

async fn reinstall_for_expiry(c: Control) -> Control {
    let now = jiff::Timestamp::now();
    // Only those in force in the generation being replaced.
    for e in c
        .current
        .exceptions
        .iter()
        .filter(|e| e.in_force(c.compiled_at) && !e.in_force(now))
    {
        warn!(exception = %e.name, "exception expired: it no longer applies");
    }
    let current = c.current.clone();
    install(c, current, Lifecycle::ExceptionExpired).await
}

async fn install(mut c: Control, config: Arc<Config>, action: Lifecycle) -> Control {
    let Some(maps) = c.maps.take() else {
        // Lost with a failed loader (said so then); nothing to retry.
        c.retry_after = Some(std::time::Instant::now() + Duration::from_hours(24));
        return c;
    };
    let now = jiff::Timestamp::now();
    let compiled = policy::compile(&config, now);
    let all = lock(&c.tree).rescan();
    let facts = c.pod_facts();
    let cgroups = workloads::assignments(&config, &all, &facts);
    let pod_cgroups = pod_wants(&config, &all, &facts);
    let number = maps.next_generation();
    // Known before the switch: the first records of the new generation
    // must already find their policy view.
    c.versions.add(number, &config);
    let started = std::time::Instant::now();
    let compiled_for_install = compiled.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut maps = maps;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            maps.install(&compiled_for_install, &cgroups)
        }));
        (maps, r)
    })
    .await;
    let outcome = match result {
        Ok((maps, r)) => {
            c.maps = Some(maps);
            r.map_err(|_| "the loader panicked".to_owned())
                .and_then(|r| r.map_err(|e| e.to_string()))
        }
        Err(e) => {
            // The maps went with the task. The kernel keeps enforcing the
            // generation in force (stopping the daemon would detach the
            // programs and enforce nothing), but it can no longer change.
            error!(
                "the policy loader failed ({e}); the policy in force stays, and no new policy can be loaded until residency is restarted"
            );
            let _ = c.notes.send(refused_note(
                format!("the policy loader failed ({e}); the policy in force stays until residency is restarted"),
                serde_json::json!({ "policy": { "error": e.to_string(), "hash_in_force": c.current.hash } }),
            ));
            return c;
        }
    };
    match outcome {
        Ok(generation) => {
            let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            info!(generation, hash = %config.hash, ms, "{action}: policy generation installed");
            let _ = c
                .notes
                .send(loaded_note(action, &config, generation, &compiled, ms));
            c.current = config;
            c.compiled_at = now;
            c.retry_after = None;
            c.pod_assigned = pod_cgroups;
        }
        Err(e) => {
            c.versions.remove(number);
            c.retry_after = Some(std::time::Instant::now() + RETRY);
            warn!("policy not installed, the one in force stays: {e}");
            let _ = c.notes.send(refused_note(
                format!("the new policy could not be loaded into the kernel; the policy in force stays: {e}"),
                serde_json::json!({ "policy": { "error": e, "hash_in_force": c.current.hash } }),
            ));
        }
    }
    c
}

/// The record of a policy generation taking effect (`policy-loaded`, or
/// `exception-expired` when an expiry compiled it).
#[must_use]
pub fn loaded_note(
    action: Lifecycle,
    config: &Config,
    generation: u32,
    compiled: &policy::Compiled,
    ms: u64,
) -> Record {
    PolicyLoaded {
        hash: config.hash.clone(),
        generation,
        source: config.source.clone(),
        tenants: config.tenants.iter().map(|t| t.id.clone()).collect(),
        workloads: config.workloads.iter().map(|w| w.name.clone()).collect(),
        exceptions_expired: compiled.expired.clone(),
        load_ms: ms,
        // The exact text: the evidence then holds what each version said.
        text: config.text.clone(),
    }
    .record(
        action,
        format!(
            "policy {} (generation {generation}) is in force: {} tenant(s), {} workload(s){}",
            &config.hash[..12.min(config.hash.len())],
            config.tenants.len(),
            config.workloads.len(),
            if compiled.expired.is_empty() {
                String::new()
            } else {
                format!(
                    "; expired exceptions no longer apply: {}",
                    compiled.expired.join(", ")
                )
            }
        ),
    )
}
