//! The daemon's counters, for `/metrics`: the pipeline's own, and the one
//! registry every component registers its series in (the pipeline's here,
//! the SIEM sinks' and the evidence store's by their crates). The REST API
//! renders that registry; the data path updates the series with relaxed
//! atomics and never takes a lock for them.

use std::sync::Arc;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use residency_common::Verdict;
use residency_evidence::Stats;
use residency_record::verdict_str;
use residency_siem::SinkMetrics;

/// Label of `residency_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    pub verdict: &'static str,
}

/// Label of `residency_flow_reports_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    /// `update`, `closed` or `superseded`.
    pub stage: &'static str,
}

/// Labels of `residency_flow_bytes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BytesLabel {
    /// `out` (sent) or `in` (received).
    pub direction: &'static str,
    pub tenant: String,
    /// ISO alpha-2, or `unknown`.
    pub country: String,
}

/// Series of `residency_flow_bytes_total` at most: tenants come from the
/// configuration and countries from ISO 3166, but their product is not
/// small; past this, new pairs count under tenant and country `_other`.
pub const MAX_BYTES_SERIES: usize = 2048;

/// The pipeline's counters.
#[derive(Debug, Default)]
pub struct PipelineMetrics {
    /// Bytes of followed flows, by direction, tenant and country (from
    /// each totals record's delta).
    pub flow_bytes: Family<BytesLabel, Counter>,
    /// Distinct (tenant, country) pairs in `flow_bytes`.
    bytes_pairs: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    /// Flow totals records written, by stage.
    pub flow_reports: Family<StageLabel, Counter>,
    /// Flow totals the kernel could not report (ring buffer full).
    pub kernel_flows_dropped: Gauge,
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
    /// DNS answers the daemon parsed for names.
    pub dns_answers: Counter,
    /// DNS answers it could not use (malformed, hostile, not a response).
    pub dns_rejected: Counter,
    /// Names kept per workload and address.
    pub names_kept: Gauge,
    /// DNS answers and TLS bytes the kernel could not copy to the daemon
    /// (ring buffer full): its judgement stood, the records lack the name.
    pub kernel_names_dropped: Gauge,
    /// `tls-server-name` records written.
    pub tls_server_names: Counter,
}

impl PipelineMetrics {
    /// Counts one decision.
    pub fn decision(&self, verdict: &'static str) {
        self.events.get_or_create(&VerdictLabel { verdict }).inc();
    }

    /// Counts a flow's totals record: its bytes by tenant and country.
    pub fn flow_totals(&self, flow: &residency_record::Flow) {
        let Some(t) = flow.totals.as_deref() else {
            return;
        };
        self.flow_reports
            .get_or_create(&StageLabel {
                stage: t.stage.as_str(),
            })
            .inc();
        let tenants: &[String] = flow
            .policy_view
            .as_ref()
            .and_then(|d| d.0.policy(flow.policy))
            .and_then(|p| p.workload.as_ref())
            .map_or(&[], |w| w.tenants.as_slice());
        let country = flow
            .country
            .as_ref()
            .map_or("unknown", geoip::CountryCode::as_str);
        let none = [String::new()];
        let tenants = if tenants.is_empty() {
            &none[..]
        } else {
            tenants
        };
        for tenant in tenants {
            let (tenant, country) = self.bounded(tenant, country);
            for (direction, n) in [("out", t.delta.bytes_out), ("in", t.delta.bytes_in)] {
                if n > 0 {
                    self.flow_bytes
                        .get_or_create(&BytesLabel {
                            direction,
                            tenant: tenant.clone(),
                            country: country.clone(),
                        })
                        .inc_by(n);
                }
            }
        }
    }

    /// The labels a (tenant, country) pair counts under: itself, or
    /// `_other` once [`MAX_BYTES_SERIES`] pairs are taken.
    fn bounded(&self, tenant: &str, country: &str) -> (String, String) {
        let mut pairs = self
            .bytes_pairs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (tenant.to_owned(), country.to_owned());
        if pairs.contains(&key) || pairs.len() < MAX_BYTES_SERIES {
            pairs.insert(key.clone());
            key
        } else {
            ("_other".to_owned(), "_other".to_owned())
        }
    }

    /// Adds the pipeline's series to a registry.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "flow_bytes",
            "Bytes of followed flows (IP packet lengths), by direction (out, in), tenant and country",
            self.flow_bytes.clone(),
        );
        r.register(
            "flow_reports",
            "Flow totals records written, by stage (update, closed, superseded)",
            self.flow_reports.clone(),
        );
        r.register(
            "kernel_flows_dropped",
            "Flow totals the kernel could not report (ring buffer full, or more connected \
             sockets at once than it follows)",
            self.kernel_flows_dropped.clone(),
        );
        // Every verdict has a series from the start, at 0, so dashboards
        // and alerts see it before the first such decision.
        for v in [Verdict::Allowed, Verdict::Flagged, Verdict::Blocked] {
            let _ = self.events.get_or_create(&VerdictLabel {
                verdict: verdict_str(v),
            });
        }
        r.register(
            "events",
            "Decisions written, by verdict",
            self.events.clone(),
        );
        r.register(
            "dns_answers",
            "DNS answers the daemon parsed for names",
            self.dns_answers.clone(),
        );
        r.register(
            "dns_rejected",
            "DNS answers the daemon could not use (malformed, hostile, not a response)",
            self.dns_rejected.clone(),
        );
        r.register(
            "names_kept",
            "Names kept per workload and address",
            self.names_kept.clone(),
        );
        r.register(
            "kernel_names_dropped",
            "DNS answers and TLS bytes the kernel could not copy to the daemon (ring buffer full)",
            self.kernel_names_dropped.clone(),
        );
        r.register(
            "tls_server_names",
            "tls-server-name records written",
            self.tls_server_names.clone(),
        );
        r.register(
            "lifecycle_records",
            "Records that were not decisions (lifecycle, gaps, notes)",
            self.lifecycle.clone(),
        );
        r.register(
            "kernel_dropped",
            "Decisions the kernel could not report (ring buffer full), as reported so far",
            self.kernel_dropped.clone(),
        );
        r.register(
            "kernel_submitted",
            "Decisions the kernel reported",
            self.kernel_submitted.clone(),
        );
        r.register(
            "ring_lag",
            "Records waiting in the hand-off ring between the ring-buffer reader and the writer",
            self.ring_lag.clone(),
        );
        r.register(
            "undecodable",
            "Ring-buffer records this build could not decode",
            self.undecodable.clone(),
        );
        r.register(
            "attached",
            "1 while the kernel programs are attached",
            self.attached.clone(),
        );
    }
}

/// Every component's counters, and the registry that holds them all
/// (names prefixed `residency_`).
/// The pod stage's series (`[kubernetes]`).
#[derive(Debug, Clone)]
pub struct PodMetrics {
    /// Pods the container runtime lists on this node.
    pub pods: Gauge,
    /// Pod cgroups that hold a workload's policy in the kernel.
    pub pods_selected: Gauge,
    /// Failed connections to, or answers from, the runtime.
    pub cri_errors: Counter,
    /// Entries of the runtime's last answer that were left out (malformed,
    /// or beyond the caps).
    pub cri_skipped: Gauge,
    /// How long listing the runtime's pods and containers took.
    pub cri_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Default for PodMetrics {
    fn default() -> Self {
        PodMetrics {
            pods: Gauge::default(),
            pods_selected: Gauge::default(),
            cri_errors: Counter::default(),
            cri_skipped: Gauge::default(),
            cri_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14),
            ),
        }
    }
}

impl PodMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "pods",
            "Pods the container runtime lists on this node",
            self.pods.clone(),
        );
        r.register(
            "pods_selected",
            "Pod cgroups that hold a workload's policy in the kernel",
            self.pods_selected.clone(),
        );
        r.register(
            "cri_errors",
            "Failed connections to, or answers from, the container runtime (CRI)",
            self.cri_errors.clone(),
        );
        r.register(
            "cri_skipped",
            "Entries of the container runtime's last answer left out (malformed, or beyond the caps)",
            self.cri_skipped.clone(),
        );
        r.register(
            "cri_list_seconds",
            "How long listing the runtime's pods and containers took",
            self.cri_seconds.clone(),
        );
    }
}

pub struct Metrics {
    pub pipeline: Arc<PipelineMetrics>,
    pub pods: PodMetrics,
    pub sinks: Arc<SinkMetrics>,
    pub registry: Arc<Registry>,
}

impl Metrics {
    /// The pipeline's and the sinks' counters, and the store's `stats`,
    /// in one registry.
    #[must_use]
    pub fn new(stats: &Arc<Stats>) -> Self {
        let pipeline = Arc::new(PipelineMetrics::default());
        let sinks = Arc::new(SinkMetrics::default());
        let pods = PodMetrics::default();
        let mut registry = Registry::with_prefix("residency");
        pipeline.register(&mut registry);
        pods.register(&mut registry);
        sinks.register(&mut registry);
        stats.register(&mut registry);
        Metrics {
            pipeline,
            pods,
            sinks,
            registry: Arc::new(registry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names dashboards and alerts rely on (the API's own test checks
    /// that it renders whatever the registry holds).
    #[test]
    fn metrics_name_what_they_count() {
        let m = Metrics::new(&Arc::new(Stats::default()));
        m.pipeline.decision("blocked");
        m.pipeline.decision("blocked");
        m.pipeline.kernel_dropped.set(3);
        m.pipeline.attached.set(1);
        let _ = m
            .sinks
            .sent
            .get_or_create(&residency_siem::metrics::SinkLabel { sink: "soc".into() });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry).unwrap();
        for needle in [
            "residency_events_total{verdict=\"blocked\"} 2",
            "residency_events_total{verdict=\"allowed\"} 0",
            "residency_events_total{verdict=\"flagged\"} 0",
            "residency_lifecycle_records_total",
            "residency_kernel_dropped 3",
            "residency_kernel_submitted 0",
            "residency_ring_lag 0",
            "residency_undecodable_total 0",
            "residency_attached 1",
            "residency_sink_sent_total{sink=\"soc\"} 0",
            "residency_store_records_total 0",
            "residency_store_writable 1",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
