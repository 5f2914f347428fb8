//! The identity stage: who made a call, beyond what the kernel record holds.
//!
//! The kernel record names the thread (`pid`, `tid`, `comm`) and its cgroup
//! id. This module adds the executable and command line, and the cgroup's
//! path from the shared [`crate::workloads::Tree`].
//!
//! The executable and arguments come first from the kernel itself: the
//! process tracepoints (`residency-ebpf/src/process.rs`) report every exec,
//! fork and exit under the watched cgroup in the same ring as the
//! decisions, in order, so a process that execs, connects and exits within a
//! millisecond is still named, and an ended process is forgotten before its
//! pid can be reused. Processes that were running before the daemon
//! started (or whose records the kernel dropped) are read from `/proc`
//! while they live; a pid the kernel has since given to another process is
//! not mistaken for the one that made the call: the thread's name must
//! match the record's, and a cached answer is checked against the
//! process's start time at least once a second.

use std::{
    num::NonZeroUsize,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use residency_common::{EXEC_ARGS_TRUNCATED, EXIT_GROUP_DEAD, ExecEvent};
pub use residency_record::ProcessInfo;

use crate::{kernel::Decoded, workloads::Tree};

/// Processes remembered; a process costs a few hundred bytes.
const PROCESSES: usize = 4096;
/// Processes known from the kernel's records (an entry is about 1 KiB at
/// most); ended ones are removed by their exit records.
const KNOWN: usize = 65_536;
/// Cgroup paths remembered by the writer.
const CGROUPS: usize = 4096;
/// How long a cached process is trusted before its start time is checked.
const RECHECK: Duration = Duration::from_secs(1);
/// The most of a command line that is kept (the kernel's own `ps` limit is
/// a page).
pub const MAX_COMMAND_LINE: usize = 4096;

struct Cached {
    start_time: u64,
    checked: Instant,
    info: Arc<ProcessInfo>,
}

/// A process as the kernel reported it: its program (from its exec, or its
/// parent's), and the name the kernel gave it then.
struct Known {
    info: Arc<ProcessInfo>,
    comm: String,
}

/// Reads and remembers process identities.
pub struct Processes {
    proc: PathBuf,
    cache: lru::LruCache<u32, Cached>,
    /// From the kernel's records, by pid (and thread id, for threads made
    /// by a fork record).
    known: lru::LruCache<u32, Known>,
}

impl Default for Processes {
    fn default() -> Self {
        Processes::new(Path::new("/proc"))
    }
}

impl Processes {
    /// Reads from `proc` (normally `/proc`).
    #[must_use]
    pub fn new(proc: &Path) -> Self {
        Processes {
            proc: proc.to_path_buf(),
            cache: lru::LruCache::new(NonZeroUsize::new(PROCESSES).unwrap_or(NonZeroUsize::MIN)),
            known: lru::LruCache::new(NonZeroUsize::new(KNOWN).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// The identity of process `pid` whose thread `tid` was named `comm`
    /// when it made the call; `None` if it has exited or is no longer that
    /// process.
    pub fn lookup(&mut self, pid: u32, tid: u32, comm: &str) -> Option<Arc<ProcessInfo>> {
        if let Some(k) = self.known.get(&pid)
            && k.comm == comm
        {
            return Some(k.info.clone());
        }
        self.read_proc(pid, tid, comm)
    }

    /// Updates the table from one of the kernel's process records.
    pub fn observe(&mut self, record: &Decoded) {
        match record {
            Decoded::Exec(ev) => {
                let (info, comm) = from_exec(ev);
                // A relative name ("./job") says less than the path the
                // kernel resolved, while the process still runs to ask.
                let info = if info
                    .executable
                    .as_deref()
                    .is_some_and(|e| !e.starts_with('/'))
                {
                    let exe = std::fs::read_link(self.proc.join(ev.tgid.to_string()).join("exe"))
                        .ok()
                        .map(|p| p.to_string_lossy().into_owned());
                    ProcessInfo {
                        executable: exe.or(info.executable),
                        ..info
                    }
                } else {
                    info
                };
                self.cache.pop(&ev.tgid);
                self.known.put(
                    ev.tgid,
                    Known {
                        info: Arc::new(info),
                        comm,
                    },
                );
            }
            Decoded::Fork(ev) => {
                if let Some(parent) = self.known.get(&ev.parent) {
                    let child = Known {
                        info: parent.info.clone(),
                        comm: parent.comm.clone(),
                    };
                    self.known.put(ev.pid, child);
                } else {
                    // Not known: the child must not inherit what an ended
                    // process of the same pid left behind.
                    self.known.pop(&ev.pid);
                }
            }
            Decoded::Exit(ev) => {
                if ev.pid != ev.parent {
                    self.known.pop(&ev.pid);
                }
                if ev.flags & EXIT_GROUP_DEAD != 0 {
                    self.known.pop(&ev.parent);
                    self.cache.pop(&ev.parent);
                }
            }
            Decoded::Connect(_) | Decoded::Dns(_) | Decoded::Tls(_) | Decoded::Flow(_) => {}
        }
    }

    /// From `/proc`, while the process lives.
    fn read_proc(&mut self, pid: u32, tid: u32, comm: &str) -> Option<Arc<ProcessInfo>> {
        let now = Instant::now();
        if let Some(c) = self.cache.get_mut(&pid) {
            if now.duration_since(c.checked) < RECHECK {
                return Some(c.info.clone());
            }
            if start_time(&self.proc, pid) == Some(c.start_time) {
                c.checked = now;
                return Some(c.info.clone());
            }
            self.cache.pop(&pid);
        }
        let dir = self.proc.join(pid.to_string());
        let start = start_time(&self.proc, pid)?;
        // The thread that called, if it still runs, must carry the name the
        // kernel saw; else the pid is someone else's now (or the process
        // has exec'd something else since).
        let thread_comm = std::fs::read(dir.join("task").join(tid.to_string()).join("comm"))
            .or_else(|_| std::fs::read(dir.join("comm")))
            .ok()?;
        if trim_newline(&thread_comm) != comm.as_bytes()
            && String::from_utf8_lossy(trim_newline(&thread_comm)) != comm
        {
            return None;
        }
        let executable = std::fs::read_link(dir.join("exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let (args, args_truncated) = std::fs::read(dir.join("cmdline"))
            .map(|raw| split_args(&raw))
            .unwrap_or_default();
        // Read again after: a pid reused in between shows a new start time.
        if start_time(&self.proc, pid) != Some(start) {
            return None;
        }
        let info = Arc::new(ProcessInfo {
            executable,
            args,
            args_truncated,
        });
        self.cache.put(
            pid,
            Cached {
                start_time: start,
                checked: now,
                info: info.clone(),
            },
        );
        Some(info)
    }
}

/// What an exec record says: the program and its arguments, and the name
/// the kernel gives the process (the file name's last part, 15 bytes).
fn from_exec(ev: &ExecEvent) -> (ProcessInfo, String) {
    let name_len = ev
        .filename
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(ev.filename.len());
    let filename = String::from_utf8_lossy(&ev.filename[..name_len]).into_owned();
    let len = usize::try_from(ev.args_len).unwrap_or(0).min(ev.args.len());
    let (args, cut) = split_args(&ev.args[..len]);
    let base = filename.rsplit('/').next().unwrap_or("");
    let comm: String = String::from_utf8_lossy(&base.as_bytes()[..base.len().min(15)]).into_owned();
    (
        ProcessInfo {
            executable: (!filename.is_empty()).then_some(filename),
            args,
            args_truncated: cut || ev.flags & EXEC_ARGS_TRUNCATED != 0,
        },
        comm,
    )
}

fn trim_newline(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\n").unwrap_or(b)
}

/// Field 22 of `/proc/PID/stat`: the start time in clock ticks since boot.
fn start_time(proc: &Path, pid: u32) -> Option<u64> {
    let stat = std::fs::read(proc.join(pid.to_string()).join("stat")).ok()?;
    parse_start_time(&stat)
}

/// The process name (field 2) may hold spaces and parentheses, so fields
/// are counted from the last `)`.
fn parse_start_time(stat: &[u8]) -> Option<u64> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// `/proc/PID/cmdline`: NUL-separated arguments, cut at
/// [`MAX_COMMAND_LINE`] bytes.
fn split_args(raw: &[u8]) -> (Vec<String>, bool) {
    let truncated = raw.len() > MAX_COMMAND_LINE;
    let raw = &raw[..raw.len().min(MAX_COMMAND_LINE)];
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        // Kernel threads, and processes that have released their memory.
        return (Vec::new(), truncated);
    }
    (
        raw.split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
        truncated,
    )
}

/// The cgroup tree, shared by the control task (which keeps it current from
/// inotify) and the writer (which names each record's cgroup).
pub type SharedTree = Arc<Mutex<Tree>>;

/// Cgroup id -> path, remembered by the writer in front of the shared tree.
pub struct CgroupPaths {
    tree: SharedTree,
    cache: lru::LruCache<u64, Arc<str>>,
}

impl CgroupPaths {
    #[must_use]
    pub fn new(tree: SharedTree) -> Self {
        CgroupPaths {
            tree,
            cache: lru::LruCache::new(NonZeroUsize::new(CGROUPS).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// The path of a cgroup id (relative to the cgroup2 mount), or `None`
    /// if it is gone or not yet visible. An id first seen here makes the
    /// tree rescan, at most once a second.
    pub fn path_of(&mut self, id: u64) -> Option<Arc<str>> {
        if let Some(p) = self.cache.get(&id) {
            return Some(p.clone());
        }
        let path: Arc<str> = self
            .tree
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .path_of(id)?
            .into();
        self.cache.put(id, path.clone());
        Some(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_survives_odd_names() {
        let stat = b"4242 (a) b) (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time(b"4242 (x) S 1"), None);
        assert_eq!(parse_start_time(b"garbage"), None);
    }

    #[test]
    fn command_lines_split_and_cut() {
        assert_eq!(
            split_args(b"/usr/bin/curl\0-s\0https://example.eu/\0"),
            (
                vec![
                    "/usr/bin/curl".to_owned(),
                    "-s".to_owned(),
                    "https://example.eu/".to_owned()
                ],
                false
            )
        );
        assert_eq!(split_args(b""), (Vec::new(), false));
        let long = vec![b'a'; MAX_COMMAND_LINE + 10];
        let (args, cut) = split_args(&long);
        assert!(cut);
        assert_eq!(args[0].len(), MAX_COMMAND_LINE);
    }

    fn exec(tgid: u32, filename: &str, args: &[&str]) -> Decoded {
        let mut ev = ExecEvent {
            header: residency_common::EventHeader {
                kind: residency_common::EventKind::Exec as u32,
                size: 0,
            },
            boot_ns: 1,
            tgid,
            flags: 0,
            args_len: 0,
            _pad: 0,
            filename: [0; residency_common::EXEC_FILENAME_BYTES],
            args: [0; residency_common::EXEC_ARGS_BYTES],
        };
        ev.filename[..filename.len()].copy_from_slice(filename.as_bytes());
        let mut off = 0;
        for a in args {
            ev.args[off..off + a.len()].copy_from_slice(a.as_bytes());
            off += a.len() + 1;
        }
        ev.args_len = u32::try_from(off).unwrap();
        Decoded::Exec(Box::new(ev))
    }

    fn process(kind: residency_common::EventKind, parent: u32, pid: u32, flags: u32) -> Decoded {
        let ev = residency_common::ProcessEvent {
            header: residency_common::EventHeader {
                kind: kind as u32,
                size: 0,
            },
            parent,
            pid,
            flags,
            _pad: 0,
        };
        if kind == residency_common::EventKind::Fork {
            Decoded::Fork(ev)
        } else {
            Decoded::Exit(ev)
        }
    }

    #[test]
    fn kernel_records_name_processes_that_are_gone() {
        use residency_common::EventKind::{Exit, Fork};
        // Pids far above any real one: /proc cannot answer for them.
        let (p, child, other) = (4_000_001, 4_000_002, 4_000_003);
        let mut t = Processes::default();
        t.observe(&exec(
            p,
            "/usr/bin/curl",
            &["curl", "-s", "https://example.eu/"],
        ));
        let got = t.lookup(p, p, "curl").expect("known from its exec");
        assert_eq!(got.executable.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(got.command_line(), "curl -s https://example.eu/");
        assert!(
            t.lookup(p, p, "renamed").is_none(),
            "a thread whose name differs is not taken for it"
        );
        // A child inherits the program; an exit forgets it.
        t.observe(&process(Fork, p, child, 0));
        assert_eq!(t.lookup(child, child, "curl"), Some(got.clone()));
        t.observe(&process(Exit, child, child, EXIT_GROUP_DEAD));
        assert!(t.lookup(child, child, "curl").is_none());
        // A fork from a parent nobody knows clears what an ended process of
        // the same pid left.
        t.observe(&exec(other, "/bin/sh", &["sh"]));
        t.observe(&process(Exit, other, other, EXIT_GROUP_DEAD));
        t.observe(&exec(other, "/bin/sh", &["sh"]));
        t.observe(&process(Fork, 1, other, 0));
        assert!(t.lookup(other, other, "sh").is_none());
        // A relative name stays as given when the process is gone.
        t.observe(&exec(other, "./job", &["./job"]));
        assert_eq!(
            t.lookup(other, other, "job")
                .and_then(|i| i.executable.clone())
                .as_deref(),
            Some("./job")
        );
    }

    #[test]
    fn identifies_this_process_and_refuses_a_wrong_name() {
        let pid = std::process::id();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        let comm = comm.trim_end();
        let mut p = Processes::default();
        let info = p.lookup(pid, pid, comm).expect("this process is alive");
        assert_eq!(
            info.executable.as_deref(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(Path::to_str)
        );
        assert_eq!(
            info.args,
            std::env::args().collect::<Vec<_>>(),
            "the command line, argument by argument"
        );
        let mut fresh = Processes::default();
        assert!(
            fresh.lookup(pid, pid, "not-this-name").is_none(),
            "a pid whose thread has another name is not the caller"
        );
        assert!(fresh.lookup(u32::MAX - 1, 1, "x").is_none(), "no such pid");
    }
}
