//! Flows: how much moved on each decided socket, for how long, and the
//! repeats that need no new report.
//!
//! A flow is one decision and what follows from it on one socket: a TCP
//! connection, a connected UDP socket, or an unconnected UDP socket's
//! datagrams to one destination. A connected socket's flow is in `FLOWS`,
//! a hash by socket cookie whose entries are allocated as used and
//! removed when the flow ends: making socket storage in `connect()`
//! cost 1.2-1.5 µs per call here (a memory-cgroup-charged allocation),
//! an entry of this hash a fraction of that. An unconnected UDP socket's
//! flows are in `DGRAMS`, socket storage (made once, on its first
//! datagram, freed with the socket), one slot per destination
//! (`DGRAM_SLOTS`; a socket that sends to more at once ends the flow it
//! used least recently, reported).
//!
//! - The `sock_addr` programs begin a flow when they report a decision
//!   (`begin`, from the record as written, then `keep` copies it), and a
//!   `sendmsg()` first `probe`s the socket's slots: a repeat to a
//!   destination the socket has a flow for, by the same process, under the
//!   same policy and `GeoIP` generations, within `FLOW_REDECIDE_NS` of its
//!   last full decision, is decided from the storage and counted, with no
//!   record. A blocked destination stays blocked: the stored verdict is
//!   returned on every datagram.
//! - `count_packet`, in `residency_egress` and `residency_ingress`
//!   (`cgroup_skb`, see `packets`), adds each packet of a flow's socket to
//!   its totals, and reports the totals when `FLOW_REPORT_NS` has passed
//!   since the last report, so a connection that lasts a week is seen
//!   while it lasts. It never drops a packet.
//! - `residency_release` (`cgroup/sock_release`) reports the totals of
//!   each of the socket's flows when the socket is closed, except a TCP
//!   connection's: the stack still sends after `close()` (data the
//!   application queued, the FIN), so `residency_tcp` (`sock_ops`) asks
//!   for the connection's state changes once it is established, and
//!   reports its end when it reaches `TCP_CLOSE`.
//!
//! Reports carry cumulative totals and the totals of the previous report
//! that reached the ring, so a lost update is carried by the next one.

use core::ptr;

use aya_ebpf::{
    bindings::{
        BPF_F_NO_PREALLOC, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, bpf_sock,
    },
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_ktime_get_coarse_ns,
            bpf_sk_storage_get,
        },
    },
    macros::{btf_map, cgroup_sock, map, sock_ops},
    maps::{HashMap, PerCpuArray},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext},
};
use residency_common::{
    AF_INET, AF_INET6, ConnectEvent, DGRAM_SLOTS, DgramFlows, EventHeader, EventKind,
    FLOW_CAPACITY, FLOW_END, FLOW_ENDS_ON_CLOSE, FLOW_REDECIDE_NS, FLOW_SUPERSEDED, FLOW_UPDATE,
    FlowEvent, FlowState, Hook, IPPROTO_TCP, IPPROTO_UDP, Stat, Verdict,
};

use crate::{ALLOW, DENY, EVENTS, POLICY_ACTIVE, active_generation, count, mem, names::submit};

#[unsafe(no_mangle)]
static FLOWS_ENABLED: u8 = 0;
#[unsafe(no_mangle)]
static FLOW_REPORT_NS: u64 = 60_000_000_000;

/// Connected sockets' flows, by socket cookie.
#[map]
static FLOWS: HashMap<u64, FlowState> = HashMap::with_max_entries(FLOW_CAPACITY, BPF_F_NO_PREALLOC);

/// What a connected socket's `FLOWS` entry is made from (then filled in
/// place): a value's worth of map memory, as the stack has no room for
/// one beside a decision's frame. Its contents do not matter.
#[map]
static FLOW_NEW: PerCpuArray<FlowState> = PerCpuArray::with_max_entries(1, 0);

#[btf_map]
static DGRAMS: SkStorage<DgramFlows> = SkStorage::new();

const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE: u32 = 7;

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

/// `CLOCK_BOOTTIME`, for what reports carry.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper call without pointer arguments.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// `CLOCK_MONOTONIC_COARSE` (a tick's resolution, a fraction of the cost):
/// the flows' own timers, `reported_ns` and `decided_ns`, read on every
/// packet and repeated datagram.
#[inline(always)]
fn coarse() -> u64 {
    // SAFETY: a helper call without pointer arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
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

/// The socket's datagram flows, if it has any (no storage is made).
#[inline(always)]
fn dgrams(ctx: &SockAddrContext) -> Option<&'static mut DgramFlows> {
    // SAFETY: the helper reads the context's socket; the pointer it gives
    // is to this socket's storage, valid while the program runs.
    let st = unsafe { DGRAMS.get_ptr_mut(ctx) };
    // SAFETY: checked for null; the storage is never aliased by this program.
    unsafe { st.as_mut() }
}

/// Two addresses, compared word by word (an array comparison may become
/// a `memcmp` call, which BPF does not have).
#[inline(always)]
fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let w = |x: &[u8; 16], i: usize| u32::from_ne_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]]);
    w(a, 0) == w(b, 0) && w(a, 4) == w(b, 4) && w(a, 8) == w(b, 8) && w(a, 12) == w(b, 12)
}

/// The slot of the flow to `(family, daddr, dport)`: the hint first (a
/// socket that sends to one destination finds it there), then each.
#[inline(always)]
fn slot_of(dg: &mut DgramFlows, family: u8, daddr: &[u8; 16], dport: u16) -> Option<usize> {
    let at = |dg: &DgramFlows, i: usize| {
        let d = &dg.slots[i].decision;
        d.flow != 0 && d.dport == dport && d.family == family && same_addr(&d.daddr, daddr)
    };
    let hint = (dg.hint as usize) & (DGRAM_SLOTS - 1);
    if at(dg, hint) {
        return Some(hint);
    }
    let mut i = 0;
    while i < DGRAM_SLOTS {
        if at(dg, i) {
            dg.hint = i as u32;
            return Some(i);
        }
        i += 1;
    }
    None
}

/// One pass over a socket's datagram slots: the slot of the flow to
/// `(family, daddr, dport)`, if any, and the slot a new flow would take
/// (a free one, else the one decided least recently).
#[inline(always)]
fn scan(dg: &DgramFlows, family: u8, daddr: &[u8; 16], dport: u16) -> (Option<usize>, usize) {
    let hint = (dg.hint as usize) & (DGRAM_SLOTS - 1);
    let d = &dg.slots[hint].decision;
    if d.flow != 0 && d.dport == dport && d.family == family && same_addr(&d.daddr, daddr) {
        return (Some(hint), hint);
    }
    let mut victim = 0;
    let mut victim_ns = u64::MAX;
    let mut i = 0;
    while i < DGRAM_SLOTS {
        let s = &dg.slots[i];
        let d = &s.decision;
        if d.flow == 0 {
            if victim_ns != 0 {
                victim = i;
                victim_ns = 0;
            }
        } else if d.dport == dport && d.family == family && same_addr(&d.daddr, daddr) {
            return (Some(i), i);
        } else if s.decided_ns < victim_ns {
            victim = i;
            victim_ns = s.decided_ns;
        }
        i += 1;
    }
    (None, victim)
}

/// What a `sendmsg()`'s socket storage says before the call is decided.
pub(crate) enum Probe {
    /// Flows are not followed.
    Off,
    /// A repeat, decided from storage and counted: return this.
    Repeat(i32),
    /// Decide in full. The slot the flow goes in is left in the storage
    /// (`hint`, and `matched` 1 when that slot holds this destination's
    /// flow already), not carried in a register: a constant slot number per
    /// path would multiply the paths the verifier walks through the rest
    /// of the program by the number of slots.
    Decide,
}

/// A `sendmsg()` before it is decided: a repeat to a destination whose
/// flow the socket keeps, by the same process, with nothing that decided
/// it changed and decided in full within `FLOW_REDECIDE_NS`, gets the
/// stored verdict (counted, no record); anything else is decided in full
/// and told which slot its flow takes. The slots are searched here, at
/// the start of the program, where the verifier sees few paths; `begin`
/// then indexes the slot directly.
#[inline(always)]
pub(crate) fn probe(ctx: &SockAddrContext, family: u8, daddr: &[u8; 16], port_be: u32) -> Probe {
    if !enabled() {
        return Probe::Off;
    }
    let Some(dg) = dgrams(ctx) else {
        // `begin` makes the storage, zeroed: slot 0, free.
        return Probe::Decide;
    };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the port sits in the low 16 bits"
    )]
    let dport = u16::from_be(port_be as u16);
    let (found, victim) = scan(dg, family, daddr, dport);
    #[expect(clippy::cast_possible_truncation, reason = "a slot index")]
    let Some(i) = found else {
        dg.hint = victim as u32;
        dg.matched = 0;
        return Probe::Decide;
    };
    #[expect(clippy::cast_possible_truncation, reason = "a slot index")]
    let index = i as u32;
    dg.hint = index;
    dg.matched = 1;
    let st = &mut dg.slots[i & (DGRAM_SLOTS - 1)];
    let d = &st.decision;
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let fresh = coarse().wrapping_sub(st.decided_ns) < FLOW_REDECIDE_NS;
    let same_policy = POLICY_ACTIVE
        .get(0)
        .is_some_and(|a| a.generation == d.policy_gen);
    if !fresh
        || d.tgid != tgid
        || !same_policy
        || (d.geo_gen != 0 && active_generation() != d.geo_gen)
    {
        return Probe::Decide;
    }
    let blocked = d.verdict == Verdict::Blocked as u8;
    add(&mut st.totals.calls, 1);
    Probe::Repeat(if blocked { DENY } else { ALLOW })
}

/// What a decided call does to its socket's flow.
pub(crate) enum Begun {
    /// Flows are not followed, or a blocked connect() (no flow follows).
    Untracked,
    /// The call repeats the socket's flow with the same verdict: counted,
    /// and not reported again.
    Same,
    /// A new flow, numbered; `keep` stores its decision once reported.
    New(Kept),
}

/// Where a new flow's state is kept.
pub(crate) struct Kept {
    st: *mut FlowState,
    /// The flow's number on its socket.
    pub(crate) n: u32,
    /// `Some(cookie)`: `st` is `FLOW_NEW`, from which the socket's entry
    /// in `FLOWS` is made.
    insert: Option<u64>,
}

/// The socket's connected flow, if it has one.
#[inline(always)]
fn connected(cookie: u64) -> Option<&'static mut FlowState> {
    // SAFETY: an entry of `FLOWS`, valid while the program runs (entries
    // are freed after an RCU grace period).
    FLOWS
        .get_ptr_mut(cookie)
        .and_then(|p| unsafe { p.as_mut() })
}

/// The flow a decided call belongs to. The socket's previous flow, if
/// this one differs, is reported (superseded) first.
#[inline(always)]
pub(crate) fn begin(
    ctx: &SockAddrContext,
    hook: Hook,
    probe: &Probe,
    decision: *const ConnectEvent,
) -> Begun {
    if !enabled() {
        return Begun::Untracked;
    }
    // SAFETY: the ring entry the caller just wrote.
    let (verdict, policy_gen, geo_gen, cookie, protocol) = unsafe {
        (
            (*decision).verdict,
            (*decision).policy_gen,
            (*decision).geo_gen,
            (*decision).cookie,
            (*decision).protocol,
        )
    };
    let send = matches!(hook, Hook::Sendmsg4 | Hook::Sendmsg6);
    if !send {
        if verdict == Verdict::Blocked as u8 {
            return Begun::Untracked;
        }
        // A UDP socket may have datagram flows too: number on from them.
        let dgram_count = if protocol == IPPROTO_UDP {
            dgrams(ctx).map_or(0, |dg| dg.count)
        } else {
            0
        };
        if let Some(st) = connected(cookie) {
            // A connected UDP socket connected again.
            if st.decision.flow != 0 {
                report(st, FLOW_SUPERSEDED, 0);
            }
            st.decision.flow = 0;
            let n = max(st.count, dgram_count).wrapping_add(1);
            st.count = n;
            return Begun::New(Kept {
                st,
                n,
                insert: None,
            });
        }
        let Some(st) = FLOW_NEW.get_ptr_mut(0) else {
            return Begun::Untracked;
        };
        let n = dgram_count.wrapping_add(1);
        return Begun::New(Kept {
            st,
            n,
            insert: Some(cookie),
        });
    }
    // SAFETY: as in `dgrams`.
    let dg = unsafe { DGRAMS.get_or_insert_ptr_mut(ctx, None) };
    // SAFETY: checked for null.
    let Some(dg) = (unsafe { dg.as_mut() }) else {
        return Begun::Untracked;
    };
    if !matches!(probe, Probe::Decide) {
        return Begun::Untracked;
    }
    let index = (dg.hint as usize) & (DGRAM_SLOTS - 1);
    let matched = dg.matched == 1;
    dg.matched = 0;
    let slot = &mut dg.slots[index];
    if slot.decision.flow != 0 {
        let d = &slot.decision;
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if matched
            && d.tgid == tgid
            && d.verdict == verdict
            && d.policy_gen == policy_gen
            && d.geo_gen == geo_gen
        {
            slot.decided_ns = coarse();
            add(&mut slot.totals.calls, 1);
            return Begun::Same;
        }
        report(slot, FLOW_SUPERSEDED, 0);
        slot.decision.flow = 0;
    }
    // A socket with a connected flow too numbers on from it.
    let mut n = dg.count.wrapping_add(1);
    if let Some(st) = connected(cookie) {
        n = max(n, st.count.wrapping_add(1));
        st.count = n;
    }
    dg.count = n;
    Begun::New(Kept {
        st: slot,
        n,
        insert: None,
    })
}

#[inline(always)]
fn max(a: u32, b: u32) -> u32 {
    if a > b { a } else { b }
}

/// Stores the decision that began a flow, as it is reported, and starts
/// its totals. A connected socket's first flow goes into `FLOWS` here; if
/// the hash is full, the flow is not followed (counted).
#[inline(always)]
pub(crate) fn keep(kept: &Kept, decision: *const ConnectEvent) {
    let Some(cookie) = kept.insert else {
        // SAFETY: `st` is the socket's datagram slot or its `FLOWS` entry
        // (from `begin`), valid for the program's run.
        start(unsafe { &mut *kept.st }, decision);
        return;
    };
    // The entry is made from `FLOW_NEW` as it is, then filled in place:
    // on a kernel that preempts, another call on this CPU may have used
    // `FLOW_NEW` since `begin`, so only what is written to the entry
    // itself is sure to be this flow's. No packet of the socket is
    // counted before `connect()` returns.
    // SAFETY: this CPU's `FLOW_NEW` entry, valid for the program's run.
    let scratch = unsafe { &*kept.st };
    if FLOWS
        .insert(cookie, scratch, u64::from(BPF_NOEXIST))
        .is_err()
    {
        count(Stat::FlowsDropped);
        return;
    }
    let Some(st) = connected(cookie) else {
        count(Stat::FlowsDropped);
        return;
    };
    start(st, decision);
    st.count = kept.n;
}

/// A flow's state as it begins: the decision as reported, no totals yet.
#[inline(always)]
fn start(st: &mut FlowState, decision: *const ConnectEvent) {
    let now = coarse();
    // SAFETY: `decision` is the ring entry just written, `st` a map value
    // or this CPU's scratch: both valid for the program's run.
    unsafe {
        mem::copy(&raw mut st.decision, decision);
        mem::zero(&raw mut st.totals);
        mem::zero(&raw mut st.reported);
    }
    st.totals.calls = 1;
    st.reported_ns = now;
    st.decided_ns = now;
    st.established_ns = 0;
    st.ends = 0;
}

/// Reports a flow's totals. Only a report that reached the ring moves
/// the "previous" totals on.
#[inline(always)]
fn report(st: &mut FlowState, stage: u8, tcp_state: u8) {
    st.reported_ns = coarse();
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        count(Stat::FlowsDropped);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` is the reserved entry, written field by field (a whole
    // event built on the stack would not fit beside the caller's frame),
    // and read back before it is submitted.
    unsafe {
        (*e).header = EventHeader {
            kind: EventKind::Flow as u32,
            #[expect(clippy::cast_possible_truncation, reason = "a small struct")]
            size: size_of::<FlowEvent>() as u32,
        };
        (*e).boot_ns = now();
        mem::copy(&raw mut (*e).decision, &raw const st.decision);
        // One snapshot of totals other CPUs may be adding to: what is
        // reported is what the next report calls previous.
        mem::copy(&raw mut (*e).totals, &raw const st.totals);
        mem::copy(&raw mut (*e).previous, &raw const st.reported);
        mem::copy(&raw mut st.reported, &raw const (*e).totals);
        (*e).established_ns = st.established_ns;
        // `stage`, `tcp_state` and the padding: one word.
        ptr::write_volatile(
            (&raw mut (*e).stage).cast::<u64>(),
            u64::from(stage) | (u64::from(tcp_state) << 8),
        );
    }
    submit(entry);
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

/// The flows part of `residency_egress` and `residency_ingress`
/// (`crate::packets`): adds the packet to its flow.
#[inline(never)]
pub(crate) fn count_packet(ctx: &SkBuffContext, out: bool) {
    if enabled() {
        on_packet(ctx, out);
    }
}

#[inline(always)]
fn on_packet(ctx: &SkBuffContext, out: bool) {
    let skb = ctx.skb.skb;
    // SAFETY: reads of the program's own context.
    let (sk, len) = unsafe { ((*skb).__bindgen_anon_2.sk, (*skb).len) };
    if sk.is_null() {
        return;
    }
    // A datagram: the flow of its peer on an unconnected socket, if the
    // socket has one (one storage lookup in the common case).
    if let Some((family, addr, port)) = udp_peer(ctx, out) {
        let map = ptr::from_ref(&DGRAMS).cast_mut().cast();
        // SAFETY: `sk` is the packet's socket, checked for null; the helper
        // gives this socket's storage (null for sockets without one, and
        // for sockets that are not full sockets).
        let dg =
            unsafe { bpf_sk_storage_get(map, sk.cast(), ptr::null_mut(), 0) }.cast::<DgramFlows>();
        // SAFETY: checked for null; valid for the program's run.
        if let Some(dg) = unsafe { dg.as_mut() }
            && let Some(i) = slot_of(dg, family, &addr, port)
        {
            tally(&mut dg.slots[i], sk, len, out);
            return;
        }
    }
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
    if let Some(st) = connected(cookie)
        && st.decision.flow != 0
    {
        tally(st, sk, len, out);
    }
}

/// A UDP packet's peer: its destination going out, its source coming in
/// (family, address as flows keep it, port). `None` for anything else.
/// Read from the linear area with direct packet access (no helper calls),
/// else with `bpf_skb_load_bytes`. Only the bytes read are asked of the
/// linear area (an IPv4 datagram of one byte is 29 bytes long), so small
/// datagrams (statsd lines, DNS queries) take the fast path too.
#[inline(always)]
fn udp_peer(ctx: &SkBuffContext, out: bool) -> Option<(u8, [u8; 16], u16)> {
    let skb = ctx.skb.skb;
    // SAFETY: reads of the program's own context.
    let (start, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    // Every UDP packet over IPv4 is at least 28 bytes (over IPv6, 48).
    if start + 24 > end {
        return peer(ctx, out);
    }
    let p = start as *const u8;
    let mut addr = [0u8; 16];
    // SAFETY: each read below is within [start, end), checked before it.
    unsafe {
        match *p {
            // IPv4 without options (20-byte header), then the ports.
            0x45 => {
                if *p.add(9) != IPPROTO_UDP {
                    return None;
                }
                let a = if out { 16 } else { 12 };
                addr[0] = *p.add(a);
                addr[1] = *p.add(a + 1);
                addr[2] = *p.add(a + 2);
                addr[3] = *p.add(a + 3);
                let port = if out { 22 } else { 20 };
                let port = u16::from_be_bytes([*p.add(port), *p.add(port + 1)]);
                Some((AF_INET, addr, port))
            }
            b0 if b0 >> 4 == 6 => {
                if start + 44 > end {
                    return peer(ctx, out);
                }
                if *p.add(6) != IPPROTO_UDP {
                    return None;
                }
                let a = if out { 24 } else { 8 };
                let mut i = 0;
                while i < 16 {
                    addr[i] = *p.add(a + i);
                    i += 1;
                }
                let port = if out { 42 } else { 40 };
                let port = u16::from_be_bytes([*p.add(port), *p.add(port + 1)]);
                Some((AF_INET6, addr, port))
            }
            // IPv4 with options: rare; the helper reads them.
            b0 if b0 >> 4 == 4 => peer(ctx, out),
            _ => None,
        }
    }
}

/// [`udp_peer`] through `bpf_skb_load_bytes`, for headers outside the
/// linear area.
#[inline(always)]
fn peer(ctx: &SkBuffContext, out: bool) -> Option<(u8, [u8; 16], u16)> {
    let b0: u8 = ctx.load::<u8>(0).ok()?;
    let mut addr = [0u8; 16];
    match b0 >> 4 {
        4 => {
            let ihl = usize::from(b0 & 0xf) * 4;
            if ihl < 20 || ctx.load::<u8>(9).ok()? != IPPROTO_UDP {
                return None;
            }
            let a: [u8; 4] = ctx.load(if out { 16 } else { 12 }).ok()?;
            let ports: [u8; 4] = ctx.load(ihl).ok()?;
            addr[0] = a[0];
            addr[1] = a[1];
            addr[2] = a[2];
            addr[3] = a[3];
            let p = if out {
                [ports[2], ports[3]]
            } else {
                [ports[0], ports[1]]
            };
            Some((AF_INET, addr, u16::from_be_bytes(p)))
        }
        6 => {
            if ctx.load::<u8>(6).ok()? != IPPROTO_UDP {
                return None;
            }
            let a: [u8; 16] = ctx.load(if out { 24 } else { 8 }).ok()?;
            let ports: [u8; 4] = ctx.load(40).ok()?;
            let p = if out {
                [ports[2], ports[3]]
            } else {
                [ports[0], ports[1]]
            };
            // An IPv4-mapped destination leaves as IPv4; the flow is kept
            // as IPv4 too, so an IPv6 packet here is a real IPv6 one.
            Some((AF_INET6, a, u16::from_be_bytes(p)))
        }
        _ => None,
    }
}

/// Adds a packet to a flow's totals, and reports them when due.
#[inline(always)]
fn tally(st: &mut FlowState, sk: *mut bpf_sock, len: u32, out: bool) {
    if out {
        add(&mut st.totals.bytes_out, u64::from(len));
        add(&mut st.totals.packets_out, 1);
    } else {
        add(&mut st.totals.bytes_in, u64::from(len));
        add(&mut st.totals.packets_in, 1);
    }
    // SAFETY: `state` of a socket the packet belongs to (readable on any
    // `sock_common`).
    let state = unsafe { (*sk).state };
    // The ACK that completes the handshake is the first segment sent in
    // ESTABLISHED.
    if out && st.established_ns == 0 && state == TCP_ESTABLISHED {
        st.established_ns = now();
    }
    if coarse().wrapping_sub(st.reported_ns) >= report_ns() {
        let s = tcp_state(st, state);
        report(st, FLOW_UPDATE, s);
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
    // SAFETY: `sk` is the program's context (the socket being released).
    let cookie = unsafe { bpf_get_socket_cookie(sk.cast()) };
    if let Some(st) = connected(cookie)
        && st.ends != FLOW_ENDS_ON_CLOSE
    {
        if st.decision.flow != 0 {
            // SAFETY: a field of the program's context.
            let state = unsafe { (*sk).state };
            let s = tcp_state(st, state);
            report(st, FLOW_END, s);
            st.decision.flow = 0;
        }
        // Reported first: the entry is read until the report is written.
        let _ = FLOWS.remove(cookie);
    }
    let map = ptr::from_ref(&DGRAMS).cast_mut().cast();
    // SAFETY: as above.
    let dg = unsafe { bpf_sk_storage_get(map, sk.cast(), ptr::null_mut(), 0) }.cast::<DgramFlows>();
    // SAFETY: checked for null; valid for the program's run.
    let Some(dg) = (unsafe { dg.as_mut() }) else {
        return;
    };
    let mut i = 0;
    while i < DGRAM_SLOTS {
        if dg.slots[i].decision.flow != 0 {
            report(&mut dg.slots[i], FLOW_END, 0);
            dg.slots[i].decision.flow = 0;
        }
        i += 1;
    }
}

/// A followed TCP connection's state, from its establishment to its end.
/// Once established it asks for the connection's state changes and marks
/// the flow to end with it; when the connection reaches `TCP_CLOSE`
/// (after the FIN exchange, or a reset), it reports the flow's end and
/// removes it. A connect that never established (refused) sent nothing
/// after its release, which ends it. Every other callback returns at
/// once; asking only once established spares the state change to
/// `ESTABLISHED`, inside `connect()`, a program run.
#[sock_ops]
pub fn residency_tcp(ctx: SockOpsContext) -> u32 {
    if enabled() {
        on_tcp(&ctx);
    }
    1
}

#[inline(always)]
fn on_tcp(ctx: &SockOpsContext) {
    let op = ctx.op();
    let closing = op == BPF_SOCK_OPS_STATE_CB && ctx.arg(1) == TCP_CLOSE;
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && !closing {
        return;
    }
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    let Some(st) = connected(cookie) else {
        return;
    };
    if closing {
        if st.decision.flow != 0 {
            #[expect(clippy::cast_possible_truncation, reason = "TCP_CLOSE is 7")]
            report(st, FLOW_END, TCP_CLOSE as u8);
            st.decision.flow = 0;
        }
        let _ = FLOWS.remove(cookie);
        return;
    }
    #[expect(clippy::cast_possible_wrap, reason = "a few flag bits")]
    let flags = (ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32;
    if st.decision.flow != 0 && ctx.set_cb_flags(flags).is_ok() {
        st.ends = FLOW_ENDS_ON_CLOSE;
    }
}
