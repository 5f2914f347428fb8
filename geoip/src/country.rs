//! ISO 3166-1 alpha-2 country codes, and the dense indexes the kernel uses.
//!
//! The kernel keeps, per policy, a bitmap of allowed countries. Each code
//! therefore has a small index: its position in [`CODES`] plus one (0 means
//! "no country"). The list is sorted and only ever extended at the end of a
//! release's review, so an index is stable within a build, which is all the
//! kernel needs: the daemon compiles its maps and reads its events with the
//! same table.

use std::{fmt, str::FromStr};

/// Every officially assigned ISO 3166-1 alpha-2 code (249, as published by
/// the ISO 3166 Maintenance Agency), plus `XK` (Kosovo: user-assigned, but
/// used by the European Commission and by GeoIP data providers).
pub const CODES: [&str; 250] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "XK", "YE", "YT", "ZA", "ZM", "ZW",
];

/// The largest country index (indexes run from 1 to this).
#[expect(clippy::cast_possible_truncation, reason = "250 codes")]
pub const MAX_INDEX: u16 = CODES.len() as u16;

/// A validated ISO 3166-1 alpha-2 code.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CountryCode([u8; 2]);

/// A string that is not a known country code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not an ISO 3166-1 alpha-2 country code (e.g. \"DE\", \"US\")")]
pub struct UnknownCountry(pub String);

impl CountryCode {
    /// The kernel index of this code: 1..=[`MAX_INDEX`].
    #[must_use]
    pub fn index(self) -> u16 {
        // Invariant: a CountryCode is always in CODES.
        let pos = CODES.binary_search(&self.as_str()).unwrap_or(0);
        u16::try_from(pos + 1).unwrap_or(0)
    }

    /// The code at a kernel index, if any (0 and out-of-range give `None`).
    #[must_use]
    pub fn from_index(index: u16) -> Option<Self> {
        let code = CODES.get(usize::from(index).checked_sub(1)?)?;
        let b = code.as_bytes();
        Some(CountryCode([b[0], b[1]]))
    }

    #[must_use]
    pub fn as_str(&self) -> &str {
        // Always two ASCII capitals, from CODES.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl FromStr for CountryCode {
    type Err = UnknownCountry;

    /// Accepts exactly the codes in [`CODES`], in capitals: data and
    /// configuration use them so, and accepting "de" would hide typos in
    /// other places that compare strings.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match CODES.binary_search(&s) {
            Ok(_) => {
                let b = s.as_bytes();
                Ok(CountryCode([b[0], b[1]]))
            }
            Err(_) => Err(UnknownCountry(s.to_owned())),
        }
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountryCode({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sorted_unique_and_well_formed() {
        assert!(CODES.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
        assert!(
            CODES
                .iter()
                .all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
        );
        // 249 officially assigned codes, plus XK.
        assert_eq!(CODES.len(), 250);
    }

    #[test]
    fn index_round_trips() {
        for (i, code) in CODES.iter().enumerate() {
            let cc: CountryCode = code.parse().unwrap();
            assert_eq!(usize::from(cc.index()), i + 1);
            assert_eq!(CountryCode::from_index(cc.index()), Some(cc));
        }
        assert_eq!(CountryCode::from_index(0), None);
        assert_eq!(CountryCode::from_index(MAX_INDEX + 1), None);
    }

    #[test]
    fn refuses_unknown_codes() {
        for bad in ["", "D", "de", "DEU", "EU", "ZZ", "UK", "EL"] {
            assert!(bad.parse::<CountryCode>().is_err(), "{bad}");
        }
    }
}
