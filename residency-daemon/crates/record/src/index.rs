//! The columns the store indexes, derived from a record's canonical bytes.
//!
//! Ingest and `verify` both derive them with [`Index::of`], from the body
//! alone, so a column that was edited in the database (to hide a record
//! from a filter) no longer matches its body and `verify` says so.

use std::borrow::Cow;

use serde::Deserialize;

use crate::{
    FLOW_DATASET,
    action::Lifecycle,
    encode::{FLOW_END_ACTION, FLOW_UPDATE_ACTION},
    view::NotARecord,
};

/// The `kind` column of a flow; lifecycle records have their action.
pub const FLOW: &str = "flow";
/// The `kind` column of bytes the store kept but could not index (a bug:
/// only the record crate's encoder writes records; `verify` names them).
pub const UNINDEXED: &str = "unindexed";

/// The parts of a record the columns come from, and no more: a narrow
/// projection of [`crate::RecordView`] with the same field names, for the
/// hot path. `verify` derives the columns of every record in the chain,
/// and reading the whole view made that parse 30-70% slower (3.2-3.8 µs
/// against 2.3-2.8 µs for one flow record, measured in three rounds); this
/// reads it in 2.2 µs, within 3% of the reader the store had before. Unlike the
/// view it is strict: `@timestamp`, `event.action` and `event.dataset`
/// must be there (a test holds it to what the encoder writes).
#[derive(Debug, Deserialize)]
struct ColumnsView<'a> {
    #[serde(rename = "@timestamp", borrow)]
    timestamp: Cow<'a, str>,
    #[serde(borrow)]
    event: EventColumns<'a>,
    #[serde(default, borrow)]
    destination: Option<DestColumns<'a>>,
    #[serde(default)]
    source: Option<Traffic>,
    #[serde(default, borrow)]
    rule: Option<RuleColumns<'a>>,
    #[serde(default, borrow)]
    residency: Option<ResidencyColumns<'a>>,
    #[serde(default, borrow)]
    orchestrator: Option<OrchestratorColumns<'a>>,
}

/// `orchestrator.*` (the pod), as far as the columns go.
#[derive(Debug, Default, Deserialize)]
struct OrchestratorColumns<'a> {
    #[serde(default, borrow)]
    namespace: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    resource: Option<ResourceColumns<'a>>,
}

/// `orchestrator.resource.*`, as far as the columns go.
#[derive(Debug, Default, Deserialize)]
struct ResourceColumns<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
}

/// `residency.*`, as far as the columns go.
#[derive(Debug, Default, Deserialize)]
struct ResidencyColumns<'a> {
    #[serde(default, borrow)]
    verdict: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    country: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    workload: Option<WorkloadColumns<'a>>,
    #[serde(default, borrow)]
    tenants: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    transfer_basis: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    policy: Option<PolicyColumns<'a>>,
    #[serde(default)]
    boot_ns: Option<u64>,
    #[serde(default, borrow)]
    name: Option<NameColumns<'a>>,
    #[serde(default, borrow)]
    flow: Option<FlowColumns<'a>>,
}

/// `residency.flow.*`, as far as the columns go.
#[derive(Debug, Deserialize)]
struct FlowColumns<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default)]
    calls: Option<u64>,
    #[serde(default)]
    delta: Option<DeltaColumns>,
}

/// `residency.flow.delta`.
#[derive(Debug, Deserialize)]
struct DeltaColumns {
    bytes_out: u64,
    bytes_in: u64,
    packets_out: u64,
    packets_in: u64,
    calls: u64,
}

/// `source.bytes`/`packets` (and the same of `destination`).
#[derive(Debug, Default, Deserialize)]
struct Traffic {
    #[serde(default)]
    bytes: Option<u64>,
    #[serde(default)]
    packets: Option<u64>,
}

/// `residency.name.*`, as far as the columns go.
#[derive(Debug, Default, Deserialize)]
struct NameColumns<'a> {
    #[serde(default, borrow)]
    endpoint: Option<EndpointColumns<'a>>,
}

/// `residency.name.endpoint.*`, as far as the columns go.
#[derive(Debug, Default, Deserialize)]
struct EndpointColumns<'a> {
    #[serde(default, borrow)]
    provider: Cow<'a, str>,
    #[serde(default, borrow)]
    service: Cow<'a, str>,
}

/// `residency.policy.*`, as far as the columns go.
#[derive(Debug, Default, Deserialize)]
struct PolicyColumns<'a> {
    #[serde(default, borrow)]
    hash: Option<Cow<'a, str>>,
}

/// `event.*`, as far as the columns go.
#[derive(Debug, Deserialize)]
struct EventColumns<'a> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(borrow)]
    dataset: Cow<'a, str>,
}

/// `residency.workload.*`.
#[derive(Debug, Deserialize)]
struct WorkloadColumns<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    role: Cow<'a, str>,
}

/// `rule.*`, as far as the columns go.
#[derive(Debug, Default, Deserialize)]
struct RuleColumns<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
}

/// `destination.*`, as far as the columns go.
#[derive(Debug, Default, Deserialize)]
struct DestColumns<'a> {
    #[serde(default, borrow)]
    ip: Option<Cow<'a, str>>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default, borrow)]
    domain: Option<Cow<'a, str>>,
    #[serde(default)]
    bytes: Option<u64>,
    #[serde(default)]
    packets: Option<u64>,
}

/// The searchable facts of one record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Index {
    /// Event time, Unix nanoseconds.
    pub ts: i64,
    /// `flow` for a decision; otherwise the lifecycle action
    /// (`started`, `stopped`, `events-lost`, `evidence-gap`, ...).
    pub kind: String,
    pub verdict: Option<String>,
    pub workload: Option<String>,
    pub role: Option<String>,
    pub tenants: Vec<String>,
    /// The country the kernel judged.
    pub country: Option<String>,
    pub dst_ip: Option<String>,
    pub dst_port: Option<u16>,
    pub dst_name: Option<String>,
    /// The transfer basis (`eea`, `adequacy`, `dpf`, `scc`, ...).
    pub basis: Option<String>,
    pub rule: Option<String>,
    /// The policy version (configuration hash).
    pub policy: Option<String>,
    /// `CLOCK_BOOTTIME` of the kernel's decision, for latency.
    pub boot_ns: Option<u64>,
    /// The provider and the service of the destination's catalog entry
    /// (`residency.name.endpoint`): the transfer summary counts by them.
    /// Not columns of `records`; derived again by `verify`.
    pub provider: Option<String>,
    pub service: Option<String>,
    /// The Kubernetes namespace and pod name of the flow's pod
    /// (`orchestrator.namespace`, `orchestrator.resource.name`).
    pub namespace: Option<String>,
    pub pod: Option<String>,
    /// The flow's id (`residency.flow.id`), on decisions the kernel
    /// follows and on their totals records.
    pub flow_id: Option<String>,
    /// A totals record's counts (`flow-update`, `flow-end`).
    pub totals: Option<TotalsColumns>,
}

/// What a totals record says moved: since the flow began, and since its
/// previous totals record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TotalsColumns {
    pub totals: crate::FlowCounts,
    pub delta: crate::FlowCounts,
    /// `flow-end`: no totals follow.
    pub ended: bool,
}

impl Index {
    /// Derives the columns from a record's canonical bytes.
    ///
    /// # Errors
    /// If the bytes are not a residency record: not JSON, a field of the
    /// wrong type, no `event.action` or `event.dataset`, or a `@timestamp`
    /// that is not a time.
    pub fn of(body: &[u8]) -> Result<Self, String> {
        let r: ColumnsView<'_> =
            serde_json::from_slice(body).map_err(|e| NotARecord(e.to_string()).to_string())?;
        // The view reads absent parts as empty; a record has these.
        if r.event.action.is_empty() || r.event.dataset.is_empty() {
            return Err("not a residency record: no event.action or event.dataset".into());
        }
        let ts = r
            .timestamp
            .parse::<jiff::Timestamp>()
            .map_err(|e| format!("@timestamp: {e}"))?;
        let ts = i64::try_from(ts.as_nanosecond()).map_err(|_| "@timestamp out of range")?;
        let policy = r
            .residency
            .as_ref()
            .and_then(|res| res.policy.as_ref()?.hash.as_deref())
            .filter(|h| !h.is_empty())
            .map(str::to_owned);
        // A flow without its `residency` part (damaged, or not ours) has
        // no verdict to index: it is indexed by its action alone.
        let Some(res) = r
            .residency
            .as_ref()
            .filter(|_| r.event.dataset == FLOW_DATASET)
        else {
            return Ok(Index {
                ts,
                kind: r.event.action.into_owned(),
                policy,
                ..Index::default()
            });
        };
        let owned = |v: &Option<Cow<'_, str>>| v.as_deref().map(str::to_owned);
        let dest = r.destination.as_ref();
        let action = r.event.action.as_ref();
        let is_totals = action == FLOW_UPDATE_ACTION || action == FLOW_END_ACTION;
        let totals = match (is_totals, res.flow.as_ref()) {
            (false, _) => None,
            (true, Some(f)) => {
                let d = f
                    .delta
                    .as_ref()
                    .ok_or("a totals record without residency.flow.delta")?;
                let src = r.source.as_ref();
                Some(TotalsColumns {
                    totals: crate::FlowCounts {
                        bytes_out: src.and_then(|s| s.bytes).unwrap_or(0),
                        bytes_in: dest.and_then(|d| d.bytes).unwrap_or(0),
                        packets_out: src.and_then(|s| s.packets).unwrap_or(0),
                        packets_in: dest.and_then(|d| d.packets).unwrap_or(0),
                        calls: f.calls.unwrap_or(0),
                    },
                    delta: crate::FlowCounts {
                        bytes_out: d.bytes_out,
                        bytes_in: d.bytes_in,
                        packets_out: d.packets_out,
                        packets_in: d.packets_in,
                        calls: d.calls,
                    },
                    ended: action == FLOW_END_ACTION,
                })
            }
            (true, None) => return Err("a totals record without residency.flow".into()),
        };
        let endpoint = res.name.as_ref().and_then(|n| n.endpoint.as_ref());
        let orchestrator = r.orchestrator.as_ref();
        Ok(Index {
            ts,
            kind: if is_totals {
                action.to_owned()
            } else {
                FLOW.to_owned()
            },
            flow_id: res.flow.as_ref().map(|f| f.id.clone().into_owned()),
            totals,
            verdict: owned(&res.verdict),
            workload: res.workload.as_ref().map(|w| w.name.clone().into_owned()),
            role: res.workload.as_ref().map(|w| w.role.clone().into_owned()),
            tenants: res.tenants.iter().map(|t| t.clone().into_owned()).collect(),
            country: owned(&res.country),
            dst_ip: dest.and_then(|d| owned(&d.ip)),
            dst_port: dest.and_then(|d| d.port),
            dst_name: dest.and_then(|d| owned(&d.domain)),
            basis: owned(&res.transfer_basis),
            rule: r.rule.as_ref().and_then(|x| owned(&x.name)),
            policy,
            boot_ns: res.boot_ns,
            provider: endpoint.map(|e| e.provider.clone().into_owned()),
            service: endpoint.map(|e| e.service.clone().into_owned()),
            namespace: orchestrator.and_then(|o| owned(&o.namespace)),
            pod: orchestrator
                .and_then(|o| o.resource.as_ref())
                .and_then(|res| owned(&res.name)),
        })
    }

    /// A flow's columns?
    #[must_use]
    pub fn is_flow(&self) -> bool {
        self.kind == FLOW
    }

    /// A flow's totals record (`flow-update`, `flow-end`)?
    #[must_use]
    pub fn is_totals(&self) -> bool {
        self.totals.is_some()
    }

    /// What a lifecycle record's columns say happened.
    #[must_use]
    pub fn lifecycle(&self) -> Option<Lifecycle> {
        if self.is_flow() {
            return None;
        }
        self.kind.parse().ok()
    }

    /// Is this a decision that breached policy (blocked or flagged)?
    #[must_use]
    pub fn is_violation(&self) -> bool {
        self.is_flow() && matches!(self.verdict.as_deref(), Some("blocked" | "flagged"))
    }

    /// The tenants as stored in the `tenants` column.
    #[must_use]
    pub fn tenants_column(&self) -> Option<String> {
        (!self.tenants.is_empty()).then(|| self.tenants.join(","))
    }
}
