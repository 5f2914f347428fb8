//! What the pipeline counts, for `/metrics`. The pipeline updates these
//! with relaxed atomics; the API registers them with a
//! `prometheus_client` registry and renders the text format.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};

/// Label of `residency_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: &'static str,
}

/// The pipeline's counters.
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    /// Decisions written, by verdict (`allowed`, `flagged`, `blocked`).
    pub events: Family<VerdictLabel, Counter>,
    /// Records that were not decisions (lifecycle, gaps, notes).
    pub lifecycle: Counter,
    /// Decisions the kernel could not report (ring buffer full), as
    /// reported so far.
    pub kernel_dropped: Gauge,
    /// Decisions the kernel reported.
    pub kernel_submitted: Gauge,
    /// Records waiting in the hand-off ring between reader and writer.
    pub ring_lag: Gauge,
    /// Ring-buffer records this build could not decode.
    pub undecodable: Counter,
    /// Are the kernel programs attached?
    pub attached: Gauge,
    /// Each SIEM sink's delivery.
    pub sinks: SinkMetrics,
}

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

impl PipelineMetrics {
    /// Counts one decision.
    pub fn decision(&self, verdict: &'static str) {
        self.events.get_or_create(&VerdictLabel { verdict }).inc();
    }
}
