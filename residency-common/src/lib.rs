//! Types and names that the kernel programs (`residency-ebpf`) and the daemon
//! (`residency-daemon`) must agree on, byte for byte.
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of implicit padding: every
//! gap is an explicit `_pad` field and every size is checked at compile time,
//! so that the kernel's view and the daemon's view cannot drift apart silently.
//! Flags are `u8`, never `bool`, because a `bool` with any bit pattern other
//! than 0 or 1 is undefined behaviour on the Rust side.
#![no_std]
#![expect(
    clippy::pub_underscore_fields,
    reason = "explicit padding fields: public so both sides can write them as zero"
)]

/// Names of the maps and programs in the kernel object. The daemon looks them
/// up by these names; a typo is a compile error rather than a load failure.
pub mod names {
    /// Ring buffer of [`crate::ConnectEvent`] records.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU counters, indexed by [`crate::Stat`].
    pub const STATS: &str = "STATS";
    /// Single-entry array: the [`crate::PolicyActive`] generation of the
    /// policy maps below. Each of those is an array of two maps (slots),
    /// and generation `g` lives in slot `g & 1`: the daemon fills the idle
    /// slot, then switches this entry.
    pub const POLICY_ACTIVE: &str = "POLICY_ACTIVE";
    /// LRU hash: cgroup id -> [`crate::CachedPolicy`], the result of the
    /// walk up the cgroup tree, so that it is done once per cgroup.
    pub const POLICY_CACHE: &str = "POLICY_CACHE";
    /// Two slots -> array of [`crate::Policy`]; index 0 is
    /// the default policy, for workloads nothing describes.
    pub const POLICIES: &str = "POLICIES";
    /// Two slots -> hash of cgroup id -> policy index. A
    /// cgroup without an entry takes its nearest listed ancestor's policy.
    pub const CGROUP_POLICY: &str = "CGROUP_POLICY";
    /// Two slots -> hash of process name (`comm`) -> policy index.
    pub const COMM_POLICY: &str = "COMM_POLICY";
    /// Two slots -> hash of uid -> policy index.
    pub const UID_POLICY: &str = "UID_POLICY";
    /// Two slots -> LPM trie of IPv4 destination rules: key
    /// [`crate::Ipv4Key`], value [`crate::DestRule`].
    pub const DEST_RULES_V4: &str = "DEST_RULES_V4";
    /// Two slots -> LPM trie of IPv6 destination rules.
    pub const DEST_RULES_V6: &str = "DEST_RULES_V6";
    /// Two slots -> LPM trie of IPv4 exceptions per policy:
    /// key [`crate::ExceptionV4Key`], value [`crate::DestRule`].
    pub const EXCEPTIONS_V4: &str = "EXCEPTIONS_V4";
    /// Two slots -> LPM trie of IPv6 exceptions per policy.
    pub const EXCEPTIONS_V6: &str = "EXCEPTIONS_V6";
    /// Single-entry array: [`crate::DaemonState`], what the daemon that
    /// reads the ring last said (kept with the pins, for the next one).
    /// The programs read only its staleness bound.
    pub const DAEMON: &str = "DAEMON";
    /// The maps pinned with the programs and kept by the next daemon: the
    /// ring (its unread decisions), the counters, the daemon's state, and
    /// what the kernel has learnt (DNS names, `ClientHello`s in progress).
    /// The policy and `GeoIP` maps are not among them: each daemon fills
    /// its own and swaps them in with its programs.
    /// The socket storage of [`crate::FlowState`] is among them: a socket
    /// keeps its flow's totals and decision across a daemon restart.
    pub const PINNED_MAPS: [&str; 7] =
        [EVENTS, STATS, DAEMON, DNS_NAMES, TLS_PENDING, FLOWS, DGRAMS];
    /// Single-entry array: the [`crate::GeoActive`] generation of the tables.
    pub const GEO_ACTIVE: &str = "GEO_ACTIVE";
    /// Hash of maps, generation -> IPv4 level-1 array (`u32` x 65,536).
    pub const GEO4_L1: &str = "GEO4_L1";
    /// Hash of maps, generation -> IPv4 level-2 array (`[u16; 256]` per split /16).
    pub const GEO4_L2: &str = "GEO4_L2";
    /// Hash of maps, generation -> IPv4 level-3 array (`[u8; 256]` per split /24).
    pub const GEO4_L3: &str = "GEO4_L3";
    /// Hash of maps, generation -> IPv6 LPM trie (country index per prefix).
    pub const GEO6: &str = "GEO6";

    /// Load-time global (`.rodata`): 1 if the programs may ever return a
    /// deny. When it is 0 the verifier sees the deny path as dead code, so a
    /// monitor-mode program cannot block anything, whatever the maps say.
    pub const MAY_BLOCK: &str = "MAY_BLOCK";
    /// Load-time global (`.rodata`): once this many bytes wait in the ring
    /// buffer, the kernel wakes the daemon; below it, events are submitted
    /// without a wakeup and the daemon's timer collects them.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";

    /// The four cgroup `sock_addr` programs, in the order the daemon attaches them.
    pub const PROGRAMS: [&str; 4] = [CONNECT4, CONNECT6, SENDMSG4, SENDMSG6];
    pub const CONNECT4: &str = "residency_connect4";
    pub const CONNECT6: &str = "residency_connect6";
    pub const SENDMSG4: &str = "residency_sendmsg4";
    pub const SENDMSG6: &str = "residency_sendmsg6";

    /// Load-time globals (`.rodata`): the cgroup whose processes are
    /// tracked (its id, and its level below the cgroup2 root). The process
    /// tracepoints fire for the whole host and keep only these.
    pub const TRACK_CGROUP_ID: &str = "TRACK_CGROUP_ID";
    pub const TRACK_CGROUP_LEVEL: &str = "TRACK_CGROUP_LEVEL";
    /// LRU hash: thread id -> [`crate::ExecArgs`], the arguments of an
    /// `execve` in flight, until the kernel says whether it succeeded.
    pub const EXEC_PENDING: &str = "EXEC_PENDING";

    /// The process tracepoints: `(program, category, tracepoint)`.
    pub const PROCESS_PROGRAMS: [(&str, &str, &str); 5] = [
        (EXECVE, "syscalls", "sys_enter_execve"),
        (EXECVEAT, "syscalls", "sys_enter_execveat"),
        (EXEC, "sched", "sched_process_exec"),
        (FORK, "sched", "sched_process_fork"),
        (EXIT, "sched", "sched_process_exit"),
    ];
    pub const EXECVE: &str = "residency_execve";
    pub const EXECVEAT: &str = "residency_execveat";
    pub const EXEC: &str = "residency_exec";
    pub const FORK: &str = "residency_fork";
    pub const EXIT: &str = "residency_exit";

    /// LRU hash: [`crate::NameKey`] (workload cgroup, address) ->
    /// [`crate::NameEntry`], filled from the DNS answers the workload's
    /// sockets receive, before the answer reaches the process.
    pub const DNS_NAMES: &str = "DNS_NAMES";
    /// Two slots -> hash of [`crate::PatternKey`] (a name suffix in DNS
    /// wire format) -> pattern id.
    pub const NAME_PATTERNS: &str = "NAME_PATTERNS";
    /// Two slots -> hash of pattern id -> [`crate::NameClass`]: what the
    /// catalog says of the names that pattern covers.
    pub const NAME_CLASSES: &str = "NAME_CLASSES";
    /// Two slots -> hash of [`crate::NameRuleKey`] (policy, pattern id) ->
    /// [`crate::DestRule`]: deny rules and exceptions that name hosts.
    pub const NAME_RULES: &str = "NAME_RULES";
    /// Per-CPU scratch for building a [`crate::PatternKey`].
    pub const NAME_SCRATCH: &str = "NAME_SCRATCH";
    /// LRU hash: socket cookie -> [`crate::TlsPending`], TCP connections
    /// whose TLS `ClientHello` continues past the segment that began it.
    pub const TLS_PENDING: &str = "TLS_PENDING";
    /// Load-time global (`.rodata`): 1 if names are tracked at all.
    pub const NAMES_ENABLED: &str = "NAMES_ENABLED";
    /// Load-time global (`.rodata`): 1 if TLS server names are captured.
    pub const SNI_ENABLED: &str = "SNI_ENABLED";
    /// Load-time global (`.rodata`): the least time, in ns, a name is kept
    /// for an address (applications cache answers beyond their TTL).
    pub const NAME_MIN_TTL_NS: &str = "NAME_MIN_TTL_NS";
    /// Load-time global (`.rodata`): the most time, in ns, a name is kept.
    pub const NAME_MAX_TTL_NS: &str = "NAME_MAX_TTL_NS";
    /// The `cgroup_skb` programs, one per direction: each runs the parts
    /// switched on at load time (names: DNS answers in, TLS
    /// `ClientHello`s out; flows: every packet's bytes).
    pub const SKB_INGRESS: &str = "residency_ingress";
    pub const SKB_EGRESS: &str = "residency_egress";

    /// Hash: socket cookie -> [`crate::FlowState`], the flow a connected
    /// socket carries (its decision and its totals, and its count of
    /// flows); entries allocated as used, removed at the socket's release.
    pub const FLOWS: &str = "FLOWS";
    /// Socket storage: socket -> [`crate::DgramFlows`], the flows of an
    /// unconnected UDP socket, one per destination it sends to.
    pub const DGRAMS: &str = "DGRAMS";
    /// Load-time global (`.rodata`): 1 if flows are followed (totals
    /// counted, repeats decided from socket storage, ends reported).
    pub const FLOWS_ENABLED: &str = "FLOWS_ENABLED";
    /// Load-time global (`.rodata`): a flow that keeps moving bytes is
    /// reported at least this often, in ns.
    pub const FLOW_REPORT_NS: &str = "FLOW_REPORT_NS";
    /// The socket's end (`cgroup/sock_release`), when flows are followed
    /// (their bytes are counted by [`SKB_EGRESS`] and [`SKB_INGRESS`]).
    pub const SOCK_RELEASE: &str = "residency_release";
    /// A TCP connection's end (`sock_ops`: its state reaching
    /// `TCP_CLOSE`), when flows are followed.
    pub const TCP_STATE: &str = "residency_tcp";
}

/// Bytes of an `execve`'s arguments the kernel keeps (NUL-separated). Each
/// argument starts within the first half, so at least half is always used.
pub const EXEC_ARGS_BYTES: usize = 1024;
/// Most bytes read of one argument (half of [`EXEC_ARGS_BYTES`]).
pub const EXEC_ARG_CHUNK: usize = EXEC_ARGS_BYTES / 2;
/// Most arguments read.
pub const EXEC_MAX_ARGS: u32 = 32;
/// Bytes of the executed file's name the kernel keeps.
pub const EXEC_FILENAME_BYTES: usize = 256;
/// Entries in `EXEC_PENDING` (execs in flight at once).
pub const EXEC_PENDING_ENTRIES: u32 = 1024;
/// [`ExecEvent::flags`]: the arguments were longer than the kernel keeps.
pub const EXEC_ARGS_TRUNCATED: u32 = 1;

/// Capacity of each destination-rule trie (deny rules, internal networks,
/// local ranges).
pub const MAX_DEST_RULES: u32 = 65_536;
/// Entries in the policy array.
pub const MAX_POLICIES: u32 = 4096;
/// Entries in the cgroup -> policy map.
pub const MAX_CGROUP_POLICIES: u32 = 65_536;
/// Entries in the process-name and uid -> policy maps.
pub const MAX_PROCESS_POLICIES: u32 = 4096;
/// Entries in each exception trie.
pub const MAX_EXCEPTIONS: u32 = 65_536;
/// How many cgroup levels the programs walk up to find a listed ancestor.
pub const MAX_CGROUP_DEPTH: u32 = 16;
/// Cgroups whose walk result the kernel remembers.
pub const POLICY_CACHE_ENTRIES: u32 = 65_536;
/// [`CachedPolicy::index`] when no listed cgroup was found on the walk.
pub const NO_CGROUP_POLICY: u32 = u32::MAX;
/// Generations of `GeoIP` tables the kernel can hold at once: the active one,
/// the next one being loaded, and room for a swap that overlaps another.
pub const GEO_GENERATIONS: u32 = 4;
/// Capacity of an IPv6 country trie (about 600,000 prefixes in the largest
/// free database today).
pub const GEO6_MAX_PREFIXES: u32 = 4_000_000;
/// Entries in the IPv4 level-1 array: one per /16.
pub const GEO4_L1_ENTRIES: u32 = 1 << 16;
/// Level-1 flag: the low 16 bits are the country index of the whole /16.
/// Otherwise a non-zero value `n` names level-2 block `n - 1`, and 0 means
/// no country.
pub const GEO4_L1_UNIFORM: u32 = 1 << 31;
/// Level-2 values from here up name a level-3 block: `value - GEO4_L2_SPLIT`.
/// Below it they are a country index.
pub const GEO4_L2_SPLIT: u16 = 0x100;
/// `BPF_F_INNER_MAP`: inner maps of different sizes may share an outer map.
/// The level-2 and level-3 arrays are sized per database.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;
/// `BPF_F_NO_PREALLOC`: tries allocate per entry.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Stable numbers of the record kinds in the ring buffer. Numbers are never
/// reused: a retired kind keeps its number.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A [`ConnectEvent`] from a connect or sendmsg hook.
    Connect = 1,
    /// An [`ExecEvent`]: a tracked process ran a new program.
    Exec = 2,
    /// A [`ProcessEvent`]: a tracked process made a process or thread.
    Fork = 3,
    /// A [`ProcessEvent`]: a tracked process or thread ended.
    Exit = 4,
    /// A [`DnsEvent`]: a DNS answer a watched socket received.
    Dns = 5,
    /// A [`TlsEvent`]: the first bytes a watched TCP connection sent.
    Tls = 6,
    /// A [`FlowEvent`]: a flow's totals, while it moves bytes and at its end.
    Flow = 7,
}

/// Which kernel hook produced an event.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Connect4 = 1,
    Connect6 = 2,
    Sendmsg4 = 3,
    Sendmsg6 = 4,
}

impl Hook {
    #[must_use]
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Connect4),
            2 => Some(Self::Connect6),
            3 => Some(Self::Sendmsg4),
            4 => Some(Self::Sendmsg6),
            _ => None,
        }
    }
}

/// What the kernel did with a connect or sendmsg. 0 is never written, so a
/// zeroed record cannot pass for a decision.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing objected.
    Allowed = 1,
    /// Something objected but enforcement is off: the call went through and
    /// is reported as a violation.
    Flagged = 2,
    /// Something objected and enforcement is on: the call failed with EPERM.
    Blocked = 3,
}

impl Verdict {
    #[must_use]
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Allowed),
            2 => Some(Self::Flagged),
            3 => Some(Self::Blocked),
            _ => None,
        }
    }
}

/// What a rule (or a policy, for unknown destinations) asks for.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow = 1,
    /// Report as a violation, never block, even when enforcing.
    Flag = 2,
    /// Block when the policy enforces, flag when it monitors.
    Block = 3,
    /// Judge by the rule's country against the policy's allowed set.
    Judge = 4,
}

impl Action {
    #[must_use]
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Allow),
            2 => Some(Self::Flag),
            3 => Some(Self::Block),
            4 => Some(Self::Judge),
            _ => None,
        }
    }
}

/// What decided about a destination.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestKind {
    /// The `GeoIP` tables gave a country, judged against the policy.
    Geo = 1,
    /// The `GeoIP` tables have no country for it: the policy's choice for
    /// unknown destinations applied.
    Unknown = 2,
    /// A deny rule.
    Denied = 3,
    /// A loopback, private or link-local range.
    Local = 4,
    /// A network the configuration declares internal, in a jurisdiction.
    Internal = 5,
    /// An exception for the workload's policy (a transfer basis such as
    /// SCC), which allowed a destination the policy would not.
    Exception = 6,
    /// The endpoint catalog: the name the process resolved has an entry,
    /// judged by the provider's processing jurisdiction instead of `GeoIP`.
    Catalog = 7,
    /// The workload resolved this address from names that would be judged
    /// differently: the policy's choice for ambiguous names applied.
    Ambiguous = 8,
    /// DNS over TLS (port 853) or a known DNS-over-HTTPS resolver: names
    /// resolved there are invisible, a residency risk in itself.
    ResolverBypass = 9,
}

impl DestKind {
    #[must_use]
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Geo),
            2 => Some(Self::Unknown),
            3 => Some(Self::Denied),
            4 => Some(Self::Local),
            5 => Some(Self::Internal),
            6 => Some(Self::Exception),
            7 => Some(Self::Catalog),
            8 => Some(Self::Ambiguous),
            9 => Some(Self::ResolverBypass),
            _ => None,
        }
    }
}

/// Indexes into the per-CPU `STATS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Events written to the ring buffer.
    Submitted = 0,
    /// Events that could not be reserved because the ring buffer was full.
    /// Each is a decision that was made (and enforced) but not reported.
    Dropped = 1,
    /// Process records ([`ExecEvent`], [`ProcessEvent`]) that found the ring
    /// buffer full: the daemon falls back to `/proc` for those processes.
    ProcessDropped = 2,
    /// DNS answers and TLS bytes ([`DnsEvent`], [`TlsEvent`]) that found
    /// the ring buffer full. The kernel's names still judged; only the
    /// daemon's copy (for the records) is missing.
    NamesDropped = 3,
    /// Flow totals ([`FlowEvent`]) that found the ring buffer full. An
    /// update that is lost is carried by the next one (totals add up); a
    /// lost end loses the flow's last bytes, and the daemon reports it as
    /// a gap. Also a flow that could not be followed at all (more than
    /// [`FLOW_CAPACITY`] connected sockets at once): its decision is
    /// reported, its totals never are.
    FlowsDropped = 4,
}

/// Number of entries in the `STATS` array.
pub const STAT_COUNT: u32 = 5;

/// Address families as the kernel numbers them.
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
/// IP protocol numbers.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `ConnectEvent::flags` bit: the program saw an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) and judged it as the IPv4 address it stands for.
/// Only connect6 sees such addresses: for UDP sends to a mapped address the
/// kernel itself rewrites the destination and runs sendmsg4.
pub const FLAG_V4_MAPPED: u8 = 1;
/// `ConnectEvent::flags` bit: a rule that names hosts decided (a deny rule
/// or an exception with `names`), not one that names addresses.
pub const FLAG_BY_NAME: u8 = 2;
/// `ConnectEvent::flags` bit: a TCP connect whose `ClientHello`, if it
/// sends one, the egress program reports.
pub const FLAG_TLS_WATCHED: u8 = 4;

/// Start of every record in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventHeader {
    /// An [`EventKind`] number.
    pub kind: u32,
    /// Size of the whole record in bytes, header included.
    pub size: u32,
}

/// One `connect()` or `sendmsg()` decision, as the kernel saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectEvent {
    pub header: EventHeader,
    /// `bpf_ktime_get_boot_ns()`: `CLOCK_BOOTTIME`, which keeps counting
    /// through suspend, so the daemon can map it to wall-clock time.
    pub boot_ns: u64,
    /// cgroup v2 id (the inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// Process id as userspace knows it (the kernel's tgid).
    pub tgid: u32,
    /// Thread id (the kernel's pid).
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Id of the destination rule that decided; 0 when the `GeoIP` tables did.
    pub rule_id: u32,
    /// Generation of the `GeoIP` tables consulted; 0 when none were.
    pub geo_gen: u32,
    /// Destination port, host byte order.
    pub dport: u16,
    /// Country index that decided (from the `GeoIP` tables or an internal
    /// network's jurisdiction); 0 for none.
    pub country: u16,
    /// [`AF_INET`] or [`AF_INET6`]; an IPv4-mapped IPv6 destination is
    /// reported as [`AF_INET`] with [`FLAG_V4_MAPPED`] set.
    pub family: u8,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`] (0 if the socket is neither).
    pub protocol: u8,
    /// A [`Hook`] number.
    pub hook: u8,
    /// A [`Verdict`] number.
    pub verdict: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// A [`DestKind`] number.
    pub dest_kind: u8,
    /// Index of the policy applied (0: the default policy).
    pub policy: u16,
    /// Destination address in network byte order. IPv4 uses the first four
    /// bytes and leaves the rest zero.
    pub daddr: [u8; 16],
    /// `comm` of the calling thread, NUL-padded.
    pub comm: [u8; 16],
    /// Generation of the policy maps that decided (0: none loaded).
    pub policy_gen: u32,
    /// The socket cookie, which links later [`TlsEvent`]s to this call.
    pub cookie: u64,
    /// Stamps ([`DnsEvent::boot_ns`]) of the DNS answers that named the
    /// destination for this workload: the one that judged, and another one
    /// still live for the same address (0: none).
    pub name_stamp: u64,
    pub name_stamp2: u64,
    /// Pattern id of the most specific catalog or rule pattern the judged
    /// name matched (0: none).
    pub name_pattern: u32,
    /// A `NAME_*` state: whether a name was known for the destination.
    pub name_state: u8,
    pub _pad: [u8; 3],
    /// The flow's number on its socket (1, 2, ... as the socket's
    /// destination or verdict changes); with the cookie it names the flow
    /// that later [`FlowEvent`]s total. 0: no totals follow (flows are not
    /// followed, or a blocked `connect()`).
    pub flow: u32,
    pub _pad2: u32,
}

/// [`ConnectEvent::name_state`]: names are not tracked.
pub const NAME_OFF: u8 = 0;
/// No DNS answer this workload received named the address.
pub const NAME_NONE: u8 = 1;
/// A live answer named it.
pub const NAME_FOUND: u8 = 2;
/// Answers named it, but longer ago than their TTL (and the floor).
pub const NAME_EXPIRED: u8 = 3;

/// Destination rule stored in the `DEST_RULES` tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestRule {
    /// Reported in events so that every verdict names the rule behind it.
    pub rule_id: u32,
    /// An [`Action`] number.
    pub action: u8,
    /// A [`DestKind`] number.
    pub kind: u8,
    /// Country index for [`Action::Judge`] (an internal network's
    /// jurisdiction); 0 otherwise.
    pub country: u16,
}

/// Words in a country bitmap: bit `i` is country index `i` (1-based; bit 0
/// is never set).
pub const COUNTRY_WORDS: usize = 4;

/// A residency policy as the kernel applies it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Policy {
    /// Countries data may go to.
    pub allowed: [u64; COUNTRY_WORDS],
    /// [`Action`] for destinations without a country.
    pub unknown_action: u8,
    /// 1: violations are blocked (only if `MAY_BLOCK` was set at load
    /// time). 0: they are flagged.
    pub enforce: u8,
    /// [`HAS_EXCEPTIONS_V4`] and [`HAS_EXCEPTIONS_V6`]: whether the
    /// exception tries hold entries for this policy at all, so that the
    /// programs skip a trie walk for the (many) policies without any.
    pub exceptions: u8,
    /// On the default policy (index 0) only: [`SELECTS_BY_COMM`] and
    /// [`SELECTS_BY_UID`], whether the generation has process-name or uid
    /// selectors at all, so that the programs skip those lookups when it
    /// has none. Kept in the generation's own maps, published with them.
    pub selectors: u8,
    /// [`Action`] for an address this workload resolved from names that
    /// would be judged differently (0 counts as flag).
    pub ambiguous_action: u8,
    /// [`Action`] for a DNS resolver bypass (`DoT`, known `DoH` resolvers).
    pub bypass_action: u8,
    pub _pad: [u8; 2],
}

/// [`Policy::exceptions`]: IPv4 exceptions exist for the policy.
pub const HAS_EXCEPTIONS_V4: u8 = 1;
/// [`Policy::exceptions`]: IPv6 exceptions exist for the policy.
pub const HAS_EXCEPTIONS_V6: u8 = 2;
/// [`Policy::exceptions`]: deny rules or exceptions that name hosts apply
/// to the policy (`NAME_RULES` holds entries for it).
pub const HAS_NAME_RULES: u8 = 4;

/// What the daemon reading the ring last wrote, in the pinned `DAEMON`
/// map: the next daemon starts from it, and the programs read the
/// staleness bound.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DaemonState {
    /// [`PIN_ABI`] of the build that wrote it.
    pub abi: u32,
    /// 1 once the daemon stopped cleanly (after its last read).
    pub clean_stop: u32,
    /// When it last wrote: Unix time and boot time, in ns.
    pub heartbeat_unix_ns: u64,
    pub heartbeat_boot_ns: u64,
    /// Decisions read from the ring, over all daemons since the pins were
    /// made (so it compares with the kernel's `Submitted` counter).
    pub consumed: u64,
    /// The kernel's `Dropped` counter as far as the chain accounts for it.
    pub lost_reported: u64,
    /// The kernel's `FlowsDropped` counter as far as the chain accounts
    /// for it (`flow-totals-lost` records), so that flows the kernel could
    /// not follow while no daemon ran are recorded by the next one.
    pub flows_lost_reported: u64,
    /// The cgroup the programs are attached to.
    pub cgroup_id: u64,
    /// The last policy and `GeoIP` generations it installed (the next
    /// daemon numbers on from them, so records read late keep theirs).
    pub policy_generation: u32,
    pub geo_generation: u32,
    /// Once no daemon has written for this long (ns; 0: never) the
    /// tables count as stale, and with [`WHEN_STALE_MONITOR`] the programs
    /// stop blocking and only report.
    pub stale_after_ns: u64,
    pub when_stale: u32,
    pub pid: u32,
}

/// [`DaemonState::when_stale`]: keep enforcing the last policy.
pub const WHEN_STALE_ENFORCE: u32 = 0;
/// [`DaemonState::when_stale`]: stop blocking, keep reporting.
pub const WHEN_STALE_MONITOR: u32 = 1;

/// The layout of what pinned maps hold, as this build reads and writes
/// it. A daemon adopts pins only of the same ABI; bump the first term when
/// a layout changes without changing its size.
pub const PIN_ABI: u32 = {
    let sizes = [
        size_of::<ConnectEvent>(),
        size_of::<DaemonState>(),
        size_of::<NameKey>(),
        size_of::<NameEntry>(),
        size_of::<TlsPending>(),
        size_of::<FlowState>(),
        size_of::<DgramFlows>(),
        STAT_COUNT as usize,
    ];
    // 2: `FLOWS` became a hash by socket cookie (same value size).
    // 3: `FlowState::ends` (was padding).
    let mut h: u32 = 3;
    let mut i = 0;
    while i < sizes.len() {
        #[expect(clippy::cast_possible_truncation, reason = "a hash: sizes are small")]
        let size = sizes[i] as u32;
        h = h.wrapping_mul(31).wrapping_add(size);
        i += 1;
    }
    h
};

/// `ConnectEvent::flags` bit: the programs would have blocked, but no
/// daemon had refreshed the tables for longer than the staleness bound
/// (`kernel.stale_after`, with `kernel.when_stale = "monitor"`).
pub const FLAG_STALE: u8 = 8;

/// Which generation of the policy maps is in force (0: none loaded).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyActive {
    pub generation: u32,
    /// Bumped when cgroups are added to or removed from the generation in
    /// force: cached walk results from before no longer hold. Never reset,
    /// so that a switch of generation changes only `generation`.
    pub epoch: u32,
}

/// [`Policy::selectors`] of the default policy: some workload of the
/// generation is selected by process name.
pub const SELECTS_BY_COMM: u8 = 1;
/// [`Policy::selectors`] of the default policy: some workload of the
/// generation is selected by uid.
pub const SELECTS_BY_UID: u8 = 2;

/// A remembered walk result for one cgroup, valid for one generation and
/// epoch of the policy maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CachedPolicy {
    /// Policy index, or [`NO_CGROUP_POLICY`].
    pub index: u32,
    pub generation: u32,
    pub epoch: u32,
    pub _pad: u32,
}

/// LPM key data of an exception: the policy index (big-endian, so that it
/// forms the first 16 bits of the prefix), then the IPv4 address, then two
/// bytes no prefix reaches (the kernel wants key sizes that keep the value
/// aligned).
pub type ExceptionV4Key = [u8; 8];
/// The same for IPv6: policy index, address, two unused bytes.
pub type ExceptionV6Key = [u8; 20];

/// Which generation of the `GeoIP` tables is in force (0: none loaded).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GeoActive {
    pub generation: u32,
    pub _pad: u32,
}

/// LPM trie key data for IPv4 (network byte order). The prefix length is
/// carried by the map's own key wrapper.
pub type Ipv4Key = [u8; 4];
/// LPM trie key data for IPv6 (network byte order).
pub type Ipv6Key = [u8; 16];

/// Bytes of a name suffix a [`PatternKey`] holds in DNS wire format (label
/// lengths and labels, then the root's 0). Longer patterns are refused by
/// the configuration.
pub const PATTERN_BYTES: usize = 128;
/// [`PatternKey::wildcard`]: the key is the suffix of a `*.` pattern.
pub const PATTERN_WILDCARD: u8 = 1;
/// Labels of a question name the DNS program walks (a name has at most 127).
pub const DNS_MAX_LABELS: u32 = 128;
/// Resource records of an answer the DNS program reads.
pub const DNS_MAX_RECORDS: u32 = 64;
/// Bytes of a DNS message copied to the daemon.
pub const DNS_EVENT_BYTES: usize = 4096;
/// Bytes of a TCP segment copied to the daemon for its `ClientHello`.
pub const TLS_EVENT_BYTES: usize = 2048;
/// Most bytes of a `ClientHello` followed across segments.
pub const TLS_MAX_HELLO: u32 = 16 * 1024;
/// Capacity of the pattern and class maps.
pub const MAX_NAME_PATTERNS: u32 = 65_536;
/// Capacity of the name-rule map.
pub const MAX_NAME_RULES: u32 = 65_536;
/// Connections waiting for their `ClientHello` at once.
pub const TLS_PENDING_ENTRIES: u32 = 65_536;

/// A name suffix as the DNS program looks it up: lower-case DNS wire
/// format, zero-padded. `len` counts the bytes used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatternKey {
    pub len: u8,
    /// [`PATTERN_WILDCARD`] for `*.` patterns, 0 for exact names.
    pub wildcard: u8,
    /// Keeps `bytes` 8-byte aligned, so the programs can work on it a word
    /// at a time.
    pub _pad: [u8; 6],
    pub bytes: [u8; PATTERN_BYTES],
}

/// What a pattern's names are judged by.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameClass {
    /// The catalog's processing jurisdiction as a country bitmap (as
    /// [`Policy::allowed`]); all zero unless `kind` is [`CLASS_CATALOG`].
    pub jurisdiction: [u64; COUNTRY_WORDS],
    /// A `CLASS_*` kind.
    pub kind: u8,
    pub _pad: [u8; 3],
    /// Pattern id of the catalog entry that gave `kind` (0: none).
    pub endpoint: u32,
}

/// The pattern names no catalog entry: only rules use it; `GeoIP` judges.
pub const CLASS_NONE: u8 = 0;
/// A catalog entry with a known jurisdiction.
pub const CLASS_CATALOG: u8 = 1;
/// A catalog entry whose name does not fix the region, with no
/// per-deployment setting: judged as an unknown destination.
pub const CLASS_UNKNOWN: u8 = 2;
/// A DNS-over-HTTPS resolver.
pub const CLASS_RESOLVER: u8 = 3;

/// Key of [`names::DNS_NAMES`]: the cgroup of the socket that received the
/// answer, and an address it gave.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameKey {
    pub cgroup_id: u64,
    /// Network byte order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u32,
    pub _pad: u32,
}

/// Up to two names for one address of one workload: the first, and the
/// latest that matched another pattern (so that an address two names share
/// can be seen as ambiguous).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameEntry {
    /// [`DnsEvent::boot_ns`] of each answer (0: slot unused).
    pub stamp: [u64; 2],
    /// `CLOCK_BOOTTIME` ns after which each slot no longer names the address.
    pub expires: [u64; 2],
    /// Pattern id each answer's question matched (0: none).
    pub pattern: [u32; 2],
}

/// Key of [`names::NAME_RULES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameRuleKey {
    pub policy: u32,
    pub pattern: u32,
}

/// A connection whose `ClientHello` the egress program still follows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsPending {
    /// Payload bytes seen so far.
    pub seen: u32,
    /// Bytes of the TLS record(s) to follow (0: not known yet).
    pub total: u32,
}

/// A DNS answer received by a socket of the watched cgroup. In the ring
/// the record ends after `copied` bytes of `msg`: its header's size is
/// `offset_of!(DnsEvent, msg) + copied`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    pub header: EventHeader,
    /// The answer's stamp, also written into [`NameEntry::stamp`].
    pub boot_ns: u64,
    /// The receiving socket's cgroup.
    pub cgroup_id: u64,
    /// Pattern id the question matched (0: none).
    pub pattern: u32,
    /// Bytes of the DNS message (without a TCP length prefix).
    pub msg_len: u32,
    /// Of those, bytes copied into `msg`.
    pub copied: u32,
    /// Addresses the kernel put in [`names::DNS_NAMES`].
    pub mapped: u16,
    /// [`IPPROTO_UDP`] or [`IPPROTO_TCP`].
    pub protocol: u8,
    pub _pad: u8,
    pub msg: [u8; DNS_EVENT_BYTES],
}

/// Payload bytes of a watched TCP connection, for its `ClientHello`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsEvent {
    pub header: EventHeader,
    pub boot_ns: u64,
    pub cookie: u64,
    pub cgroup_id: u64,
    /// Offset of these bytes in the connection's stream.
    pub offset: u32,
    /// Bytes copied into `data`.
    pub len: u32,
    pub data: [u8; TLS_EVENT_BYTES],
}

/// What moved on a flow, as counted in the kernel. Bytes are IP packet
/// lengths as the cgroup `skb` hooks see them (headers included).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowTotals {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    /// Calls the flow's decision covered: 1 for a `connect()`, and every
    /// datagram sent (or refused) to the destination for a `sendmsg()`.
    pub calls: u64,
}

/// The flow a socket carries now (`FLOWS`, by socket cookie): the decision
/// as it was reported, what has moved since, and what was last reported.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    /// The decision, exactly as the [`ConnectEvent`] that began the flow.
    pub decision: ConnectEvent,
    pub totals: FlowTotals,
    /// The totals as of the last report that reached the ring.
    pub reported: FlowTotals,
    /// When that report was made (or the decision), on
    /// `CLOCK_MONOTONIC_COARSE`: a timer of the kernel's own, never in a
    /// record.
    pub reported_ns: u64,
    /// When a repeat was last decided in full (`sendmsg()` repeats are
    /// decided again at least every [`FLOW_REDECIDE_NS`]); in a datagram
    /// slot, also when it was last used. `CLOCK_MONOTONIC_COARSE`, as
    /// `reported_ns`.
    pub decided_ns: u64,
    /// `CLOCK_BOOTTIME` when a TCP flow was first seen established (an
    /// egress segment in state `ESTABLISHED`); 0: not (yet).
    pub established_ns: u64,
    /// Flows begun on this connected socket so far (the next one is
    /// numbered one more; unused in a datagram slot).
    pub count: u32,
    /// [`FLOW_ENDS_ON_CLOSE`] once the TCP program follows the
    /// connection's state (from its establishment): its flow ends when
    /// the connection does, not at the socket's release.
    pub ends: u32,
}

/// [`FlowState::ends`]: the flow ends when its TCP connection reaches
/// `TCP_CLOSE` (after what the stack still sends once the application
/// has closed the socket: queued data, the FIN).
pub const FLOW_ENDS_ON_CLOSE: u32 = 1;

/// Destinations an unconnected UDP socket's flows are kept for at once:
/// a socket that sends to more at a time ends (reports) the flow it used
/// least recently to begin another.
pub const DGRAM_SLOTS: usize = 16;

/// The flows of an unconnected UDP socket (`DGRAMS` socket storage).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DgramFlows {
    /// One per destination (`decision.flow` 0: free).
    pub slots: [FlowState; DGRAM_SLOTS],
    /// The slot used last (looked at first); while a `sendmsg()` is
    /// decided, the slot its flow goes in.
    pub hint: u32,
    /// While a `sendmsg()` is decided: 1 if `hint`'s slot holds its
    /// destination's flow already.
    pub matched: u32,
    /// Datagram flows begun on this socket so far (a socket that also
    /// carries a connected flow numbers both from the larger count).
    pub count: u32,
    pub _pad: u32,
}

/// Connected sockets whose flows the kernel follows at once, by default
/// (`FLOWS`' size, `kernel.max_flows`; entries allocated as used). A
/// `connect()` beyond it is decided and reported as ever; only its totals
/// are not followed (counted as `Stat::FlowsDropped`).
pub const FLOW_CAPACITY: u32 = 65_536;

/// A repeat `sendmsg()` to a flow's destination is decided from its
/// socket storage for at most this long, then in full again: names learnt
/// since, a staleness release, or a policy the same generation cannot
/// express take effect within it.
pub const FLOW_REDECIDE_NS: u64 = 1_000_000_000;

/// [`FlowEvent::stage`]: the flow still moves bytes (periodic report).
pub const FLOW_UPDATE: u8 = 1;
/// [`FlowEvent::stage`]: the socket was released (closed).
pub const FLOW_END: u8 = 2;
/// [`FlowEvent::stage`]: the socket turned to another destination,
/// verdict or policy; its next flow begins with a new decision.
pub const FLOW_SUPERSEDED: u8 = 3;

/// A flow's totals: periodically while it moves bytes, and at its end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    pub header: EventHeader,
    /// `CLOCK_BOOTTIME` of this report.
    pub boot_ns: u64,
    /// The flow's decision (its `boot_ns` is the flow's start; `cookie`
    /// and `flow` name it).
    pub decision: ConnectEvent,
    /// Totals since the flow began.
    pub totals: FlowTotals,
    /// Totals as of the previous report that reached the ring (zero for
    /// the first).
    pub previous: FlowTotals,
    /// See [`FlowState::established_ns`].
    pub established_ns: u64,
    /// `FLOW_UPDATE`, `FLOW_END` or `FLOW_SUPERSEDED`.
    pub stage: u8,
    /// The socket's TCP state (`TCP_ESTABLISHED` 1 ... `TCP_CLOSE` 7) at
    /// the report; 0 for other sockets.
    pub tcp_state: u8,
    pub _pad: [u8; 6],
}

// Layout checks: a change here is a change of the kernel ABI between the two
// halves and must be deliberate.
const _: () = assert!(core::mem::size_of::<EventHeader>() == 8);
/// A tracked process ran a new program (`sched_process_exec`), with the
/// arguments it was given. Records share the ring with decisions, in the
/// order they happened: a process's exec comes before its calls, and its
/// exit after them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub header: EventHeader,
    pub boot_ns: u64,
    /// The process id (after the exec, always the thread-group leader's).
    pub tgid: u32,
    /// [`EXEC_ARGS_TRUNCATED`].
    pub flags: u32,
    /// Bytes used in `args`.
    pub args_len: u32,
    pub _pad: u32,
    /// The file as the caller named it (NUL-terminated).
    pub filename: [u8; EXEC_FILENAME_BYTES],
    /// The arguments, `argv[0]` first, each NUL-terminated.
    pub args: [u8; EXEC_ARGS_BYTES],
}

/// The arguments of an exec in flight (the `EXEC_PENDING` map's value).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecArgs {
    pub args_len: u32,
    pub flags: u32,
    pub args: [u8; EXEC_ARGS_BYTES],
}

/// A tracked process made a process or thread (`Fork`: `parent` -> `pid`),
/// or a thread ended (`Exit`: `pid` is the thread, `parent` its process, and
/// [`EXIT_GROUP_DEAD`] says the whole process has ended).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessEvent {
    pub header: EventHeader,
    pub parent: u32,
    pub pid: u32,
    pub flags: u32,
    pub _pad: u32,
}

/// [`ProcessEvent::flags`] of an `Exit`: the last thread of the process.
pub const EXIT_GROUP_DEAD: u32 = 1;

const _: () = assert!(core::mem::size_of::<ConnectEvent>() == 136);
// The kernel writes `name_state` with its padding as one u32, and `flow`
// with `_pad2` as one u64.
const _: () = assert!(core::mem::offset_of!(ConnectEvent, name_state).is_multiple_of(4));
const _: () = assert!(core::mem::offset_of!(ConnectEvent, flow).is_multiple_of(8));
const _: () = assert!(core::mem::offset_of!(ConnectEvent, flow) == 128);
const _: () = assert!(core::mem::size_of::<FlowTotals>() == 40);
const _: () = assert!(core::mem::size_of::<FlowState>() == 136 + 80 + 32);
const _: () = assert!(core::mem::size_of::<DgramFlows>() == DGRAM_SLOTS * 248 + 16);
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 16 + 136 + 80 + 16);
// The kernel writes `stage`, `tcp_state` and the padding as one word.
const _: () = assert!(core::mem::offset_of!(FlowEvent, stage).is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<PatternKey>() == 8 + PATTERN_BYTES);
const _: () = assert!(core::mem::size_of::<NameClass>() == 40);
const _: () = assert!(core::mem::size_of::<NameKey>() == 32);
// The kernel writes `NameKey::addr` as two words.
const _: () = assert!(core::mem::offset_of!(NameKey, addr).is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<NameEntry>() == 40);
const _: () = assert!(core::mem::size_of::<NameRuleKey>() == 8);
const _: () = assert!(core::mem::size_of::<TlsPending>() == 8);
const _: () = assert!(core::mem::size_of::<DnsEvent>() == 40 + DNS_EVENT_BYTES);
const _: () = assert!(core::mem::size_of::<TlsEvent>() == 40 + TLS_EVENT_BYTES);
const _: () =
    assert!(core::mem::size_of::<ExecEvent>() == 32 + EXEC_FILENAME_BYTES + EXEC_ARGS_BYTES);
const _: () = assert!(core::mem::size_of::<ExecArgs>() == 8 + EXEC_ARGS_BYTES);
const _: () = assert!(core::mem::size_of::<ProcessEvent>() == 24);
const _: () = assert!(core::mem::offset_of!(ConnectEvent, boot_ns) == 8);
const _: () = assert!(core::mem::offset_of!(ConnectEvent, rule_id) == 40);
const _: () = assert!(core::mem::offset_of!(ConnectEvent, dport) == 48);
const _: () = assert!(core::mem::offset_of!(ConnectEvent, family) == 52);
const _: () = assert!(core::mem::offset_of!(ConnectEvent, daddr) == 60);
const _: () = assert!(core::mem::offset_of!(ConnectEvent, comm) == 76);
const _: () = assert!(core::mem::size_of::<DestRule>() == 8);
const _: () = assert!(core::mem::size_of::<Policy>() == 40);
const _: () = assert!(core::mem::size_of::<GeoActive>() == 8);
const _: () = assert!(core::mem::size_of::<PolicyActive>() == 8);
const _: () = assert!(core::mem::size_of::<CachedPolicy>() == 16);
const _: () = assert!(core::mem::offset_of!(ConnectEvent, policy_gen) == 92);

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is #[repr(C)], Copy, made only of integers and byte
    // arrays, and has no implicit padding (checked by the asserts above), so
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::ConnectEvent {}
    unsafe impl aya::Pod for super::DestRule {}
    unsafe impl aya::Pod for super::Policy {}
    unsafe impl aya::Pod for super::GeoActive {}
    unsafe impl aya::Pod for super::PolicyActive {}
    unsafe impl aya::Pod for super::DaemonState {}
    unsafe impl aya::Pod for super::CachedPolicy {}
    unsafe impl aya::Pod for super::ExecArgs {}
    unsafe impl aya::Pod for super::PatternKey {}
    unsafe impl aya::Pod for super::NameClass {}
    unsafe impl aya::Pod for super::NameKey {}
    unsafe impl aya::Pod for super::NameEntry {}
    unsafe impl aya::Pod for super::NameRuleKey {}
    unsafe impl aya::Pod for super::TlsPending {}
}
