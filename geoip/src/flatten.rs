//! Flattening a database into sorted, disjoint prefix -> country tables for
//! the kernel, merging neighbours that share a country.
//!
//! A MaxMind DB stores a binary tree whose leaves often split one country's
//! space into many networks (because other fields, such as the city or the
//! registered country, differ). The kernel only needs the country, so
//! adjacent networks with the same country are merged into ranges, and each
//! range is cut back into the fewest CIDR prefixes.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use maxminddb::WithinOptions;

use crate::{
    country::CountryCode,
    db::{Database, GeoIpError, canonical, effective_country_of},
};

/// Prefix -> country tables, each sorted by address and disjoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    pub v4: Vec<(Ipv4Net, CountryCode)>,
    pub v6: Vec<(Ipv6Net, CountryCode)>,
    pub stats: FlattenStats,
}

/// What flattening saw and produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlattenStats {
    /// Networks in the database that carry a country, by family.
    pub networks_v4: usize,
    pub networks_v6: usize,
    /// Prefixes after merging, by family.
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    /// Distinct records that give no country (none, or only codes that are
    /// no country).
    pub without_country: usize,
    /// Codes in the data that are no ISO country ("EU", "AP", "ZZ", ...),
    /// with how many networks carry each; those networks count as unknown.
    pub unknown_codes: BTreeMap<String, usize>,
}

/// Flattens `db` into merged prefix tables.
///
/// # Errors
/// If the database's tree or records cannot be read (a verified database
/// does not fail here).
pub fn flatten(db: &Database) -> Result<Tables, GeoIpError> {
    let invalid = |e: maxminddb::MaxMindDbError| GeoIpError::Invalid {
        path: db.path().to_path_buf(),
        reason: e.to_string(),
    };
    let mut stats = FlattenStats::default();
    let mut v4: Vec<(u32, u32, CountryCode)> = Vec::new();
    let mut v6: Vec<(u128, u128, CountryCode)> = Vec::new();
    // Many networks share one record: decode each record once.
    let mut by_offset: HashMap<usize, Option<CountryCode>> = HashMap::new();

    for result in db
        .reader()
        .networks(WithinOptions::default())
        .map_err(invalid)?
    {
        let result = result.map_err(invalid)?;
        let Some(offset) = result.offset() else {
            continue;
        };
        let country = if let Some(c) = by_offset.get(&offset) {
            *c
        } else {
            let (country, unknown) = effective_country_of(&result).map_err(invalid)?;
            if let Some(code) = unknown {
                *stats.unknown_codes.entry(code).or_default() += 1;
            }
            if country.is_none() {
                stats.without_country += 1;
            }
            by_offset.insert(offset, country);
            country
        };
        let Some(country) = country else { continue };
        let net = result.network().map_err(invalid)?;
        match (canonical(net.network()), net.prefix()) {
            (IpAddr::V4(a), p) if net.is_ipv4() => {
                stats.networks_v4 += 1;
                let start = u32::from(a);
                let end = start | u32::MAX.checked_shr(u32::from(p)).unwrap_or(0);
                v4.push((start, end, country));
            }
            (IpAddr::V6(a), p) => {
                stats.networks_v6 += 1;
                let start = u128::from(a);
                let end = start | u128::MAX.checked_shr(u32::from(p)).unwrap_or(0);
                v6.push((start, end, country));
            }
            // An IPv4-mapped network in an IPv6 tree, yielded as IPv6 by
            // the reader: the kernel judges these as IPv4, so skip the alias.
            (IpAddr::V4(_), _) => {}
        }
    }

    let v4: Vec<(Ipv4Net, CountryCode)> = merge(v4)
        .into_iter()
        .flat_map(|(s, e, c)| range_to_cidrs_v4(s, e).into_iter().map(move |n| (n, c)))
        .collect();
    let v6: Vec<(Ipv6Net, CountryCode)> = merge(v6)
        .into_iter()
        .flat_map(|(s, e, c)| range_to_cidrs_v6(s, e).into_iter().map(move |n| (n, c)))
        .collect();
    stats.prefixes_v4 = v4.len();
    stats.prefixes_v6 = v6.len();
    Ok(Tables { v4, v6, stats })
}

/// Sorts ranges and merges those that touch and share a country.
fn merge<T>(mut ranges: Vec<(T, T, CountryCode)>) -> Vec<(T, T, CountryCode)>
where
    T: Copy + Ord + num::Step,
{
    ranges.sort_unstable_by_key(|r| r.0);
    let mut out: Vec<(T, T, CountryCode)> = Vec::with_capacity(ranges.len());
    for (s, e, c) in ranges {
        if let Some(last) = out.last_mut()
            && last.2 == c
            && T::next(last.1) == Some(s)
        {
            last.1 = e;
            continue;
        }
        out.push((s, e, c));
    }
    out
}

mod num {
    /// The next integer, if there is one.
    pub trait Step: Sized {
        fn next(self) -> Option<Self>;
    }
    impl Step for u32 {
        fn next(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
    impl Step for u128 {
        fn next(self) -> Option<Self> {
            self.checked_add(1)
        }
    }
}

/// The fewest CIDR blocks that cover exactly `start..=end`.
fn range_to_cidrs_v4(start: u32, end: u32) -> Vec<Ipv4Net> {
    range_to_cidrs(u128::from(start), u128::from(end), 32)
        .into_iter()
        .filter_map(|(a, p)| {
            let a = u32::try_from(a).ok()?;
            Ipv4Net::new(Ipv4Addr::from(a), p).ok()
        })
        .collect()
}

fn range_to_cidrs_v6(start: u128, end: u128) -> Vec<Ipv6Net> {
    range_to_cidrs(start, end, 128)
        .into_iter()
        .filter_map(|(a, p)| Ipv6Net::new(Ipv6Addr::from(a), p).ok())
        .collect()
}

/// Splits `start..=end` (in a `bits`-wide space) into aligned blocks.
fn range_to_cidrs(mut start: u128, end: u128, bits: u8) -> Vec<(u128, u8)> {
    let mut out = Vec::new();
    loop {
        // Largest block aligned at `start`...
        let align = if start == 0 {
            u32::from(bits)
        } else {
            start.trailing_zeros().min(u32::from(bits))
        };
        // ...that does not run past `end`.
        let span = end - start; // block size - 1 must be <= span
        let fit = if span == u128::MAX {
            128
        } else {
            (span + 1).ilog2()
        };
        let size_bits = align.min(fit);
        #[expect(clippy::cast_possible_truncation, reason = "size_bits <= bits <= 128")]
        out.push((start, bits - size_bits as u8));
        let last = start
            + u128::MAX
                .checked_shr(128 - size_bits)
                .unwrap_or(0)
                .min(span);
        if last >= end {
            return out;
        }
        start = last + 1;
    }
}

impl Tables {
    /// The country of an address by binary search: the reference the kernel
    /// layout and the tests compare against.
    #[must_use]
    pub fn lookup(&self, ip: IpAddr) -> Option<CountryCode> {
        match canonical(ip) {
            IpAddr::V4(a) => find(&self.v4, |n: &Ipv4Net| n.network() <= a, |n| n.contains(&a)),
            IpAddr::V6(a) => find(&self.v6, |n: &Ipv6Net| n.network() <= a, |n| n.contains(&a)),
        }
    }

    /// All prefixes as generic networks (for display and counting).
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, CountryCode)> + '_ {
        self.v4
            .iter()
            .map(|(n, c)| (IpNet::V4(*n), *c))
            .chain(self.v6.iter().map(|(n, c)| (IpNet::V6(*n), *c)))
    }
}

fn find<N: Copy>(
    table: &[(N, CountryCode)],
    at_or_before: impl Fn(&N) -> bool,
    contains: impl Fn(&N) -> bool,
) -> Option<CountryCode> {
    let i = table.partition_point(|(n, _)| at_or_before(n));
    let (n, c) = table.get(i.checked_sub(1)?)?;
    contains(n).then_some(*c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_become_minimal_cidrs() {
        let show = |s: &str, e: &str| {
            let s: Ipv4Addr = s.parse().unwrap();
            let e: Ipv4Addr = e.parse().unwrap();
            range_to_cidrs_v4(s.into(), e.into())
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(show("10.0.0.0", "10.0.0.255"), ["10.0.0.0/24"]);
        assert_eq!(show("10.0.0.0", "10.0.1.255"), ["10.0.0.0/23"]);
        assert_eq!(
            show("10.0.0.1", "10.0.0.6"),
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        assert_eq!(show("0.0.0.0", "255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(
            show("255.255.255.255", "255.255.255.255"),
            ["255.255.255.255/32"]
        );
        let all = range_to_cidrs_v6(0, u128::MAX);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].prefix_len(), 0);
        let top = range_to_cidrs_v6(u128::MAX - 1, u128::MAX);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].prefix_len(), 127);
    }

    #[test]
    fn merging_joins_only_touching_same_country_ranges() {
        let de: CountryCode = "DE".parse().unwrap();
        let fr: CountryCode = "FR".parse().unwrap();
        let merged = merge(vec![
            (10u32, 19, de),
            (0, 9, de),
            (20, 29, fr),
            (31, 40, fr),
        ]);
        assert_eq!(merged, vec![(0, 19, de), (20, 29, fr), (31, 40, fr)]);
    }
}
