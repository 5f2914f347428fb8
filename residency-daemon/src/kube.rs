//! The optional namespace-label watch (`kubernetes.namespace_labels`):
//! namespace labels, which the container runtime does not carry, from the
//! Kubernetes API when the daemon runs with a service account.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{config::KubernetesConfig, pods::NamespaceLabels};

/// The labels lookup and its change signal; without the watch, a lookup
/// that knows nothing.
#[must_use]
pub fn namespace_labels(
    _kube: &KubernetesConfig,
) -> (NamespaceLabels, Option<watch::Receiver<u64>>) {
    (Arc::new(|_| None), None)
}
