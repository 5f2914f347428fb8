//! The kernel's `GeoIP` tables and their hot swap.
//!
//! Each generation of tables is a set of inner maps (IPv4 levels 1-3, the
//! IPv6 trie) built and filled off to the side, then published under its
//! generation number in the outer hash-of-maps. Switching is one write: the
//! generation in `GEO_ACTIVE`. Only then is the previous generation removed
//! from the outer maps; the kernel frees its maps once no running program
//! holds them. Programs that read a generation just retired find its
//! tables missing and read `GEO_ACTIVE` again, so no lookup misses during a
//! swap, and the hot path never waits for the free.

use std::time::{Duration, Instant};

use aya::maps::{Array, HashOfMaps, LpmTrie, Map, MapData, lpm_trie::Key};
use geoip::{CountryCode, layout::V4Layout};
use ipnet::Ipv6Net;
use residency_common::{
    BPF_F_INNER_MAP, BPF_F_NO_PREALLOC, GEO4_L1_ENTRIES, GEO6_MAX_PREFIXES, GeoActive, names,
};

use super::KernelError;

type L1 = Array<MapData, u32>;
type L2 = Array<MapData, [u16; 256]>;
type L3 = Array<MapData, [u8; 256]>;
type V6 = LpmTrie<MapData, [u8; 16], u16>;

/// The outer maps, owned by whoever swaps tables.
pub struct GeoMaps {
    active: Array<MapData, GeoActive>,
    l1: HashOfMaps<MapData, u32, L1>,
    l2: HashOfMaps<MapData, u32, L2>,
    l3: HashOfMaps<MapData, u32, L3>,
    v6: HashOfMaps<MapData, u32, V6>,
    generation: u32,
}

/// What loading one generation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    pub generation: u32,
    pub l2_blocks: usize,
    pub l3_blocks: usize,
    pub v6_prefixes: usize,
    /// Bytes of the IPv4 arrays (the IPv6 trie is measured from outside).
    pub v4_bytes: usize,
    /// Creating and filling the maps.
    pub fill: Duration,
}

fn map_err(what: &'static str) -> impl Fn(aya::maps::MapError) -> KernelError {
    move |e| KernelError::from_aya(format!("GeoIP tables: {what}"), e)
}

impl GeoMaps {
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, KernelError> {
        let mut take = |name: &str| super::take_map(ebpf, name);
        let active: Map = take(names::GEO_ACTIVE)?;
        let l1 = take(names::GEO4_L1)?;
        let l2 = take(names::GEO4_L2)?;
        let l3 = take(names::GEO4_L3)?;
        let v6 = take(names::GEO6)?;
        Ok(GeoMaps {
            active: Array::try_from(active).map_err(map_err("opening GEO_ACTIVE"))?,
            l1: HashOfMaps::try_from(l1).map_err(map_err("opening GEO4_L1"))?,
            l2: HashOfMaps::try_from(l2).map_err(map_err("opening GEO4_L2"))?,
            l3: HashOfMaps::try_from(l3).map_err(map_err("opening GEO4_L3"))?,
            v6: HashOfMaps::try_from(v6).map_err(map_err("opening GEO6"))?,
            generation: 0,
        })
    }

    /// Numbers this daemon's generations on from `last`, the previous
    /// daemon's: records it decided, read late from the pinned ring, keep
    /// numbers no generation of this daemon has. Only before the first
    /// install.
    pub(super) fn numbered_after(&mut self, last: u32) {
        debug_assert_eq!(self.generation, 0, "GeoIP maps already installed");
        self.generation = last;
    }

    /// The generation in force (0: none yet).
    #[must_use]
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The number the next [`GeoMaps::install`] will publish under.
    #[must_use]
    pub fn next_generation(&self) -> u32 {
        self.generation.wrapping_add(1).max(1)
    }

    /// Builds a new generation from `v4` and `v6`, switches to it, and
    /// retires the one it replaces. On error the running generation stays
    /// in force, untouched.
    ///
    /// # Errors
    /// If the kernel refuses a map (memory, limits).
    pub fn install(
        &mut self,
        v4: &V4Layout,
        v6: &[(Ipv6Net, CountryCode)],
    ) -> Result<Installed, KernelError> {
        let started = Instant::now();
        let generation = self.next_generation();

        let mut l1: L1 = Array::create(GEO4_L1_ENTRIES, 0).map_err(map_err("creating level 1"))?;
        for (i, &e) in v4.l1.iter().enumerate() {
            // A new array is all zeroes, which means "no country".
            if e != 0 {
                let i = u32::try_from(i).unwrap_or(u32::MAX);
                l1.set(i, e, 0).map_err(map_err("filling level 1"))?;
            }
        }
        let mut l2: L2 = Array::create(len(v4.l2.len()), BPF_F_INNER_MAP)
            .map_err(map_err("creating level 2"))?;
        for (i, block) in v4.l2.iter().enumerate() {
            l2.set(u32::try_from(i).unwrap_or(u32::MAX), block, 0)
                .map_err(map_err("filling level 2"))?;
        }
        let mut l3: L3 = Array::create(len(v4.l3.len()), BPF_F_INNER_MAP)
            .map_err(map_err("creating level 3"))?;
        for (i, block) in v4.l3.iter().enumerate() {
            l3.set(u32::try_from(i).unwrap_or(u32::MAX), block, 0)
                .map_err(map_err("filling level 3"))?;
        }
        let mut trie: V6 = LpmTrie::create(GEO6_MAX_PREFIXES, BPF_F_NO_PREALLOC)
            .map_err(map_err("creating the IPv6 trie"))?;
        for (net, country) in v6 {
            let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
            trie.insert(&key, country.index(), 0)
                .map_err(map_err("filling the IPv6 trie"))?;
        }
        let fill = started.elapsed();

        // Publish: the new generation's tables first, then the switch. If
        // any step fails, take back what was published (nothing reads it:
        // GEO_ACTIVE still names the old generation).
        let published = self
            .l1
            .insert(generation, &l1, 0)
            .and_then(|()| self.l2.insert(generation, &l2, 0))
            .and_then(|()| self.l3.insert(generation, &l3, 0))
            .and_then(|()| self.v6.insert(generation, &trie, 0))
            .and_then(|()| {
                self.active.set(
                    0,
                    GeoActive {
                        generation,
                        _pad: 0,
                    },
                    0,
                )
            });
        if let Err(e) = published {
            self.retire(generation);
            return Err(map_err("publishing a new generation")(e));
        }

        // Retire the old generation. A program that read the old number and
        // then finds any of its tables gone reads GEO_ACTIVE again, so the
        // order of these removals does not matter.
        let old = self.generation;
        self.generation = generation;
        if old != 0 {
            self.retire(old);
        }
        Ok(Installed {
            generation,
            l2_blocks: v4.l2.len(),
            l3_blocks: v4.l3.len(),
            v6_prefixes: v6.len(),
            v4_bytes: v4.kernel_bytes(),
            fill,
        })
    }
}

impl GeoMaps {
    /// Removes a generation's tables from the outer maps (the kernel frees
    /// them once no program holds them). Missing entries are fine.
    fn retire(&mut self, generation: u32) {
        let _ = self.l1.remove(&generation);
        let _ = self.l2.remove(&generation);
        let _ = self.l3.remove(&generation);
        let _ = self.v6.remove(&generation);
    }
}

/// Arrays need at least one entry.
fn len(n: usize) -> u32 {
    u32::try_from(n.max(1)).unwrap_or(u32::MAX)
}
