//! residency's kernel programs.
//!
//! Four cgroup `sock_addr` programs run inside connect() and sendmsg() of
//! every process in the cgroup they are attached to (and its descendants).
//! Each one, synchronously and without asking userspace:
//!
//! 1. reads the destination (an IPv4-mapped IPv6 address is judged as IPv4);
//! 2. looks the destination up in the rule tries that the daemon compiled;
//! 3. decides allow / flag / block (block returns 0, which the kernel turns
//!    into EPERM for the caller);
//! 4. reports the decision in one ring-buffer record, or counts a drop.
//!
//! Wakeups dominate the cost of a ring buffer (measured on these machines:
//! +51-80% on loopback connect() with a wakeup per event), so records are
//! submitted without a wakeup until `WAKEUP_BYTES` are waiting; the daemon
//! also drains on a short timer.
// The programs only exist for the bpf target (built by residency-daemon's
// build.rs). On the host the crate still compiles, so that
// `cargo clippy --workspace` lints this code like the rest.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// The BPF target has no compare-and-swap, so core's atomic types offer no
// fetch_add there; the intrinsic compiles to the BPF atomic add. (The BPF
// build runs with RUSTC_BOOTSTRAP=1, see residency-daemon/build.rs.)
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", expect(internal_features, reason = "atomic_xadd"))]

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, bpf_sock_addr,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
    },
    macros::{cgroup_sock_addr, map},
    maps::{Array, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::SockAddrContext,
};
use aya_log_ebpf::warn;
use residency_common::{
    AF_INET, AF_INET6, Action, ConnectEvent, DestRule, EventHeader, EventKind, FLAG_V4_MAPPED,
    Hook, IPPROTO_TCP, IPPROTO_UDP, Ipv4Key, Ipv6Key, KernelSettings, MAX_DEST_RULES, STAT_COUNT,
    Stat, Verdict,
};

/// Return values of a `sock_addr` program.
const ALLOW: i32 = 1;
const DENY: i32 = 0;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

// Load-time constants. The daemon overrides them before loading; they live in
// `.rodata`, which the kernel freezes, so the verifier treats them as known
// values and removes the branches they rule out.
#[unsafe(no_mangle)]
static MAY_BLOCK: u8 = 0;
#[unsafe(no_mangle)]
static WAKEUP_BYTES: u64 = 64 * 1024;

/// The daemon resizes it at load time from its configuration.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[map(name = "SETTINGS")]
static SETTINGS: Array<KernelSettings> = Array::with_max_entries(1, 0);

#[map(name = "DEST_RULES_V4")]
static DEST_RULES_V4: LpmTrie<Ipv4Key, DestRule> =
    LpmTrie::with_max_entries(MAX_DEST_RULES, BPF_F_NO_PREALLOC);

#[map(name = "DEST_RULES_V6")]
static DEST_RULES_V6: LpmTrie<Ipv6Key, DestRule> =
    LpmTrie::with_max_entries(MAX_DEST_RULES, BPF_F_NO_PREALLOC);

#[cgroup_sock_addr(connect4)]
pub fn residency_connect4(ctx: SockAddrContext) -> i32 {
    on_ipv4(&ctx, Hook::Connect4)
}

#[cgroup_sock_addr(connect6)]
pub fn residency_connect6(ctx: SockAddrContext) -> i32 {
    on_ipv6(&ctx, Hook::Connect6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn residency_sendmsg4(ctx: SockAddrContext) -> i32 {
    on_ipv4(&ctx, Hook::Sendmsg4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn residency_sendmsg6(ctx: SockAddrContext) -> i32 {
    on_ipv6(&ctx, Hook::Sendmsg6)
}

/// A destination, as judged: IPv4 (possibly from a mapped IPv6 address) or IPv6.
enum Dest {
    V4([u8; 4]),
    V6([u8; 16]),
}

fn on_ipv4(ctx: &SockAddrContext, hook: Hook) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands every sock_addr program a valid context; the
    // verifier checks each field access below against it.
    let (ip, port) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    decide(ctx, hook, &Dest::V4(ip.to_ne_bytes()), port, 0)
}

fn on_ipv6(ctx: &SockAddrContext, hook: Hook) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as in `on_ipv4`. The words are read one at a time because the
    // verifier allows only narrow loads of `user_ip6`.
    let (w, port) = unsafe {
        (
            [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ],
            (*sa).user_port,
        )
    };
    // ::ffff:a.b.c.d on a dual-stack socket goes out as IPv4, so it is judged
    // and reported as IPv4: a v4 rule must not be sidestepped through AF_INET6.
    if w[0] == 0 && w[1] == 0 && w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
        return decide(
            ctx,
            hook,
            &Dest::V4(w[3].to_ne_bytes()),
            port,
            FLAG_V4_MAPPED,
        );
    }
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    decide(ctx, hook, &Dest::V6(addr), port, 0)
}

fn decide(ctx: &SockAddrContext, hook: Hook, dest: &Dest, port_be: u32, flags: u8) -> i32 {
    let rule = match dest {
        Dest::V4(a) => DEST_RULES_V4.get(Key::new(32, *a)),
        Dest::V6(a) => DEST_RULES_V6.get(Key::new(128, *a)),
    };
    let (verdict, rule_id) = match rule {
        None => (Verdict::Allowed, 0),
        Some(rule) => (judge(ctx, rule), rule.rule_id),
    };
    report(ctx, hook, dest, port_be, flags, verdict, rule_id);
    if matches!(verdict, Verdict::Blocked) {
        DENY
    } else {
        ALLOW
    }
}

fn judge(ctx: &SockAddrContext, rule: &DestRule) -> Verdict {
    match rule.action {
        a if a == Action::Allow as u8 => Verdict::Allowed,
        a if a == Action::Flag as u8 => Verdict::Flagged,
        a if a == Action::Block as u8 => {
            if may_block() && enforcing() {
                Verdict::Blocked
            } else {
                Verdict::Flagged
            }
        }
        other => {
            // Only a daemon bug can put this here; say so, and fail open to a
            // flag so that the event still reaches the evidence.
            warn!(ctx, "rule {} has unknown action {}", rule.rule_id, other);
            Verdict::Flagged
        }
    }
}

#[inline(always)]
fn may_block() -> bool {
    // SAFETY: a plain read of a static; volatile so that the compiler keeps
    // the load for the loader-provided value instead of folding the default.
    unsafe { core::ptr::read_volatile(&raw const MAY_BLOCK) != 0 }
}

#[inline(always)]
fn enforcing() -> bool {
    SETTINGS.get(0).is_some_and(|s| s.enforce != 0)
}

#[inline(always)]
fn report(
    ctx: &SockAddrContext,
    hook: Hook,
    dest: &Dest,
    port_be: u32,
    flags: u8,
    verdict: Verdict,
    rule_id: u32,
) {
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count(Stat::Dropped);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let (family, daddr) = match dest {
        Dest::V4(a) => (
            AF_INET,
            [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        Dest::V6(a) => (AF_INET6, *a),
    };
    // SAFETY: plain helper calls with no pointer arguments.
    let (boot_ns, cgroup_id) = unsafe { (bpf_ktime_get_boot_ns(), bpf_get_current_cgroup_id()) };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the helpers pack two u32 values into one u64, and the port sits in the low 16 bits"
    )]
    entry.write(ConnectEvent {
        header: EventHeader {
            kind: EventKind::Connect as u32,
            size: size_of::<ConnectEvent>() as u32,
        },
        boot_ns,
        cgroup_id,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        rule_id,
        dport: u16::from_be(port_be as u16),
        family,
        protocol: protocol(ctx.sock_addr),
        hook: hook as u8,
        verdict: verdict as u8,
        flags,
        _pad0: 0,
        daddr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        _pad1: [0; 4],
    });
    let wakeup = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= wakeup_bytes() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(wakeup));
    count(Stat::Submitted);
}

#[inline(always)]
fn wakeup_bytes() -> u64 {
    // SAFETY: see `may_block`.
    unsafe { core::ptr::read_volatile(&raw const WAKEUP_BYTES) }
}

#[inline(always)]
fn protocol(sa: *mut bpf_sock_addr) -> u8 {
    // SAFETY: see `on_ipv4`.
    let (proto, ty) = unsafe { ((*sa).protocol, (*sa).type_) };
    match proto {
        p if p == u32::from(IPPROTO_TCP) => IPPROTO_TCP,
        p if p == u32::from(IPPROTO_UDP) => IPPROTO_UDP,
        // Protocol 0 means "the default for the socket type". Anything else
        // (ICMP ping sockets, SCTP, MPTCP) is neither TCP nor UDP.
        0 if ty == SOCK_STREAM => IPPROTO_TCP,
        0 if ty == SOCK_DGRAM => IPPROTO_UDP,
        _ => 0,
    }
}

#[inline(always)]
fn count(stat: Stat) {
    if let Some(slot) = STATS.get_ptr_mut(stat as u32) {
        // Atomic even though the slot is per-CPU: these programs run with
        // migration disabled but can be preempted (PREEMPT kernels), and a
        // task preempting us on this CPU may run the same program. A plain
        // read-modify-write could then lose a count, and a lost drop count
        // would be a silent loss.
        // SAFETY: the map value is a valid, 8-byte aligned u64 for as long
        // as the program runs.
        #[cfg(target_arch = "bpf")]
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                slot, 1,
            );
        }
        // Host builds exist only for linting; they never run.
        #[cfg(not(target_arch = "bpf"))]
        unsafe {
            *slot += 1;
        }
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!(
        "residency-ebpf holds kernel programs for the bpf target; the residency binary embeds and loads them"
    );
}

// The ring-buffer helpers are GPL-only, so the kernel must see a
// GPL-compatible licence string.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
