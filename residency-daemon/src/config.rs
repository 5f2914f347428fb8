//! Configuration: the first stage of the control path.
//!
//! A TOML file is parsed into a raw form that mirrors the file (with
//! `deny_unknown_fields`, so a misspelt key is an error, not a silently
//! ignored setting), then converted with [`Config::from_toml`] into a
//! validated form in which invalid states cannot be represented. Every error
//! names the file, the line and the field, and says what would be valid.
//!
//! The compiled kernel maps are built from the validated form by
//! [`crate::kernel`]; nothing reads the raw form after validation.

use std::{
    fmt,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use geoip::{CountryCode, CountrySet, Sets};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use toml::Spanned;

/// The configuration compiled into the daemon, used when no `--config` is
/// given. It is also the documented example: `residency default-config`
/// prints it, and a test checks that it parses.
pub const DEFAULT_CONFIG: &str = include_str!("../config/residency.toml");

/// A configuration error: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file, or `<built-in default>`.
    pub file: String,
    /// 1-based line, when the error points at a place in the file.
    pub line: Option<usize>,
    /// Dotted path of the field, e.g. `deny[1].destinations[0]`; empty when
    /// the file as a whole is at fault.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Monitor reports and never blocks; enforce blocks what the rules deny.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Monitor,
    Enforce,
}

impl Mode {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        }
    }
}

/// What to do with a destination: for unknown destinations and local ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    Allow,
    /// Report as a violation, never block.
    Flag,
    /// Block when enforcing, flag when monitoring.
    Block,
}

impl Choice {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Choice::Allow => "allow",
            Choice::Flag => "flag",
            Choice::Block => "block",
        }
    }
}

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

/// The legal basis of a transfer an exception allows (GDPR Chapter V).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Basis {
    /// Art. 45 adequacy decision.
    Adequacy,
    /// EU-U.S. Data Privacy Framework certification of the recipient.
    Dpf,
    /// Standard contractual clauses, Art. 46(2)(c).
    Scc,
    /// Binding corporate rules, Art. 47.
    Bcr,
    /// A derogation for a specific situation, Art. 49.
    Art49,
}

impl Basis {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Adequacy => "adequacy",
            Basis::Dpf => "dpf",
            Basis::Scc => "scc",
            Basis::Bcr => "bcr",
            Basis::Art49 => "art49",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: Spanned<String>,
    #[serde(default)]
    name: String,
    allowed: Spanned<Vec<Spanned<String>>>,
    mode: Option<Mode>,
    unknown: Option<Choice>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawException {
    name: Spanned<String>,
    destinations: Spanned<Vec<Spanned<String>>>,
    basis: Basis,
    justification: Spanned<String>,
    expires: Spanned<String>,
    #[serde(default)]
    tenants: Vec<Spanned<String>>,
    #[serde(default)]
    workloads: Vec<Spanned<String>>,
    #[serde(default)]
    roles: Vec<Role>,
}

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
    sink: Vec<crate::siem::config::RawSink>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGeoIp {
    database: Option<Spanned<String>>,
    asn_database: Option<Spanned<String>>,
    check_interval_secs: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    allowed: Option<Spanned<Vec<Spanned<String>>>>,
    unknown: Option<Choice>,
    local: Option<Choice>,
    local_networks: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJurisdiction {
    name: Spanned<String>,
    countries: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInternal {
    name: Spanned<String>,
    destinations: Spanned<Vec<Spanned<String>>>,
    jurisdiction: Spanned<String>,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKernel {
    cgroup: Option<Spanned<String>>,
    ring_buffer_kib: Option<Spanned<u32>>,
    wakeup_kib: Option<Spanned<u32>>,
    poll_interval_ms: Option<Spanned<u64>>,
    stats_interval_ms: Option<Spanned<u64>>,
    #[serde(default)]
    allow_enforce_at_root: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    events: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvidence {
    directory: Option<Spanned<String>>,
    checkpoint_records: Option<Spanned<u64>>,
    checkpoint_interval_secs: Option<Spanned<u64>>,
    retention_days: Option<Spanned<u64>>,
    max_size_mib: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<Spanned<String>>,
    socket: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDenyRule {
    name: Spanned<String>,
    destinations: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    description: String,
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
    pub sinks: Vec<crate::siem::config::SinkConfig>,
    pub geoip: GeoIpConfig,
    pub policy: PolicyConfig,
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

/// A tenant: whose data it is, and where it may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub allowed: CountrySet,
    pub allowed_names: Vec<String>,
    pub mode: Mode,
    pub unknown: Choice,
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

/// A destination allowed for some workloads despite their policy, on a
/// documented transfer basis, until it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub id: u32,
    pub name: String,
    pub destinations: Vec<IpNet>,
    pub basis: Basis,
    pub justification: String,
    pub expires: jiff::Timestamp,
    /// Applies to workloads all of whose tenants are listed here...
    pub tenants: Vec<String>,
    /// ...or to these workloads by name...
    pub workloads: Vec<String>,
    /// ...and, if any are listed, only in these roles.
    pub roles: Vec<Role>,
}

impl Exception {
    /// Whether it applies to `w` (ignoring expiry).
    #[must_use]
    pub fn applies_to(&self, w: &Workload) -> bool {
        let scoped = self.workloads.contains(&w.name)
            || (!self.tenants.is_empty() && w.tenants.iter().all(|t| self.tenants.contains(t)));
        scoped && (self.roles.is_empty() || self.roles.contains(&w.role))
    }

    /// Whether it is in force at `now`.
    #[must_use]
    pub fn in_force(&self, now: jiff::Timestamp) -> bool {
        now < self.expires
    }
}

/// The evidence store's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceConfig {
    /// Holds the store (`evidence.db`), its signing key (`evidence.key`)
    /// and the API token (`api.token`).
    pub directory: PathBuf,
    /// Sign a checkpoint after this many records...
    pub checkpoint_records: u64,
    /// ...or this long after the last one, whichever comes first.
    pub checkpoint_interval: Duration,
    /// Prune records older than this (`None`: keep them).
    pub retention: Option<Duration>,
    /// Prune the oldest records when the store grows past this many bytes.
    pub max_bytes: Option<u64>,
    /// Rewind a write-ahead log past this many bytes (not configurable:
    /// [`crate::evidence::WAL_LIMIT`]; tests use less).
    pub wal_limit: u64,
    /// Records sampled to train the store's compression dictionary (not
    /// configurable: [`crate::evidence::codec::SAMPLES`]; tests use fewer).
    pub dict_samples: usize,
}

/// Where the REST API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// TCP address on loopback (`None`: no TCP listener). Port 0 picks a
    /// free port, written to `api.addr` in the evidence directory.
    pub listen: Option<std::net::SocketAddr>,
    /// Unix socket, for root (`None`: none).
    pub socket: Option<PathBuf>,
    /// The bearer token TCP clients present (created at first start).
    pub token_file: PathBuf,
}

/// The default evidence directory of an installed daemon.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/residency";
/// The default API socket.
pub const DEFAULT_API_SOCKET: &str = "/run/residency/api.sock";
/// The default API port on 127.0.0.1.
pub const DEFAULT_API_PORT: u16 = 7470;

/// Where the `GeoIP` data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoIpConfig {
    /// A country (or city) database; `None`: search the usual places.
    pub database: Option<PathBuf>,
    /// A separate ASN database, if the country one has no ASNs.
    pub asn_database: Option<PathBuf>,
    /// How often the files are checked for a new version.
    pub check_interval: Duration,
}

/// The residency policy (one, for every workload, until tenants and
/// workloads have their own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Countries data may go to.
    pub allowed: CountrySet,
    /// The names the set was written with (sets and countries), for
    /// explanations.
    pub allowed_names: Vec<String>,
    /// Built-in sets named in `allowed` that hold only on a condition
    /// (US-DPF): set name, its countries, the condition.
    pub conditions: Vec<(&'static str, CountrySet, &'static str)>,
    /// Destinations the `GeoIP` data has no country for.
    pub unknown: Choice,
    /// Loopback, private, link-local and multicast destinations.
    pub local: Choice,
}

/// A destination rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: u32,
    pub name: String,
    pub description: String,
    pub kind: RuleKind,
    /// Normalised: no host bits, and IPv4-mapped IPv6 prefixes turned into
    /// the IPv4 prefixes they stand for (the kernel judges `::ffff:a.b.c.d`
    /// as IPv4, so a mapped prefix would otherwise never match).
    pub destinations: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// Never allowed: blocked when enforcing, flagged when monitoring.
    Deny,
    /// An internal network, judged by the jurisdiction it sits in.
    Internal(CountryCode),
    /// Loopback, private, link-local, multicast: `policy.local` applies.
    Local,
}

/// The ranges that are local by default (`policy.local_networks` replaces
/// the list): loopback and unspecified (RFC 1122, RFC 4291), private (RFC 1918, RFC 4193),
/// shared CGNAT space (RFC 6598), link-local (RFC 3927, RFC 4291), "this
/// network" (RFC 1122), multicast and limited broadcast.
pub const DEFAULT_LOCAL_NETWORKS: &[&str] = &[
    "127.0.0.0/8",
    "::1/128",
    // The hooks see "::" before TCP and UDP turn it into ::1.
    "::/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "fe80::/10",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "ff00::/8",
    "255.255.255.255/32",
];

#[derive(Debug, Clone, PartialEq)]
pub struct KernelConfig {
    /// cgroup v2 directory to attach to, relative to the cgroup2 mount
    /// (empty: the mount itself, i.e. every process on the host).
    pub cgroup: PathBuf,
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub ring_buffer_bytes: u32,
    /// Waiting bytes at which the kernel wakes the reader.
    pub wakeup_bytes: u64,
    /// How often the reader drains the ring buffer without a wakeup.
    pub poll_interval: Duration,
    /// How often the kernel's drop counters are read.
    pub stats_interval: Duration,
    /// Safety interlock: a program that can block is attached to the cgroup2
    /// root (every process on the host) only if this is set.
    pub allow_enforce_at_root: bool,
}

/// Where flow records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    /// Appended to, created if missing.
    File(PathBuf),
}

const PAGE: u32 = 4096;
const DEFAULT_RING_KIB: u32 = 1024;
const MAX_RING_KIB: u32 = 1024 * 1024;
const DEFAULT_POLL_MS: u64 = 10;
const DEFAULT_STATS_MS: u64 = 1000;
const DEFAULT_GEOIP_CHECK_SECS: u64 = 10;

impl Config {
    /// Reads and validates a configuration file.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file (and line and field, where there is
    /// one) if the file cannot be read or is not a valid configuration.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let source = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: source.clone(),
            line: None,
            field: String::new(),
            message: format!("cannot read the file: {e}"),
        })?;
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
        let at = Locator { text, source };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError {
            file: source.to_owned(),
            line: e.span().map(|s| at.line(&s)),
            field: e
                .span()
                .map(|s| field_at(text, s.start))
                .unwrap_or_default(),
            message: e.message().trim().to_owned(),
        })?;

        let kernel = validate_kernel(&raw.kernel, &at)?;
        let output = validate_output(&raw.output, &at)?;
        let evidence = validate_evidence(&raw.evidence, &at)?;
        let api = validate_api(&raw.api, &evidence, &at)?;
        let sinks = crate::siem::config::validate(&raw.sink, &at)?;
        let geoip = validate_geoip(&raw.geoip, &at)?;
        let sets = validate_sets(&raw.jurisdiction, &at)?;
        let policy = validate_policy(&raw.policy, &sets, &at)?;
        let rules = validate_rules(&raw, &at)?;
        let tenants = validate_tenants(&raw, &policy, &sets, &at)?;
        let workloads = validate_workloads(&raw, &tenants, &at)?;
        let exceptions = validate_exceptions(&raw, &tenants, &workloads, next_id(&rules), &at)?;

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
            sets,
            rules,
            tenants,
            workloads,
            exceptions,
            hash,
            text: text.to_owned(),
        })
    }

    /// The deny rules.
    pub fn deny_rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| r.kind == RuleKind::Deny)
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

    /// The rule with an id from the kernel (0, the `GeoIP` tables, has none).
    #[must_use]
    pub fn rule(&self, id: u32) -> Option<&Rule> {
        self.rules.get(usize::try_from(id.checked_sub(1)?).ok()?)
    }

    /// The exception with a rule id from the kernel.
    #[must_use]
    pub fn exception(&self, id: u32) -> Option<&Exception> {
        self.exceptions.iter().find(|e| e.id == id)
    }

    /// The rule name for a rule id from the kernel; "geoip" for 0.
    #[must_use]
    pub fn rule_name(&self, id: u32) -> Option<&str> {
        if id == 0 {
            return Some("geoip");
        }
        self.rule(id)
            .map(|r| r.name.as_str())
            .or_else(|| self.exception(id).map(|e| e.name.as_str()))
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

fn validate_kernel(raw: &RawKernel, at: &Locator<'_>) -> Result<KernelConfig, ConfigError> {
    let cgroup = match &raw.cgroup {
        None => PathBuf::new(),
        Some(s) => {
            normalise_cgroup(s.get_ref()).map_err(|m| at.err(s.span(), "kernel.cgroup", &m))?
        }
    };

    let ring_kib = raw
        .ring_buffer_kib
        .as_ref()
        .map_or(DEFAULT_RING_KIB, |s| *s.get_ref());
    if !(PAGE / 1024..=MAX_RING_KIB).contains(&ring_kib) || !ring_kib.is_power_of_two() {
        let span = raw.ring_buffer_kib.as_ref().map(Spanned::span);
        return Err(at.err_opt(
            span,
            "kernel.ring_buffer_kib",
            &format!(
                "{ring_kib} is not a power of two between {} and {MAX_RING_KIB} (KiB)",
                PAGE / 1024
            ),
        ));
    }
    let ring_buffer_bytes = ring_kib * 1024;

    let wakeup_bytes = match &raw.wakeup_kib {
        // A quarter full: the reader wakes long before the ring overflows,
        // and at most a few times per ring's worth of events.
        None => u64::from(ring_buffer_bytes / 4),
        Some(s) if *s.get_ref() > ring_kib => {
            return Err(at.err(
                s.span(),
                "kernel.wakeup_kib",
                &format!(
                    "{} is larger than the ring buffer ({ring_kib} KiB); \
                     set it to {ring_kib} to rely on the poll timer alone",
                    s.get_ref()
                ),
            ));
        }
        Some(s) => u64::from(*s.get_ref()) * 1024,
    };

    let poll_ms = raw
        .poll_interval_ms
        .as_ref()
        .map_or(DEFAULT_POLL_MS, |s| *s.get_ref());
    if !(1..=10_000).contains(&poll_ms) {
        return Err(at.err_opt(
            raw.poll_interval_ms.as_ref().map(Spanned::span),
            "kernel.poll_interval_ms",
            &format!("{poll_ms} is outside 1..=10000"),
        ));
    }
    let stats_ms = raw
        .stats_interval_ms
        .as_ref()
        .map_or(DEFAULT_STATS_MS, |s| *s.get_ref());
    if !(10..=60_000).contains(&stats_ms) {
        return Err(at.err_opt(
            raw.stats_interval_ms.as_ref().map(Spanned::span),
            "kernel.stats_interval_ms",
            &format!("{stats_ms} is outside 10..=60000"),
        ));
    }

    Ok(KernelConfig {
        cgroup,
        ring_buffer_bytes,
        wakeup_bytes,
        poll_interval: Duration::from_millis(poll_ms),
        stats_interval: Duration::from_millis(stats_ms),
        allow_enforce_at_root: raw.allow_enforce_at_root,
    })
}

fn validate_output(raw: &RawOutput, at: &Locator<'_>) -> Result<Output, ConfigError> {
    Ok(match &raw.events {
        None => Output::Stdout,
        Some(s) if s.get_ref() == "-" => Output::Stdout,
        Some(s) if s.get_ref().is_empty() => {
            return Err(at.err(
                s.span(),
                "output.events",
                "is empty; use \"-\" for standard output or a file path",
            ));
        }
        Some(s) => Output::File(PathBuf::from(s.get_ref())),
    })
}

fn validate_evidence(raw: &RawEvidence, at: &Locator<'_>) -> Result<EvidenceConfig, ConfigError> {
    let directory = match &raw.directory {
        None => PathBuf::from(DEFAULT_STATE_DIR),
        Some(s) if !Path::new(s.get_ref()).is_absolute() => {
            return Err(at.err(
                s.span(),
                "evidence.directory",
                "must be an absolute path, e.g. \"/var/lib/residency\"",
            ));
        }
        Some(s) => PathBuf::from(s.get_ref()),
    };
    let ranged = |v: &Option<Spanned<u64>>,
                  field: &str,
                  default: Option<u64>,
                  range: std::ops::RangeInclusive<u64>| {
        match v {
            None => Ok(default),
            Some(s) if range.contains(s.get_ref()) => Ok(Some(*s.get_ref())),
            Some(s) => Err(at.err(
                s.span(),
                field,
                &format!(
                    "{} is outside {}..={}",
                    s.get_ref(),
                    range.start(),
                    range.end()
                ),
            )),
        }
    };
    let records = ranged(
        &raw.checkpoint_records,
        "evidence.checkpoint_records",
        Some(10_000),
        1..=100_000_000,
    )?;
    let secs = ranged(
        &raw.checkpoint_interval_secs,
        "evidence.checkpoint_interval_secs",
        Some(60),
        1..=86_400,
    )?;
    let days = ranged(
        &raw.retention_days,
        "evidence.retention_days",
        None,
        1..=36_500,
    )?;
    let mib = ranged(
        &raw.max_size_mib,
        "evidence.max_size_mib",
        None,
        16..=16 * 1024 * 1024,
    )?;
    Ok(EvidenceConfig {
        directory,
        checkpoint_records: records.unwrap_or(10_000),
        checkpoint_interval: Duration::from_secs(secs.unwrap_or(60)),
        retention: days.map(|d| Duration::from_secs(d * 86_400)),
        max_bytes: mib.map(|m| m * 1024 * 1024),
        wal_limit: crate::evidence::WAL_LIMIT,
        dict_samples: crate::evidence::codec::SAMPLES,
    })
}

fn validate_api(
    raw: &RawApi,
    evidence: &EvidenceConfig,
    at: &Locator<'_>,
) -> Result<ApiConfig, ConfigError> {
    let off = |s: &Spanned<String>| matches!(s.get_ref().as_str(), "" | "off");
    let listen = match &raw.listen {
        None => Some(std::net::SocketAddr::from((
            std::net::Ipv4Addr::LOCALHOST,
            DEFAULT_API_PORT,
        ))),
        Some(s) if off(s) => None,
        Some(s) => {
            let addr: std::net::SocketAddr = s.get_ref().parse().map_err(|_| {
                at.err(
                    s.span(),
                    "api.listen",
                    &format!(
                        "\"{}\" is not an address and port, e.g. \"127.0.0.1:{DEFAULT_API_PORT}\" (or \"off\")",
                        s.get_ref()
                    ),
                )
            })?;
            if !addr.ip().is_loopback() {
                return Err(at.err(
                    s.span(),
                    "api.listen",
                    &format!(
                        "{addr} is not a loopback address: the API serves evidence to local clients only (put a proxy with TLS in front to reach it from elsewhere)"
                    ),
                ));
            }
            Some(addr)
        }
    };
    let path = |v: &Option<Spanned<String>>, field: &str, default: PathBuf| match v {
        None => Ok(Some(default)),
        Some(s) if off(s) => Ok(None),
        Some(s) if !Path::new(s.get_ref()).is_absolute() => {
            Err(at.err(s.span(), field, "must be an absolute path (or \"off\")"))
        }
        Some(s) => Ok(Some(PathBuf::from(s.get_ref()))),
    };
    let socket = path(&raw.socket, "api.socket", PathBuf::from(DEFAULT_API_SOCKET))?;
    let token_file = path(
        &raw.token_file,
        "api.token_file",
        evidence.directory.join("api.token"),
    )?
    .unwrap_or_else(|| evidence.directory.join("api.token"));
    Ok(ApiConfig {
        listen,
        socket,
        token_file,
    })
}

fn validate_sets(raw: &[RawJurisdiction], at: &Locator<'_>) -> Result<Sets, ConfigError> {
    let mut sets = Sets::new();
    for (i, j) in raw.iter().enumerate() {
        let members: Vec<&str> = j
            .countries
            .get_ref()
            .iter()
            .map(|c| c.get_ref().as_str())
            .collect();
        sets.define(j.name.get_ref(), &members).map_err(|e| {
            // Point at the member at fault when there is one.
            let (span, field) = match &e {
                geoip::sets::SetError::Unknown(bad)
                | geoip::sets::SetError::Country(geoip::country::UnknownCountry(bad)) => j
                    .countries
                    .get_ref()
                    .iter()
                    .enumerate()
                    .find(|(_, c)| c.get_ref() == bad)
                    .map_or(
                        (j.countries.span(), format!("jurisdiction[{i}].countries")),
                        |(k, c)| (c.span(), format!("jurisdiction[{i}].countries[{k}]")),
                    ),
                _ => (j.name.span(), format!("jurisdiction[{i}].name")),
            };
            at.err(span, &field, &e.to_string())
        })?;
        let _ = &j.description;
    }

    Ok(sets)
}

/// Deny rules, then internal networks, then the local ranges, numbered in
/// that order.
fn validate_rules(raw: &RawConfig, at: &Locator<'_>) -> Result<Vec<Rule>, ConfigError> {
    let mut rules: Vec<Rule> = Vec::new();
    // The kernel keys rules by prefix, so one prefix can name one rule.
    let mut seen: std::collections::HashMap<IpNet, String> = std::collections::HashMap::new();
    for (i, rule) in raw.deny.iter().enumerate() {
        let field = format!("deny[{i}]");
        let destinations = rule_destinations(&rule.destinations, &field, &mut seen, at)?;
        push_rule(
            &mut rules,
            &rule.name,
            &field,
            &rule.description,
            RuleKind::Deny,
            destinations,
            at,
        )?;
    }
    for (i, net) in raw.internal.iter().enumerate() {
        let field = format!("internal[{i}]");
        let jurisdiction: CountryCode =
            net.jurisdiction
                .get_ref()
                .parse()
                .map_err(|e: geoip::country::UnknownCountry| {
                    at.err(
                        net.jurisdiction.span(),
                        &format!("{field}.jurisdiction"),
                        &e.to_string(),
                    )
                })?;
        let destinations = rule_destinations(&net.destinations, &field, &mut seen, at)?;
        push_rule(
            &mut rules,
            &net.name,
            &field,
            &net.description,
            RuleKind::Internal(jurisdiction),
            destinations,
            at,
        )?;
    }
    // Local ranges: the configured list or the defaults. A prefix the
    // user named in a rule above keeps that rule.
    let local: Vec<IpNet> = match &raw.policy.local_networks {
        Some(list) => {
            let mut nets = Vec::new();
            for (j, cidr) in list.get_ref().iter().enumerate() {
                let here = format!("policy.local_networks[{j}]");
                nets.push(
                    parse_cidr(cidr.get_ref()).map_err(|msg| at.err(cidr.span(), &here, &msg))?,
                );
            }
            nets
        }
        None => DEFAULT_LOCAL_NETWORKS
            .iter()
            .filter_map(|c| parse_cidr(c).ok())
            .collect(),
    };
    let local: Vec<IpNet> = local
        .into_iter()
        .filter(|n| !seen.contains_key(n))
        .collect();
    if !local.is_empty() {
        rules.push(Rule {
            id: next_id(&rules),
            name: "local-networks".to_owned(),
            description: "loopback, private, link-local and multicast ranges".to_owned(),
            kind: RuleKind::Local,
            destinations: local,
        });
    }

    let total: usize = rules.iter().map(|r| r.destinations.len()).sum();
    if total > residency_common::MAX_DEST_RULES as usize {
        return Err(ConfigError {
            file: at.source.to_owned(),
            line: None,
            field: "deny".to_owned(),
            message: format!(
                "{total} destinations in all; at most {} fit in the kernel's rule table",
                residency_common::MAX_DEST_RULES
            ),
        });
    }

    Ok(rules)
}

fn validate_tenants(
    raw: &RawConfig,
    policy: &PolicyConfig,
    sets: &Sets,
    at: &Locator<'_>,
) -> Result<Vec<Tenant>, ConfigError> {
    let mut tenants: Vec<Tenant> = Vec::new();
    for (i, t) in raw.tenant.iter().enumerate() {
        let field = format!("tenant[{i}]");
        let id = t.id.get_ref().trim();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(at.err(
                t.id.span(),
                &format!("{field}.id"),
                &format!("\"{id}\" is not a tenant id: use letters, digits, '-' or '_'"),
            ));
        }
        if tenants.iter().any(|x| x.id == id) {
            return Err(at.err(
                t.id.span(),
                &format!("{field}.id"),
                &format!("\"{id}\" is already a tenant"),
            ));
        }
        if t.allowed.get_ref().is_empty() {
            return Err(at.err(
                t.allowed.span(),
                &format!("{field}.allowed"),
                "is empty; name the jurisdiction sets or countries the tenant's contract allows, e.g. [\"EEA\"]",
            ));
        }
        let mut allowed = CountrySet::EMPTY;
        let mut names = Vec::new();
        for (j, n) in t.allowed.get_ref().iter().enumerate() {
            let set = sets
                .resolve(n.get_ref())
                .map_err(|e| at.err(n.span(), &format!("{field}.allowed[{j}]"), &e.to_string()))?;
            allowed = allowed.union(&set);
            names.push(n.get_ref().clone());
        }
        tenants.push(Tenant {
            id: id.to_owned(),
            name: if t.name.is_empty() {
                id.to_owned()
            } else {
                t.name.clone()
            },
            allowed,
            allowed_names: names,
            mode: t.mode.unwrap_or(raw.mode),
            unknown: t.unknown.unwrap_or(policy.unknown),
        });
    }
    Ok(tenants)
}

fn strictest(a: Choice, b: Choice) -> Choice {
    let rank = |c| match c {
        Choice::Allow => 0,
        Choice::Flag => 1,
        Choice::Block => 2,
    };
    if rank(b) > rank(a) { b } else { a }
}

#[expect(
    clippy::too_many_lines,
    reason = "one check after another, each with its own message"
)]
fn validate_workloads(
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

fn validate_exceptions(
    raw: &RawConfig,
    tenants: &[Tenant],
    workloads: &[Workload],
    first_id: u32,
    at: &Locator<'_>,
) -> Result<Vec<Exception>, ConfigError> {
    let mut out: Vec<Exception> = Vec::new();
    for (i, e) in raw.exception.iter().enumerate() {
        let field = format!("exception[{i}]");
        let name = e.name.get_ref().trim();
        if name.is_empty() || out.iter().any(|x| x.name == name) {
            return Err(at.err(
                e.name.span(),
                &format!("{field}.name"),
                "is empty or names another exception",
            ));
        }
        if e.justification.get_ref().trim().is_empty() {
            return Err(at.err(
                e.justification.span(),
                &format!("{field}.justification"),
                "is empty; say why the transfer is lawful (the contract, the clauses, the assessment)",
            ));
        }
        let expires = parse_expiry(e.expires.get_ref())
            .map_err(|m| at.err(e.expires.span(), &format!("{field}.expires"), &m))?;
        if e.tenants.is_empty() && e.workloads.is_empty() {
            return Err(at.err(
                e.name.span(),
                &field,
                "applies to nothing; list the tenants (all of a workload's tenants must be listed) or the workloads it covers",
            ));
        }
        for (j, t) in e.tenants.iter().enumerate() {
            if !tenants.iter().any(|x| x.id == *t.get_ref()) {
                return Err(at.err(
                    t.span(),
                    &format!("{field}.tenants[{j}]"),
                    &format!("\"{}\" is not a tenant", t.get_ref()),
                ));
            }
        }
        for (j, w) in e.workloads.iter().enumerate() {
            if !workloads.iter().any(|x| x.name == *w.get_ref()) {
                return Err(at.err(
                    w.span(),
                    &format!("{field}.workloads[{j}]"),
                    &format!("\"{}\" is not a workload", w.get_ref()),
                ));
            }
        }
        // Within one exception a prefix is listed once; across exceptions
        // only once per workload (the kernel keys exceptions by policy), so
        // two tenants' exceptions may name the same SIEM.
        let destinations = rule_destinations(
            &e.destinations,
            &field,
            &mut std::collections::HashMap::new(),
            at,
        )?;
        let exception = Exception {
            id: first_id.saturating_add(u32::try_from(i).unwrap_or(u32::MAX)),
            name: name.to_owned(),
            destinations,
            basis: e.basis,
            justification: e.justification.get_ref().trim().to_owned(),
            expires,
            tenants: e.tenants.iter().map(|t| t.get_ref().clone()).collect(),
            workloads: e.workloads.iter().map(|w| w.get_ref().clone()).collect(),
            roles: e.roles.clone(),
        };
        for (k, other) in out.iter().enumerate() {
            let Some(w) = workloads
                .iter()
                .find(|w| exception.applies_to(w) && other.applies_to(w))
            else {
                continue;
            };
            if let Some((j, net)) = exception
                .destinations
                .iter()
                .enumerate()
                .find(|(_, n)| other.destinations.contains(n))
            {
                let span = e.destinations.get_ref().get(j).map_or(0..0, Spanned::span);
                return Err(at.err(
                    span,
                    &format!("{field}.destinations[{j}]"),
                    &format!(
                        "{net} is already an exception for workload \"{}\" (exception[{k}], \"{}\"); \
                         a workload can have one exception per prefix",
                        w.name, other.name
                    ),
                ));
            }
        }
        out.push(exception);
    }
    Ok(out)
}

/// "2027-03-01" (the start of that day, UTC) or an RFC 3339 timestamp.
fn parse_expiry(text: &str) -> Result<jiff::Timestamp, String> {
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(ts);
    }
    let date: jiff::civil::Date = text.parse().map_err(|_| {
        format!("\"{text}\" is not a date (\"2027-03-01\", the start of that day in UTC) or a timestamp (\"2027-03-01T12:00:00Z\")")
    })?;
    date.to_zoned(jiff::tz::TimeZone::UTC)
        .map(|z| z.timestamp())
        .map_err(|e| e.to_string())
}

fn next_id(rules: &[Rule]) -> u32 {
    u32::try_from(rules.len() + 1).unwrap_or(u32::MAX)
}

fn push_rule(
    rules: &mut Vec<Rule>,
    name: &Spanned<String>,
    field: &str,
    description: &str,
    kind: RuleKind,
    destinations: Vec<IpNet>,
    at: &Locator<'_>,
) -> Result<(), ConfigError> {
    let n = name.get_ref().trim();
    if n.is_empty() {
        return Err(at.err(name.span(), &format!("{field}.name"), "is empty"));
    }
    if rules.iter().any(|r| r.name == n) {
        return Err(at.err(
            name.span(),
            &format!("{field}.name"),
            &format!("\"{n}\" is already the name of another rule; names must be unique"),
        ));
    }
    rules.push(Rule {
        id: next_id(rules),
        name: n.to_owned(),
        description: description.to_owned(),
        kind,
        destinations,
    });
    Ok(())
}

fn rule_destinations(
    list: &Spanned<Vec<Spanned<String>>>,
    field: &str,
    seen: &mut std::collections::HashMap<IpNet, String>,
    at: &Locator<'_>,
) -> Result<Vec<IpNet>, ConfigError> {
    if list.get_ref().is_empty() {
        return Err(at.err(
            list.span(),
            &format!("{field}.destinations"),
            "is empty; list at least one CIDR, e.g. \"203.0.113.0/24\"",
        ));
    }
    let mut out = Vec::new();
    for (j, cidr) in list.get_ref().iter().enumerate() {
        let here = format!("{field}.destinations[{j}]");
        let net = parse_cidr(cidr.get_ref()).map_err(|msg| at.err(cidr.span(), &here, &msg))?;
        if let Some(other) = seen.get(&net) {
            return Err(at.err(
                cidr.span(),
                &here,
                &format!("{net} is already listed in {other}; a prefix can belong to one rule"),
            ));
        }
        seen.insert(net, field.to_owned());
        out.push(net);
    }
    Ok(out)
}

fn validate_geoip(raw: &RawGeoIp, at: &Locator<'_>) -> Result<GeoIpConfig, ConfigError> {
    let path = |p: &Option<Spanned<String>>, field: &str| -> Result<Option<PathBuf>, ConfigError> {
        match p {
            None => Ok(None),
            Some(s) if s.get_ref().trim().is_empty() => Err(at.err(
                s.span(),
                field,
                "is empty; give the path of a .mmdb file, or leave the key out to search the usual places",
            )),
            Some(s) => Ok(Some(PathBuf::from(s.get_ref()))),
        }
    };
    let secs = raw
        .check_interval_secs
        .as_ref()
        .map_or(DEFAULT_GEOIP_CHECK_SECS, |s| *s.get_ref());
    if !(1..=86_400).contains(&secs) {
        return Err(at.err_opt(
            raw.check_interval_secs.as_ref().map(Spanned::span),
            "geoip.check_interval_secs",
            &format!("{secs} is outside 1..=86400"),
        ));
    }
    Ok(GeoIpConfig {
        database: path(&raw.database, "geoip.database")?,
        asn_database: path(&raw.asn_database, "geoip.asn_database")?,
        check_interval: Duration::from_secs(secs),
    })
}

fn validate_policy(
    raw: &RawPolicy,
    sets: &Sets,
    at: &Locator<'_>,
) -> Result<PolicyConfig, ConfigError> {
    let (allowed, allowed_names) = match &raw.allowed {
        // Without a list every country is allowed: the policy then only
        // reports, and flags what the other settings say.
        None => (CountrySet::all(), vec!["all countries".to_owned()]),
        Some(list) => {
            if list.get_ref().is_empty() {
                return Err(at.err(
                    list.span(),
                    "policy.allowed",
                    "is empty, which would forbid every country; name sets or countries, e.g. [\"EEA\"], or leave the key out to allow all",
                ));
            }
            let mut set = CountrySet::EMPTY;
            let mut names = Vec::new();
            for (j, name) in list.get_ref().iter().enumerate() {
                let s = sets.resolve(name.get_ref()).map_err(|e| {
                    at.err(name.span(), &format!("policy.allowed[{j}]"), &e.to_string())
                })?;
                set = set.union(&s);
                names.push(name.get_ref().clone());
            }
            (set, names)
        }
    };
    Ok(PolicyConfig {
        allowed,
        conditions: Sets::conditions(&allowed_names),
        allowed_names,
        unknown: raw.unknown.unwrap_or(Choice::Flag),
        local: raw.local.unwrap_or(Choice::Allow),
    })
}

/// A cgroup path relative to the cgroup2 mount: "/" or "" is the root,
/// "/system.slice/x.service" and "system.slice/x.service" are the same.
fn normalise_cgroup(path: &str) -> Result<PathBuf, String> {
    let mut out = PathBuf::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(format!(
                "\"{path}\" contains \"{part}\"; give the path from the cgroup2 mount, e.g. \"/system.slice\""
            ));
        }
        out.push(part);
    }
    Ok(out)
}

/// Parses a CIDR (or a bare address, as a host prefix), rejecting host bits
/// and turning an IPv4-mapped IPv6 prefix into its IPv4 prefix.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    let net = if text.contains('/') {
        text.parse::<IpNet>().map_err(|_| {
            format!(
                "\"{text}\" is not a CIDR; expected e.g. \"203.0.113.0/24\" or \"2001:db8::/32\""
            )
        })?
    } else {
        let addr: IpAddr = text.parse().map_err(|_| {
            let hint = if text.contains('.') && text.chars().any(|c| c.is_ascii_alphabetic()) {
                " (host names are not supported yet: give the service's addresses)"
            } else {
                ""
            };
            format!("\"{text}\" is not an IP address or CIDR{hint}; expected e.g. \"203.0.113.7\" or \"203.0.113.0/24\"")
        })?;
        IpNet::from(addr)
    };
    if net.trunc() != net {
        return Err(format!(
            "\"{text}\" has host bits set; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && v6.prefix_len() >= 96
    {
        let v4 = Ipv4Net::new(v4, v6.prefix_len() - 96).map_err(|e| e.to_string())?;
        return Ok(IpNet::V4(v4));
    }
    if let IpNet::V6(v6) = net
        && v6.prefix_len() < 96
        && Ipv6Net::new("::ffff:0:0".parse().map_err(|_| String::new())?, 96)
            .is_ok_and(|mapped| v6.contains(&mapped))
    {
        return Err(format!(
            "\"{text}\" covers the IPv4-mapped range ::ffff:0:0/96, which the kernel judges as \
             IPv4; list the IPv4 prefixes (e.g. \"0.0.0.0/0\") explicitly"
        ));
    }
    Ok(net)
}

/// The dotted path of the key whose value starts at or around `offset`, for
/// errors that the TOML parser reports by position only (an unknown variant,
/// a wrong type): `workload[1].role`, `policy.unknown`. Empty when the
/// position is not on a `key = value` line.
fn field_at(text: &str, offset: usize) -> String {
    let mut table = String::new();
    let mut counts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut key = None;
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        let end = start + line.len();
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let name = name.trim().to_owned();
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            name.trim().clone_into(&mut table);
        } else if offset >= start
            && offset < end.max(start + 1)
            && let Some((k, _)) = t.split_once('=')
        {
            key = Some(k.trim().trim_matches('"').to_owned());
        }
        if offset < end {
            break;
        }
        start = end;
    }
    match key {
        Some(k) if table.is_empty() => k,
        Some(k) => format!("{table}.{k}"),
        None => String::new(),
    }
}

/// Turns byte spans into line numbers and builds errors.
pub(crate) struct Locator<'a> {
    text: &'a str,
    source: &'a str,
}

impl Locator<'_> {
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.get(..end).map_or(0, |t| t.matches('\n').count()) + 1
    }

    pub(crate) fn err(&self, span: Range<usize>, field: &str, message: &str) -> ConfigError {
        self.err_opt(Some(span), field, message)
    }

    pub(crate) fn err_opt(
        &self,
        span: Option<Range<usize>>,
        field: &str,
        message: &str,
    ) -> ConfigError {
        ConfigError {
            file: self.source.to_owned(),
            line: span.map(|s| self.line(&s)),
            field: field.to_owned(),
            message: message.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml")
    }

    #[test]
    fn evidence_and_api_settings_are_checked() {
        let c = parse("").unwrap();
        assert_eq!(c.evidence.directory, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.evidence.checkpoint_records, 10_000);
        assert_eq!(c.evidence.retention, None);
        assert_eq!(
            c.api.listen,
            Some(([127, 0, 0, 1], DEFAULT_API_PORT).into())
        );
        assert_eq!(c.api.socket, Some(PathBuf::from(DEFAULT_API_SOCKET)));
        assert_eq!(
            c.api.token_file,
            PathBuf::from("/var/lib/residency/api.token")
        );
        let c = parse(
            "[evidence]\ndirectory = \"/srv/ev\"\nretention_days = 30\nmax_size_mib = 1024\n\
             [api]\nlisten = \"off\"\nsocket = \"off\"\n",
        )
        .unwrap();
        assert_eq!(c.evidence.retention, Some(Duration::from_hours(24 * 30)));
        assert_eq!(c.evidence.max_bytes, Some(1 << 30));
        assert_eq!(c.api.listen, None);
        assert_eq!(c.api.socket, None);
        assert_eq!(c.api.token_file, PathBuf::from("/srv/ev/api.token"));
        for (text, field, says) in [
            (
                "[api]\nlisten = \"0.0.0.0:7470\"\n",
                "api.listen",
                "not a loopback",
            ),
            (
                "[api]\nlisten = \"localhost\"\n",
                "api.listen",
                "not an address",
            ),
            ("[api]\nsocket = \"api.sock\"\n", "api.socket", "absolute"),
            (
                "[evidence]\ndirectory = \"state\"\n",
                "evidence.directory",
                "absolute",
            ),
            (
                "[evidence]\ncheckpoint_records = 0\n",
                "evidence.checkpoint_records",
                "outside",
            ),
            (
                "[evidence]\nmax_size_mib = 1\n",
                "evidence.max_size_mib",
                "outside",
            ),
            ("[evidence]\nkeep = 1\n", "evidence.keep", "unknown field"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(e.message.contains(says), "{text}: {e}");
            assert_eq!(e.line, Some(2), "{text}: {e}");
        }
        // A tenant named twice would index a flow twice under it.
        let e = parse(
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\n\
             tenants = [\"a\", \"a\"]\nuid = 5\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "workload[0].tenants[1]", "{e}");
        assert!(e.message.contains("named twice"), "{e}");
    }

    #[test]
    fn builtin_default_parses_and_is_safe() {
        let config = Config::builtin().expect("the built-in config must be valid");
        assert_eq!(config.mode, Mode::Monitor, "the default must never block");
        assert!(!config.may_block());
        assert_eq!(config.output, Output::Stdout);
    }

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.mode, Mode::Monitor);
        assert_eq!(config.kernel.cgroup, PathBuf::new());
        assert_eq!(config.kernel.ring_buffer_bytes, 1024 * 1024);
        assert_eq!(config.kernel.wakeup_bytes, 256 * 1024);
        assert_eq!(config.kernel.poll_interval, Duration::from_millis(10));
        assert_eq!(config.deny_rules().count(), 0);
        assert_eq!(
            config.policy.allowed,
            CountrySet::all(),
            "no list: every country"
        );
        assert_eq!(config.policy.unknown, Choice::Flag);
        assert_eq!(config.policy.local, Choice::Allow);
        assert_eq!(config.rules.len(), 1, "only the local ranges");
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = parse("mode = \"monitor\"\n\n[kernel]\nring_bufer_kib = 64\n").unwrap_err();
        assert_eq!(err.line, Some(4), "{err}");
        assert!(err.message.contains("ring_bufer_kib"), "{err}");
        assert!(err.to_string().starts_with("test.toml:4: "), "{err}");
    }

    #[test]
    fn bad_mode_lists_valid_ones() {
        let err = parse("mode = \"block\"\n").unwrap_err();
        assert_eq!(err.line, Some(1));
        assert!(
            err.message.contains("monitor") && err.message.contains("enforce"),
            "{err}"
        );
    }

    #[test]
    fn deny_rules_get_ids_in_order_and_normalise() {
        let config = parse(
            r#"
[[deny]]
name = "a"
destinations = ["203.0.113.0/24", "2001:db8::/32"]

[[deny]]
name = "b"
destinations = ["198.51.100.7", "::ffff:192.0.2.0/120"]
"#,
        )
        .unwrap();
        let deny: Vec<&Rule> = config.deny_rules().collect();
        assert_eq!(deny.len(), 2);
        assert_eq!(deny[0].id, 1);
        assert_eq!(deny[1].id, 2);
        assert_eq!(config.rule_name(2), Some("b"));
        assert_eq!(config.rule_name(0), Some("geoip"));
        assert_eq!(config.rule_name(3), Some("local-networks"));
        assert_eq!(config.rule_name(4), None);
        let b: Vec<String> = deny[1]
            .destinations
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(b, ["198.51.100.7/32", "192.0.2.0/24"]);
    }

    #[test]
    fn bad_cidr_names_rule_entry_and_line() {
        let err = parse(
            "[[deny]]\nname = \"x\"\ndestinations = [\n  \"10.0.0.0/8\",\n  \"10.0.0.0/33\",\n]\n",
        )
        .unwrap_err();
        assert_eq!(err.field, "deny[0].destinations[1]");
        assert_eq!(err.line, Some(5));
        assert!(err.message.contains("10.0.0.0/33"), "{err}");
    }

    #[test]
    fn host_bits_are_refused_with_a_suggestion() {
        let err = parse("[[deny]]\nname = \"x\"\ndestinations = [\"10.1.2.3/8\"]\n").unwrap_err();
        assert!(err.message.contains("did you mean \"10.0.0.0/8\""), "{err}");
    }

    #[test]
    fn wide_v6_prefix_over_mapped_range_is_refused() {
        let err = parse("[[deny]]\nname = \"x\"\ndestinations = [\"::/0\"]\n").unwrap_err();
        assert!(err.message.contains("IPv4-mapped"), "{err}");
    }

    #[test]
    fn duplicate_and_empty_rules_are_refused() {
        let err = parse("[[deny]]\nname = \"x\"\ndestinations = [\"10.0.0.0/8\"]\n[[deny]]\nname = \"x\"\ndestinations = [\"11.0.0.0/8\"]\n").unwrap_err();
        assert_eq!(err.line, Some(5));
        assert!(err.message.contains("already"), "{err}");
        let err = parse("[[deny]]\nname = \"x\"\ndestinations = []\n").unwrap_err();
        assert_eq!(err.field, "deny[0].destinations");
    }

    #[test]
    fn a_prefix_belongs_to_one_rule() {
        let err = parse(
            "[[deny]]\nname = \"a\"\ndestinations = [\"10.0.0.0/8\"]\n[[deny]]\nname = \"b\"\ndestinations = [\"::ffff:10.0.0.0/104\"]\n",
        )
        .unwrap_err();
        assert_eq!(err.field, "deny[1].destinations[0]");
        assert!(err.message.contains("deny[0]"), "{err}");
    }

    #[test]
    fn policy_sets_and_internal_networks() {
        let c = parse(
            r#"
[policy]
allowed = ["dach", "EEA", "JP"]
unknown = "block"
local = "flag"
local_networks = ["127.0.0.0/8"]
[[jurisdiction]]
name = "dach"
countries = ["DE", "AT", "CH"]
[[internal]]
name = "dc"
destinations = ["10.20.0.0/16"]
jurisdiction = "CH"
"#,
        )
        .unwrap();
        let cc = |s: &str| s.parse::<CountryCode>().unwrap();
        assert!(c.policy.allowed.contains(cc("CH")) && c.policy.allowed.contains(cc("NO")));
        assert!(c.policy.allowed.contains(cc("JP")) && !c.policy.allowed.contains(cc("US")));
        assert_eq!(c.policy.allowed_names, ["dach", "EEA", "JP"]);
        assert_eq!(
            (c.policy.unknown, c.policy.local),
            (Choice::Block, Choice::Flag)
        );
        assert_eq!(c.rules[0].kind, RuleKind::Internal(cc("CH")));
        assert_eq!(c.rules[1].kind, RuleKind::Local);
        assert_eq!(
            c.rules[1].destinations.len(),
            1,
            "local_networks replaces the defaults"
        );
    }

    #[test]
    fn policy_mistakes_name_the_entry() {
        let err = parse("[policy]\nallowed = [\"EEA\", \"UK\"]\n").unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.line),
            ("policy.allowed[1]", Some(2))
        );
        assert!(
            err.message
                .contains("\"UK\" is neither a country code nor a jurisdiction set"),
            "{err}"
        );
        let err = parse("[policy]\nallowed = []\n").unwrap_err();
        assert_eq!(err.field, "policy.allowed");
        let err = parse("[policy]\nunknown = \"deny\"\n").unwrap_err();
        assert!(
            err.message.contains("allow") && err.message.contains("block"),
            "{err}"
        );
        let err =
            parse("[[jurisdiction]]\nname = \"x\"\ncountries = [\"DE\", \"XX\"]\n").unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.line),
            ("jurisdiction[0].countries[1]", Some(3))
        );
        let err = parse("[[jurisdiction]]\nname = \"EU\"\ncountries = [\"DE\"]\n").unwrap_err();
        assert_eq!(err.field, "jurisdiction[0].name");
        let err = parse("[[internal]]\nname = \"dc\"\ndestinations = [\"10.0.0.0/8\"]\njurisdiction = \"Germany\"\n").unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.line),
            ("internal[0].jurisdiction", Some(4))
        );
        let err = parse("[geoip]\ndatabase = \"\"\n").unwrap_err();
        assert_eq!(err.field, "geoip.database");
        let err = parse(
            "[[deny]]\nname = \"a\"\ndestinations = [\"10.1.0.0/16\"]\n[[internal]]\nname = \"b\"\ndestinations = [\"10.1.0.0/16\"]\njurisdiction = \"DE\"\n",
        )
        .unwrap_err();
        assert_eq!(err.field, "internal[0].destinations[0]");
    }

    const TENANTS: &str = r#"
[[tenant]]
id = "acme"
allowed = ["EEA"]
mode = "enforce"
unknown = "block"
[[tenant]]
id = "globex"
allowed = ["EEA", "ADEQUACY"]
[[workload]]
name = "llm"
role = "llm"
tenants = ["acme", "globex"]
cgroup = ["/system.slice/llm.service"]
[[workload]]
name = "logs"
role = "logging"
tenants = ["globex"]
process = "vector"
mode = "monitor"
"#;

    #[test]
    fn workloads_take_the_intersection_and_the_strictest_choice() {
        let c = parse(TENANTS).unwrap();
        let cc = |s: &str| s.parse::<CountryCode>().unwrap();
        let llm = &c.workloads[0];
        assert!(llm.allowed.contains(cc("DE")));
        assert!(
            !llm.allowed.contains(cc("GB")),
            "GB is adequate for globex, not for acme"
        );
        assert_eq!(llm.unknown, Choice::Block, "the strictest of the tenants'");
        assert_eq!(llm.mode, Mode::Enforce, "acme enforces");
        let logs = &c.workloads[1];
        assert!(logs.allowed.contains(cc("GB")));
        assert_eq!(logs.mode, Mode::Monitor, "the workload's own mode wins");
        assert_eq!(c.workload("logs").map(|(i, _)| i), Some(2));
        assert_eq!(c.workload_of(1).map(|w| w.name.as_str()), Some("llm"));
        assert!(c.workload_of(0).is_none());
        assert!(c.may_block(), "a workload enforces");
        assert_eq!(c.hash.len(), 64);
    }

    #[test]
    fn modes_come_from_workload_then_tenants_then_the_top_level() {
        let c = parse(
            "mode = \"enforce\"\n\
             [[tenant]]\nid = \"quiet\"\nallowed = [\"EEA\"]\nmode = \"monitor\"\n\
             [[tenant]]\nid = \"plain\"\nallowed = [\"EEA\"]\n\
             [[workload]]\nname = \"a\"\nrole = \"llm\"\ntenants = [\"quiet\"]\nuid = 1\n\
             [[workload]]\nname = \"b\"\nrole = \"llm\"\ntenants = [\"plain\"]\nuid = 2\n\
             [[workload]]\nname = \"c\"\nrole = \"llm\"\ntenants = [\"quiet\", \"plain\"]\nuid = 3\n\
             [[workload]]\nname = \"d\"\nrole = \"llm\"\ntenants = [\"plain\"]\nmode = \"monitor\"\nuid = 4\n",
        )
        .unwrap();
        let modes: Vec<Mode> = c.workloads.iter().map(|w| w.mode).collect();
        assert_eq!(
            modes,
            vec![Mode::Monitor, Mode::Enforce, Mode::Enforce, Mode::Monitor],
            "a monitor tenant's workload monitors even under a top-level enforce; \
             a tenant without a mode takes the top level's; any enforcing tenant enforces; \
             the workload's own mode wins"
        );
    }

    #[test]
    fn warns_about_spoofable_looser_and_empty_policies() {
        let c = parse(
            "mode = \"enforce\"\n[policy]\nallowed = [\"DE\"]\n\
             [[tenant]]\nid = \"eu\"\nallowed = [\"EEA\"]\n\
             [[tenant]]\nid = \"us\"\nallowed = [\"US\"]\n\
             [[workload]]\nname = \"shipper\"\nrole = \"logging\"\ntenants = [\"eu\"]\nprocess = \"vector\"\n\
             [[workload]]\nname = \"strict\"\nrole = \"llm\"\ntenants = [\"eu\"]\nprocess = \"ok\"\nunit = \"ok.service\"\n\
             [[workload]]\nname = \"nowhere\"\nrole = \"backup\"\ntenants = [\"eu\", \"us\"]\nuid = 7\n\
             [[exception]]\nname = \"old\"\ndestinations = [\"192.0.2.0/24\"]\nbasis = \"scc\"\n\
             justification = \"x\"\nexpires = \"2020-01-01\"\ntenants = [\"eu\"]\n",
        )
        .unwrap();
        let w = c.warnings("2026-11-22T00:00:00Z".parse().unwrap());
        assert_eq!(w.len(), 3, "{w:#?}");
        assert!(
            w.iter()
                .any(|m| m.contains("\"nowhere\"") && m.contains("no country in common")),
            "{w:#?}"
        );
        assert!(
            w.iter().any(|m| m.contains("\"shipper\"")
                && m.contains("process name")
                && m.contains("countries")),
            "{w:#?}"
        );
        assert!(
            !w.iter().any(|m| m.contains("\"strict\"")),
            "has a unit too"
        );
        assert!(w.iter().any(|m| m.contains("\"old\" expired")));
    }

    #[test]
    fn two_tenants_may_have_exceptions_to_the_same_prefix() {
        let c = parse(
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[tenant]]\nid = \"b\"\nallowed = [\"EEA\"]\n\
             [[workload]]\nname = \"wa\"\nrole = \"logging\"\ntenants = [\"a\"]\nuid = 1\n\
             [[workload]]\nname = \"wb\"\nrole = \"logging\"\ntenants = [\"b\"]\nuid = 2\n\
             [[exception]]\nname = \"a-siem\"\ndestinations = [\"198.51.100.0/24\"]\nbasis = \"scc\"\n\
             justification = \"a's SCC\"\nexpires = \"2099-01-01\"\ntenants = [\"a\"]\n\
             [[exception]]\nname = \"b-siem\"\ndestinations = [\"198.51.100.0/24\"]\nbasis = \"dpf\"\n\
             justification = \"b's DPF\"\nexpires = \"2098-01-01\"\ntenants = [\"b\"]\n",
        )
        .unwrap();
        let k = crate::policy::compile(&c, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(
            k.exceptions_v4
                .iter()
                .map(|(i, _, _)| *i)
                .collect::<Vec<_>>(),
            vec![1, 2],
            "one per workload"
        );
    }

    #[test]
    fn parse_errors_name_the_field_by_position() {
        let text = "[policy]\nunknown = \"maybe\"\n[[tenant]]\nid = \"a\"\n[[tenant]]\nid = 5\n";
        assert_eq!(
            field_at(text, text.find("maybe").unwrap()),
            "policy.unknown"
        );
        assert_eq!(field_at(text, text.find('5').unwrap()), "tenant[1].id");
        assert_eq!(field_at(text, 0), "");
        let err = parse("[policy]\nunknown = \"maybe\"\n").unwrap_err();
        assert_eq!(err.field, "policy.unknown", "{err}");
    }

    #[test]
    fn each_kind_of_tenant_and_workload_mistake_is_named() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "[[tenant]]\nid = \"a b\"\nallowed = [\"EEA\"]\n",
                "tenant[0].id",
                "not a tenant id",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = []\n",
                "tenant[0].allowed",
                "is empty",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"XX\"]\n",
                "tenant[0].allowed[0]",
                "neither a country",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n",
                "tenant[1].id",
                "already a tenant",
            ),
            (
                "[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"nobody\"]\nuid = 1\n",
                "workload[0].tenants[0]",
                "not a tenant",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\n",
                "workload[0]",
                "no selector",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"chatbot\"\ntenants = [\"a\"]\nuid = 1\n",
                "workload[0].role",
                "chatbot",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nprocess = \"a-very-long-process-name\"\n",
                "workload[0].process",
                "15 bytes",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\ncgroup = [\"system.slice\"]\n",
                "workload[0].cgroup[0]",
                "must start with '/'",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nuid = 5\n[[workload]]\nname = \"v\"\nrole = \"llm\"\ntenants = [\"a\"]\nuid = 5\n",
                "workload[1].uid",
                "already selects workload \"w\"",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nexe = \"vector\"\n",
                "workload[0].exe",
                "absolute path",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nuid = 1\nnamespace = \"inference\"\n",
                "workload[0].namespace",
                "Kubernetes selectors are not supported yet",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\ncgroup = [\"/\"]\n",
                "workload[0].cgroup[0]",
                "cgroup2 root",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\ncgroup = [\"/a/[b\"]\n",
                "workload[0].cgroup[0]",
                "not a valid glob",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nunit = \"system.slice/x.service\"\n",
                "workload[0].unit",
                "systemd unit name",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nuid = 1\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nuid = 2\n",
                "workload[1].name",
                "already",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nprocess = \"vllm\"\n[[workload]]\nname = \"v\"\nrole = \"llm\"\ntenants = [\"a\"]\nexe = \"/opt/vllm\"\n",
                "workload[1].exe",
                "already selects workload \"w\"",
            ),
            (
                "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nuid = 1\nmode = \"block-everything\"\n",
                "workload[0].mode",
                "block-everything",
            ),
        ];
        for (toml, field, needle) in cases {
            let err = parse(toml).unwrap_err();
            assert_eq!(err.field, *field, "{toml}\n{err}");
            assert!(err.to_string().contains(needle), "{toml}\n{err}");
            assert!(err.line.is_some(), "every mistake has a line: {err}");
        }
    }

    #[test]
    fn each_kind_of_exception_mistake_is_named() {
        let base = "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"logging\"\ntenants = [\"a\"]\nuid = 1\n";
        let exc = |body: &str| {
            format!(
                "{base}[[exception]]\nname = \"e\"\ndestinations = [\"198.51.100.0/24\"]\n{body}"
            )
        };
        let cases: &[(String, &str, &str)] = &[
            (
                exc(
                    "basis = \"scc\"\njustification = \"x\"\nexpires = \"2099-01-01\"\ntenants = [\"a\"]\n\
                     [[exception]]\nname = \"f\"\ndestinations = [\"192.0.2.0/24\", \"198.51.100.0/24\"]\n\
                     basis = \"dpf\"\njustification = \"y\"\nexpires = \"2099-01-01\"\nworkloads = [\"w\"]\n",
                ),
                "exception[1].destinations[1]",
                "already an exception for workload \"w\"",
            ),
            (
                exc(
                    "basis = \"scc\"\njustification = \"x\"\nexpires = \"2099-01-01\"\ntenants = [\"a\"]\n",
                )
                .replace("198.51.100.0/24", "siem.example.com"),
                "exception[0].destinations[0]",
                "host names are not supported yet",
            ),
            (
                exc(
                    "basis = \"scc\"\njustification = \"\"\nexpires = \"2099-01-01\"\ntenants = [\"a\"]\n",
                ),
                "exception[0].justification",
                "is empty",
            ),
            (
                exc(
                    "basis = \"scc\"\njustification = \"x\"\nexpires = \"next year\"\ntenants = [\"a\"]\n",
                ),
                "exception[0].expires",
                "is not a date",
            ),
            (
                exc("basis = \"scc\"\njustification = \"x\"\nexpires = \"2099-01-01\"\n"),
                "exception[0]",
                "applies to nothing",
            ),
            (
                exc(
                    "basis = \"scc\"\njustification = \"x\"\nexpires = \"2099-01-01\"\ntenants = [\"b\"]\n",
                ),
                "exception[0].tenants[0]",
                "not a tenant",
            ),
            (
                exc(
                    "basis = \"scc\"\njustification = \"x\"\nexpires = \"2099-01-01\"\nworkloads = [\"v\"]\n",
                ),
                "exception[0].workloads[0]",
                "not a workload",
            ),
            (
                exc(
                    "basis = \"trust-me\"\njustification = \"x\"\nexpires = \"2099-01-01\"\ntenants = [\"a\"]\n",
                ),
                "exception[0].basis",
                "scc",
            ),
        ];
        for (toml, field, needle) in cases {
            let err = parse(toml).unwrap_err();
            assert_eq!(err.field, *field, "{toml}\n{err}");
            assert!(err.to_string().contains(needle), "{toml}\n{err}");
        }
        let ok = parse(&exc("basis = \"scc\"\njustification = \"x\"\nexpires = \"2027-03-01T12:00:00Z\"\ntenants = [\"a\"]\nroles = [\"logging\"]\n")).unwrap();
        let e = &ok.exceptions[0];
        assert_eq!(e.expires.to_string(), "2027-03-01T12:00:00Z");
        assert!(e.applies_to(&ok.workloads[0]));
        assert_eq!(ok.rule_name(e.id), Some("e"));
    }

    #[test]
    fn the_tenant_example_parses() {
        let text = include_str!("../config/example-tenants.toml");
        let c = Config::from_toml(text, "example-tenants.toml").unwrap();
        assert_eq!(c.tenants.len(), 2);
        assert_eq!(c.workloads.len(), 4);
        assert_eq!(c.exceptions.len(), 1);
    }

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        let err = parse("[kernel]\nring_buffer_kib = 100\n").unwrap_err();
        assert_eq!(err.field, "kernel.ring_buffer_kib");
        assert_eq!(err.line, Some(2));
        let err = parse("[kernel]\nring_buffer_kib = 2\n").unwrap_err();
        assert_eq!(err.field, "kernel.ring_buffer_kib");
        let err = parse("[kernel]\nring_buffer_kib = 4\nwakeup_kib = 8\n").unwrap_err();
        assert_eq!(err.field, "kernel.wakeup_kib");
    }

    #[test]
    fn cgroup_paths_are_relative_to_the_mount() {
        let c = parse("[kernel]\ncgroup = \"/system.slice/x.service/\"\n").unwrap();
        assert_eq!(c.kernel.cgroup, PathBuf::from("system.slice/x.service"));
        let err = parse("[kernel]\ncgroup = \"/a/../b\"\n").unwrap_err();
        assert_eq!(err.field, "kernel.cgroup");
    }

    #[test]
    fn enforce_at_root_needs_the_interlock() {
        let rule = "[[deny]]\nname = \"x\"\ndestinations = [\"10.0.0.0/8\"]\n";
        let c = parse(&format!("mode = \"enforce\"\n{rule}")).unwrap();
        let err = c.check_enforce_interlock(true).unwrap_err();
        assert_eq!(err.field, "mode");
        assert!(c.check_enforce_interlock(false).is_ok());
        let c = parse(&format!(
            "mode = \"enforce\"\n[kernel]\nallow_enforce_at_root = true\n{rule}"
        ))
        .unwrap();
        assert!(c.check_enforce_interlock(true).is_ok());
        // Monitor mode can never block, so the root is fine.
        let c = parse(rule).unwrap();
        assert!(c.check_enforce_interlock(true).is_ok());
    }

    #[test]
    fn may_block_only_in_enforce_with_rules() {
        let with_rule = "[[deny]]\nname = \"x\"\ndestinations = [\"10.0.0.0/8\"]\n";
        assert!(!parse(with_rule).unwrap().may_block());
        let enforce = format!("mode = \"enforce\"\n[kernel]\ncgroup = \"t\"\n{with_rule}");
        assert!(parse(&enforce).unwrap().may_block());
        assert!(
            !parse("mode = \"enforce\"\n[kernel]\ncgroup = \"t\"\n")
                .unwrap()
                .may_block(),
            "nothing can block"
        );
        assert!(
            parse("mode = \"enforce\"\n[policy]\nallowed = [\"EEA\"]\n")
                .unwrap()
                .may_block()
        );
        assert!(
            parse("mode = \"enforce\"\n[policy]\nunknown = \"block\"\n")
                .unwrap()
                .may_block()
        );
    }

    #[test]
    fn output_target() {
        assert_eq!(
            parse("[output]\nevents = \"-\"\n").unwrap().output,
            Output::Stdout
        );
        assert_eq!(
            parse("[output]\nevents = \"/var/log/r.jsonl\"\n")
                .unwrap()
                .output,
            Output::File(PathBuf::from("/var/log/r.jsonl"))
        );
        assert_eq!(
            parse("[output]\nevents = \"\"\n").unwrap_err().field,
            "output.events"
        );
    }
}
