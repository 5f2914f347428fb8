//! TEMPORARY (the records branch defines these in the model).
use std::collections::BTreeMap;

/// The Kubernetes pod, and container, a flow came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub container: Option<ContainerInfo>,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
}
