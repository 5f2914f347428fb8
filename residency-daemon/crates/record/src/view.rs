//! The typed read view: a record's canonical bytes read back.
//!
//! The evidence store derives its columns from a narrow projection of it
//! with the same field names ([`crate::index`], for speed), the
//! SIEM sinks format alerts from it and the CLI prints tables from it, so
//! that no reader names a record's fields by strings of its own. The
//! fields mirror what [`crate::encode`] writes (a test here encodes records
//! and reads every field back); strings are borrowed from the bytes where
//! they need no unescaping.
//!
//! Reading is lenient where the format may grow: unknown fields are
//! ignored and any field may be absent (it reads as empty), so a record
//! written by a later build still reads. A field of the wrong type is not
//! read past: [`RecordView::parse`] fails and [`RecordView::from_value`]
//! reads nothing. The encoder never writes one; in the store only damage
//! could, and `evidence verify` names damaged records by their hash first.
//! [`crate::Index::of`] is the strict reader: it requires `@timestamp`,
//! `event.action` and `event.dataset`.

use std::borrow::Cow;

use residency_common::Verdict;
use serde::Deserialize;

use crate::{
    FLOW_DATASET,
    action::Lifecycle,
    model::verdict_str,
    notes::{EvidenceGap, Pruned, ViolationChange},
};

/// One record, read back.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RecordView<'a> {
    #[serde(rename = "@timestamp", borrow)]
    pub timestamp: Cow<'a, str>,
    #[serde(borrow)]
    pub event: EventView<'a>,
    #[serde(default, borrow)]
    pub message: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub network: Option<NetworkView<'a>>,
    #[serde(default, borrow)]
    pub destination: Option<DestinationView<'a>>,
    #[serde(default, borrow)]
    pub process: Option<ProcessView<'a>>,
    #[serde(default, borrow)]
    pub user: Option<IdView<'a>>,
    #[serde(default, borrow)]
    pub rule: Option<RuleView<'a>>,
    #[serde(default, borrow)]
    pub tls: Option<TlsView<'a>>,
    #[serde(default, borrow)]
    pub residency: Option<ResidencyView<'a>>,
    /// The container of the flow's pod.
    #[serde(default, borrow)]
    pub container: Option<ContainerView<'a>>,
    /// The flow's pod.
    #[serde(default, borrow)]
    pub orchestrator: Option<OrchestratorView<'a>>,
}

/// `container.*` (ECS).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ContainerView<'a> {
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub image: Option<NameView<'a>>,
}

/// `orchestrator.*` (ECS): the pod.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct OrchestratorView<'a> {
    /// `kubernetes`.
    #[serde(default, borrow, rename = "type")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub namespace: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub resource: Option<ResourceView<'a>>,
}

/// `orchestrator.resource.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResourceView<'a> {
    /// `pod`.
    #[serde(default, borrow, rename = "type")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
    /// The pod's UID.
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
    /// The pod's labels, `key:value`.
    #[serde(default, borrow)]
    pub label: Vec<Cow<'a, str>>,
}

/// `tls.*` (ECS): what the connection's `ClientHello` said.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TlsView<'a> {
    #[serde(default, borrow)]
    pub client: Option<TlsClientView<'a>>,
}

/// `tls.client.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TlsClientView<'a> {
    /// The server name (SNI) the client asked for.
    #[serde(default, borrow)]
    pub server_name: Option<Cow<'a, str>>,
}

/// `event.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EventView<'a> {
    /// `connect` or `sendmsg` for a flow; the [`Lifecycle`] action else.
    #[serde(borrow)]
    pub action: Cow<'a, str>,
    /// `residency.flow`, `residency.lifecycle` (or, for checkpoint alerts,
    /// `residency.checkpoint`).
    #[serde(borrow)]
    pub dataset: Cow<'a, str>,
    #[serde(default, borrow)]
    pub kind: Option<Cow<'a, str>>,
}

/// `network.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NetworkView<'a> {
    /// `tcp`, `udp` or `unknown`.
    #[serde(default, borrow)]
    pub transport: Option<Cow<'a, str>>,
    /// `ipv4` or `ipv6`.
    #[serde(default, borrow, rename = "type")]
    pub ip_type: Option<Cow<'a, str>>,
}

/// `destination.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DestinationView<'a> {
    #[serde(borrow)]
    pub ip: Option<Cow<'a, str>>,
    pub port: Option<u16>,
    /// The name the process resolved, where one is known.
    #[serde(default, borrow)]
    pub domain: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub geo: Option<GeoView<'a>>,
    #[serde(default, borrow, rename = "as")]
    pub autonomous_system: Option<AsView<'a>>,
}

/// `destination.geo.*`: what the full database says.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GeoView<'a> {
    #[serde(default, borrow)]
    pub country_iso_code: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub continent_code: Option<Cow<'a, str>>,
}

/// `destination.as.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AsView<'a> {
    pub number: u32,
    #[serde(default, borrow)]
    pub organization: Option<NameView<'a>>,
}

/// `{"name": ...}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NameView<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

/// `{"id": ...}` (ECS ids are strings, even when they are numbers).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct IdView<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
}

/// `process.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProcessView<'a> {
    #[serde(default)]
    pub pid: Option<u64>,
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub executable: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub command_line: Option<Cow<'a, str>>,
}

/// `rule.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RuleView<'a> {
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub name: Option<Cow<'a, str>>,
}

/// `residency.*`: what ECS has no names for.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResidencyView<'a> {
    /// `allowed`, `flagged` or `blocked`.
    #[serde(default, borrow)]
    pub verdict: Option<Cow<'a, str>>,
    /// `monitor` or `enforce`.
    #[serde(default, borrow)]
    pub mode: Option<Cow<'a, str>>,
    /// The country the kernel judged.
    #[serde(default, borrow)]
    pub country: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub workload: Option<WorkloadView<'a>>,
    #[serde(default, borrow)]
    pub tenants: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub transfer_basis: Option<Cow<'a, str>>,
    /// What the basis is limited to for this country, with its decision.
    #[serde(default, borrow)]
    pub transfer_condition: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub policy: Option<PolicyRef<'a>>,
    #[serde(default)]
    pub boot_ns: Option<u64>,
    /// `events-lost` records: how many.
    #[serde(default)]
    pub lost: Option<LostView>,
    /// `evidence-gap` and `evidence-pruned` records: what is missing.
    #[serde(default)]
    pub evidence: Option<EvidenceView>,
    /// `violation-acknowledged` and `violation-resolved` records.
    #[serde(default)]
    pub violation: Option<ViolationChange>,
    /// What decided: `geoip`, `catalog`, `ambiguous`, `resolver-bypass`, ...
    #[serde(default, borrow)]
    pub decided_by: Option<Cow<'a, str>>,
    /// The destination's host name and its catalog entry (flows, when
    /// name tracking is on).
    #[serde(default, borrow)]
    pub name: Option<DestNameView<'a>>,
}

/// `residency.name.*`: how the destination's name is known.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DestNameView<'a> {
    /// `dns`, `sni` or `none`.
    #[serde(borrow)]
    pub source: Cow<'a, str>,
    /// The name (also `destination.domain`).
    #[serde(default, borrow)]
    pub value: Option<Cow<'a, str>>,
    /// The CNAME chain from the name to the address, in order.
    #[serde(default, borrow)]
    pub cnames: Vec<Cow<'a, str>>,
    /// Other live names of the workload for the same address.
    #[serde(default, borrow)]
    pub also: Vec<Cow<'a, str>>,
    /// Why no name is known.
    #[serde(default, borrow)]
    pub reason: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub endpoint: Option<EndpointView<'a>>,
}

/// `residency.name.endpoint.*`: the catalog entry of the name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EndpointView<'a> {
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// The pattern that matched.
    #[serde(borrow)]
    pub pattern: Cow<'a, str>,
    #[serde(borrow)]
    pub provider: Cow<'a, str>,
    #[serde(borrow)]
    pub service: Cow<'a, str>,
    /// Countries and set names as written, or `GLOBAL` / `UNKNOWN`.
    #[serde(borrow)]
    pub jurisdiction: Vec<Cow<'a, str>>,
    pub determines_region: bool,
    /// The provider's documentation the entry rests on.
    #[serde(borrow)]
    pub source: Cow<'a, str>,
    /// `built-in`, `config` or `deployment`.
    #[serde(borrow)]
    pub origin: Cow<'a, str>,
}

/// `residency.workload.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WorkloadView<'a> {
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow)]
    pub role: Cow<'a, str>,
}

/// `residency.policy.*`: in a flow, the policy that decided; in a
/// `policy-loaded` record ([`crate::PolicyLoaded`]), the one now in force.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PolicyRef<'a> {
    /// The policy version (configuration hash); absent when the policy
    /// was no longer held.
    #[serde(default, borrow)]
    pub hash: Option<Cow<'a, str>>,
    #[serde(default)]
    pub generation: Option<u32>,
    /// Where the configuration came from (`policy-loaded`).
    #[serde(default, borrow)]
    pub source: Option<Cow<'a, str>>,
    /// The configuration's text (`policy-loaded`).
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
}

/// `residency.lost.*`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default)]
pub struct LostView {
    pub count: u64,
    #[serde(default)]
    pub total: u64,
}

/// `residency.evidence.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EvidenceView {
    #[serde(default)]
    pub gap: Option<EvidenceGap>,
    #[serde(default)]
    pub pruned: Option<Pruned>,
}

/// Bytes that are not a residency record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a residency record: {0}")]
pub struct NotARecord(pub String);

impl<'a> RecordView<'a> {
    /// Reads a record's canonical bytes.
    ///
    /// # Errors
    /// If they are not a JSON object, or a field has the wrong type.
    pub fn parse(body: &'a [u8]) -> Result<Self, NotARecord> {
        serde_json::from_slice(body).map_err(|e| NotARecord(e.to_string()))
    }

    /// Reads a record already parsed as JSON (what the API returns, what a
    /// SIEM alert holds); a value that is not a record reads as empty.
    #[must_use]
    pub fn from_value(value: &'a serde_json::Value) -> Self {
        RecordView::deserialize(value).unwrap_or_default()
    }

    /// The event time.
    #[must_use]
    pub fn time(&self) -> Option<jiff::Timestamp> {
        self.timestamp.parse().ok()
    }

    /// Is it a decision (a flow)? A flow's totals record is not.
    #[must_use]
    pub fn is_flow(&self) -> bool {
        self.event.dataset == FLOW_DATASET && !self.is_totals()
    }

    /// Is it a flow's totals record (`flow-update`, `flow-end`)?
    #[must_use]
    pub fn is_totals(&self) -> bool {
        self.event.dataset == FLOW_DATASET
            && (self.event.action == crate::encode::FLOW_UPDATE_ACTION
                || self.event.action == crate::encode::FLOW_END_ACTION)
    }

    /// What a lifecycle record says happened (`None` for a flow, or an
    /// action this build does not know).
    #[must_use]
    pub fn lifecycle(&self) -> Option<Lifecycle> {
        if self.event.dataset == FLOW_DATASET {
            return None;
        }
        self.event.action.parse().ok()
    }

    /// A datagram (`sendmsg()`/`sendto()`) rather than a `connect()`?
    #[must_use]
    pub fn is_sendmsg(&self) -> bool {
        self.event.action == crate::encode::SENDMSG_ACTION
    }

    /// Does it say that events are missing ([`Lifecycle::is_gap`])?
    #[must_use]
    pub fn is_gap(&self) -> bool {
        self.lifecycle().is_some_and(Lifecycle::is_gap)
    }

    /// A decision that breached policy (blocked or flagged)?
    #[must_use]
    pub fn is_violation(&self) -> bool {
        self.is_flow()
            && matches!(
                self.verdict_kind(),
                Some(Verdict::Blocked | Verdict::Flagged)
            )
    }

    fn residency(&self) -> Option<&ResidencyView<'a>> {
        self.residency.as_ref()
    }

    /// `allowed`, `flagged` or `blocked` (flows).
    #[must_use]
    pub fn verdict(&self) -> Option<&str> {
        self.residency()?.verdict.as_deref()
    }

    /// The verdict, as the kernel's enum (`None` for a word this build
    /// does not know).
    #[must_use]
    pub fn verdict_kind(&self) -> Option<Verdict> {
        let v = self.verdict()?;
        [Verdict::Allowed, Verdict::Flagged, Verdict::Blocked]
            .into_iter()
            .find(|k| verdict_str(*k) == v)
    }

    /// The country the kernel judged (`GeoIP`, or an internal network's
    /// jurisdiction); none for a destination a rule or exception decided,
    /// or one without a country.
    #[must_use]
    pub fn judged_country(&self) -> Option<&str> {
        self.residency()?.country.as_deref()
    }

    /// The destination country: the one the kernel judged, else the one
    /// the full database gives (ISO 3166-1 alpha-2), for alerts.
    #[must_use]
    pub fn country(&self) -> Option<&str> {
        self.judged_country().or_else(|| {
            self.destination
                .as_ref()?
                .geo
                .as_ref()?
                .country_iso_code
                .as_deref()
        })
    }

    /// The tenants whose data the workload holds.
    pub fn tenants(&self) -> impl Iterator<Item = &str> {
        self.residency()
            .into_iter()
            .flat_map(|r| r.tenants.iter().map(AsRef::as_ref))
    }

    /// The workload's name.
    #[must_use]
    pub fn workload(&self) -> Option<&str> {
        Some(&self.residency()?.workload.as_ref()?.name)
    }

    /// The workload's role (`llm`, `crm-sync`, ...).
    #[must_use]
    pub fn role(&self) -> Option<&str> {
        Some(&self.residency()?.workload.as_ref()?.role)
    }

    /// `monitor` or `enforce`.
    #[must_use]
    pub fn mode(&self) -> Option<&str> {
        self.residency()?.mode.as_deref()
    }

    /// The transfer basis (`eea`, `adequacy`, `dpf`, `scc`, ...).
    #[must_use]
    pub fn transfer_basis(&self) -> Option<&str> {
        self.residency()?.transfer_basis.as_deref()
    }

    /// The condition on the transfer basis for this country, with the
    /// decision that sets it (Canada's adequacy: PIPEDA only); `None`
    /// where the basis is unconditional.
    #[must_use]
    pub fn transfer_condition(&self) -> Option<&str> {
        self.residency()?.transfer_condition.as_deref()
    }

    /// The policy version (configuration hash) that decided.
    #[must_use]
    pub fn policy_hash(&self) -> Option<&str> {
        self.residency()?
            .policy
            .as_ref()?
            .hash
            .as_deref()
            .filter(|h| !h.is_empty())
    }

    /// `CLOCK_BOOTTIME` of the kernel's decision.
    #[must_use]
    pub fn boot_ns(&self) -> Option<u64> {
        self.residency()?.boot_ns
    }

    /// The rule that decided: id and name.
    #[must_use]
    pub fn rule(&self) -> (Option<&str>, Option<&str>) {
        self.rule
            .as_ref()
            .map_or((None, None), |r| (r.id.as_deref(), r.name.as_deref()))
    }

    /// Destination address, as text.
    #[must_use]
    pub fn dst_ip(&self) -> Option<&str> {
        self.destination.as_ref()?.ip.as_deref()
    }

    /// Destination port.
    #[must_use]
    pub fn dst_port(&self) -> Option<u16> {
        self.destination.as_ref()?.port
    }

    /// Destination name, where DNS (or the TLS server name) gave one
    /// (ECS `destination.domain`).
    #[must_use]
    pub fn dst_domain(&self) -> Option<&str> {
        self.destination
            .as_ref()?
            .domain
            .as_deref()
            .filter(|d| !d.is_empty())
    }

    /// [`Self::dst_domain`], by the name the API and the formats use.
    #[must_use]
    pub fn domain(&self) -> Option<&str> {
        self.dst_domain()
    }

    /// The TLS server name (`ClientHello` SNI), on TLS records (ECS
    /// `tls.client.server_name`).
    #[must_use]
    pub fn server_name(&self) -> Option<&str> {
        self.tls
            .as_ref()?
            .client
            .as_ref()?
            .server_name
            .as_deref()
            .filter(|s| !s.is_empty())
    }

    /// What decided (`residency.decided_by`).
    #[must_use]
    pub fn decided_by(&self) -> Option<&str> {
        self.residency()?.decided_by.as_deref()
    }

    /// `residency.name`, whole.
    #[must_use]
    pub fn dest_name(&self) -> Option<&DestNameView<'a>> {
        self.residency()?.name.as_ref()
    }

    /// How the name is known: `dns`, `sni` or `none`.
    #[must_use]
    pub fn name_source(&self) -> Option<&str> {
        Some(&*self.dest_name()?.source).filter(|s| !s.is_empty())
    }

    /// Why no name is known, when none is.
    #[must_use]
    pub fn name_reason(&self) -> Option<&str> {
        self.dest_name()?.reason.as_deref()
    }

    /// The CNAME chain from the name to the address.
    pub fn cnames(&self) -> impl Iterator<Item = &str> {
        self.dest_name()
            .into_iter()
            .flat_map(|n| n.cnames.iter().map(AsRef::as_ref))
    }

    /// Other live names of the workload for the same address: when there
    /// are any, which one the connection was for is ambiguous.
    pub fn also_names(&self) -> impl Iterator<Item = &str> {
        self.dest_name()
            .into_iter()
            .flat_map(|n| n.also.iter().map(AsRef::as_ref))
    }

    /// The catalog entry of the name.
    #[must_use]
    pub fn endpoint(&self) -> Option<&EndpointView<'a>> {
        self.dest_name()?.endpoint.as_ref()
    }

    /// The catalog entry's id.
    #[must_use]
    pub fn endpoint_id(&self) -> Option<&str> {
        Some(&*self.endpoint()?.id).filter(|s| !s.is_empty())
    }

    /// The provider, per the catalog (`OpenAI`).
    #[must_use]
    pub fn provider(&self) -> Option<&str> {
        Some(&*self.endpoint()?.provider).filter(|s| !s.is_empty())
    }

    /// The provider's service, per the catalog (`API (EU data residency)`).
    #[must_use]
    pub fn service(&self) -> Option<&str> {
        Some(&*self.endpoint()?.service).filter(|s| !s.is_empty())
    }

    /// The documentation the catalog entry rests on.
    #[must_use]
    pub fn endpoint_source(&self) -> Option<&str> {
        Some(&*self.endpoint()?.source).filter(|s| !s.is_empty())
    }

    /// Where the provider says it processes data, as the catalog writes
    /// it.
    pub fn endpoint_jurisdiction(&self) -> impl Iterator<Item = &str> {
        self.endpoint()
            .into_iter()
            .flat_map(|e| e.jurisdiction.iter().map(AsRef::as_ref))
    }

    /// The destination's autonomous system: number and organisation.
    #[must_use]
    pub fn autonomous_system(&self) -> Option<(u32, Option<&str>)> {
        let a = self.destination.as_ref()?.autonomous_system.as_ref()?;
        Some((a.number, a.organization.as_ref().map(|o| &*o.name)))
    }

    /// `tcp`, `udp` or `unknown`.
    #[must_use]
    pub fn transport(&self) -> Option<&str> {
        self.network.as_ref()?.transport.as_deref()
    }

    /// Whether the destination is an IPv6 address.
    #[must_use]
    pub fn is_ipv6(&self) -> bool {
        self.network
            .as_ref()
            .and_then(|n| n.ip_type.as_deref())
            .map_or_else(
                || self.dst_ip().is_some_and(|ip| ip.contains(':')),
                |t| t == "ipv6",
            )
    }

    /// The calling process: pid, name and executable.
    #[must_use]
    pub fn process(&self) -> (Option<u64>, Option<&str>, Option<&str>) {
        self.process.as_ref().map_or((None, None, None), |p| {
            (p.pid, p.name.as_deref(), p.executable.as_deref())
        })
    }

    /// The calling process's command line.
    #[must_use]
    pub fn command_line(&self) -> Option<&str> {
        self.process.as_ref()?.command_line.as_deref()
    }

    /// The calling process's user id.
    #[must_use]
    pub fn user_id(&self) -> Option<&str> {
        Some(&self.user.as_ref()?.id)
    }

    /// The Kubernetes namespace of the flow's pod.
    #[must_use]
    pub fn namespace(&self) -> Option<&str> {
        self.orchestrator.as_ref()?.namespace.as_deref()
    }

    /// The flow's pod: its name.
    #[must_use]
    pub fn pod_name(&self) -> Option<&str> {
        self.orchestrator
            .as_ref()?
            .resource
            .as_ref()?
            .name
            .as_deref()
    }

    /// The flow's pod: its UID.
    #[must_use]
    pub fn pod_uid(&self) -> Option<&str> {
        self.orchestrator.as_ref()?.resource.as_ref()?.id.as_deref()
    }

    /// The pod's labels, as (key, value), in key order.
    pub fn pod_labels(&self) -> impl Iterator<Item = (&str, &str)> {
        self.orchestrator
            .iter()
            .flat_map(|o| o.resource.iter())
            .flat_map(|r| r.label.iter())
            .map(|l| l.split_once(':').unwrap_or((l, "")))
    }

    /// The container: id, name and image, as far as known.
    #[must_use]
    pub fn container(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        self.container.as_ref().map_or((None, None, None), |c| {
            (
                c.id.as_deref(),
                c.name.as_deref(),
                c.image.as_ref().map(|i| &*i.name).filter(|n| !n.is_empty()),
            )
        })
    }

    /// The human message of a lifecycle record.
    #[must_use]
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// Decisions an `events-lost` record reports lost.
    #[must_use]
    pub fn lost_count(&self) -> Option<u64> {
        Some(self.residency()?.lost?.count)
    }

    /// What an `evidence-gap` record says of the gap.
    #[must_use]
    pub fn gap(&self) -> Option<&EvidenceGap> {
        self.residency()?.evidence.as_ref()?.gap.as_ref()
    }

    /// What an `evidence-pruned` record says retention removed.
    #[must_use]
    pub fn pruned(&self) -> Option<&Pruned> {
        self.residency()?.evidence.as_ref()?.pruned.as_ref()
    }

    /// What a `violation-acknowledged` or `-resolved` record changed.
    #[must_use]
    pub fn violation_change(&self) -> Option<&ViolationChange> {
        self.residency()?.violation.as_ref()
    }

    /// The policy a `policy-loaded` record put in force: hash, source and
    /// text.
    #[must_use]
    pub fn policy_loaded(&self) -> Option<(&str, Option<&str>, Option<&str>)> {
        let p = self.residency()?.policy.as_ref()?;
        Some((p.hash.as_deref()?, p.source.as_deref(), p.text.as_deref()))
    }
}

/// The `residency` part of a record, whole: for formats that pass on what
/// ECS has no names for without naming it field by field.
#[must_use]
pub fn extension(doc: &serde_json::Value) -> Option<&serde_json::Map<String, serde_json::Value>> {
    doc.get(RESIDENCY)?.as_object()
}

/// The key of that part.
const RESIDENCY: &str = "residency";

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use residency_common::{DestKind, Hook, Verdict};

    use super::*;
    use crate::{
        Decider, EvidenceGap, Flow, GeoDetail, Index, PolicyView, ProcessInfo, Record, Transport,
        encode_flow_indexed, encode_line,
        model::{DestName, EndpointInfo, NameSource},
        policy::{ExceptionView, PolicyEntry, RuleView as Rule, TransferBasis, WorkloadView},
    };

    /// A workload of two tenants whose flow an exception allowed.
    fn flow() -> Flow {
        let view = PolicyView {
            hash: "c0ffee".into(),
            policies: vec![
                PolicyEntry {
                    mode: "monitor",
                    workload: None,
                    dpf: false,
                },
                PolicyEntry {
                    mode: "enforce",
                    workload: Some(WorkloadView {
                        name: "crm-sync".into(),
                        role: "crm-sync",
                        tenants: vec!["acme".into(), "globex".into()],
                    }),
                    dpf: false,
                },
            ],
            rules: vec![
                Rule {
                    name: "geoip".into(),
                    exception: None,
                },
                Rule {
                    name: "hubspot-us".into(),
                    exception: Some(ExceptionView {
                        basis: TransferBasis::Scc,
                        justification: "DPA of 2026-01-02".into(),
                        expires: jiff::Timestamp::from_second(1_900_000_000).unwrap(),
                    }),
                },
            ],
        };
        Flow {
            time: jiff::Timestamp::from_nanosecond(1_800_000_000_123_456_789).unwrap(),
            boot_ns: 99,
            cgroup_id: 7,
            cgroup_path: Some("/crm.service".into()),
            pid: 41,
            tid: 42,
            uid: 1000,
            gid: 1000,
            process_name: "sync \"job\"".into(),
            process: Some(Arc::new(ProcessInfo {
                executable: Some("/opt/crm/bin/sync".into()),
                args: vec!["sync".into(), "--all".into()],
                args_truncated: false,
            })),
            hook: Hook::Sendmsg4,
            transport: Transport::Udp,
            dest_ip: "198.51.100.7".parse().unwrap(),
            dest_port: 443,
            v4_mapped: false,
            stale: false,
            verdict: Verdict::Flagged,
            rule_id: 1,
            dest_kind: DestKind::Exception,
            country: "US".parse().ok(),
            geo_gen: 0,
            geo_version: None,
            detail: Some(Arc::new(GeoDetail {
                country: "US".parse().ok(),
                registered_country: None,
                continent: Some("NA".into()),
                asn: Some(64_500),
                as_org: Some("Example \\ Org".into()),
            })),
            policy: 1,
            policy_gen: 3,
            policy_view: Some(Decider(Arc::new(view))),
            name: None,
            cookie: 0,
            pod: None,
            flow_id: None,
            totals: None,
        }
    }

    #[test]
    fn every_field_the_encoder_writes_reads_back() {
        let mut line = Vec::new();
        let columns = encode_flow_indexed(&flow(), &mut line).unwrap();
        let r = RecordView::parse(&line).unwrap();
        assert!(r.is_flow() && r.is_violation() && !r.is_gap());
        assert_eq!(r.lifecycle(), None);
        assert_eq!(r.time().unwrap().as_nanosecond(), 1_800_000_000_123_456_789);
        assert_eq!(r.event.action, "sendmsg");
        assert_eq!(r.verdict(), Some("flagged"));
        assert_eq!(r.mode(), Some("enforce"));
        assert_eq!(r.country(), Some("US"));
        assert_eq!(r.tenants().collect::<Vec<_>>(), ["acme", "globex"]);
        assert_eq!(
            (r.workload(), r.role()),
            (Some("crm-sync"), Some("crm-sync"))
        );
        assert_eq!(r.transfer_basis(), Some("scc"));
        assert_eq!(r.transfer_condition(), None, "an SCC has no condition");
        assert_eq!(r.policy_hash(), Some("c0ffee"));
        assert_eq!(r.boot_ns(), Some(99));
        assert_eq!(r.rule(), (Some("1"), Some("hubspot-us")));
        assert_eq!(
            (r.dst_ip(), r.dst_port()),
            (Some("198.51.100.7"), Some(443))
        );
        assert_eq!(r.dst_domain(), None);
        assert_eq!(
            (r.server_name(), r.name_source(), r.provider()),
            (None, None, None)
        );
        assert_eq!(r.decided_by(), Some("exception"));
        assert_eq!(
            r.autonomous_system(),
            Some((64_500, Some("Example \\ Org")))
        );
        assert_eq!(r.transport(), Some("udp"));
        assert!(!r.is_ipv6());
        assert_eq!(
            r.process(),
            (Some(41), Some("sync \"job\""), Some("/opt/crm/bin/sync"))
        );
        assert_eq!(r.command_line(), Some("sync --all"));
        assert_eq!(r.user_id(), Some("1000"));
        assert_eq!(Index::of(&line).unwrap(), columns);
    }

    #[test]
    fn a_name_and_its_catalog_entry_read_back() {
        let mut f = flow();
        f.dest_kind = DestKind::Catalog;
        f.rule_id = 0;
        f.country = None;
        f.name = Some(Box::new(DestName {
            name: Some("eu.api.openai.com".into()),
            source: NameSource::Dns,
            cnames: vec!["eu.api.openai.com.cdn.example".into()],
            also: vec!["other.example".into()],
            endpoint: Some(Arc::new(EndpointInfo {
                id: "openai-api-eu".into(),
                pattern: "eu.api.openai.com".into(),
                provider: "OpenAI".into(),
                service: "API (EU data residency)".into(),
                jurisdiction: vec!["EEA".into(), "CH".into()],
                countries: vec!["DE".parse().unwrap(), "CH".parse().unwrap()],
                determines_region: true,
                source: "https://example.com/docs".into(),
                origin: "built-in",
            })),
            reason: None,
            sni: Some("eu.api.openai.com".into()),
        }));
        let mut line = Vec::new();
        let columns = encode_flow_indexed(&f, &mut line).unwrap();
        let r = RecordView::parse(&line).unwrap();
        assert_eq!(r.domain(), Some("eu.api.openai.com"));
        assert_eq!(r.dst_domain(), r.domain());
        assert_eq!(r.server_name(), Some("eu.api.openai.com"));
        assert_eq!(r.decided_by(), Some("catalog"));
        assert_eq!(r.name_source(), Some("dns"));
        assert_eq!(r.name_reason(), None);
        assert_eq!(
            r.cnames().collect::<Vec<_>>(),
            ["eu.api.openai.com.cdn.example"]
        );
        assert_eq!(r.also_names().collect::<Vec<_>>(), ["other.example"]);
        assert_eq!(r.endpoint_id(), Some("openai-api-eu"));
        assert_eq!(r.provider(), Some("OpenAI"));
        assert_eq!(r.service(), Some("API (EU data residency)"));
        assert_eq!(r.endpoint_source(), Some("https://example.com/docs"));
        assert_eq!(r.endpoint_jurisdiction().collect::<Vec<_>>(), ["EEA", "CH"]);
        let e = r.endpoint().unwrap();
        assert_eq!(
            (&*e.pattern, e.determines_region, &*e.origin),
            ("eu.api.openai.com", true, "built-in")
        );
        assert_eq!(columns.dst_name.as_deref(), Some("eu.api.openai.com"));
        assert_eq!(columns.provider.as_deref(), Some("OpenAI"));
        assert_eq!(columns.service.as_deref(), Some("API (EU data residency)"));
        assert_eq!(Index::of(&line).unwrap(), columns);

        // A name that is not known says why, and nothing else.
        f.name = Some(Box::new(DestName::unknown("no-dns-answer")));
        f.dest_kind = DestKind::Unknown;
        let mut line = Vec::new();
        let columns = encode_flow_indexed(&f, &mut line).unwrap();
        let r = RecordView::parse(&line).unwrap();
        assert_eq!(
            (
                r.domain(),
                r.server_name(),
                r.name_source(),
                r.name_reason()
            ),
            (None, None, Some("none"), Some("no-dns-answer"))
        );
        assert_eq!(
            (r.provider(), r.service(), r.endpoint_id()),
            (None, None, None)
        );
        assert_eq!(r.also_names().count(), 0);
        assert_eq!(Index::of(&line).unwrap(), columns);
    }

    #[test]
    fn a_pod_reads_back() {
        let mut f = flow();
        f.pod = Some(Arc::new(crate::PodInfo {
            namespace: "crm".into(),
            name: "sync-0".into(),
            uid: "9c1d5a6b-7c8d-4e0f-8b7a-e1c52f3a4e5b".into(),
            labels: [("app".to_owned(), "sync".to_owned())].into(),
            container: Some(crate::ContainerInfo {
                id: "cd".repeat(32),
                name: "sync".into(),
                image: "registry.example/sync:2".into(),
            }),
        }));
        let mut line = Vec::new();
        let columns = encode_flow_indexed(&f, &mut line).unwrap();
        let r = RecordView::parse(&line).unwrap();
        assert_eq!(r.namespace(), Some("crm"));
        assert_eq!(r.pod_name(), Some("sync-0"));
        assert_eq!(r.pod_uid(), Some("9c1d5a6b-7c8d-4e0f-8b7a-e1c52f3a4e5b"));
        assert_eq!(r.pod_labels().collect::<Vec<_>>(), [("app", "sync")]);
        let id = "cd".repeat(32);
        assert_eq!(
            r.container(),
            (
                Some(id.as_str()),
                Some("sync"),
                Some("registry.example/sync:2")
            )
        );
        assert_eq!(Index::of(&line).unwrap(), columns);
        assert_eq!(columns.namespace.as_deref(), Some("crm"));
        assert_eq!(columns.pod.as_deref(), Some("sync-0"));

        // Without one, nothing reads back.
        let mut line = Vec::new();
        encode_flow_indexed(&flow(), &mut line).unwrap();
        let r = RecordView::parse(&line).unwrap();
        assert_eq!(
            (r.namespace(), r.pod_name(), r.container().0),
            (None, None, None)
        );
        assert_eq!(r.pod_labels().count(), 0);
    }

    #[test]
    fn a_transfer_condition_reads_back() {
        let mut f = flow();
        f.dest_kind = DestKind::Geo;
        f.rule_id = 0;
        f.country = "CA".parse().ok();
        let mut line = Vec::new();
        let columns = encode_flow_indexed(&f, &mut line).unwrap();
        let r = RecordView::parse(&line).unwrap();
        assert_eq!(r.transfer_basis(), Some("adequacy"));
        assert_eq!(
            r.transfer_condition(),
            Some("commercial organisations subject to PIPEDA only (Decision 2002/2/EC)")
        );
        assert_eq!(Index::of(&line).unwrap(), columns);
    }

    #[test]
    fn lifecycle_records_read_back_as_their_kind() {
        let read = |record: Record| {
            let mut line = Vec::new();
            encode_line(&record, &mut line).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
            let r = RecordView::from_value(&v);
            (
                r.lifecycle(),
                r.is_gap(),
                r.lost_count(),
                r.gap().map(|g| (g.reason.clone(), g.after_seq, g.seq)),
                r.message().map(str::to_owned),
            )
        };
        let (action, gap, lost, _, _) = read(Record::Lost { count: 3, total: 9 });
        assert_eq!(
            (action, gap, lost),
            (Some(Lifecycle::EventsLost), true, Some(3))
        );
        let crash = EvidenceGap {
            reason: EvidenceGap::UNCLEAN_SHUTDOWN.into(),
            after_seq: Some(41),
            after: Some("2026-12-07T00:00:00Z".into()),
            seq: None,
            ..EvidenceGap::default()
        };
        let (action, gap, _, detail, message) = read(crash.record("it stopped".into()));
        assert_eq!((action, gap), (Some(Lifecycle::EvidenceGap), true));
        assert_eq!(detail, Some(("unclean-shutdown".into(), Some(41), None)));
        assert_eq!(message.as_deref(), Some("it stopped"));
        let note = Record::note(
            Lifecycle::PolicyLoaded,
            "in force".into(),
            serde_json::json!({ "policy": { "hash": "ab", "generation": 2 } }),
        );
        let (action, gap, ..) = read(note);
        assert_eq!((action, gap), (Some(Lifecycle::PolicyLoaded), false));
        // An action of a later build is not taken for a known one.
        let v = serde_json::json!({"@timestamp": "2026-01-01T00:00:00Z",
            "event": {"action": "dns-answer", "dataset": "residency.lifecycle"}});
        assert_eq!(RecordView::from_value(&v).lifecycle(), None);
        assert!(RecordView::parse(b"{\"event\": 1}").is_err());
        assert!(
            Index::of(b"{\"@timestamp\": \"2026-01-01T00:00:00Z\"}").is_err(),
            "the columns need event.action and event.dataset"
        );
    }
}
