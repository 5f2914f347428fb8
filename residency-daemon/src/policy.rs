//! The policy stage of the control path: the validated configuration
//! compiled into what the kernel applies (one policy per workload plus the
//! default, the destination rules, the exceptions per policy, the process
//! and uid selectors), and the same decision made in userspace, for
//! `residency lookup`, `residency explain` and `residency test-policy`;
//! and, per generation, the [`PolicyView`] the records it decides are
//! explained with ([`Versions`]).
//!
//! The kernel programs and [`decide`] must agree; the end-to-end tests hold
//! them to it.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use geoip::CountryCode;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use residency_common::{
    Action, DestKind, DestRule, HAS_EXCEPTIONS_V4, HAS_EXCEPTIONS_V6, Policy, SELECTS_BY_COMM,
    SELECTS_BY_UID, Verdict,
};
use residency_record::policy::{ExceptionView, PolicyEntry, PolicyView, RuleView, WorkloadView};

use crate::config::{Choice, Config, Exception, Mode, Rule, RuleKind};

/// What the kernel maps hold for one configuration (cgroup selectors are
/// resolved separately, against the live cgroup tree).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// Index 0 is the default policy; index `i` is workload `i - 1`'s.
    pub policies: Vec<Policy>,
    pub rules_v4: Vec<(Ipv4Net, DestRule)>,
    pub rules_v6: Vec<(Ipv6Net, DestRule)>,
    /// Exceptions in force, per policy index.
    pub exceptions_v4: Vec<(u16, Ipv4Net, DestRule)>,
    pub exceptions_v6: Vec<(u16, Ipv6Net, DestRule)>,
    /// Process name (NUL-padded `comm`) -> policy index.
    pub comm: Vec<([u8; 16], u32)>,
    /// uid -> policy index.
    pub uid: Vec<(u32, u32)>,
    /// Exceptions left out because they had expired.
    pub expired: Vec<String>,
    /// The catalog and the rules that name hosts.
    pub names: crate::names::CompiledNames,
}

fn action(c: Choice) -> Action {
    match c {
        Choice::Allow => Action::Allow,
        Choice::Flag => Action::Flag,
        Choice::Block => Action::Block,
    }
}

/// Compiles a configuration for the kernel, with the exceptions in force at
/// `now`.
#[must_use]
pub fn compile(config: &Config, now: jiff::Timestamp) -> Compiled {
    let policy = |allowed: geoip::CountrySet, unknown: Choice, mode: Mode| Policy {
        allowed: allowed.0,
        unknown_action: action(unknown) as u8,
        enforce: u8::from(mode == Mode::Enforce),
        exceptions: 0,
        selectors: 0,
        ambiguous_action: action(config.names.ambiguous) as u8,
        bypass_action: action(config.names.resolver_bypass) as u8,
        _pad: [0; 2],
    };
    let mut policies = vec![policy(
        config.policy.allowed,
        config.policy.unknown,
        config.mode,
    )];
    let mut comm = Vec::new();
    let mut uid = Vec::new();
    for (i, w) in config.workloads.iter().enumerate() {
        let index = u32::try_from(i + 1).unwrap_or(u32::MAX);
        policies.push(policy(w.allowed, w.unknown, w.mode));
        if let Some(name) = w.selectors.comm() {
            let mut key = [0u8; 16];
            let bytes = name.as_bytes();
            let n = bytes.len().min(15);
            key[..n].copy_from_slice(&bytes[..n]);
            comm.push((key, index));
        }
        if let Some(u) = w.selectors.uid {
            uid.push((u, index));
        }
    }
    if !comm.is_empty() {
        policies[0].selectors |= SELECTS_BY_COMM;
    }
    if !uid.is_empty() {
        policies[0].selectors |= SELECTS_BY_UID;
    }
    let mut rules_v4 = Vec::new();
    let mut rules_v6 = Vec::new();
    for rule in &config.rules {
        let value = dest_rule(config, rule);
        for net in &rule.destinations {
            match net {
                IpNet::V4(n) => rules_v4.push((*n, value)),
                IpNet::V6(n) => rules_v6.push((*n, value)),
            }
        }
    }
    resolver_rules(config, &mut rules_v4, &mut rules_v6);
    let mut exceptions_v4 = Vec::new();
    let mut exceptions_v6 = Vec::new();
    let mut expired = Vec::new();
    for e in &config.exceptions {
        if !e.in_force(now) {
            expired.push(e.name.clone());
            continue;
        }
        let value = DestRule {
            rule_id: e.id,
            action: Action::Allow as u8,
            kind: DestKind::Exception as u8,
            country: 0,
        };
        for (i, w) in config.workloads.iter().enumerate() {
            if !e.applies_to(w) {
                continue;
            }
            let index = u16::try_from(i + 1).unwrap_or(u16::MAX);
            for net in &e.destinations {
                let flag = match net {
                    IpNet::V4(n) => {
                        exceptions_v4.push((index, *n, value));
                        HAS_EXCEPTIONS_V4
                    }
                    IpNet::V6(n) => {
                        exceptions_v6.push((index, *n, value));
                        HAS_EXCEPTIONS_V6
                    }
                };
                if let Some(p) = policies.get_mut(usize::from(index)) {
                    p.exceptions |= flag;
                }
            }
        }
    }
    let names = crate::names::compile(config, now);
    names.mark_policies(&mut policies);
    Compiled {
        policies,
        rules_v4,
        rules_v6,
        exceptions_v4,
        exceptions_v6,
        comm,
        uid,
        expired,
        names,
    }
}

/// Known DNS-over-HTTPS resolvers, by address: a connection to one on
/// port 443 is a resolver bypass (the kernel applies these entries on that
/// port only). An address a rule of the configuration already covers
/// keeps that rule.
fn resolver_rules(
    config: &Config,
    rules_v4: &mut Vec<(Ipv4Net, DestRule)>,
    rules_v6: &mut Vec<(Ipv6Net, DestRule)>,
) {
    if !config.names.track {
        return;
    }
    let bypass = DestRule {
        rule_id: 0,
        action: action(config.names.resolver_bypass) as u8,
        kind: DestKind::ResolverBypass as u8,
        country: 0,
    };
    for addr in config.catalog.resolvers().iter().flat_map(|r| &r.addresses) {
        match IpNet::from(*addr) {
            IpNet::V4(n) if !rules_v4.iter().any(|(r, _)| r.contains(&n)) => {
                rules_v4.push((n, bypass));
            }
            IpNet::V6(n) if !rules_v6.iter().any(|(r, _)| r.contains(&n)) => {
                rules_v6.push((n, bypass));
            }
            _ => {}
        }
    }
}

/// How many generations [`Versions`] keeps: records still in the ring
/// when this many reloads have happened since are left unexplained.
pub const KEEP_GENERATIONS: usize = 16;

/// The views of the policy generations the kernel may still report, by
/// generation: records are explained with the policy that decided them,
/// and carry its hash. A view is built once, when its generation is
/// installed.
#[derive(Debug, Default)]
pub struct Versions {
    by_generation: RwLock<BTreeMap<u32, Arc<PolicyView>>>,
    /// The endpoint catalog of each generation, for the names on records.
    catalogs: RwLock<BTreeMap<u32, Arc<residency_catalog::Catalog>>>,
}

impl Versions {
    /// Records the view of `config` under the generation it is installed
    /// as.
    pub fn add(&self, generation: u32, config: &Config) {
        // Built before the lock: the writer reads this map for every flow.
        let view = Arc::new(view(config));
        let mut map = self
            .by_generation
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.insert(generation, view);
        while map.len() > KEEP_GENERATIONS {
            let Some(&oldest) = map.keys().next() else {
                break;
            };
            map.remove(&oldest);
        }
        drop(map);
        let mut catalogs = self
            .catalogs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        catalogs.insert(generation, config.catalog.clone());
        while catalogs.len() > KEEP_GENERATIONS {
            let Some(&oldest) = catalogs.keys().next() else {
                break;
            };
            catalogs.remove(&oldest);
        }
    }

    /// The catalog of the newest generation held.
    #[must_use]
    pub fn latest_catalog(&self) -> Option<Arc<residency_catalog::Catalog>> {
        self.catalogs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .next_back()
            .cloned()
    }

    /// The endpoint catalog of a generation, exactly.
    #[must_use]
    pub fn catalog(&self, generation: u32) -> Option<Arc<residency_catalog::Catalog>> {
        self.catalogs
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&generation)
            .cloned()
    }

    /// Forgets a generation whose install failed.
    pub fn remove(&self, generation: u32) {
        self.by_generation
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&generation);
        self.catalogs
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&generation);
    }

    /// The view of a generation, exactly; `None` if it is not held (better
    /// no explanation than a wrong one).
    #[must_use]
    pub fn get(&self, generation: u32) -> Option<Arc<PolicyView>> {
        self.by_generation
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&generation)
            .cloned()
    }
}

/// What records say about `config`: the names, modes and hash, and what
/// each policy allows under GDPR Chapter V (see [`PolicyView`]).
#[must_use]
pub fn view(config: &Config) -> PolicyView {
    let names_dpf = |names: &[String]| names.iter().any(|n| n.eq_ignore_ascii_case("US-DPF"));
    let default = PolicyEntry {
        mode: config.mode.as_str(),
        workload: None,
        dpf: names_dpf(&config.policy.allowed_names),
    };
    let workloads = config.workloads.iter().map(|w| PolicyEntry {
        mode: w.mode.as_str(),
        workload: Some(WorkloadView {
            name: w.name.clone(),
            role: w.role.as_str(),
            tenants: w.tenants.clone(),
        }),
        // A workload's data may go to the US under the DPF when one of its
        // tenants allowed it.
        dpf: config
            .tenants
            .iter()
            .filter(|t| w.tenants.contains(&t.id))
            .any(|t| names_dpf(&t.allowed_names)),
    });
    let mut rules = vec![RuleView {
        name: "geoip".to_owned(),
        exception: None,
    }];
    let ids = config
        .rules
        .iter()
        .map(|r| r.id)
        .chain(config.exceptions.iter().map(|e| e.id));
    for id in 1..=ids.max().unwrap_or(0) {
        let exception = config.exception(id);
        rules.push(RuleView {
            name: config.rule_name(id).unwrap_or("unknown").to_owned(),
            exception: exception.map(|e| ExceptionView {
                basis: e.basis.transfer_basis(),
                justification: e.justification.clone(),
                expires: e.expires,
            }),
        });
    }
    PolicyView {
        hash: config.hash.clone(),
        policies: std::iter::once(default).chain(workloads).collect(),
        rules,
    }
}

/// When the next exception in force expires: the policy must be compiled
/// again then.
#[must_use]
pub fn next_expiry(config: &Config, now: jiff::Timestamp) -> Option<jiff::Timestamp> {
    config
        .exceptions
        .iter()
        .filter(|e| e.in_force(now))
        .map(|e| e.expires)
        .min()
}

fn dest_rule(config: &Config, rule: &Rule) -> DestRule {
    let (kind, action, country) = match rule.kind {
        RuleKind::Deny => (DestKind::Denied, Action::Block, 0),
        RuleKind::Internal(c) => (DestKind::Internal, Action::Judge, c.index()),
        RuleKind::Local => (DestKind::Local, action(config.policy.local), 0),
    };
    DestRule {
        rule_id: rule.id,
        action: action as u8,
        kind: kind as u8,
        country,
    }
}

/// A decision and its reasons, as the kernel makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub kind: DestKind,
    /// The destination rule that decided, if one did.
    pub rule_id: u32,
    /// The country judged (`GeoIP`, or an internal network's jurisdiction).
    pub country: Option<CountryCode>,
    /// One sentence per step, in order.
    pub reasons: Vec<String>,
}

/// Decides about `ip` for the process under policy `index` (0: the
/// default policy) as the kernel would, with the exceptions in force at
/// `now`. `geo` gives the country the kernel's tables hold for an address
/// (the flattened tables, not the full database, so both see the same data).
pub fn decide(
    config: &Config,
    index: u16,
    ip: IpAddr,
    now: jiff::Timestamp,
    geo: impl FnOnce(IpAddr) -> Option<CountryCode>,
) -> Decision {
    let ip = geoip::db::canonical(ip);
    let workload = config.workload_of(index);
    let mut reasons = vec![workload_text(config, workload)];
    let rule = config
        .rules
        .iter()
        .flat_map(|r| r.destinations.iter().map(move |n| (n, r)))
        .filter(|(n, _)| n.contains(&ip))
        .max_by_key(|(n, _)| n.prefix_len());
    let exception = workload.and_then(|w| {
        config
            .exceptions
            .iter()
            .filter(|e| e.in_force(now) && e.applies_to(w))
            .flat_map(|e| e.destinations.iter().map(move |n| (n, e)))
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len())
    });
    let (kind, act, rule_id, country) = match (rule, exception) {
        (Some((net, rule)), _) if rule.kind == RuleKind::Deny => {
            reasons.push(format!(
                "{ip} is in {net}, listed by deny rule \"{}\"",
                rule.name
            ));
            (DestKind::Denied, Action::Block, rule.id, None)
        }
        (_, Some((net, e))) => {
            reasons.push(exception_text(ip, net, e));
            (DestKind::Exception, Action::Allow, e.id, None)
        }
        (Some((net, rule)), None) => match rule.kind {
            RuleKind::Local => {
                reasons.push(format!(
                    "{ip} is in the local range {net}; policy.local = \"{}\"",
                    config.policy.local.as_str()
                ));
                (DestKind::Local, action(config.policy.local), rule.id, None)
            }
            RuleKind::Internal(c) => {
                reasons.push(format!(
                    "{ip} is in {net}, internal network \"{}\" in jurisdiction {c}",
                    rule.name
                ));
                (
                    DestKind::Internal,
                    judge(config, index, Some(c), &mut reasons),
                    rule.id,
                    Some(c),
                )
            }
            RuleKind::Deny => unreachable!("handled above"),
        },
        (None, None) => {
            let c = geo(ip);
            match c {
                Some(c) => reasons.push(format!("GeoIP places {ip} in {c}")),
                None => reasons.push(format!("GeoIP has no country for {ip}")),
            }
            let kind = if c.is_some() {
                DestKind::Geo
            } else {
                DestKind::Unknown
            };
            (kind, judge(config, index, c, &mut reasons), 0, c)
        }
    };
    conclude(config, index, act, kind, rule_id, country, reasons)
}

/// The verdict for an action under the workload's mode, with its reason.
fn conclude(
    config: &Config,
    index: u16,
    act: Action,
    kind: DestKind,
    rule_id: u32,
    country: Option<CountryCode>,
    mut reasons: Vec<String>,
) -> Decision {
    let workload = config.workload_of(index);
    let mode = workload.map_or(config.mode, |w| w.mode);
    let verdict = match act {
        Action::Allow => Verdict::Allowed,
        Action::Block if mode == Mode::Enforce => Verdict::Blocked,
        Action::Flag | Action::Block | Action::Judge => Verdict::Flagged,
    };
    reasons.push(match (verdict, mode) {
        (Verdict::Allowed, _) => "allowed".to_owned(),
        (Verdict::Blocked, _) => {
            "blocked: connect() and sendmsg() fail with EPERM (mode \"enforce\")".to_owned()
        }
        (Verdict::Flagged, Mode::Monitor) => {
            "flagged: a violation, reported but not blocked (mode \"monitor\")".to_owned()
        }
        (Verdict::Flagged, Mode::Enforce) => {
            "flagged: a violation, reported but not blocked (the choice is \"flag\")".to_owned()
        }
    });
    Decision {
        verdict,
        kind,
        rule_id,
        country,
        reasons,
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "the kernel's order, step by step, with a reason for each"
)]
/// Decides about a host name for the process under policy `index` as the
/// kernel would once the workload resolved it: deny rules and exceptions
/// that name hosts, then the endpoint catalog (the most specific entry).
/// A name without either is judged by `GeoIP` on the addresses it
/// resolves to, which this offline decision does not look up: the error
/// says so.
///
/// # Errors
/// The sentence that says why the name alone decides nothing.
pub fn decide_name(
    config: &Config,
    index: u16,
    name: &str,
    now: jiff::Timestamp,
) -> Result<Decision, String> {
    let workload = config.workload_of(index);
    let mut reasons = vec![workload_text(config, workload)];
    let covers = |p: &residency_catalog::Pattern| p.matches(name);
    if let Some(rule) = config.deny_rules().find(|r| r.names.iter().any(covers)) {
        reasons.push(format!("{name} is named by deny rule \"{}\"", rule.name));
        return Ok(conclude(
            config,
            index,
            Action::Block,
            DestKind::Denied,
            rule.id,
            None,
            reasons,
        ));
    }
    if let Some(w) = workload
        && let Some(e) = config
            .exceptions
            .iter()
            .find(|e| e.in_force(now) && e.applies_to(w) && e.names.iter().any(covers))
    {
        reasons.push(format!(
            "{name} is allowed by exception \"{}\" (basis: {}; {}; expires {})",
            e.name,
            e.basis.as_str(),
            e.justification,
            e.expires
        ));
        return Ok(conclude(
            config,
            index,
            Action::Allow,
            DestKind::Exception,
            e.id,
            None,
            reasons,
        ));
    }
    if let Some(r) = config.catalog.resolver_for_name(name) {
        reasons.push(format!(
            "{name} is a DNS-over-HTTPS resolver ({}): names resolved there are invisible; \
             names.resolver_bypass = \"{}\"",
            r.provider,
            config.names.resolver_bypass.as_str()
        ));
        return Ok(conclude(
            config,
            index,
            action(config.names.resolver_bypass),
            DestKind::ResolverBypass,
            0,
            None,
            reasons,
        ));
    }
    let Some(e) = config.catalog.lookup(name) else {
        return Err(format!(
            "no catalog entry or rule names {name}: flows to it are judged by GeoIP on the \
             addresses it resolves to (run `residency lookup ADDRESS` for those)"
        ));
    };
    reasons.push(format!(
        "{name} matches catalog entry \"{}\" ({}, {}; pattern {}): processing in {} \
         (scope {}, confidence {}; source: {})",
        e.id,
        e.provider,
        e.service,
        e.pattern,
        e.jurisdiction,
        e.scope.as_str(),
        e.confidence.as_str(),
        e.source
    ));
    let allowed = workload.map_or(config.policy.allowed, |w| w.allowed);
    let act = match e.judge(&allowed) {
        residency_catalog::Judgement::Allowed => {
            reasons.push(format!(
                "{} lies within what the policy allows",
                e.jurisdiction
            ));
            Action::Allow
        }
        residency_catalog::Judgement::Violation { outside } => {
            let list: Vec<String> = outside.iter().take(8).map(|c| c.to_string()).collect();
            let more = if outside.iter().count() > 8 {
                ", ..."
            } else {
                ""
            };
            reasons.push(format!(
                "the jurisdiction reaches beyond what the policy allows ({}{more})",
                list.join(", ")
            ));
            Action::Block
        }
        residency_catalog::Judgement::Unknown(why) => {
            let unknown = workload.map_or(config.policy.unknown, |w| w.unknown);
            reasons.push(format!(
                "{why}; judged as an unknown destination: \"{}\" (for example \
                 \"{name}\" = \"EU\")",
                unknown.as_str()
            ));
            action(unknown)
        }
    };
    Ok(conclude(
        config,
        index,
        act,
        DestKind::Catalog,
        0,
        None,
        reasons,
    ))
}

fn exception_text(ip: IpAddr, net: &IpNet, e: &Exception) -> String {
    format!(
        "{ip} is in {net}, allowed by exception \"{}\" (basis: {}; {}; expires {})",
        e.name,
        e.basis.as_str(),
        e.justification,
        e.expires
    )
}

/// The first reason: whose policy applies.
fn workload_text(config: &Config, workload: Option<&crate::config::Workload>) -> String {
    match workload {
        Some(w) => format!(
            "workload \"{}\" ({}) serves tenant(s) {}: allowed {}; mode {}",
            w.name,
            w.role.as_str(),
            w.tenants.join(", "),
            allowed_text(config, w),
            w.mode.as_str()
        ),
        None => "no workload: the default policy ([policy]) applies".to_owned(),
    }
}

fn allowed_text(config: &Config, w: &crate::config::Workload) -> String {
    let names: Vec<String> = w
        .tenants
        .iter()
        .filter_map(|t| config.tenants.iter().find(|x| x.id == *t))
        .map(|t| format!("{} for {}", t.allowed_names.join("+"), t.id))
        .collect();
    if w.tenants.len() > 1 {
        format!("the intersection of {}", names.join(" and "))
    } else {
        names.join("")
    }
}

fn judge(
    config: &Config,
    index: u16,
    country: Option<CountryCode>,
    reasons: &mut Vec<String>,
) -> Action {
    let workload = config.workload_of(index);
    let unknown = workload.map_or(config.policy.unknown, |w| w.unknown);
    let Some(c) = country else {
        reasons.push(format!("unknown destinations: \"{}\"", unknown.as_str()));
        return action(unknown);
    };
    let (allowed, names, sets): (_, _, Vec<String>) = match workload {
        Some(w) => (
            w.allowed,
            allowed_text(config, w),
            w.tenants
                .iter()
                .filter_map(|t| config.tenants.iter().find(|x| x.id == *t))
                .flat_map(|t| t.allowed_names.clone())
                .collect(),
        ),
        None => (
            config.policy.allowed,
            config.policy.allowed_names.join(", "),
            config.policy.allowed_names.clone(),
        ),
    };
    if allowed.contains(c) {
        reasons.push(format!("{c} is allowed ({names})"));
        if let Some(reason) = condition_text(c, &sets) {
            reasons.push(reason);
        }
        Action::Allow
    } else {
        reasons.push(format!("{c} is not allowed ({names})"));
        Action::Block
    }
}

/// The condition `c`'s transfer basis holds on, if any, as the records
/// cite it: the basis is the one a flow record names ([`PolicyView`]),
/// which depends on the country and on whether `names` name `US-DPF`, not
/// on whether they name `CA` or `ADEQUACY`. GB has none; CA has PIPEDA's;
/// the US through `US-DPF` the Data Privacy Framework's, and without it
/// no basis at all, which is said too.
fn condition_text(c: CountryCode, names: &[String]) -> Option<String> {
    use residency_record::TransferBasis;
    let dpf = names.iter().any(|n| n.eq_ignore_ascii_case("US-DPF"));
    // An internal network's jurisdiction has the basis of its country, as
    // a GeoIP destination does.
    let basis = residency_record::policy::basis_without_exception(DestKind::Geo, Some(c), dpf);
    if let Some(condition) = basis.condition(Some(c)) {
        return Some(format!(
            "the transfer basis for {c} ({}) holds only on a condition: {} ({})",
            basis.as_str(),
            condition.text,
            condition.decision
        ));
    }
    let dpf_only = geoip::sets::condition(c, "US-DPF").filter(|_| basis == TransferBasis::None)?;
    Some(format!(
        "{c} has no transfer basis here: it has one only through {}, which holds only on a condition: {} ({})",
        dpf_only.set, dpf_only.text, dpf_only.decision
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: jiff::Timestamp = jiff::Timestamp::UNIX_EPOCH;

    fn config(toml: &str) -> Config {
        Config::from_toml(toml, "t.toml").unwrap()
    }

    fn cc(s: &str) -> CountryCode {
        s.parse().unwrap()
    }

    const BASE: &str = r#"
mode = "enforce"
[kernel]
cgroup = "/work"
[policy]
allowed = ["EEA"]
unknown = "block"
local = "allow"
[[internal]]
name = "dc-zurich"
destinations = ["10.20.0.0/16"]
jurisdiction = "CH"
[[internal]]
name = "dc-frankfurt"
destinations = ["10.30.0.0/16"]
jurisdiction = "DE"
[[deny]]
name = "us-llm"
destinations = ["203.0.113.0/24"]
"#;

    #[test]
    fn rules_then_countries_then_unknown() {
        let c = config(BASE);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let none = |_| None;
        let d = decide(&c, 0, ip("203.0.113.9"), NOW, |_| Some(cc("DE")));
        assert_eq!(
            (d.verdict, d.kind),
            (Verdict::Blocked, DestKind::Denied),
            "deny beats GeoIP"
        );
        let d = decide(&c, 0, ip("10.30.1.1"), NOW, none);
        assert_eq!(
            (d.verdict, d.kind, d.country),
            (Verdict::Allowed, DestKind::Internal, Some(cc("DE")))
        );
        let d = decide(&c, 0, ip("10.20.1.1"), NOW, none);
        assert_eq!(
            (d.verdict, d.kind),
            (Verdict::Blocked, DestKind::Internal),
            "CH is not EEA"
        );
        let d = decide(&c, 0, ip("10.99.1.1"), NOW, none);
        assert_eq!((d.verdict, d.kind), (Verdict::Allowed, DestKind::Local));
        let d = decide(&c, 0, ip("::1"), NOW, none);
        assert_eq!(d.kind, DestKind::Local);
        let d = decide(&c, 0, ip("198.51.100.1"), NOW, |_| Some(cc("FR")));
        assert_eq!((d.verdict, d.kind), (Verdict::Allowed, DestKind::Geo));
        let d = decide(&c, 0, ip("198.51.100.1"), NOW, |_| Some(cc("US")));
        assert_eq!(d.verdict, Verdict::Blocked);
        assert!(
            d.reasons
                .iter()
                .any(|r| r.contains("US is not allowed (EEA)")),
            "{:?}",
            d.reasons
        );
        let d = decide(&c, 0, ip("198.51.100.1"), NOW, none);
        assert_eq!((d.verdict, d.kind), (Verdict::Blocked, DestKind::Unknown));
        let d = decide(&c, 0, ip("::ffff:203.0.113.9"), NOW, none);
        assert_eq!(
            d.kind,
            DestKind::Denied,
            "mapped addresses are judged as IPv4"
        );
    }

    #[test]
    fn monitor_flags_what_enforce_blocks() {
        let c = config(&BASE.replace("mode = \"enforce\"", "mode = \"monitor\""));
        let d = decide(&c, 0, "198.51.100.1".parse().unwrap(), NOW, |_| {
            Some(cc("US"))
        });
        assert_eq!(d.verdict, Verdict::Flagged);
    }

    #[test]
    fn compiled_maps_carry_every_rule() {
        let c = config(BASE);
        let k = compile(&c, NOW);
        let p = k.policies[0];
        assert_eq!(p.enforce, 1);
        assert_eq!(p.unknown_action, Action::Block as u8);
        let de = cc("DE").index();
        assert_ne!(p.allowed[usize::from(de / 64)] & (1 << (de % 64)), 0);
        let us = cc("US").index();
        assert_eq!(p.allowed[usize::from(us / 64)] & (1 << (us % 64)), 0);
        let zurich = k
            .rules_v4
            .iter()
            .find(|(n, _)| n.to_string() == "10.20.0.0/16")
            .unwrap()
            .1;
        assert_eq!(zurich.action, Action::Judge as u8);
        assert_eq!(zurich.kind, DestKind::Internal as u8);
        assert_eq!(zurich.country, cc("CH").index());
        let deny = k
            .rules_v4
            .iter()
            .find(|(n, _)| n.to_string() == "203.0.113.0/24")
            .unwrap()
            .1;
        assert_eq!(
            (deny.action, deny.rule_id),
            (Action::Block as u8, 1),
            "deny rules come first"
        );
        // Default local ranges: both families present.
        assert!(
            k.rules_v4
                .iter()
                .any(|(n, r)| n.to_string() == "127.0.0.0/8" && r.kind == DestKind::Local as u8)
        );
        assert!(k.rules_v6.iter().any(|(n, _)| n.to_string() == "fe80::/10"));
    }

    /// The reasons that cite a condition, for a destination in `country`
    /// under `allowed`.
    fn conditions_cited(allowed: &str, country: &str) -> Vec<String> {
        let c = config(&BASE.replace("allowed = [\"EEA\"]", &format!("allowed = {allowed}")));
        let d = decide(&c, 0, "198.51.100.1".parse().unwrap(), NOW, |_| {
            Some(cc(country))
        });
        assert_eq!(d.verdict, Verdict::Allowed, "{:?}", d.reasons);
        d.reasons
            .into_iter()
            .filter(|r| r.contains("condition"))
            .collect()
    }

    #[test]
    fn a_condition_is_cited_for_its_country_only() {
        let adequacy = r#"["EEA", "ADEQUACY"]"#;
        assert_eq!(
            conditions_cited(adequacy, "GB"),
            Vec::<String>::new(),
            "GB's adequacy is unconditional"
        );
        assert_eq!(conditions_cited(adequacy, "DE"), Vec::<String>::new());
        assert_eq!(
            conditions_cited(adequacy, "CA"),
            [
                "the transfer basis for CA (adequacy) holds only on a condition: \
              commercial organisations subject to PIPEDA only (Decision 2002/2/EC)"
            ]
        );
        assert_eq!(
            conditions_cited(r#"["EEA", "CA"]"#, "CA"),
            conditions_cited(adequacy, "CA"),
            "the same basis, however the policy spells it"
        );
        let dpf = r#"["EEA", "US-DPF"]"#;
        let us = conditions_cited(dpf, "US");
        assert!(
            us.len() == 1
                && us[0].starts_with("the transfer basis for US (dpf) holds only on a condition: ")
                && us[0].contains("Data Privacy Framework")
                && us[0].ends_with("(Decision (EU) 2023/1795)"),
            "{us:?}"
        );
        assert_eq!(conditions_cited(dpf, "DE"), Vec::<String>::new());
        let us = conditions_cited(r#"["EEA", "US"]"#, "US");
        assert!(
            us.len() == 1 && us[0].starts_with("US has no transfer basis here"),
            "{us:?}"
        );
    }

    #[test]
    fn the_policy_lists_the_conditions_of_the_countries_it_allows() {
        let listed = |allowed: &str| -> Vec<String> {
            config(&BASE.replace("allowed = [\"EEA\"]", &format!("allowed = {allowed}")))
                .policy
                .conditions
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(listed(r#"["EEA"]"#), Vec::<String>::new());
        let both = listed(r#"["EEA", "ADEQUACY", "US-DPF"]"#);
        let countries: Vec<&str> = both.iter().map(|c| &c[..2]).collect();
        assert_eq!(countries, ["CA", "JP", "KR", "US"], "{both:?}");
        assert_eq!(
            both[0],
            "CA: commercial organisations subject to PIPEDA only (Decision 2002/2/EC)"
        );
        assert_eq!(listed(r#"["GB", "CA"]"#), [both[0].clone()]);
        assert_eq!(
            listed(r#"["US"]"#),
            Vec::<String>::new(),
            "the US without US-DPF has no basis, so no condition"
        );
    }

    #[test]
    fn unspecified_address_is_local() {
        let c = config(BASE);
        let d = decide(&c, 0, "::".parse().unwrap(), NOW, |_| None);
        assert_eq!(d.kind, DestKind::Local);
    }

    #[test]
    fn monitor_mode_flags_what_enforce_blocks() {
        let c = config(&BASE.replace("mode = \"enforce\"", "mode = \"monitor\""));
        let d = decide(&c, 0, "198.51.100.1".parse().unwrap(), NOW, |_| {
            Some(cc("US"))
        });
        assert_eq!(d.verdict, Verdict::Flagged);
    }

    const WORKLOADS: &str = r#"
mode = "monitor"
[[tenant]]
id = "acme"
allowed = ["EEA"]
mode = "enforce"
[[tenant]]
id = "globex"
allowed = ["EEA", "ADEQUACY"]
[[workload]]
name = "llm"
role = "llm"
tenants = ["acme", "globex"]
process = "vllm"
[[workload]]
name = "logs"
role = "logging"
tenants = ["globex"]
uid = 996
[[exception]]
name = "siem"
destinations = ["198.51.100.0/24"]
basis = "scc"
justification = "SCC"
expires = "2030-01-01"
tenants = ["globex"]
roles = ["logging"]
"#;

    #[test]
    fn workload_policies_exceptions_and_expiry_compile() {
        let c = config(WORKLOADS);
        let k = compile(&c, NOW);
        assert_eq!(k.policies.len(), 3, "default + 2 workloads");
        let gb = cc("GB").index();
        let bit = |p: &Policy, i: u16| p.allowed[usize::from(i / 64)] & (1 << (i % 64)) != 0;
        assert!(
            !bit(&k.policies[1], gb),
            "llm: the intersection excludes GB"
        );
        assert!(bit(&k.policies[2], gb), "logs: globex allows GB");
        assert_eq!(
            k.policies[1].enforce, 1,
            "acme enforces, so its workloads do"
        );
        assert_eq!(
            k.policies[2].enforce, 0,
            "globex follows the top-level monitor mode"
        );
        let mut vllm = [0u8; 16];
        vllm[..4].copy_from_slice(b"vllm");
        assert_eq!(k.comm, vec![(vllm, 1)]);
        assert_eq!(k.uid, vec![(996, 2)]);
        assert_eq!(
            k.policies[0].selectors,
            SELECTS_BY_COMM | SELECTS_BY_UID,
            "the kernel looks up names and uids only when some workload uses them"
        );
        assert_eq!(k.exceptions_v4.len(), 1, "only for logs (globex, logging)");
        assert_eq!(k.exceptions_v4[0].0, 2);
        assert_eq!(
            k.policies.iter().map(|p| p.exceptions).collect::<Vec<_>>(),
            vec![0, 0, HAS_EXCEPTIONS_V4],
            "only the logs policy makes the kernel look for exceptions"
        );

        // The exception applies until it expires, then the policy decides.
        let us = |_| Some(cc("US"));
        let d = decide(&c, 2, "198.51.100.7".parse().unwrap(), NOW, us);
        assert_eq!((d.verdict, d.kind), (Verdict::Allowed, DestKind::Exception));
        let later: jiff::Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
        let d = decide(&c, 2, "198.51.100.7".parse().unwrap(), later, us);
        assert_eq!(d.kind, DestKind::Geo, "expired: {:?}", d.reasons);
        let k_later = compile(&c, later);
        assert!(k_later.exceptions_v4.is_empty());
        assert!(k_later.policies.iter().all(|p| p.exceptions == 0));
        assert_eq!(k_later.expired, vec!["siem".to_owned()]);
        assert_eq!(
            next_expiry(&c, NOW),
            Some("2030-01-01T00:00:00Z".parse().unwrap())
        );
        assert_eq!(next_expiry(&c, later), None);

        // The llm workload, serving both tenants, gets no exception.
        let d = decide(&c, 1, "198.51.100.7".parse().unwrap(), NOW, us);
        assert_eq!(d.kind, DestKind::Geo);
        assert!(
            d.reasons[0].contains("the intersection of"),
            "{:?}",
            d.reasons
        );
    }
}
