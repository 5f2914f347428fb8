//! The daemon's life: start-up in the order it must happen, the pipeline,
//! and shutdown.
//!
//! [`run`] reads as the list of its steps. Everything that can fail for a
//! reason outside the kernel (a bad path, a port in use, a sink's missing
//! token, an unusable `GeoIP` file) fails before anything is attached; the
//! programs are attached last, once the first policy and `GeoIP` generation
//! are in their maps, so the first call is judged by them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use residency_api::{ApiError, ApiState, Serving};
use residency_evidence::{Evidence, EvidenceError, chain};
use residency_record::{Record, StartInfo, StopInfo};
use residency_siem::{Sinks, StartError};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};
use tracing::{error, info, warn};

use crate::{
    config::{Config, ConfigError},
    control, enrich,
    geodb::{self, GeoError},
    identity::SharedTree,
    kernel::{self, CgroupTarget, Features, KernelError},
    metrics::Metrics,
    output::{JsonLines, Output, WriteError},
    pipeline::{self, PipelineError},
    policy, trust,
    workloads::{self, Tree},
};

/// Settings given on the command line, layered over the file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// cgroup to attach to instead of `kernel.cgroup`: absolute (under the
    /// cgroup2 mount) or relative to the mount.
    pub cgroup: Option<PathBuf>,
    /// Output instead of `output.events`.
    pub output: Option<Output>,
    /// `GeoIP` database instead of `geoip.database`.
    pub geoip: Option<PathBuf>,
    /// The configuration file, for reloads (`None`: the built-in one).
    pub config_path: Option<PathBuf>,
    /// Accept a configuration file others than root can write (for
    /// development only).
    pub allow_insecure_config: bool,
    /// Evidence directory instead of `evidence.directory`.
    pub state_dir: Option<PathBuf>,
    /// API TCP address instead of `api.listen` (`Some(None)`: off).
    pub api_listen: Option<Option<SocketAddr>>,
    /// API socket instead of `api.socket` (`Some(None)`: off).
    pub api_socket: Option<Option<PathBuf>>,
    /// Pin directory name instead of `kernel.instance`.
    pub instance: Option<String>,
}

impl RunOptions {
    /// Lays the command line over the file's settings.
    fn apply(&self, config: &mut Config) {
        if let Some(output) = &self.output {
            config.output = output.clone();
        }
        if let Some(dir) = &self.state_dir {
            if config.api.token_file == config.evidence.directory.join("api.token") {
                config.api.token_file = dir.join("api.token");
            }
            config.evidence.directory.clone_from(dir);
        }
        if let Some(listen) = self.api_listen {
            config.api.listen = listen;
        }
        if let Some(socket) = &self.api_socket {
            config.api.socket.clone_from(socket);
        }
        if let Some(instance) = &self.instance {
            config.kernel.instance.clone_from(instance);
        }
    }

    /// Locked: a configuration file was given and not declared insecure.
    /// The `GeoIP` databases decide policy too, so they must be as safe
    /// from change.
    fn locked(&self) -> bool {
        self.config_path.is_some() && !self.allow_insecure_config
    }
}

/// Why `run` failed. Each domain's error stays its own; the binary maps
/// them to exit codes in one place (`cli::exit`).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Output(#[from] WriteError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("GeoIP: {0}")]
    Geo(#[from] GeoError),
    #[error(transparent)]
    Evidence(#[from] EvidenceError),
    /// The store could not be opened by a user other than root: that, not
    /// the store's complaint about its directory, is what to fix.
    #[error(
        "cannot open the evidence store ({0}): residency needs root (CAP_BPF, CAP_NET_ADMIN and \
         CAP_SYS_ADMIN); run it with sudo or as the systemd service"
    )]
    EvidenceNeedsRoot(EvidenceError),
    #[error("REST API: {0}")]
    Api(#[from] ApiError),
    #[error("SIEM {0}")]
    Sink(#[from] StartError),
    #[error("a start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// How long the sinks may deliver after the store closes.
const SINK_DRAIN: Duration = Duration::from_secs(3);

/// Attaches the kernel programs and reports every decision until SIGINT or
/// SIGTERM; then detaches, drains and returns the totals.
///
/// # Errors
/// A [`RunError`] that says in one line why the daemon could not start or
/// had to stop.
pub async fn run(mut config: Config, options: RunOptions) -> Result<StopInfo, RunError> {
    crate::memory::configure();
    options.apply(&mut config);
    let attach = AttachPoint::find(&config, &options)?;
    // Signals first, so that a SIGTERM during start-up is not lost, and
    // SIGHUP (sent by `systemctl reload`) does not kill the daemon.
    let signals = Signals::install()?;
    // The output and the store before anything else, so that a bad path
    // fails before anything touches the kernel.
    let output = JsonLines::open(&config.output).await?;
    let evidence = open_evidence(&config)?;
    let metrics = Metrics::new(evidence.stats());
    let geoip = options
        .geoip
        .clone()
        .or_else(|| config.geoip.database.clone());
    let serving = start_api(&config, &evidence, &metrics, &signals, geoip).await?;
    // Records for the chain from outside the kernel path (policy and
    // GeoIP loads, sinks that skipped).
    let (notes, notes_rx) = mpsc::unbounded_channel();
    let sinks = start_sinks(&config, &evidence, &notes, &metrics)?;
    // The pins next: a daemon of this instance that is still stopping
    // finishes first, and its generation numbers are where ours go on.
    let instance = config.kernel.instance.clone();
    let pins = tokio::task::spawn_blocking(move || kernel::Pins::open(&instance)).await??;
    let (policy_after, geo_after) = pins.previous.map_or((0, 0), |p| {
        (p.state.policy_generation, p.state.geo_generation)
    });
    let geo = GeoStart::prepare(&config, &options, geo_after + 1).await?;
    let policy = PolicyStart::compile(config, &attach.mount, policy_after + 1);
    let started = kernel::start(
        &policy.config.kernel,
        &policy.config.names,
        policy.config.may_block(),
        &policy.compiled,
        &policy.cgroups,
        attach.target.clone(),
        geo.prepared.as_ref().map(|p| (&p.v4, &p.v6[..])),
        pins,
    )?;
    // The GeoIP tables are in the kernel: the flattening's peak goes back.
    crate::memory::release();
    let start = announce(&attach, &policy, &geo, &started, &notes);
    if let Some(gap) = away_gap(started.adoption.as_ref(), &evidence) {
        let _ = notes.send(gap);
    }
    let names_config = policy.config.names;
    let geo_registry = geo.registry.clone();
    let pods = start_pods(&policy.config, &metrics, &signals).await;
    let pod_directory = pods.as_ref().map(|p| p.directory.clone());
    let kernel = spawn_watchers(
        started, &options, &attach, &policy, geo, &signals, notes, pods,
    );
    let result = pipeline::run(
        policy.config.clone(),
        kernel,
        start,
        pipeline::Outputs {
            lines: output,
            evidence: evidence.clone(),
            metrics: metrics.pipeline.clone(),
            store_failed: false,
        },
        enrich::Sources {
            registry: geo_registry,
            versions: policy.versions,
            tree: policy.tree,
            names: names_config,
            pods: pod_directory,
        },
        notes_rx,
        signals.stop.clone(),
    )
    .await;
    shut_down(result, serving, &evidence, sinks).await
}

/// Where the programs attach: the kernel's features, the cgroup, and the
/// interlock that keeps enforcement off the cgroup2 root.
struct AttachPoint {
    features: Features,
    /// The cgroup2 mount.
    mount: PathBuf,
    target: CgroupTarget,
}

impl AttachPoint {
    fn find(config: &Config, options: &RunOptions) -> Result<Self, RunError> {
        let features = kernel::probe();
        info!(
            kernel = %features.kernel_release,
            cgroup2 = ?features.cgroup2,
            tracefs = ?features.tracefs,
            btf = features.btf,
            "kernel probed"
        );
        let mount = features.cgroup2.clone().ok_or(KernelError::NoCgroup2)?;
        let requested = options
            .cgroup
            .clone()
            .unwrap_or_else(|| config.kernel.cgroup.clone());
        let target = CgroupTarget::resolve(&mount, &requested)?;
        config.check_enforce_interlock(target.is_root)?;
        Ok(AttachPoint {
            features,
            mount,
            target,
        })
    }
}

/// The stop and reload signals, as watch channels every task can follow.
struct Signals {
    /// Turns true on SIGINT or SIGTERM.
    stop: watch::Receiver<bool>,
    /// Counts SIGHUPs.
    reload: watch::Receiver<u64>,
}

impl Signals {
    /// SIGINT/SIGTERM stop (a second one exits at once); SIGHUP reloads
    /// the configuration and the `GeoIP` database.
    fn install() -> Result<Self, RunError> {
        let (stop_tx, stop) = watch::channel(false);
        let (reload_tx, reload) = watch::channel(0u64);
        let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
        let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
        let mut sighup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
        tokio::spawn(async move {
            let mut stopping = false;
            loop {
                let name = tokio::select! {
                    _ = sigint.recv() => "SIGINT",
                    _ = sigterm.recv() => "SIGTERM",
                    _ = sighup.recv() => {
                        info!("SIGHUP: reloading the configuration and the GeoIP database");
                        reload_tx.send_modify(|n| *n += 1);
                        continue;
                    }
                };
                if stopping {
                    // A shutdown that hangs (an output that blocks) must
                    // still be interruptible. The kernel detaches the
                    // programs when the process ends.
                    error!("{name} again: exiting now; records not yet written are lost");
                    std::process::exit(130);
                }
                info!("{name}: stopping (send it again to exit at once)");
                stopping = true;
                let _ = stop_tx.send(true);
            }
        });
        Ok(Signals { stop, reload })
    }
}

/// Opens the evidence store (and starts its writer, indexer and
/// checkpointer threads).
fn open_evidence(config: &Config) -> Result<Evidence, RunError> {
    let (evidence, opened) = match Evidence::open(&config.evidence) {
        Ok(v) => v,
        Err(e) if !nix::unistd::geteuid().is_root() => {
            return Err(RunError::EvidenceNeedsRoot(e));
        }
        Err(e) => return Err(e.into()),
    };
    info!(
        store = %opened.path.display(),
        next_seq = opened.next_seq,
        public_key = %chain::public_key_text(&opened.public_key),
        "evidence store open"
    );
    Ok(evidence)
}

/// The API answers from the start (readiness says when the programs are
/// attached); a port in use stops the start here, before the kernel.
async fn start_api(
    config: &Config,
    evidence: &Evidence,
    metrics: &Metrics,
    signals: &Signals,
    geoip: Option<PathBuf>,
) -> Result<Serving, RunError> {
    // The dashboard (/ui) on the TCP listener; its what-if replay judges
    // pasted configurations against the GeoIP database in use.
    let replayer = Arc::new(crate::replay::Replayer { geoip });
    let dashboard: residency_api::Extra =
        Box::new(move |state, token| residency_ui::router(state, token, Some(replayer)));
    let serving = residency_api::serve_with(
        &config.api,
        &config.evidence.directory,
        ApiState {
            reader: evidence.reader().clone(),
            evidence: evidence.clone(),
            metrics: metrics.registry.clone(),
            attached: metrics.pipeline.attached.clone(),
        },
        Some(dashboard),
        signals.stop.clone(),
    )
    .await?;
    info!(
        tcp = ?serving.tcp,
        socket = ?serving.socket,
        "REST API listening"
    );
    Ok(serving)
}

/// The sinks read the chain from their cursors; a sink that cannot start
/// (a missing token, a bad certificate) stops the start here, before the
/// kernel.
fn start_sinks(
    config: &Config,
    evidence: &Evidence,
    notes: &mpsc::UnboundedSender<Record>,
    metrics: &Metrics,
) -> Result<Sinks, RunError> {
    Ok(Sinks::start(
        &config.sinks,
        &config.evidence.directory,
        evidence.reader(),
        notes,
        &metrics.sinks,
    )?)
}

/// The `GeoIP` database as the first generation: found, checked, prepared
/// off the async runtime, and registered (the programs' first records name
/// generation 1 and must find its version).
struct GeoStart {
    /// Given by the configuration or the command line (not searched for).
    explicit: bool,
    path: Option<PathBuf>,
    asn: Option<PathBuf>,
    prepared: Option<geodb::Prepared>,
    registry: Arc<geodb::Registry>,
}

impl GeoStart {
    /// `first` numbers the first generation (on from the previous
    /// daemon's).
    async fn prepare(config: &Config, options: &RunOptions, first: u32) -> Result<Self, RunError> {
        let explicit = options
            .geoip
            .clone()
            .or_else(|| config.geoip.database.clone());
        let path = geodb::discover(explicit.as_deref());
        let asn = geodb::discover_asn(config.geoip.asn_database.as_deref());
        if options.locked() {
            for p in [path.as_ref(), asn.as_ref()].into_iter().flatten() {
                trust::check(p).map_err(|error| GeoError::Untrusted {
                    path: p.clone(),
                    error,
                })?;
            }
        }
        let prepared = if let Some(p) = &path {
            let (p, a) = (p.clone(), asn.clone());
            Some(tokio::task::spawn_blocking(move || geodb::prepare(&p, a.as_deref())).await??)
        } else {
            warn!(
                searched = ?geodb::SEARCH_PATHS,
                unknown = config.policy.unknown.as_str(),
                "no GeoIP database: every destination outside the rules is \"unknown\"; \
                 set geoip.database, or install one (cargo xtask run fetches the CC0 default)"
            );
            None
        };
        let registry = Arc::new(geodb::Registry::default());
        if let (Some(p), Some(path)) = (&prepared, &path) {
            registry.add(geodb::Generation {
                number: first,
                version: Arc::new(p.db.version().clone()),
                path: path.clone(),
                db: p.db.clone(),
                asn: p.asn.clone(),
            });
        }
        Ok(GeoStart {
            explicit: explicit.is_some(),
            path,
            asn,
            prepared,
            registry,
        })
    }
}

/// The first policy generation: compiled for the kernel, the cgroups that
/// select a workload, and its view for the records it decides.
struct PolicyStart {
    config: Arc<Config>,
    compiled: policy::Compiled,
    compiled_at: jiff::Timestamp,
    cgroups: Vec<(u64, u32)>,
    /// Policy generation -> its view; generation 1 is this one.
    versions: Arc<policy::Versions>,
    /// The cgroup tree, shared with identity and the control loop.
    tree: SharedTree,
}

impl PolicyStart {
    /// `first` numbers the first generation (on from the previous
    /// daemon's).
    fn compile(config: Config, mount: &Path, first: u32) -> Self {
        let compiled_at = jiff::Timestamp::now();
        let compiled = policy::compile(&config, compiled_at);
        let (tree, all_cgroups) = Tree::new(mount);
        // Pods are named by the runtime later; their cgroups follow then.
        let cgroups = workloads::assignments(&config, &all_cgroups, &workloads::PodsByUid::new());
        let config = Arc::new(config);
        let versions = Arc::new(policy::Versions::default());
        versions.add(first, &config);
        PolicyStart {
            config,
            compiled,
            compiled_at,
            cgroups,
            versions,
            tree: Arc::new(Mutex::new(tree)),
        }
    }
}

/// Records what took effect (the policy and `GeoIP` generations) and warns
/// of what is valid but weaker than it looks; returns the facts for the
/// `started` record.
fn announce(
    attach: &AttachPoint,
    policy: &PolicyStart,
    geo: &GeoStart,
    started: &kernel::Started,
    notes: &mpsc::UnboundedSender<Record>,
) -> StartInfo {
    let config = &policy.config;
    let _ = notes.send(control::loaded_note(
        residency_record::Lifecycle::PolicyLoaded,
        config,
        started.policy_generation,
        &policy.compiled,
        0,
    ));
    if let (Some(p), Some(installed), Some(path)) =
        (&geo.prepared, &started.geo_installed, &geo.path)
    {
        let _ = notes.send(geodb::loaded_note(path, p.db.version(), p, installed));
    }
    for w in config.warnings(jiff::Timestamp::now()) {
        warn!("{w}");
    }
    for condition in &config.policy.conditions {
        warn!(
            "policy.allowed allows {}, whose transfer basis ({}) holds only on a condition: {} ({})",
            condition.country, condition.set, condition.text, condition.decision
        );
    }
    StartInfo {
        version: env!("CARGO_PKG_VERSION"),
        cgroup_path: attach.target.path.display().to_string(),
        cgroup_id: attach.target.id,
        mode: config.mode.as_str(),
        may_block: config.may_block(),
        kernel_release: attach.features.kernel_release.clone(),
        ring_buffer_kib: config.kernel.ring_buffer_bytes / 1024,
        deny_rules: config.deny_rules().count(),
        config_source: config.source.clone(),
        geoip: geo.prepared.as_ref().map(|p| p.db.version().label()),
        geoip_generation: started.geo_installed.map_or(0, |i| i.generation),
        allowed: config.policy.allowed_names.clone(),
        conditions: config
            .policy
            .conditions
            .iter()
            .map(ToString::to_string)
            .collect(),
        names: match (config.names.track, config.names.sni) {
            (false, _) => "off",
            (true, false) => "dns",
            (true, true) => "dns+tls",
        },
        catalog_entries: config.catalog.endpoints().len(),
        cri_socket: config
            .kubernetes
            .enabled
            .then(|| config.kubernetes.socket())
            .flatten()
            .map(|p| p.display().to_string()),
    }
}

/// With `[kubernetes]`: the task that asks the container runtime which pod
/// each cgroup is (and the namespace watch, when it runs).
async fn start_pods(
    config: &Config,
    metrics: &Metrics,
    signals: &Signals,
) -> Option<crate::pods::PodLink> {
    let kube = &config.kubernetes;
    if !kube.enabled {
        return None;
    }
    let socket = kube.socket().unwrap_or_else(|| {
        let first = crate::config::kubernetes::DEFAULT_CRI_SOCKETS[0];
        warn!(
            "[kubernetes]: no container runtime socket found (tried {}); waiting for {first}; \
             set kubernetes.cri_socket if the runtime listens elsewhere",
            crate::config::kubernetes::DEFAULT_CRI_SOCKETS.join(", ")
        );
        PathBuf::from(first)
    });
    let (labels, changed) = crate::kube::namespace_labels(kube).await;
    let (link, task) = crate::pods::link(socket, labels, changed, metrics.pods.clone());
    tokio::spawn(crate::pods::run(task, signals.stop.clone()));
    Some(link)
}

/// Starts the tasks that keep the kernel's maps current: the `GeoIP`
/// watcher and the policy control loop. Returns what the pipeline reads.
#[expect(clippy::too_many_arguments, reason = "each is one start-up product")]
fn spawn_watchers(
    started: kernel::Started,
    options: &RunOptions,
    attach: &AttachPoint,
    policy: &PolicyStart,
    geo: GeoStart,
    signals: &Signals,
    notes: mpsc::UnboundedSender<Record>,
    pods: Option<crate::pods::PodLink>,
) -> kernel::Kernel {
    let config = &policy.config;
    tokio::spawn(geodb::watch(
        geodb::Watch {
            maps: Some(started.geo),
            explicit: geo.explicit,
            identity: geo
                .prepared
                .as_ref()
                .map(|p| p.identity)
                .unwrap_or_default(),
            path: geo.path,
            asn: geo.asn,
            interval: config.geoip.check_interval,
            registry: geo.registry.clone(),
            notes: notes.clone(),
            reload: signals.reload.clone(),
            locked: options.locked(),
        },
        signals.stop.clone(),
    ));
    tokio::spawn(control::run(
        control::Control {
            maps: Some(started.policy),
            identity: options
                .config_path
                .as_deref()
                .map(geodb::FileIdentity::of)
                .unwrap_or_default(),
            path: options.config_path.clone(),
            current: config.clone(),
            may_block: config.may_block(),
            at_root: attach.target.is_root,
            locked: !options.allow_insecure_config,
            tree: policy.tree.clone(),
            versions: policy.versions.clone(),
            notes,
            reload: signals.reload.clone(),
            interval: config.geoip.check_interval,
            compiled_at: policy.compiled_at,
            retry_after: None,
            pods,
            pod_assigned: std::collections::HashMap::new(),
        },
        signals.stop.clone(),
    ));
    started.kernel
}

/// After the pipeline: the stopped record is in the store, so stop
/// serving, sign the final checkpoint, and give the sinks a few seconds to
/// deliver the last records and that checkpoint (what they cannot is sent
/// at the next start).
async fn shut_down(
    result: Result<StopInfo, PipelineError>,
    serving: Serving,
    evidence: &Evidence,
    sinks: Sinks,
) -> Result<StopInfo, RunError> {
    // After a failure no signal may come to stop the listeners; the
    // process is about to exit then anyway.
    if result.is_ok() {
        serving.stopped().await;
    }
    let closed = evidence.close().await;
    sinks.stop(SINK_DRAIN).await;
    let stop = result?;
    closed?;
    Ok(stop)
}

/// The `evidence-gap` record of the time no daemon read the kernel's
/// decisions: from the pins the previous daemon left (how long it was
/// away, what the kernel decided meanwhile, whether enforcement stayed),
/// or, without pins, from the store's last record (nothing was attached).
fn away_gap(adoption: Option<&kernel::Adoption>, evidence: &Evidence) -> Option<Record> {
    use residency_record::EvidenceGap;
    let now = jiff::Timestamp::now();
    let (after, kept, waiting, not_recorded) = if let Some(a) = adoption {
        let at = i128::from(a.previous.heartbeat_unix_ns);
        let after = jiff::Timestamp::from_nanosecond(at).ok().filter(|_| at > 0);
        (
            after,
            a.enforcement_kept,
            a.compatible.then_some(a.waiting),
            a.compatible.then_some(a.not_recorded),
        )
    } else {
        // No pins: a first start, or the previous daemon detached (persist
        // off, `residency detach`). A gap only if it recorded anything.
        let last = evidence
            .stats()
            .head_ts
            .load(std::sync::atomic::Ordering::Relaxed);
        if last <= 0 {
            return None;
        }
        (
            jiff::Timestamp::from_nanosecond(i128::from(last)).ok(),
            false,
            None,
            None,
        )
    };
    let millis = after.map(|a| u64::try_from(now.duration_since(a).as_millis()).unwrap_or(0));
    let enforcement = if kept {
        EvidenceGap::ENFORCEMENT_KEPT
    } else {
        EvidenceGap::ENFORCEMENT_OFF
    };
    let away = millis.map_or_else(
        || "for an unknown time".to_owned(),
        |ms| format!("for {}.{} s", ms / 1000, ms % 1000 / 100),
    );
    let message = if kept {
        format!(
            "no daemon read the kernel's decisions {away}; the programs stayed attached and \
             enforced the policy in force; {} decisions made meanwhile were waiting and are \
             recorded now, {} found the ring full and are not recorded",
            waiting.map_or_else(|| "the".to_owned(), |n| n.to_string()),
            not_recorded.map_or_else(|| "an unknown number".to_owned(), |n| n.to_string()),
        )
    } else {
        format!(
            "no daemon ran {away}, and no programs were attached: nothing was enforced or \
             recorded in that time"
        )
    };
    if kept {
        warn!(
            away_ms = millis,
            waiting, not_recorded, "taking over the programs the previous daemon left"
        );
    } else {
        info!(
            away_ms = millis,
            "no programs were attached since the last record"
        );
    }
    Some(
        EvidenceGap {
            reason: EvidenceGap::DAEMON_AWAY.to_owned(),
            after: after.map(|a| a.to_string()),
            until: Some(now.to_string()),
            milliseconds: millis,
            decisions_recorded_late: waiting,
            decisions_not_recorded: not_recorded,
            enforcement: Some(enforcement.to_owned()),
            ..EvidenceGap::default()
        }
        .record(message),
    )
}
