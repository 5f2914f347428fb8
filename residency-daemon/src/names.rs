//! Names in the policy: the endpoint catalog and the rules that name hosts,
//! compiled into the kernel's name maps, and the same judgement made in
//! userspace for `residency lookup NAME` and the records.
//!
//! Every pattern that matters (catalog entries, resolvers, `names` of deny
//! rules and exceptions) gets a stable id ([`Pattern::id`]). The kernel's
//! DNS program looks a question name up by its wire-format suffixes, most
//! specific first, and remembers the pattern id per workload and address;
//! connect4/6 then read what that pattern's names are judged by
//! ([`NameClass`]) and which rules of the caller's policy cover them.
//! Because a name's most specific pattern fixes every less specific one
//! that also matches it, both are computed here, per pattern, once.

use std::collections::BTreeMap;

use residency_catalog::{Catalog, Endpoint, Jurisdiction, Pattern};
use residency_common::{
    Action, CLASS_CATALOG, CLASS_RESOLVER, CLASS_UNKNOWN, DestKind, DestRule, NameClass,
    NameRuleKey, PATTERN_BYTES, PATTERN_WILDCARD, PatternKey,
};

use crate::config::Config;

/// The kernel's name maps for one configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledNames {
    /// Wire-format suffix -> pattern id.
    pub patterns: Vec<(PatternKey, u32)>,
    /// Pattern id -> what its names are judged by.
    pub classes: Vec<(u32, NameClass)>,
    /// (policy, pattern id) -> a deny rule or exception naming hosts.
    pub rules: Vec<(NameRuleKey, DestRule)>,
}

impl CompiledNames {
    /// Marks the policies that name rules apply to, so that the kernel
    /// looks `NAME_RULES` up only for those.
    pub fn mark_policies(&self, policies: &mut [residency_common::Policy]) {
        for (key, _) in &self.rules {
            if let Some(p) = usize::try_from(key.policy)
                .ok()
                .and_then(|i| policies.get_mut(i))
            {
                p.exceptions |= residency_common::HAS_NAME_RULES;
            }
        }
    }
}

/// The kernel's key for a pattern.
#[must_use]
pub fn pattern_key(p: &Pattern) -> PatternKey {
    let wire = p.wire_suffix();
    let mut bytes = [0u8; PATTERN_BYTES];
    let n = wire.len().min(PATTERN_BYTES);
    bytes[..n].copy_from_slice(&wire[..n]);
    PatternKey {
        len: u8::try_from(n).unwrap_or(u8::MAX),
        wildcard: if p.is_wildcard() { PATTERN_WILDCARD } else { 0 },
        _pad: [0; 6],
        bytes,
    }
}

/// Every pattern of the configuration, by id.
fn all_patterns(config: &Config) -> BTreeMap<u32, Pattern> {
    let mut all = BTreeMap::new();
    for e in config.catalog.endpoints() {
        all.insert(e.pattern.id(), e.pattern.clone());
    }
    for r in config.catalog.resolvers() {
        for p in &r.names {
            all.insert(p.id(), p.clone());
        }
    }
    for r in &config.rules {
        for p in &r.names {
            all.insert(p.id(), p.clone());
        }
    }
    for e in &config.exceptions {
        for p in &e.names {
            all.insert(p.id(), p.clone());
        }
    }
    all
}

/// The catalog entry that judges the names `p` is the most specific
/// pattern for: `p`'s own, or the most specific entry that covers it.
#[must_use]
pub fn endpoint_for<'a>(catalog: &'a Catalog, p: &Pattern) -> Option<&'a Endpoint> {
    catalog.covering(p)
}

fn is_resolver(catalog: &Catalog, p: &Pattern) -> bool {
    catalog
        .resolvers()
        .iter()
        .any(|r| r.names.iter().any(|n| n == p || n.covers(p)))
}

/// What the kernel judges names of pattern `p` by.
fn class_of(catalog: &Catalog, p: &Pattern) -> Option<NameClass> {
    if is_resolver(catalog, p) {
        return Some(NameClass {
            jurisdiction: [0; 4],
            kind: CLASS_RESOLVER,
            _pad: [0; 3],
            endpoint: 0,
        });
    }
    let e = endpoint_for(catalog, p)?;
    let (kind, jurisdiction) = match (&e.jurisdiction, e.determines_region) {
        (_, false) | (Jurisdiction::Unknown, _) => (CLASS_UNKNOWN, [0; 4]),
        (Jurisdiction::Global, true) => (CLASS_CATALOG, geoip::CountrySet::all().0),
        (Jurisdiction::Countries { countries, .. }, true) => (CLASS_CATALOG, countries.0),
    };
    Some(NameClass {
        jurisdiction,
        kind,
        _pad: [0; 3],
        endpoint: e.pattern.id(),
    })
}

/// Whether rule pattern `rule` matches every name that `p` is the most
/// specific pattern for.
fn rule_covers(rule: &Pattern, p: &Pattern) -> bool {
    rule == p || rule.covers(p)
}

/// Compiles the catalog and the rules that name hosts.
#[must_use]
pub fn compile(config: &Config, now: jiff::Timestamp) -> CompiledNames {
    let all = all_patterns(config);
    let mut out = CompiledNames::default();
    for (&id, p) in &all {
        out.patterns.push((pattern_key(p), id));
        if let Some(class) = class_of(&config.catalog, p) {
            out.classes.push((id, class));
        }
    }
    let deny: Vec<_> = config
        .deny_rules()
        .filter(|r| !r.names.is_empty())
        .collect();
    let policies = config.workloads.len() + 1;
    for (&id, p) in &all {
        // Deny rules hold for every policy; the first one listed names it.
        if let Some(rule) = deny
            .iter()
            .find(|r| r.names.iter().any(|n| rule_covers(n, p)))
        {
            for policy in 0..policies {
                out.rules.push((
                    NameRuleKey {
                        policy: u32::try_from(policy).unwrap_or(u32::MAX),
                        pattern: id,
                    },
                    DestRule {
                        rule_id: rule.id,
                        action: Action::Block as u8,
                        kind: DestKind::Denied as u8,
                        country: 0,
                    },
                ));
            }
            continue;
        }
        for e in &config.exceptions {
            if !e.in_force(now) || !e.names.iter().any(|n| rule_covers(n, p)) {
                continue;
            }
            for (i, w) in config.workloads.iter().enumerate() {
                let key = NameRuleKey {
                    policy: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    pattern: id,
                };
                if !e.applies_to(w) || out.rules.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                out.rules.push((
                    key,
                    DestRule {
                        rule_id: e.id,
                        action: Action::Allow as u8,
                        kind: DestKind::Exception as u8,
                        country: 0,
                    },
                ));
            }
        }
    }
    out
}

/// The most specific pattern of the configuration that matches `name`, as
/// the kernel finds it.
#[must_use]
pub fn most_specific(config: &Config, name: &str) -> Option<Pattern> {
    all_patterns(config)
        .into_values()
        .filter(|p| p.matches(name))
        .max_by_key(Pattern::specificity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::from_toml(
            &format!(
                "[policy]\nallowed = [\"EEA\"]\n[[tenant]]\nid = \"acme\"\nallowed = [\"EEA\"]\n\
                 [[workload]]\nname = \"crm\"\nrole = \"crm-sync\"\ntenants = [\"acme\"]\ncgroup = [\"/crm\"]\n{extra}"
            ),
            "t",
        )
        .unwrap()
    }

    fn class(c: &CompiledNames, p: &str) -> Option<NameClass> {
        let id = Pattern::parse(p).unwrap().id();
        c.classes.iter().find(|(i, _)| *i == id).map(|(_, c)| *c)
    }

    #[test]
    fn catalog_entries_become_classes_with_their_jurisdiction() {
        let cfg = config("");
        let c = compile(&cfg, jiff::Timestamp::now());
        let eu = class(&c, "eu.api.openai.com").unwrap();
        assert_eq!(eu.kind, CLASS_CATALOG);
        let de = "DE".parse::<geoip::CountryCode>().unwrap().index();
        let us = "US".parse::<geoip::CountryCode>().unwrap().index();
        let bit = |set: &[u64; 4], i: u16| set[usize::from(i >> 6)] & (1 << (i & 63)) != 0;
        assert!(bit(&eu.jurisdiction, de));
        assert!(!bit(&eu.jurisdiction, us));
        // The name alone does not say where api.hubapi.com processes data.
        assert_eq!(class(&c, "api.hubapi.com").unwrap().kind, CLASS_UNKNOWN);
        assert_eq!(class(&c, "dns.google").unwrap().kind, CLASS_RESOLVER);
        // Keys are the wire-format suffixes, flagged for wildcards.
        let key = pattern_key(&Pattern::parse("*.openai.azure.com").unwrap());
        assert_eq!(key.wildcard, PATTERN_WILDCARD);
        assert_eq!(&key.bytes[..18], b"\x06openai\x05azure\x03com\x00");
    }

    #[test]
    fn a_deny_rule_naming_a_wildcard_covers_the_more_specific_catalog_names() {
        let cfg = config(
            "[[deny]]\nname = \"no-openai\"\nnames = [\"*.openai.com\"]\n\
             [[exception]]\nname = \"crm-hubspot\"\nnames = [\"api.hubapi.com\"]\nbasis = \"scc\"\n\
             justification = \"SCC 2021/914 with HubSpot\"\nexpires = \"2099-01-01\"\nworkloads = [\"crm\"]\n",
        );
        let c = compile(&cfg, jiff::Timestamp::now());
        let rule = |p: &str, policy: u32| {
            let id = Pattern::parse(p).unwrap().id();
            c.rules
                .iter()
                .find(|(k, _)| k.pattern == id && k.policy == policy)
                .map(|(_, r)| *r)
        };
        // eu.api.openai.com is its own (catalog) pattern, and *.openai.com
        // covers it: the deny rule must reach it in every policy.
        for policy in [0, 1] {
            assert_eq!(
                rule("eu.api.openai.com", policy).unwrap().kind,
                DestKind::Denied as u8
            );
        }
        let exc = rule("api.hubapi.com", 1).unwrap();
        assert_eq!(exc.kind, DestKind::Exception as u8);
        assert!(
            rule("api.hubapi.com", 0).is_none(),
            "exceptions are per workload"
        );
        // Both policies have name rules (the deny rule), and say so.
        let compiled = crate::policy::compile(&cfg, jiff::Timestamp::now());
        for p in &compiled.policies {
            assert_ne!(p.exceptions & residency_common::HAS_NAME_RULES, 0);
        }
        let plain = crate::policy::compile(&config(""), jiff::Timestamp::now());
        assert_eq!(
            plain.policies[0].exceptions & residency_common::HAS_NAME_RULES,
            0
        );
        assert!(rule("api-eu1.hubapi.com", 1).is_none());
    }

    #[test]
    fn known_doh_resolvers_are_a_bypass_on_their_addresses_unless_a_rule_names_them() {
        let cfg = config("");
        let c = crate::policy::compile(&cfg, jiff::Timestamp::now());
        let google: ipnet::Ipv4Net = "8.8.8.8/32".parse().unwrap();
        let (_, rule) = c
            .rules_v4
            .iter()
            .find(|(n, _)| *n == google)
            .expect("8.8.8.8 is a known DoH resolver");
        assert_eq!(rule.kind, DestKind::ResolverBypass as u8);
        // A configured rule for the address keeps it.
        let cfg = config(
            "[[internal]]\nname = \"lab\"\ndestinations = [\"8.8.8.0/24\"]\njurisdiction = \"DE\"\n",
        );
        let c = crate::policy::compile(&cfg, jiff::Timestamp::now());
        assert!(!c.rules_v4.iter().any(|(n, _)| *n == google));
        // No name tracking, no bypass entries.
        let cfg = config("[names]\ntrack = false\n");
        let c = crate::policy::compile(&cfg, jiff::Timestamp::now());
        assert!(
            c.rules_v4
                .iter()
                .all(|(_, r)| r.kind != DestKind::ResolverBypass as u8)
        );
    }

    #[test]
    fn a_bad_endpoint_or_deployment_is_named_with_its_line() {
        let err = Config::from_toml(
            "[[endpoint]]\nid = \"x\"\npattern = \"api.example.com\"\njurisdiction = [\"DE\"]\n",
            "t",
        )
        .unwrap_err();
        assert_eq!(err.line, Some(1), "{err}");
        assert!(err.to_string().contains("source"), "{err}");
        let err = Config::from_toml(
            "[catalog.deployments]\n\"nothing-covers.example\" = \"EU\"\n",
            "t",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("no catalog entry covers it"),
            "{err}"
        );
        let ok = Config::from_toml(
            "[catalog.deployments]\n\"acme-eu.openai.azure.com\" = \"EU\"\n",
            "t",
        )
        .unwrap();
        let e = ok.catalog.lookup("acme-eu.openai.azure.com").unwrap();
        assert!(e.determines_region);
        assert_eq!(e.jurisdiction.to_string(), "EU");
    }

    #[test]
    fn rules_need_destinations_or_names() {
        let err = Config::from_toml("[[deny]]\nname = \"x\"\n", "t").unwrap_err();
        assert!(
            err.to_string().contains("no destinations and no names"),
            "{err}"
        );
        let err = Config::from_toml("[[deny]]\nname = \"x\"\nnames = [\"*.\"]\n", "t").unwrap_err();
        assert!(err.to_string().contains("deny[0].names[0]"), "{err}");
    }
}
