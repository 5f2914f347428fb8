//! What every handler reads: the store, the metrics registry, and whether
//! the programs are attached.

use std::sync::Arc;

use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use residency_evidence::{Evidence, Reader};

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    /// Queries.
    pub reader: Reader,
    /// Violation transitions (recorded in the chain) and the store's stats.
    pub evidence: Evidence,
    /// What `/metrics` renders: every component's counters, registered
    /// by the daemon that runs them.
    pub metrics: Arc<Registry>,
    /// 1 while the kernel programs are attached, for `/readyz`.
    pub attached: Gauge,
}

/// What every handler shares: the state, and what is built once.
pub(crate) struct Shared {
    pub(crate) api: ApiState,
    /// `/v1/openapi.json`, rendered.
    pub(crate) openapi: Vec<u8>,
}
