//! The kernel's layout of the IPv4 country table.
//!
//! A longest-prefix-match trie of every IPv4 network costs about 95 MB of
//! kernel memory for a full database and walks up to 32 nodes per lookup
//! (measured on these machines). IPv4 uses direct indexing instead, three
//! array levels deep and exact for every prefix length:
//!
//! - level 1: one `u32` per /16 (65,536 entries): the whole /16 has one
//!   country ([`L1_UNIFORM`] | index), nothing is known (0), or the number
//!   of its level-2 block;
//! - level 2: 256 `u16` per split /16: the country of each /24, or
//!   [`L2_SPLIT`] + the number of the /24's level-3 block;
//! - level 3: 256 `u8` per split /24: the country of each address.
//!
//! The full CC0 database splits about 9,000 /16s and 16,000 /24s, so the
//! arrays take about 9 MiB (BENCHMARKS.md); a lookup is at most three array
//! reads.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::country::{CountryCode, MAX_INDEX};

/// Level-1 flag: the low 16 bits are the country index of the whole /16.
pub use residency_common::GEO4_L1_UNIFORM as L1_UNIFORM;
/// Level-2 values from here up name a level-3 block: `value - L2_SPLIT`.
pub use residency_common::GEO4_L2_SPLIT as L2_SPLIT;
/// Entries in level 1.
pub const L1_ENTRIES: usize = residency_common::GEO4_L1_ENTRIES as usize;
/// Most level-3 blocks a level-2 value can name.
pub const MAX_L3_BLOCKS: usize = (u16::MAX - L2_SPLIT) as usize + 1;

const _: () = assert!(MAX_INDEX < L2_SPLIT && MAX_INDEX <= u8::MAX as u16);

/// The three levels of the IPv4 table, ready to load into maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4Layout {
    /// Exactly [`L1_ENTRIES`] entries.
    pub l1: Vec<u32>,
    /// Level-1 value `n` (without the flag, n >= 1) names `l2[n - 1]`.
    pub l2: Vec<[u16; 256]>,
    /// Level-2 value `L2_SPLIT + n` names `l3[n]`.
    pub l3: Vec<[u8; 256]>,
}

/// The table needs more level-3 blocks than a level-2 entry can name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the IPv4 table splits {0} /24 networks; the kernel layout holds at most {MAX_L3_BLOCKS}")]
pub struct LayoutOverflow(pub usize);

impl V4Layout {
    /// Builds the layout from disjoint prefixes (as [`crate::flatten`]
    /// produces them).
    ///
    /// # Errors
    /// [`LayoutOverflow`] if more /24s are split than the layout can name.
    pub fn build(prefixes: &[(Ipv4Net, CountryCode)]) -> Result<Self, LayoutOverflow> {
        let mut l = V4Layout {
            l1: vec![0u32; L1_ENTRIES],
            l2: Vec::new(),
            l3: Vec::new(),
        };
        for &(net, country) in prefixes {
            let index = country.index();
            let base = u32::from(net.network());
            let p = net.prefix_len();
            let slash16 = (base >> 16) as usize;
            if p <= 16 {
                for e in &mut l.l1[slash16..slash16 + (1usize << (16 - p))] {
                    *e = L1_UNIFORM | u32::from(index);
                }
                continue;
            }
            let b2 = l.l2_block(slash16);
            let slash24 = ((base >> 8) & 0xff) as usize;
            if p <= 24 {
                for e in &mut l.l2[b2][slash24..slash24 + (1usize << (24 - p))] {
                    *e = index;
                }
                continue;
            }
            let b3 = l.l3_block(b2, slash24)?;
            let host = (base & 0xff) as usize;
            #[expect(
                clippy::cast_possible_truncation,
                reason = "indexes fit u8 (asserted above)"
            )]
            for e in &mut l.l3[b3][host..host + (1usize << (32 - p))] {
                *e = index as u8;
            }
        }
        Ok(l)
    }

    /// The level-2 block of a /16, made (seeded with the /16's country) if
    /// it has none yet.
    fn l2_block(&mut self, slash16: usize) -> usize {
        let e = self.l1[slash16];
        if e != 0 && e & L1_UNIFORM == 0 {
            return e as usize - 1;
        }
        // Disjoint input never has a uniform /16 that also has finer
        // prefixes; if it did, the finer ones win inside a seeded block.
        let seed = if e & L1_UNIFORM != 0 {
            (e & 0xffff) as u16
        } else {
            0
        };
        self.l2.push([seed; 256]);
        #[expect(clippy::cast_possible_truncation, reason = "at most 65,536 blocks")]
        {
            self.l1[slash16] = self.l2.len() as u32;
        }
        self.l2.len() - 1
    }

    /// The level-3 block of a /24, made (seeded likewise) if it has none.
    fn l3_block(&mut self, b2: usize, slash24: usize) -> Result<usize, LayoutOverflow> {
        let e = self.l2[b2][slash24];
        if e >= L2_SPLIT {
            return Ok(usize::from(e - L2_SPLIT));
        }
        if self.l3.len() >= MAX_L3_BLOCKS {
            return Err(LayoutOverflow(self.l3.len() + 1));
        }
        #[expect(clippy::cast_possible_truncation, reason = "indexes fit u8")]
        self.l3.push([e as u8; 256]);
        let n = self.l3.len() - 1;
        #[expect(
            clippy::cast_possible_truncation,
            reason = "checked against MAX_L3_BLOCKS"
        )]
        {
            self.l2[b2][slash24] = L2_SPLIT + n as u16;
        }
        Ok(n)
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
        let Some(block) = (e as usize).checked_sub(1).and_then(|b| self.l2.get(b)) else {
            return 0;
        };
        let v = block[((ip >> 8) & 0xff) as usize];
        if v < L2_SPLIT {
            return v;
        }
        self.l3
            .get(usize::from(v - L2_SPLIT))
            .map_or(0, |b| u16::from(b[(ip & 0xff) as usize]))
    }

    /// Bytes of kernel memory the three arrays take (the kernel rounds
    /// array elements up to 8 bytes).
    #[must_use]
    pub fn kernel_bytes(&self) -> usize {
        L1_ENTRIES * 8 + self.l2.len() * 512 + self.l3.len() * 256
    }
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
            ("11.1.201.255/32".parse().unwrap(), cc("NO")),
        ];
        let l = V4Layout::build(&table).unwrap();
        let at = |s: &str| CountryCode::from_index(l.lookup(s.parse().unwrap()));
        assert_eq!(at("10.200.3.4"), Some(cc("DE")));
        assert_eq!(at("11.1.5.5"), Some(cc("FR")));
        assert_eq!(at("11.1.200.9"), Some(cc("US")));
        assert_eq!(at("11.1.201.5"), Some(cc("JP")));
        assert_eq!(at("11.1.201.130"), Some(cc("GB")));
        assert_eq!(at("11.1.201.255"), Some(cc("NO")));
        assert_eq!(
            at("11.1.201.200"),
            None,
            "the rest of a split /24 is unknown"
        );
        assert_eq!(at("11.2.0.1"), None);
        assert_eq!(at("12.0.0.1"), None);
        assert_eq!(l.l2.len(), 1, "only 11.1/16 needs a level-2 block");
        assert_eq!(l.l3.len(), 1, "only 11.1.201/24 needs a level-3 block");
    }
}
