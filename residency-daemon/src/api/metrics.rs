//! `/metrics`: the pipeline's and the store's counters in one
//! `prometheus_client` registry, every name prefixed `residency_`.
//!
//! The registry holds clones of the metrics themselves (they share their
//! atomics), so a scrape reads the live values without locks on the data
//! path. The store's plain atomics (queued batches, write failures,
//! writability) are read by a collector at scrape time.

use std::sync::{Arc, atomic::Ordering};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    evidence::Stats,
    metrics::{PipelineMetrics, VerdictLabel},
};

/// Builds the registry over `stats` and `pipeline`.
#[must_use]
#[expect(clippy::too_many_lines, reason = "one registration per metric")]
pub fn registry(stats: &Arc<Stats>, pipeline: &PipelineMetrics) -> Registry {
    // Every verdict has a series from the start, at 0, so dashboards and
    // alerts see it before the first such decision.
    for verdict in ["allowed", "flagged", "blocked"] {
        let _ = pipeline.events.get_or_create(&VerdictLabel { verdict });
    }
    let mut r = Registry::with_prefix("residency");
    r.register(
        "events",
        "Decisions written, by verdict",
        pipeline.events.clone(),
    );
    r.register(
        "lifecycle_records",
        "Records that were not decisions (lifecycle, gaps, notes)",
        pipeline.lifecycle.clone(),
    );
    r.register(
        "kernel_dropped",
        "Decisions the kernel could not report (ring buffer full), as reported so far",
        pipeline.kernel_dropped.clone(),
    );
    r.register(
        "kernel_submitted",
        "Decisions the kernel reported",
        pipeline.kernel_submitted.clone(),
    );
    r.register(
        "ring_lag",
        "Records waiting in the hand-off ring between the ring-buffer reader and the writer",
        pipeline.ring_lag.clone(),
    );
    let sinks = &pipeline.sinks;
    r.register(
        "sink_sent",
        "Alerts each SIEM sink's receiver accepted",
        sinks.sent.clone(),
    );
    r.register(
        "sink_failed",
        "Failed send attempts per SIEM sink (each is retried)",
        sinks.failed.clone(),
    );
    r.register(
        "sink_queued",
        "Evidence records behind each SIEM sink's cursor",
        sinks.queued.clone(),
    );
    r.register(
        "sink_dropped",
        "Records a SIEM sink skipped past its spool limit (each skip is a sink-gap record)",
        sinks.dropped.clone(),
    );
    r.register(
        "sink_throttled",
        "Occurrences folded into another alert by a sink's throttling",
        sinks.throttled.clone(),
    );
    r.register(
        "sink_latency_seconds",
        "From the event to a SIEM receiver's acceptance",
        sinks.latency_seconds.clone(),
    );
    r.register(
        "undecodable",
        "Ring-buffer records this build could not decode",
        pipeline.undecodable.clone(),
    );
    r.register(
        "attached",
        "1 while the kernel programs are attached",
        pipeline.attached.clone(),
    );
    r.register(
        "store_records",
        "Records appended to the evidence chain",
        stats.records.clone(),
    );
    r.register(
        "store_record_bytes",
        "Canonical bytes of the records appended to the chain",
        stats.record_bytes.clone(),
    );
    r.register(
        "store_stored_bytes",
        "Bytes the appended records take at rest (compressed against the store's dictionary)",
        stats.stored_bytes.clone(),
    );
    r.register(
        "store_commits",
        "Evidence store transactions committed",
        stats.commits.clone(),
    );
    r.register(
        "store_commit_seconds",
        "Time to commit one evidence store transaction",
        stats.commit_seconds.clone(),
    );
    r.register(
        "store_ingest_latency_seconds",
        "From the kernel's decision to the record being queryable",
        stats.ingest_latency_seconds.clone(),
    );
    r.register(
        "store_committed_latency_seconds",
        "From the kernel's decision to the record being committed to the chain",
        stats.committed_latency_seconds.clone(),
    );
    r.register(
        "store_checkpoints",
        "Checkpoints signed",
        stats.checkpoints.clone(),
    );
    r.register(
        "store_head_seq",
        "The newest sequence number in the chain",
        stats.head_seq.clone(),
    );
    r.register(
        "store_indexed_seq",
        "Records up to this sequence number are indexed (queryable by filter)",
        stats.indexed_seq.clone(),
    );
    r.register(
        "store_size_bytes",
        "Bytes the evidence store holds",
        stats.size_bytes.clone(),
    );
    r.register(
        "store_pruned",
        "Records pruned by retention",
        stats.pruned.clone(),
    );
    r.register_collector(Box::new(StoreAtomics(stats.clone())));
    r
}

/// The store's figures that are plain atomics.
#[derive(Debug)]
struct StoreAtomics(Arc<Stats>);

impl Collector for StoreAtomics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let queued = ConstGauge::new(self.0.queued.load(Ordering::Relaxed));
        queued.encode(encoder.encode_descriptor(
            "store_queued_batches",
            "Batches waiting for the evidence store's writer",
            None,
            queued.metric_type(),
        )?)?;
        let failures = ConstCounter::new(self.0.failures.load(Ordering::Relaxed));
        failures.encode(encoder.encode_descriptor(
            "store_write_failures",
            "Evidence store writes that failed",
            None,
            failures.metric_type(),
        )?)?;
        let writable = ConstGauge::new(i64::from(self.0.writable.load(Ordering::Relaxed)));
        writable.encode(encoder.encode_descriptor(
            "store_writable",
            "1 while the evidence store takes writes",
            None,
            writable.metric_type(),
        )?)?;
        Ok(())
    }
}
