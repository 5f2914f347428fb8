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
/// Brazil (2026). The United States is not here: see [`US_DPF`]. Some of
/// these decisions cover only some recipients: see [`CONDITIONS`].
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
    },
    BuiltinSet {
        name: "ADEQUACY",
        description: "countries with a GDPR Art. 45 adequacy decision (without the US)",
        source: "GDPR Art. 45 adequacy decisions",
        countries: ADEQUACY,
    },
    BuiltinSet {
        name: "US-DPF",
        description: "the United States, for recipients certified under the Data Privacy Framework",
        source: "Commission Implementing Decision (EU) 2023/1795",
        countries: US_DPF,
    },
];

/// A limit on one country's transfer basis: the decision that makes the
/// country a destination covers only some recipients or some processing.
///
/// A condition belongs to the country and to the basis, not to the words
/// a configuration uses: Canada's adequacy covers only PIPEDA whether a
/// policy allows `ADEQUACY`, `CA` or a custom set holding CA. The kernel
/// cannot tell recipients apart, so a condition is never enforced; it is
/// cited wherever the basis is (explanations, flow records, the `started`
/// record), for the operator to keep the evidence it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Condition {
    /// ISO 3166-1 alpha-2.
    pub country: &'static str,
    /// The built-in set whose basis it limits (`ADEQUACY`, `US-DPF`).
    pub set: &'static str,
    /// What the basis covers, or leaves out.
    pub text: &'static str,
    /// The decision that says so.
    pub decision: &'static str,
}

impl fmt::Display for Condition {
    /// `CA: commercial organisations subject to PIPEDA only (Decision 2002/2/EC)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.country, self.text, self.decision)
    }
}

/// The countries whose basis holds only on a condition, from the operative
/// article of each decision. The other countries of [`ADEQUACY`] are
/// unconditional here: Israel's decision (2011/61/EU, Art. 1) covers
/// automated transfers, which every transfer this daemon sees is; the
/// United Kingdom's first decision (2021/1772, Art. 1(2)) left out data
/// transferred for immigration control, a purpose the kernel cannot see and
/// the renewed decision may have changed, so it is not modelled.
pub const CONDITIONS: &[Condition] = &[
    // Art. 1: recipients subject to the Personal Information Protection
    // and Electronic Documents Act, which governs organisations in the
    // course of commercial activities.
    Condition {
        country: "CA",
        set: "ADEQUACY",
        text: "commercial organisations subject to PIPEDA only",
        decision: "Decision 2002/2/EC",
    },
    // Art. 1: personal information handling business operators subject to
    // the APPI with the Supplementary Rules (Annex I); recital 10 leaves
    // the public sector out.
    Condition {
        country: "JP",
        set: "ADEQUACY",
        text: "business operators subject to the APPI and its Supplementary Rules only, not the public sector",
        decision: "Decision (EU) 2019/419",
    },
    // Entities subject to the Personal Information Protection Act; the
    // decision leaves out personal credit information processed by
    // entities the Financial Services Commission supervises, religious
    // organisations' missionary activities and political parties'
    // nomination of candidates.
    Condition {
        country: "KR",
        set: "ADEQUACY",
        text: "not personal credit information processed by recipients the Financial Services Commission supervises, nor religious organisations' missionary work or political parties' nominations",
        decision: "Decision (EU) 2022/254",
    },
    // Art. 1: organisations in the Data Privacy Framework List.
    Condition {
        country: "US",
        set: "US-DPF",
        text: "recipients certified under the EU-U.S. Data Privacy Framework only; keep a per-vendor certification record",
        decision: "Decision (EU) 2023/1795",
    },
];

/// The condition on `country`'s basis through the built-in set `set` (any
/// case), if that basis holds only on one: CA through `ADEQUACY` has
/// PIPEDA's, GB through `ADEQUACY` none, the US through `US-DPF` the
/// Data Privacy Framework's.
#[must_use]
pub fn condition(country: CountryCode, set: &str) -> Option<&'static Condition> {
    CONDITIONS
        .iter()
        .find(|c| c.country == country.as_str() && c.set.eq_ignore_ascii_case(set))
}

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
    }

    #[test]
    fn conditions_belong_to_their_country() {
        assert_eq!(condition(cc("GB"), "ADEQUACY"), None, "GB is unconditional");
        assert_eq!(condition(cc("CH"), "adequacy"), None);
        let ca = condition(cc("CA"), "adequacy").unwrap();
        assert!(ca.text.contains("PIPEDA") && ca.decision.contains("2002/2/EC"));
        assert_eq!(
            ca.to_string(),
            "CA: commercial organisations subject to PIPEDA only (Decision 2002/2/EC)"
        );
        let us = condition(cc("US"), "US-DPF").unwrap();
        assert!(us.text.contains("Data Privacy Framework") && us.decision.contains("2023/1795"));
        assert_eq!(
            condition(cc("US"), "ADEQUACY"),
            None,
            "the US has no adequacy of its own"
        );
        assert_eq!(condition(cc("CA"), "US-DPF"), None);
        let sets = Sets::new();
        for c in CONDITIONS {
            let set = sets.resolve(c.set).unwrap();
            assert!(set.contains(cc(c.country)), "{c}: not in {}", c.set);
        }
        let conditional: Vec<&str> = sets
            .resolve("ADEQUACY")
            .unwrap()
            .iter()
            .filter_map(|c| condition(c, "ADEQUACY"))
            .map(|c| c.country)
            .collect();
        assert_eq!(conditional, ["CA", "JP", "KR"]);
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
