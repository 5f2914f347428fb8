//! The catalog: built-in entries, configuration entries that override
//! them, and deployment settings that refine names whose region the
//! catalog cannot know; looked up by host name, most specific first.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use geoip::Sets;
use serde::Deserialize;

use crate::{
    CatalogError,
    endpoint::{Confidence, Endpoint, Origin, RawEndpoint, check_id},
    jurisdiction::{Jurisdiction, JurisdictionSpec},
    pattern::{Pattern, normalize},
};

/// The built-in catalog file, as shipped (for `residency catalog` style
/// listings and for audits of what the daemon knew).
pub const BUILTIN_TOML: &str = include_str!("../catalog.toml");

/// The built-in file: endpoints, then resolvers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    endpoint: Vec<RawEndpoint>,
    #[serde(default)]
    resolver: Vec<RawResolver>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResolver {
    id: String,
    provider: String,
    names: Vec<String>,
    addresses: Vec<IpAddr>,
    source: String,
    #[serde(default)]
    notes: Option<String>,
}

/// A public DNS resolver reachable over DNS-over-HTTPS (or DoT/DoQ). A
/// flow to one means the process resolves names where residency does not
/// see them: a "resolver bypass". The addresses are only compared with
/// flow destinations, never contacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolver {
    /// Short stable name.
    pub id: String,
    /// Who runs it.
    pub provider: String,
    /// Its DoH/DoT host names.
    pub names: Vec<Pattern>,
    /// Its published anycast addresses (may be empty when they are per
    /// customer).
    pub addresses: Vec<IpAddr>,
    /// Where the names and addresses are published.
    pub source: String,
    /// Caveats; empty when there are none.
    pub notes: String,
}

/// A configuration entry that replaced a built-in entry with the same
/// pattern, for the daemon to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The pattern both entries have.
    pub pattern: Pattern,
    /// The built-in entry's id.
    pub builtin_id: String,
    /// The configuration entry's id.
    pub config_id: String,
}

/// Exact names and wildcard suffixes, each to a position.
#[derive(Debug, Clone, Default)]
struct PatternIndex {
    exact: HashMap<String, usize>,
    wildcard: HashMap<String, usize>,
}

impl PatternIndex {
    fn get(&self, p: &Pattern) -> Option<usize> {
        let map = if p.is_wildcard() {
            &self.wildcard
        } else {
            &self.exact
        };
        map.get(p.suffix()).copied()
    }

    /// Inserts; the position already there, if any.
    fn insert(&mut self, p: &Pattern, at: usize) -> Option<usize> {
        let map = if p.is_wildcard() {
            &mut self.wildcard
        } else {
            &mut self.exact
        };
        map.insert(p.suffix().to_owned(), at)
    }

    /// The most specific pattern that matches `name`.
    fn lookup(&self, name: &str) -> Option<usize> {
        let name = normalize(name)?;
        self.exact
            .get(&*name)
            .copied()
            .or_else(|| self.longest_wildcard(&name, false))
    }

    /// The most specific pattern that covers `p`: for an exact name, its
    /// lookup; for `*.s`, the wildcard with the longest suffix that is s
    /// or a parent of s.
    fn covering(&self, p: &Pattern) -> Option<usize> {
        if p.is_wildcard() {
            self.longest_wildcard(p.suffix(), true)
        } else {
            self.lookup(p.suffix())
        }
    }

    /// The wildcard with the longest suffix under which `name` lies (or,
    /// with `itself`, whose suffix is `name`). `name` is normalized, so
    /// every label before a suffix is non-empty.
    fn longest_wildcard(&self, name: &str, itself: bool) -> Option<usize> {
        if itself && let Some(&at) = self.wildcard.get(name) {
            return Some(at);
        }
        name.match_indices('.')
            .find_map(|(dot, _)| self.wildcard.get(&name[dot + 1..]).copied())
    }
}

/// The catalog, validated: every pattern valid and unique, every id
/// unique, every pattern's 32-bit id distinct.
#[derive(Debug, Clone)]
pub struct Catalog {
    endpoints: Vec<Endpoint>,
    index: PatternIndex,
    by_id: HashMap<String, usize>,
    by_pattern_id: HashMap<u32, usize>,
    overrides: Vec<Override>,
    resolvers: Vec<Resolver>,
    resolver_names: PatternIndex,
    resolver_addrs: HashMap<IpAddr, usize>,
}

impl Catalog {
    /// The built-in catalog alone.
    ///
    /// # Errors
    /// Only if the shipped file is broken (its tests catch that), or if a
    /// custom set in `sets` changes what a name means.
    pub fn builtin(sets: &Sets) -> Result<Catalog, CatalogError> {
        Catalog::with(true, &[], &BTreeMap::new(), sets)
    }

    /// The built-in catalog (when `builtin`), then the configuration's
    /// `[[endpoint]]` entries, which replace built-in entries with the
    /// same pattern (see [`Catalog::overrides`]), then the deployment
    /// settings (`"acme-eu.openai.azure.com" = "EU"`), each of which turns
    /// a name covered by an entry that does not determine its region into
    /// an entry that does. Names in jurisdictions resolve with `sets`, so
    /// custom sets work.
    ///
    /// # Errors
    /// [`CatalogError`] naming the entry and field: an invalid entry, two
    /// configuration entries with one pattern, an id used twice, a
    /// deployment setting that no entry covers or whose entry already
    /// determines the region, two patterns with one 32-bit id.
    pub fn with(
        builtin: bool,
        endpoints: &[RawEndpoint],
        deployments: &BTreeMap<String, JurisdictionSpec>,
        sets: &Sets,
    ) -> Result<Catalog, CatalogError> {
        let mut b = Builder::default();
        let mut resolvers = Vec::new();
        if builtin {
            let file: CatalogFile =
                toml::from_str(BUILTIN_TOML).map_err(|e| CatalogError::Builtin(e.to_string()))?;
            for (i, raw) in file.endpoint.iter().enumerate() {
                b.add(Endpoint::from_raw(raw, i, Origin::BuiltIn, sets)?, i)?;
            }
            resolvers = file
                .resolver
                .iter()
                .enumerate()
                .map(|(i, r)| resolver_from_raw(r, i))
                .collect::<Result<_, _>>()?;
        }
        for (i, raw) in endpoints.iter().enumerate() {
            b.add(Endpoint::from_raw(raw, i, Origin::Config, sets)?, i)?;
        }
        b.deploy(deployments, sets)?;
        Catalog::assemble(b, resolvers)
    }

    fn assemble(b: Builder, resolvers: Vec<Resolver>) -> Result<Catalog, CatalogError> {
        let mut by_pattern_id = HashMap::new();
        let mut id_owner: HashMap<u32, &Pattern> = HashMap::new();
        let all = b
            .endpoints
            .iter()
            .map(|e| &e.pattern)
            .chain(resolvers.iter().flat_map(|r| &r.names));
        for p in all {
            match id_owner.get(&p.id()) {
                Some(q) if *q != p => {
                    return Err(CatalogError::IdCollision {
                        first: q.to_string(),
                        second: p.to_string(),
                        id: p.id(),
                    });
                }
                _ => {
                    id_owner.insert(p.id(), p);
                }
            }
        }
        for (at, e) in b.endpoints.iter().enumerate() {
            by_pattern_id.insert(e.pattern.id(), at);
        }
        let mut resolver_names = PatternIndex::default();
        let mut resolver_addrs = HashMap::new();
        for (at, r) in resolvers.iter().enumerate() {
            let fail = |field, message| CatalogError::Resolver {
                index: at,
                label: r.id.clone(),
                field,
                message,
            };
            for name in &r.names {
                if let Some(other) = resolver_names.insert(name, at) {
                    return Err(fail(
                        "names",
                        format!("\"{name}\" is also a name of \"{}\"", resolvers[other].id),
                    ));
                }
            }
            for addr in &r.addresses {
                if let Some(other) = resolver_addrs.insert(addr.to_canonical(), at) {
                    return Err(fail(
                        "addresses",
                        format!("{addr} is also an address of \"{}\"", resolvers[other].id),
                    ));
                }
            }
        }
        let by_id = b
            .endpoints
            .iter()
            .enumerate()
            .map(|(at, e)| (e.id.clone(), at))
            .collect();
        Ok(Catalog {
            endpoints: b.endpoints,
            index: b.index,
            by_id,
            by_pattern_id,
            overrides: b.overrides,
            resolvers,
            resolver_names,
            resolver_addrs,
        })
    }

    /// The entry for a host name: the most specific pattern that matches
    /// it (an exact name before any wildcard, then the longest suffix).
    /// Case and one trailing dot do not matter.
    #[must_use]
    pub fn lookup(&self, name: &str) -> Option<&Endpoint> {
        self.index.lookup(name).map(|at| &self.endpoints[at])
    }

    /// The most specific entry that covers every name `p` matches: for an
    /// exact name, its lookup; for `*.s`, the wildcard entry with the
    /// longest suffix that is `s` or a parent of `s`.
    #[must_use]
    pub fn covering(&self, p: &Pattern) -> Option<&Endpoint> {
        self.index.covering(p).map(|at| &self.endpoints[at])
    }

    /// Every entry, built-in first (in file order, overridden ones in
    /// place), then configuration, then deployments that add a name.
    #[must_use]
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The entry with this id.
    #[must_use]
    pub fn endpoint(&self, id: &str) -> Option<&Endpoint> {
        self.by_id.get(id).map(|&at| &self.endpoints[at])
    }

    /// The entry whose pattern has this [`Pattern::id`]: how the kernel's
    /// events name the entry that matched.
    #[must_use]
    pub fn by_pattern_id(&self, id: u32) -> Option<&Endpoint> {
        self.by_pattern_id.get(&id).map(|&at| &self.endpoints[at])
    }

    /// The built-in entries that configuration replaced.
    #[must_use]
    pub fn overrides(&self) -> &[Override] {
        &self.overrides
    }

    /// The known public DNS-over-HTTPS resolvers.
    #[must_use]
    pub fn resolvers(&self) -> &[Resolver] {
        &self.resolvers
    }

    /// The resolver with this host name, if it is one.
    #[must_use]
    pub fn resolver_for_name(&self, name: &str) -> Option<&Resolver> {
        self.resolver_names
            .lookup(name)
            .map(|at| &self.resolvers[at])
    }

    /// Whether this host name is a known public resolver's.
    #[must_use]
    pub fn is_resolver_name(&self, name: &str) -> bool {
        self.resolver_for_name(name).is_some()
    }

    /// The resolver with this address, if any (IPv4-mapped IPv6 addresses
    /// count as their IPv4 address).
    #[must_use]
    pub fn resolver_for_addr(&self, addr: IpAddr) -> Option<&Resolver> {
        self.resolver_addrs
            .get(&addr.to_canonical())
            .map(|&at| &self.resolvers[at])
    }
}

/// Collects entries, keeping patterns and ids unique.
#[derive(Default)]
struct Builder {
    endpoints: Vec<Endpoint>,
    index: PatternIndex,
    ids: HashMap<String, usize>,
    overrides: Vec<Override>,
}

impl Builder {
    /// Adds an entry, the `index`-th of its origin. A configuration entry
    /// replaces a built-in one with the same pattern.
    fn add(&mut self, e: Endpoint, index: usize) -> Result<(), CatalogError> {
        let fail = |field, message| CatalogError::Endpoint {
            origin: e.origin,
            index,
            label: e.id.clone(),
            field,
            message,
        };
        let at = match self.index.get(&e.pattern) {
            Some(at)
                if self.endpoints[at].origin == Origin::BuiltIn && e.origin == Origin::Config =>
            {
                let old = &self.endpoints[at];
                self.overrides.push(Override {
                    pattern: e.pattern.clone(),
                    builtin_id: old.id.clone(),
                    config_id: e.id.clone(),
                });
                self.ids.remove(&old.id);
                at
            }
            Some(at) => {
                let other = &self.endpoints[at];
                return Err(fail(
                    "pattern",
                    format!(
                        "\"{}\" is already the pattern of {} endpoint \"{}\"",
                        e.pattern, other.origin, other.id
                    ),
                ));
            }
            None => self.endpoints.len(),
        };
        if let Some(&other) = self.ids.get(&e.id) {
            let other = &self.endpoints[other];
            return Err(fail(
                "id",
                format!(
                    "\"{}\" is already the id of {} endpoint \"{}\"",
                    e.id, other.origin, other.pattern
                ),
            ));
        }
        self.ids.insert(e.id.clone(), at);
        self.index.insert(&e.pattern, at);
        if at == self.endpoints.len() {
            self.endpoints.push(e);
        } else {
            self.endpoints[at] = e;
        }
        Ok(())
    }

    /// Applies deployment settings. Each refines the entry that covers it
    /// before any setting applies, so their order does not matter.
    fn deploy(
        &mut self,
        deployments: &BTreeMap<String, JurisdictionSpec>,
        sets: &Sets,
    ) -> Result<(), CatalogError> {
        let mut seen: HashMap<Pattern, &str> = HashMap::new();
        let mut refined = Vec::new();
        for (name, spec) in deployments {
            let fail = |message: String| CatalogError::Deployment {
                name: name.clone(),
                message,
            };
            let pattern = Pattern::parse(name).map_err(|e| fail(e.reason))?;
            if let Some(first) = seen.insert(pattern.clone(), name) {
                return Err(fail(format!(
                    "\"{first}\" names the same pattern (case does not matter)"
                )));
            }
            let jurisdiction = spec.resolve(sets).map_err(|e| fail(e.to_string()))?;
            if jurisdiction.is_unknown() {
                return Err(fail(
                    "UNKNOWN says nothing; a deployment setting says where the account or resource processes data"
                        .into(),
                ));
            }
            let Some(at) = self.index.covering(&pattern) else {
                return Err(fail(
                    "no catalog entry covers it; add an [[endpoint]] (with its source) instead"
                        .into(),
                ));
            };
            let parent = &self.endpoints[at];
            if parent.determines_region && !parent.jurisdiction.is_unknown() {
                return Err(fail(format!(
                    "the catalog entry \"{}\" ({}) says the name already determines the region ({}); \
                     deployment settings only refine names that do not. To replace the entry, \
                     add an [[endpoint]] with pattern \"{}\"",
                    parent.id, parent.pattern, parent.jurisdiction, parent.pattern
                )));
            }
            refined.push((at, refine(parent, pattern, jurisdiction)));
        }
        for (parent, e) in refined {
            if e.pattern == self.endpoints[parent].pattern {
                self.ids.remove(&self.endpoints[parent].id);
                self.ids.insert(e.id.clone(), parent);
                self.endpoints[parent] = e;
            } else {
                let at = self.endpoints.len();
                self.ids.insert(e.id.clone(), at);
                self.index.insert(&e.pattern, at);
                self.endpoints.push(e);
            }
        }
        Ok(())
    }
}

/// The entry a deployment setting makes of the entry it refines.
fn refine(parent: &Endpoint, pattern: Pattern, jurisdiction: Jurisdiction) -> Endpoint {
    Endpoint {
        id: format!("{}@{}", parent.id, pattern),
        notes: format!(
            "Set in [catalog.deployments], refining \"{}\" ({}).",
            parent.id, parent.pattern
        ),
        pattern,
        provider: parent.provider.clone(),
        service: parent.service.clone(),
        jurisdiction,
        determines_region: true,
        scope: parent.scope,
        // The operator states where their own account or resource is.
        confidence: Confidence::High,
        source: parent.source.clone(),
        origin: Origin::Deployment,
        refines: Some(parent.id.clone()),
    }
}

fn resolver_from_raw(raw: &RawResolver, index: usize) -> Result<Resolver, CatalogError> {
    let fail = |field, message| CatalogError::Resolver {
        index,
        label: raw.id.clone(),
        field,
        message,
    };
    check_id(&raw.id).map_err(|m| fail("id", m))?;
    if raw.provider.trim().is_empty() {
        return Err(fail("provider", "is required".into()));
    }
    if raw.source.trim().is_empty() {
        return Err(fail("source", "is required".into()));
    }
    if raw.names.is_empty() {
        return Err(fail("names", "is empty".into()));
    }
    let names = raw
        .names
        .iter()
        .map(|n| Pattern::parse(n).map_err(|e| fail("names", e.to_string())))
        .collect::<Result<_, _>>()?;
    Ok(Resolver {
        id: raw.id.clone(),
        provider: raw.provider.clone(),
        names,
        addresses: raw.addresses.clone(),
        source: raw.source.clone(),
        notes: raw.notes.clone().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use geoip::CountrySet;

    use super::*;
    use crate::{Judgement, Scope, UnknownReason};

    /// Parsed once: the file is large, and debug builds parse slowly.
    fn builtin() -> &'static Catalog {
        static BUILTIN: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();
        BUILTIN.get_or_init(|| Catalog::builtin(&Sets::new()).unwrap())
    }

    fn raw(id: &str, pattern: &str, jurisdiction: &str) -> RawEndpoint {
        RawEndpoint {
            id: id.into(),
            pattern: pattern.into(),
            jurisdiction: JurisdictionSpec::from(jurisdiction),
            provider: "Acme".into(),
            service: "LLM gateway".into(),
            source: "Acme DPA, annex 2".into(),
            determines_region: true,
            scope: None,
            confidence: None,
            notes: None,
        }
    }

    fn deployments(pairs: &[(&str, &str)]) -> BTreeMap<String, JurisdictionSpec> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), JurisdictionSpec::from(*v)))
            .collect()
    }

    fn set(name: &str) -> CountrySet {
        Sets::new().resolve(name).unwrap()
    }

    fn id_of<'a>(c: &'a Catalog, name: &str) -> &'a str {
        c.lookup(name).map_or("(none)", |e| e.id.as_str())
    }

    #[test]
    fn builtin_catalog_is_complete_and_sourced() {
        let c = builtin();
        let file: CatalogFile = toml::from_str(BUILTIN_TOML).unwrap();
        assert_eq!(c.endpoints().len(), file.endpoint.len(), "no entry lost");
        assert!(c.endpoints().len() > 48, "the facts, expanded per region");
        let mut patterns = HashSet::new();
        for e in c.endpoints() {
            let what = &e.id;
            assert_eq!(e.origin, Origin::BuiltIn);
            assert!(!e.provider.trim().is_empty(), "{what}: provider");
            assert!(!e.service.trim().is_empty(), "{what}: service");
            for part in e.source.split(" ; ") {
                assert!(part.contains("https://"), "{what}: source part {part:?}");
            }
            assert!(!e.pattern.as_str()[1..].contains('*'), "{what}: middle *");
            assert!(patterns.insert(e.pattern.clone()), "{what}: duplicate");
            // A name that does not determine its region must never be
            // judged on what it suggests.
            if !e.determines_region {
                assert!(
                    matches!(e.judge(&CountrySet::all()), Judgement::Unknown(_)),
                    "{what}"
                );
            }
        }
        // The raw file says the same: no middle '*' anywhere.
        for raw in &file.endpoint {
            assert!(!raw.pattern[1..].contains('*'), "{}", raw.pattern);
        }
        for line in BUILTIN_TOML.lines() {
            assert!(
                !(line.starts_with("regex")
                    || line.starts_with("region_map")
                    || line.contains("{region}")),
                "{line}"
            );
        }
    }

    #[test]
    fn facts_that_the_name_does_not_determine_stay_unknown() {
        let c = builtin();
        for name in [
            "api.anthropic.com",
            "acme.openai.azure.com",
            "api.hubapi.com",
            "bedrock-runtime.eu-central-1.amazonaws.com",
            "acme.my.salesforce.com",
            "acme.zendesk.com",
            "acme.splunkcloud.com",
            "mybucket.s3.amazonaws.com",
            "storage.googleapis.com",
            "acct.blob.core.windows.net",
            "stack.grafana.net",
            "api.cohere.com",
            "au.api.openai.com",
            "me-central2-aiplatform.googleapis.com",
        ] {
            let e = c
                .lookup(name)
                .unwrap_or_else(|| panic!("{name} is in the catalog"));
            assert!(!e.determines_region, "{name} -> {}", e.id);
            assert_eq!(
                e.judge(&CountrySet::all()),
                Judgement::Unknown(UnknownReason::NameDoesNotDetermineRegion),
                "{name}"
            );
        }
    }

    #[test]
    fn most_specific_entry_wins() {
        let c = builtin();
        assert_eq!(id_of(c, "eu.api.openai.com"), "openai-api-eu");
        assert_eq!(id_of(c, "api.openai.com"), "openai-api");
        assert_eq!(id_of(c, "openai.com"), "(none)");
        assert_eq!(id_of(c, "x.y.openai.azure.com"), "azure-openai");
        assert_eq!(id_of(c, "openai.azure.com"), "(none)");
        assert_eq!(id_of(c, "EU.API.OpenAI.com."), "openai-api-eu");
        assert_eq!(
            id_of(c, "http-intake.logs.us3.datadoghq.com"),
            "datadog-us3"
        );
        assert_eq!(id_of(c, "http-intake.logs.datadoghq.com"), "datadog-us1");
        assert_eq!(
            id_of(c, "otlp.eu01.nr-data.net"),
            "newrelic-eu01-collectors"
        );
        assert_eq!(id_of(c, "collector.nr-data.net"), "newrelic-us-collectors");
        assert_eq!(
            id_of(c, "mybucket.s3.eu-central-1.amazonaws.com"),
            "aws-s3-vhost-eu-central-1"
        );
        assert_eq!(
            id_of(c, "s3.eu-central-1.amazonaws.com"),
            "aws-s3-eu-central-1"
        );
        assert_eq!(
            id_of(c, "org.api.crm4.dynamics.com"),
            "dynamics-crm4",
            "*. is one or more labels"
        );
        assert_eq!(id_of(c, "a..openai.azure.com"), "(none)");

        // With a wildcard from configuration over the exact built-ins.
        let extra = [raw("openai-all", "*.openai.com", "US")];
        let c = &Catalog::with(true, &extra, &BTreeMap::new(), &Sets::new()).unwrap();
        assert_eq!(id_of(c, "eu.api.openai.com"), "openai-api-eu");
        assert_eq!(id_of(c, "api.openai.com"), "openai-api");
        assert_eq!(id_of(c, "files.openai.com"), "openai-all");
        assert_eq!(id_of(c, "x.eu.api.openai.com"), "openai-all");
    }

    #[test]
    fn regional_names_are_judged_by_their_region() {
        let c = builtin();
        let eu = set("EU");
        let hub = c.lookup("api-eu1.hubapi.com").unwrap();
        assert_eq!(hub.jurisdiction.to_string(), "EU");
        assert!(hub.determines_region);
        assert_eq!(hub.judge(&eu), Judgement::Allowed);
        assert_eq!(
            c.lookup("api.hubapi.com").unwrap().judge(&eu),
            Judgement::Unknown(UnknownReason::NameDoesNotDetermineRegion)
        );
        let s3 = c.lookup("b.s3.eu-central-1.amazonaws.com").unwrap();
        assert_eq!(s3.jurisdiction.to_string(), "DE");
        assert_eq!(s3.judge(&eu), Judgement::Allowed);
        let s3_us = c.lookup("s3.us-east-1.amazonaws.com").unwrap();
        assert!(matches!(s3_us.judge(&eu), Judgement::Violation { .. }));
        let openai = c.lookup("api.openai.com").unwrap();
        assert_eq!(openai.jurisdiction, Jurisdiction::Global);
        assert!(matches!(openai.judge(&eu), Judgement::Violation { .. }));
        let openai_eu = c.lookup("eu.api.openai.com").unwrap();
        assert_eq!(
            openai_eu.judge(&set("EEA").union(&set("CH"))),
            Judgement::Allowed
        );
        assert!(matches!(openai_eu.judge(&eu), Judgement::Violation { .. }));
        assert_eq!(
            c.lookup("europe-west3-aiplatform.googleapis.com")
                .unwrap()
                .judge(&eu),
            Judgement::Allowed
        );
        let apac = c.lookup("org.crm5.dynamics.com").unwrap();
        assert_eq!(
            apac.judge(&eu),
            Judgement::Unknown(UnknownReason::JurisdictionUnknown)
        );
    }

    #[test]
    fn deployments_refine_names_that_do_not_determine_the_region() {
        let d = deployments(&[
            ("acme-eu.openai.azure.com", "EU"),
            ("API.hubapi.com", "EU"),
            ("*.eu-tenants.my.salesforce.com", "DE"),
            ("bedrock-runtime.eu-central-1.amazonaws.com", "EU"),
        ]);
        let c = &Catalog::with(true, &[], &d, &Sets::new()).unwrap();
        let eu = set("EU");
        let azure = c.lookup("acme-eu.openai.azure.com").unwrap();
        assert_eq!(azure.origin, Origin::Deployment);
        assert_eq!(azure.id, "azure-openai@acme-eu.openai.azure.com");
        assert_eq!(azure.refines.as_deref(), Some("azure-openai"));
        assert_eq!(azure.provider, "Microsoft");
        assert!(azure.source.contains("learn.microsoft.com"));
        assert_eq!(azure.judge(&eu), Judgement::Allowed);
        // Other resources stay unknown.
        assert_eq!(
            c.lookup("other.openai.azure.com").unwrap().judge(&eu),
            Judgement::Unknown(UnknownReason::NameDoesNotDetermineRegion)
        );
        // Same pattern as the entry: replaced in place.
        let hub = c.lookup("api.hubapi.com").unwrap();
        assert_eq!(hub.origin, Origin::Deployment);
        assert_eq!(hub.judge(&eu), Judgement::Allowed);
        assert_eq!(c.endpoint("hubspot-api"), None);
        assert_eq!(
            c.endpoint("hubspot-api@api.hubapi.com").unwrap().pattern,
            hub.pattern
        );
        assert_eq!(
            id_of(c, "org1.eu-tenants.my.salesforce.com"),
            "salesforce-my-domain@*.eu-tenants.my.salesforce.com"
        );
        assert_eq!(id_of(c, "org2.my.salesforce.com"), "salesforce-my-domain");
        assert_eq!(
            c.lookup("bedrock-runtime.eu-central-1.amazonaws.com")
                .unwrap()
                .judge(&eu),
            Judgement::Allowed
        );
        // The kernel's id leads back to the entry.
        assert_eq!(c.by_pattern_id(azure.pattern.id()).unwrap().id, azure.id);
    }

    #[test]
    fn bad_deployments_are_refused_naming_them() {
        let sets = Sets::new();
        for (name, value, says) in [
            (
                "llm.acme.example",
                "EU",
                "no catalog entry covers it; add an [[endpoint]]",
            ),
            (
                "eu.api.openai.com",
                "DE",
                "already determines the region (EEA, CH)",
            ),
            (
                "x.s3.eu-central-1.amazonaws.com",
                "FR",
                "\"aws-s3-vhost-eu-central-1\"",
            ),
            ("acme.openai.azure.com", "EFTA", "\"EFTA\""),
            ("acme.openai.azure.com", "UNKNOWN", "says nothing"),
            ("acme.*.azure.com", "EU", "first label"),
            ("openai.azure.com", "EU", "no catalog entry covers it"),
        ] {
            let err = Catalog::with(true, &[], &deployments(&[(name, value)]), &sets).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("[catalog.deployments] \"{name}\": ")),
                "{msg}"
            );
            assert!(msg.contains(says), "{name}: {msg}");
        }
        let twice = deployments(&[("A.openai.azure.com", "EU"), ("a.openai.azure.com", "EU")]);
        let err = Catalog::with(true, &[], &twice, &sets).unwrap_err();
        assert!(err.to_string().contains("same pattern"), "{err}");
        // A config entry that does not determine its region can be refined.
        let mut gw = raw("acme-gw", "*.gw.acme.example", "UNKNOWN");
        gw.determines_region = false;
        let c = &Catalog::with(
            false,
            &[gw],
            &deployments(&[("eu.gw.acme.example", "EU")]),
            &sets,
        )
        .unwrap();
        assert_eq!(id_of(c, "eu.gw.acme.example"), "acme-gw@eu.gw.acme.example");
    }

    #[test]
    fn config_entries_override_builtins_and_clash_clearly() {
        let sets = Sets::new();
        let mine = raw("my-openai", "API.openai.com", "US");
        let c = &Catalog::with(true, std::slice::from_ref(&mine), &BTreeMap::new(), &sets).unwrap();
        assert_eq!(
            c.overrides(),
            [Override {
                pattern: Pattern::parse("api.openai.com").unwrap(),
                builtin_id: "openai-api".into(),
                config_id: "my-openai".into(),
            }]
        );
        let e = c.lookup("api.openai.com").unwrap();
        assert_eq!((e.id.as_str(), e.origin), ("my-openai", Origin::Config));
        assert_eq!(e.scope, Scope::Both);
        assert_eq!(c.endpoint("openai-api"), None);

        let err = Catalog::with(
            true,
            &[mine.clone(), raw("mine-2", "api.openai.com", "DE")],
            &BTreeMap::new(),
            &sets,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config endpoint[1] \"mine-2\": pattern: \"api.openai.com\" is already the pattern \
             of config endpoint \"my-openai\""
        );
        let err = Catalog::with(
            true,
            &[raw("openai-api-eu", "llm.acme.example", "DE")],
            &BTreeMap::new(),
            &sets,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config endpoint[0] \"openai-api-eu\": id: \"openai-api-eu\" is already the id of \
             built-in endpoint \"eu.api.openai.com\""
        );
        let err = Catalog::with(
            false,
            &[raw("a", "a.example", "DE"), raw("b", "b.*.example", "DE")],
            &BTreeMap::new(),
            &sets,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("config endpoint[1] \"b\": pattern: host pattern \"b.*.example\": "),
            "{err}"
        );
        // Custom sets from the configuration resolve.
        let mut custom = Sets::new();
        custom.define("dach", &["DE", "AT", "CH"]).unwrap();
        let c = &Catalog::with(
            false,
            &[raw("a", "a.example", "dach")],
            &BTreeMap::new(),
            &custom,
        )
        .unwrap();
        assert_eq!(c.endpoints().len(), 1);
        assert!(c.resolvers().is_empty());
        assert_eq!(
            c.lookup("a.example").unwrap().judge(&set("EU")),
            Judgement::Violation {
                outside: ["CH".parse().unwrap()].into_iter().collect()
            }
        );
    }

    #[test]
    fn pattern_ids_are_unique_and_lead_back() {
        let c = builtin();
        for e in c.endpoints() {
            assert_eq!(c.by_pattern_id(e.pattern.id()).unwrap().id, e.id);
        }
        // The guard itself: FNV-1a 32 collides for these two names, so
        // two entries with them must be refused.
        let (a, b) = collision();
        assert_eq!(Pattern::parse(&a).unwrap().id(), 0xdd9b_57e6);
        assert_eq!(Pattern::parse(&b).unwrap().id(), 0xdd9b_57e6);
        let err = Catalog::with(
            false,
            &[raw("a", &a, "DE"), raw("b", &b, "DE")],
            &BTreeMap::new(),
            &Sets::new(),
        )
        .unwrap_err();
        assert!(matches!(err, CatalogError::IdCollision { .. }), "{err}");
        assert!(err.to_string().contains(&format!("\"{a}\"")), "{err}");
    }

    /// Two host names with the same FNV-1a 32 hash, found once by a
    /// birthday search over `h<hex>.example` names.
    fn collision() -> (String, String) {
        ("h4b9cc.example".into(), "hb2b18.example".into())
    }

    #[test]
    fn resolvers_by_name_and_address() {
        let c = builtin();
        assert!(c.resolvers().len() >= 6);
        for r in c.resolvers() {
            assert!(!r.source.is_empty() && !r.provider.is_empty(), "{}", r.id);
        }
        for name in [
            "dns.google",
            "cloudflare-dns.com",
            "mozilla.cloudflare-dns.com",
            "dns.quad9.net",
            "doh.opendns.com",
            "dns.nextdns.io",
            "abc123.dns.nextdns.io",
            "dns.adguard-dns.com",
            "DNS.Google.",
        ] {
            assert!(c.is_resolver_name(name), "{name}");
        }
        assert!(!c.is_resolver_name("google.com"));
        assert!(!c.is_resolver_name("api.openai.com"));
        assert_eq!(c.resolver_for_name("dns.google").unwrap().id, "google");
        for (addr, id) in [
            ("8.8.8.8", "google"),
            ("8.8.4.4", "google"),
            ("2001:4860:4860::8888", "google"),
            ("1.1.1.1", "cloudflare"),
            ("1.0.0.1", "cloudflare"),
            ("2606:4700:4700::1111", "cloudflare"),
            ("9.9.9.9", "quad9"),
            ("149.112.112.112", "quad9"),
            ("::ffff:9.9.9.9", "quad9"),
            ("208.67.222.222", "opendns"),
            ("94.140.14.14", "adguard"),
        ] {
            let addr: IpAddr = addr.parse().unwrap();
            assert_eq!(
                c.resolver_for_addr(addr).map(|r| r.id.as_str()),
                Some(id),
                "{addr}"
            );
        }
        assert!(c.resolver_for_addr("8.8.8.9".parse().unwrap()).is_none());
    }
}
