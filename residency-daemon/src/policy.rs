//! The policy stage of the control path: the validated configuration
//! compiled into what the kernel applies (the policy's country bitmap and
//! choices, the destination-rule tries), and the same decision made in
//! userspace, for `residency lookup` and for explanations.
//!
//! The kernel programs and [`decide`] must agree; the end-to-end tests hold
//! them to it.

use std::net::IpAddr;

use geoip::CountryCode;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use residency_common::{Action, DestKind, DestRule, Policy, Verdict};

use crate::config::{Choice, Config, Mode, Rule, RuleKind};

/// What the kernel maps hold for one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// Policy index 0, the default.
    pub policy: Policy,
    pub rules_v4: Vec<(Ipv4Net, DestRule)>,
    pub rules_v6: Vec<(Ipv6Net, DestRule)>,
}

fn action(c: Choice) -> Action {
    match c {
        Choice::Allow => Action::Allow,
        Choice::Flag => Action::Flag,
        Choice::Block => Action::Block,
    }
}

/// Compiles a configuration for the kernel.
#[must_use]
pub fn compile(config: &Config) -> Compiled {
    let policy = Policy {
        allowed: config.policy.allowed.0,
        unknown_action: action(config.policy.unknown) as u8,
        enforce: u8::from(config.mode == Mode::Enforce),
        _pad: [0; 6],
    };
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
    Compiled {
        policy,
        rules_v4,
        rules_v6,
    }
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

/// Decides about `ip` as the kernel would. `geo` gives the country the
/// kernel's tables hold for an address (the flattened tables, not the full
/// database, so that both see the same data).
pub fn decide(
    config: &Config,
    ip: IpAddr,
    geo: impl FnOnce(IpAddr) -> Option<CountryCode>,
) -> Decision {
    let ip = geoip::db::canonical(ip);
    let mut reasons = Vec::new();
    let rule = config
        .rules
        .iter()
        .flat_map(|r| r.destinations.iter().map(move |n| (n, r)))
        .filter(|(n, _)| n.contains(&ip))
        .max_by_key(|(n, _)| n.prefix_len());
    let (kind, act, rule_id, country) = if let Some((net, rule)) = rule {
        match rule.kind {
            RuleKind::Deny => {
                reasons.push(format!(
                    "{ip} is in {net}, listed by deny rule \"{}\"",
                    rule.name
                ));
                (DestKind::Denied, Action::Block, rule.id, None)
            }
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
                    judge(config, Some(c), &mut reasons),
                    rule.id,
                    Some(c),
                )
            }
        }
    } else {
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
        (kind, judge(config, c, &mut reasons), 0, c)
    };
    let verdict = match act {
        Action::Allow => Verdict::Allowed,
        Action::Block if config.mode == Mode::Enforce => Verdict::Blocked,
        Action::Flag | Action::Block | Action::Judge => Verdict::Flagged,
    };
    reasons.push(match (verdict, config.mode) {
        (Verdict::Allowed, _) => "allowed".to_owned(),
        (Verdict::Blocked, _) => {
            "blocked: connect() and sendmsg() fail with EPERM (mode = \"enforce\")".to_owned()
        }
        (Verdict::Flagged, Mode::Monitor) => {
            "flagged: a violation, reported but not blocked (mode = \"monitor\")".to_owned()
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

fn judge(config: &Config, country: Option<CountryCode>, reasons: &mut Vec<String>) -> Action {
    let Some(c) = country else {
        reasons.push(format!(
            "policy.unknown = \"{}\"",
            config.policy.unknown.as_str()
        ));
        return action(config.policy.unknown);
    };
    let names = config.policy.allowed_names.join(", ");
    if config.policy.allowed.contains(c) {
        reasons.push(format!("{c} is allowed by policy.allowed ({names})"));
        for (set, countries, condition) in &config.policy.conditions {
            if countries.contains(c) {
                reasons.push(format!(
                    "through {set}, which holds only on a condition: {condition}"
                ));
            }
        }
        Action::Allow
    } else {
        reasons.push(format!("{c} is not in policy.allowed ({names})"));
        Action::Block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let d = decide(&c, ip("203.0.113.9"), |_| Some(cc("DE")));
        assert_eq!(
            (d.verdict, d.kind),
            (Verdict::Blocked, DestKind::Denied),
            "deny beats GeoIP"
        );
        let d = decide(&c, ip("10.30.1.1"), none);
        assert_eq!(
            (d.verdict, d.kind, d.country),
            (Verdict::Allowed, DestKind::Internal, Some(cc("DE")))
        );
        let d = decide(&c, ip("10.20.1.1"), none);
        assert_eq!(
            (d.verdict, d.kind),
            (Verdict::Blocked, DestKind::Internal),
            "CH is not EEA"
        );
        let d = decide(&c, ip("10.99.1.1"), none);
        assert_eq!((d.verdict, d.kind), (Verdict::Allowed, DestKind::Local));
        let d = decide(&c, ip("::1"), none);
        assert_eq!(d.kind, DestKind::Local);
        let d = decide(&c, ip("198.51.100.1"), |_| Some(cc("FR")));
        assert_eq!((d.verdict, d.kind), (Verdict::Allowed, DestKind::Geo));
        let d = decide(&c, ip("198.51.100.1"), |_| Some(cc("US")));
        assert_eq!(d.verdict, Verdict::Blocked);
        assert!(
            d.reasons
                .iter()
                .any(|r| r.contains("US is not in policy.allowed (EEA)")),
            "{:?}",
            d.reasons
        );
        let d = decide(&c, ip("198.51.100.1"), none);
        assert_eq!((d.verdict, d.kind), (Verdict::Blocked, DestKind::Unknown));
        let d = decide(&c, ip("::ffff:203.0.113.9"), none);
        assert_eq!(
            d.kind,
            DestKind::Denied,
            "mapped addresses are judged as IPv4"
        );
    }

    #[test]
    fn monitor_flags_what_enforce_blocks() {
        let c = config(&BASE.replace("mode = \"enforce\"", "mode = \"monitor\""));
        let d = decide(&c, "198.51.100.1".parse().unwrap(), |_| Some(cc("US")));
        assert_eq!(d.verdict, Verdict::Flagged);
    }

    #[test]
    fn compiled_maps_carry_every_rule() {
        let c = config(BASE);
        let k = compile(&c);
        assert_eq!(k.policy.enforce, 1);
        assert_eq!(k.policy.unknown_action, Action::Block as u8);
        let de = cc("DE").index();
        assert_ne!(k.policy.allowed[usize::from(de / 64)] & (1 << (de % 64)), 0);
        let us = cc("US").index();
        assert_eq!(k.policy.allowed[usize::from(us / 64)] & (1 << (us % 64)), 0);
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
}
