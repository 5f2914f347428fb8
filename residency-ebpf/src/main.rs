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
//! Tracepoints on exec, fork and exit (module `process`) tell the daemon
//! which program each process in the cgroup runs, in the same ring.
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
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, bpf_sock_addr},
    btf_maps::{
        Array as BtfArray, ArrayOfMaps, HashMap as BtfHashMap, HashOfMaps, LpmTrie as BtfLpmTrie,
        lpm_trie::Key as BtfKey,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id,
            bpf_get_current_comm as bpf_get_current_comm_raw, bpf_get_socket_cookie,
            bpf_ktime_get_boot_ns,
        },
    },
    macros::{btf_map, cgroup_sock_addr, map},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::SockAddrContext,
};
use aya_log_ebpf::warn;

mod flows;
mod mem;
mod names;
mod packets;
mod process;
use residency_common::{
    AF_INET, AF_INET6, Action, BPF_F_INNER_MAP, BPF_F_NO_PREALLOC, CLASS_CATALOG, CLASS_RESOLVER,
    CLASS_UNKNOWN, CachedPolicy, ConnectEvent, DaemonState, DestKind, DestRule, EventHeader,
    EventKind, ExceptionV4Key, ExceptionV6Key, FLAG_BY_NAME, FLAG_STALE, FLAG_TLS_WATCHED,
    FLAG_V4_MAPPED, GEO_GENERATIONS, GEO4_L1_ENTRIES, GEO4_L1_UNIFORM, GEO4_L2_SPLIT,
    GEO6_MAX_PREFIXES, GeoActive, HAS_EXCEPTIONS_V4, HAS_EXCEPTIONS_V6, HAS_NAME_RULES, Hook,
    IPPROTO_TCP, IPPROTO_UDP, Ipv4Key, Ipv6Key, MAX_CGROUP_DEPTH, MAX_CGROUP_POLICIES,
    MAX_DEST_RULES, MAX_EXCEPTIONS, MAX_POLICIES, MAX_PROCESS_POLICIES, NAME_FOUND, NAME_OFF,
    NO_CGROUP_POLICY, POLICY_CACHE_ENTRIES, Policy, PolicyActive, SELECTS_BY_COMM, SELECTS_BY_UID,
    STAT_COUNT, Stat, Verdict, WHEN_STALE_MONITOR,
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
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// What the daemon last said (pinned; the next daemon starts from it).
/// The programs read only the staleness bound, and only when they are
/// about to block.
#[map(name = "DAEMON")]
static DAEMON: Array<DaemonState> = Array::with_max_entries(1, 0);

// Policy maps. A policy generation is one set of inner maps in slot
// `generation & 1` of each outer array; POLICY_ACTIVE names the generation
// in force. The daemon writes a new generation into the other slot and then
// switches, and waits a grace period before it writes that slot again, so a
// program that read POLICY_ACTIVE sees one consistent set. Array-of-maps
// lookups are inlined by the verifier: the indirection costs nothing
// measurable on the hot path.
#[map(name = "POLICY_ACTIVE")]
pub(crate) static POLICY_ACTIVE: Array<PolicyActive> = Array::with_max_entries(1, 0);

/// The walk up the cgroup tree, done once per cgroup: a process three levels
/// below its workload's cgroup then costs one lookup, not a walk.
#[map(name = "POLICY_CACHE")]
static POLICY_CACHE: LruHashMap<u64, CachedPolicy> =
    LruHashMap::with_max_entries(POLICY_CACHE_ENTRIES, 0);

pub(crate) type PolicySlots<M> = ArrayOfMaps<M, 2>;

#[btf_map]
static POLICIES: PolicySlots<BtfArray<Policy, { MAX_POLICIES as usize }>> = ArrayOfMaps::new();

#[btf_map]
static CGROUP_POLICY: PolicySlots<
    BtfHashMap<u64, u32, { MAX_CGROUP_POLICIES as usize }, { BPF_F_NO_PREALLOC as usize }>,
> = ArrayOfMaps::new();

#[btf_map]
static COMM_POLICY: PolicySlots<
    BtfHashMap<[u8; 16], u32, { MAX_PROCESS_POLICIES as usize }, { BPF_F_NO_PREALLOC as usize }>,
> = ArrayOfMaps::new();

#[btf_map]
static UID_POLICY: PolicySlots<
    BtfHashMap<u32, u32, { MAX_PROCESS_POLICIES as usize }, { BPF_F_NO_PREALLOC as usize }>,
> = ArrayOfMaps::new();

#[btf_map]
static DEST_RULES_V4: PolicySlots<
    BtfLpmTrie<Ipv4Key, DestRule, { MAX_DEST_RULES as usize }, { BPF_F_NO_PREALLOC as usize }>,
> = ArrayOfMaps::new();

#[btf_map]
static DEST_RULES_V6: PolicySlots<
    BtfLpmTrie<Ipv6Key, DestRule, { MAX_DEST_RULES as usize }, { BPF_F_NO_PREALLOC as usize }>,
> = ArrayOfMaps::new();

#[btf_map]
static EXCEPTIONS_V4: PolicySlots<
    BtfLpmTrie<
        ExceptionV4Key,
        DestRule,
        { MAX_EXCEPTIONS as usize },
        { BPF_F_NO_PREALLOC as usize },
    >,
> = ArrayOfMaps::new();

#[btf_map]
static EXCEPTIONS_V6: PolicySlots<
    BtfLpmTrie<
        ExceptionV6Key,
        DestRule,
        { MAX_EXCEPTIONS as usize },
        { BPF_F_NO_PREALLOC as usize },
    >,
> = ArrayOfMaps::new();

// GeoIP tables. Each generation is a set of inner maps that the daemon builds
// off to the side and then publishes by bumping GEO_ACTIVE; the previous
// generation is removed only after that, and the kernel frees it once no
// program holds it (RCU). A program that finds a table of the generation it
// read missing (removed meanwhile) reads GEO_ACTIVE again: there is no moment
// at which a lookup misses.
#[map(name = "GEO_ACTIVE")]
static GEO_ACTIVE: Array<GeoActive> = Array::with_max_entries(1, 0);

#[btf_map]
static GEO4_L1: HashOfMaps<
    u32,
    BtfArray<u32, { GEO4_L1_ENTRIES as usize }>,
    { GEO_GENERATIONS as usize },
> = HashOfMaps::new();

#[btf_map]
static GEO4_L2: HashOfMaps<
    u32,
    BtfArray<[u16; 256], 1, { BPF_F_INNER_MAP as usize }>,
    { GEO_GENERATIONS as usize },
> = HashOfMaps::new();

#[btf_map]
static GEO4_L3: HashOfMaps<
    u32,
    BtfArray<[u8; 256], 1, { BPF_F_INNER_MAP as usize }>,
    { GEO_GENERATIONS as usize },
> = HashOfMaps::new();

#[btf_map]
static GEO6: HashOfMaps<
    u32,
    BtfLpmTrie<Ipv6Key, u16, { GEO6_MAX_PREFIXES as usize }, { BPF_F_NO_PREALLOC as usize }>,
    { GEO_GENERATIONS as usize },
> = HashOfMaps::new();

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

/// How a destination was classified, and by what.
struct Finding {
    kind: DestKind,
    action: Action,
    rule_id: u32,
    country: u16,
    geo_gen: u32,
    /// `FLAG_BY_NAME` when a rule naming hosts decided.
    flags: u8,
}

/// What the names this workload resolved say of the destination.
struct NameFacts {
    state: u8,
    stamp: u64,
    stamp2: u64,
    pattern: u32,
}

/// The policy that applies to the calling process, and where it came from.
struct Applied<'a> {
    policy: &'a Policy,
    index: u32,
    generation: u32,
    /// The caller's own cgroup, read once for the lookup and the record.
    cgroup_id: u64,
}

fn decide(ctx: &SockAddrContext, hook: Hook, dest: &Dest, port_be: u32, flags: u8) -> i32 {
    let (family, daddr) = match dest {
        Dest::V4(a) => (
            AF_INET,
            [a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        Dest::V6(a) => (AF_INET6, *a),
    };
    let probe = if matches!(hook, Hook::Sendmsg4 | Hook::Sendmsg6) {
        match flows::probe(ctx, family, &daddr, port_be) {
            flows::Probe::Repeat(r) => return r,
            p => p,
        }
    } else {
        flows::Probe::Off
    };
    let Some(applied) = applied_policy() else {
        // No policy loaded yet: the daemon loads one before it attaches,
        // so this does not happen; allow and report nothing.
        return ALLOW;
    };
    let (finding, names) = classify(ctx, dest, port_be, &applied);
    let mut flags = flags | finding.flags | watch_tls(ctx, hook);
    let verdict = match finding.action {
        Action::Allow => Verdict::Allowed,
        Action::Block if may_block() && applied.policy.enforce != 0 => {
            if released_as_stale() {
                flags |= FLAG_STALE;
                Verdict::Flagged
            } else {
                Verdict::Blocked
            }
        }
        Action::Flag | Action::Block | Action::Judge => Verdict::Flagged,
    };
    report(
        ctx, hook, family, &daddr, port_be, flags, verdict, &finding, &names, &applied, &probe,
    );
    if matches!(verdict, Verdict::Blocked) {
        DENY
    } else {
        ALLOW
    }
}

/// Whether a block is released because no daemon has refreshed the tables
/// for longer than the configured bound (`kernel.when_stale = "monitor"`).
/// Read only on the way to a block, so allowed calls never pay for it.
#[inline(always)]
fn released_as_stale() -> bool {
    let Some(state) = DAEMON.get(0) else {
        return false;
    };
    if state.when_stale != WHEN_STALE_MONITOR || state.stale_after_ns == 0 {
        return false;
    }
    // SAFETY: a helper call without pointer arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    now.saturating_sub(state.heartbeat_boot_ns) > state.stale_after_ns
}

/// The caller's policy: by cgroup (the nearest listed cgroup, walking up
/// from the caller's own), then by uid, then by process name, else the
/// default (index 0).
#[inline(always)]
fn applied_policy() -> Option<Applied<'static>> {
    let active = POLICY_ACTIVE.get(0)?;
    let (generation, epoch) = (active.generation, active.epoch);
    let slot = generation & 1;
    let policies = POLICIES.get(slot)?;
    // SAFETY: a helper call without pointer arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let index = match cgroup_policy(slot, generation, epoch, cgroup_id) {
        NO_CGROUP_POLICY => {
            let selectors = policies.get(0).map_or(0, |p| p.selectors);
            process_policy(slot, selectors).unwrap_or(0)
        }
        i => i,
    };
    let policy = policies.get(index).or_else(|| policies.get(0))?;
    Some(Applied {
        policy,
        index,
        generation,
        cgroup_id,
    })
}

/// The policy of the caller's cgroup: its own entry or its nearest listed
/// ancestor's, remembered per cgroup for this generation and epoch.
#[inline(always)]
fn cgroup_policy(slot: u32, generation: u32, epoch: u32, own: u64) -> u32 {
    // SAFETY: the map is read only through helpers.
    if let Some(c) = unsafe { POLICY_CACHE.get(own) }
        && c.generation == generation
        && c.epoch == epoch
    {
        return c.index;
    }
    let index = walk(slot, own).unwrap_or(NO_CGROUP_POLICY);
    let entry = CachedPolicy {
        index,
        generation,
        epoch,
        _pad: 0,
    };
    // A full cache evicts the least recently used entry; a failed insert
    // only means the walk is done again next time.
    let _ = POLICY_CACHE.insert(own, entry, 0);
    index
}

/// The caller's own cgroup first (the common case: a workload's processes
/// sit in its cgroup), then its ancestors, deepest first.
#[inline(always)]
fn walk(slot: u32, own: u64) -> Option<u32> {
    let by_cgroup = CGROUP_POLICY.get(slot)?;
    // SAFETY: the inner map is read only through helpers.
    if let Some(&i) = unsafe { by_cgroup.get(own) } {
        return Some(i);
    }
    let mut level = MAX_CGROUP_DEPTH;
    while level > 0 {
        #[expect(clippy::cast_possible_wrap, reason = "levels are small")]
        // SAFETY: a helper call without pointer arguments.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id != 0 && id != own {
            // SAFETY: as above.
            if let Some(&i) = unsafe { by_cgroup.get(id) } {
                return Some(i);
            }
        }
        level -= 1;
    }
    None
}

/// By uid, then by process name: these depend on the process, so they are
/// not remembered per cgroup. The uid comes first because a process cannot
/// change it at will, while any process can rename itself.
#[inline(always)]
fn process_policy(slot: u32, selectors: u8) -> Option<u32> {
    if selectors & SELECTS_BY_UID != 0
        && let Some(by_uid) = UID_POLICY.get(slot)
    {
        #[expect(clippy::cast_possible_truncation, reason = "the uid is the low half")]
        let uid = bpf_get_current_uid_gid() as u32;
        // SAFETY: the inner map is read only through helpers.
        if let Some(&i) = unsafe { by_uid.get(uid) } {
            return Some(i);
        }
    }
    if selectors & SELECTS_BY_COMM != 0
        && let (Some(by_comm), Ok(comm)) = (COMM_POLICY.get(slot), bpf_get_current_comm())
    {
        // SAFETY: as above.
        if let Some(&i) = unsafe { by_comm.get(comm) } {
            return Some(i);
        }
    }
    None
}

/// DNS over TLS first (a resolver bypass); then deny rules, by address and
/// by name; then the policy's exceptions, by name and by address; then
/// internal networks and local ranges; then the endpoint catalog, by the
/// name this workload resolved; then the `GeoIP` tables.
#[inline(always)]
fn classify(
    ctx: &SockAddrContext,
    dest: &Dest,
    port_be: u32,
    applied: &Applied<'_>,
) -> (Finding, NameFacts) {
    let slot = applied.generation & 1;
    #[expect(clippy::cast_possible_truncation, reason = "at most MAX_POLICIES")]
    let index = (applied.index as u16).to_be_bytes();
    let has = applied.policy.exceptions;
    let (rule, exception) = match dest {
        Dest::V4(a) => (
            DEST_RULES_V4
                .get(slot)
                .and_then(|m| m.get(&BtfKey::new(32, *a)).copied()),
            EXCEPTIONS_V4
                .get(slot)
                .filter(|_| has & HAS_EXCEPTIONS_V4 != 0)
                .and_then(|m| {
                    let key = [index[0], index[1], a[0], a[1], a[2], a[3], 0, 0];
                    m.get(&BtfKey::new(48, key)).copied()
                }),
        ),
        Dest::V6(a) => (
            DEST_RULES_V6
                .get(slot)
                .and_then(|m| m.get(&BtfKey::new(128, *a)).copied()),
            EXCEPTIONS_V6
                .get(slot)
                .filter(|_| has & HAS_EXCEPTIONS_V6 != 0)
                .and_then(|m| {
                    let mut key = [0u8; 20];
                    key[0] = index[0];
                    key[1] = index[1];
                    let mut i = 0;
                    while i < 16 {
                        key[i + 2] = a[i];
                        i += 1;
                    }
                    m.get(&BtfKey::new(144, key)).copied()
                }),
        ),
    };
    let policy = applied.policy;
    let mut names = core::mem::MaybeUninit::<names::Names>::uninit();
    // SAFETY: `lookup_names` writes every byte of it.
    let names = unsafe {
        lookup_names(names.as_mut_ptr(), dest, applied);
        names.assume_init_ref()
    };
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the port sits in the low 16 bits"
    )]
    let port = u16::from_be(port_be as u16);
    if port == 853 {
        return (
            special(DestKind::ResolverBypass, policy.bypass_action, 0),
            facts(names),
        );
    }
    if let Some(rule) = rule
        && rule.kind == DestKind::Denied as u8
    {
        return (
            from_rule(ctx, &rule, DestKind::Denied, policy),
            facts(names),
        );
    }
    // Rules that name hosts: a deny for any live name wins; an exception
    // holds only when it covers every live name.
    let mut excepted = DestRule {
        rule_id: 0,
        action: 0,
        kind: 0,
        country: 0,
    };
    let mut all_excepted = names.state == NAME_FOUND && has & HAS_NAME_RULES != 0;
    let mut i = 0;
    while i < 2 && has & HAS_NAME_RULES != 0 {
        if names.live[i] {
            match names::name_rule(slot, applied.index, names.pattern[i]) {
                Some(r) if r.kind == DestKind::Denied as u8 => {
                    let mut f = from_rule(ctx, &r, DestKind::Denied, policy);
                    f.flags = FLAG_BY_NAME;
                    return (f, facts_for(names, i));
                }
                Some(r) => excepted = r,
                None => all_excepted = false,
            }
        }
        i += 1;
    }
    if all_excepted && excepted.rule_id != 0 {
        let mut f = allowed_by(&excepted);
        f.flags = FLAG_BY_NAME;
        return (f, facts(names));
    }
    if let Some(exc) = exception {
        return (allowed_by(&exc), facts(names));
    }
    if let Some(rule) = rule {
        if rule.kind == DestKind::ResolverBypass as u8 {
            if port == 443 {
                return (
                    special(DestKind::ResolverBypass, policy.bypass_action, rule.rule_id),
                    facts(names),
                );
            }
        } else {
            let kind = kind_of(rule.kind);
            return (from_rule(ctx, &rule, kind, policy), facts(names));
        }
    }
    by_name_or_geo(dest, slot, policy, names)
}

/// The catalog's judgement of the live names, or `GeoIP`'s. (No `Option`s
/// of structs here: LLVM may copy the undefined payload of a `None`, and
/// the verifier refuses a read of an uninitialised register.)
#[inline(always)]
fn by_name_or_geo(
    dest: &Dest,
    slot: u32,
    policy: &Policy,
    names: &names::Names,
) -> (Finding, NameFacts) {
    let mut geo = Geo {
        country: 0,
        generation: 0,
        known: false,
    };
    if names.live[0] && names.live[1] {
        let a = judge_name(dest, policy, slot, names.pattern[0], &mut geo);
        let b = judge_name(dest, policy, slot, names.pattern[1], &mut geo);
        if a.action != b.action {
            // Two names for one address, judged differently: which one the
            // process meant cannot be known here.
            let mut f = special(DestKind::Ambiguous, policy.ambiguous_action, 0);
            f.country = geo.country;
            f.geo_gen = geo.generation;
            return (f, facts(names));
        }
        return (b, facts_for(names, 1));
    }
    if names.live[1] {
        let f = judge_name(dest, policy, slot, names.pattern[1], &mut geo);
        return (f, facts_for(names, 1));
    }
    if names.live[0] {
        let f = judge_name(dest, policy, slot, names.pattern[0], &mut geo);
        return (f, facts_for(names, 0));
    }
    let f = judge_name(dest, policy, slot, 0, &mut geo);
    (f, facts(names))
}

/// The `GeoIP` answer for a destination, looked up at most once.
struct Geo {
    country: u16,
    generation: u32,
    known: bool,
}

/// One name's judgement: by its catalog entry, or by `GeoIP` when the
/// catalog has none (or no name is known: pattern 0).
#[inline(always)]
fn judge_name(dest: &Dest, policy: &Policy, slot: u32, pattern: u32, geo: &mut Geo) -> Finding {
    if let Some(c) = names::class_of(slot, pattern) {
        if c.kind == CLASS_CATALOG {
            return Finding {
                kind: DestKind::Catalog,
                action: judge_set(policy, &c.jurisdiction),
                rule_id: 0,
                country: 0,
                geo_gen: 0,
                flags: 0,
            };
        }
        if c.kind == CLASS_UNKNOWN {
            return Finding {
                kind: DestKind::Catalog,
                action: judge(policy, 0),
                rule_id: 0,
                country: 0,
                geo_gen: 0,
                flags: 0,
            };
        }
        if c.kind == CLASS_RESOLVER {
            return special(DestKind::ResolverBypass, policy.bypass_action, 0);
        }
    }
    if !geo.known {
        let (country, generation) = match dest {
            Dest::V4(a) => geo_v4(u32::from_be_bytes(*a)),
            Dest::V6(a) => geo_v6(a),
        };
        *geo = Geo {
            country,
            generation,
            known: true,
        };
    }
    Finding {
        kind: if geo.country == 0 {
            DestKind::Unknown
        } else {
            DestKind::Geo
        },
        action: judge(policy, geo.country),
        rule_id: 0,
        country: geo.country,
        geo_gen: geo.generation,
        flags: 0,
    }
}

/// A jurisdiction (a set of countries) against a policy: allowed only when
/// every country in it is.
#[inline(always)]
fn judge_set(policy: &Policy, set: &[u64; residency_common::COUNTRY_WORDS]) -> Action {
    let outside = (set[0] & !policy.allowed[0])
        | (set[1] & !policy.allowed[1])
        | (set[2] & !policy.allowed[2])
        | (set[3] & !policy.allowed[3]);
    if outside == 0 {
        Action::Allow
    } else {
        Action::Block
    }
}

/// A finding for a policy-wide choice (ambiguous names, resolver bypass).
#[inline(always)]
fn special(kind: DestKind, choice: u8, rule_id: u32) -> Finding {
    Finding {
        kind,
        action: match choice {
            a if a == Action::Allow as u8 => Action::Allow,
            a if a == Action::Block as u8 => Action::Block,
            _ => Action::Flag,
        },
        rule_id,
        country: 0,
        geo_gen: 0,
        flags: 0,
    }
}

#[inline(always)]
fn allowed_by(exc: &DestRule) -> Finding {
    Finding {
        kind: DestKind::Exception,
        action: Action::Allow,
        rule_id: exc.rule_id,
        country: exc.country,
        geo_gen: 0,
        flags: 0,
    }
}

#[inline(always)]
fn lookup_names(out: *mut names::Names, dest: &Dest, applied: &Applied<'_>) {
    if !names::names_enabled() {
        // SAFETY: `out` is the caller's, valid for writes.
        unsafe { names::Names::none(out, NAME_OFF) };
        return;
    }
    // SAFETY: a helper call without pointer arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let word = |a: &[u8; 16], i: usize| {
        u64::from_ne_bytes([
            a[i],
            a[i + 1],
            a[i + 2],
            a[i + 3],
            a[i + 4],
            a[i + 5],
            a[i + 6],
            a[i + 7],
        ])
    };
    match dest {
        // The address in the first 4 of 16 bytes, the rest zero.
        // SAFETY (both): `out` is the caller's, valid for writes.
        Dest::V4(a) => unsafe {
            names::names_for(
                out,
                applied.cgroup_id,
                [u64::from(u32::from_ne_bytes(*a)), 0],
                AF_INET,
                now,
            );
        },
        Dest::V6(a) => unsafe {
            names::names_for(
                out,
                applied.cgroup_id,
                [word(a, 0), word(a, 8)],
                AF_INET6,
                now,
            );
        },
    }
}

/// The names for the record, the one in slot `judged` first.
#[inline(always)]
fn facts_for(names: &names::Names, judged: usize) -> NameFacts {
    let other = 1 - (judged & 1);
    NameFacts {
        state: names.state,
        stamp: if judged == 0 {
            names.stamp[0]
        } else {
            names.stamp[1]
        },
        stamp2: if names.live[other] {
            names.stamp[other]
        } else {
            0
        },
        pattern: if judged == 0 {
            names.pattern[0]
        } else {
            names.pattern[1]
        },
    }
}

/// The names for the record, the newest live one first.
#[inline(always)]
fn facts(names: &names::Names) -> NameFacts {
    if names.live[1] {
        facts_for(names, 1)
    } else {
        facts_for(names, 0)
    }
}

/// Marks a TCP connect whose `ClientHello` the egress program will report
/// (the daemon keeps the flow for it). No map is written here.
#[inline(always)]
fn watch_tls(ctx: &SockAddrContext, hook: Hook) -> u8 {
    if names::sni_enabled()
        && matches!(hook, Hook::Connect4 | Hook::Connect6)
        && protocol(ctx.sock_addr) == IPPROTO_TCP
    {
        FLAG_TLS_WATCHED
    } else {
        0
    }
}

#[inline(always)]
fn from_rule(ctx: &SockAddrContext, rule: &DestRule, kind: DestKind, policy: &Policy) -> Finding {
    let action = match action_of(ctx, rule) {
        Action::Judge => judge(policy, rule.country),
        a => a,
    };
    Finding {
        kind,
        action,
        rule_id: rule.rule_id,
        country: rule.country,
        geo_gen: 0,
        flags: 0,
    }
}

/// A country against a policy: allowed, a violation, or unknown.
#[inline(always)]
fn judge(policy: &Policy, country: u16) -> Action {
    if country == 0 {
        return match policy.unknown_action {
            a if a == Action::Allow as u8 => Action::Allow,
            a if a == Action::Block as u8 => Action::Block,
            _ => Action::Flag,
        };
    }
    // Constant offsets: an index computed at run time would be bounded in
    // the source but, after LLVM drops the "redundant" mask, not provably so
    // to the verifier.
    let word = match country >> 6 {
        0 => policy.allowed[0],
        1 => policy.allowed[1],
        2 => policy.allowed[2],
        3 => policy.allowed[3],
        _ => return Action::Block,
    };
    const _: () = assert!(residency_common::COUNTRY_WORDS == 4);
    let bit = 1u64 << (country & 63);
    if word & bit != 0 {
        Action::Allow
    } else {
        Action::Block
    }
}

#[inline(always)]
fn kind_of(k: u8) -> DestKind {
    match k {
        k if k == DestKind::Local as u8 => DestKind::Local,
        k if k == DestKind::Internal as u8 => DestKind::Internal,
        k if k == DestKind::Exception as u8 => DestKind::Exception,
        _ => DestKind::Denied,
    }
}

#[inline(always)]
fn action_of(ctx: &SockAddrContext, rule: &DestRule) -> Action {
    match rule.action {
        a if a == Action::Allow as u8 => Action::Allow,
        a if a == Action::Flag as u8 => Action::Flag,
        a if a == Action::Block as u8 => Action::Block,
        a if a == Action::Judge as u8 => Action::Judge,
        other => {
            // Only a daemon bug can put this here; say so, and fail to a
            // flag so that the event still reaches the evidence.
            warn!(ctx, "rule {} has unknown action {}", rule.rule_id, other);
            Action::Flag
        }
    }
}

/// The generation of tables in force, or 0.
#[inline(always)]
pub(crate) fn active_generation() -> u32 {
    GEO_ACTIVE.get(0).map_or(0, |a| a.generation)
}

/// Country index of an IPv4 address (host byte order) and the generation
/// of the tables that gave it.
#[inline(always)]
fn geo_v4(ip: u32) -> (u16, u32) {
    // Two tries: a generation retired between reading GEO_ACTIVE and
    // fetching its tables sends us back for the new one.
    let mut attempt = 0;
    while attempt < 2 {
        attempt += 1;
        let generation = active_generation();
        if generation == 0 {
            return (0, 0);
        }
        // SAFETY: the inner maps are only read through BPF helpers.
        let tables = unsafe {
            (
                GEO4_L1.get(&generation),
                GEO4_L2.get(&generation),
                GEO4_L3.get(&generation),
            )
        };
        let (Some(l1), Some(l2), Some(l3)) = tables else {
            continue;
        };
        let Some(&e1) = l1.get(ip >> 16) else {
            return (0, generation);
        };
        if e1 & GEO4_L1_UNIFORM != 0 {
            return ((e1 & 0xffff) as u16, generation);
        }
        if e1 == 0 {
            return (0, generation);
        }
        let Some(block) = l2.get(e1 - 1) else {
            return (0, generation);
        };
        let e2 = block[((ip >> 8) & 0xff) as usize];
        if e2 < GEO4_L2_SPLIT {
            return (e2, generation);
        }
        let Some(block) = l3.get(u32::from(e2 - GEO4_L2_SPLIT)) else {
            return (0, generation);
        };
        return (u16::from(block[(ip & 0xff) as usize]), generation);
    }
    (0, 0)
}

/// Country index of an IPv6 address and the generation that gave it.
#[inline(always)]
fn geo_v6(addr: &[u8; 16]) -> (u16, u32) {
    let mut attempt = 0;
    while attempt < 2 {
        attempt += 1;
        let generation = active_generation();
        if generation == 0 {
            return (0, 0);
        }
        // SAFETY: the inner map is only read through BPF helpers.
        let Some(trie) = (unsafe { GEO6.get(&generation) }) else {
            continue;
        };
        let key = BtfKey::new(128, *addr);
        return (trie.get(&key).copied().unwrap_or(0), generation);
    }
    (0, 0)
}

#[inline(always)]
fn may_block() -> bool {
    // SAFETY: a plain read of a static; volatile so that the compiler keeps
    // the load for the loader-provided value instead of folding the default.
    unsafe { core::ptr::read_volatile(&raw const MAY_BLOCK) != 0 }
}

#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "one record, from the pieces of one decision"
)]
fn report(
    ctx: &SockAddrContext,
    hook: Hook,
    family: u8,
    daddr: &[u8; 16],
    port_be: u32,
    flags: u8,
    verdict: Verdict,
    finding: &Finding,
    names: &NameFacts,
    applied: &Applied<'_>,
    probe: &flows::Probe,
) {
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count(Stat::Dropped);
        return;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: a helper call without pointer arguments.
    let boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    let cgroup_id = applied.cgroup_id;
    let e = entry.as_mut_ptr();
    // Written field by field into the entry: a record built whole (on the
    // stack, or in place) has its arrays and padding cleared by calls of
    // a byte-at-a-time `memset` (see `mem`). Every byte is written.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the helpers pack two u32 values into one u64, and the port sits in the low 16 bits"
    )]
    // SAFETY: `e` is the entry just reserved, valid until it is submitted
    // or discarded; the comm helper writes its 16 bytes.
    unsafe {
        (*e).header = EventHeader {
            kind: EventKind::Connect as u32,
            size: size_of::<ConnectEvent>() as u32,
        };
        (*e).boot_ns = boot_ns;
        (*e).cgroup_id = cgroup_id;
        (*e).tgid = (pid_tgid >> 32) as u32;
        (*e).tid = pid_tgid as u32;
        (*e).uid = uid_gid as u32;
        (*e).gid = (uid_gid >> 32) as u32;
        (*e).rule_id = finding.rule_id;
        (*e).geo_gen = finding.geo_gen;
        (*e).dport = u16::from_be(port_be as u16);
        (*e).country = finding.country;
        (*e).family = family;
        (*e).protocol = protocol(ctx.sock_addr);
        (*e).hook = hook as u8;
        (*e).verdict = verdict as u8;
        (*e).flags = flags;
        (*e).dest_kind = finding.kind as u8;
        #[expect(clippy::cast_possible_truncation, reason = "at most MAX_POLICIES")]
        let policy = applied.index as u16;
        (*e).policy = policy;
        (*e).daddr = *daddr;
        // Zeroed by the helper if it fails.
        bpf_get_current_comm_raw((&raw mut (*e).comm).cast(), 16);
        (*e).policy_gen = applied.generation;
        (*e).cookie = bpf_get_socket_cookie(ctx.sock_addr.cast());
        (*e).name_stamp = names.stamp;
        (*e).name_stamp2 = names.stamp2;
        (*e).name_pattern = names.pattern;
        // `name_state` and its padding, then `flow` and its padding.
        core::ptr::write_volatile(
            (&raw mut (*e).name_state).cast::<u32>(),
            u32::from(names.state),
        );
        core::ptr::write_volatile((&raw mut (*e).flow).cast::<u64>(), 0);
    }
    // The flow the call belongs to is worked out from the record as
    // written, not from the values that made it: past this point nothing
    // of the decision is live in registers, so the verifier sees every
    // path of the decision as one state here.
    match flows::begin(ctx, hook, probe, e) {
        flows::Begun::Same => {
            entry.discard(u64::from(BPF_RB_NO_WAKEUP));
            return;
        }
        flows::Begun::New(kept) => {
            // SAFETY: `e` is the entry written above.
            unsafe { (*e).flow = kept.n };
            flows::keep(&kept, e);
        }
        flows::Begun::Untracked => {}
    }
    let wakeup = if EVENTS.query(u64::from(BPF_RB_AVAIL_DATA)) >= wakeup_bytes() {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(wakeup));
    count(Stat::Submitted);
}

#[inline(always)]
pub(crate) fn wakeup_bytes() -> u64 {
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
pub(crate) fn count(stat: Stat) {
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
