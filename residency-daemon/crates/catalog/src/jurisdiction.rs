//! Where an endpoint processes data, and whether that is allowed: the
//! catalog's answer, in the same country sets that residency policies use.

use std::fmt;

use geoip::{CountrySet, Sets};
use serde::{Deserialize, Deserializer, de};

/// Where an endpoint may process data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Jurisdiction {
    /// Within these countries.
    Countries {
        /// The union of the names, resolved.
        countries: CountrySet,
        /// The country codes and set names as written (for explanations:
        /// "EEA, CH" says more than 38 codes).
        names: Vec<String>,
    },
    /// The provider may process anywhere.
    Global,
    /// Nobody has said where.
    Unknown,
}

/// A jurisdiction that cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JurisdictionError {
    /// No names at all.
    #[error(
        "the jurisdiction is empty; write country codes or set names, \"GLOBAL\" or \"UNKNOWN\""
    )]
    Empty,
    /// GLOBAL or UNKNOWN next to other names.
    #[error("\"{0}\" must stand alone in a jurisdiction, not next to other names")]
    NotAlone(String),
    /// A name that is neither a country code nor a known set.
    #[error(transparent)]
    Set(#[from] geoip::sets::SetError),
}

impl Jurisdiction {
    /// Resolves names: ISO country codes and set names that `sets` knows
    /// (the built-in EU, EEA, ADEQUACY, US-DPF and the configuration's
    /// own), or `GLOBAL` or `UNKNOWN` alone (any case).
    ///
    /// # Errors
    /// [`JurisdictionError`] naming the offending name.
    pub fn parse(names: &[impl AsRef<str>], sets: &Sets) -> Result<Self, JurisdictionError> {
        if names.is_empty() {
            return Err(JurisdictionError::Empty);
        }
        for n in names {
            let n = n.as_ref();
            let special = n.eq_ignore_ascii_case("GLOBAL") || n.eq_ignore_ascii_case("UNKNOWN");
            if special && names.len() > 1 {
                return Err(JurisdictionError::NotAlone(n.to_owned()));
            }
            if special {
                return Ok(if n.eq_ignore_ascii_case("GLOBAL") {
                    Jurisdiction::Global
                } else {
                    Jurisdiction::Unknown
                });
            }
        }
        Ok(Jurisdiction::Countries {
            countries: sets.resolve_all(names)?,
            names: names.iter().map(|n| n.as_ref().to_owned()).collect(),
        })
    }

    /// The countries, when known and not global.
    #[must_use]
    pub fn countries(&self) -> Option<&CountrySet> {
        match self {
            Jurisdiction::Countries { countries, .. } => Some(countries),
            Jurisdiction::Global | Jurisdiction::Unknown => None,
        }
    }

    /// Whether this is [`Jurisdiction::Unknown`].
    #[must_use]
    pub fn is_unknown(&self) -> bool {
        matches!(self, Jurisdiction::Unknown)
    }
}

impl fmt::Display for Jurisdiction {
    /// The names as written, joined with ", "; or GLOBAL, or UNKNOWN.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Jurisdiction::Countries { names, .. } => f.write_str(&names.join(", ")),
            Jurisdiction::Global => f.write_str("GLOBAL"),
            Jurisdiction::Unknown => f.write_str("UNKNOWN"),
        }
    }
}

/// A jurisdiction as written in configuration: one name (`"EU"`) or a
/// list (`["EEA", "CH"]`), resolved later with the configuration's sets.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JurisdictionSpec(pub Vec<String>);

impl JurisdictionSpec {
    /// Resolves the names; see [`Jurisdiction::parse`].
    ///
    /// # Errors
    /// As [`Jurisdiction::parse`].
    pub fn resolve(&self, sets: &Sets) -> Result<Jurisdiction, JurisdictionError> {
        Jurisdiction::parse(&self.0, sets)
    }
}

impl From<&str> for JurisdictionSpec {
    fn from(name: &str) -> Self {
        JurisdictionSpec(vec![name.to_owned()])
    }
}

impl<S: AsRef<str>> From<&[S]> for JurisdictionSpec {
    fn from(names: &[S]) -> Self {
        JurisdictionSpec(names.iter().map(|n| n.as_ref().to_owned()).collect())
    }
}

impl<'de> Deserialize<'de> for JurisdictionSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = JurisdictionSpec;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a country code or set name, or a list of them (e.g. \"EU\" or [\"EEA\", \"CH\"])")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JurisdictionSpec::from(v))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut names = Vec::new();
                while let Some(n) = seq.next_element::<String>()? {
                    names.push(n);
                }
                Ok(JurisdictionSpec(names))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Whether a flow to an endpoint keeps data within a policy's allowed
/// countries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judgement {
    /// Every country the endpoint may process in is allowed.
    Allowed,
    /// The endpoint may process outside the allowed countries.
    Violation {
        /// The countries it may process in that are not allowed (for a
        /// GLOBAL endpoint, every country that is not allowed).
        outside: CountrySet,
    },
    /// The catalog cannot say; GeoIP must not decide in its place.
    Unknown(UnknownReason),
}

/// Why a judgement is [`Judgement::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownReason {
    /// The name does not fix the region (an account, resource or request
    /// setting does), and no deployment setting says where.
    NameDoesNotDetermineRegion,
    /// The catalog does not know where this endpoint processes data.
    JurisdictionUnknown,
}

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnknownReason::NameDoesNotDetermineRegion => {
                "the name does not determine the region; set [catalog.deployments]"
            }
            UnknownReason::JurisdictionUnknown => {
                "the catalog does not know where this endpoint processes data; set [catalog.deployments] or add an [[endpoint]]"
            }
        })
    }
}

/// `a` without the countries of `b`.
pub(crate) fn difference(a: &CountrySet, b: &CountrySet) -> CountrySet {
    a.iter().filter(|c| !b.contains(*c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_codes_sets_and_specials() {
        let sets = Sets::new();
        let j = Jurisdiction::parse(&["EEA", "CH"], &sets).unwrap();
        let c = j.countries().unwrap();
        assert!(c.contains("NO".parse().unwrap()) && c.contains("CH".parse().unwrap()));
        assert!(!c.contains("US".parse().unwrap()));
        assert_eq!(j.to_string(), "EEA, CH");
        assert_eq!(
            Jurisdiction::parse(&["global"], &sets).unwrap(),
            Jurisdiction::Global
        );
        assert_eq!(
            Jurisdiction::parse(&["UNKNOWN"], &sets).unwrap(),
            Jurisdiction::Unknown
        );

        let mut custom = Sets::new();
        custom.define("dach", &["DE", "AT", "CH"]).unwrap();
        let j = Jurisdiction::parse(&["dach"], &custom).unwrap();
        assert_eq!(j.countries().unwrap().len(), 3);
    }

    #[test]
    fn refuses_bad_jurisdictions_naming_them() {
        let sets = Sets::new();
        let empty: [&str; 0] = [];
        assert_eq!(
            Jurisdiction::parse(&empty, &sets),
            Err(JurisdictionError::Empty)
        );
        let err = Jurisdiction::parse(&["GLOBAL", "US"], &sets).unwrap_err();
        assert!(
            err.to_string().contains("\"GLOBAL\" must stand alone"),
            "{err}"
        );
        let err = Jurisdiction::parse(&["EU", "EFTA"], &sets).unwrap_err();
        assert!(err.to_string().contains("\"EFTA\""), "{err}");
        let err = Jurisdiction::parse(&["de"], &sets).unwrap_err();
        assert!(err.to_string().contains("\"de\""), "{err}");
    }

    #[test]
    fn spec_reads_one_name_or_a_list() {
        #[derive(Deserialize)]
        struct T {
            a: JurisdictionSpec,
            b: JurisdictionSpec,
        }
        let t: T = toml::from_str("a = \"EU\"\nb = [\"EEA\", \"CH\"]").unwrap();
        assert_eq!(t.a, JurisdictionSpec::from("EU"));
        assert_eq!(t.b, JurisdictionSpec::from(&["EEA", "CH"][..]));
        let err = toml::from_str::<T>("a = 3\nb = \"EU\"").err().unwrap();
        assert!(
            err.to_string().contains("a country code or set name"),
            "{err}"
        );
    }
}
