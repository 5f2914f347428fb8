//! Process tracking: which program each process in the watched cgroup runs,
//! and with which arguments, told to the daemon in the same ring as the
//! decisions and in the order things happened.
//!
//! `/proc` alone cannot name a process that exits a millisecond after its
//! call (a one-shot `curl`): by the time the daemon reads the decision, the
//! process is gone. So the kernel says it at exec time:
//!
//! - `sys_enter_execve` / `sys_enter_execveat` copy the arguments (they are
//!   in the caller's memory only now) into `EXEC_PENDING`, by thread;
//! - `sched_process_exec` (the exec succeeded) sends an [`ExecEvent`] with
//!   the file name and those arguments;
//! - `sched_process_fork` and `sched_process_exit` send [`ProcessEvent`]s,
//!   so that a child inherits its parent's program and an ended process is
//!   forgotten before its pid can be reused.
//!
//! Tracepoints fire for the whole host; only tasks under the watched cgroup
//! (`TRACK_CGROUP_ID` at `TRACK_CGROUP_LEVEL`) are kept. None of these
//! programs can deny anything.

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_probe_read_user_str_bytes,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
            bpf_probe_read_kernel_str,
        },
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::TracePointContext,
};
use residency_common::{
    EXEC_ARG_CHUNK, EXEC_ARGS_BYTES, EXEC_ARGS_TRUNCATED, EXEC_FILENAME_BYTES, EXEC_MAX_ARGS,
    EXEC_PENDING_ENTRIES, EXIT_GROUP_DEAD, EventHeader, EventKind, ExecArgs, ExecEvent,
    ProcessEvent, Stat,
};

use crate::{EVENTS, count};

#[unsafe(no_mangle)]
static TRACK_CGROUP_ID: u64 = 0;
#[unsafe(no_mangle)]
static TRACK_CGROUP_LEVEL: u32 = 0;

#[map(name = "EXEC_PENDING")]
static EXEC_PENDING: LruHashMap<u32, ExecArgs> =
    LruHashMap::with_max_entries(EXEC_PENDING_ENTRIES, 0);

/// Room to gather arguments: too big for the 512-byte stack.
#[map(name = "EXEC_SCRATCH")]
static EXEC_SCRATCH: PerCpuArray<ExecArgs> = PerCpuArray::with_max_entries(1, 0);

// Field offsets from the tracepoints' `format` files, which are ABI.
const EXECVE_ARGV: usize = 24;
const EXECVEAT_ARGV: usize = 32;
const EXEC_FILENAME_LOC: usize = 8;
const EXEC_PID: usize = 12;
const EXEC_OLD_PID: usize = 16;
const FORK_PARENT_PID: usize = 12;
const FORK_CHILD_PID: usize = 20;
const EXIT_GROUP_DEAD_FIELD: usize = 32;

/// Whether the current task is under the watched cgroup.
#[inline(always)]
fn tracked() -> bool {
    // SAFETY: plain reads of load-time constants (volatile, so the loader's
    // values are used), and a helper call without pointer arguments.
    unsafe {
        let id = core::ptr::read_volatile(&raw const TRACK_CGROUP_ID);
        let level = core::ptr::read_volatile(&raw const TRACK_CGROUP_LEVEL);
        #[expect(clippy::cast_possible_wrap, reason = "cgroup levels are small")]
        let ancestor = bpf_get_current_ancestor_cgroup_id(level as i32);
        id != 0 && ancestor == id
    }
}

#[tracepoint]
pub fn residency_execve(ctx: TracePointContext) -> u32 {
    stash_args(&ctx, EXECVE_ARGV);
    0
}

#[tracepoint]
pub fn residency_execveat(ctx: TracePointContext) -> u32 {
    stash_args(&ctx, EXECVEAT_ARGV);
    0
}

/// Copies `argv` (NUL-separated) into `EXEC_PENDING` under the caller's
/// thread id. Each argument starts within the first half of the buffer and
/// is read with at most half its size, which keeps every write in bounds
/// in a way the verifier can see.
#[inline(always)]
fn stash_args(ctx: &TracePointContext, argv_offset: usize) {
    if !tracked() {
        return;
    }
    let Some(scratch) = EXEC_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU slot is ours for the length of this program.
    let scratch = unsafe { &mut *scratch };
    // SAFETY: the offset is the `argv` field of this tracepoint's record.
    let Ok(argv) = (unsafe { ctx.read_at::<*const *const u8>(argv_offset) }) else {
        return;
    };
    let mut off = 0usize;
    let mut flags = 0u32;
    let mut i = 0u32;
    while i < EXEC_MAX_ARGS {
        // SAFETY: a user pointer, read through the helper.
        let Ok(arg) = (unsafe { bpf_probe_read_user(argv.wrapping_add(i as usize)) }) else {
            break;
        };
        if arg.is_null() {
            break;
        }
        if off >= EXEC_ARG_CHUNK {
            flags |= EXEC_ARGS_TRUNCATED;
            break;
        }
        let start = off & (EXEC_ARG_CHUNK - 1);
        let Some(dst) = scratch.args.get_mut(start..start + EXEC_ARG_CHUNK) else {
            break;
        };
        // SAFETY: as above.
        match unsafe { bpf_probe_read_user_str_bytes(arg, dst) } {
            Ok(s) => {
                if s.len() + 1 >= EXEC_ARG_CHUNK {
                    flags |= EXEC_ARGS_TRUNCATED;
                }
                off = start + s.len() + 1;
            }
            Err(_) => break,
        }
        i += 1;
    }
    if i == EXEC_MAX_ARGS {
        flags |= EXEC_ARGS_TRUNCATED;
    }
    #[expect(clippy::cast_possible_truncation, reason = "at most EXEC_ARGS_BYTES")]
    {
        scratch.args_len = off.min(EXEC_ARGS_BYTES) as u32;
    }
    scratch.flags = flags;
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the thread id is the low half"
    )]
    let tid = bpf_get_current_pid_tgid() as u32;
    let _ = EXEC_PENDING.insert(tid, scratch, 0);
}

#[tracepoint]
pub fn residency_exec(ctx: TracePointContext) -> u32 {
    if !tracked() {
        return 0;
    }
    // SAFETY: the offsets are this tracepoint's fields.
    let (Ok(loc), Ok(pid), Ok(old_pid)) = (unsafe {
        (
            ctx.read_at::<u32>(EXEC_FILENAME_LOC),
            ctx.read_at::<u32>(EXEC_PID),
            ctx.read_at::<u32>(EXEC_OLD_PID),
        )
    }) else {
        return 0;
    };
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count(Stat::ProcessDropped);
        return 0;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at a reserved record of the right size; every
    // field is written (the byte arrays by the helpers) before it is
    // submitted, and nothing reads it here.
    unsafe {
        (*ev).header = EventHeader {
            kind: EventKind::Exec as u32,
            #[expect(clippy::cast_possible_truncation, reason = "a small struct")]
            size: size_of::<ExecEvent>() as u32,
        };
        (*ev).boot_ns = bpf_ktime_get_boot_ns();
        (*ev).tgid = pid;
        (*ev)._pad = 0;
        // A `__data_loc` field: the low 16 bits are the string's offset in
        // the record.
        let name = ctx
            .as_ptr()
            .cast::<u8>()
            .wrapping_add((loc & 0xffff) as usize);
        #[expect(clippy::cast_possible_truncation, reason = "a small array")]
        if bpf_probe_read_kernel_str(
            (&raw mut (*ev).filename).cast(),
            EXEC_FILENAME_BYTES as u32,
            name.cast(),
        ) < 0
        {
            (*ev).filename[0] = 0;
        }
        match EXEC_PENDING.get(old_pid) {
            Some(args) => {
                (*ev).args_len = args.args_len;
                (*ev).flags = args.flags;
                #[expect(clippy::cast_possible_truncation, reason = "a small array")]
                if bpf_probe_read_kernel(
                    (&raw mut (*ev).args).cast(),
                    EXEC_ARGS_BYTES as u32,
                    (&raw const args.args).cast(),
                ) < 0
                {
                    (*ev).args_len = 0;
                }
            }
            None => {
                (*ev).args_len = 0;
                (*ev).flags = 0;
            }
        }
    }
    let _ = EXEC_PENDING.remove(old_pid);
    entry.submit(u64::from(BPF_RB_NO_WAKEUP));
    0
}

#[tracepoint]
pub fn residency_fork(ctx: TracePointContext) -> u32 {
    if !tracked() {
        return 0;
    }
    // SAFETY: the offsets are this tracepoint's fields.
    let (Ok(parent), Ok(child)) = (unsafe {
        (
            ctx.read_at::<u32>(FORK_PARENT_PID),
            ctx.read_at::<u32>(FORK_CHILD_PID),
        )
    }) else {
        return 0;
    };
    send(EventKind::Fork, parent, child, 0);
    0
}

#[tracepoint]
pub fn residency_exit(ctx: TracePointContext) -> u32 {
    if !tracked() {
        return 0;
    }
    // SAFETY: the offset is this tracepoint's `group_dead` field.
    let group_dead = unsafe { ctx.read_at::<u8>(EXIT_GROUP_DEAD_FIELD) }.unwrap_or(0) != 0;
    let pid_tgid = bpf_get_current_pid_tgid();
    #[expect(clippy::cast_possible_truncation, reason = "two u32 halves")]
    send(
        EventKind::Exit,
        (pid_tgid >> 32) as u32,
        pid_tgid as u32,
        if group_dead { EXIT_GROUP_DEAD } else { 0 },
    );
    0
}

#[inline(always)]
fn send(kind: EventKind, parent: u32, pid: u32, flags: u32) {
    let event = ProcessEvent {
        header: EventHeader {
            kind: kind as u32,
            #[expect(clippy::cast_possible_truncation, reason = "a small struct")]
            size: size_of::<ProcessEvent>() as u32,
        },
        parent,
        pid,
        flags,
        _pad: 0,
    };
    if EVENTS
        .output::<ProcessEvent>(&event, u64::from(BPF_RB_NO_WAKEUP))
        .is_err()
    {
        count(Stat::ProcessDropped);
    }
}
