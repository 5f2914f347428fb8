//! The columns the store indexes, derived from a record's canonical bytes.
//!
//! Ingest and `verify` both derive them with [`Index::of`], from the body
//! alone, so a column that was edited in the database (to hide a record
//! from a filter) no longer matches its body and `verify` says so.

use std::borrow::Cow;

use serde::Deserialize;

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
}

#[derive(Deserialize)]
struct Doc<'a> {
    #[serde(rename = "@timestamp", borrow)]
    timestamp: Cow<'a, str>,
    #[serde(borrow)]
    event: Event<'a>,
    #[serde(default, borrow)]
    destination: Option<Destination<'a>>,
    #[serde(default, borrow)]
    rule: Option<RuleDoc<'a>>,
    #[serde(default, borrow)]
    residency: Option<Residency<'a>>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    action: Cow<'a, str>,
    #[serde(borrow)]
    dataset: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Destination<'a> {
    #[serde(borrow)]
    ip: Cow<'a, str>,
    port: u16,
    #[serde(default, borrow)]
    domain: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RuleDoc<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Residency<'a> {
    #[serde(default, borrow)]
    verdict: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    country: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    workload: Option<Workload<'a>>,
    #[serde(default, borrow)]
    tenants: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    transfer_basis: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    policy: Option<Policy<'a>>,
    #[serde(default)]
    boot_ns: Option<u64>,
}

#[derive(Deserialize)]
struct Workload<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    role: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Policy<'a> {
    #[serde(default, borrow)]
    hash: Option<Cow<'a, str>>,
}

const FLOW_DATASET: &str = "residency.flow";

impl Index {
    /// Derives the columns from a record's canonical bytes.
    ///
    /// # Errors
    /// If the bytes are not a residency record.
    pub fn of(body: &[u8]) -> Result<Self, String> {
        let doc: Doc<'_> =
            serde_json::from_slice(body).map_err(|e| format!("not a residency record: {e}"))?;
        let ts = doc
            .timestamp
            .parse::<jiff::Timestamp>()
            .map_err(|e| format!("@timestamp: {e}"))?;
        let ts = i64::try_from(ts.as_nanosecond()).map_err(|_| "@timestamp out of range")?;
        let flow = doc.event.dataset == FLOW_DATASET;
        let r = doc.residency;
        let policy = r
            .as_ref()
            .and_then(|r| r.policy.as_ref())
            .and_then(|p| p.hash.as_deref())
            .filter(|h| !h.is_empty())
            .map(str::to_owned);
        let Some(r) = r.filter(|_| flow) else {
            return Ok(Index {
                ts,
                kind: doc.event.action.into_owned(),
                policy,
                ..Index::default()
            });
        };
        let dest = doc.destination;
        Ok(Index {
            ts,
            kind: "flow".to_owned(),
            verdict: r.verdict.map(Cow::into_owned),
            role: r.workload.as_ref().map(|w| w.role.clone().into_owned()),
            workload: r.workload.map(|w| w.name.into_owned()),
            tenants: r.tenants.into_iter().map(Cow::into_owned).collect(),
            country: r.country.map(Cow::into_owned),
            dst_ip: dest.as_ref().map(|d| d.ip.clone().into_owned()),
            dst_port: dest.as_ref().map(|d| d.port),
            dst_name: dest.and_then(|d| d.domain.map(Cow::into_owned)),
            basis: r.transfer_basis.map(Cow::into_owned),
            rule: doc.rule.map(|r| r.name.into_owned()),
            policy,
            boot_ns: r.boot_ns,
        })
    }

    /// Is this a decision that breached policy (blocked or flagged)?
    #[must_use]
    pub fn is_violation(&self) -> bool {
        self.kind == "flow" && matches!(self.verdict.as_deref(), Some("blocked" | "flagged"))
    }

    /// The tenants as stored in the `tenants` column.
    #[must_use]
    pub fn tenants_column(&self) -> Option<String> {
        (!self.tenants.is_empty()).then(|| self.tenants.join(","))
    }
}
