//! The optional namespace-label watch (`kubernetes.namespace_labels`):
//! namespace labels, which the container runtime does not carry, from the
//! Kubernetes API (`residency-kube`), when the daemon runs with a service
//! account or is given a kubeconfig. Without it, pods are selected by their
//! own labels only.

use std::sync::Arc;

use residency_kube::Source;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    config::{KubernetesConfig, NamespaceWatch},
    pods::NamespaceLabels,
};

/// The labels lookup and its change signal; without the watch, a lookup
/// that knows nothing and no signal.
pub async fn namespace_labels(
    kube: &KubernetesConfig,
) -> (NamespaceLabels, Option<watch::Receiver<u64>>) {
    let none = || -> (NamespaceLabels, Option<watch::Receiver<u64>>) { (Arc::new(|_| None), None) };
    let source = match (kube.namespace_labels, &kube.kubeconfig) {
        (NamespaceWatch::Off, _) => return none(),
        (_, Some(path)) => Source::Kubeconfig(path.clone()),
        (NamespaceWatch::Auto, None) if !residency_kube::in_cluster() => {
            info!(
                "no Kubernetes service account: namespace labels are not read (pods are selected \
                 by their own labels and namespace names)"
            );
            return none();
        }
        (_, None) => Source::InCluster,
    };
    match residency_kube::watch_namespaces(source).await {
        Ok((labels, changed)) => {
            info!("watching namespace labels in the Kubernetes API");
            (Arc::new(move |ns: &str| labels.get(ns)), Some(changed))
        }
        Err(e) => {
            warn!("{e}; namespace labels are not read (pods are selected by their own labels)");
            none()
        }
    }
}
