//! What a SIEM sink is given: one evidence record (or one signed
//! checkpoint), classified.
//!
//! The record's bytes are the ECS document the evidence chain holds, so
//! every format says what the chain says, and carries the record's
//! sequence number so that a SIEM entry can be traced back to it. Formats
//! read its fields through the record crate's typed view
//! ([`Alert::record`]); the document itself is kept for the formats that
//! pass it on whole (ECS, and OCSF's `unmapped`).

use std::fmt::Write as _;

use jiff::Timestamp;
use residency_record::{CHECKPOINT_DATASET, MODULE, RecordView};
use serde_json::Value;

/// `event.action` of a checkpoint alert (a checkpoint is not a record of
/// the chain, so it is not a [`residency_record::Lifecycle`]).
pub const CHECKPOINT_ACTION: &str = "evidence-checkpoint";

/// What an alert reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// A flow, whatever its verdict (sinks that receive `flows`).
    Flow,
    /// A flow the policy flagged or blocked (sinks that receive
    /// `violations`).
    Violation,
    /// A signed checkpoint of the evidence chain (sinks that receive
    /// `checkpoints`).
    Checkpoint,
    /// A record that events are missing: the kernel dropped events, the
    /// daemon stopped uncleanly, or a sink skipped records (sinks that
    /// receive `gaps`).
    Gap,
}

impl AlertKind {
    /// The name used in configuration (`receives = [...]`) and metrics.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            AlertKind::Flow => "flows",
            AlertKind::Violation => "violations",
            AlertKind::Checkpoint => "checkpoints",
            AlertKind::Gap => "gaps",
        }
    }
}

/// One message for a sink.
#[derive(Debug, Clone)]
pub struct Alert {
    pub kind: AlertKind,
    /// The evidence sequence number: of the record, or the last record a
    /// checkpoint signs.
    pub seq: u64,
    /// When the event happened (the record's `@timestamp`), not when it is
    /// sent.
    pub time: Timestamp,
    /// The ECS document (for a checkpoint, see [`Alert::checkpoint`]).
    pub doc: Value,
    /// For a checkpoint alert, the checkpoint.
    pub checkpoint: Option<Box<CheckpointInfo>>,
    /// How many occurrences this alert stands for: 1, or more when
    /// throttling folded repeats into it.
    pub count: u64,
    /// With `count > 1`: the first and last occurrence folded in.
    pub span: Option<(Timestamp, Timestamp)>,
}

/// A signed checkpoint as sinks receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    pub seq: u64,
    pub time: Timestamp,
    /// The chain head, hex.
    pub head: String,
    /// Key id (hex fingerprint of the public key).
    pub key_id: String,
    /// Ed25519 signature, base64.
    pub signature: String,
    /// The public key, as `residency evidence verify --public-key` takes it.
    pub public_key: String,
    /// Why it was signed: records, interval, close, pruned, requested.
    pub reason: String,
}

impl Alert {
    /// Classifies one evidence record: flows (and violations among them),
    /// and gap records ([`residency_record::Lifecycle::is_gap`]). Other
    /// records (start, stop, policy loads, violation acknowledgements) are
    /// not alerts: none.
    ///
    /// A violating flow yields both a `Flow` and a `Violation` alert; the
    /// sink keeps whichever it receives.
    #[must_use]
    pub fn from_record(seq: u64, body: &[u8]) -> Vec<Alert> {
        let Ok(doc) = serde_json::from_slice::<Value>(body) else {
            return Vec::new();
        };
        let (time, flow, violating, gap) = {
            let r = RecordView::from_value(&doc);
            (
                r.time().unwrap_or(Timestamp::UNIX_EPOCH),
                r.is_flow(),
                r.is_violation(),
                r.is_gap(),
            )
        };
        let one = |kind, doc: Value| Alert {
            kind,
            seq,
            time,
            doc,
            checkpoint: None,
            count: 1,
            span: None,
        };
        if flow {
            if violating {
                vec![
                    one(AlertKind::Flow, doc.clone()),
                    one(AlertKind::Violation, doc),
                ]
            } else {
                vec![one(AlertKind::Flow, doc)]
            }
        } else if gap {
            vec![one(AlertKind::Gap, doc)]
        } else {
            Vec::new()
        }
    }

    /// A checkpoint as an alert; its document is ECS-shaped
    /// (`event.dataset` `residency.checkpoint`, fields under
    /// `residency.checkpoint`).
    #[must_use]
    pub fn checkpoint(c: &CheckpointInfo) -> Alert {
        let doc = serde_json::json!({
            "@timestamp": c.time.to_string(),
            "event": {
                "kind": "event",
                "category": ["configuration"],
                "type": ["info"],
                "action": CHECKPOINT_ACTION,
                "module": MODULE,
                "dataset": CHECKPOINT_DATASET,
                "sequence": c.seq,
            },
            "residency": {
                "checkpoint": {
                    "seq": c.seq,
                    "head": c.head,
                    "key_id": c.key_id,
                    "signature": c.signature,
                    "public_key": c.public_key,
                    "reason": c.reason,
                    "verify": c.verify_command(),
                }
            }
        });
        Alert {
            kind: AlertKind::Checkpoint,
            seq: c.seq,
            time: c.time,
            doc,
            checkpoint: Some(Box::new(c.clone())),
            count: 1,
            span: None,
        }
    }

    /// The record, read through its typed view (a checkpoint alert's
    /// reads as a record with only time and event).
    #[must_use]
    pub fn record(&self) -> RecordView<'_> {
        RecordView::from_value(&self.doc)
    }

    /// A one-line human summary, for syslog MSG, CEF name and webhook
    /// titles: "blocked egress to 203.0.113.7:443 (US) by crm-sync".
    #[must_use]
    pub fn summary(&self) -> String {
        self.summary_of(&self.record())
    }

    /// [`Alert::summary`], for a format that has the view at hand.
    #[must_use]
    pub fn summary_of(&self, r: &RecordView<'_>) -> String {
        match self.kind {
            AlertKind::Checkpoint => format!("evidence checkpoint at seq {}", self.seq),
            AlertKind::Gap => format!(
                "evidence gap: {}",
                Some(&*r.event.action)
                    .filter(|a| !a.is_empty())
                    .unwrap_or("gap")
            ),
            AlertKind::Flow | AlertKind::Violation => {
                let mut s = format!(
                    "{} egress to {}:{}",
                    r.verdict().unwrap_or("unknown"),
                    r.dst_domain().or(r.dst_ip()).unwrap_or("?"),
                    r.dst_port().unwrap_or(0)
                );
                if let Some(c) = r.country() {
                    let _ = write!(s, " ({c})");
                }
                if let Some(w) = r.workload() {
                    let _ = write!(s, " by {w}");
                }
                if self.count > 1 {
                    let _ = write!(s, ", {} times", self.count);
                }
                s
            }
        }
    }
}

impl CheckpointInfo {
    /// How to check a copy of the chain against this checkpoint.
    #[must_use]
    pub fn verify_command(&self) -> String {
        format!(
            "residency evidence verify --checkpoint {}:{}",
            self.seq, self.head
        )
    }
}
