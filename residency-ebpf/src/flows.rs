//! Flows: how much moved on each decided socket, for how long, and the
//! repeats that need no new report.
//!
//! A flow is one decision and what follows from it on one socket: a TCP
//! connection, a connected UDP socket, or an unconnected UDP socket's
//! datagrams to one destination. Its state lives in socket storage
//! (`FLOWS`), which the kernel frees with the socket, so nothing here can
//! leak or be evicted while the socket lives.
//!
//! - The `sock_addr` programs begin a flow when they report a decision
//!   (`begin`, then `keep` copies the reported decision), and a repeated
//!   `sendmsg()` to the same destination, by the same process, under the
//!   same policy and `GeoIP` generations, within `FLOW_REDECIDE_NS` of its
//!   last full decision, is decided from the storage and counted, with no
//!   record (`repeat`). A blocked destination stays blocked: the stored
//!   verdict is returned on every datagram.
//! - `residency_bytes_out` / `residency_bytes_in` (`cgroup_skb`) add each
//!   packet of a flow's socket to its totals, and report the totals when
//!   `FLOW_REPORT_NS` has passed since the last report, so a connection
//!   that lasts a week is seen while it lasts. They never drop a packet.
//! - `residency_release` (`cgroup/sock_release`) reports the totals when
//!   the socket is closed.
//!
//! Reports carry cumulative totals and the totals of the previous report
//! that reached the ring, so a lost update is carried by the next one.

use core::ptr;

use aya_ebpf::{
    bindings::bpf_sock,
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_ktime_get_boot_ns, bpf_sk_storage_get},
    },
    macros::{btf_map, cgroup_skb, cgroup_sock},
    programs::{SkBuffContext, SockAddrContext, SockContext},
};
use residency_common::{
    ConnectEvent, EventHeader, EventKind, FLOW_END, FLOW_REDECIDE_NS, FLOW_SUPERSEDED,
    FLOW_UPDATE, FlowEvent, FlowState, FlowTotals, Hook, IPPROTO_TCP, Stat, Verdict,
};

use crate::{ALLOW, DENY, EVENTS, POLICY_ACTIVE, active_generation, count, names::submit};

#[unsafe(no_mangle)]
static FLOWS_ENABLED: u8 = 0;
#[unsafe(no_mangle)]
static FLOW_REPORT_NS: u64 = 60_000_000_000;

#[btf_map]
static FLOWS: SkStorage<FlowState> = SkStorage::new();

const TCP_ESTABLISHED: u32 = 1;

#[inline(always)]
fn enabled() -> bool {
    // SAFETY: see `crate::may_block`.
    unsafe { ptr::read_volatile(&raw const FLOWS_ENABLED) != 0 }
}

#[inline(always)]
fn report_ns() -> u64 {
    // SAFETY: see `crate::may_block`.
    unsafe { ptr::read_volatile(&raw const FLOW_REPORT_NS) }
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper call without pointer arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// Adds to a counter that several CPUs may add to at once (egress on one,
/// ingress on another).
#[inline(always)]
fn add(counter: &mut u64, n: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: the counter is an aligned u64 in the socket's storage, which
    // lives as long as the program holds the pointer.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            counter, n,
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        *counter += n;
    }
}

/// The socket's flow, if it has one (no storage is made).
#[inline(always)]
fn existing(ctx: &SockAddrContext) -> Option<&'static mut FlowState> {
    // SAFETY: the helper reads the context's socket; the pointer it gives
    // is to this socket's storage, valid while the program runs.
    let st = unsafe { FLOWS.get_ptr_mut(ctx) };
    // SAFETY: checked for null; the storage is never aliased by this program.
    unsafe { st.as_mut() }
}

/// Whether the call is a repeat of the socket's flow, as its decision
/// recorded it.
#[inline(always)]
fn same(d: &ConnectEvent, family: u8, daddr: &[u8; 16], dport: u16, tgid: u32) -> bool {
    d.dport == dport && d.family == family && d.tgid == tgid && same_addr(&d.daddr, daddr)
}

/// Two addresses, compared word by word (an array comparison may become
/// a `memcmp` call, which BPF does not have).
#[inline(always)]
fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let w = |x: &[u8; 16], i: usize| u32::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]]);
    w(a, 0) == w(b, 0) && w(a, 4) == w(b, 4) && w(a, 8) == w(b, 8) && w(a, 12) == w(b, 12)
}

/// A repeated `sendmsg()`: the stored verdict, counted, when the call
/// goes where the socket's flow goes and nothing that decided it has
/// changed. `None`: decide in full.
#[inline(always)]
pub(crate) fn repeat(
    ctx: &SockAddrContext,
    family: u8,
    daddr: &[u8; 16],
    port_be: u32,
) -> Option<i32> {
    if !enabled() {
        return None;
    }
    let st = existing(ctx)?;
    let d = &st.decision;
    if d.flow == 0 {
        return None;
    }
    if now().wrapping_sub(st.decided_ns) >= FLOW_REDECIDE_NS {
        return None;
    }
    #[expect(clippy::cast_possible_truncation, reason = "the port sits in the low 16 bits")]
    let dport = u16::from_be(port_be as u16);
    #[expect(clippy::cast_possible_truncation, reason = "the tgid is the high half")]
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !same(d, family, daddr, dport, tgid) {
        return None;
    }
    if POLICY_ACTIVE.get(0)?.generation != d.policy_gen {
        return None;
    }
    if d.geo_gen != 0 && active_generation() != d.geo_gen {
        return None;
    }
    let blocked = d.verdict == Verdict::Blocked as u8;
    add(&mut st.totals.calls, 1);
    Some(if blocked { DENY } else { ALLOW })
}

/// What a decided call does to its socket's flow.
pub(crate) enum Begun {
    /// Flows are not followed, or a blocked connect() (no flow follows).
    Untracked,
    /// The call repeats the socket's flow with the same verdict: counted,
    /// and not reported again.
    Same,
    /// A new flow, numbered; `keep` stores its decision once reported.
    New(*mut FlowState, u32),
}

/// The flow a decided call belongs to. The socket's previous flow, if
/// this one differs, is reported (superseded) first.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "the facts of one decision")]
pub(crate) fn begin(
    ctx: &SockAddrContext,
    hook: Hook,
    family: u8,
    daddr: &[u8; 16],
    port_be: u32,
    verdict: Verdict,
    policy_gen: u32,
    geo_gen: u32,
) -> Begun {
    if !enabled() {
        return Begun::Untracked;
    }
    let send = matches!(hook, Hook::Sendmsg4 | Hook::Sendmsg6);
    if !send && matches!(verdict, Verdict::Blocked) {
        return Begun::Untracked;
    }
    // SAFETY: as in `existing`; the storage is made zeroed if missing.
    let st = unsafe { FLOWS.get_or_insert_ptr_mut(ctx, None) };
    // SAFETY: checked for null below.
    let Some(st) = (unsafe { st.as_mut() }) else {
        return Begun::Untracked;
    };
    let now = now();
    if st.decision.flow != 0 {
        #[expect(clippy::cast_possible_truncation, reason = "the port sits in the low 16 bits")]
        let dport = u16::from_be(port_be as u16);
        #[expect(clippy::cast_possible_truncation, reason = "the tgid is the high half")]
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        let d = &st.decision;
        if send
            && same(d, family, daddr, dport, tgid)
            && d.verdict == verdict as u8
            && d.policy_gen == policy_gen
            && d.geo_gen == geo_gen
        {
            st.decided_ns = now;
            add(&mut st.totals.calls, 1);
            return Begun::Same;
        }
        report(st, FLOW_SUPERSEDED, 0, now);
    }
    st.decision.flow = 0;
    let n = st.count.wrapping_add(1);
    st.count = n;
    Begun::New(st, n)
}

/// Stores the decision that began a flow, as it was reported, and starts
/// its totals.
#[inline(always)]
pub(crate) fn keep(st: *mut FlowState, decision: *const ConnectEvent) {
    // SAFETY: `st` is the socket's storage from `begin`, and `decision`
    // the ring entry just written; both are valid for the program's run.
    unsafe {
        let now = (*decision).boot_ns;
        (*st).decision = *decision;
        (*st).totals = FlowTotals {
            calls: 1,
            ..FlowTotals::default()
        };
        (*st).reported = FlowTotals::default();
        (*st).reported_ns = now;
        (*st).decided_ns = now;
        (*st).established_ns = 0;
    }
}

/// Reports a flow's totals. Only a report that reached the ring moves
/// the "previous" totals on.
#[inline(always)]
fn report(st: &mut FlowState, stage: u8, tcp_state: u8, now: u64) {
    st.reported_ns = now;
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        count(Stat::FlowsDropped);
        return;
    };
    let totals = st.totals;
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved entry, written field by field (a whole
    // event built on the stack would not fit beside the caller's frame).
    unsafe {
        (*e).header = EventHeader {
            kind: EventKind::Flow as u32,
            #[expect(clippy::cast_possible_truncation, reason = "a small struct")]
            size: size_of::<FlowEvent>() as u32,
        };
        (*e).boot_ns = now;
        (*e).decision = st.decision;
        (*e).totals = totals;
        (*e).previous = st.reported;
        (*e).established_ns = st.established_ns;
        (*e).stage = stage;
        (*e).tcp_state = tcp_state;
        (*e)._pad = [0; 6];
    }
    submit(entry);
    st.reported = totals;
}

/// A socket's TCP state as reports carry it (0 for other sockets).
#[inline(always)]
fn tcp_state(st: &FlowState, state: u32) -> u8 {
    if st.decision.protocol == IPPROTO_TCP {
        #[expect(clippy::cast_possible_truncation, reason = "TCP states are below 16")]
        let s = state as u8;
        s
    } else {
        0
    }
}

#[cgroup_skb(egress)]
pub fn residency_bytes_out(ctx: SkBuffContext) -> i32 {
    if enabled() {
        on_packet(&ctx, true);
    }
    1
}

#[cgroup_skb(ingress)]
pub fn residency_bytes_in(ctx: SkBuffContext) -> i32 {
    if enabled() {
        on_packet(&ctx, false);
    }
    1
}

#[inline(always)]
fn on_packet(ctx: &SkBuffContext, out: bool) {
    let skb = ctx.skb.skb;
    // SAFETY: reads of the program's own context.
    let (sk, len) = unsafe { ((*skb).__bindgen_anon_2.sk, (*skb).len) };
    if sk.is_null() {
        return;
    }
    let map = ptr::from_ref(&FLOWS).cast_mut().cast();
    // SAFETY: `sk` is the packet's socket, checked for null; the helper
    // gives this socket's storage (null for sockets without one, and for
    // sockets that are not full sockets).
    let st = unsafe { bpf_sk_storage_get(map, sk.cast(), ptr::null_mut(), 0) }.cast::<FlowState>();
    // SAFETY: checked for null; valid for the program's run.
    let Some(st) = (unsafe { st.as_mut() }) else {
        return;
    };
    if st.decision.flow == 0 {
        return;
    }
    if out {
        add(&mut st.totals.bytes_out, u64::from(len));
        add(&mut st.totals.packets_out, 1);
    } else {
        add(&mut st.totals.bytes_in, u64::from(len));
        add(&mut st.totals.packets_in, 1);
    }
    let now = now();
    // SAFETY: `state` of a socket the packet belongs to (readable on any
    // `sock_common`).
    let state = unsafe { (*sk).state };
    // The ACK that completes the handshake is the first segment sent in
    // ESTABLISHED.
    if out && st.established_ns == 0 && state == TCP_ESTABLISHED {
        st.established_ns = now;
    }
    if now.wrapping_sub(st.reported_ns) >= report_ns() {
        let s = tcp_state(st, state);
        report(st, FLOW_UPDATE, s, now);
    }
}

#[cgroup_sock(sock_release)]
pub fn residency_release(ctx: SockContext) -> i32 {
    if enabled() {
        on_release(ctx.sock);
    }
    1
}

#[inline(always)]
fn on_release(sk: *mut bpf_sock) {
    let map = ptr::from_ref(&FLOWS).cast_mut().cast();
    // SAFETY: `sk` is the program's context (the socket being released).
    let st = unsafe { bpf_sk_storage_get(map, sk.cast(), ptr::null_mut(), 0) }.cast::<FlowState>();
    // SAFETY: checked for null; valid for the program's run.
    let Some(st) = (unsafe { st.as_mut() }) else {
        return;
    };
    if st.decision.flow == 0 {
        return;
    }
    // SAFETY: a field of the program's context.
    let state = unsafe { (*sk).state };
    let s = tcp_state(st, state);
    report(st, FLOW_END, s, now());
    st.decision.flow = 0;
}
