//! residency: an eBPF egress monitor for data residency.
//!
//! The library behind the `residency` binary. One module per stage of the
//! data flow (see `docs/architecture.md`):
//!
//! - [`config`]: the TOML file, validated;
//! - [`policy`]: the configuration compiled for the kernel, and the same
//!   decision made in userspace for explanations;
//! - [`geo`]: the `GeoIP` database: found, flattened into kernel tables,
//!   watched for new versions, and looked up for enrichment;
//! - [`kernel`]: loads, fills and attaches the kernel programs, swaps the
//!   `GeoIP` tables, and reads the ring buffer and counters (the only module
//!   that uses aya);
//! - [`pipeline`]: moves records from the kernel to the sinks;
//! - [`enrich`]: turns kernel records into explained flows;
//! - [`identity`]: the executable, command line and cgroup of each call;
//! - [`workloads`]: which cgroups select which workload, kept current;
//! - [`control`]: policy reloads, expiry and new cgroups at run time;
//! - [`trust`]: which files may decide policy when the daemon runs locked;
//! - [`sinks`]: writes records out (ECS JSON lines today);
//! - [`evidence`]: the tamper-evident store (hash chain, signed
//!   checkpoints, violations, retention, verify, export);
//! - [`api`]: the local REST API over the store;
//! - [`metrics`]: the pipeline's counters for `/metrics`.
//!
//! [`run`] wires them together; the binary, the tests and the benchmarks all
//! call it.

pub mod api;
pub mod config;
pub mod control;
pub mod enrich;
pub mod evidence;
pub mod geo;
pub mod identity;
pub mod kernel;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod siem;
pub mod sinks;
pub mod trust;
pub mod workloads;

use std::{path::PathBuf, sync::Arc};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, warn};

use crate::{
    config::{Config, ConfigError, Output},
    kernel::{CgroupTarget, KernelError},
    pipeline::PipelineError,
    sinks::{
        StartInfo, StopInfo,
        jsonl::{JsonLines, WriteError},
    },
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
    pub api_listen: Option<Option<std::net::SocketAddr>>,
    /// API socket instead of `api.socket` (`Some(None)`: off).
    pub api_socket: Option<Option<PathBuf>>,
}

/// Why `run` failed.
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
    Geo(#[from] geo::GeoError),
    #[error(transparent)]
    Evidence(#[from] evidence::EvidenceError),
    #[error("REST API: {0}")]
    Api(#[from] api::ApiError),
    #[error("SIEM {0}")]
    Sink(#[from] siem::deliver::StartError),
    #[error("there is no workload \"{name}\" in the configuration (workloads: {known})")]
    UnknownWorkload { name: String, known: String },
}

/// How long the sinks may deliver after the store closes.
const SINK_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Attaches the kernel programs and reports every decision until SIGINT or
/// SIGTERM; then detaches, drains and returns the totals.
///
/// # Errors
/// A [`RunError`] that says in one line why the daemon could not start or
/// had to stop.
#[expect(
    clippy::too_many_lines,
    reason = "the start-up sequence, in the order it must happen"
)]
pub async fn run(mut config: Config, options: RunOptions) -> Result<StopInfo, RunError> {
    if let Some(output) = options.output {
        config.output = output;
    }
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
        .unwrap_or_else(|| config.kernel.cgroup.clone());
    let target = CgroupTarget::resolve(&mount, &requested)?;
    config.check_enforce_interlock(target.is_root)?;

    // Signals first, so that a SIGTERM during start-up is not lost, and
    // SIGHUP (sent by `systemctl reload`) does not kill the daemon.
    let (stop_tx, stop_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = watch::channel(0u64);
    install_signals(stop_tx, reload_tx)?;

    // Open the output and the evidence store before attaching, so a bad
    // path fails before anything touches the kernel.
    let output = JsonLines::open(&config.output).await?;
    if let Some(dir) = options.state_dir.clone() {
        if config.api.token_file == config.evidence.directory.join("api.token") {
            config.api.token_file = dir.join("api.token");
        }
        config.evidence.directory = dir;
    }
    if let Some(listen) = options.api_listen {
        config.api.listen = listen;
    }
    if let Some(socket) = options.api_socket.clone() {
        config.api.socket = socket;
    }
    let (evidence, opened) = match evidence::Evidence::open(&config.evidence) {
        Ok(v) => v,
        // Not root: say that, as the kernel step would, rather than the
        // store's own complaint about /var/lib.
        Err(e) if !nix::unistd::geteuid().is_root() => {
            return Err(KernelError::PermissionDenied {
                doing: format!("opening the evidence store ({e})"),
            }
            .into());
        }
        Err(e) => return Err(e.into()),
    };
    info!(
        store = %opened.path.display(),
        next_seq = opened.next_seq,
        public_key = %evidence::chain::public_key_text(&opened.public_key),
        "evidence store open"
    );
    let metrics = Arc::new(metrics::PipelineMetrics::default());
    // The API answers from the start (readiness says when the programs are
    // attached); a port in use stops the start here, before the kernel.
    let serving = api::serve(
        &config.api,
        &config.evidence.directory,
        api::ApiState {
            reader: evidence.reader().clone(),
            evidence: evidence.clone(),
            pipeline: metrics.clone(),
        },
        stop_rx.clone(),
    )
    .await?;
    info!(
        tcp = ?serving.tcp,
        socket = ?serving.socket,
        "REST API listening"
    );
    // Records for the chain from outside the kernel path (policy and GeoIP
    // loads, sinks that skipped).
    let (notes_tx, notes_rx) = tokio::sync::mpsc::unbounded_channel();
    // The sinks read the chain from their cursors; a sink that cannot
    // start (a missing token, a bad certificate) stops the start here,
    // before the kernel.
    let sinks = siem::deliver::Sinks::start(
        &config.sinks,
        &config.evidence.directory,
        evidence.reader(),
        &notes_tx,
        &metrics,
    )?;

    // The GeoIP tables are loaded before the programs are attached, so that
    // the first call is judged with them.
    let explicit = options
        .geoip
        .clone()
        .or_else(|| config.geoip.database.clone());
    let geo_path = geo::discover(explicit.as_deref());
    let asn_path = geo::discover_asn(config.geoip.asn_database.as_deref());
    // Locked: a configuration file was given and not declared insecure.
    // The databases decide policy too, so they must be as safe from change.
    let locked = options.config_path.is_some() && !options.allow_insecure_config;
    if locked {
        for p in [geo_path.as_ref(), asn_path.as_ref()].into_iter().flatten() {
            crate::trust::check(p).map_err(|e| ConfigError {
                file: p.display().to_string(),
                line: None,
                field: String::new(),
                message: format!("GeoIP database: {e}"),
            })?;
        }
    }
    let prepared = prepare_geo(&config, geo_path.as_ref(), asn_path.as_ref()).await?;

    let compiled_at = jiff::Timestamp::now();
    let compiled = policy::compile(&config, compiled_at);
    let (tree, all_cgroups) = workloads::Tree::new(&mount);
    let cgroups = workloads::assignments(&config, &all_cgroups);
    let tree = Arc::new(std::sync::Mutex::new(tree));
    // Registered before the programs run: their first records name
    // generation 1 of each and must find its version.
    let registry = Arc::new(geo::Registry::default());
    let mut geo_label = None;
    if let (Some(p), Some(path)) = (&prepared, &geo_path) {
        let version = Arc::new(p.db.version().clone());
        geo_label = Some(version.label());
        registry.add(geo::Generation {
            number: 1,
            version,
            path: path.clone(),
            db: p.db.clone(),
            asn: p.asn.clone(),
        });
    }
    let config = Arc::new(config);
    let versions = Arc::new(policy::Versions::default());
    versions.add(1, config.clone());
    let start_geo = prepared.as_ref().map(|p| (&p.v4, &p.v6[..]));
    let started = kernel::start(&config, &compiled, &cgroups, target.clone(), start_geo)?;
    let installed = started.geo_installed;

    let _ = notes_tx.send(control::loaded_note(
        "policy-loaded",
        &config,
        started.policy_generation,
        &compiled,
        0,
    ));
    if let (Some(p), Some(installed), Some(path)) = (&prepared, &installed, &geo_path) {
        let _ = notes_tx.send(geo::loaded_note(path, p.db.version(), p, installed));
    }
    for w in config.warnings(jiff::Timestamp::now()) {
        warn!("{w}");
    }
    for (set, _, condition) in &config.policy.conditions {
        warn!("policy.allowed names {set}, which holds only on a condition: {condition}");
    }
    tokio::spawn(geo::watch(
        geo::Watch {
            maps: Some(started.geo),
            explicit: explicit.is_some(),
            identity: prepared.as_ref().map(|p| p.identity).unwrap_or_default(),
            path: geo_path,
            asn: asn_path,
            interval: config.geoip.check_interval,
            registry: registry.clone(),
            notes: notes_tx.clone(),
            reload: reload_rx.clone(),
            locked,
        },
        stop_rx.clone(),
    ));
    tokio::spawn(control::run(
        control::Control {
            maps: Some(started.policy),
            identity: options
                .config_path
                .as_deref()
                .map(geo::FileIdentity::of)
                .unwrap_or_default(),
            path: options.config_path.clone(),
            current: config.clone(),
            may_block: config.may_block(),
            at_root: target.is_root,
            locked: !options.allow_insecure_config,
            tree: tree.clone(),
            versions: versions.clone(),
            notes: notes_tx,
            reload: reload_rx,
            interval: config.geoip.check_interval,
            compiled_at,
            retry_after: None,
        },
        stop_rx.clone(),
    ));
    let kernel = started.kernel;

    let start = StartInfo {
        cgroup_path: target.path.display().to_string(),
        cgroup_id: target.id,
        mode: config.mode.as_str(),
        may_block: config.may_block(),
        kernel_release: features.kernel_release.clone(),
        ring_buffer_kib: config.kernel.ring_buffer_bytes / 1024,
        deny_rules: config.deny_rules().count(),
        config_source: config.source.clone(),
        geoip: geo_label,
        geoip_generation: installed.map_or(0, |i| i.generation),
        allowed: config.policy.allowed_names.clone(),
        conditions: config
            .policy
            .conditions
            .iter()
            .map(|(set, _, c)| format!("{set}: {c}"))
            .collect(),
    };
    let outputs = pipeline::Outputs {
        lines: output,
        evidence: evidence.clone(),
        metrics,
        store_failed: false,
    };
    let result = pipeline::run(
        config,
        kernel,
        start,
        outputs,
        enrich::Sources {
            registry,
            versions,
            tree,
        },
        notes_rx,
        stop_rx,
    )
    .await;
    // The stopped record is in the store: stop serving, then sign the
    // final checkpoint.
    // (After a failure no signal may come to stop the listeners; the
    // process is about to exit then anyway.)
    if result.is_ok() {
        serving.stopped().await;
    }
    let closed = evidence.close().await;
    // The final records and checkpoint go out if the receivers are up;
    // what does not is sent at the next start.
    sinks.stop(SINK_DRAIN).await;
    let stop = result?;
    closed?;
    Ok(stop)
}

/// SIGINT/SIGTERM stop (a second one exits at once); SIGHUP reloads the
/// `GeoIP` database.
fn install_signals(
    stop_tx: watch::Sender<bool>,
    reload_tx: watch::Sender<u64>,
) -> Result<(), RunError> {
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
                // A shutdown that hangs (an output that blocks) must still
                // be interruptible. The kernel detaches the programs when
                // the process ends.
                error!("{name} again: exiting now; records not yet written are lost");
                std::process::exit(130);
            }
            info!("{name}: stopping (send it again to exit at once)");
            stopping = true;
            let _ = stop_tx.send(true);
        }
    });

    Ok(())
}

/// Prepares the `GeoIP` database, if there is one, off the async runtime.
async fn prepare_geo(
    config: &Config,
    path: Option<&PathBuf>,
    asn: Option<&PathBuf>,
) -> Result<Option<geo::Prepared>, RunError> {
    let Some(path) = path else {
        warn!(
            searched = ?geo::SEARCH_PATHS,
            unknown = config.policy.unknown.as_str(),
            "no GeoIP database: every destination outside the rules is \"unknown\"; \
             set geoip.database, or install one (cargo xtask run fetches the CC0 default)"
        );
        return Ok(None);
    };
    let (p, a) = (path.clone(), asn.cloned());
    let prepared = tokio::task::spawn_blocking(move || geo::prepare(&p, a.as_deref()))
        .await
        .map_err(|e| RunError::Pipeline(PipelineError::Join(e)))??;
    Ok(Some(prepared))
}

/// What `residency lookup` says about one address.
#[derive(Debug, Clone)]
pub struct LookupReport {
    pub ip: std::net::IpAddr,
    pub decision: policy::Decision,
    /// The rule that decided, by name.
    pub rule: Option<String>,
    /// What the full database says.
    pub detail: Option<geo::Detail>,
    /// The database consulted, as `type@build_epoch`, and its path.
    pub database: Option<(String, PathBuf)>,
}

/// Decides about addresses as the running daemon would with `config`,
/// without touching the kernel: the same rules, the same flattened `GeoIP`
/// tables, and the full database for detail.
///
/// # Errors
/// If the workload is unknown or the `GeoIP` database cannot be prepared.
pub fn lookup(
    config: &Config,
    geoip_path: Option<&std::path::Path>,
    workload: Option<&str>,
    ips: &[std::net::IpAddr],
) -> Result<Vec<LookupReport>, RunError> {
    Lookup::new(config, geoip_path)?.decide(workload, ips)
}

/// A configuration and its `GeoIP` database, prepared once for many
/// lookups.
pub struct Lookup<'a> {
    config: &'a Config,
    prepared: Option<geo::Prepared>,
    generation: Option<geo::Generation>,
}

impl<'a> Lookup<'a> {
    /// Finds and prepares the database as the daemon would.
    ///
    /// # Errors
    /// If the `GeoIP` database cannot be prepared.
    pub fn new(config: &'a Config, geoip_path: Option<&std::path::Path>) -> Result<Self, RunError> {
        let explicit = geoip_path
            .map(std::path::Path::to_path_buf)
            .or_else(|| config.geoip.database.clone());
        let path = geo::discover(explicit.as_deref());
        let asn = geo::discover_asn(config.geoip.asn_database.as_deref());
        let prepared = match &path {
            Some(p) => Some(geo::prepare(p, asn.as_deref())?),
            None => None,
        };
        let generation = prepared
            .as_ref()
            .zip(path.as_ref())
            .map(|(p, path)| geo::Generation {
                number: 1,
                version: Arc::new(p.db.version().clone()),
                path: path.clone(),
                db: p.db.clone(),
                asn: p.asn.clone(),
            });
        Ok(Lookup {
            config,
            prepared,
            generation,
        })
    }

    /// The decision for each address, for `workload` (`None`: the default
    /// policy).
    ///
    /// # Errors
    /// If there is no such workload.
    pub fn decide(
        &self,
        workload: Option<&str>,
        ips: &[std::net::IpAddr],
    ) -> Result<Vec<LookupReport>, RunError> {
        let config = self.config;
        let index =
            match workload {
                None => 0,
                Some(name) => config.workload(name).map(|(i, _)| i).ok_or_else(|| {
                    RunError::UnknownWorkload {
                        name: name.to_owned(),
                        known: config
                            .workloads
                            .iter()
                            .map(|w| w.name.clone())
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                })?,
            };
        let mut cache = geo::DetailCache::new(ips.len());
        Ok(ips
            .iter()
            .map(|&ip| {
                let decision = policy::decide(config, index, ip, jiff::Timestamp::now(), |a| {
                    self.prepared.as_ref().and_then(|p| p.kernel_country(a))
                });
                let detail = (decision.kind != residency_common::DestKind::Local)
                    .then(|| {
                        self.generation
                            .as_ref()
                            .map(|g| (*cache.get(g, ip)).clone())
                    })
                    .flatten();
                LookupReport {
                    ip,
                    // Rules and exceptions by name; 0 is the GeoIP tables.
                    rule: (decision.rule_id != 0)
                        .then(|| config.rule_name(decision.rule_id).map(str::to_owned))
                        .flatten(),
                    decision,
                    detail,
                    database: self
                        .generation
                        .as_ref()
                        .map(|g| (g.version.label(), g.path.clone())),
                }
            })
            .collect())
    }
}

/// One expected verdict, from a `residency test-policy` cases file.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    /// Omitted: the default policy (a process no workload selects).
    workload: Option<toml::Spanned<String>>,
    destination: toml::Spanned<String>,
    port: Option<u16>,
    expect: toml::Spanned<String>,
    #[serde(default)]
    note: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCases {
    #[serde(default)]
    case: Vec<RawCase>,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub label: String,
    pub expected: String,
    pub got: String,
    pub reasons: Vec<String>,
}

impl CaseResult {
    #[must_use]
    pub fn passed(&self) -> bool {
        self.expected == self.got
    }
}

/// Runs a cases file against a configuration and `GeoIP` database, as a
/// CI/CD pipeline does before deploying a configuration change.
///
/// # Errors
/// A [`ConfigError`]-style message (file, line, field) for a malformed
/// cases file, or a `GeoIP` error.
pub fn test_policy(
    config: &Config,
    geoip_path: Option<&std::path::Path>,
    cases_text: &str,
    cases_source: &str,
) -> Result<Vec<CaseResult>, RunError> {
    let line_of = |span: std::ops::Range<usize>| {
        cases_text
            .get(..span.start)
            .map_or(0, |t| t.matches('\n').count())
            + 1
    };
    let bad = |span: Option<std::ops::Range<usize>>, field: String, message: String| {
        RunError::Config(ConfigError {
            file: cases_source.to_owned(),
            line: span.map(line_of),
            field,
            message,
        })
    };
    let raw: RawCases = toml::from_str(cases_text)
        .map_err(|e| bad(e.span(), String::new(), e.message().trim().to_owned()))?;
    if raw.case.is_empty() {
        return Err(bad(
            None,
            "case".into(),
            "no [[case]] entries: nothing to test".into(),
        ));
    }
    let mut parsed = Vec::new();
    for (i, c) in raw.case.iter().enumerate() {
        let ip: std::net::IpAddr = c.destination.get_ref().parse().map_err(|_| {
            bad(
                Some(c.destination.span()),
                format!("case[{i}].destination"),
                format!("\"{}\" is not an IP address", c.destination.get_ref()),
            )
        })?;
        let expect = c.expect.get_ref().as_str();
        if !matches!(expect, "allowed" | "flagged" | "blocked") {
            return Err(bad(
                Some(c.expect.span()),
                format!("case[{i}].expect"),
                format!("\"{expect}\" is not a verdict: allowed, flagged or blocked"),
            ));
        }
        if let Some(w) = &c.workload
            && config.workload(w.get_ref()).is_none()
        {
            return Err(bad(
                Some(w.span()),
                format!("case[{i}].workload"),
                format!("\"{}\" is not a workload of {}", w.get_ref(), config.source),
            ));
        }
        parsed.push((c, ip));
    }
    // The database is prepared once for all the cases.
    let lookup = Lookup::new(config, geoip_path)?;
    let mut out = Vec::new();
    for (c, ip) in parsed {
        let workload = c.workload.as_ref().map(|w| w.get_ref().as_str());
        let report = lookup
            .decide(workload, &[ip])?
            .pop()
            .ok_or_else(|| bad(None, "case".into(), "no decision".into()))?;
        let port = c.port.map_or(String::new(), |p| format!(":{p}"));
        let note = if c.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", c.note)
        };
        out.push(CaseResult {
            label: format!(
                "{} -> {ip}{port}{note}",
                workload.unwrap_or("<no workload>")
            ),
            expected: c.expect.get_ref().clone(),
            got: sinks::ecs::verdict_str(report.decision.verdict).to_owned(),
            reasons: report.decision.reasons,
        });
    }
    Ok(out)
}
