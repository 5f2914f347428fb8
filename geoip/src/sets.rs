//! Jurisdiction sets: named groups of countries that a residency policy
//! allows, built in with their legal sources, plus custom sets from
//! configuration.

use std::{collections::BTreeMap, fmt};

use crate::country::{CountryCode, MAX_INDEX, UnknownCountry};

/// A set of countries as a bitmap over kernel country indexes: the exact
/// form the kernel programs test with one shift and one mask.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CountrySet(pub [u64; WORDS]);

/// 64-bit words in a [`CountrySet`]: room for indexes 0..256, the same
/// bitmap the kernel's policies hold.
pub const WORDS: usize = residency_common::COUNTRY_WORDS;
const _: () = assert!((MAX_INDEX as usize) < WORDS * 64);

impl CountrySet {
    /// The empty set.
    pub const EMPTY: CountrySet = CountrySet([0; WORDS]);

    /// Every country.
    #[must_use]
    pub fn all() -> Self {
        let mut s = Self::EMPTY;
        for i in 1..=MAX_INDEX {
            s.insert_index(i);
        }
        s
    }

    fn insert_index(&mut self, i: u16) {
        self.0[usize::from(i / 64)] |= 1 << (i % 64);
    }

    pub fn insert(&mut self, c: CountryCode) {
        self.insert_index(c.index());
    }

    #[must_use]
    pub fn contains(&self, c: CountryCode) -> bool {
        self.contains_index(c.index())
    }

    /// Membership by kernel index, as the kernel tests it.
    #[must_use]
    pub fn contains_index(&self, i: u16) -> bool {
        usize::from(i / 64) < WORDS && self.0[usize::from(i / 64)] & (1 << (i % 64)) != 0
    }

    #[must_use]
    pub fn union(&self, other: &Self) -> Self {
        let mut out = *self;
        for (a, b) in out.0.iter_mut().zip(other.0) {
            *a |= b;
        }
        out
    }

    #[must_use]
    pub fn intersection(&self, other: &Self) -> Self {
        let mut out = *self;
        for (a, b) in out.0.iter_mut().zip(other.0) {
            *a &= b;
        }
        out
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }

    /// The codes in the set, in code order.
    pub fn iter(&self) -> impl Iterator<Item = CountryCode> + '_ {
        (1..=MAX_INDEX).filter_map(|i| {
            if self.contains_index(i) {
                CountryCode::from_index(i)
            } else {
                None
            }
        })
    }
}

impl FromIterator<CountryCode> for CountrySet {
    fn from_iter<T: IntoIterator<Item = CountryCode>>(iter: T) -> Self {
        let mut s = Self::EMPTY;
        for c in iter {
            s.insert(c);
        }
        s
    }
}

impl fmt::Debug for CountrySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(|c| c.to_string()))
            .finish()
    }
}

/// A built-in jurisdiction set.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinSet {
    /// Name used in configuration (matched without regard to case).
    pub name: &'static str,
    pub description: &'static str,
    /// The legal source, for explanations and audits.
    pub source: &'static str,
    pub countries: &'static [&'static str],
    /// When membership alone is not a transfer basis, what else is needed.
    pub condition: Option<&'static str>,
}

/// EU member states (Treaty on European Union, Art. 52; 27 since 2020-02-01),
/// with Greece under its ISO code GR (the EU itself writes EL), plus the
/// territories that are part of the EU but have ISO codes of their own: the
/// outermost regions French Guiana, Guadeloupe, Martinique, Réunion, Mayotte
/// and Saint-Martin (TFEU Art. 349 and 355(1)), and Åland (part of Finland;
/// Protocol No 2 of the 1994 Act of Accession).
pub const EU: &[&str] = &[
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", // member states
    "GF", "GP", "MQ", "RE", "YT", "MF", // outermost regions
    "AX", // Åland
];

/// The EEA EFTA states (EEA Agreement, OJ L 1, 3.1.1994): the GDPR applies
/// there through the agreement (Decision of the EEA Joint Committee
/// No 154/2018).
pub const EEA_EFTA: &[&str] = &["IS", "LI", "NO"];

/// Countries with an adequacy decision under GDPR Art. 45, as of mid-2026:
/// Andorra (2010/625/EU), Argentina (2003/490/EC), Canada for commercial
/// organisations under PIPEDA (2002/2/EC), Faroe Islands (2010/146/EU),
/// Guernsey (2003/821/EC), Israel (2011/61/EU), Isle of Man (2004/411/EC),
/// Japan (2019/419), Jersey (2008/393/EC), New Zealand (2013/65/EU),
/// Republic of Korea (2022/254), Switzerland (2000/518/EC), Uruguay
/// (2012/484/EU), United Kingdom (2021/1772, renewed until 2031-12-27), and
/// Brazil (2026). The United States is not here: see [`US_DPF`].
pub const ADEQUACY: &[&str] = &[
    "AD", "AR", "CA", "FO", "GG", "IL", "IM", "JP", "JE", "NZ", "KR", "CH", "UY", "GB", "BR",
];

/// The United States: adequate only for recipients certified under the
/// EU-U.S. Data Privacy Framework (Commission Implementing Decision (EU)
/// 2023/1795). Membership is conditional on a per-vendor certification
/// record.
pub const US_DPF: &[&str] = &["US"];

/// The built-in sets.
pub const BUILTIN: &[BuiltinSet] = &[
    BuiltinSet {
        name: "EU",
        description: "EU member states and the EU territories with their own ISO codes",
        source: "TEU Art. 52; TFEU Art. 349, 355",
        countries: EU,
        condition: None,
    },
    BuiltinSet {
        name: "EEA",
        description: "EU plus Iceland, Liechtenstein and Norway",
        source: "EEA Agreement; EEA Joint Committee Decision 154/2018",
        countries: &[
            "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
            "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "GF",
            "GP", "MQ", "RE", "YT", "MF", "AX", "IS", "LI", "NO",
        ],
        condition: None,
    },
    BuiltinSet {
        name: "ADEQUACY",
        description: "countries with a GDPR Art. 45 adequacy decision (without the US)",
        source: "GDPR Art. 45 adequacy decisions",
        countries: ADEQUACY,
        condition: Some("Canada: commercial organisations subject to PIPEDA only"),
    },
    BuiltinSet {
        name: "US-DPF",
        description: "the United States, for recipients certified under the Data Privacy Framework",
        source: "Commission Implementing Decision (EU) 2023/1795",
        countries: US_DPF,
        condition: Some(
            "only for recipients certified under the EU-U.S. Data Privacy Framework; keep a per-vendor certification record",
        ),
    },
];

/// A set name or country code that configuration used but nothing defines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    #[error(
        "\"{0}\" is neither a country code nor a jurisdiction set (built-in sets: EU, EEA, ADEQUACY, US-DPF)"
    )]
    Unknown(String),
    #[error("set \"{0}\" is defined twice (or shadows a built-in set)")]
    Duplicate(String),
    #[error("set \"{name}\" is empty")]
    Empty { name: String },
    #[error(
        "set name \"{0}\" must be letters, digits, '-' or '_', and not two capitals (that would read as a country code)"
    )]
    BadName(String),
    #[error(transparent)]
    Country(#[from] UnknownCountry),
}

/// Resolves names (set names or country codes) into country sets: the
/// built-in sets plus custom ones defined in order.
#[derive(Debug, Clone)]
pub struct Sets {
    custom: BTreeMap<String, CountrySet>,
}

impl Default for Sets {
    fn default() -> Self {
        Self::new()
    }
}

impl Sets {
    /// Only the built-in sets.
    #[must_use]
    pub fn new() -> Self {
        Sets {
            custom: BTreeMap::new(),
        }
    }

    /// Defines a custom set from members (codes or names of sets defined
    /// before it, so that sets cannot be circular).
    ///
    /// # Errors
    /// A bad or duplicate name, an unknown member, or no members.
    pub fn define(&mut self, name: &str, members: &[impl AsRef<str>]) -> Result<(), SetError> {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            && !(name.len() == 2 && name.chars().all(|c| c.is_ascii_uppercase()));
        if !valid {
            return Err(SetError::BadName(name.to_owned()));
        }
        let key = name.to_ascii_uppercase();
        if self.custom.contains_key(&key) || builtin(&key).is_some() {
            return Err(SetError::Duplicate(name.to_owned()));
        }
        let set = self.resolve_all(members)?;
        if set.is_empty() {
            return Err(SetError::Empty {
                name: name.to_owned(),
            });
        }
        self.custom.insert(key, set);
        Ok(())
    }

    /// One name: a two-letter country code, or a set name (any case).
    ///
    /// # Errors
    /// [`SetError::Unknown`] naming it.
    pub fn resolve(&self, name: &str) -> Result<CountrySet, SetError> {
        if let Ok(code) = name.parse::<CountryCode>() {
            return Ok([code].into_iter().collect());
        }
        let key = name.to_ascii_uppercase();
        if let Some(b) = builtin(&key) {
            return b
                .countries
                .iter()
                .map(|c| c.parse::<CountryCode>().map_err(SetError::from))
                .collect();
        }
        self.custom
            .get(&key)
            .copied()
            .ok_or_else(|| SetError::Unknown(name.to_owned()))
    }

    /// The conditions attached to the built-in sets among `names`, with
    /// the countries each covers (e.g. US-DPF: the US only for certified
    /// recipients).
    #[must_use]
    pub fn conditions(names: &[impl AsRef<str>]) -> Vec<(&'static str, CountrySet, &'static str)> {
        names
            .iter()
            .filter_map(|n| builtin(n.as_ref()))
            .filter_map(|b| {
                let set = b.countries.iter().filter_map(|c| c.parse().ok()).collect();
                b.condition.map(|c| (b.name, set, c))
            })
            .collect()
    }

    /// The union of several names.
    ///
    /// # Errors
    /// The first unknown name.
    pub fn resolve_all(&self, names: &[impl AsRef<str>]) -> Result<CountrySet, SetError> {
        names.iter().try_fold(CountrySet::EMPTY, |acc, n| {
            Ok(acc.union(&self.resolve(n.as_ref())?))
        })
    }
}

/// The built-in set of this (upper-case) name.
#[must_use]
pub fn builtin(name: &str) -> Option<&'static BuiltinSet> {
    BUILTIN.iter().find(|b| b.name.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(s: &str) -> CountryCode {
        s.parse().unwrap()
    }

    #[test]
    fn builtin_sets_hold_valid_codes() {
        for b in BUILTIN {
            for c in b.countries {
                assert!(c.parse::<CountryCode>().is_ok(), "{}: {c}", b.name);
            }
        }
        let sets = Sets::new();
        assert_eq!(sets.resolve("EU").unwrap().len(), 27 + 6 + 1);
        let eea = sets.resolve("eea").unwrap();
        assert_eq!(eea.len(), 37);
        assert_eq!(
            eea,
            sets.resolve("EU")
                .unwrap()
                .union(&sets.resolve_all(EEA_EFTA).unwrap())
        );
        assert!(eea.contains(cc("NO")) && eea.contains(cc("RE")) && !eea.contains(cc("CH")));
        let adequacy = sets.resolve("Adequacy").unwrap();
        assert!(
            adequacy.contains(cc("GB"))
                && adequacy.contains(cc("BR"))
                && !adequacy.contains(cc("US"))
        );
        assert_eq!(
            sets.resolve("US-DPF").unwrap().iter().collect::<Vec<_>>(),
            [cc("US")]
        );
        assert!(builtin("us-dpf").unwrap().condition.is_some());
    }

    #[test]
    fn bitmap_operations() {
        let a: CountrySet = [cc("DE"), cc("FR")].into_iter().collect();
        let b: CountrySet = [cc("FR"), cc("US")].into_iter().collect();
        assert_eq!(a.intersection(&b).iter().collect::<Vec<_>>(), [cc("FR")]);
        assert_eq!(a.union(&b).len(), 3);
        assert!(!a.contains_index(0), "index 0 is never a country");
        assert!(!a.contains_index(9999));
        assert_eq!(CountrySet::all().len(), crate::country::CODES.len());
        assert_eq!(format!("{a:?}"), r#"{"DE", "FR"}"#);
    }

    #[test]
    fn custom_sets_and_errors() {
        let mut sets = Sets::new();
        sets.define("dach", &["DE", "AT", "CH"]).unwrap();
        sets.define("dach-plus-eu", &["dach", "EU"]).unwrap();
        assert!(sets.resolve("DACH").unwrap().contains(cc("CH")));
        assert!(sets.resolve("dach-plus-eu").unwrap().contains(cc("SE")));
        assert_eq!(
            sets.define("eu", &["DE"]),
            Err(SetError::Duplicate("eu".into()))
        );
        assert_eq!(
            sets.define("dach", &["DE"]),
            Err(SetError::Duplicate("dach".into()))
        );
        assert_eq!(
            sets.define("DE", &["DE"]),
            Err(SetError::BadName("DE".into()))
        );
        assert_eq!(
            sets.define("x y", &["DE"]),
            Err(SetError::BadName("x y".into()))
        );
        assert_eq!(
            sets.define("none", &[] as &[&str]),
            Err(SetError::Empty {
                name: "none".into()
            })
        );
        assert_eq!(sets.resolve("UK"), Err(SetError::Unknown("UK".into())));
        // A set cannot name one defined after it: no cycles.
        assert_eq!(sets.define("a", &["b"]), Err(SetError::Unknown("b".into())));
    }
}
