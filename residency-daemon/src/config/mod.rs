//! Configuration: the first stage of the control path.
//!
//! One TOML file configures every component, and each component owns its
//! section: the evidence store `[evidence]`
//! ([`residency_evidence::EvidenceConfig`]), the REST API `[api]`
//! ([`residency_api::ApiConfig`]), the SIEM sinks `[[sink]]`
//! ([`residency_siem::SinkConfig`]), the kernel stage `[kernel]`
//! ([`crate::kernel::KernelConfig`]), the `GeoIP` data `[geoip]`
//! ([`crate::geodb::GeoIpConfig`]) and the output `[output]`
//! ([`crate::output::Output`]). This module parses the file, hands each
//! component its part, and validates the policy itself, one section per
//! file: `mode`, `[policy]` and `[[jurisdiction]]` (`policy.rs`), the
//! destination rules (`rules.rs`), `[[tenant]]` (`tenants.rs`),
//! `[[workload]]` (`workloads.rs`) and `[[exception]]` (`exceptions.rs`).
//!
//! Every section is parsed into a raw form that mirrors the file (with
//! `deny_unknown_fields`, so a misspelt key is an error, not a silently
//! ignored setting), then validated into a form in which invalid states
//! cannot be represented. Every error names the file, the line and the
//! field, and says what would be valid ([`ConfigError`]).
//!
//! The compiled kernel maps are built from the validated form by
//! [`crate::policy`]; nothing reads the raw form after validation.

mod exceptions;
pub mod kubernetes;
mod names;
mod policy;
mod rules;
mod tenants;
#[cfg(test)]
mod tests;
mod workloads;

use std::path::Path;

use geoip::{CountrySet, Sets};
use residency_api::{ApiConfig, RawApi};
pub use residency_config::ConfigError;
use residency_config::Locator;
use residency_evidence::{EvidenceConfig, RawEvidence};
use residency_siem::{RawSink, SinkConfig};
use serde::Deserialize;

pub use exceptions::{Basis, Exception};
pub use kubernetes::{KubernetesConfig, NamespaceWatch};
pub use names::NamesConfig;
pub use policy::{Choice, Mode, PolicyConfig};
pub use rules::{DEFAULT_LOCAL_NETWORKS, Rule, RuleKind};
pub use tenants::Tenant;
pub use workloads::{LABEL_WORKLOAD_PREFIX, PodFacts, PodSelector, Role, Selectors, Workload};

use exceptions::RawException;
use policy::{RawJurisdiction, RawPolicy};
use rules::{RawDenyRule, RawInternal};
use tenants::RawTenant;
use workloads::RawWorkload;

// The components' own sections, by their leaf modules (which depend on
// nothing of the daemon's), not through the components themselves.
use crate::{
    geodb::config::{GeoIpConfig, RawGeoIp},
    kernel::config::{KernelConfig, RawKernel},
    output::{Output, RawOutput},
};

/// The configuration compiled into the daemon, used when no `--config` is
/// given. It is also the documented example: `residency default-config`
/// prints it, and a test checks that it parses.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/residency.toml");

/// The file as written: each component's section in its own raw form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    kernel: RawKernel,
    #[serde(default)]
    output: RawOutput,
    #[serde(default)]
    evidence: RawEvidence,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    geoip: RawGeoIp,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    jurisdiction: Vec<RawJurisdiction>,
    #[serde(default)]
    internal: Vec<RawInternal>,
    #[serde(default)]
    deny: Vec<RawDenyRule>,
    #[serde(default)]
    tenant: Vec<RawTenant>,
    #[serde(default)]
    workload: Vec<RawWorkload>,
    #[serde(default)]
    exception: Vec<RawException>,
    #[serde(default)]
    sink: Vec<RawSink>,
    kubernetes: Option<kubernetes::RawKubernetes>,
    #[serde(default)]
    names: names::RawNames,
    #[serde(default)]
    catalog: names::RawCatalog,
    #[serde(default)]
    endpoint: Vec<residency_config::Spanned<residency_catalog::RawEndpoint>>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from, for messages.
    pub source: String,
    pub mode: Mode,
    pub kernel: KernelConfig,
    pub output: Output,
    /// The evidence store: where, how often it is signed, how long kept.
    pub evidence: EvidenceConfig,
    /// The local REST API.
    pub api: ApiConfig,
    /// SIEM sinks (`[[sink]]`).
    pub sinks: Vec<SinkConfig>,
    pub geoip: GeoIpConfig,
    pub policy: PolicyConfig,
    /// Pod identity on a Kubernetes node (`[kubernetes]`).
    pub kubernetes: KubernetesConfig,
    /// Name tracking: DNS answers and TLS server names (`[names]`).
    pub names: NamesConfig,
    /// Where providers process data, by host name: built in, plus
    /// `[[endpoint]]` and `[catalog.deployments]`.
    pub catalog: std::sync::Arc<residency_catalog::Catalog>,
    /// Built-in and custom jurisdiction sets.
    pub sets: Sets,
    /// Destination rules, checked before the `GeoIP` tables: deny rules,
    /// then internal networks, then the local ranges. Rule `i` has id
    /// `i + 1`; 0 means the `GeoIP` tables decided.
    pub rules: Vec<Rule>,
    pub tenants: Vec<Tenant>,
    /// Workload `i` applies policy index `i + 1`; index 0, the default
    /// policy (`[policy]`), applies to every process no workload matches.
    pub workloads: Vec<Workload>,
    /// Exceptions, with rule ids after those of `rules`.
    pub exceptions: Vec<Exception>,
    /// SHA-256 of the file's bytes, hex: the policy version every record
    /// carries.
    pub hash: String,
    /// The file's text, kept so that the evidence holds the exact policy
    /// each version stood for.
    pub text: String,
}

impl Config {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file (and line and field, where there is
    /// one) if the file cannot be read or is not a valid configuration.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::file(source.clone(), format!("cannot read the file: {e}")))?;
        Self::from_toml(&text, &source)
    }

    /// The built-in default configuration.
    ///
    /// # Errors
    /// Only if the built-in file is broken, which a unit test rules out.
    pub fn builtin() -> Result<Self, ConfigError> {
        Self::from_toml(DEFAULT_CONFIG, "<built-in default>")
    }

    /// Parses and validates TOML text; `source` names it in errors.
    ///
    /// # Errors
    /// A [`ConfigError`] for the first problem found.
    pub fn from_toml(text: &str, source: &str) -> Result<Self, ConfigError> {
        let at = Locator::new(text, source);
        let raw: RawConfig = at.parse()?;

        // Each component validates its own section...
        let kernel = KernelConfig::validate(&raw.kernel, &at)?;
        let output = Output::validate(&raw.output, &at)?;
        let evidence = EvidenceConfig::validate(&raw.evidence, &at)?;
        let api = ApiConfig::validate(&raw.api, &evidence.directory, &at)?;
        let sinks = residency_siem::config::validate(&raw.sink, &at)?;
        let geoip = GeoIpConfig::validate(&raw.geoip, &at)?;
        let names = names::validate_names(&raw.names, &at)?;
        let kubernetes = kubernetes::validate_kubernetes(raw.kubernetes.as_ref(), &at)?;
        // ...and the policy is validated here, section by section.
        let sets = policy::validate_sets(&raw.jurisdiction, &at)?;
        let policy = policy::validate_policy(&raw.policy, &sets, &at)?;
        let rules = rules::validate_rules(&raw, &at)?;
        let catalog = std::sync::Arc::new(names::validate_catalog(
            &raw.catalog,
            &raw.endpoint,
            &sets,
            &at,
        )?);
        let tenants = tenants::validate_tenants(&raw, &policy, &sets, &at)?;
        let workloads = workloads::validate_workloads(&raw, &tenants, &kubernetes, &at)?;
        let exceptions = exceptions::validate_exceptions(
            &raw,
            &tenants,
            &workloads,
            rules::next_id(&rules),
            &at,
        )?;

        let hash = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                use std::fmt::Write as _;
                let _ = write!(s, "{b:02x}");
                s
            });
        Ok(Config {
            source: source.to_owned(),
            mode: raw.mode,
            kernel,
            output,
            evidence,
            api,
            sinks,
            geoip,
            policy,
            kubernetes,
            names,
            catalog,
            sets,
            rules,
            tenants,
            workloads,
            exceptions,
            hash,
            text: text.to_owned(),
        })
    }

    /// Whether the kernel programs must be able to block at all. When not,
    /// they are loaded with the deny path compiled out.
    #[must_use]
    pub fn may_block(&self) -> bool {
        let default_blocks = self.mode == Mode::Enforce
            && (self.deny_rules().next().is_some()
                || self.policy.allowed != CountrySet::all()
                || self.policy.unknown == Choice::Block
                || self.policy.local == Choice::Block);
        default_blocks || self.workloads.iter().any(|w| w.mode == Mode::Enforce)
    }

    /// The safety interlock: refuses to let deny rules apply to every
    /// process on the host (the cgroup2 root) unless the configuration says
    /// so explicitly. Checked again by `run` once the target cgroup is known,
    /// since `--cgroup` can change it.
    ///
    /// # Errors
    /// A [`ConfigError`] on the `mode` field that says how to proceed.
    pub fn check_enforce_interlock(&self, attaches_to_root: bool) -> Result<(), ConfigError> {
        if self.may_block() && attaches_to_root && !self.kernel.allow_enforce_at_root {
            return Err(ConfigError {
                file: self.source.clone(),
                line: None,
                field: "mode".to_owned(),
                message: "\"enforce\" on the cgroup2 root would let the deny rules block every \
                          process on this host; attach to the workloads' cgroup (kernel.cgroup or \
                          --cgroup), or set kernel.allow_enforce_at_root = true if that is meant"
                    .to_owned(),
            });
        }
        Ok(())
    }

    /// What is valid but probably not meant, or weaker than it looks: for
    /// `residency check` and the daemon's log.
    #[must_use]
    pub fn warnings(&self, now: jiff::Timestamp) -> Vec<String> {
        let strictness = |c: Choice| match c {
            Choice::Allow => 0,
            Choice::Flag => 1,
            Choice::Block => 2,
        };
        let mut out = Vec::new();
        for w in &self.workloads {
            if w.allowed.is_empty() {
                out.push(format!(
                    "workload \"{}\": its tenants ({}) have no country in common, so every \
                     destination outside the rules and exceptions is a violation",
                    w.name,
                    w.tenants.join(", ")
                ));
            }
            let by_name = w.selectors.comm().is_some()
                && w.selectors.cgroups.is_empty()
                && w.selectors.unit.is_none();
            if !by_name {
                continue;
            }
            let mut looser = Vec::new();
            if w.allowed.iter().any(|c| !self.policy.allowed.contains(c)) {
                looser.push("countries");
            }
            if self.exceptions.iter().any(|e| e.applies_to(w)) {
                looser.push("exceptions");
            }
            if w.mode == Mode::Monitor && self.mode == Mode::Enforce {
                looser.push("monitor mode");
            }
            if strictness(w.unknown) < strictness(self.policy.unknown) {
                looser.push("unknown destinations");
            }
            if !looser.is_empty() {
                out.push(format!(
                    "workload \"{}\" is selected by process name, which any process can give \
                     itself, and it allows more than the default policy ({}): any process could \
                     take its policy; select it by cgroup, unit or uid to enforce it",
                    w.name,
                    looser.join(", ")
                ));
            }
        }
        for e in self.exceptions.iter().filter(|e| !e.in_force(now)) {
            out.push(format!(
                "exception \"{}\" expired at {}; it no longer applies",
                e.name, e.expires
            ));
        }
        out
    }
}
