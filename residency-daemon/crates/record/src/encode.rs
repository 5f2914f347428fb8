//! The canonical encoding: each record as one line of Elastic Common Schema
//! (ECS) JSON.
//!
//! These bytes are what the output file holds, what the evidence chain
//! hashes and keeps, and what the API and the SIEM sinks read back
//! ([`crate::view`]). Field names follow ECS where one exists
//! (`destination.ip`, `process.pid`, `network.transport`, `rule.name`,
//! ...); what ECS has no name for lives under `residency.*`. Flows are
//! encoded through typed structs (this runs once per event); the rare
//! lifecycle records use `serde_json::json!`.

use std::fmt::Display;

use geoip::sets::Condition;
use residency_common::{DestKind, Hook, Verdict};
use serde::{Serialize, Serializer};
use serde_json::json;

use crate::{
    action::Lifecycle,
    index::Index,
    model::{
        Flow, PodInfo, ProcessInfo, Record, StartInfo, StopInfo, hook_str, kind_str, verdict_str,
    },
    policy::PolicyView,
};

/// `event.action` of a flow from `connect()`.
pub const CONNECT_ACTION: &str = "connect";
/// `event.action` of a datagram from `sendmsg()`/`sendto()`.
pub const SENDMSG_ACTION: &str = "sendmsg";
/// `event.action` of a flow's totals while it moves bytes.
pub const FLOW_UPDATE_ACTION: &str = "flow-update";
/// `event.action` of a flow's totals at its end.
pub const FLOW_END_ACTION: &str = "flow-end";

/// Appends a flow as one line of JSON to `out` and returns the columns the
/// evidence store indexes it by, taken from the same document, so the
/// store need not parse the line back (`Index::of` would find the same;
/// a test holds them equal).
///
/// # Errors
/// Only if serialisation fails, which for these types means a bug.
pub fn encode_flow_indexed(flow: &Flow, out: &mut Vec<u8>) -> serde_json::Result<Index> {
    let doc = FlowDoc::new(flow);
    serde_json::to_writer(&mut *out, &doc)?;
    out.push(b'\n');
    let r = &doc.residency;
    Ok(Index {
        ts: i64::try_from(doc.timestamp.as_nanosecond()).unwrap_or(i64::MAX),
        kind: if flow.totals.is_some() {
            doc.event.action.to_owned()
        } else {
            crate::index::FLOW.to_owned()
        },
        flow_id: flow.flow_id.as_deref().map(str::to_owned),
        totals: flow.totals.as_deref().map(|t| crate::index::TotalsColumns {
            totals: t.totals,
            delta: t.delta,
            ended: t.stage.ended(),
        }),
        verdict: Some(r.verdict.to_owned()),
        workload: r.workload.as_ref().map(|w| w.name.to_owned()),
        role: r.workload.as_ref().map(|w| w.role.to_owned()),
        tenants: r.tenants.to_vec(),
        country: r.country.map(str::to_owned),
        dst_ip: Some(doc.destination.ip.to_string()),
        dst_port: Some(doc.destination.port),
        dst_name: doc.destination.domain.map(str::to_owned),
        provider: r
            .name
            .as_ref()
            .and_then(|n| n.endpoint.as_ref())
            .map(|e| e.provider.to_owned()),
        service: r
            .name
            .as_ref()
            .and_then(|n| n.endpoint.as_ref())
            .map(|e| e.service.to_owned()),
        basis: Some(r.transfer_basis.to_owned()),
        rule: Some(doc.rule.name.to_owned()),
        policy: (!r.policy.hash.is_empty()).then(|| r.policy.hash.to_owned()),
        boot_ns: Some(r.boot_ns),
        namespace: doc.orchestrator.as_ref().map(|o| o.namespace.to_owned()),
        pod: doc
            .orchestrator
            .as_ref()
            .map(|o| o.resource.name.to_owned()),
    })
}

/// Appends `record` as one line of JSON (with its newline) to `out`.
///
/// # Errors
/// Only if serialisation fails, which for these types means a bug.
pub fn encode_line(record: &Record, out: &mut Vec<u8>) -> serde_json::Result<()> {
    // Flows carry the kernel's time; the rest are stamped when written.
    let now = jiff::Timestamp::now;
    match record {
        Record::Flow(flow) => serde_json::to_writer(&mut *out, &FlowDoc::new(flow))?,
        Record::Started(info) => serde_json::to_writer(&mut *out, &started(info, now()))?,
        Record::Stopped(info) => serde_json::to_writer(&mut *out, &stopped(info, now()))?,
        Record::Lost { count, total } => serde_json::to_writer(
            &mut *out,
            &json!({
                "@timestamp": now().to_string(),
                "event": {
                    "kind": Lifecycle::EventsLost.event_kind(),
                    "action": Lifecycle::EventsLost.as_str(),
                    "module": crate::MODULE,
                    "dataset": crate::LIFECYCLE_DATASET,
                },
                "message": format!(
                    "{count} decisions were made in the kernel but not reported: the ring \
                     buffer was full ({total} lost since start)"
                ),
                "residency": { "lost": { "count": count, "total": total, "where": "kernel-ring-buffer" } },
            }),
        )?,
        Record::Note(note) => {
            let mut doc = json!({
                "@timestamp": now().to_string(),
                "event": {
                    "kind": note.action.event_kind(),
                    "action": note.action.as_str(),
                    "module": crate::MODULE,
                    "dataset": crate::LIFECYCLE_DATASET,
                },
                "message": note.message,
                "residency": note.fields,
            });
            // The pod of the flow the note is about, named as the flow
            // names it.
            if let (Some(pod), Some(fields)) = (note.pod.as_deref(), doc.as_object_mut()) {
                let (container, orchestrator) = pod_fields(pod);
                if let Some(c) = container {
                    fields.insert("container".into(), serde_json::to_value(c)?);
                }
                fields.insert("orchestrator".into(), serde_json::to_value(orchestrator)?);
            }
            serde_json::to_writer(&mut *out, &doc)?;
        }
        Record::Undecodable { reason } => serde_json::to_writer(
            &mut *out,
            &json!({
                "@timestamp": now().to_string(),
                "event": {
                    "kind": Lifecycle::RecordUndecodable.event_kind(),
                    "action": Lifecycle::RecordUndecodable.as_str(),
                    "module": crate::MODULE,
                    "dataset": crate::LIFECYCLE_DATASET,
                },
                "message": reason,
            }),
        )?,
    }
    out.push(b'\n');
    Ok(())
}

fn started(info: &StartInfo, now: jiff::Timestamp) -> serde_json::Value {
    json!({
        "@timestamp": now.to_string(),
        "event": {
            "kind": Lifecycle::Started.event_kind(),
            "action": Lifecycle::Started.as_str(),
            "module": crate::MODULE,
            "dataset": crate::LIFECYCLE_DATASET,
        },
        "message": format!("residency {} watching cgroup {} in {} mode", info.version, info.cgroup_path, info.mode),
        "residency": {
            "version": info.version,
            "cgroup": { "path": info.cgroup_path, "id": info.cgroup_id },
            "mode": info.mode,
            "may_block": info.may_block,
            "kernel_release": info.kernel_release,
            "ring_buffer_kib": info.ring_buffer_kib,
            "deny_rules": info.deny_rules,
            "config": info.config_source,
            "geoip": { "version": info.geoip, "generation": info.geoip_generation },
            "policy": { "allowed": info.allowed, "conditions": info.conditions },
            "names": { "tracking": info.names, "catalog_entries": info.catalog_entries },
            "kubernetes": { "cri_socket": info.cri_socket },
        },
    })
}

fn stopped(info: &StopInfo, now: jiff::Timestamp) -> serde_json::Value {
    json!({
        "@timestamp": now.to_string(),
        "event": {
            "kind": Lifecycle::Stopped.event_kind(),
            "action": Lifecycle::Stopped.as_str(),
            "module": crate::MODULE,
            "dataset": crate::LIFECYCLE_DATASET,
        },
        "message": if info.enforcement_kept {
            "residency stopped; its programs stay attached and keep enforcing the policy in force \
             (kernel.persist); the next start takes them over, `residency detach` removes them"
        } else {
            "residency stopped and detached its programs: nothing is enforced until it starts again"
        },
        "residency": {
            "enforcement": if info.enforcement_kept { "kept" } else { "off" },
            "counters": {
                "kernel_submitted": info.kernel_submitted,
                "kernel_dropped": info.kernel_dropped,
                "received": info.received,
                "undecodable": info.undecodable,
                "process_records_dropped": info.process_dropped,
            },
        },
    })
}

#[derive(Serialize)]
struct FlowDoc<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: jiff::Timestamp,
    event: EventFields,
    network: Network,
    /// ECS `source.bytes`/`source.packets`: what this host sent (totals
    /// records only).
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<Traffic>,
    destination: Destination<'a>,
    process: Process<'a>,
    user: Id<u32>,
    group: Id<u32>,
    rule: Rule<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<Tls<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<ContainerFields<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    orchestrator: Option<Orchestrator<'a>>,
    residency: Residency<'a>,
}

/// ECS `container.*`: the container of the pod the flow came from.
#[derive(Serialize)]
struct ContainerFields<'a> {
    id: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<ImageFields<'a>>,
}

/// ECS `container.image.name`.
#[derive(Serialize)]
struct ImageFields<'a> {
    name: &'a str,
}

/// ECS `orchestrator.*`: the pod the flow came from.
#[derive(Serialize)]
struct Orchestrator<'a> {
    /// `kubernetes`.
    #[serde(rename = "type")]
    kind: &'static str,
    namespace: &'a str,
    resource: OrchestratorResource<'a>,
}

/// ECS `orchestrator.resource.*`.
#[derive(Serialize)]
struct OrchestratorResource<'a> {
    /// `pod`.
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    /// The pod's UID.
    #[serde(skip_serializing_if = "str::is_empty")]
    id: &'a str,
    /// The pod's labels as `key:value`, in key order.
    ///
    /// ECS's own field for a resource's labels, `orchestrator.resource.label`
    /// (an array of keywords; `key:value` is the form ECS's example gives
    /// its sibling `orchestrator.resource.annotation`). Not
    /// `container.labels`: that is the container's (image) labels, not the
    /// pod's. Not `kubernetes.labels.*`: Beats' field, outside ECS, an
    /// object keyed by user data that grows the index mapping with every
    /// new label key. A Kubernetes label key or value has no `:`, so the
    /// first `:` splits them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    label: Vec<String>,
}

/// `orchestrator.type` of a pod.
pub const ORCHESTRATOR_KUBERNETES: &str = "kubernetes";
/// `orchestrator.resource.type` of a pod.
pub const RESOURCE_POD: &str = "pod";

/// The ECS fields that name a pod: `container.*` (when the container is
/// known) and `orchestrator.*`.
fn pod_fields(pod: &PodInfo) -> (Option<ContainerFields<'_>>, Orchestrator<'_>) {
    let container = pod.container.as_ref().map(|c| ContainerFields {
        id: &c.id,
        name: &c.name,
        image: (!c.image.is_empty()).then_some(ImageFields { name: &c.image }),
    });
    let orchestrator = Orchestrator {
        kind: ORCHESTRATOR_KUBERNETES,
        namespace: &pod.namespace,
        resource: OrchestratorResource {
            kind: RESOURCE_POD,
            name: &pod.name,
            id: &pod.uid,
            label: pod.labels.iter().map(|(k, v)| format!("{k}:{v}")).collect(),
        },
    };
    (container, orchestrator)
}

/// ECS `tls.client.server_name`.
#[derive(Serialize)]
struct Tls<'a> {
    client: TlsClient<'a>,
}

#[derive(Serialize)]
struct TlsClient<'a> {
    server_name: &'a str,
}

/// `residency.name`: how the name is known and what the catalog says.
#[derive(Serialize)]
struct NameFields<'a> {
    source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    cnames: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    also: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoint: Option<EndpointFields<'a>>,
}

/// `residency.name.endpoint`: the catalog entry, with its source.
#[derive(Serialize)]
struct EndpointFields<'a> {
    id: &'a str,
    pattern: &'a str,
    provider: &'a str,
    service: &'a str,
    jurisdiction: &'a [String],
    determines_region: bool,
    source: &'a str,
    origin: &'static str,
}

#[derive(Serialize)]
struct EventFields {
    kind: &'static str,
    category: [&'static str; 1],
    #[serde(rename = "type")]
    kind_type: [&'static str; 2],
    action: &'static str,
    outcome: &'static str,
    module: &'static str,
    dataset: &'static str,
    /// Totals records: when the flow began, ended (`flow-end`), and how
    /// long it has lasted, in ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    start: Option<jiff::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<jiff::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<i128>,
}

#[derive(Serialize)]
struct Network {
    transport: &'static str,
    #[serde(rename = "type")]
    ip_type: &'static str,
    direction: &'static str,
    /// Totals records: both directions.
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    packets: Option<u64>,
}

/// ECS `*.bytes` and `*.packets` of one side.
#[derive(Serialize)]
struct Traffic {
    bytes: u64,
    packets: u64,
}

/// `residency.flow`: the flow's id, and in a totals record its counts.
#[derive(Serialize)]
struct FlowFields<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'static str>,
    /// Calls the decision covered: repeated datagrams to the same
    /// destination are counted here, not recorded one by one.
    #[serde(skip_serializing_if = "Option::is_none")]
    calls: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    established: Option<bool>,
    /// TCP: from the decision to the connection established, in ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_state: Option<&'static str>,
    /// What moved since this flow's previous totals record: the day's
    /// transfer summary adds these.
    #[serde(skip_serializing_if = "Option::is_none")]
    delta: Option<Delta>,
}

#[derive(Serialize)]
struct Delta {
    bytes_out: u64,
    bytes_in: u64,
    packets_out: u64,
    packets_in: u64,
    calls: u64,
}

#[derive(Serialize)]
struct Destination<'a> {
    ip: std::net::IpAddr,
    port: u16,
    /// Totals records: what this host received from the destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    packets: Option<u64>,
    /// The name the process resolved (ECS `destination.domain`).
    #[serde(skip_serializing_if = "Option::is_none")]
    domain: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    geo: Option<Geo<'a>>,
    #[serde(rename = "as", skip_serializing_if = "Option::is_none")]
    autonomous_system: Option<As<'a>>,
}

#[derive(Serialize)]
struct Geo<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    country_iso_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    continent_code: Option<&'a str>,
}

#[derive(Serialize)]
struct As<'a> {
    number: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    organization: Option<AsOrg<'a>>,
}

#[derive(Serialize)]
struct AsOrg<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Process<'a> {
    pid: u32,
    name: &'a str,
    thread: Id<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    executable: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command_line: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<&'a [String]>,
    /// Set when the command line was longer than residency keeps.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    args_truncated: bool,
}

#[derive(Serialize)]
struct CgroupFields<'a> {
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
}

/// `{"id": "<value>"}`: ECS ids are keywords (strings), even when they are
/// numbers.
struct Id<T>(T);

impl<T: Display> Serialize for Id<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Id", 1)?;
        st.serialize_field("id", &AsStr(&self.0))?;
        st.end()
    }
}

/// Serialises a `Display` value as a JSON string without allocating.
struct AsStr<'a, T>(&'a T);

impl<T: Display> Serialize for AsStr<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

#[derive(Serialize)]
struct Rule<'a> {
    id: AsStr<'a, u32>,
    name: &'a str,
    ruleset: &'static str,
}

#[derive(Serialize)]
struct Residency<'a> {
    verdict: &'static str,
    hook: &'static str,
    mode: &'a str,
    /// What decided: geoip, unknown, denied, local, internal.
    decided_by: &'static str,
    /// The country the kernel judged.
    #[serde(skip_serializing_if = "Option::is_none")]
    country: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    geoip: Option<GeoIpUsed<'a>>,
    policy: PolicyUsed<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<WorkloadFields<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tenants: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    exception: Option<ExceptionFields<'a>>,
    cgroup: CgroupFields<'a>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    v4_mapped: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stale: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<NameFields<'a>>,
    /// The socket cookie, which a later `tls-server-name` record of the
    /// same connection carries too (0: not known, left out).
    #[serde(skip_serializing_if = "is_zero")]
    socket_cookie: u64,
    /// Under what the data may go there: `eea` (no transfer under GDPR
    /// Chapter V), `adequacy`, `dpf`, an exception's basis (`scc`, `bcr`,
    /// `art49`), `local`, or `none`.
    transfer_basis: &'static str,
    /// What that basis is limited to for this country, with the decision
    /// that says so (`geoip::sets::CONDITIONS`): absent when the basis is
    /// unconditional there (GB, the EEA, an SCC).
    #[serde(skip_serializing_if = "Option::is_none")]
    transfer_condition: Option<Cited>,
    boot_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    flow: Option<FlowFields<'a>>,
}

/// A condition as a flow record cites it: `commercial organisations
/// subject to PIPEDA only (Decision 2002/2/EC)` (the record names the
/// country already).
struct Cited(&'static Condition);

impl Serialize for Cited {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{} ({})", self.0.text, self.0.decision))
    }
}

/// Which configuration decided: its hash is the policy version.
#[derive(Serialize)]
struct PolicyUsed<'a> {
    generation: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    hash: &'a str,
    index: u16,
}

#[derive(Serialize)]
struct WorkloadFields<'a> {
    name: &'a str,
    role: &'static str,
}

#[derive(Serialize)]
struct ExceptionFields<'a> {
    name: &'a str,
    basis: &'static str,
    justification: &'a str,
    expires: jiff::Timestamp,
}

/// Which database decided: the version evidence must carry.
#[derive(Serialize)]
struct GeoIpUsed<'a> {
    generation: u32,
    database: &'a str,
    build_epoch: u64,
}

impl<'a> FlowDoc<'a> {
    #[expect(clippy::too_many_lines, reason = "one record, field by field")]
    /// Explained with the policy that decided it, or not at all: another
    /// policy's names would be wrong.
    fn new(flow: &'a Flow) -> Self {
        let view: Option<&'a PolicyView> = flow.policy_view.as_ref().map(|d| &*d.0);
        let entry = view.and_then(|v| v.policy(flow.policy));
        let workload = entry.and_then(|p| p.workload.as_ref());
        let mode = entry
            .or_else(|| view.and_then(|v| v.policy(0)))
            .map_or("unknown", |p| p.mode);
        let rule = view.and_then(|v| v.rule(flow.rule_id));
        let exception = rule
            .filter(|_| flow.dest_kind == DestKind::Exception)
            .and_then(|r| Some((r.name.as_str(), r.exception.as_ref()?)));
        let name = flow.name.as_deref();
        let endpoint = name.and_then(|n| n.endpoint.as_deref());
        let dpf = entry.is_some_and(|p| p.dpf);
        let transfer_basis = match (flow.dest_kind, endpoint) {
            (DestKind::Catalog, Some(e)) => basis_of_set(&e.countries, dpf),
            (DestKind::Catalog | DestKind::Ambiguous | DestKind::ResolverBypass, _) => {
                crate::policy::TransferBasis::None
            }
            _ => match view {
                Some(v) => {
                    v.transfer_basis(flow.policy, flow.dest_kind, flow.rule_id, flow.country)
                }
                None => crate::policy::basis_without_exception(flow.dest_kind, flow.country, false),
            },
        };
        let (container, orchestrator) = match flow.pod.as_deref().map(pod_fields) {
            Some((c, o)) => (c, Some(o)),
            None => (None, None),
        };
        let (mut kind_type, outcome) = match flow.verdict {
            Verdict::Blocked => (["connection", "denied"], "failure"),
            Verdict::Allowed | Verdict::Flagged => (["connection", "allowed"], "success"),
        };
        let report = flow.totals.as_deref();
        let action = match (report, flow.hook) {
            (Some(t), _) if t.stage.ended() => {
                kind_type[1] = "end";
                FLOW_END_ACTION
            }
            (Some(_), _) => {
                kind_type[1] = "info";
                FLOW_UPDATE_ACTION
            }
            (None, Hook::Connect4 | Hook::Connect6) => CONNECT_ACTION,
            (None, Hook::Sendmsg4 | Hook::Sendmsg6) => SENDMSG_ACTION,
        };
        let counts = report.map(|t| t.totals);
        FlowDoc {
            timestamp: flow.time,
            event: EventFields {
                kind: "event",
                category: ["network"],
                kind_type,
                action,
                outcome,
                module: crate::MODULE,
                dataset: crate::FLOW_DATASET,
                start: report.map(|t| t.start),
                end: report.filter(|t| t.stage.ended()).map(|_| flow.time),
                duration: report.map(|t| flow.time.duration_since(t.start).as_nanos()),
            },
            network: Network {
                transport: flow.transport.as_str(),
                ip_type: if flow.dest_ip.is_ipv4() {
                    "ipv4"
                } else {
                    "ipv6"
                },
                direction: "egress",
                bytes: counts.map(|c| c.bytes_out.saturating_add(c.bytes_in)),
                packets: counts.map(|c| c.packets_out.saturating_add(c.packets_in)),
            },
            source: counts.map(|c| Traffic {
                bytes: c.bytes_out,
                packets: c.packets_out,
            }),
            destination: Destination {
                ip: flow.dest_ip,
                port: flow.dest_port,
                bytes: counts.map(|c| c.bytes_in),
                packets: counts.map(|c| c.packets_in),
                domain: name.and_then(|n| n.name.as_deref()),
                geo: flow.detail.as_deref().and_then(|d| {
                    let country = d.country.or(d.registered_country);
                    (country.is_some() || d.continent.is_some()).then(|| Geo {
                        country_iso_code: d
                            .country
                            .as_ref()
                            .or(d.registered_country.as_ref())
                            .map(geoip::CountryCode::as_str),
                        continent_code: d.continent.as_deref(),
                    })
                }),
                autonomous_system: flow.detail.as_deref().and_then(|d| {
                    d.asn.map(|number| As {
                        number,
                        organization: d.as_org.as_deref().map(|name| AsOrg { name }),
                    })
                }),
            },
            process: Process {
                pid: flow.pid,
                name: &flow.process_name,
                thread: Id(flow.tid),
                executable: flow
                    .process
                    .as_deref()
                    .and_then(|p| p.executable.as_deref()),
                command_line: flow
                    .process
                    .as_deref()
                    .filter(|p| !p.args.is_empty())
                    .map(ProcessInfo::command_line),
                args: flow
                    .process
                    .as_deref()
                    .filter(|p| !p.args.is_empty())
                    .map(|p| p.args.as_slice()),
                args_truncated: flow.process.as_deref().is_some_and(|p| p.args_truncated),
            },
            user: Id(flow.uid),
            group: Id(flow.gid),
            tls: name.and_then(|n| n.sni.as_deref()).map(|server_name| Tls {
                client: TlsClient { server_name },
            }),
            container,
            orchestrator,
            rule: Rule {
                id: AsStr(&flow.rule_id),
                name: rule.map_or("unknown", |r| r.name.as_str()),
                ruleset: "residency",
            },
            residency: Residency {
                verdict: verdict_str(flow.verdict),
                hook: hook_str(flow.hook),
                mode,
                decided_by: kind_str(flow.dest_kind),
                country: flow.country.as_ref().map(geoip::CountryCode::as_str),
                geoip: flow
                    .geo_version
                    .as_deref()
                    .filter(|_| flow.geo_gen != 0)
                    .map(|v| GeoIpUsed {
                        generation: flow.geo_gen,
                        database: &v.database_type,
                        build_epoch: v.build_epoch,
                    }),
                policy: PolicyUsed {
                    generation: flow.policy_gen,
                    hash: view.map_or("", |v| v.hash.as_str()),
                    index: flow.policy,
                },
                workload: workload.map(|w| WorkloadFields {
                    name: &w.name,
                    role: w.role,
                }),
                tenants: workload.map_or(&[], |w| w.tenants.as_slice()),
                exception: exception.map(|(name, e)| ExceptionFields {
                    name,
                    basis: e.basis.as_str(),
                    justification: &e.justification,
                    expires: e.expires,
                }),
                cgroup: CgroupFields {
                    id: flow.cgroup_id,
                    path: flow.cgroup_path.as_deref(),
                },
                v4_mapped: flow.v4_mapped,
                stale: flow.stale,
                name: name.map(|n| NameFields {
                    source: n.source.as_str(),
                    value: n.name.as_deref(),
                    cnames: &n.cnames,
                    also: &n.also,
                    reason: n.reason,
                    endpoint: endpoint.map(|e| EndpointFields {
                        id: &e.id,
                        pattern: &e.pattern,
                        provider: &e.provider,
                        service: &e.service,
                        jurisdiction: &e.jurisdiction,
                        determines_region: e.determines_region,
                        source: &e.source,
                        origin: e.origin,
                    }),
                }),
                socket_cookie: flow.cookie,
                transfer_basis: transfer_basis.as_str(),
                transfer_condition: transfer_basis.condition(flow.country).map(Cited),
                boot_ns: flow.boot_ns,
                flow: flow.flow_id.as_deref().map(|id| FlowFields {
                    id,
                    stage: report.map(|t| t.stage.as_str()),
                    calls: counts.map(|c| c.calls),
                    established: report
                        .filter(|_| flow.transport == crate::Transport::Tcp)
                        .map(|t| t.established_after_ns.is_some()),
                    connect_ns: report.and_then(|t| t.established_after_ns),
                    tcp_state: report.and_then(|t| t.tcp_state),
                    delta: report.map(|t| Delta {
                        bytes_out: t.delta.bytes_out,
                        bytes_in: t.delta.bytes_in,
                        packets_out: t.delta.packets_out,
                        packets_in: t.delta.packets_in,
                        calls: t.delta.calls,
                    }),
                }),
            },
        }
    }
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The basis of a transfer to a jurisdiction of several countries: the
/// weakest of its countries' (a set within the EEA is `eea`; one that
/// reaches an adequacy country is `adequacy`; any country without a basis
/// leaves none).
fn basis_of_set(countries: &[geoip::CountryCode], dpf: bool) -> crate::policy::TransferBasis {
    use crate::policy::TransferBasis as B;
    if countries.is_empty() {
        return B::None;
    }
    let mut weakest = B::Eea;
    for c in countries {
        match crate::policy::basis_without_exception(DestKind::Geo, Some(*c), dpf) {
            B::Adequacy if weakest == B::Eea => weakest = B::Adequacy,
            B::Dpf if matches!(weakest, B::Eea | B::Adequacy) => weakest = B::Dpf,
            B::Eea | B::Adequacy | B::Dpf => {}
            _ => return B::None,
        }
    }
    weakest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Decider, GeoDetail, Transport},
        policy::{PolicyEntry, RuleView},
    };

    /// The view of a configuration in enforce mode with two deny rules,
    /// `other` and `no-us-llm` (the daemon's tests check that its policy
    /// module builds such views from configurations).
    fn names() -> PolicyView {
        let rule = |name: &str| RuleView {
            name: name.into(),
            exception: None,
        };
        PolicyView {
            hash: "9f2c".into(),
            policies: vec![PolicyEntry {
                mode: "enforce",
                workload: None,
                dpf: false,
            }],
            rules: vec![rule("geoip"), rule("other"), rule("no-us-llm")],
        }
    }

    fn flow() -> Flow {
        Flow {
            time: jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            boot_ns: 5,
            cgroup_id: 77,
            cgroup_path: Some("/system.slice/crm.service".into()),
            pid: 10,
            tid: 11,
            uid: 65534,
            gid: 65533,
            process_name: "py\"thon\n".to_owned(),
            process: Some(std::sync::Arc::new(ProcessInfo {
                executable: Some("/usr/bin/python3.12".into()),
                args: vec![
                    "python3".into(),
                    "sync.py".into(),
                    "--tenant".into(),
                    "acme".into(),
                ],
                args_truncated: false,
            })),
            hook: Hook::Connect6,
            transport: Transport::Tcp,
            dest_ip: "2001:db8::1".parse().unwrap(),
            dest_port: 443,
            v4_mapped: false,
            stale: false,
            verdict: Verdict::Blocked,
            rule_id: 2,
            dest_kind: DestKind::Denied,
            country: None,
            geo_gen: 0,
            geo_version: None,
            detail: None,
            policy: 0,
            policy_gen: 1,
            policy_view: Some(Decider(std::sync::Arc::new(names()))),
            name: None,
            cookie: 0,
            pod: None,
            flow_id: None,
            totals: None,
        }
    }

    fn encode(r: &Record) -> serde_json::Value {
        let mut out = Vec::new();
        encode_line(r, &mut out).unwrap();
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(
            out.split(|&b| b == b'\n').count() - 1,
            1,
            "one line per record"
        );
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn the_index_taken_from_the_document_is_what_the_store_would_parse() {
        let mut flows = vec![flow()];
        let mut geo = flow();
        geo.dest_ip = "198.51.100.9".parse().unwrap();
        geo.dest_kind = DestKind::Geo;
        geo.country = "US".parse().ok();
        geo.verdict = Verdict::Flagged;
        geo.time = jiff::Timestamp::from_nanosecond(1_800_000_000_123_456_789).unwrap();
        flows.push(geo);
        let mut no_config = flow();
        no_config.policy_view = None;
        flows.push(no_config);
        let mut in_pod = flow();
        in_pod.pod = Some(pod());
        flows.push(in_pod);
        let mut followed = flow();
        followed.flow_id = Some("0badcafe-99-1".into());
        flows.push(followed.clone());
        for stage in [
            crate::FlowStage::Update,
            crate::FlowStage::Closed,
            crate::FlowStage::Superseded,
        ] {
            let mut t = followed.clone();
            t.totals = Some(Box::new(totals(stage)));
            flows.push(t);
        }
        for f in flows {
            let mut out = Vec::new();
            let index = encode_flow_indexed(&f, &mut out).unwrap();
            let mut line = Vec::new();
            encode_line(&Record::Flow(f), &mut line).unwrap();
            assert_eq!(out, line, "the same bytes either way");
            let parsed = Index::of(&line[..line.len() - 1]).unwrap();
            assert_eq!(index, parsed);
        }
    }

    fn totals(stage: crate::FlowStage) -> crate::FlowReport {
        crate::FlowReport {
            stage,
            start: jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            established_after_ns: Some(41_000),
            tcp_state: Some("established"),
            totals: crate::FlowCounts {
                bytes_out: 3_000_052,
                bytes_in: 1_040,
                packets_out: 47,
                packets_in: 20,
                calls: 1,
            },
            delta: crate::FlowCounts {
                bytes_out: 1_000_000,
                bytes_in: 40,
                packets_out: 16,
                packets_in: 1,
                calls: 0,
            },
        }
    }

    #[test]
    fn a_flows_totals_are_ecs_bytes_and_packets_with_its_id() {
        let mut f = flow();
        f.flow_id = Some("0badcafe-99-1".into());
        let decision = encode(&Record::Flow(f.clone()));
        assert_eq!(
            decision["residency"]["flow"],
            serde_json::json!({"id": "0badcafe-99-1"})
        );
        assert_eq!(decision["event"]["action"], "connect");
        assert!(decision.get("source").is_none());
        f.totals = Some(Box::new(totals(crate::FlowStage::Closed)));
        let v = encode(&Record::Flow(f.clone()));
        assert_eq!(v["event"]["action"], FLOW_END_ACTION);
        assert_eq!(v["event"]["type"], serde_json::json!(["connection", "end"]));
        assert_eq!(v["event"]["start"], "2027-01-15T08:00:00Z");
        assert_eq!(v["event"]["end"], v["@timestamp"]);
        assert_eq!(v["source"]["bytes"], 3_000_052);
        assert_eq!(v["destination"]["bytes"], 1_040);
        assert_eq!(v["network"]["bytes"], 3_001_092);
        assert_eq!(v["network"]["packets"], 67);
        let flow = &v["residency"]["flow"];
        assert_eq!(flow["stage"], "closed");
        assert_eq!(flow["delta"]["bytes_out"], 1_000_000);
        assert_eq!(flow["connect_ns"], 41_000);
        f.totals = Some(Box::new(totals(crate::FlowStage::Update)));
        let v = encode(&Record::Flow(f));
        assert_eq!(v["event"]["action"], FLOW_UPDATE_ACTION);
        assert!(v["event"].get("end").is_none());
        let view = crate::RecordView::from_value(&v);
        assert!(view.is_totals() && !view.is_flow() && !view.is_violation());
    }

    #[test]
    fn flow_uses_ecs_names() {
        let v = encode(&Record::Flow(flow()));
        assert_eq!(v["@timestamp"], "2027-01-15T08:00:00Z");
        assert_eq!(v["destination"]["ip"], "2001:db8::1");
        assert_eq!(v["destination"]["port"], 443);
        assert_eq!(v["network"]["transport"], "tcp");
        assert_eq!(v["network"]["type"], "ipv6");
        assert_eq!(v["network"]["direction"], "egress");
        assert_eq!(v["process"]["pid"], 10);
        assert_eq!(v["process"]["thread"]["id"], "11");
        assert_eq!(v["process"]["name"], "py\"thon\n", "escaped, not mangled");
        assert_eq!(v["user"]["id"], "65534");
        assert_eq!(v["group"]["id"], "65533");
        assert_eq!(v["event"]["action"], "connect");
        assert_eq!(v["event"]["outcome"], "failure");
        assert_eq!(v["event"]["type"][1], "denied");
        assert_eq!(v["rule"]["id"], "2");
        assert_eq!(v["rule"]["name"], "no-us-llm");
        assert_eq!(v["residency"]["verdict"], "blocked");
        assert_eq!(v["residency"]["hook"], "connect6");
        assert_eq!(v["residency"]["mode"], "enforce");
        assert_eq!(v["residency"]["decided_by"], "denied");
        assert!(v["residency"].get("v4_mapped").is_none());
        assert!(v["destination"].get("geo").is_none());
        assert_eq!(v["process"]["executable"], "/usr/bin/python3.12");
        assert_eq!(
            v["process"]["command_line"],
            "python3 sync.py --tenant acme"
        );
        assert_eq!(v["process"]["args"][3], "acme");
        assert!(v["process"].get("args_truncated").is_none());
        assert_eq!(v["residency"]["cgroup"]["id"], 77);
        assert_eq!(
            v["residency"]["cgroup"]["path"],
            "/system.slice/crm.service"
        );

        // A process gone before it could be identified: only the kernel's
        // name, and nothing made up.
        let mut gone = flow();
        gone.process = None;
        gone.cgroup_path = None;
        let v = encode(&Record::Flow(gone));
        assert!(v["process"].get("executable").is_none());
        assert!(v["process"].get("command_line").is_none());
        assert_eq!(v["process"]["name"], "py\"thon\n");
        assert!(v["residency"]["cgroup"].get("path").is_none());

        // A record whose configuration is no longer held is not explained
        // with another one's names.
        let mut orphan = flow();
        orphan.policy_view = None;
        let v = encode(&Record::Flow(orphan));
        assert_eq!(v["rule"]["name"], "unknown");
        assert_eq!(v["residency"]["mode"], "unknown");
        assert!(v["residency"]["policy"].get("hash").is_none());
        assert!(v["residency"].get("workload").is_none());
        assert_eq!(v["residency"]["verdict"], "blocked", "the facts stay");
    }

    fn pod() -> std::sync::Arc<crate::PodInfo> {
        std::sync::Arc::new(crate::PodInfo {
            namespace: "crm".into(),
            name: "sync-7d9f-x2x".into(),
            uid: "0b7ae1c5-2f3a-4e5b-9c1d-5a6b7c8d9e0f".into(),
            labels: [("app.kubernetes.io/name", "sync"), ("tier", "batch")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            container: Some(crate::ContainerInfo {
                id: "ab".repeat(32),
                name: "sync".into(),
                image: "registry.example/crm/sync:1.4".into(),
            }),
        })
    }

    #[test]
    fn a_pod_is_named_with_ecs_container_and_orchestrator_fields() {
        let mut f = flow();
        f.pod = Some(pod());
        let v = encode(&Record::Flow(f.clone()));
        assert_eq!(
            v["container"],
            serde_json::json!({
                "id": "ab".repeat(32),
                "name": "sync",
                "image": { "name": "registry.example/crm/sync:1.4" },
            })
        );
        assert_eq!(
            v["orchestrator"],
            serde_json::json!({
                "type": "kubernetes",
                "namespace": "crm",
                "resource": {
                    "type": "pod",
                    "name": "sync-7d9f-x2x",
                    "id": "0b7ae1c5-2f3a-4e5b-9c1d-5a6b7c8d9e0f",
                    "label": ["app.kubernetes.io/name:sync", "tier:batch"],
                },
            })
        );
        let mut out = Vec::new();
        let index = encode_flow_indexed(&f, &mut out).unwrap();
        assert_eq!(
            (index.namespace.as_deref(), index.pod.as_deref()),
            (Some("crm"), Some("sync-7d9f-x2x"))
        );

        // A pod whose container is not known, without labels: no
        // `container`, no empty label list.
        let mut bare = (*pod()).clone();
        bare.container = None;
        bare.labels.clear();
        f.pod = Some(std::sync::Arc::new(bare));
        let v = encode(&Record::Flow(f));
        assert!(v.get("container").is_none(), "{v}");
        assert!(v["orchestrator"]["resource"].get("label").is_none());
        assert_eq!(v["orchestrator"]["resource"]["name"], "sync-7d9f-x2x");

        // No pod: neither part, and the bytes of a flow are as before.
        let v = encode(&Record::Flow(flow()));
        assert!(v.get("container").is_none() && v.get("orchestrator").is_none());
        let mut out = Vec::new();
        let index = encode_flow_indexed(&flow(), &mut out).unwrap();
        assert_eq!((index.namespace, index.pod), (None, None));
    }

    #[test]
    fn a_note_about_a_pods_flow_names_the_pod() {
        let note = Record::note(
            Lifecycle::TlsServerName,
            "TLS server name api.example".into(),
            serde_json::json!({ "socket_cookie": 7 }),
        );
        let v = encode(&note.clone().with_pod(Some(pod())));
        assert_eq!(v["orchestrator"]["namespace"], "crm");
        assert_eq!(v["orchestrator"]["resource"]["name"], "sync-7d9f-x2x");
        assert_eq!(v["container"]["name"], "sync");
        assert_eq!(v["residency"]["socket_cookie"], 7);
        let v = encode(&note.with_pod(None));
        assert!(v.get("orchestrator").is_none() && v.get("container").is_none());
    }

    #[test]
    fn geoip_detail_and_version() {
        let mut f = flow();
        f.dest_kind = DestKind::Geo;
        f.rule_id = 0;
        f.country = Some("US".parse().unwrap());
        f.geo_gen = 4;
        f.geo_version = Some(std::sync::Arc::new(geoip::DbVersion {
            database_type: "GeoLite2-Country".into(),
            build_epoch: 1_781_726_006,
            ip_version: 6,
            node_count: 9,
        }));
        f.detail = Some(std::sync::Arc::new(GeoDetail {
            country: Some("US".parse().unwrap()),
            registered_country: None,
            continent: Some("NA".into()),
            asn: Some(15169),
            as_org: Some("Google LLC".into()),
        }));
        let v = encode(&Record::Flow(f));
        assert_eq!(v["destination"]["geo"]["country_iso_code"], "US");
        assert_eq!(v["destination"]["geo"]["continent_code"], "NA");
        assert_eq!(v["destination"]["as"]["number"], 15169);
        assert_eq!(v["destination"]["as"]["organization"]["name"], "Google LLC");
        assert_eq!(v["residency"]["country"], "US");
        assert_eq!(v["residency"]["decided_by"], "geoip");
        assert_eq!(v["residency"]["geoip"]["generation"], 4);
        assert_eq!(v["residency"]["geoip"]["database"], "GeoLite2-Country");
        assert_eq!(v["residency"]["geoip"]["build_epoch"], 1_781_726_006);
        assert_eq!(
            v["rule"]["name"], "geoip",
            "rule 0: the GeoIP tables decided"
        );
    }

    /// A flow the `GeoIP` tables allowed to `country`, under a policy that
    /// names `US-DPF` or not.
    fn allowed_to(country: &str, dpf: bool) -> serde_json::Value {
        let mut f = flow();
        f.dest_kind = DestKind::Geo;
        f.rule_id = 0;
        f.verdict = Verdict::Allowed;
        f.country = country.parse().ok();
        let mut view = names();
        view.policies[0].dpf = dpf;
        f.policy_view = Some(Decider(std::sync::Arc::new(view)));
        encode(&Record::Flow(f))
    }

    #[test]
    fn a_condition_is_cited_only_for_its_country() {
        let gb = allowed_to("GB", false);
        assert_eq!(gb["residency"]["transfer_basis"], "adequacy");
        assert!(
            gb["residency"].get("transfer_condition").is_none(),
            "GB's adequacy is unconditional: {gb}"
        );
        let ca = allowed_to("CA", false);
        assert_eq!(ca["residency"]["transfer_basis"], "adequacy");
        assert_eq!(
            ca["residency"]["transfer_condition"],
            "commercial organisations subject to PIPEDA only (Decision 2002/2/EC)"
        );
        let us = allowed_to("US", true);
        assert_eq!(us["residency"]["transfer_basis"], "dpf");
        let cited = us["residency"]["transfer_condition"].as_str().unwrap();
        assert!(
            cited.contains("Data Privacy Framework")
                && cited.ends_with("(Decision (EU) 2023/1795)"),
            "{cited}"
        );
        let de = allowed_to("DE", true);
        assert!(de["residency"].get("transfer_condition").is_none());
        let us = allowed_to("US", false);
        assert_eq!(us["residency"]["transfer_basis"], "none");
        assert!(
            us["residency"].get("transfer_condition").is_none(),
            "no basis, nothing to qualify"
        );
    }

    #[test]
    fn lifecycle_records() {
        let v = encode(&Record::Lost { count: 3, total: 9 });
        assert_eq!(v["event"]["action"], "events-lost");
        assert_eq!(v["residency"]["lost"]["count"], 3);
        assert_eq!(v["residency"]["lost"]["total"], 9);
        let v = encode(&Record::Stopped(StopInfo {
            kernel_submitted: 5,
            kernel_dropped: 1,
            received: 5,
            undecodable: 0,
            process_dropped: 2,
            enforcement_kept: false,
        }));
        assert_eq!(v["event"]["action"], "stopped");
        assert_eq!(v["residency"]["counters"]["kernel_dropped"], 1);
        assert_eq!(v["residency"]["counters"]["process_records_dropped"], 2);
    }
}
