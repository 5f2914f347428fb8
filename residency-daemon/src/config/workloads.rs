//! `[[workload]]`: how a workload's processes are recognised, what it
//! does, and whose data it carries. Workload `i` applies policy index
//! `i + 1`.

use std::{ops::Range, path::PathBuf};

use geoip::CountrySet;
use residency_config::{ConfigError, Locator, Spanned};
use serde::Deserialize;

use super::{
    Choice, Config, Mode, RawConfig, Tenant,
    kubernetes::{KubernetesConfig, check_label_key, check_label_value},
    tenants::strictest,
};

/// What a workload does with a tenant's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// LLM inference servers.
    Llm,
    /// CRM sync jobs (Salesforce, `HubSpot`, Dynamics connectors).
    CrmSync,
    /// Log shippers.
    Logging,
    /// Backup agents.
    Backup,
    Other,
}

impl Role {
    /// Every role, in the order label-chosen workloads are made.
    pub const ALL: [Role; 5] = [
        Role::Llm,
        Role::CrmSync,
        Role::Logging,
        Role::Backup,
        Role::Other,
    ];

    /// A role from its name (`crm-sync`).
    #[must_use]
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Llm => "llm",
            Role::CrmSync => "crm-sync",
            Role::Logging => "logging",
            Role::Backup => "backup",
            Role::Other => "other",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorkload {
    name: Spanned<String>,
    role: Role,
    tenants: Spanned<Vec<Spanned<String>>>,
    mode: Option<Mode>,
    #[serde(default)]
    cgroup: Vec<Spanned<String>>,
    unit: Option<Spanned<String>>,
    exe: Option<Spanned<String>>,
    process: Option<Spanned<String>>,
    uid: Option<Spanned<u32>>,
    /// Kubernetes selectors (need `[kubernetes]`): namespace names or
    /// globs, and labels the pod must carry.
    namespace: Option<Spanned<OneOrMany>>,
    pod_labels: Option<Spanned<std::collections::BTreeMap<String, String>>>,
    #[serde(default)]
    description: String,
}

/// A string or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// A workload: how to recognise its processes, and whose data it carries.
#[derive(Debug, Clone)]
pub struct Workload {
    pub name: String,
    pub role: Role,
    /// Tenant ids; the policy is the intersection of theirs.
    pub tenants: Vec<String>,
    pub mode: Mode,
    /// Countries every one of its tenants allows.
    pub allowed: CountrySet,
    /// The strictest of its tenants' choices for unknown destinations.
    pub unknown: Choice,
    pub selectors: Selectors,
    pub description: String,
}

/// How a workload's processes are recognised, most specific first.
#[derive(Debug, Clone, Default)]
pub struct Selectors {
    /// cgroup path globs, relative to the cgroup2 mount (`/system.slice/x.service`).
    pub cgroups: Vec<String>,
    pub cgroup_set: Option<globset::GlobSet>,
    /// A systemd unit: any cgroup whose last component is this name.
    pub unit: Option<String>,
    /// An executable: matched in the kernel by its file name (the process
    /// name, at most 15 bytes); records carry the full path.
    pub exe: Option<PathBuf>,
    /// A process name (`comm`, at most 15 bytes).
    pub process: Option<String>,
    pub uid: Option<u32>,
    /// Kubernetes pods, matched on the pod's own cgroup (its containers
    /// are covered below it).
    pub pods: Option<PodSelector>,
}

/// Which pods a workload selects: every part given must match.
#[derive(Debug, Clone, Default)]
pub struct PodSelector {
    /// Namespace names or globs (any one).
    pub namespaces: Vec<String>,
    pub namespace_set: Option<globset::GlobSet>,
    /// Labels the pod must carry, with these values.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Label-chosen tenancy: the pod (or its namespace) names this tenant
    /// and role with the `[kubernetes]` labels.
    pub by_label: Option<(String, Role)>,
}

/// What a pod is known by, for selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The namespace's labels, when the namespace watch knows them.
    pub namespace_labels: Option<std::collections::BTreeMap<String, String>>,
}

impl PodFacts {
    /// A label of the pod's own, or else of its namespace.
    #[must_use]
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .get(key)
            .or_else(|| self.namespace_labels.as_ref()?.get(key))
            .map(String::as_str)
    }
}

impl PodSelector {
    /// Whether a pod is selected; `tenant_label`/`role_label` are the
    /// `[kubernetes]` label keys.
    #[must_use]
    pub fn matches(&self, pod: &PodFacts, tenant_label: Option<&str>, role_label: &str) -> bool {
        if let Some(set) = &self.namespace_set
            && !set.is_match(&pod.namespace)
        {
            return false;
        }
        if !self
            .labels
            .iter()
            .all(|(k, v)| pod.labels.get(k) == Some(v))
        {
            return false;
        }
        if let Some((tenant, role)) = &self.by_label {
            let Some(key) = tenant_label else {
                return false;
            };
            if pod.label(key) != Some(tenant.as_str()) {
                return false;
            }
            let theirs = pod.label(role_label).map_or(Some(Role::Other), Role::parse);
            if theirs != Some(*role) {
                return false;
            }
        }
        true
    }
}

impl Selectors {
    /// Whether a cgroup (path relative to the mount, `/`-rooted) is one of
    /// this workload's own.
    #[must_use]
    ///
    /// A unit matches a system unit's cgroup anywhere except under
    /// `/user.slice`: there, any user's own systemd can make a unit of that
    /// name (`systemd-run --user --unit vllm.service`) and would take the
    /// workload's policy and exceptions. Select user units by `cgroup`.
    pub fn matches_cgroup(&self, path: &str) -> bool {
        self.cgroup_set.as_ref().is_some_and(|g| g.is_match(path))
            || self.unit.as_deref().is_some_and(|u| {
                path.rsplit('/').next() == Some(u)
                    && path != "/user.slice"
                    && !path.starts_with("/user.slice/")
            })
    }

    /// The process name the kernel matches, if any.
    #[must_use]
    pub fn comm(&self) -> Option<String> {
        self.process.clone().or_else(|| {
            self.exe
                .as_ref()
                .and_then(|e| e.file_name())
                .map(|n| n.to_string_lossy().chars().take(15).collect())
        })
    }
}

impl Config {
    /// The workload behind a policy index (0: none, the default policy).
    #[must_use]
    pub fn workload_of(&self, policy: u16) -> Option<&Workload> {
        self.workloads.get(usize::from(policy).checked_sub(1)?)
    }

    /// A workload by name, with its policy index.
    #[must_use]
    pub fn workload(&self, name: &str) -> Option<(u16, &Workload)> {
        self.workloads
            .iter()
            .enumerate()
            .find(|(_, w)| w.name == name)
            .and_then(|(i, w)| Some((u16::try_from(i + 1).ok()?, w)))
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one check after another, each with its own message"
)]
pub(super) fn validate_workloads(
    raw: &RawConfig,
    tenants: &[Tenant],
    kube: &KubernetesConfig,
    at: &Locator<'_>,
) -> Result<Vec<Workload>, ConfigError> {
    let mut out: Vec<Workload> = Vec::new();
    // Selector text -> the workload that claimed it: one selector, one workload.
    let mut claimed: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let max = residency_common::MAX_POLICIES as usize - 1;
    if raw.workload.len() > max {
        return Err(at.err_opt(
            None,
            "workload",
            &format!(
                "{} workloads; at most {max} fit in the kernel",
                raw.workload.len()
            ),
        ));
    }
    for (i, w) in raw.workload.iter().enumerate() {
        let field = format!("workload[{i}]");
        let name = w.name.get_ref().trim();
        if name.is_empty() {
            return Err(at.err(w.name.span(), &format!("{field}.name"), "is empty"));
        }
        if out.iter().any(|x| x.name == name) {
            return Err(at.err(
                w.name.span(),
                &format!("{field}.name"),
                &format!("\"{name}\" is already a workload"),
            ));
        }
        if w.tenants.get_ref().is_empty() {
            return Err(at.err(
                w.tenants.span(),
                &format!("{field}.tenants"),
                "is empty; name the tenants whose data this workload carries",
            ));
        }
        let mut allowed = CountrySet::all();
        let mut unknown = Choice::Allow;
        let mut enforce = false;
        let mut ids = Vec::new();
        for (j, t) in w.tenants.get_ref().iter().enumerate() {
            let tenant = tenants
                .iter()
                .find(|x| x.id == *t.get_ref())
                .ok_or_else(|| {
                    let known: Vec<&str> = tenants.iter().map(|x| x.id.as_str()).collect();
                    at.err(
                        t.span(),
                        &format!("{field}.tenants[{j}]"),
                        &format!(
                            "\"{}\" is not a tenant (tenants: {})",
                            t.get_ref(),
                            known.join(", ")
                        ),
                    )
                })?;
            if ids.contains(&tenant.id) {
                return Err(at.err(
                    t.span(),
                    &format!("{field}.tenants[{j}]"),
                    &format!("\"{}\" is named twice", tenant.id),
                ));
            }
            allowed = allowed.intersection(&tenant.allowed);
            unknown = strictest(unknown, tenant.unknown);
            enforce |= tenant.mode == Mode::Enforce;
            ids.push(tenant.id.clone());
        }
        let mut selectors = Selectors::default();
        let mut claim = |key: String, span: Range<usize>, sel: &str| -> Result<(), ConfigError> {
            if let Some(other) = claimed.insert(key.clone(), name.to_owned()) {
                return Err(at.err(
                    span,
                    &format!("{field}.{sel}"),
                    &format!("{key} already selects workload \"{other}\"; a process can belong to one workload"),
                ));
            }
            Ok(())
        };
        let mut globs = globset::GlobSetBuilder::new();
        for (j, c) in w.cgroup.iter().enumerate() {
            let pattern = c.get_ref().trim();
            if pattern.trim_end_matches('/').is_empty() {
                return Err(at.err(
                    c.span(),
                    &format!("{field}.cgroup[{j}]"),
                    "the cgroup2 root holds every process on the host; give the workload's own cgroup, e.g. \"/system.slice/crm-sync.service\"",
                ));
            }
            if !pattern.starts_with('/') {
                return Err(at.err(
                    c.span(),
                    &format!("{field}.cgroup[{j}]"),
                    &format!("\"{pattern}\" must start with '/': a path from the cgroup2 mount, e.g. \"/system.slice/crm-sync.service\""),
                ));
            }
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|e| {
                    at.err(
                        c.span(),
                        &format!("{field}.cgroup[{j}]"),
                        &format!("not a valid glob: {e}"),
                    )
                })?;
            globs.add(glob);
            claim(
                format!("cgroup {pattern}"),
                c.span(),
                &format!("cgroup[{j}]"),
            )?;
            selectors.cgroups.push(pattern.to_owned());
        }
        if !selectors.cgroups.is_empty() {
            selectors.cgroup_set = Some(
                globs
                    .build()
                    .map_err(|e| at.err_opt(None, &format!("{field}.cgroup"), &e.to_string()))?,
            );
        }
        if let Some(u) = &w.unit {
            let unit = u.get_ref().trim();
            if unit.is_empty() || unit.contains('/') {
                return Err(at.err(
                    u.span(),
                    &format!("{field}.unit"),
                    "give a systemd unit name, e.g. \"crm-sync.service\"",
                ));
            }
            claim(format!("unit {unit}"), u.span(), "unit")?;
            selectors.unit = Some(unit.to_owned());
        }
        if let Some(e) = &w.exe {
            let exe = PathBuf::from(e.get_ref());
            if !exe.is_absolute() || exe.file_name().is_none() {
                return Err(at.err(
                    e.span(),
                    &format!("{field}.exe"),
                    "give the executable's absolute path, e.g. \"/usr/bin/vllm\"",
                ));
            }
            selectors.exe = Some(exe);
        }
        if let Some(p) = &w.process {
            let process = p.get_ref().trim();
            if process.is_empty() || process.len() > 15 {
                return Err(at.err(
                    p.span(),
                    &format!("{field}.process"),
                    "a process name is 1 to 15 bytes (the kernel keeps no more of it)",
                ));
            }
            selectors.process = Some(process.to_owned());
        }
        if let Some(comm) = selectors.comm() {
            let span = w
                .process
                .as_ref()
                .or(w.exe.as_ref())
                .map_or(0..0, Spanned::span);
            claim(
                format!("process {comm}"),
                span,
                if w.process.is_some() {
                    "process"
                } else {
                    "exe"
                },
            )?;
        }
        selectors.pods = pod_selector(w, &field, kube, at)?;
        if let Some(u) = &w.uid {
            claim(format!("uid {}", u.get_ref()), u.span(), "uid")?;
            selectors.uid = Some(*u.get_ref());
        }
        if selectors.cgroups.is_empty()
            && selectors.unit.is_none()
            && selectors.comm().is_none()
            && selectors.uid.is_none()
            && selectors.pods.is_none()
        {
            return Err(at.err(
                w.name.span(),
                &field,
                &format!("workload \"{name}\" has no selector; give at least one of cgroup, unit, exe, process, uid, namespace, pod_labels"),
            ));
        }
        if name.starts_with(LABEL_WORKLOAD_PREFIX) {
            return Err(at.err(
                w.name.span(),
                &format!("{field}.name"),
                &format!("names beginning with \"{LABEL_WORKLOAD_PREFIX}\" are kept for the workloads of pods that name their tenant by label"),
            ));
        }
        out.push(Workload {
            name: name.to_owned(),
            role: w.role,
            tenants: ids,
            // Each tenant's mode already defaults to the top-level one.
            mode: w.mode.unwrap_or(if enforce {
                Mode::Enforce
            } else {
                Mode::Monitor
            }),
            allowed,
            unknown,
            selectors,
            description: w.description.clone(),
        });
    }
    if kube.enabled
        && let Some(label) = &kube.tenant_label
    {
        let wanted = out.len() + tenants.len() * Role::ALL.len();
        if wanted > max {
            return Err(at.err_opt(
                None,
                "kubernetes.tenant_label",
                &format!(
                    "pods that name their tenant by label need one policy per tenant and role: \
                     {} workloads and {} tenants x {} roles make {wanted}, and at most {max} fit \
                     in the kernel; set kubernetes.tenant_label = \"\" to turn this off",
                    out.len(),
                    tenants.len(),
                    Role::ALL.len()
                ),
            ));
        }
        for t in tenants {
            for role in Role::ALL {
                out.push(Workload {
                    name: format!("{LABEL_WORKLOAD_PREFIX}{}/{}", t.id, role.as_str()),
                    role,
                    tenants: vec![t.id.clone()],
                    mode: t.mode,
                    allowed: t.allowed,
                    unknown: t.unknown,
                    selectors: Selectors {
                        pods: Some(PodSelector {
                            by_label: Some((t.id.clone(), role)),
                            ..PodSelector::default()
                        }),
                        ..Selectors::default()
                    },
                    description: format!(
                        "pods labelled {label}={}{}",
                        t.id,
                        if role == Role::Other {
                            format!(" (and {} other or unset)", kube.role_label)
                        } else {
                            format!(", {}={}", kube.role_label, role.as_str())
                        }
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// Label-chosen workloads are named `pods:<tenant>/<role>`.
pub const LABEL_WORKLOAD_PREFIX: &str = "pods:";

/// `namespace` and `pod_labels`, which need `[kubernetes]`.
fn pod_selector(
    w: &RawWorkload,
    field: &str,
    kube: &KubernetesConfig,
    at: &Locator<'_>,
) -> Result<Option<PodSelector>, ConfigError> {
    if w.namespace.is_none() && w.pod_labels.is_none() {
        return Ok(None);
    }
    if !kube.enabled {
        let (key, span) = match (&w.namespace, &w.pod_labels) {
            (Some(n), _) => ("namespace", n.span()),
            (_, Some(l)) => ("pod_labels", l.span()),
            (None, None) => return Ok(None),
        };
        return Err(at.err(
            span,
            &format!("{field}.{key}"),
            "selects Kubernetes pods, which needs a [kubernetes] section (it tells the daemon to \
             ask the node's container runtime which pod each cgroup belongs to)",
        ));
    }
    let mut sel = PodSelector::default();
    if let Some(n) = &w.namespace {
        let items = n.get_ref().items();
        if items.is_empty() {
            return Err(at.err(
                n.span(),
                &format!("{field}.namespace"),
                "is empty; name the namespaces (or globs, e.g. \"team-*\")",
            ));
        }
        let mut globs = globset::GlobSetBuilder::new();
        for ns in items {
            let ns = ns.trim();
            let valid = !ns.is_empty()
                && ns.len() <= 63
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-*?[]".contains(&b));
            if !valid {
                return Err(at.err(
                    n.span(),
                    &format!("{field}.namespace"),
                    &format!(
                        "\"{ns}\" is not a namespace name or glob: lower-case letters, digits and \
                         '-', with '*' or '?' as wildcards"
                    ),
                ));
            }
            let glob = globset::Glob::new(ns).map_err(|e| {
                at.err(
                    n.span(),
                    &format!("{field}.namespace"),
                    &format!("not a valid glob: {e}"),
                )
            })?;
            globs.add(glob);
            sel.namespaces.push(ns.to_owned());
        }
        sel.namespace_set = Some(
            globs
                .build()
                .map_err(|e| at.err(n.span(), &format!("{field}.namespace"), &e.to_string()))?,
        );
    }
    if let Some(l) = &w.pod_labels {
        if l.get_ref().is_empty() {
            return Err(at.err(
                l.span(),
                &format!("{field}.pod_labels"),
                "is empty; give the labels the pods carry, e.g. { app = \"vllm\" }",
            ));
        }
        for (k, v) in l.get_ref() {
            check_label_key(k)
                .and_then(|()| check_label_value(v))
                .map_err(|m| at.err(l.span(), &format!("{field}.pod_labels"), &m))?;
        }
        sel.labels.clone_from(l.get_ref());
    }
    Ok(Some(sel))
}
