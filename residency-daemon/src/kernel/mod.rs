//! The kernel stage: the only module that touches aya.
//!
//! It loads the programs built from `residency-ebpf` (embedded in this
//! binary), writes the compiled configuration into their maps, attaches them
//! to a cgroup v2 directory, and hands the rest of the daemon two things: an
//! [`EventRing`] to read decisions from, and [`KernelCounters`] that say how
//! many decisions the kernel made and how many it could not report.
//!
//! Programs are attached through BPF links, which the kernel detaches as soon
//! as the last file descriptor to them closes: a daemon that crashes or is
//! killed leaves nothing attached behind it.

pub mod config;
mod geo_maps;
mod policy_maps;
mod probe;
mod ring;

use std::{
    fs::File,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, ProgramError, TracePoint,
    },
};
pub use config::{KernelConfig, RawKernel};
pub use geo_maps::{GeoMaps, Installed};
pub use policy_maps::{GRACE, PolicyMaps};
pub use probe::{Features, probe};
use residency_common::{Stat, names};
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
        })
    }
}

/// Programs loaded and attached. Dropping it (or calling [`Attached::detach`])
/// detaches them; the event ring and counters stay readable, so that the
/// daemon can collect what was decided up to that moment.
pub struct Attached {
    ebpf: Option<Ebpf>,
    pub target: CgroupTarget,
    /// Whether the deny path was compiled in.
    pub may_block: bool,
}

impl Attached {
    /// Detaches every program. Idempotent.
    pub fn detach(&mut self) {
        if self.ebpf.take().is_some() {
            info!(cgroup = %self.target.path.display(), "programs detached");
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Everything the rest of the daemon gets from the kernel stage.
pub struct Kernel {
    pub attached: Attached,
    pub events: EventRing,
    pub counters: CounterReader,
    /// Kernel-side diagnostics, when the programs have any.
    pub logger: Option<KernelLog>,
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
}

/// Loads the programs, installs the first policy generation (`compiled`,
/// with the cgroups that select workloads) and the first `GeoIP` tables
/// (`geo`, when there are any), and only then attaches the programs to
/// `target`, so that the first call they see is judged with everything in
/// place.
///
/// # Errors
/// A [`KernelError`] that says in one line why it could not be done.
pub fn start(
    settings: &KernelConfig,
    name_tracking: &NamesConfig,
    may_block: bool,
    compiled: &Compiled,
    cgroups: &[(u64, u32)],
    target: CgroupTarget,
    geo: Option<GeoTables<'_>>,
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
    let max_ttl_ns = name_tracking.max_ttl_secs.saturating_mul(1_000_000_000);
    let mut ebpf = EbpfLoader::new()
        .override_global(names::MAY_BLOCK, &may_block_flag, true)
        .override_global(names::NAMES_ENABLED, &names_flag, true)
        .override_global(names::SNI_ENABLED, &sni_flag, true)
        .override_global(names::NAME_MIN_TTL_NS, &min_ttl_ns, true)
        .override_global(names::NAME_MAX_TTL_NS, &max_ttl_ns, true)
        .map_max_entries(names::DNS_NAMES, name_tracking.max_entries)
        .override_global(names::WAKEUP_BYTES, &wakeup_bytes, true)
        .override_global(names::TRACK_CGROUP_ID, &track_id, true)
        .override_global(names::TRACK_CGROUP_LEVEL, &track_level, true)
        .map_max_entries(names::EVENTS, settings.ring_buffer_bytes)
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
    let policy_generation = policy_maps.install(compiled, cgroups)?;
    let mut geo_maps = GeoMaps::take(&mut ebpf)?;
    let installed = match geo {
        Some((v4, v6)) => Some(geo_maps.install(v4, v6)?),
        None => None,
    };

    // Before the cgroup programs: a process that execs from now on is
    // known by the time its first call is reported.
    let tracking = track_processes(&mut ebpf);

    let cgroup = File::open(&target.path).map_err(|e| KernelError::CgroupOpen {
        path: target.path.clone(),
        source: e,
    })?;
    for name in names::PROGRAMS {
        let program: &mut CgroupSockAddr = find_program(&mut ebpf, name)?;
        program
            .load()
            .map_err(|e| KernelError::from_program(name, "loading", e))?;
        // On kernels with BPF links (5.7+) aya attaches through a link, and
        // cgroup links always run alongside other programs (systemd's, a
        // CNI's) without replacing them; the kernel refuses any flag there,
        // so the mode must be the default.
        program
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(|e| KernelError::from_program(name, "attaching", e))?;
        debug!(program = name, cgroup = %target.path.display(), "attached");
    }

    attach_name_programs(&mut ebpf, &cgroup, name_tracking, &target)?;

    let events = ring::EventRing::new(take_map(&mut ebpf, names::EVENTS)?)?;
    let stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(take_map(&mut ebpf, names::STATS)?)
            .map_err(|e| KernelError::from_aya("opening the kernel counters", e))?;

    info!(
        cgroup = %target.path.display(),
        cgroup_id = target.id,
        may_block,
        ring_kib = settings.ring_buffer_bytes / 1024,
        process_tracking = tracking.is_ok(),
        "programs attached"
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
                target,
                may_block,
            },
            events,
            counters: CounterReader { stats },
            logger,
        },
        geo: geo_maps,
        policy: policy_maps,
        geo_installed: installed,
        policy_generation,
    })
}

/// The name programs, when names are tracked: DNS answers in, TLS hellos
/// out. They never drop a packet (they return 1 whatever they find).
fn attach_name_programs(
    ebpf: &mut Ebpf,
    cgroup: &File,
    name_tracking: &NamesConfig,
    target: &CgroupTarget,
) -> Result<(), KernelError> {
    if !name_tracking.track {
        return Ok(());
    }
    let skb = [
        (names::DNS_INGRESS, CgroupSkbAttachType::Ingress),
        (names::TLS_EGRESS, CgroupSkbAttachType::Egress),
    ];
    for (name, attach) in skb {
        if name == names::TLS_EGRESS && !name_tracking.sni {
            continue;
        }
        let program: &mut CgroupSkb = find_program(ebpf, name)?;
        program
            .load()
            .map_err(|e| KernelError::from_program(name, "loading", e))?;
        program
            .attach(cgroup, attach, CgroupAttachMode::Single)
            .map_err(|e| KernelError::from_program(name, "attaching", e))?;
        debug!(program = name, cgroup = %target.path.display(), "attached");
    }
    Ok(())
}

/// Loads and attaches the exec, fork and exit tracepoints
/// (`residency-ebpf/src/process.rs`), mounting tracefs where it is missing.
fn track_processes(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    ensure_tracefs()?;
    for (name, category, tracepoint) in names::PROCESS_PROGRAMS {
        let program: &mut TracePoint = find_program(ebpf, name)?;
        program
            .load()
            .map_err(|e| KernelError::from_program(name, "loading", e))?;
        program
            .attach(category, tracepoint)
            .map_err(|e| KernelError::from_program(name, "attaching", e))?;
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
