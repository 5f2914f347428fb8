//! The names each workload's DNS answers gave for each address.
//!
//! A workload is a cgroup (its id); the cache is keyed by the workload and
//! the address together, so a name that one workload resolved is never
//! returned for another's flow to the same address. Entries are kept in
//! least-recently-used order (the `lru` crate) up to a fixed number of
//! (workload, address) pairs; each pair holds a few answers.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use lru::LruCache;

use crate::dns::DnsAnswer;

/// How big the cache is and how long a name lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameCacheConfig {
    /// The most (workload, address) pairs kept; the least recently used
    /// pair goes first. 0 is taken as 1.
    pub capacity: usize,
    /// The least time a name is kept after its answer, whatever its TTL:
    /// applications (browsers, JVMs, connection pools) keep using an
    /// address long after its record expired.
    pub min_ttl: Duration,
    /// The most answers kept per (workload, address); the oldest goes
    /// first. 0 is taken as 1.
    pub max_answers_per_address: usize,
}

impl Default for NameCacheConfig {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            min_ttl: Duration::from_hours(1),
            max_answers_per_address: 8,
        }
    }
}

/// At most this many answers for the same name are kept per (workload,
/// address), so that a name resolved again and again does not push out
/// the other names of the address.
const ANSWERS_PER_NAME: usize = 2;

/// One name an answer gave for an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedName {
    /// The name the workload asked for.
    pub name: String,
    /// The CNAME chain from `name` to the owner of the address record,
    /// both included (`[name]` alone without CNAMEs).
    pub chain: Vec<String>,
    /// Seconds: the smallest TTL of the address record and the chain's
    /// links, as the answer gave it.
    pub ttl: u32,
    /// The answer's boot-time stamp, in nanoseconds.
    pub stamp_ns: u64,
    /// When the name stops being returned by [`NameCache::names`]: the
    /// stamp plus the TTL, or plus `min_ttl` when that is longer.
    pub expires_ns: u64,
}

/// What the cache has done, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// (workload, address) pairs now held.
    pub entries: usize,
    /// Names stored (one per attributable address of an answer).
    pub inserted: u64,
    /// Pairs dropped to make room, least recently used first.
    pub evicted: u64,
    /// Pairs dropped by [`NameCache::purge_expired`].
    pub expired: u64,
    /// Addresses of answers not stored because their owner is not reached
    /// from the question (see [`crate::Resolved::in_chain`]).
    pub unattributed: u64,
}

/// Names per workload and address.
#[derive(Debug)]
pub struct NameCache {
    entries: LruCache<(u64, IpAddr), Vec<CachedName>>,
    min_ttl_ns: u64,
    max_answers: usize,
    stats: CacheStats,
}

impl NameCache {
    /// An empty cache.
    #[must_use]
    pub fn new(config: &NameCacheConfig) -> Self {
        let capacity = NonZeroUsize::new(config.capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            entries: LruCache::new(capacity),
            min_ttl_ns: u64::try_from(config.min_ttl.as_nanos()).unwrap_or(u64::MAX),
            max_answers: config.max_answers_per_address.max(1),
            stats: CacheStats::default(),
        }
    }

    /// Stores the names an answer gives, for the workload that received
    /// it, at `stamp_ns` (boot time). Only the addresses reached from the
    /// question through the CNAME chain are stored, under the question's
    /// name. Inserting the same answer twice changes nothing.
    pub fn insert(&mut self, cgroup: u64, answer: &DnsAnswer, stamp_ns: u64) {
        for resolved in &answer.addresses {
            if !resolved.in_chain {
                self.stats.unattributed += 1;
                continue;
            }
            let chain = answer
                .chain_to(&resolved.owner)
                .unwrap_or_default()
                .to_vec();
            let ttl = answer
                .chain_ttl(&resolved.owner)
                .map_or(resolved.ttl, |t| t.min(resolved.ttl));
            let lifetime = u64::from(ttl)
                .saturating_mul(1_000_000_000)
                .max(self.min_ttl_ns);
            let name = CachedName {
                name: answer.qname.clone(),
                chain,
                ttl,
                stamp_ns,
                expires_ns: stamp_ns.saturating_add(lifetime),
            };
            self.stats.inserted += 1;
            self.store((cgroup, resolved.addr), name);
        }
        self.stats.entries = self.entries.len();
    }

    fn store(&mut self, key: (u64, IpAddr), name: CachedName) {
        let Some(names) = self.entries.get_mut(&key) else {
            if self.entries.push(key, vec![name]).is_some() {
                // The key was not there, so what came back was evicted.
                self.stats.evicted += 1;
            }
            return;
        };
        if let Some(same) = names
            .iter_mut()
            .find(|n| n.name == name.name && n.stamp_ns == name.stamp_ns)
        {
            *same = name;
            return;
        }
        let same_name = names.iter().filter(|n| n.name == name.name).count();
        if same_name >= ANSWERS_PER_NAME {
            remove_oldest(names, |n| n.name == name.name);
        }
        if names.len() >= self.max_answers {
            remove_oldest(names, |_| true);
        }
        names.push(name);
    }

    /// The names this workload's answers gave for `addr` that have not
    /// expired at `now_ns`, newest answer first, each name once. More than
    /// one name means the address is ambiguous (a shared CDN address).
    pub fn names(&mut self, cgroup: u64, addr: IpAddr, now_ns: u64) -> Vec<&CachedName> {
        let Some(names) = self.entries.get(&(cgroup, addr)) else {
            return Vec::new();
        };
        let mut live: Vec<&CachedName> = names.iter().filter(|n| n.expires_ns > now_ns).collect();
        live.sort_by_key(|n| std::cmp::Reverse(n.stamp_ns));
        let mut seen: Vec<&str> = Vec::with_capacity(live.len());
        live.retain(|n| {
            let fresh = !seen.contains(&n.name.as_str());
            seen.push(&n.name);
            fresh
        });
        live
    }

    /// The name that the answer stamped `stamp_ns` gave this workload for
    /// `addr`, expired or not, as long as it is still held: the name a
    /// kernel decision that refers to that answer was made for.
    pub fn get_by_stamp(
        &mut self,
        cgroup: u64,
        addr: IpAddr,
        stamp_ns: u64,
    ) -> Option<&CachedName> {
        self.entries
            .get(&(cgroup, addr))?
            .iter()
            .find(|n| n.stamp_ns == stamp_ns)
    }

    /// Drops the names that expired at `now_ns`, and the pairs left
    /// without any.
    pub fn purge_expired(&mut self, now_ns: u64) {
        let mut empty = Vec::new();
        for (key, names) in &mut self.entries {
            names.retain(|n| n.expires_ns > now_ns);
            if names.is_empty() {
                empty.push(*key);
            }
        }
        for key in empty {
            self.entries.pop(&key);
            self.stats.expired += 1;
        }
        self.stats.entries = self.entries.len();
    }

    /// The number of (workload, address) pairs held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no pair is held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Pairs dropped to make room so far.
    #[must_use]
    pub fn evictions(&self) -> u64 {
        self.stats.evicted
    }

    /// What the cache has done so far.
    #[must_use]
    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}

fn remove_oldest(names: &mut Vec<CachedName>, which: impl Fn(&CachedName) -> bool) {
    let oldest = names
        .iter()
        .enumerate()
        .filter(|(_, n)| which(n))
        .min_by_key(|(_, n)| n.stamp_ns)
        .map(|(i, _)| i);
    if let Some(i) = oldest {
        names.remove(i);
    }
}
