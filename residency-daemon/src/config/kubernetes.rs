//! `[kubernetes]`: pod identity on a Kubernetes node. Its presence turns
//! it on: the daemon asks the container runtime (the CRI socket) which pod
//! and container each cgroup belongs to, `[[workload]]` can select pods by
//! `namespace` and `pod_labels`, and pods can name their own tenant and role
//! with labels (`residency.io/tenant`, `residency.io/role`).
//!
//! Label-chosen tenancy is compiled into one workload per tenant and role,
//! named `pods:<tenant>/<role>`, after the configured workloads: a pod that
//! a configured workload selects is that workload's; any other pod whose
//! labels (or, with the namespace watch, its namespace's labels) name a
//! tenant takes that tenant's policy.

use std::path::PathBuf;

use residency_config::{ConfigError, Locator, Spanned};
use serde::Deserialize;

/// The runtime sockets tried, in order, when `cri_socket` is not given:
/// containerd's, then CRI-O's.
pub const DEFAULT_CRI_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/var/run/crio/crio.sock",
    "/run/crio/crio.sock",
];

/// The label a pod (or its namespace) names its tenant with.
pub const DEFAULT_TENANT_LABEL: &str = "residency.io/tenant";
/// The label a pod (or its namespace) names its role with.
pub const DEFAULT_ROLE_LABEL: &str = "residency.io/role";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKubernetes {
    cri_socket: Option<Spanned<String>>,
    tenant_label: Option<Spanned<String>>,
    role_label: Option<Spanned<String>>,
    namespace_labels: Option<Spanned<String>>,
    kubeconfig: Option<Spanned<String>>,
}

/// Whether namespace labels are read from the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceWatch {
    /// When the daemon runs with a service account (in a pod), or a
    /// kubeconfig is given.
    Auto,
    /// Always; a failure to reach the API is logged and retried.
    On,
    Off,
}

/// The validated `[kubernetes]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// Whether the section is there at all: without it, nothing of this
    /// applies and no runtime is asked.
    pub enabled: bool,
    /// The CRI socket; `None`: the first of [`DEFAULT_CRI_SOCKETS`] that
    /// exists.
    pub cri_socket: Option<PathBuf>,
    /// The label that names a pod's tenant; `None`: pods cannot choose.
    pub tenant_label: Option<String>,
    pub role_label: String,
    pub namespace_labels: NamespaceWatch,
    /// A kubeconfig for the namespace watch instead of the service account
    /// (for running outside a pod).
    pub kubeconfig: Option<PathBuf>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            enabled: false,
            cri_socket: None,
            tenant_label: Some(DEFAULT_TENANT_LABEL.to_owned()),
            role_label: DEFAULT_ROLE_LABEL.to_owned(),
            namespace_labels: NamespaceWatch::Auto,
            kubeconfig: None,
        }
    }
}

impl KubernetesConfig {
    /// The socket to use: the configured one, or the first default that
    /// exists.
    #[must_use]
    pub fn socket(&self) -> Option<PathBuf> {
        self.cri_socket.clone().or_else(|| {
            DEFAULT_CRI_SOCKETS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists())
        })
    }
}

pub(super) fn validate_kubernetes(
    raw: Option<&RawKubernetes>,
    at: &Locator<'_>,
) -> Result<KubernetesConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(KubernetesConfig::default());
    };
    let mut out = KubernetesConfig {
        enabled: true,
        ..KubernetesConfig::default()
    };
    if let Some(s) = &raw.cri_socket {
        let p = PathBuf::from(s.get_ref().trim());
        if !p.is_absolute() {
            return Err(at.err(
                s.span(),
                "kubernetes.cri_socket",
                "give the runtime socket's absolute path, e.g. \"/run/containerd/containerd.sock\"",
            ));
        }
        out.cri_socket = Some(p);
    }
    if let Some(l) = &raw.tenant_label {
        let key = l.get_ref().trim();
        if key.is_empty() {
            out.tenant_label = None;
        } else {
            check_label_key(key).map_err(|m| at.err(l.span(), "kubernetes.tenant_label", &m))?;
            out.tenant_label = Some(key.to_owned());
        }
    }
    if let Some(l) = &raw.role_label {
        let key = l.get_ref().trim();
        check_label_key(key).map_err(|m| at.err(l.span(), "kubernetes.role_label", &m))?;
        key.clone_into(&mut out.role_label);
    }
    if let Some(w) = &raw.namespace_labels {
        out.namespace_labels = match w.get_ref().as_str() {
            "auto" => NamespaceWatch::Auto,
            "on" => NamespaceWatch::On,
            "off" => NamespaceWatch::Off,
            other => {
                return Err(at.err(
                    w.span(),
                    "kubernetes.namespace_labels",
                    &format!(
                        "\"{other}\" is not a choice: \"auto\" (watch the API when running with a \
                         service account), \"on\" or \"off\""
                    ),
                ));
            }
        };
    }
    if let Some(k) = &raw.kubeconfig {
        let p = PathBuf::from(k.get_ref().trim());
        if !p.is_absolute() {
            return Err(at.err(
                k.span(),
                "kubernetes.kubeconfig",
                "give the kubeconfig's absolute path",
            ));
        }
        out.kubeconfig = Some(p);
    }
    Ok(out)
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then
/// a name of 1 to 63 characters, alphanumeric at both ends, with `-`, `_`
/// and `.` inside.
///
/// # Errors
/// What is wrong with it.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return Err(format!(
                "\"{key}\": the prefix before '/' must be a DNS subdomain, e.g. \"residency.io\""
            ));
        }
    }
    check_label_value(name)
        .ok()
        .filter(|()| !name.is_empty())
        .ok_or_else(|| {
            format!(
                "\"{key}\" is not a label key: the name is 1 to 63 letters, digits, '-', '_' or \
                 '.', beginning and ending with a letter or digit"
            )
        })
}

/// A Kubernetes label value: empty, or 1 to 63 characters, alphanumeric at
/// both ends, with `-`, `_` and `.` inside.
///
/// # Errors
/// What is wrong with it.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    let b = value.as_bytes();
    let ok = b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "\"{value}\" is not a label value: at most 63 letters, digits, '-', '_' or '.', \
             beginning and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_and_values() {
        for ok in ["app", "residency.io/tenant", "a.b-c_d", "x/y", "k8s.io/a1"] {
            assert!(check_label_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "-a",
            "a-",
            "Res.io/x",
            "a b",
            "a/b/c",
            &"x".repeat(64),
        ] {
            assert!(check_label_key(bad).is_err(), "{bad}");
        }
        for ok in ["", "acme", "eu-west.1", "A_b"] {
            assert!(check_label_value(ok).is_ok(), "{ok}");
        }
        for bad in ["-x", "x-", "a/b", "ü", &"x".repeat(64)] {
            assert!(check_label_value(bad).is_err(), "{bad}");
        }
    }
}
