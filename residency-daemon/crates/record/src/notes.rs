//! The lifecycle records whose details a reader acts on, typed on both
//! sides: the writer serialises these structs under `residency.*`, and
//! [`crate::view`] reads the same structs back (`evidence verify` rebuilds
//! the violations and policy versions from them, SIEM sinks report gaps).
//! Notes that are only ever read by people (a `GeoIP` database loaded, a
//! sink skipping) carry free-form fields instead.
//!
//! Every field reads back with a default when absent, so that a damaged
//! note still reads as the kind of record it is.

use serde::{Deserialize, Serialize};

use crate::{Lifecycle, Record};

/// Why records are missing from the evidence chain: the
/// `residency.evidence.gap` of an `evidence-gap` record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EvidenceGap {
    /// `unclean-shutdown`, `damaged-record`, `daemon-away` or
    /// `store-unwritable`.
    pub reason: String,
    /// The last record before the gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// That record's time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// The record that cannot be read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// When the gap ended (RFC 3339): the daemon back, the store writable
    /// again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// How long the gap lasted, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub milliseconds: Option<u64>,
    /// Records that were made but not stored (`store-unwritable`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub records_not_stored: Option<u64>,
    /// Decisions the kernel made in the gap that no record holds: they
    /// found its ring buffer full (`daemon-away`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decisions_not_recorded: Option<u64>,
    /// Decisions the kernel made in the gap that waited in its ring buffer
    /// and were recorded when the daemon came back (`daemon-away`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decisions_recorded_late: Option<u64>,
    /// Whether the policy stayed in force in the gap: `kept` (the programs
    /// stayed attached and decided) or `off` (nothing was attached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<String>,
}

impl EvidenceGap {
    /// The previous run stopped without closing the store.
    pub const UNCLEAN_SHUTDOWN: &'static str = "unclean-shutdown";
    /// A stored record cannot be read back.
    pub const DAMAGED_RECORD: &'static str = "damaged-record";
    /// No daemon read the kernel's decisions for a while (killed, stopped,
    /// upgraded); the programs may have stayed attached.
    pub const DAEMON_AWAY: &'static str = "daemon-away";
    /// The evidence store could not take writes (a full disk) for a while.
    pub const STORE_UNWRITABLE: &'static str = "store-unwritable";
    /// [`EvidenceGap::enforcement`]: the policy stayed in force.
    pub const ENFORCEMENT_KEPT: &'static str = "kept";
    /// [`EvidenceGap::enforcement`]: nothing was attached.
    pub const ENFORCEMENT_OFF: &'static str = "off";

    /// The `evidence-gap` record.
    #[must_use]
    pub fn record(self, message: String) -> Record {
        Record::note(
            Lifecycle::EvidenceGap,
            message,
            serde_json::json!({ "evidence": { "gap": self } }),
        )
    }
}

/// What retention removed: the `residency.evidence.pruned` of an
/// `evidence-pruned` record. The chain goes on from `through_hash`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pruned {
    /// `retention_days` or `max_size_mib`.
    pub reason: String,
    pub first_seq: u64,
    pub through_seq: u64,
    /// The chain hash of record `through_seq`, hex.
    pub through_hash: String,
    pub records: u64,
    /// Record `through_seq`'s time (RFC 3339).
    pub through_time: String,
}

impl Pruned {
    /// The `evidence-pruned` record.
    #[must_use]
    pub fn record(self, message: String) -> Record {
        Record::note(
            Lifecycle::EvidencePruned,
            message,
            serde_json::json!({ "evidence": { "pruned": self } }),
        )
    }
}

/// A violation acknowledged or resolved: the `residency.violation` of a
/// `violation-acknowledged` or `violation-resolved` record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ViolationChange {
    pub id: i64,
    /// The state it is now in.
    pub state: String,
    pub previous_state: String,
    /// The violation's first record.
    pub first_seq: u64,
    /// Who did it (the API caller).
    pub by: String,
    pub note: String,
}

impl ViolationChange {
    /// The record; `action` is `violation-acknowledged` or
    /// `violation-resolved`.
    #[must_use]
    pub fn record(self, action: Lifecycle, message: String) -> Record {
        Record::note(action, message, serde_json::json!({ "violation": self }))
    }
}

/// A policy generation in force: the `residency.policy` of a
/// `policy-loaded` or `exception-expired` record. The text makes the
/// evidence hold what each version said.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PolicyLoaded {
    /// SHA-256 of the configuration file, hex: the policy version.
    pub hash: String,
    pub generation: u32,
    /// The file, or `<built-in default>`.
    pub source: String,
    pub tenants: Vec<String>,
    pub workloads: Vec<String>,
    /// Exceptions that no longer apply.
    pub exceptions_expired: Vec<String>,
    /// From the start of the reload to the kernel maps in force.
    pub load_ms: u64,
    /// The configuration's text.
    pub text: String,
}

impl PolicyLoaded {
    /// The record; `action` is `policy-loaded` or `exception-expired`.
    #[must_use]
    pub fn record(self, action: Lifecycle, message: String) -> Record {
        Record::note(action, message, serde_json::json!({ "policy": self }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RecordView, encode_line};

    fn read_back(record: &Record, check: impl FnOnce(&RecordView<'_>)) {
        let mut line = Vec::new();
        encode_line(record, &mut line).unwrap();
        check(&RecordView::parse(&line).unwrap());
    }

    #[test]
    fn each_note_reads_back_as_written() {
        let pruned = Pruned {
            reason: "retention_days".into(),
            first_seq: 1,
            through_seq: 9,
            through_hash: "ab".repeat(32),
            records: 9,
            through_time: "2026-12-01T00:00:00Z".into(),
        };
        read_back(&pruned.clone().record("pruned".into()), |r| {
            assert_eq!(r.lifecycle(), Some(Lifecycle::EvidencePruned));
            assert_eq!(r.pruned(), Some(&pruned));
        });
        let change = ViolationChange {
            id: 3,
            state: "acknowledged".into(),
            previous_state: "open".into(),
            first_seq: 12,
            by: "root".into(),
            note: "ticket \"SEC-1\"".into(),
        };
        read_back(
            &change
                .clone()
                .record(Lifecycle::ViolationAcknowledged, "ack".into()),
            |r| {
                assert_eq!(r.lifecycle(), Some(Lifecycle::ViolationAcknowledged));
                assert_eq!(r.violation_change(), Some(&change));
            },
        );
        let policy = PolicyLoaded {
            hash: "c0ffee".into(),
            generation: 2,
            source: "/etc/residency/residency.toml".into(),
            tenants: vec!["acme".into()],
            workloads: vec![],
            exceptions_expired: vec![],
            load_ms: 4,
            text: "mode = \"monitor\"\n".into(),
        };
        read_back(
            &policy.record(Lifecycle::PolicyLoaded, "in force".into()),
            |r| {
                assert_eq!(r.policy_hash(), Some("c0ffee"));
                assert_eq!(
                    r.policy_loaded(),
                    Some((
                        "c0ffee",
                        Some("/etc/residency/residency.toml"),
                        Some("mode = \"monitor\"\n")
                    ))
                );
            },
        );
    }
}
