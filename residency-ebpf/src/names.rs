//! Names: which host name a workload resolved for an address, seen in the
//! kernel before the process can use the answer.
//!
//! - `dns_in` (in `residency_ingress`, see `packets`) reads every DNS answer a watched
//!   socket receives (UDP or TCP, source port 53: from a local stub such as
//!   127.0.0.53 or a remote resolver alike). It matches the question name
//!   against the patterns the daemon compiled (most specific first: the
//!   exact name, then `*.` suffixes from the longest), and writes each A and
//!   AAAA address into `DNS_NAMES` under the receiving socket's cgroup. The
//!   program runs while the kernel queues the datagram, so the entry exists
//!   before `recvmsg()` returns: a `connect()` a microsecond later finds it.
//!   It then copies the message to the daemon, which parses it in full for
//!   the records (the kernel parse is only what the verdict needs).
//! - `tls_out` (in `residency_egress`) copies TCP segments that start a
//!   TLS `ClientHello` (and, through `TLS_PENDING`, the segments that
//!   continue one), so that the daemon can read its server name.
//!
//! Neither ever drops a packet: the programs return 1 whatever they find.
//! Every read is bounds-checked by `bpf_skb_load_bytes`; every loop has a
//! constant bound, so hostile packets (compression loops, lengths past the
//! end) end a parse early and change nothing else.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    btf_maps::{ArrayOfMaps, HashMap as BtfHashMap},
    helpers::generated::{
        bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_loop, bpf_skb_cgroup_id,
        bpf_skb_load_bytes,
    },
    macros::{btf_map, map},
    maps::{LruHashMap, PerCpuArray},
    programs::SkBuffContext,
};
use residency_common::{
    AF_INET, AF_INET6, BPF_F_NO_PREALLOC, DNS_EVENT_BYTES, DNS_MAX_LABELS, DNS_MAX_RECORDS,
    DestRule, DnsEvent, EventHeader, EventKind, IPPROTO_TCP, IPPROTO_UDP, MAX_NAME_PATTERNS,
    MAX_NAME_RULES, NameClass, NameEntry, NameKey, NameRuleKey, PATTERN_BYTES, PATTERN_WILDCARD,
    PatternKey, Stat, TLS_EVENT_BYTES, TLS_MAX_HELLO, TLS_PENDING_ENTRIES, TlsEvent, TlsPending,
};

use crate::{EVENTS, POLICY_ACTIVE, PolicySlots, count, mem, wakeup_bytes};

#[unsafe(no_mangle)]
static NAMES_ENABLED: u8 = 0;
#[unsafe(no_mangle)]
static SNI_ENABLED: u8 = 0;
#[unsafe(no_mangle)]
static NAME_MIN_TTL_NS: u64 = 3_600_000_000_000;
#[unsafe(no_mangle)]
static NAME_MAX_TTL_NS: u64 = 7 * 86_400_000_000_000;

/// The daemon sizes it from its configuration at load time.
#[map(name = "DNS_NAMES")]
pub(crate) static DNS_NAMES: LruHashMap<NameKey, NameEntry> =
    LruHashMap::with_max_entries(131_072, 0);

#[btf_map]
pub(crate) static NAME_PATTERNS: PolicySlots<
    BtfHashMap<PatternKey, u32, { MAX_NAME_PATTERNS as usize }, { BPF_F_NO_PREALLOC as usize }>,
> = ArrayOfMaps::new();

#[btf_map]
pub(crate) static NAME_CLASSES: PolicySlots<
    BtfHashMap<u32, NameClass, { MAX_NAME_PATTERNS as usize }, { BPF_F_NO_PREALLOC as usize }>,
> = ArrayOfMaps::new();

#[btf_map]
pub(crate) static NAME_RULES: PolicySlots<
    BtfHashMap<NameRuleKey, DestRule, { MAX_NAME_RULES as usize }, { BPF_F_NO_PREALLOC as usize }>,
> = ArrayOfMaps::new();

/// The DNS message being parsed, and the record the daemon gets.
#[map(name = "DNS_SCRATCH")]
static DNS_SCRATCH: PerCpuArray<DnsEvent> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "NAME_SCRATCH")]
static NAME_SCRATCH: PerCpuArray<PatternKey> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "TLS_PENDING")]
pub(crate) static TLS_PENDING: LruHashMap<u64, TlsPending> =
    LruHashMap::with_max_entries(TLS_PENDING_ENTRIES, 0);

#[inline(always)]
pub(crate) fn names_enabled() -> bool {
    // SAFETY: a plain read of a static; volatile so that the loader's value
    // is read rather than the default folded in.
    unsafe { core::ptr::read_volatile(&raw const NAMES_ENABLED) != 0 }
}

#[inline(always)]
pub(crate) fn sni_enabled() -> bool {
    // SAFETY: as in `names_enabled`.
    unsafe { core::ptr::read_volatile(&raw const SNI_ENABLED) != 0 }
}

#[inline(always)]
fn ttl_ns(ttl: u32) -> u64 {
    // SAFETY: as in `names_enabled`.
    let (min, max) = unsafe {
        (
            core::ptr::read_volatile(&raw const NAME_MIN_TTL_NS),
            core::ptr::read_volatile(&raw const NAME_MAX_TTL_NS),
        )
    };
    (u64::from(ttl) * 1_000_000_000).clamp(min, max.max(min))
}

#[inline(always)]
fn load<T>(ctx: &SkBuffContext, offset: u32) -> Option<T> {
    ctx.load::<T>(offset as usize).ok()
}

#[inline(always)]
fn be16(b: [u8; 2]) -> u32 {
    u32::from(u16::from_be_bytes(b))
}

/// Where the transport payload of a packet starts: (offset, protocol,
/// source port, destination port).
#[inline(always)]
fn transport(ctx: &SkBuffContext) -> Option<(u32, u8, u32, u32)> {
    let b0: u8 = load(ctx, 0)?;
    let (l4, proto) = match b0 >> 4 {
        4 => {
            let ihl = u32::from(b0 & 0xf) * 4;
            if ihl < 20 {
                return None;
            }
            (ihl, load::<u8>(ctx, 9)?)
        }
        // Extension headers are not followed: DNS answers and ClientHellos
        // do not carry them.
        6 => (40, load::<u8>(ctx, 6)?),
        _ => return None,
    };
    let ports: [u8; 4] = load(ctx, l4)?;
    let (sport, dport) = (be16([ports[0], ports[1]]), be16([ports[2], ports[3]]));
    match proto {
        IPPROTO_UDP => Some((l4 + 8, proto, sport, dport)),
        IPPROTO_TCP => {
            let off: u8 = load(ctx, l4 + 12)?;
            let doff = u32::from(off >> 4) * 4;
            if doff < 20 {
                return None;
            }
            Some((l4 + doff, proto, sport, dport))
        }
        _ => None,
    }
}

/// The DNS part of `residency_ingress` (`crate::packets`).
#[inline(never)]
pub(crate) fn dns_in(ctx: &SkBuffContext) {
    if names_enabled() {
        let _ = on_answer(ctx);
    }
}

/// The generation's slot, for the pattern maps.
#[inline(always)]
fn active_slot() -> Option<u32> {
    let active = POLICY_ACTIVE.get(0)?;
    if active.generation == 0 {
        return None;
    }
    Some(active.generation & 1)
}

fn on_answer(ctx: &SkBuffContext) -> Option<()> {
    // A connected socket whose peer is not on port 53 (a TCP connection to
    // a web service, say) gets no DNS answer: skip it before parsing.
    // Unconnected UDP sockets have no peer (0) and are parsed.
    // The kernel hands `remote_port` over in network byte order, shifted
    // into the upper half on little-endian machines; either half will do.
    let peer = ctx.skb.remote_port();
    if peer != 0 && (peer | (peer >> 16)) & 0xffff != u32::from(53u16.to_be()) {
        return None;
    }
    let (payload, proto, sport, _) = transport(ctx)?;
    if sport != 53 {
        return None;
    }
    let len = ctx.len();
    // A TCP answer starts with its length; a segment that does not start a
    // message will not look like a DNS header below and is skipped.
    let (msg, msg_len) = if proto == IPPROTO_TCP {
        let framed: [u8; 2] = load(ctx, payload)?;
        (payload + 2, be16(framed))
    } else {
        (payload, len.checked_sub(payload)?)
    };
    let header: [u8; 12] = load(ctx, msg)?;
    // A response (QR), a standard query (opcode 0), no error, one question.
    if header[2] & 0xf8 != 0x80 || header[3] & 0x0f != 0 || be16([header[4], header[5]]) != 1 {
        return None;
    }
    let answers = be16([header[6], header[7]]);
    if answers == 0 {
        return None;
    }
    // The message is parsed from a copy in per-CPU memory, which is also
    // the record the daemon gets: one copy, and plain loads in the loops.
    let ev = DNS_SCRATCH.get_ptr_mut(0)?;
    let available = len.saturating_sub(msg).min(msg_len);
    let copied = available.min(DNS_EVENT_BYTES as u32);
    // SAFETY: a per-CPU map value, ours for the whole run; `n` is checked
    // against the buffer's size before the helper writes it.
    unsafe {
        let n = copied & (2 * DNS_EVENT_BYTES as u32 - 1);
        if n == 0 || n > DNS_EVENT_BYTES as u32 {
            return None;
        }
        if bpf_skb_load_bytes(ctx.skb.skb.cast(), msg, (*ev).msg.as_mut_ptr().cast(), n) != 0 {
            return None;
        }
        (*ev).copied = n;
    }

    // The question name's length, then the most specific pattern for it:
    // the whole name as an exact pattern, then each suffix as the literal
    // of a `*.` pattern, longest first.
    // SAFETY: helper calls on the program's own context.
    let (cgroup_id, stamp) = unsafe { (bpf_skb_cgroup_id(ctx.skb.skb), bpf_ktime_get_boot_ns()) };
    let walk = walk_state()?;
    *walk = Walk {
        pos: 12,
        end: copied,
        qlen: 0,
        slot: active_slot().unwrap_or(u32::MAX),
        pattern: 0,
        first: 1,
        off: 0,
        answers,
        records: 0,
        mapped: 0,
        in_name: 1,
        _pad: 0,
        cgroup_id,
        stamp,
    };
    // SAFETY: the callbacks take their state from DNS_WALK, not from the
    // (null) context pointer.
    unsafe {
        bpf_loop(
            DNS_MAX_LABELS,
            question_length as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    let walk = walk_state()?;
    if walk.qlen == 0 {
        return None;
    }
    walk.pos = 12;
    if walk.slot != u32::MAX {
        // SAFETY: as above.
        unsafe {
            bpf_loop(
                DNS_MAX_LABELS,
                match_suffix as *mut c_void,
                core::ptr::null_mut(),
                0,
            );
        }
    }
    let walk = walk_state()?;
    walk.off = 12 + walk.qlen + 4;
    // SAFETY: as above.
    unsafe {
        bpf_loop(
            DNS_MAX_RECORDS * 8,
            read_record as *mut c_void,
            core::ptr::null_mut(),
            0,
        );
    }
    let walk = walk_state()?;
    let pattern = walk.pattern;
    #[expect(clippy::cast_possible_truncation, reason = "at most DNS_MAX_RECORDS")]
    let mapped = walk.mapped as u16;
    // SAFETY: the per-CPU value from above, now sent whole.
    unsafe {
        // Only the bytes copied go into the ring: a typical answer makes a
        // record of about 150 bytes, not 4 KiB, so the reader is woken no
        // more often than for decisions. 1..=DNS_EVENT_BYTES, in a form the
        // verifier can see (`black_box` keeps LLVM from dropping the mask).
        let copied = (core::hint::black_box((*ev).copied).wrapping_sub(1)
            & (DNS_EVENT_BYTES as u32 - 1))
            + 1;
        let head = core::mem::offset_of!(DnsEvent, msg) as u32;
        (*ev).header = EventHeader {
            kind: EventKind::Dns as u32,
            size: head + copied,
        };
        (*ev).boot_ns = stamp;
        (*ev).cgroup_id = cgroup_id;
        (*ev).pattern = pattern;
        (*ev).msg_len = msg_len;
        (*ev).mapped = mapped;
        (*ev).protocol = proto;
        (*ev)._pad = 0;
        let flags = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= wakeup_bytes() {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        };
        let record = core::slice::from_raw_parts(ev.cast::<u8>(), (head + copied) as usize);
        if EVENTS.output::<[u8]>(record, u64::from(flags)).is_err() {
            count(Stat::NamesDropped);
        }
    }
    Some(())
}

/// State of the walks over the question name and the records. It lives in
/// per-CPU map memory, not on the stack: the verifier treats every load of
/// it as an unknown value, so each `bpf_loop` callback is verified in one
/// state instead of one per iteration.
#[repr(C)]
pub(crate) struct Walk {
    /// Offset of the current label in the message copy.
    pos: u32,
    /// Bytes of the message copied.
    end: u32,
    /// Length of the question name in wire format (0: not valid).
    qlen: u32,
    /// Policy slot of the pattern maps (`u32::MAX`: none loaded).
    slot: u32,
    /// The pattern found (0: none).
    pattern: u32,
    /// 1 while at the first label (exact patterns), then 0 (wildcards).
    first: u32,
    // The records walk.
    off: u32,
    answers: u32,
    records: u32,
    mapped: u32,
    in_name: u32,
    _pad: u32,
    cgroup_id: u64,
    stamp: u64,
}

#[map(name = "DNS_WALK")]
static DNS_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn walk_state() -> Option<&'static mut Walk> {
    let p = DNS_WALK.get_ptr_mut(0)?;
    // SAFETY: a per-CPU map value, valid for the whole run.
    Some(unsafe { &mut *p })
}

/// One byte of the message copy, or `None` past what was copied.
#[inline(always)]
fn byte(msg: &[u8; DNS_EVENT_BYTES], end: u32, at: u32) -> Option<u8> {
    if at >= end {
        return None;
    }
    Some(msg[(at as usize) & (DNS_EVENT_BYTES - 1)])
}

#[inline(always)]
fn scratch() -> Option<&'static mut DnsEvent> {
    let p = DNS_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: a per-CPU map value, valid for the whole run.
    Some(unsafe { &mut *p })
}

/// `bpf_loop` step: one label of the question name. Stops (1) at the root
/// label, with `qlen` set, or at anything invalid, with `qlen` 0.
extern "C" fn question_length(_i: u64, _ctx: *mut c_void) -> i64 {
    let (Some(w), Some(ev)) = (walk_state(), scratch()) else {
        return 1;
    };
    let Some(l) = byte(&ev.msg, w.end, w.pos) else {
        return 1;
    };
    if l == 0 {
        w.qlen = w.pos + 1 - 12;
        return 1;
    }
    // A pointer or a reserved label type in a question: not parsed here.
    if l > 63 || w.pos - 12 + u32::from(l) + 1 > 254 {
        return 1;
    }
    w.pos += u32::from(l) + 1;
    0
}

/// `bpf_loop` step: looks up the suffix that starts at the current label,
/// then moves to the next label. Stops (1) at the first pattern found or
/// at the root label.
extern "C" fn match_suffix(_i: u64, _ctx: *mut c_void) -> i64 {
    let (Some(w), Some(ev)) = (walk_state(), scratch()) else {
        return 1;
    };
    let Some(l) = byte(&ev.msg, w.end, w.pos) else {
        return 1;
    };
    if l == 0 || l > 63 {
        return 1;
    }
    let suffix = w.qlen + 12 - w.pos;
    if suffix as usize <= PATTERN_BYTES
        && let (Some(patterns), Some(key)) =
            (NAME_PATTERNS.get(w.slot), NAME_SCRATCH.get_ptr_mut(0))
    {
        // SAFETY: a per-CPU map value, ours for the whole run.
        let key = unsafe { &mut *key };
        let mut j = 0usize;
        while j < PATTERN_BYTES {
            let b = if (j as u32) < suffix {
                byte(&ev.msg, w.end, w.pos + j as u32).unwrap_or(0)
            } else {
                0
            };
            // ASCII letters to lower case; label lengths (at most 63) are
            // below 'A' and stay as they are.
            key.bytes[j] = if b.wrapping_sub(b'A') < 26 {
                b | 0x20
            } else {
                b
            };
            j += 1;
        }
        #[expect(clippy::cast_possible_truncation, reason = "at most PATTERN_BYTES")]
        {
            key.len = suffix as u8;
        }
        key.wildcard = if w.first != 0 { 0 } else { PATTERN_WILDCARD };
        key._pad = [0; 6];
        // SAFETY: the inner map is read only through helpers.
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "the key stays in per-CPU map memory: by value it would be copied to the stack"
        )]
        if let Some(&id) = unsafe { patterns.get(&*key) } {
            w.pattern = id;
            return 1;
        }
    }
    w.first = 0;
    w.pos += u32::from(l) + 1;
    0
}

/// `bpf_loop` step: skips one label of an owner name, or reads one record
/// and maps its address (A and AAAA) to the question's pattern for this
/// workload. Stops (1) after the last record or at anything invalid.
extern "C" fn read_record(_i: u64, _ctx: *mut c_void) -> i64 {
    let (Some(r), Some(ev)) = (walk_state(), scratch()) else {
        return 1;
    };
    if r.records >= r.answers {
        return 1;
    }
    let msg = &ev.msg;
    let at = |o: u32| byte(msg, r.end, o);
    if r.in_name != 0 {
        let Some(l) = at(r.off) else { return 1 };
        if l & 0xc0 == 0xc0 {
            r.off += 2;
            r.in_name = 0;
        } else if l == 0 {
            r.off += 1;
            r.in_name = 0;
        } else if l > 63 {
            return 1;
        } else {
            r.off += u32::from(l) + 1;
        }
        return 0;
    }
    let o = r.off;
    let (Some(t0), Some(t1), Some(l0), Some(l1)) = (at(o), at(o + 1), at(o + 8), at(o + 9)) else {
        return 1;
    };
    let ty = be16([t0, t1]);
    let rdlen = be16([l0, l1]);
    let ttl = u32::from_be_bytes([
        at(o + 4).unwrap_or(0),
        at(o + 5).unwrap_or(0),
        at(o + 6).unwrap_or(0),
        at(o + 7).unwrap_or(0),
    ]);
    let data = o + 10;
    if data + rdlen > r.end {
        return 1;
    }
    let mut key = NameKey {
        cgroup_id: r.cgroup_id,
        addr: [0; 16],
        family: 0,
        _pad: 0,
    };
    if (ty == 1 && rdlen == 4) || (ty == 28 && rdlen == 16) {
        let mut j = 0u32;
        while j < 16 {
            if j < rdlen {
                key.addr[j as usize] = at(data + j).unwrap_or(0);
            }
            j += 1;
        }
        key.family = u32::from(if ty == 1 { AF_INET } else { AF_INET6 });
        remember(&key, r.stamp, r.stamp + ttl_ns(ttl), r.pattern);
        r.mapped += 1;
    }
    r.off = data + rdlen;
    r.records += 1;
    r.in_name = 1;
    0
}
/// Writes a name for an address: slot 0 holds the first live answer, slot 1
/// the latest answer that matched another pattern.
#[inline(always)]
fn remember(key: &NameKey, stamp: u64, expires: u64, pattern: u32) {
    if let Some(e) = DNS_NAMES.get_ptr_mut(key) {
        // SAFETY: a map value, valid while the program runs; a racing
        // update from another CPU can at worst mix two answers' stamps.
        let e = unsafe { &mut *e };
        if e.expires[0] <= stamp || e.pattern[0] == pattern {
            if e.expires[0] <= stamp {
                e.stamp[1] = 0;
                e.expires[1] = 0;
                e.pattern[1] = 0;
            }
            e.stamp[0] = stamp;
            e.expires[0] = expires;
            e.pattern[0] = pattern;
        } else {
            e.stamp[1] = stamp;
            e.expires[1] = expires;
            e.pattern[1] = pattern;
        }
        return;
    }
    let entry = NameEntry {
        stamp: [stamp, 0],
        expires: [expires, 0],
        pattern: [pattern, 0],
    };
    // A full map evicts the least recently used name; a failed insert only
    // means this address is judged by GeoIP, with the reason on the record.
    let _ = DNS_NAMES.insert(key, entry, 0);
}

#[inline(always)]
pub(crate) fn submit<T>(entry: aya_ebpf::maps::ring_buf::RingBufEntry<T>) {
    let wakeup = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= wakeup_bytes() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(wakeup));
}

/// The TLS part of `residency_egress` (`crate::packets`).
#[inline(never)]
pub(crate) fn tls_out(ctx: &SkBuffContext) {
    if sni_enabled() {
        let _ = on_egress(ctx);
    }
}

/// The TCP payload length of an outgoing segment, read from the headers in
/// the linear area with direct packet access (no helper calls): the common
/// SYN and ACK segments are passed over for a few loads. `None` when the
/// headers are not all in the linear area; `Some(0)` for anything but TCP.
#[inline(always)]
fn tcp_payload_fast(ctx: &SkBuffContext) -> Option<usize> {
    let skb = ctx.skb.skb;
    // SAFETY: reads of the program's own context.
    let (start, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    // The protocol first, from the first 10 bytes: a datagram shorter than
    // a TCP header (a one-byte one is 29 bytes) is passed over here too.
    if start + 10 > end {
        return None;
    }
    let p = start as *const u8;
    // SAFETY: each read below is within [start, end), checked above or
    // just before it.
    unsafe {
        let b0 = *p;
        let proto = match b0 >> 4 {
            4 => *p.add(9),
            6 => *p.add(6),
            _ => return None,
        };
        if proto != IPPROTO_TCP {
            return Some(0);
        }
        if start + 40 > end {
            return None;
        }
        let (l4, total) = if b0 >> 4 == 4 {
            (
                usize::from(b0 & 0xf) * 4,
                usize::from(u16::from_be_bytes([*p.add(2), *p.add(3)])),
            )
        } else {
            (
                40,
                40 + usize::from(u16::from_be_bytes([*p.add(4), *p.add(5)])),
            )
        };
        if l4 < 20 {
            return None;
        }
        let off = start + l4 + 12;
        if off + 1 > end {
            return None;
        }
        let doff = usize::from(*(off as *const u8) >> 4) * 4;
        Some(total.saturating_sub(l4 + doff))
    }
}

fn on_egress(ctx: &SkBuffContext) -> Option<()> {
    if tcp_payload_fast(ctx) == Some(0) {
        return None; // SYN, ACK, FIN, or not TCP
    }
    let (payload, proto, _, _) = transport(ctx)?;
    if proto != IPPROTO_TCP {
        return None;
    }
    let plen = ctx.len().checked_sub(payload)?;
    if plen == 0 {
        return None; // SYN, ACK, FIN: no payload
    }
    // SAFETY: a helper call on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
    // The start of a TLS handshake record that holds a ClientHello: type
    // 22, version 3.x, the record's length, handshake type 1. No state is
    // kept per connection until one is seen, so connect() pays nothing.
    let head: Option<[u8; 6]> = load(ctx, payload);
    let (offset, total, pending) = match head {
        Some(h) if h[0] == 22 && h[1] == 3 && h[5] == 1 => (0, 5 + be16([h[3], h[4]]), false),
        _ => {
            // A ClientHello longer than its first segment (post-quantum key
            // shares make them ~1.8 KB) continues in the next ones.
            // SAFETY: the map is read only through helpers; copied out.
            let st = unsafe { TLS_PENDING.get(cookie) }.copied()?;
            (st.seen, st.total, true)
        }
    };
    let Some(mut entry) = EVENTS.reserve::<TlsEvent>(0) else {
        count(Stat::NamesDropped);
        let _ = TLS_PENDING.remove(cookie);
        return None;
    };
    let ev = entry.as_mut_ptr();
    let copied = plen.min(TLS_EVENT_BYTES as u32);
    // SAFETY: `ev` is the reserved record; fields are written in place.
    unsafe {
        (*ev).header = EventHeader {
            kind: EventKind::Tls as u32,
            size: size_of::<TlsEvent>() as u32,
        };
        (*ev).boot_ns = bpf_ktime_get_boot_ns();
        (*ev).cookie = cookie;
        (*ev).cgroup_id = bpf_skb_cgroup_id(ctx.skb.skb);
        (*ev).offset = offset;
        // 1..=TLS_EVENT_BYTES in a form the verifier can see (`copied`
        // is at least 1: the segment has payload). `black_box` keeps LLVM
        // from folding the mask away as redundant.
        let n = (core::hint::black_box(copied).wrapping_sub(1) & (TLS_EVENT_BYTES as u32 - 1)) + 1;
        let ok = bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            payload,
            (*ev).data.as_mut_ptr().cast(),
            n,
        ) == 0;
        (*ev).len = if ok { n } else { 0 };
    }
    submit(entry);
    let seen = offset.saturating_add(plen);
    let more = seen < total && seen < TLS_MAX_HELLO;
    // (A pointer to the entry is not kept across the ring calls above: the
    // verifier would lose its type where LLVM merges it with the no-entry
    // path.)
    if more {
        let _ = TLS_PENDING.insert(cookie, TlsPending { seen, total }, 0);
    } else if pending {
        let _ = TLS_PENDING.remove(cookie);
    }
    Some(())
}

/// What the DNS program knew of a destination, for connect4/6.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Names {
    /// Live slots: stamp and pattern.
    pub stamp: [u64; 2],
    pub pattern: [u32; 2],
    pub state: u8,
    pub live: [bool; 2],
    _pad: [u8; 5],
}

impl Names {
    /// Writes "no names, in `state`" to `out`, a word at a time, in place
    /// (see `crate::mem`): built whole and returned, it was cleared by a
    /// byte-at-a-time `memset` on every decision.
    ///
    /// # Safety
    /// `out` is valid for writes of a `Names`.
    #[inline(always)]
    pub(crate) unsafe fn none(out: *mut Names, state: u8) {
        // SAFETY: as the caller promised; all zero bytes are a valid `Names`.
        unsafe {
            mem::zero(out);
            (*out).state = state;
        }
    }
}

/// Writes to `out` the names this workload's answers gave for the address
/// `addr` (its 16 bytes as two words, as `NameKey` holds them).
///
/// # Safety
/// `out` is valid for writes of a `Names`.
#[inline(always)]
pub(crate) unsafe fn names_for(
    out: *mut Names,
    cgroup_id: u64,
    addr: [u64; 2],
    family: u8,
    now: u64,
) {
    // SAFETY: as the caller promised.
    unsafe { Names::none(out, residency_common::NAME_NONE) };
    // SAFETY: as the caller promised.
    let names = unsafe { &mut *out };
    let mut key = core::mem::MaybeUninit::<NameKey>::uninit();
    let k = key.as_mut_ptr();
    // SAFETY: every field of the key is written (`addr`, 8-aligned in it,
    // as two words), so it is fully initialized.
    let key = unsafe {
        (*k).cgroup_id = cgroup_id;
        let a = (&raw mut (*k).addr).cast::<u64>();
        core::ptr::write_volatile(a, addr[0]);
        core::ptr::write_volatile(a.add(1), addr[1]);
        (*k).family = u32::from(family);
        (*k)._pad = 0;
        key.assume_init()
    };
    // SAFETY: the map is read only through helpers; the entry is copied.
    let Some(e) = (unsafe { DNS_NAMES.get(key) }).copied() else {
        return;
    };
    names.live = [
        e.stamp[0] != 0 && e.expires[0] > now,
        e.stamp[1] != 0 && e.expires[1] > now,
    ];
    names.stamp = e.stamp;
    names.pattern = e.pattern;
    names.state = if names.live[0] || names.live[1] {
        residency_common::NAME_FOUND
    } else {
        residency_common::NAME_EXPIRED
    };
}

/// What the generation in `slot` says of names matching `pattern`.
#[inline(always)]
pub(crate) fn class_of(slot: u32, pattern: u32) -> Option<NameClass> {
    if pattern == 0 {
        return None;
    }
    let classes = NAME_CLASSES.get(slot)?;
    // SAFETY: the inner map is read only through helpers.
    unsafe { classes.get(pattern) }.copied()
}

/// A deny rule or exception of `policy` naming hosts that `pattern` covers.
#[inline(always)]
pub(crate) fn name_rule(slot: u32, policy: u32, pattern: u32) -> Option<DestRule> {
    if pattern == 0 {
        return None;
    }
    let rules = NAME_RULES.get(slot)?;
    // SAFETY: the inner map is read only through helpers.
    unsafe { rules.get(NameRuleKey { policy, pattern }) }.copied()
}
