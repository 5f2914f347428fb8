//! What each SIEM sink counts, by sink name, for `/metrics`
//! (`residency_sink_*`). The delivery tasks update these with relaxed
//! atomics; [`SinkMetrics::register`] adds them to the daemon's registry.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Label of the `residency_sink_*` series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    pub sink: String,
}

/// What each SIEM sink counts, by sink name.
#[derive(Debug)]
pub struct SinkMetrics {
    /// Alerts the receiver accepted.
    pub sent: Family<SinkLabel, Counter>,
    /// Send attempts that failed (each is retried).
    pub failed: Family<SinkLabel, Counter>,
    /// Evidence records behind the sink's cursor, waiting.
    pub queued: Family<SinkLabel, Gauge>,
    /// Records skipped because the sink fell further behind than its
    /// spool allows (each skip is a `sink-gap` record in the chain).
    pub dropped: Family<SinkLabel, Counter>,
    /// Occurrences folded into another alert by throttling.
    pub throttled: Family<SinkLabel, Counter>,
    /// From the event to the receiver's acceptance.
    pub latency_seconds: Family<SinkLabel, Histogram>,
}

impl Default for SinkMetrics {
    fn default() -> Self {
        SinkMetrics {
            sent: Family::default(),
            failed: Family::default(),
            queued: Family::default(),
            dropped: Family::default(),
            throttled: Family::default(),
            latency_seconds: Family::new_with_constructor(|| {
                Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0])
            }),
        }
    }
}

impl SinkMetrics {
    /// Adds the sinks' series to a registry; they share their atomics
    /// with the delivery tasks.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "sink_sent",
            "Alerts each SIEM sink's receiver accepted",
            self.sent.clone(),
        );
        r.register(
            "sink_failed",
            "Failed send attempts per SIEM sink (each is retried)",
            self.failed.clone(),
        );
        r.register(
            "sink_queued",
            "Evidence records behind each SIEM sink's cursor",
            self.queued.clone(),
        );
        r.register(
            "sink_dropped",
            "Records a SIEM sink skipped past its spool limit (each skip is a sink-gap record)",
            self.dropped.clone(),
        );
        r.register(
            "sink_throttled",
            "Occurrences folded into another alert by a sink's throttling",
            self.throttled.clone(),
        );
        r.register(
            "sink_latency_seconds",
            "From the event to a SIEM receiver's acceptance",
            self.latency_seconds.clone(),
        );
    }
}
