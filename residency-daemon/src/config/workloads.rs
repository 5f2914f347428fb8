//! `[[workload]]`: how a workload's processes are recognised, what it
//! does, and whose data it carries. Workload `i` applies policy index
//! `i + 1`.

use std::{ops::Range, path::PathBuf};

use geoip::CountrySet;
use residency_config::{ConfigError, Locator, Spanned};
use serde::Deserialize;

use super::{Choice, Config, Mode, RawConfig, Tenant, tenants::strictest};

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
    /// Kubernetes selectors: the names are taken, the matching comes with
    /// the Kubernetes work.
    namespace: Option<Spanned<toml::Value>>,
    pod_labels: Option<Spanned<toml::Value>>,
    #[serde(default)]
    description: String,
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
        for (key, value) in [("namespace", &w.namespace), ("pod_labels", &w.pod_labels)] {
            if let Some(v) = value {
                return Err(at.err(
                    v.span(),
                    &format!("{field}.{key}"),
                    "Kubernetes selectors are not supported yet; select the pod's cgroup instead, \
                     e.g. cgroup = [\"/kubepods.slice/*/*pod<uid>.slice/*\"]",
                ));
            }
        }
        if let Some(u) = &w.uid {
            claim(format!("uid {}", u.get_ref()), u.span(), "uid")?;
            selectors.uid = Some(*u.get_ref());
        }
        if selectors.cgroups.is_empty()
            && selectors.unit.is_none()
            && selectors.comm().is_none()
            && selectors.uid.is_none()
        {
            return Err(at.err(
                w.name.span(),
                &field,
                &format!("workload \"{name}\" has no selector; give at least one of cgroup, unit, exe, process, uid"),
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
    Ok(out)
}
