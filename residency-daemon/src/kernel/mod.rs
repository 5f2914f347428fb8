//! The kernel stage: the only module that touches aya.
//!
//! It loads the programs built from `residency-ebpf` (embedded in this
//! binary), writes the compiled configuration into their maps, attaches them
//! to a cgroup v2 directory, and hands the rest of the daemon two things: an
//! [`EventRing`] to read decisions from, and [`KernelCounters`] that say how
//! many decisions the kernel made and how many it could not report.
//!
//! Programs are attached through BPF links pinned on bpffs ([`pins`]): they
//! stay attached, deciding with the last policy, when the daemon stops,
//! crashes or is killed, and the next daemon adopts them. Only `residency
//! detach`, or a clean stop with `kernel.persist = false`, detaches them.

pub mod config;
mod geo_maps;
pub mod pins;
mod policy_maps;
mod probe;
mod ring;

use std::{
    fs::File,
    io,
    os::fd::AsFd as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, ProgramError,
        SockOps, TracePoint,
        links::{FdLink, PinnedLink},
    },
};
pub use config::{KernelConfig, RawKernel, WhenStale};
pub use geo_maps::{GeoMaps, Installed};
pub use pins::{LinkOutcome, Pins, StateMap};
pub use policy_maps::{GRACE, PolicyMaps};
pub use probe::{Features, probe};
use residency_common::{DaemonState, PIN_ABI, Stat, names};
pub use ring::{DecodeError, Decoded, DnsAnswerBytes, EventRing, TlsBytes, decode};
use tracing::{debug, info, warn};

use crate::{config::NamesConfig, policy::Compiled};

/// The kernel object built by `build.rs`. Empty when the build machine had no
/// eBPF toolchain.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/residency-ebpf"));

/// Why the kernel stage could not start. Each message is one line that says
/// what to do.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "this binary was built without its kernel programs (bpf-linker or rust-src was missing \
         at build time); build it with `cargo xtask build`"
    )]
    NotBuilt,
    #[error(
        "no cgroup v2 hierarchy is mounted (checked /proc/self/mountinfo); residency attaches to \
         cgroup v2: mount it with `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    #[error("cgroup {path} does not exist (give a directory under the cgroup2 mount {mount})")]
    CgroupMissing { path: PathBuf, mount: PathBuf },
    #[error("{path} is not a cgroup v2 directory (the cgroup2 mount is {mount})")]
    NotCgroup2 { path: PathBuf, mount: PathBuf },
    #[error("cannot open cgroup {path}: {source}")]
    CgroupOpen { path: PathBuf, source: io::Error },
    #[error(
        "permission denied while {doing}: residency needs root (CAP_BPF, CAP_NET_ADMIN and \
         CAP_SYS_ADMIN); run it with sudo or as the systemd service"
    )]
    PermissionDenied { doing: String },
    #[error(
        "permission denied while {doing}, although running as root: the capability set is \
         restricted, or a security module or kernel lockdown forbids BPF here"
    )]
    DeniedAsRoot { doing: String },
    #[error("the kernel verifier rejected {program}: {summary}")]
    Verifier { program: String, summary: String },
    #[error("{doing}: {source}")]
    Aya {
        doing: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl KernelError {
    /// Wraps an aya error, recognising the causes a user can act on.
    fn from_aya<E>(doing: impl Into<String>, err: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let doing = doing.into();
        if chain_has_errno(&err, nix::libc::EPERM) || chain_has_errno(&err, nix::libc::EACCES) {
            return KernelError::denied(doing);
        }
        KernelError::Aya {
            doing,
            source: error_chain(&err).into(),
        }
    }

    fn from_program(program: &str, doing: &str, err: ProgramError) -> Self {
        if let ProgramError::LoadError {
            io_error,
            verifier_log,
        } = &err
        {
            let errno = io_error.raw_os_error();
            let log = verifier_log.to_string();
            // EPERM/EACCES with an empty log is a privilege problem; with a
            // log it is the verifier speaking.
            if log.trim().is_empty() && matches!(errno, Some(nix::libc::EPERM | nix::libc::EACCES))
            {
                return KernelError::denied(format!("{doing} {program}"));
            }
            if !log.trim().is_empty() {
                return KernelError::Verifier {
                    program: program.to_owned(),
                    summary: verifier_summary(&log, io_error),
                };
            }
        }
        KernelError::from_aya(format!("{doing} {program}"), err)
    }

    fn denied(doing: String) -> Self {
        if nix::unistd::geteuid().is_root() {
            KernelError::DeniedAsRoot { doing }
        } else {
            KernelError::PermissionDenied { doing }
        }
    }

    /// Whether the error is about privileges (for the exit code).
    #[must_use]
    pub fn is_permission(&self) -> bool {
        matches!(
            self,
            KernelError::PermissionDenied { .. } | KernelError::DeniedAsRoot { .. }
        )
    }
}

/// "outer: inner: innermost", because aya's errors keep the errno in their
/// sources and a one-line message must show it.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// The verifier's log is long; its last few lines say what went wrong.
fn verifier_summary(log: &str, io_error: &io::Error) -> String {
    // The log ends with statistics (time, stack depth, instruction counts);
    // the complaint is just before them.
    let is_stat = |l: &str| {
        [
            "verification time",
            "stack depth",
            "processed ",
            "max_states_per_insn",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    };
    let tail: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !is_stat(l))
        .rev()
        .take(3)
        .collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!("{io_error}; verifier: {}", tail.join(" | "))
}

fn chain_has_errno(err: &(dyn std::error::Error + 'static), errno: i32) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.raw_os_error() == Some(errno)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The cgroup the programs attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupTarget {
    /// Absolute path of the directory.
    pub path: PathBuf,
    /// Path relative to the cgroup2 mount, `/`-rooted, as in
    /// `/proc/<pid>/cgroup`.
    pub name: String,
    /// cgroup id: the directory's inode number.
    pub id: u64,
    /// Whether this is the cgroup2 root, i.e. every process on the host.
    pub is_root: bool,
}

impl CgroupTarget {
    /// Resolves `requested` (absolute, under `mount`, or relative to it).
    ///
    /// # Errors
    /// If the directory is missing, outside the mount, or not cgroup v2.
    pub fn resolve(mount: &Path, requested: &Path) -> Result<Self, KernelError> {
        let path = if requested.is_absolute() && requested.starts_with(mount) {
            requested.to_path_buf()
        } else {
            mount.join(requested.strip_prefix("/").unwrap_or(requested))
        };
        let not_found = || KernelError::CgroupMissing {
            path: path.clone(),
            mount: mount.to_path_buf(),
        };
        let meta = std::fs::metadata(&path).map_err(|_| not_found())?;
        if !meta.is_dir() {
            return Err(not_found());
        }
        let fs = nix::sys::statfs::statfs(&path).map_err(|e| KernelError::CgroupOpen {
            path: path.clone(),
            source: e.into(),
        })?;
        let canonical = path.canonicalize().map_err(|e| KernelError::CgroupOpen {
            path: path.clone(),
            source: e,
        })?;
        let mount_canonical = mount.canonicalize().map_err(|e| KernelError::CgroupOpen {
            path: mount.to_path_buf(),
            source: e,
        })?;
        if fs.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC
            || !canonical.starts_with(&mount_canonical)
        {
            return Err(KernelError::NotCgroup2 {
                path,
                mount: mount.to_path_buf(),
            });
        }
        let rel = canonical
            .strip_prefix(&mount_canonical)
            .unwrap_or(Path::new(""));
        Ok(CgroupTarget {
            name: format!("/{}", rel.display()),
            // The cgroup2 root's directory is inode 1; a bind mount of the
            // root elsewhere is the root all the same.
            is_root: canonical == mount_canonical || meta.ino() == 1,
            id: meta.ino(),
            path: canonical,
        })
    }
}

/// Running totals of the kernel's per-CPU counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Decisions written to the ring buffer.
    pub submitted: u64,
    /// Decisions that found the ring buffer full and were not reported.
    pub dropped: u64,
    /// Process records (exec, fork, exit) that found the ring buffer full.
    pub process_dropped: u64,
    /// DNS answers and TLS bytes that found the ring buffer full (the
    /// kernel still judged by those names; only the records lack them).
    pub names_dropped: u64,
    /// Flow totals that found the ring buffer full (an update is carried
    /// by the next one; a lost end loses the flow's last bytes).
    pub flows_dropped: u64,
}

/// Reads the kernel's per-CPU counters.
pub struct CounterReader {
    stats: PerCpuArray<MapData, u64>,
}

impl CounterReader {
    /// Sums each counter over CPUs.
    ///
    /// # Errors
    /// If the map cannot be read (only if the kernel objects were torn down).
    pub fn read(&self) -> Result<KernelCounters, KernelError> {
        let sum = |stat: Stat| -> Result<u64, KernelError> {
            let values = self
                .stats
                .get(&(stat as u32), 0)
                .map_err(|e| KernelError::from_aya("reading the kernel counters", e))?;
            Ok(values.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(KernelCounters {
            submitted: sum(Stat::Submitted)?,
            dropped: sum(Stat::Dropped)?,
            process_dropped: sum(Stat::ProcessDropped)?,
            names_dropped: sum(Stat::NamesDropped)?,
            flows_dropped: sum(Stat::FlowsDropped)?,
        })
    }
}

/// Programs loaded and attached through pinned links. Dropping it lets go
/// of this daemon's hold and leaves the pins, so the programs keep
/// deciding; [`Attached::detach`] removes the pins too. The event ring and
/// counters stay readable either way, so that the daemon can collect what
/// was decided up to that moment.
pub struct Attached {
    ebpf: Option<Ebpf>,
    /// This daemon's hold on the pinned links (the pins hold them too).
    links: Vec<PinnedLink>,
    pins: Option<Pins>,
    pub target: CgroupTarget,
    /// Whether the deny path was compiled in.
    pub may_block: bool,
}

impl Attached {
    /// Detaches every program: removes the pins, then lets go. Idempotent.
    pub fn detach(&mut self) {
        if let Some(pins) = self.pins.take() {
            for name in pins.pinned_links() {
                let _ = std::fs::remove_file(pins.link_path(&name));
            }
            for name in names::PINNED_MAPS {
                let _ = std::fs::remove_file(pins.map_path(name));
            }
            let _ = std::fs::remove_dir(pins.dir.join("links"));
            let _ = std::fs::remove_dir(pins.dir.join("maps"));
            let _ = std::fs::remove_dir(&pins.dir);
            let _ = std::fs::remove_dir(pins::ROOT);
        }
        self.release();
        info!(cgroup = %self.target.path.display(), "programs detached");
    }

    /// Lets go of the programs and leaves their pins: they stay attached
    /// and keep deciding with the policy in force. Idempotent.
    pub fn release(&mut self) {
        self.links.clear();
        self.ebpf.take();
        self.pins.take();
    }

    /// The pin directory, while this daemon holds it.
    #[must_use]
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pins.as_ref().map(|p| p.dir.as_path())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.release();
    }
}

/// What the daemon found in its pins at start: the previous daemon's
/// state, and what the kernel decided while no daemon read the ring.
#[derive(Debug, Clone)]
pub struct Adoption {
    pub previous: DaemonState,
    /// The pinned maps were adopted (same layout).
    pub compatible: bool,
    /// Whether the cgroup programs stayed attached in the gap (their pinned
    /// links were found and taken over).
    pub enforcement_kept: bool,
    /// Decisions made since the previous daemon last read, waiting in the
    /// ring now (they are read and recorded next).
    pub waiting: u64,
    /// Decisions that found the ring full and that no record accounts for.
    pub not_recorded: u64,
}

/// Everything the rest of the daemon gets from the kernel stage.
pub struct Kernel {
    pub attached: Attached,
    pub events: EventRing,
    pub counters: CounterReader,
    /// The pinned state the ring's reader keeps current.
    pub state: StateMap,
    /// The counters as the pins left them: where this daemon's accounting
    /// starts.
    pub baseline: Baseline,
    /// Whether a clean stop leaves the programs attached.
    pub persist: bool,
    /// Kernel-side diagnostics, when the programs have any.
    pub logger: Option<KernelLog>,
}

/// Where this daemon's accounting starts: decisions read and drops
/// reported by the daemons before it (the pinned counters count from the
/// pins' making).
#[derive(Debug, Clone, Copy, Default)]
pub struct Baseline {
    pub consumed: u64,
    pub lost_reported: u64,
    pub flows_lost_reported: u64,
}

/// Diagnostics that the kernel programs write with `aya-log` (only on paths
/// that should never run, never per event), forwarded to `tracing`.
pub struct KernelLog(aya_log::EbpfLogger<&'static dyn log::Log>);

impl KernelLog {
    /// Forwards records until the programs are gone.
    pub async fn forward(self) {
        // SAFETY: the logger owns its ring buffer's file descriptor and is
        // owned by the AsyncFd from here on, so the descriptor stays open.
        let Ok(mut fd) = (unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(self.0, tokio::io::Interest::READABLE)
        }) else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }
}

/// The first `GeoIP` tables: the IPv4 layout and the IPv6 prefixes.
pub type GeoTables<'a> = (
    &'a geoip::layout::V4Layout,
    &'a [(ipnet::Ipv6Net, geoip::CountryCode)],
);

/// What [`start`] hands back: the running kernel side, and the maps that
/// later reloads swap.
pub struct Started {
    pub kernel: Kernel,
    pub geo: GeoMaps,
    pub policy: PolicyMaps,
    /// The first `GeoIP` generation, when there were tables.
    pub geo_installed: Option<Installed>,
    /// The first policy generation.
    pub policy_generation: u32,
    /// Set when the daemon took over pins a previous one left.
    pub adoption: Option<Adoption>,
}

/// Loads `program` and lends its descriptor for the link operation that
/// follows (see [`borrow`]).
macro_rules! load_and_lend {
    ($program:expr, $name:expr) => {{
        $program
            .load()
            .map_err(|e| KernelError::from_program($name, "loading", e))?;
        let fd = $program
            .fd()
            .map_err(|e| KernelError::from_program($name, "preparing", e))?
            .as_fd();
        // SAFETY: see `borrow`.
        unsafe { borrow(fd) }
    }};
}

/// Takes the link `id` of `program` out of aya's keeping, as a link that
/// can be pinned (an old kernel's attachment without a BPF link cannot).
macro_rules! fd_link {
    ($program:expr, $id:expr, $name:expr) => {{
        let link = $program
            .take_link($id)
            .map_err(|e| KernelError::from_program($name, "taking the link of", e))?;
        FdLink::try_from(link).map_err(|e| no_link($name, &e))
    }};
}

/// Loads the programs, installs the first policy generation (`compiled`,
/// with the cgroups that select workloads) and the first `GeoIP` tables
/// (`geo`, when there are any), and only then puts the programs in force
/// on `target`, so that the first call they see is judged with everything
/// in place: behind the links `pins` holds (replacing the previous
/// daemon's programs in place), or through new links it pins.
///
/// # Errors
/// A [`KernelError`] that says in one line why it could not be done.
#[expect(clippy::too_many_arguments, reason = "each is one start-up product")]
#[expect(clippy::too_many_lines, reason = "the start-up steps, in order")]
pub fn start(
    settings: &KernelConfig,
    name_tracking: &NamesConfig,
    may_block: bool,
    compiled: &Compiled,
    cgroups: &[(u64, u32)],
    target: CgroupTarget,
    geo: Option<GeoTables<'_>>,
    pins: Pins,
) -> Result<Started, KernelError> {
    if OBJECT.is_empty() {
        return Err(KernelError::NotBuilt);
    }
    let may_block_flag = u8::from(may_block);
    let wakeup_bytes = settings.wakeup_bytes;
    // Processes are tracked under the same cgroup the programs judge.
    let track_id = target.id;
    let track_level =
        u32::try_from(target.name.split('/').filter(|c| !c.is_empty()).count()).unwrap_or(u32::MAX);
    let names_flag = u8::from(name_tracking.track);
    let sni_flag = u8::from(name_tracking.track && name_tracking.sni);
    let min_ttl_ns = name_tracking.min_ttl_secs.saturating_mul(1_000_000_000);
    let flows_flag = u8::from(settings.flows);
    let flow_report_ns = u64::try_from(settings.flow_report.as_nanos()).unwrap_or(u64::MAX);
    let max_ttl_ns = name_tracking.max_ttl_secs.saturating_mul(1_000_000_000);

    let previous = pins.previous;
    pins.drop_incompatible_maps();
    let compatible = previous.is_some_and(|p| p.compatible);
    if compatible {
        warn_resized(
            &pins,
            names::EVENTS,
            settings.ring_buffer_bytes,
            "kernel.ring_buffer_kib",
        );
        warn_resized(
            &pins,
            names::DNS_NAMES,
            name_tracking.max_entries,
            "names.max_entries",
        );
        warn_resized(&pins, names::FLOWS, settings.max_flows, "kernel.max_flows");
    }
    let mut loader = EbpfLoader::new();
    loader
        .override_global(names::MAY_BLOCK, &may_block_flag, true)
        .override_global(names::NAMES_ENABLED, &names_flag, true)
        .override_global(names::SNI_ENABLED, &sni_flag, true)
        .override_global(names::NAME_MIN_TTL_NS, &min_ttl_ns, true)
        .override_global(names::NAME_MAX_TTL_NS, &max_ttl_ns, true)
        .map_max_entries(names::DNS_NAMES, name_tracking.max_entries)
        .override_global(names::WAKEUP_BYTES, &wakeup_bytes, true)
        .override_global(names::FLOWS_ENABLED, &flows_flag, true)
        .override_global(names::FLOW_REPORT_NS, &flow_report_ns, true)
        .map_max_entries(names::FLOWS, settings.max_flows)
        .override_global(names::TRACK_CGROUP_ID, &track_id, true)
        .override_global(names::TRACK_CGROUP_LEVEL, &track_level, true)
        .map_max_entries(names::EVENTS, settings.ring_buffer_bytes);
    // The maps handed from daemon to daemon: reused where pinned, made
    // and pinned where not.
    for name in names::PINNED_MAPS {
        loader.map_pin_path(name, pins.map_path(name));
    }
    let mut ebpf = loader
        .load(OBJECT)
        .map_err(|e| KernelError::from_aya("loading the kernel object", e))?;

    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(KernelLog(logger)),
        Err(e) => {
            debug!("kernel-side logging unavailable: {e}");
            None
        }
    };

    let mut policy_maps = PolicyMaps::take(&mut ebpf)?;
    let mut geo_maps = GeoMaps::take(&mut ebpf)?;
    if let Some(p) = previous {
        policy_maps.numbered_after(p.state.policy_generation);
        geo_maps.numbered_after(p.state.geo_generation);
    }
    let policy_generation = policy_maps.install(compiled, cgroups)?;
    let installed = match geo {
        Some((v4, v6)) => Some(geo_maps.install(v4, v6)?),
        None => None,
    };

    // The state first: a fresh heartbeat before any program of this
    // daemon can read the staleness bound.
    let prev_state = previous.filter(|p| p.compatible).map(|p| p.state);
    let baseline = Baseline {
        consumed: prev_state.map_or(0, |s| s.consumed),
        lost_reported: prev_state.map_or(0, |s| s.lost_reported),
        flows_lost_reported: prev_state.map_or(0, |s| s.flows_lost_reported),
    };
    let state = StateMap::new(
        take_map(&mut ebpf, names::DAEMON)?,
        DaemonState {
            abi: PIN_ABI,
            clean_stop: 0,
            consumed: baseline.consumed,
            lost_reported: baseline.lost_reported,
            flows_lost_reported: baseline.flows_lost_reported,
            cgroup_id: target.id,
            policy_generation,
            geo_generation: installed.map_or(0, |i| i.generation),
            stale_after_ns: settings
                .stale_after
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            when_stale: match settings.when_stale {
                WhenStale::Enforce => residency_common::WHEN_STALE_ENFORCE,
                WhenStale::Monitor => residency_common::WHEN_STALE_MONITOR,
            },
            pid: std::process::id(),
            ..DaemonState::default()
        },
    )?;
    let mut held = Held::default();

    // Before the cgroup programs: a process that execs from now on is
    // known by the time its first call is reported.
    let tracking = track_processes(&mut ebpf, &pins, &mut held);

    let cgroup = File::open(&target.path).map_err(|e| KernelError::CgroupOpen {
        path: target.path.clone(),
        source: e,
    })?;
    // The previous daemon's links are taken over only on the same cgroup.
    let reuse = previous.is_some_and(|p| p.state.cgroup_id == target.id || !p.compatible);
    let mut wanted: Vec<&str> = Vec::new();
    for name in names::PROGRAMS {
        let program: &mut CgroupSockAddr = find_program(&mut ebpf, name)?;
        let fd = load_and_lend!(program, name);
        let path = pins.link_path(name);
        let outcome = pins::install_link(&path, fd, reuse, || {
            // On kernels with BPF links (5.7+) aya attaches through a link,
            // and cgroup links always run alongside other programs
            // (systemd's, a CNI's) without replacing them; the kernel
            // refuses any flag there, so the mode must be the default.
            let id = program
                .attach(&cgroup, CgroupAttachMode::Single)
                .map_err(|e| KernelError::from_program(name, "attaching", e))?;
            fd_link!(program, id, name)
        })?;
        held.keep(name, outcome);
        wanted.push(name);
        debug!(program = name, cgroup = %target.path.display(), "in force");
    }

    attach_packet_programs(
        &mut ebpf,
        &cgroup,
        &PacketParts {
            names: name_tracking.track,
            sni: name_tracking.track && name_tracking.sni,
            flows: settings.flows,
        },
        &target,
        &pins,
        reuse,
        &mut held,
    )?;
    if settings.flows {
        attach_flow_programs(&mut ebpf, &cgroup, &target, &pins, reuse, &mut held)?;
    }
    // Links of programs this configuration does not run any more (names
    // or flows turned off, or a program of an earlier build) go now that
    // everything else is in force.
    for name in pins.pinned_links() {
        if !held.outcomes.iter().any(|(n, _)| *n == name) {
            let _ = std::fs::remove_file(pins.link_path(&name));
            info!(
                program = name,
                "detached a program this configuration does not run"
            );
        }
    }

    let events = ring::EventRing::new(take_map(&mut ebpf, names::EVENTS)?)?;
    let counters = CounterReader {
        stats: PerCpuArray::try_from(take_map(&mut ebpf, names::STATS)?)
            .map_err(|e| KernelError::from_aya("opening the kernel counters", e))?,
    };

    let adoption = match previous {
        Some(p) => {
            let now = counters.read()?;
            let kept = held.outcomes.iter().any(|(n, o)| {
                names::PROGRAMS.contains(&n.as_str()) && matches!(o, LinkOutcome::Updated { .. })
            });
            Some(Adoption {
                previous: p.state,
                compatible: p.compatible,
                enforcement_kept: kept,
                waiting: if p.compatible {
                    now.submitted.saturating_sub(baseline.consumed)
                } else {
                    0
                },
                not_recorded: if p.compatible {
                    now.dropped.saturating_sub(baseline.lost_reported)
                } else {
                    0
                },
            })
        }
        None => None,
    };

    info!(
        cgroup = %target.path.display(),
        cgroup_id = target.id,
        may_block,
        ring_kib = settings.ring_buffer_bytes / 1024,
        process_tracking = tracking.is_ok(),
        pins = %pins.dir.display(),
        adopted = adoption.is_some(),
        "programs in force"
    );
    if let Err(e) = &tracking {
        warn!(
            "process tracking is off ({e}); executables and command lines come from /proc, \
             which misses processes that exit right after their call"
        );
    }
    if may_block && target.is_root {
        warn!("enforcing on the cgroup2 root: deny rules apply to every process on this host");
    }
    Ok(Started {
        kernel: Kernel {
            attached: Attached {
                ebpf: Some(ebpf),
                links: held.pinned,
                pins: Some(pins),
                target,
                may_block,
            },
            events,
            counters,
            state,
            baseline,
            persist: settings.persist,
            logger,
        },
        geo: geo_maps,
        policy: policy_maps,
        geo_installed: installed,
        policy_generation,
        adoption,
    })
}

/// A program attached without a BPF link (an old kernel) cannot be pinned,
/// and would not outlive the daemon.
fn no_link(program: &str, e: &aya::programs::links::LinkError) -> KernelError {
    KernelError::Aya {
        doing: format!("pinning the link of {program}"),
        source: format!(
            "{e}: the kernel attached it without a BPF link, which cannot be pinned; pinned \
             enforcement needs Linux 5.7 or later (5.15 for the process tracepoints)"
        )
        .into(),
    }
}

/// Links this daemon holds, and what became of each.
#[derive(Default)]
struct Held {
    pinned: Vec<PinnedLink>,
    outcomes: Vec<(String, LinkOutcome)>,
}

impl Held {
    fn keep(&mut self, name: &str, (outcome, pinned): (LinkOutcome, Option<PinnedLink>)) {
        self.pinned.extend(pinned);
        self.outcomes.push((name.to_owned(), outcome));
    }
}

/// A program's descriptor for the length of one link operation.
///
/// # Safety
/// The program it was borrowed from must outlive the use; each caller uses
/// it within the statement that borrowed it, while `ebpf` owns the program.
unsafe fn borrow(fd: std::os::fd::BorrowedFd<'_>) -> std::os::fd::BorrowedFd<'static> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: the caller's promise.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) }
}

/// Warns when a pinned map keeps a size the configuration no longer asks
/// for (a pinned map cannot be resized; `residency detach` makes it anew).
fn warn_resized(pins: &Pins, name: &str, wanted: u32, field: &str) {
    let Ok(map) = MapData::from_pin(pins.map_path(name)) else {
        return;
    };
    if let Ok(info) = map.info()
        && info.max_entries() != wanted
    {
        warn!(
            map = name,
            pinned = info.max_entries(),
            configured = wanted,
            "{field} changed, but the pinned {name} keeps its size until `residency detach` \
             (the programs detach then, until the daemon starts again)"
        );
    }
}

/// The packet programs (`residency-ebpf/src/packets.rs`), one per
/// direction, where a part of them is switched on: in, DNS answers (names)
/// and bytes (flows); out, TLS hellos (server names) and bytes. They never
/// drop a packet (they return 1 whatever they find).
fn attach_packet_programs(
    ebpf: &mut Ebpf,
    cgroup: &File,
    parts: &PacketParts,
    target: &CgroupTarget,
    pins: &Pins,
    reuse: bool,
    held: &mut Held,
) -> Result<(), KernelError> {
    let skb = [
        (
            names::SKB_INGRESS,
            CgroupSkbAttachType::Ingress,
            parts.names || parts.flows,
        ),
        (
            names::SKB_EGRESS,
            CgroupSkbAttachType::Egress,
            parts.sni || parts.flows,
        ),
    ];
    for (name, attach, wanted) in skb {
        if wanted {
            attach_skb(ebpf, cgroup, name, attach, pins, reuse, held)?;
            debug!(program = name, cgroup = %target.path.display(), "in force");
        }
    }
    Ok(())
}

/// Which parts of the packet programs are switched on.
struct PacketParts {
    names: bool,
    sni: bool,
    flows: bool,
}

/// Loads a `cgroup_skb` program and puts it in force on `cgroup` behind
/// its pinned link (taken over in place where `reuse`).
fn attach_skb(
    ebpf: &mut Ebpf,
    cgroup: &File,
    name: &str,
    attach: CgroupSkbAttachType,
    pins: &Pins,
    reuse: bool,
    held: &mut Held,
) -> Result<(), KernelError> {
    let program: &mut CgroupSkb = find_program(ebpf, name)?;
    let fd = load_and_lend!(program, name);
    let outcome = pins::install_link(&pins.link_path(name), fd, reuse, || {
        let id = program
            .attach(cgroup, attach, CgroupAttachMode::Single)
            .map_err(|e| KernelError::from_program(name, "attaching", e))?;
        fd_link!(program, id, name)
    })?;
    held.keep(name, outcome);
    Ok(())
}

/// The flows' end programs (`residency-ebpf/src/flows.rs`; their bytes
/// are counted by the packet programs): the socket's release, and a TCP
/// connection's state (its end at `TCP_CLOSE`, after what the stack sends
/// once the application has closed it). They never refuse a close.
fn attach_flow_programs(
    ebpf: &mut Ebpf,
    cgroup: &File,
    target: &CgroupTarget,
    pins: &Pins,
    reuse: bool,
    held: &mut Held,
) -> Result<(), KernelError> {
    // Two program types with the same attach call: a macro, not a
    // generic function (aya has no trait for it).
    macro_rules! attach {
        ($kind:ty, $name:expr) => {{
            let name = $name;
            let program: &mut $kind = find_program(ebpf, name)?;
            let fd = load_and_lend!(program, name);
            let outcome = pins::install_link(&pins.link_path(name), fd, reuse, || {
                let id = program
                    .attach(cgroup, CgroupAttachMode::Single)
                    .map_err(|e| KernelError::from_program(name, "attaching", e))?;
                fd_link!(program, id, name)
            })?;
            held.keep(name, outcome);
        }};
    }
    attach!(CgroupSock, names::SOCK_RELEASE);
    attach!(SockOps, names::TCP_STATE);
    debug!(cgroup = %target.path.display(), "flow programs in force");
    Ok(())
}

/// Loads and attaches the exec, fork and exit tracepoints
/// (`residency-ebpf/src/process.rs`), mounting tracefs where it is missing.
/// Perf-event links cannot be updated in place: the new one is attached
/// and pinned, then the old one let go (for a moment both report; process
/// records are idempotent).
fn track_processes(ebpf: &mut Ebpf, pins: &Pins, held: &mut Held) -> Result<(), KernelError> {
    ensure_tracefs()?;
    for (name, category, tracepoint) in names::PROCESS_PROGRAMS {
        let program: &mut TracePoint = find_program(ebpf, name)?;
        let fd = load_and_lend!(program, name);
        let outcome = pins::install_link(&pins.link_path(name), fd, false, || {
            let id = program
                .attach(category, tracepoint)
                .map_err(|e| KernelError::from_program(name, "attaching", e))?;
            fd_link!(program, id, name)
        })?;
        held.keep(name, outcome);
        debug!(program = name, tracepoint = %format!("{category}/{tracepoint}"), "attached");
    }
    Ok(())
}

/// Tracepoints are attached by their ids in tracefs, which many hosts do
/// not mount; mount it at its usual place if so.
fn ensure_tracefs() -> Result<(), KernelError> {
    if probe::probe().tracefs.is_some() {
        return Ok(());
    }
    let at = Path::new("/sys/kernel/tracing");
    nix::mount::mount(
        Some("nodev"),
        at,
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| KernelError::Aya {
        doing: format!("mounting tracefs at {}", at.display()),
        source: Box::new(e),
    })?;
    info!(at = %at.display(), "mounted tracefs for the process tracepoints");
    Ok(())
}

/// A program of the kernel object, as its type.
fn find_program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, KernelError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| KernelError::Aya {
            doing: format!("finding program {name}"),
            source: "not in the kernel object".into(),
        })?
        .try_into()
        .map_err(|e| KernelError::from_program(name, "preparing", e))
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map, KernelError> {
    ebpf.take_map(name).ok_or_else(|| KernelError::Aya {
        doing: format!("finding map {name}"),
        source: "not in the kernel object".into(),
    })
}
