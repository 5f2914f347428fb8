//! The kernel's layout of the IPv4 country table.
//!
//! A longest-prefix-match trie of every IPv4 network costs about 95 MB of
//! kernel memory for a full database and walks up to 32 nodes per lookup
//! (measured on these machines). Almost every network is a /24 or shorter,
//! so IPv4 uses direct indexing instead, with a trie only for what is left:
//!
//! - level 1: one `u32` per /16 (65,536 entries): a whole /16 with one
//!   country ([`L1_UNIFORM`] | index), nothing known (0), or the number of
//!   a level-2 block;
//! - level 2: one block of 256 `u16` per /16 that is split: the country of
//!   each /24, or [`MIXED`] when the /24 itself is split;
//! - a trie of the prefixes longer than /24, consulted only for a `MIXED` /24.
//!
//! A lookup is two array reads, and for the rare split /24 one trie lookup.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::country::CountryCode;

/// Level-1 flag: the low 16 bits are the country index of the whole /16.
pub const L1_UNIFORM: u32 = 1 << 31;
/// Level-2 marker: this /24 is split; look the address up in the trie.
pub const MIXED: u16 = u16::MAX;
/// Entries in level 1.
pub const L1_ENTRIES: usize = 1 << 16;

/// The three parts of the IPv4 table, ready to load into maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4Layout {
    /// Exactly [`L1_ENTRIES`] entries.
    pub l1: Vec<u32>,
    /// Level-2 blocks; level-1 value `n` (without the flag, n >= 1) names
    /// `l2[n - 1]`.
    pub l2: Vec<[u16; 256]>,
    /// Prefixes longer than /24, with their country index.
    pub long: Vec<(Ipv4Net, u16)>,
}

impl V4Layout {
    /// Builds the layout from disjoint prefixes (as [`crate::flatten`]
    /// produces them).
    #[must_use]
    pub fn build(prefixes: &[(Ipv4Net, CountryCode)]) -> Self {
        let mut l1 = vec![0u32; L1_ENTRIES];
        let mut l2: Vec<[u16; 256]> = Vec::new();
        let mut long = Vec::new();
        for &(net, country) in prefixes {
            let index = country.index();
            let base = u32::from(net.network());
            let p = net.prefix_len();
            let slash16 = (base >> 16) as usize;
            if p <= 16 {
                let count = 1usize << (16 - p);
                for e in &mut l1[slash16..slash16 + count] {
                    *e = L1_UNIFORM | u32::from(index);
                }
                continue;
            }
            let block = block_of(&mut l1, &mut l2, slash16);
            let slash24 = ((base >> 8) & 0xff) as usize;
            if p <= 24 {
                let count = 1usize << (24 - p);
                for e in &mut block_mut(&mut l2, block)[slash24..slash24 + count] {
                    *e = index;
                }
            } else {
                block_mut(&mut l2, block)[slash24] = MIXED;
                long.push((net, index));
            }
        }
        V4Layout { l1, l2, long }
    }

    /// Looks an address up exactly as the kernel programs do (the tests hold
    /// the two to the same answers). 0 means no country.
    #[must_use]
    pub fn lookup(&self, ip: Ipv4Addr) -> u16 {
        let ip = u32::from(ip);
        let e = self.l1[(ip >> 16) as usize];
        if e & L1_UNIFORM != 0 {
            return (e & 0xffff) as u16;
        }
        if e == 0 {
            return 0;
        }
        let Some(block) = self.l2.get(e as usize - 1) else {
            return 0;
        };
        let v = block[((ip >> 8) & 0xff) as usize];
        if v != MIXED {
            return v;
        }
        self.long
            .iter()
            .filter(|(n, _)| n.contains(&Ipv4Addr::from(ip)))
            .max_by_key(|(n, _)| n.prefix_len())
            .map_or(0, |(_, c)| *c)
    }

    /// Bytes of kernel memory the arrays take (array elements are rounded
    /// up to 8 bytes by the kernel); the trie is measured separately.
    #[must_use]
    pub fn array_bytes(&self) -> usize {
        L1_ENTRIES * 8 + self.l2.len() * 512
    }
}

/// The level-2 block of a /16, made (all unknown) if it has none yet.
fn block_of(l1: &mut [u32], l2: &mut Vec<[u16; 256]>, slash16: usize) -> usize {
    let e = l1[slash16];
    if e != 0 && e & L1_UNIFORM == 0 {
        return e as usize - 1;
    }
    // Disjoint input never has a uniform /16 that also has finer prefixes;
    // if it did, the finer ones win inside a block seeded with the whole.
    let seed = if e & L1_UNIFORM != 0 {
        (e & 0xffff) as u16
    } else {
        0
    };
    l2.push([seed; 256]);
    #[expect(clippy::cast_possible_truncation, reason = "at most 65,536 blocks")]
    {
        l1[slash16] = l2.len() as u32;
    }
    l2.len() - 1
}

fn block_mut(l2: &mut [[u16; 256]], block: usize) -> &mut [u16; 256] {
    &mut l2[block]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(s: &str) -> CountryCode {
        s.parse().unwrap()
    }

    #[test]
    fn each_level_answers_its_part() {
        let table = vec![
            ("10.0.0.0/8".parse().unwrap(), cc("DE")),
            ("11.1.0.0/17".parse().unwrap(), cc("FR")),
            ("11.1.200.0/24".parse().unwrap(), cc("US")),
            ("11.1.201.0/25".parse().unwrap(), cc("JP")),
            ("11.1.201.128/26".parse().unwrap(), cc("GB")),
        ];
        let l = V4Layout::build(&table);
        let at = |s: &str| CountryCode::from_index(l.lookup(s.parse().unwrap()));
        assert_eq!(at("10.200.3.4"), Some(cc("DE")));
        assert_eq!(at("11.1.5.5"), Some(cc("FR")));
        assert_eq!(at("11.1.200.9"), Some(cc("US")));
        assert_eq!(at("11.1.201.5"), Some(cc("JP")));
        assert_eq!(at("11.1.201.130"), Some(cc("GB")));
        assert_eq!(
            at("11.1.201.200"),
            None,
            "the rest of a split /24 is unknown"
        );
        assert_eq!(at("11.2.0.1"), None);
        assert_eq!(at("12.0.0.1"), None);
        assert_eq!(l.l2.len(), 1, "only 11.1/16 needs a block");
        assert_eq!(l.long.len(), 2);
    }
}
