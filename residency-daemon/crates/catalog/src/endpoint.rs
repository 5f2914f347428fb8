//! Catalog entries: the raw form written in the built-in file and in
//! configuration (`[[endpoint]]`), and the validated [`Endpoint`].

use std::fmt;

use geoip::{CountrySet, Sets};
use serde::Deserialize;

use crate::{
    CatalogError,
    jurisdiction::{Judgement, Jurisdiction, JurisdictionSpec, UnknownReason, difference},
    pattern::Pattern,
};

/// Where an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The catalog shipped with residency.
    BuiltIn,
    /// An `[[endpoint]]` in the configuration.
    Config,
    /// A `[catalog.deployments]` setting that refines an entry.
    Deployment,
}

impl Origin {
    /// A lower-case word for messages and records.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::BuiltIn => "built-in",
            Origin::Config => "config",
            Origin::Deployment => "deployment",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a provider's statement covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Where requests are processed.
    Processing,
    /// Where data is stored at rest.
    Storage,
    /// Both.
    Both,
}

impl Scope {
    /// The word used in the catalog file.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Processing => "processing",
            Scope::Storage => "storage",
            Scope::Both => "both",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How well a fact is sourced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// Not confirmed by the provider's documentation.
    Low,
    /// The provider documents the rule, but the host name or country came
    /// from a secondary or older source.
    Medium,
    /// The provider's documentation states it for this host name (or the
    /// operator states it in configuration).
    High,
}

impl Confidence {
    /// The word used in the catalog file.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::Low => "low",
            Confidence::Medium => "medium",
            Confidence::High => "high",
        }
    }
}

impl fmt::Display for Confidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An entry as written: an `[[endpoint]]` of the configuration (or of the
/// built-in file, which has the same form, so that an entry can be copied
/// into the configuration to override it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoint {
    /// A short stable name for logs and records (`name` is accepted too).
    #[serde(alias = "name")]
    pub id: String,
    /// An exact host name, or `*.` and a suffix.
    pub pattern: String,
    /// Where the endpoint processes data: see [`Jurisdiction::parse`].
    pub jurisdiction: JurisdictionSpec,
    /// Who runs it. Required in the built-in catalog.
    #[serde(default)]
    pub provider: String,
    /// Which of the provider's services it is. Required in the built-in
    /// catalog.
    #[serde(default)]
    pub service: String,
    /// Where the fact comes from: a URL, a contract clause, an account
    /// setting; several separated by " ; ". Always required.
    pub source: String,
    /// Whether the name alone fixes where data is processed. Default true.
    #[serde(default = "default_true")]
    pub determines_region: bool,
    /// What the statement covers. Required in the built-in catalog;
    /// default `both` in configuration.
    #[serde(default)]
    pub scope: Option<Scope>,
    /// How well the fact is sourced. Required in the built-in catalog;
    /// default `high` in configuration (the operator vouches for it).
    #[serde(default)]
    pub confidence: Option<Confidence>,
    /// Caveats worth showing next to a verdict.
    #[serde(default)]
    pub notes: Option<String>,
}

fn default_true() -> bool {
    true
}

/// A validated catalog entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Short stable name. Deployment entries are named
    /// `<refined id>@<pattern>`.
    pub id: String,
    /// The names it covers.
    pub pattern: Pattern,
    /// Who runs it; empty when configuration did not say.
    pub provider: String,
    /// Which service; empty when configuration did not say.
    pub service: String,
    /// Where it processes data. When [`Endpoint::determines_region`] is
    /// false this is only what the name suggests, shown for context;
    /// judgements do not rely on it.
    pub jurisdiction: Jurisdiction,
    /// Whether the name alone fixes where data is processed.
    pub determines_region: bool,
    /// What the statement covers.
    pub scope: Scope,
    /// How well the fact is sourced.
    pub confidence: Confidence,
    /// Where the fact comes from (never empty).
    pub source: String,
    /// Caveats; empty when there are none.
    pub notes: String,
    /// Where the entry comes from.
    pub origin: Origin,
    /// For a deployment entry, the id of the entry it refines.
    pub refines: Option<String>,
}

impl Endpoint {
    /// Whether a flow to this endpoint keeps data within `allowed`.
    /// Names that do not determine the region, and unknown
    /// jurisdictions, are [`Judgement::Unknown`]; a GLOBAL endpoint is a
    /// violation unless every country is allowed.
    #[must_use]
    pub fn judge(&self, allowed: &CountrySet) -> Judgement {
        if !self.determines_region {
            return Judgement::Unknown(UnknownReason::NameDoesNotDetermineRegion);
        }
        let outside = match &self.jurisdiction {
            Jurisdiction::Unknown => {
                return Judgement::Unknown(UnknownReason::JurisdictionUnknown);
            }
            Jurisdiction::Global => difference(&CountrySet::all(), allowed),
            Jurisdiction::Countries { countries, .. } => difference(countries, allowed),
        };
        if outside.is_empty() {
            Judgement::Allowed
        } else {
            Judgement::Violation { outside }
        }
    }

    /// Validates a raw entry, the `index`-th of its origin.
    pub(crate) fn from_raw(
        raw: &RawEndpoint,
        index: usize,
        origin: Origin,
        sets: &Sets,
    ) -> Result<Endpoint, CatalogError> {
        let label = if raw.id.is_empty() {
            raw.pattern.clone()
        } else {
            raw.id.clone()
        };
        let fail = |field: &'static str, message: String| CatalogError::Endpoint {
            origin,
            index,
            label: label.clone(),
            field,
            message,
        };
        check_id(&raw.id).map_err(|m| fail("id", m))?;
        let pattern = Pattern::parse(&raw.pattern).map_err(|e| fail("pattern", e.to_string()))?;
        let jurisdiction = raw
            .jurisdiction
            .resolve(sets)
            .map_err(|e| fail("jurisdiction", e.to_string()))?;
        if raw.source.trim().is_empty() {
            return Err(fail(
                "source",
                "say where this fact comes from (a URL, a contract, an account setting)".into(),
            ));
        }
        let builtin = origin == Origin::BuiltIn;
        if builtin && raw.provider.trim().is_empty() {
            return Err(fail(
                "provider",
                "is required in the built-in catalog".into(),
            ));
        }
        if builtin && raw.service.trim().is_empty() {
            return Err(fail(
                "service",
                "is required in the built-in catalog".into(),
            ));
        }
        let scope = match (raw.scope, builtin) {
            (Some(s), _) => s,
            (None, false) => Scope::Both,
            (None, true) => {
                return Err(fail("scope", "is required in the built-in catalog".into()));
            }
        };
        let confidence = match (raw.confidence, builtin) {
            (Some(c), _) => c,
            (None, false) => Confidence::High,
            (None, true) => {
                return Err(fail(
                    "confidence",
                    "is required in the built-in catalog".into(),
                ));
            }
        };
        Ok(Endpoint {
            id: raw.id.clone(),
            pattern,
            provider: raw.provider.clone(),
            service: raw.service.clone(),
            jurisdiction,
            determines_region: raw.determines_region,
            scope,
            confidence,
            source: raw.source.clone(),
            notes: raw.notes.clone().unwrap_or_default(),
            origin,
            refines: None,
        })
    }
}

/// Ids are short names for logs and records: lower-case letters, digits,
/// `-`, `_` and `.`.
pub(crate) fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("is empty; give the entry a short name such as \"acme-llm-eu\"".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "\"{id}\" has the character {c:?}; use lower-case letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> RawEndpoint {
        toml::from_str(toml_text).unwrap()
    }

    fn cs(codes: &[&str]) -> CountrySet {
        codes.iter().map(|c| c.parse().unwrap()).collect()
    }

    const GOOD: &str = r#"
        id = "acme-llm"
        pattern = "llm.acme.example"
        jurisdiction = "EU"
        source = "DPA annex 2"
    "#;

    #[test]
    fn config_defaults() {
        let r = raw(GOOD);
        assert!(r.determines_region);
        let e = Endpoint::from_raw(&r, 0, Origin::Config, &Sets::new()).unwrap();
        assert_eq!(e.scope, Scope::Both);
        assert_eq!(e.confidence, Confidence::High);
        assert_eq!(e.provider, "");
        assert_eq!(e.origin, Origin::Config);
        let named = raw(&GOOD.replace("id =", "name ="));
        assert_eq!(named.id, "acme-llm");
    }

    #[test]
    fn unknown_and_missing_fields_are_refused() {
        let err = toml::from_str::<RawEndpoint>(&format!("{GOOD}\nregion = \"eu\"")).unwrap_err();
        assert!(err.to_string().contains("region"), "{err}");
        let err = toml::from_str::<RawEndpoint>(&GOOD.replace("source = \"DPA annex 2\"", ""))
            .unwrap_err();
        assert!(err.to_string().contains("source"), "{err}");
    }

    #[test]
    fn bad_entries_name_the_entry_field_and_value() {
        let sets = Sets::new();
        for (edit, field, value) in [
            (("\"EU\"", "\"EFTA\""), "jurisdiction", "\"EFTA\""),
            (
                ("llm.acme.example", "llm.*.example"),
                "pattern",
                "\"llm.*.example\"",
            ),
            (("\"DPA annex 2\"", "\"  \""), "source", "say where"),
            (("acme-llm", "Acme LLM"), "id", "\"Acme LLM\""),
        ] {
            let r = raw(&GOOD.replace(edit.0, edit.1));
            let err = Endpoint::from_raw(&r, 3, Origin::Config, &sets).unwrap_err();
            let msg = err.to_string();
            assert!(msg.starts_with("config endpoint[3] "), "{msg}");
            assert!(msg.contains(&format!(": {field}: ")), "{msg}");
            assert!(msg.contains(value), "{msg}");
        }
        // The built-in catalog must say everything.
        let err = Endpoint::from_raw(&raw(GOOD), 0, Origin::BuiltIn, &sets).unwrap_err();
        assert!(err.to_string().contains("provider: is required"), "{err}");
    }

    #[test]
    fn judgements() {
        let sets = Sets::new();
        let eea = sets.resolve("EEA").unwrap();
        let e = |j: &str, determines: bool| {
            let mut r = raw(&GOOD.replace("\"EU\"", j));
            r.determines_region = determines;
            Endpoint::from_raw(&r, 0, Origin::Config, &sets).unwrap()
        };
        assert_eq!(e("\"DE\"", true).judge(&eea), Judgement::Allowed);
        assert_eq!(e("\"EU\"", true).judge(&eea), Judgement::Allowed);
        assert_eq!(
            e("[\"DE\", \"US\"]", true).judge(&eea),
            Judgement::Violation {
                outside: cs(&["US"])
            }
        );
        assert_eq!(
            e("[\"EEA\", \"CH\"]", true).judge(&eea),
            Judgement::Violation {
                outside: cs(&["CH"])
            }
        );
        assert_eq!(
            e("\"DE\"", false).judge(&eea),
            Judgement::Unknown(UnknownReason::NameDoesNotDetermineRegion)
        );
        assert_eq!(
            e("\"UNKNOWN\"", true).judge(&eea),
            Judgement::Unknown(UnknownReason::JurisdictionUnknown)
        );
        let Judgement::Violation { outside } = e("\"GLOBAL\"", true).judge(&eea) else {
            panic!("GLOBAL is a violation of the EEA");
        };
        assert!(
            outside.contains("US".parse().unwrap()) && !outside.contains("DE".parse().unwrap())
        );
        assert_eq!(
            e("\"GLOBAL\"", true).judge(&CountrySet::all()),
            Judgement::Allowed
        );
    }
}
