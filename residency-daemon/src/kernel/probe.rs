//! What this kernel offers, found out at start and said plainly.
//!
//! Nothing here assumes a path: the cgroup2 mount is read from
//! `/proc/self/mountinfo` (hybrid layouts mount it at
//! `/sys/fs/cgroup/unified`, unified ones at `/sys/fs/cgroup`).

use std::{fmt, path::PathBuf};

use aya::{maps::MapType, programs::ProgramType};

/// The result of probing the running kernel.
#[derive(Debug, Clone)]
pub struct Features {
    /// `uname -r`.
    pub kernel_release: String,
    /// Where cgroup v2 is mounted, if it is.
    pub cgroup2: Option<PathBuf>,
    /// Where tracefs is mounted, if it is (tracepoint programs need it).
    pub tracefs: Option<PathBuf>,
    /// Whether the kernel describes itself in BTF (`/sys/kernel/btf/vmlinux`).
    pub btf: bool,
    /// Whether `bpf` is in the active LSM list, when that list is readable.
    pub bpf_lsm: Option<bool>,
    /// cgroup `sock_addr` programs can be loaded (None: could not tell, e.g.
    /// without privileges).
    pub cgroup_sock_addr: Option<bool>,
    /// BPF ring buffers can be created.
    pub ring_buffer: Option<bool>,
}

/// Probes the running kernel. Never fails: what cannot be found out is
/// reported as unknown.
#[must_use]
pub fn probe() -> Features {
    let mounts = procfs_mounts();
    let privileged = nix::unistd::geteuid().is_root();
    // Only a mount of the hierarchy's root will do: a bind mount of a
    // subtree (root field not "/") is not "the whole host".
    let find = |fs: &str| {
        mounts
            .iter()
            .find(|(fs_type, root, _)| fs_type == fs && root == "/")
            .map(|(_, _, point)| point.clone())
    };
    Features {
        kernel_release: nix::sys::utsname::uname().map_or_else(
            |_| "unknown".to_owned(),
            |u| u.release().to_string_lossy().into_owned(),
        ),
        cgroup2: find("cgroup2"),
        tracefs: find("tracefs"),
        btf: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        bpf_lsm: std::fs::read_to_string("/sys/kernel/security/lsm")
            .ok()
            .map(|list| list.trim().split(',').any(|l| l == "bpf")),
        // Without privileges these probes fail in ways that look like "not
        // supported"; say "unknown" instead of something false.
        cgroup_sock_addr: privileged
            .then(|| aya::sys::is_program_supported(ProgramType::CgroupSockAddr).ok())
            .flatten(),
        ring_buffer: privileged
            .then(|| aya::sys::is_map_supported(MapType::RingBuf).ok())
            .flatten(),
    }
}

/// (filesystem type, root within the filesystem, mount point) for every
/// mount this process sees.
fn procfs_mounts() -> Vec<(String, String, PathBuf)> {
    let Ok(me) = procfs::process::Process::myself() else {
        return Vec::new();
    };
    me.mountinfo()
        .map(|infos| {
            infos
                .into_iter()
                .map(|m| (m.fs_type, m.root, m.mount_point))
                .collect()
        })
        .unwrap_or_default()
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn yes_no(v: Option<bool>, unknown: &str) -> String {
            match v {
                Some(true) => "yes".to_owned(),
                Some(false) => "no".to_owned(),
                None => format!("unknown ({unknown})"),
            }
        }
        let path = |p: &Option<PathBuf>, missing: &str| {
            p.as_ref().map_or_else(
                || format!("not mounted ({missing})"),
                |p| p.display().to_string(),
            )
        };
        writeln!(f, "kernel:                 {}", self.kernel_release)?;
        writeln!(
            f,
            "cgroup v2:              {}",
            path(&self.cgroup2, "required: residency attaches to cgroup v2")
        )?;
        writeln!(
            f,
            "tracefs:                {}",
            path(
                &self.tracefs,
                "tracepoint features are off; `mount -t tracefs nodev /sys/kernel/tracing`"
            )
        )?;
        writeln!(
            f,
            "BTF:                    {}",
            if self.btf {
                "yes (/sys/kernel/btf/vmlinux)"
            } else {
                "no"
            }
        )?;
        writeln!(
            f,
            "bpf LSM active:         {}",
            yes_no(self.bpf_lsm, "/sys/kernel/security/lsm unreadable")
        )?;
        writeln!(
            f,
            "cgroup sock_addr progs: {}",
            yes_no(self.cgroup_sock_addr, "probing needs root")
        )?;
        write!(
            f,
            "BPF ring buffer:        {}",
            yes_no(self.ring_buffer, "probing needs root")
        )
    }
}
