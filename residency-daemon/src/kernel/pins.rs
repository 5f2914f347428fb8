//! Pins: what keeps enforcement alive while no daemon runs.
//!
//! Each instance has a directory on bpffs, `/sys/fs/bpf/residency/<instance>`:
//!
//! - `links/<program>`: the BPF links that attach the programs (to the
//!   cgroup, and to the process tracepoints). A pinned link stays attached
//!   when the daemon exits, is killed or crashes; only removing the pin
//!   detaches it.
//! - `maps/<map>`: the maps a daemon hands to the next one
//!   ([`names::PINNED_MAPS`]): the ring with the decisions nobody read yet,
//!   the counters, the daemon's state, and what the kernel has learnt of
//!   DNS names.
//!
//! A daemon that finds the directory adopts it: it loads its own programs
//! (bound to the pinned maps) and swaps them into the pinned cgroup links
//! with `BPF_LINK_UPDATE`, which replaces a program in place. There is no
//! moment in which nothing is attached, whether the programs are the same
//! build (a restart) or a new one (an upgrade).
//!
//! The directory is locked (`flock`) while a daemon runs, so that two never
//! read one ring. `residency detach` removes the directory: that is the only
//! thing that detaches pinned programs, besides a daemon stopping cleanly
//! with `kernel.persist = false`.

use std::{
    fs::{self, File},
    io,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, Map, MapData},
    programs::links::{FdLink, PinnedLink},
};
use nix::fcntl::{Flock, FlockArg};
use residency_common::{DaemonState, PIN_ABI, names};
use tracing::{info, warn};

use super::KernelError;

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The directory of every instance's pins.
pub const ROOT: &str = "/sys/fs/bpf/residency";

/// How long a starting daemon waits for the previous one of its instance
/// to let go of the pins (a stop in progress drains its ring first).
const LOCK_WAIT: Duration = Duration::from_secs(20);

/// An instance's pin directory, locked for this daemon.
pub struct Pins {
    pub dir: PathBuf,
    pub instance: String,
    /// Held while the daemon runs.
    _lock: Flock<File>,
    /// What the daemon before this one left, if anything.
    pub previous: Option<Previous>,
}

/// The state the previous daemon of this instance left in its pins.
#[derive(Debug, Clone, Copy)]
pub struct Previous {
    pub state: DaemonState,
    /// The pinned maps have this build's layout: they are adopted, and the
    /// decisions waiting in the ring are read. Otherwise they are replaced
    /// (the links are still updated in place).
    pub compatible: bool,
}

impl Pins {
    /// The directory of `instance`: mounts bpffs if it is missing, makes
    /// the directory, waits for (and takes) its lock, and reads what the
    /// previous daemon left.
    ///
    /// # Errors
    /// If bpffs cannot be mounted, the directory cannot be made, or another
    /// daemon keeps the instance for longer than [`LOCK_WAIT`].
    pub fn open(instance: &str) -> Result<Self, KernelError> {
        ensure_bpffs()?;
        let dir = Path::new(ROOT).join(instance);
        for sub in ["", "maps", "links"] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir.join(sub))
                .map_err(|e| io_err(format!("making {}", dir.join(sub).display()), e))?;
        }
        let lock = lock(&dir, instance)?;
        let previous = read_previous(&dir);
        Ok(Pins {
            dir,
            instance: instance.to_owned(),
            _lock: lock,
            previous,
        })
    }

    /// The pin of a map this build keeps across daemons.
    #[must_use]
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    /// The pin of a program's link.
    #[must_use]
    pub fn link_path(&self, program: &str) -> PathBuf {
        self.dir.join("links").join(program)
    }

    /// Removes the map pins the previous daemon left when they cannot be
    /// adopted (another layout), so that the loader makes new ones.
    pub fn drop_incompatible_maps(&self) {
        if self.previous.is_some_and(|p| p.compatible) {
            return;
        }
        for name in names::PINNED_MAPS {
            let _ = fs::remove_file(self.map_path(name));
        }
    }

    /// The links pinned now, by program name.
    #[must_use]
    pub fn pinned_links(&self) -> Vec<String> {
        list(&self.dir.join("links"))
    }
}

/// Mounts bpffs at [`BPFFS`] if it is not there. True if it did.
///
/// # Errors
/// If it is missing and cannot be mounted.
pub fn ensure_bpffs() -> Result<bool, KernelError> {
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(false);
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|e| KernelError::Aya {
        doing: format!("mounting bpffs at {BPFFS} (the programs' pins live there)"),
        source: Box::new(e),
    })?;
    // In a mount namespace of its own (a sandboxed service), the mount and
    // every pin on it end with the namespace: enforcement would not outlive
    // the daemon after all.
    let own = fs::read_link("/proc/self/ns/mnt").ok();
    let init = fs::read_link("/proc/1/ns/mnt").ok();
    if own.is_some() && init.is_some() && own != init {
        warn!(
            "mounted bpffs at {BPFFS} inside this process's own mount namespace: the pins last \
             only as long as it does; mount bpffs on the host first (the systemd unit does, in \
             ExecStartPre)"
        );
    } else {
        info!(at = BPFFS, "mounted bpffs for the programs' pins");
    }
    Ok(true)
}

/// Whether `path` is a mounted bpffs.
#[must_use]
pub fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Takes the instance's lock, waiting for a daemon that is stopping.
fn lock(dir: &Path, instance: &str) -> Result<Flock<File>, KernelError> {
    let deadline = Instant::now() + LOCK_WAIT;
    let mut said = false;
    loop {
        let file = File::open(dir).map_err(|e| io_err(format!("opening {}", dir.display()), e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                if !said {
                    info!(
                        instance,
                        "another residency daemon holds this instance's pins; waiting for it to stop"
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(KernelError::Aya {
                    doing: format!("taking instance {instance} ({})", dir.display()),
                    source: format!(
                        "another residency daemon has held it for {}s; stop it, or give this one \
                         another kernel.instance (each instance attaches its own programs)",
                        LOCK_WAIT.as_secs()
                    )
                    .into(),
                });
            }
            Err((_, e)) => {
                return Err(io_err(
                    format!("locking {}", dir.display()),
                    io::Error::from(e),
                ));
            }
        }
    }
}

fn read_previous(dir: &Path) -> Option<Previous> {
    let path = dir.join("maps").join(names::DAEMON);
    if !path.exists() {
        return None;
    }
    let state = MapData::from_pin(&path)
        .ok()
        .and_then(|m| Array::<MapData, DaemonState>::try_from(Map::Array(m)).ok())
        .and_then(|a| a.get(&0, 0).ok());
    match state {
        Some(state) => Some(Previous {
            compatible: state.abi == PIN_ABI,
            state,
        }),
        // A DAEMON map of another size: an older layout.
        None => Some(Previous {
            state: DaemonState::default(),
            compatible: false,
        }),
    }
}

/// The `DAEMON` map, written by the one task that reads the ring.
pub struct StateMap {
    map: Array<MapData, DaemonState>,
    pub state: DaemonState,
}

impl StateMap {
    pub(super) fn new(map: Map, state: DaemonState) -> Result<Self, KernelError> {
        let map =
            Array::try_from(map).map_err(|e| KernelError::from_aya("opening the DAEMON map", e))?;
        let mut s = StateMap { map, state };
        s.write();
        Ok(s)
    }

    /// Writes the state with the time now (a heartbeat: the programs count
    /// the tables stale from the last one).
    pub fn write(&mut self) {
        self.state.heartbeat_unix_ns = unix_ns();
        self.state.heartbeat_boot_ns = boot_ns();
        if let Err(e) = self.map.set(0, self.state, 0) {
            warn!("cannot write the daemon's state to its pinned map: {e}");
        }
    }
}

/// Nanoseconds since the Unix epoch.
#[must_use]
pub fn unix_ns() -> u64 {
    u64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(0)
}

/// Nanoseconds since boot, as `bpf_ktime_get_boot_ns` counts them.
#[must_use]
pub fn boot_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
        u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
            + u64::try_from(t.tv_nsec()).unwrap_or(0)
    })
}

/// What happened to one program's link at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkOutcome {
    /// A pinned link now runs this daemon's program (`BPF_LINK_UPDATE`).
    Updated {
        link_id: u32,
        old_prog: u32,
        new_prog: u32,
    },
    /// Attached now and pinned.
    Attached { link_id: u32 },
}

/// `bpf(2)` commands used here that aya does not expose (numbers from
/// `enum bpf_cmd` in linux/bpf.h).
mod sys {
    pub const BPF_OBJ_GET: i64 = 7;
    pub const BPF_LINK_UPDATE: i64 = 29;

    /// `union bpf_attr` for `BPF_OBJ_GET`.
    #[repr(C)]
    pub struct ObjGet {
        pub pathname: u64,
        pub bpf_fd: u32,
        pub file_flags: u32,
    }

    /// `union bpf_attr` for `BPF_LINK_UPDATE`.
    #[repr(C)]
    pub struct LinkUpdate {
        pub link_fd: u32,
        pub new_prog_fd: u32,
        pub flags: u32,
        pub old_prog_fd: u32,
    }
}

fn bpf<T>(cmd: i64, attr: &T) -> io::Result<i64> {
    // SAFETY: `attr` is a `union bpf_attr` prefix laid out for `cmd`, alive
    // for the call, and its size is passed with it.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<T>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Opens a pinned object.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let attr = sys::ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = bpf(sys::BPF_OBJ_GET, &attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Replaces the program of the link pinned at `path` with `prog`, in place
/// (aya keeps its own `bpf_link_update` private).
fn link_update(path: &Path, prog: BorrowedFd<'_>) -> io::Result<()> {
    let link = obj_get(path)?;
    let attr = sys::LinkUpdate {
        link_fd: u32::try_from(link.as_raw_fd()).unwrap_or(0),
        new_prog_fd: u32::try_from(prog.as_raw_fd()).unwrap_or(0),
        flags: 0,
        old_prog_fd: 0,
    };
    bpf(sys::BPF_LINK_UPDATE, &attr).map(|_| ())
}

/// The link and program ids of the link pinned at `path`.
#[must_use]
pub fn link_ids(path: &Path) -> Option<(u32, u32)> {
    let link = FdLink::from(PinnedLink::from_pin(path).ok()?);
    let info = link.info().ok()?;
    Some((info.id(), info.program_id()))
}

/// Puts `prog` behind the pinned link at `path` if there is one (and
/// `reuse` allows it), else attaches it with `attach` and pins the new link
/// there, replacing any old pin only once the new link is attached.
///
/// # Errors
/// If neither works.
pub fn install_link(
    path: &Path,
    prog: BorrowedFd<'_>,
    reuse: bool,
    attach: impl FnOnce() -> Result<FdLink, KernelError>,
) -> Result<(LinkOutcome, Option<PinnedLink>), KernelError> {
    if reuse && path.exists() {
        let before = link_ids(path);
        match link_update(path, prog) {
            Ok(()) => {
                let (link_id, new_prog) = link_ids(path).unwrap_or_default();
                let old_prog = before.map_or(0, |b| b.1);
                return Ok((
                    LinkOutcome::Updated {
                        link_id,
                        old_prog,
                        new_prog,
                    },
                    PinnedLink::from_pin(path).ok(),
                ));
            }
            Err(e) => {
                // A link whose cgroup is gone, or of another kind: attach
                // anew, then let the old one go.
                warn!(pin = %path.display(), "cannot update the pinned link ({e}); attaching anew");
            }
        }
    }
    let link = attach()?;
    // The new link runs alongside the old one until the old pin goes: never
    // a moment with neither.
    let _ = fs::remove_file(path);
    let link_id = link.info().map_or(0, |i| i.id());
    let pinned = link
        .pin(path)
        .map_err(|e| KernelError::from_aya(format!("pinning {}", path.display()), e))?;
    Ok((LinkOutcome::Attached { link_id }, Some(pinned)))
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn io_err(doing: String, e: io::Error) -> KernelError {
    if matches!(e.raw_os_error(), Some(nix::libc::EPERM | nix::libc::EACCES)) {
        return KernelError::denied(doing);
    }
    KernelError::Aya {
        doing,
        source: Box::new(e),
    }
}

/// What `residency detach` removed from one instance.
#[derive(Debug, Default)]
pub struct Removed {
    pub instance: String,
    /// `(program, link id, program id)`.
    pub links: Vec<(String, Option<(u32, u32)>)>,
    pub maps: Vec<String>,
    /// The pid of the daemon that ran it, if it said so.
    pub last_pid: Option<u32>,
}

/// The instances that have pins.
#[must_use]
pub fn instances() -> Vec<String> {
    list(Path::new(ROOT))
}

/// Removes an instance's pins, and so detaches its programs (once no
/// daemon holds them). Refuses while a daemon runs it, unless `force`.
///
/// # Errors
/// If a daemon runs it, or a pin cannot be removed.
pub fn detach(instance: &str, force: bool) -> Result<Removed, KernelError> {
    let dir = Path::new(ROOT).join(instance);
    if !dir.is_dir() {
        return Err(KernelError::Aya {
            doing: format!("detaching instance {instance}"),
            source: format!("{} does not exist: nothing is pinned there", dir.display()).into(),
        });
    }
    let file = File::open(&dir).map_err(|e| io_err(format!("opening {}", dir.display()), e))?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Some(l),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if force => None,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            return Err(KernelError::Aya {
                doing: format!("detaching instance {instance}"),
                source: "a residency daemon runs it: stop the daemon first (its programs stay \
                         attached unless kernel.persist = false), or pass --force (the programs \
                         then detach when that daemon exits)"
                    .into(),
            });
        }
        Err((_, e)) => return Err(io_err(format!("locking {}", dir.display()), e.into())),
    };
    let previous = read_previous(&dir);
    let mut removed = Removed {
        instance: instance.to_owned(),
        last_pid: previous.map(|p| p.state.pid).filter(|p| *p != 0),
        ..Removed::default()
    };
    for name in list(&dir.join("links")) {
        let path = dir.join("links").join(&name);
        let ids = link_ids(&path);
        fs::remove_file(&path).map_err(|e| io_err(format!("removing {}", path.display()), e))?;
        removed.links.push((name, ids));
    }
    for name in list(&dir.join("maps")) {
        let path = dir.join("maps").join(&name);
        fs::remove_file(&path).map_err(|e| io_err(format!("removing {}", path.display()), e))?;
        removed.maps.push(name);
    }
    // Anything else someone put there goes too: the directory is ours.
    fs::remove_dir_all(&dir).map_err(|e| io_err(format!("removing {}", dir.display()), e))?;
    drop(lock);
    if list(Path::new(ROOT)).is_empty() {
        let _ = fs::remove_dir(ROOT);
    }
    Ok(removed)
}
