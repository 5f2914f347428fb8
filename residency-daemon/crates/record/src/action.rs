//! What a lifecycle record says happened: its `event.action`.
//!
//! Every record that is not a flow names one of these. Readers decide by
//! the enum, never by the text, so a new kind of gap added here is an
//! alert in every SIEM sink at once ([`Lifecycle::is_gap`]).

use std::{fmt, str::FromStr};

/// A lifecycle record's `event.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lifecycle {
    /// The programs are attached.
    Started,
    /// The programs are detached; the counters account for every decision.
    Stopped,
    /// The kernel could not report decisions (its ring buffer was full).
    EventsLost,
    /// A ring-buffer record this build could not read.
    RecordUndecodable,
    /// A `GeoIP` database decides from a generation on.
    GeoipLoaded,
    /// A new `GeoIP` database was refused; the one in force stays.
    GeoipRefused,
    /// A policy generation is in force.
    PolicyLoaded,
    /// A new configuration was refused; the policy in force stays.
    PolicyRefused,
    /// An exception expired and the policy was compiled without it.
    ExceptionExpired,
    /// Records are missing from the chain (an unclean stop, a record that
    /// cannot be read back).
    EvidenceGap,
    /// Retention removed the oldest records.
    EvidencePruned,
    /// A SIEM sink skipped alerts it could not deliver in time.
    SinkGap,
    /// Someone acknowledged a violation.
    ViolationAcknowledged,
    /// Someone resolved a violation.
    ViolationResolved,
    /// A watched connection's TLS `ClientHello` named a server: the
    /// connection's flow record (same socket cookie) gains its SNI; a
    /// server name judged differently from the resolved name is flagged.
    TlsServerName,
    /// The kernel could not report flows' totals (its ring buffer was
    /// full, or more connected sockets than it follows were open at
    /// once): the bytes of those flows are missing.
    FlowTotalsLost,
}

impl Lifecycle {
    /// Every kind, for tests and documentation.
    pub const ALL: [Lifecycle; 16] = [
        Lifecycle::Started,
        Lifecycle::Stopped,
        Lifecycle::EventsLost,
        Lifecycle::RecordUndecodable,
        Lifecycle::GeoipLoaded,
        Lifecycle::GeoipRefused,
        Lifecycle::PolicyLoaded,
        Lifecycle::PolicyRefused,
        Lifecycle::ExceptionExpired,
        Lifecycle::EvidenceGap,
        Lifecycle::EvidencePruned,
        Lifecycle::SinkGap,
        Lifecycle::ViolationAcknowledged,
        Lifecycle::ViolationResolved,
        Lifecycle::TlsServerName,
        Lifecycle::FlowTotalsLost,
    ];

    /// The `event.action` text.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Started => "started",
            Lifecycle::Stopped => "stopped",
            Lifecycle::EventsLost => "events-lost",
            Lifecycle::RecordUndecodable => "record-undecodable",
            Lifecycle::GeoipLoaded => "geoip-loaded",
            Lifecycle::GeoipRefused => "geoip-refused",
            Lifecycle::PolicyLoaded => "policy-loaded",
            Lifecycle::PolicyRefused => "policy-refused",
            Lifecycle::ExceptionExpired => "exception-expired",
            Lifecycle::EvidenceGap => "evidence-gap",
            Lifecycle::EvidencePruned => "evidence-pruned",
            Lifecycle::SinkGap => "sink-gap",
            Lifecycle::ViolationAcknowledged => "violation-acknowledged",
            Lifecycle::ViolationResolved => "violation-resolved",
            Lifecycle::TlsServerName => "tls-server-name",
            Lifecycle::FlowTotalsLost => "flow-totals-lost",
        }
    }

    /// Whether the record says that events are missing: decisions the
    /// kernel could not report, records the chain lacks, alerts a sink did
    /// not send. SIEM sinks that receive `gaps` get these.
    #[must_use]
    pub const fn is_gap(self) -> bool {
        matches!(
            self,
            Lifecycle::EventsLost
                | Lifecycle::EvidenceGap
                | Lifecycle::SinkGap
                | Lifecycle::FlowTotalsLost
        )
    }

    /// ECS `event.kind`: `pipeline_error` for a failure or a loss, `state`
    /// for a change.
    #[must_use]
    pub const fn event_kind(self) -> &'static str {
        match self {
            Lifecycle::EventsLost
            | Lifecycle::RecordUndecodable
            | Lifecycle::GeoipRefused
            | Lifecycle::PolicyRefused
            | Lifecycle::EvidenceGap
            | Lifecycle::SinkGap
            | Lifecycle::FlowTotalsLost => "pipeline_error",
            Lifecycle::Started
            | Lifecycle::Stopped
            | Lifecycle::GeoipLoaded
            | Lifecycle::PolicyLoaded
            | Lifecycle::ExceptionExpired
            | Lifecycle::EvidencePruned
            | Lifecycle::ViolationAcknowledged
            | Lifecycle::ViolationResolved => "state",
            Lifecycle::TlsServerName => "event",
        }
    }
}

impl fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An `event.action` this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown lifecycle action \"{0}\"")]
pub struct UnknownAction(pub String);

impl FromStr for Lifecycle {
    type Err = UnknownAction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Lifecycle::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| UnknownAction(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for a in Lifecycle::ALL {
            assert_eq!(a.as_str().parse::<Lifecycle>(), Ok(a));
            assert!(seen.insert(a.as_str()), "{a} twice");
        }
        assert!("connect".parse::<Lifecycle>().is_err());
    }

    #[test]
    fn gaps_are_the_records_of_missing_events() {
        let gaps: Vec<_> = Lifecycle::ALL.into_iter().filter(|a| a.is_gap()).collect();
        assert_eq!(
            gaps,
            [
                Lifecycle::EventsLost,
                Lifecycle::EvidenceGap,
                Lifecycle::SinkGap,
                Lifecycle::FlowTotalsLost
            ]
        );
        for g in gaps {
            assert_eq!(g.event_kind(), "pipeline_error", "{g}");
        }
    }
}
