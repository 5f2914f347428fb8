//! What the pipeline counts, for `/metrics`. The pipeline updates these
//! with relaxed atomics; the API registers them with a
//! `prometheus_client` registry and renders the text format.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
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
}

impl PipelineMetrics {
    /// Counts one decision.
    pub fn decision(&self, verdict: &'static str) {
        self.events.get_or_create(&VerdictLabel { verdict }).inc();
    }
}
