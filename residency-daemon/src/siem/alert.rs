//! What a SIEM sink is given: one evidence record (or one signed
//! checkpoint), classified, with accessors for the fields every format
//! needs.
//!
//! The record's bytes are the ECS document the evidence chain holds, so
//! every format says what the chain says, and carries the record's
//! sequence number so that a SIEM entry can be traced back to it.

use std::fmt::Write as _;

use jiff::Timestamp;
use serde_json::Value;

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
    /// and gap records. Other records (start, stop, policy loads, violation
    /// acknowledgements) are not alerts: `None`.
    ///
    /// A violating flow yields both a `Flow` and a `Violation` alert; the
    /// sink keeps whichever it receives.
    #[must_use]
    pub fn from_record(seq: u64, body: &[u8]) -> Vec<Alert> {
        let Ok(doc) = serde_json::from_slice::<Value>(body) else {
            return Vec::new();
        };
        let time = doc
            .get("@timestamp")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let dataset = doc
            .pointer("/event/dataset")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let action = doc
            .pointer("/event/action")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let one = |kind, doc: Value| Alert {
            kind,
            seq,
            time,
            doc,
            count: 1,
            span: None,
        };
        if dataset == "residency.flow" {
            let violating = matches!(
                doc.pointer("/residency/verdict").and_then(Value::as_str),
                Some("blocked" | "flagged")
            );
            if violating {
                vec![
                    one(AlertKind::Flow, doc.clone()),
                    one(AlertKind::Violation, doc),
                ]
            } else {
                vec![one(AlertKind::Flow, doc)]
            }
        } else if matches!(action, "evidence-gap" | "events-lost" | "sink-gap") {
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
                "action": "evidence-checkpoint",
                "module": "residency",
                "dataset": "residency.checkpoint",
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
                    "verify": format!("residency evidence verify --checkpoint {}:{}", c.seq, c.head),
                }
            }
        });
        Alert {
            kind: AlertKind::Checkpoint,
            seq: c.seq,
            time: c.time,
            doc,
            count: 1,
            span: None,
        }
    }

    fn str_at(&self, pointer: &str) -> Option<&str> {
        self.doc.pointer(pointer).and_then(Value::as_str)
    }

    /// `allowed`, `flagged` or `blocked` (flows).
    #[must_use]
    pub fn verdict(&self) -> Option<&str> {
        self.str_at("/residency/verdict")
    }

    /// The destination country (ISO 3166-1 alpha-2) the policy judged.
    #[must_use]
    pub fn country(&self) -> Option<&str> {
        self.str_at("/residency/country")
            .or_else(|| self.str_at("/destination/geo/country_iso_code"))
    }

    /// The tenants whose data the workload holds.
    #[must_use]
    pub fn tenants(&self) -> Vec<&str> {
        self.doc
            .pointer("/residency/tenants")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// The workload's name.
    #[must_use]
    pub fn workload(&self) -> Option<&str> {
        self.str_at("/residency/workload/name")
    }

    /// The workload's role (llm-inference, crm-sync, ...).
    #[must_use]
    pub fn role(&self) -> Option<&str> {
        self.str_at("/residency/workload/role")
    }

    /// The rule that decided: (id, name).
    #[must_use]
    pub fn rule(&self) -> (Option<&str>, Option<&str>) {
        (self.str_at("/rule/id"), self.str_at("/rule/name"))
    }

    /// Destination address, as text.
    #[must_use]
    pub fn dst_ip(&self) -> Option<&str> {
        self.str_at("/destination/ip")
    }

    /// Destination port.
    #[must_use]
    pub fn dst_port(&self) -> Option<u16> {
        self.doc
            .pointer("/destination/port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
    }

    /// Destination name, where DNS gave one.
    #[must_use]
    pub fn dst_domain(&self) -> Option<&str> {
        self.str_at("/destination/domain")
    }

    /// `tcp` or `udp`.
    #[must_use]
    pub fn transport(&self) -> Option<&str> {
        self.str_at("/network/transport")
    }

    /// The process: (pid, name, executable).
    #[must_use]
    pub fn process(&self) -> (Option<u64>, Option<&str>, Option<&str>) {
        (
            self.doc.pointer("/process/pid").and_then(Value::as_u64),
            self.str_at("/process/name"),
            self.str_at("/process/executable"),
        )
    }

    /// The policy version that decided (its hash).
    #[must_use]
    pub fn policy_hash(&self) -> Option<&str> {
        self.str_at("/residency/policy/hash")
    }

    /// `monitor` or `enforce`.
    #[must_use]
    pub fn mode(&self) -> Option<&str> {
        self.str_at("/residency/mode")
    }

    /// The transfer basis (eea, adequacy, dpf, scc, bcr, art49, local,
    /// none).
    #[must_use]
    pub fn transfer_basis(&self) -> Option<&str> {
        self.str_at("/residency/transfer_basis")
    }

    /// The checkpoint's fields, for a checkpoint alert.
    #[must_use]
    pub fn checkpoint_fields(&self) -> Option<&serde_json::Map<String, Value>> {
        self.doc
            .pointer("/residency/checkpoint")
            .and_then(Value::as_object)
    }

    /// A one-line human summary, for syslog MSG, CEF name and webhook
    /// titles: "blocked egress to 203.0.113.7:443 (US) by crm-sync".
    #[must_use]
    pub fn summary(&self) -> String {
        match self.kind {
            AlertKind::Checkpoint => format!("evidence checkpoint at seq {}", self.seq),
            AlertKind::Gap => format!(
                "evidence gap: {}",
                self.str_at("/event/action").unwrap_or("gap")
            ),
            AlertKind::Flow | AlertKind::Violation => {
                let mut s = format!(
                    "{} egress to {}:{}",
                    self.verdict().unwrap_or("unknown"),
                    self.dst_domain().or(self.dst_ip()).unwrap_or("?"),
                    self.dst_port().unwrap_or(0)
                );
                if let Some(c) = self.country() {
                    let _ = write!(s, " ({c})");
                }
                if let Some(w) = self.workload() {
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
