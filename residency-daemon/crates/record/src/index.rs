//! The columns the store indexes, derived from a record's canonical bytes.
//!
//! Ingest and `verify` both derive them with [`Index::of`], from the body
//! alone, so a column that was edited in the database (to hide a record
//! from a filter) no longer matches its body and `verify` says so.

use crate::{action::Lifecycle, view::RecordView};

/// The `kind` column of a flow; lifecycle records have their action.
pub const FLOW: &str = "flow";
/// The `kind` column of bytes the store kept but could not index (a bug:
/// only the record crate's encoder writes records; `verify` names them).
pub const UNINDEXED: &str = "unindexed";

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

impl Index {
    /// Derives the columns from a record's canonical bytes.
    ///
    /// # Errors
    /// If the bytes are not a residency record.
    pub fn of(body: &[u8]) -> Result<Self, String> {
        Self::from_view(&RecordView::parse(body).map_err(|e| e.to_string())?)
    }

    /// The columns of a record already read.
    ///
    /// # Errors
    /// If its `@timestamp` is not a time.
    pub fn from_view(r: &RecordView<'_>) -> Result<Self, String> {
        // The view reads absent parts as empty; a record has these.
        if r.event.action.is_empty() || r.event.dataset.is_empty() {
            return Err("not a residency record: no event.action or event.dataset".into());
        }
        let ts = r
            .timestamp
            .parse::<jiff::Timestamp>()
            .map_err(|e| format!("@timestamp: {e}"))?;
        let ts = i64::try_from(ts.as_nanosecond()).map_err(|_| "@timestamp out of range")?;
        let policy = r.policy_hash().map(str::to_owned);
        // A flow without its `residency` part (damaged, or not ours) has
        // no verdict to index: it is indexed by its action alone.
        let Some(res) = r.residency.as_ref().filter(|_| r.is_flow()) else {
            return Ok(Index {
                ts,
                kind: r.event.action.clone().into_owned(),
                policy,
                ..Index::default()
            });
        };
        Ok(Index {
            ts,
            kind: FLOW.to_owned(),
            verdict: res.verdict.as_deref().map(str::to_owned),
            workload: r.workload().map(str::to_owned),
            role: r.role().map(str::to_owned),
            tenants: r.tenants().map(str::to_owned).collect(),
            country: r.judged_country().map(str::to_owned),
            dst_ip: r.dst_ip().map(str::to_owned),
            dst_port: r.dst_port(),
            dst_name: r.dst_domain().map(str::to_owned),
            basis: r.transfer_basis().map(str::to_owned),
            rule: r.rule().1.map(str::to_owned),
            policy,
            boot_ns: r.boot_ns(),
        })
    }

    /// A flow's columns?
    #[must_use]
    pub fn is_flow(&self) -> bool {
        self.kind == FLOW
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
