//! The record model: what the pipeline hands on, in order, for every
//! decision and every event of the daemon's own life.
//!
//! A [`Record`] is built in the daemon (the enrich stage makes [`Flow`]s
//! from kernel records; other stages make [`Note`]s) and encoded once, by
//! [`crate::encode`], into the canonical bytes that the output, the
//! evidence chain, the API and the SIEM sinks all carry.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use geoip::{CountryCode, DbVersion};
use residency_common::{DestKind, Hook, Verdict};

use crate::{action::Lifecycle, policy::PolicyView};

/// What the pipeline hands to its outputs, in order.
#[derive(Debug, Clone)]
pub enum Record {
    /// The programs are attached; records after this one are decisions.
    Started(Box<StartInfo>),
    Flow(Flow),
    /// The kernel made decisions it could not report (ring buffer full).
    /// Losses are never silent: each one becomes a record.
    Lost {
        count: u64,
        total: u64,
    },
    /// A ring-buffer record this build could not read.
    Undecodable {
        reason: String,
    },
    /// Something happened to the daemon or its evidence (a `GeoIP`
    /// database loaded, a policy refused, a gap in the chain).
    Note(Box<Note>),
    /// The programs are detached and every decision they made is accounted
    /// for above: reported, lost or undecodable.
    Stopped(StopInfo),
}

impl Record {
    /// A lifecycle note.
    #[must_use]
    pub fn note(action: Lifecycle, message: String, fields: serde_json::Value) -> Self {
        Record::Note(Box::new(Note {
            action,
            message,
            fields,
            pod: None,
        }))
    }

    /// The record, naming `pod` as the pod it is about (flows and notes;
    /// other records name no pod and are returned as they are).
    #[must_use]
    pub fn with_pod(mut self, pod: Option<Arc<PodInfo>>) -> Self {
        match &mut self {
            Record::Flow(f) => f.pod = pod,
            Record::Note(n) => n.pod = pod,
            _ => {}
        }
        self
    }
}

/// A lifecycle note: `event.action` is `action`, `event.kind` follows
/// from it ([`Lifecycle::event_kind`]).
#[derive(Debug, Clone)]
pub struct Note {
    pub action: Lifecycle,
    pub message: String,
    /// Goes under `residency.*`.
    pub fields: serde_json::Value,
    /// The pod of the flow the note is about (a `tls-server-name` record),
    /// written as a flow writes it (`container.*`, `orchestrator.*`).
    pub pod: Option<Arc<PodInfo>>,
}

/// Facts about a run, for the `started` record.
#[derive(Debug, Clone)]
pub struct StartInfo {
    /// The daemon's version.
    pub version: &'static str,
    pub cgroup_path: String,
    pub cgroup_id: u64,
    pub mode: &'static str,
    pub may_block: bool,
    pub kernel_release: String,
    pub ring_buffer_kib: u32,
    pub deny_rules: usize,
    pub config_source: String,
    /// The `GeoIP` database in force, if any.
    pub geoip: Option<String>,
    pub geoip_generation: u32,
    /// The countries the policy allows, as written.
    pub allowed: Vec<String>,
    /// The conditions on the bases of the countries the policy allows,
    /// one per country: `CA: commercial organisations subject to PIPEDA
    /// only (Decision 2002/2/EC)` (`geoip::sets::Condition`'s display).
    pub conditions: Vec<String>,
    /// Name tracking: `off`, `dns` (DNS answers), or `dns+tls` (and TLS
    /// server names).
    pub names: &'static str,
    /// Entries in the endpoint catalog in force.
    pub catalog_entries: usize,
    /// With `[kubernetes]`: the container runtime socket asked for pods.
    pub cri_socket: Option<String>,
}

/// Totals for the `stopped` record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StopInfo {
    /// Decisions the kernel wrote to the ring buffer.
    pub kernel_submitted: u64,
    /// Decisions the kernel could not write (ring buffer full).
    pub kernel_dropped: u64,
    /// Records the daemon read from the ring buffer.
    pub received: u64,
    /// Of those, records it could not decode.
    pub undecodable: u64,
    /// Process records (exec, fork, exit) the kernel could not write: those
    /// processes were named from `/proc` instead, where they still ran.
    pub process_dropped: u64,
    /// Whether the programs stayed attached, deciding with the policy in
    /// force, after the daemon stopped (`kernel.persist`).
    pub enforcement_kept: bool,
}

/// Transport protocol of the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
    Other,
}

impl Transport {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Other => "unknown",
        }
    }
}

/// The executable and command line of the process that made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The resolved path of its executable (`/proc/PID/exe`).
    pub executable: Option<String>,
    /// Its arguments, `argv[0]` first (the daemon keeps at most a page of
    /// them).
    pub args: Vec<String>,
    /// Whether the command line was cut short.
    pub args_truncated: bool,
}

impl ProcessInfo {
    /// The arguments joined by spaces (ECS `process.command_line`).
    #[must_use]
    pub fn command_line(&self) -> String {
        self.args.join(" ")
    }
}

/// What the full `GeoIP` database says about a destination.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GeoDetail {
    pub country: Option<CountryCode>,
    pub registered_country: Option<CountryCode>,
    pub continent: Option<String>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
}

/// One outbound connection attempt or datagram, decided and explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub time: jiff::Timestamp,
    /// The kernel's `CLOCK_BOOTTIME` stamp, kept for ordering and latency.
    pub boot_ns: u64,
    pub cgroup_id: u64,
    /// The cgroup's path under the cgroup2 mount, if it was still there.
    pub cgroup_path: Option<Arc<str>>,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The thread's `comm`. Not necessarily UTF-8 in the kernel; invalid
    /// bytes are replaced.
    pub process_name: String,
    /// Executable and command line, if the process still ran when the
    /// record was enriched.
    pub process: Option<Arc<ProcessInfo>>,
    pub hook: Hook,
    pub transport: Transport,
    pub dest_ip: IpAddr,
    pub dest_port: u16,
    /// The program saw `::ffff:a.b.c.d` and judged it as `a.b.c.d`.
    pub v4_mapped: bool,
    /// The programs would have blocked, but no daemon had refreshed their
    /// tables for longer than `kernel.stale_after_secs`, and
    /// `kernel.when_stale` is "monitor": flagged instead.
    pub stale: bool,
    pub verdict: Verdict,
    pub rule_id: u32,
    /// What decided: `GeoIP`, a rule, a local range.
    pub dest_kind: DestKind,
    /// The country the kernel judged (`GeoIP` or an internal network's
    /// jurisdiction).
    pub country: Option<CountryCode>,
    /// Generation of the kernel's `GeoIP` tables that was consulted (0: none).
    pub geo_gen: u32,
    /// Version of the database behind that generation.
    pub geo_version: Option<Arc<DbVersion>>,
    /// What the full database says about the destination.
    pub detail: Option<Arc<GeoDetail>>,
    /// Index of the policy applied (0: the default policy).
    pub policy: u16,
    /// Generation of the policy maps that decided.
    pub policy_gen: u32,
    /// The policy of that generation, for names, modes and the hash
    /// (`None` when it is no longer held: better no explanation than
    /// another policy's).
    pub policy_view: Option<Decider>,
    /// The host name behind the destination, as far as it can be known
    /// (`None` when name tracking is off).
    pub name: Option<Box<DestName>>,
    /// The socket cookie: links a connection's later TLS record to it.
    pub cookie: u64,
    /// The Kubernetes pod (and container) the flow came from; `None` on a
    /// host that runs no pods, or when the cgroup is not a pod's.
    pub pod: Option<Arc<PodInfo>>,
    /// The flow's id, `<boot>-<cookie>-<n>` (the first 8 hex digits of
    /// the kernel's boot id, the socket cookie, the flow's number on the
    /// socket), when the kernel follows the flow: its totals records
    /// carry the same id.
    pub flow_id: Option<Arc<str>>,
    /// In a totals record (`flow-update`, `flow-end`): what moved. The
    /// rest of the record is the flow's decision, as it began.
    pub totals: Option<Box<FlowReport>>,
}

/// Where a flow is when its totals are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowStage {
    /// Still moving bytes (a periodic report).
    Update,
    /// The socket was closed.
    Closed,
    /// The socket turned to another destination, verdict or policy: its
    /// next flow has its own decision record.
    Superseded,
}

impl FlowStage {
    /// `residency.flow.stage`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FlowStage::Update => "update",
            FlowStage::Closed => "closed",
            FlowStage::Superseded => "superseded",
        }
    }

    /// Whether the flow is over.
    #[must_use]
    pub fn ended(self) -> bool {
        !matches!(self, FlowStage::Update)
    }
}

/// Counts of what moved on a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowCounts {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    /// Calls the decision covered (1 for a `connect()`; each datagram sent
    /// or refused for `sendmsg()`).
    pub calls: u64,
}

impl FlowCounts {
    /// What moved since `earlier` (never negative: counters only grow).
    #[must_use]
    pub fn since(&self, earlier: &FlowCounts) -> FlowCounts {
        FlowCounts {
            bytes_out: self.bytes_out.saturating_sub(earlier.bytes_out),
            bytes_in: self.bytes_in.saturating_sub(earlier.bytes_in),
            packets_out: self.packets_out.saturating_sub(earlier.packets_out),
            packets_in: self.packets_in.saturating_sub(earlier.packets_in),
            calls: self.calls.saturating_sub(earlier.calls),
        }
    }
}

/// A flow's totals as one report gives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowReport {
    pub stage: FlowStage,
    /// When the flow began (its decision).
    pub start: jiff::Timestamp,
    /// For TCP: how long after the decision the connection was
    /// established; `None` if it was not (yet).
    pub established_after_ns: Option<u64>,
    /// The socket's TCP state at the report (`established`, `close`...).
    pub tcp_state: Option<&'static str>,
    /// Since the flow began.
    pub totals: FlowCounts,
    /// Since the flow's previous totals record (what the day's transfer
    /// summary adds).
    pub delta: FlowCounts,
}

/// The name of a TCP state number (`include/net/tcp_states.h`).
#[must_use]
pub fn tcp_state_str(state: u8) -> Option<&'static str> {
    Some(match state {
        1 => "established",
        2 => "syn-sent",
        3 => "syn-recv",
        4 => "fin-wait1",
        5 => "fin-wait2",
        6 => "time-wait",
        7 => "close",
        8 => "close-wait",
        9 => "last-ack",
        10 => "listen",
        11 => "closing",
        12 => "new-syn-recv",
        _ => return None,
    })
}

/// The Kubernetes pod, and container, a flow came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// The pod's UID (`metadata.uid`).
    pub uid: String,
    /// The pod's labels, in key order (so that the record's bytes are
    /// canonical).
    pub labels: BTreeMap<String, String>,
    /// The container of the pod the process runs in, when known.
    pub container: Option<ContainerInfo>,
}

/// A container of a pod, as the container runtime names it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    /// The runtime's container id (64 hex digits).
    pub id: String,
    /// The container's name in the pod spec.
    pub name: String,
    /// The image reference it runs (`registry/repo:tag` or `@sha256:...`).
    pub image: String,
}

/// How a destination's name is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    /// A DNS answer this workload received for the address.
    Dns,
    /// The server name of the connection's TLS `ClientHello`.
    Sni,
    /// Not known; [`DestName::reason`] says why.
    None,
}

impl NameSource {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            NameSource::Dns => "dns",
            NameSource::Sni => "sni",
            NameSource::None => "none",
        }
    }
}

/// The host name behind a destination, and what the endpoint catalog says
/// of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestName {
    /// The name the process asked for (the DNS question), lower-case,
    /// without a trailing dot.
    pub name: Option<String>,
    pub source: NameSource,
    /// The CNAME chain from the name to the address's owner, in order.
    pub cnames: Vec<String>,
    /// Other names this workload resolved to the same address, still live.
    pub also: Vec<String>,
    /// The catalog entry of the name (whether or not it decided).
    pub endpoint: Option<Arc<EndpointInfo>>,
    /// Why the name is not known, when it is not.
    pub reason: Option<&'static str>,
    /// The TLS server name (`ClientHello` SNI), on TLS records.
    pub sni: Option<String>,
}

impl DestName {
    /// A destination whose name is not known, and why.
    #[must_use]
    pub fn unknown(reason: &'static str) -> Self {
        DestName {
            name: None,
            source: NameSource::None,
            cnames: Vec::new(),
            also: Vec::new(),
            endpoint: None,
            reason: Some(reason),
            sni: None,
        }
    }
}

/// An endpoint catalog entry, as a record cites it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    pub id: String,
    /// The pattern that matched (`eu.api.openai.com`, `*.openai.azure.com`).
    pub pattern: String,
    pub provider: String,
    pub service: String,
    /// Where the provider says it processes data: countries and set names
    /// as written, or `GLOBAL` / `UNKNOWN`.
    pub jurisdiction: Vec<String>,
    /// The jurisdiction's countries (empty for `GLOBAL` and `UNKNOWN`).
    pub countries: Vec<geoip::CountryCode>,
    /// Whether the name alone fixes where data is processed.
    pub determines_region: bool,
    /// The provider's documentation the entry rests on.
    pub source: String,
    /// `built-in`, `config` or `deployment`.
    pub origin: &'static str,
}

/// The policy generation that decided a flow. Two flows are equal in this
/// respect when the same loaded policy decided them.
#[derive(Debug, Clone)]
pub struct Decider(pub Arc<PolicyView>);

impl PartialEq for Decider {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Decider {}

/// The words a record uses for a verdict.
#[must_use]
pub fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Allowed => "allowed",
        Verdict::Flagged => "flagged",
        Verdict::Blocked => "blocked",
    }
}

/// What decided, as `residency.decided_by` says it.
#[must_use]
pub fn kind_str(k: DestKind) -> &'static str {
    match k {
        DestKind::Geo => "geoip",
        DestKind::Unknown => "unknown",
        DestKind::Denied => "denied",
        DestKind::Local => "local",
        DestKind::Internal => "internal",
        DestKind::Exception => "exception",
        DestKind::Catalog => "catalog",
        DestKind::Ambiguous => "ambiguous",
        DestKind::ResolverBypass => "resolver-bypass",
    }
}

/// The hook, as `residency.hook` says it.
#[must_use]
pub fn hook_str(h: Hook) -> &'static str {
    match h {
        Hook::Connect4 => "connect4",
        Hook::Connect6 => "connect6",
        Hook::Sendmsg4 => "sendmsg4",
        Hook::Sendmsg6 => "sendmsg6",
    }
}
