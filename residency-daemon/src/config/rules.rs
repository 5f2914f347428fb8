//! `[[deny]]`, `[[internal]]` and `policy.local_networks`: the destination
//! rules the kernel checks before the `GeoIP` tables, each numbered with
//! the id the kernel reports.

use std::net::IpAddr;

use geoip::CountryCode;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use residency_catalog::Pattern;
use residency_config::{ConfigError, Locator, Spanned};
use serde::Deserialize;

use super::{Config, Exception, RawConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDenyRule {
    name: Spanned<String>,
    #[serde(default)]
    destinations: Option<Spanned<Vec<Spanned<String>>>>,
    /// Host names: exact (`api.example.com`) or `*.` suffixes.
    #[serde(default)]
    names: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInternal {
    name: Spanned<String>,
    destinations: Spanned<Vec<Spanned<String>>>,
    jurisdiction: Spanned<String>,
    #[serde(default)]
    description: String,
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
    /// Host names the rule covers (deny rules only): judged by the name
    /// the workload resolved for the address it connects to.
    pub names: Vec<Pattern>,
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

impl Config {
    /// The deny rules.
    pub fn deny_rules(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| r.kind == RuleKind::Deny)
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
}

/// Deny rules, then internal networks, then the local ranges, numbered in
/// that order.
pub(super) fn validate_rules(raw: &RawConfig, at: &Locator<'_>) -> Result<Vec<Rule>, ConfigError> {
    let mut rules: Vec<Rule> = Vec::new();
    // The kernel keys rules by prefix, so one prefix can name one rule.
    let mut seen: std::collections::HashMap<IpNet, String> = std::collections::HashMap::new();
    for (i, rule) in raw.deny.iter().enumerate() {
        let field = format!("deny[{i}]");
        let names = rule_names(rule.names.as_ref(), &field, at)?;
        let destinations = targets(
            rule.destinations.as_ref(),
            &names,
            &rule.name,
            &field,
            &mut seen,
            at,
        )?;
        push_rule(
            &mut rules,
            &rule.name,
            &field,
            &rule.description,
            RuleKind::Deny,
            destinations,
            at,
        )?;
        if let Some(last) = rules.last_mut() {
            last.names = names;
        }
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
            names: Vec::new(),
        });
    }

    let total: usize = rules.iter().map(|r| r.destinations.len()).sum();
    if total > residency_common::MAX_DEST_RULES as usize {
        return Err(at.err_opt(
            None,
            "deny",
            &format!(
                "{total} destinations in all; at most {} fit in the kernel's rule table",
                residency_common::MAX_DEST_RULES
            ),
        ));
    }

    Ok(rules)
}

pub(super) fn next_id(rules: &[Rule]) -> u32 {
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
        names: Vec::new(),
    });
    Ok(())
}

/// What a deny rule or an exception covers by address: its `destinations`,
/// which may be left out (or empty) when it names hosts instead.
pub(super) fn targets(
    destinations: Option<&Spanned<Vec<Spanned<String>>>>,
    names: &[Pattern],
    name: &Spanned<String>,
    field: &str,
    seen: &mut std::collections::HashMap<IpNet, String>,
    at: &Locator<'_>,
) -> Result<Vec<IpNet>, ConfigError> {
    match destinations {
        Some(list) if !list.get_ref().is_empty() || names.is_empty() => {
            rule_destinations(list, field, seen, at)
        }
        _ if !names.is_empty() => Ok(Vec::new()),
        _ => Err(at.err(
            name.span(),
            field,
            "names no destinations and no names; give `destinations` (CIDRs) or `names` \
             (host names such as \"*.openai.com\"), or both",
        )),
    }
}

/// `names = [...]` of a deny rule or an exception: host name patterns,
/// exact or `*.` suffixes, each at most once.
pub(super) fn rule_names(
    list: Option<&Spanned<Vec<Spanned<String>>>>,
    field: &str,
    at: &Locator<'_>,
) -> Result<Vec<Pattern>, ConfigError> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    let mut out: Vec<Pattern> = Vec::new();
    for (j, name) in list.get_ref().iter().enumerate() {
        let here = format!("{field}.names[{j}]");
        let pattern = Pattern::parse(name.get_ref()).map_err(|e| {
            at.err(
                name.span(),
                &here,
                &format!(
                    "{e}; expected a host name such as \"api.example.com\" or \"*.example.com\""
                ),
            )
        })?;
        if out.contains(&pattern) {
            return Err(at.err(
                name.span(),
                &here,
                &format!("\"{pattern}\" is listed twice"),
            ));
        }
        out.push(pattern);
    }
    Ok(out)
}

pub(super) fn rule_destinations(
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

/// Parses a CIDR (or a bare address, as a host prefix), rejecting host bits
/// and turning an IPv4-mapped IPv6 prefix into its IPv4 prefix.
pub(super) fn parse_cidr(text: &str) -> Result<IpNet, String> {
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
                " (host names go in `names`, e.g. names = [\"*.example.com\"])"
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
