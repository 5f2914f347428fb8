//! The kernel's policy maps and their atomic swap.
//!
//! A generation of policy maps is one set of inner maps (policies, cgroup,
//! process-name and uid selectors, destination rules, exceptions), written
//! into slot `generation & 1` of each outer array-of-maps. `POLICY_ACTIVE`
//! names the generation in force: switching is that one write, so every
//! call is judged by one whole configuration, old or new.
//!
//! A slot is written again only after a grace period has passed since it
//! was last in force ([`GRACE`]): a program that read the old generation
//! number finishes its lookups in microseconds, long before its slot can be
//! reused. The replaced inner maps are freed by the kernel once no program
//! holds them (RCU), off the hot path.

use std::time::{Duration, Instant};

use aya::maps::{Array, ArrayOfMaps, HashMap, LpmTrie, Map, MapData, lpm_trie::Key};
use residency_common::{
    BPF_F_NO_PREALLOC, DestRule, ExceptionV4Key, ExceptionV6Key, Ipv4Key, Ipv6Key,
    MAX_CGROUP_POLICIES, MAX_DEST_RULES, MAX_EXCEPTIONS, MAX_NAME_PATTERNS, MAX_NAME_RULES,
    MAX_POLICIES, MAX_PROCESS_POLICIES, NameClass, NameRuleKey, PatternKey, Policy, PolicyActive,
    names,
};

use super::KernelError;
use crate::policy::Compiled;

/// How long a slot rests after it stops being in force before it is
/// written again.
pub const GRACE: Duration = Duration::from_secs(1);

type Policies = Array<MapData, Policy>;
type Cgroups = HashMap<MapData, u64, u32>;
type Comms = HashMap<MapData, [u8; 16], u32>;
type Uids = HashMap<MapData, u32, u32>;
type Rules4 = LpmTrie<MapData, Ipv4Key, DestRule>;
type Rules6 = LpmTrie<MapData, Ipv6Key, DestRule>;
type Exc4 = LpmTrie<MapData, ExceptionV4Key, DestRule>;
type Exc6 = LpmTrie<MapData, ExceptionV6Key, DestRule>;
type Patterns = HashMap<MapData, PatternKey, u32>;
type Classes = HashMap<MapData, u32, NameClass>;
type NameRules = HashMap<MapData, NameRuleKey, DestRule>;

/// The outer maps, owned by whoever swaps policies.
pub struct PolicyMaps {
    active: Array<MapData, PolicyActive>,
    policies: ArrayOfMaps<MapData, Policies>,
    cgroups: ArrayOfMaps<MapData, Cgroups>,
    comms: ArrayOfMaps<MapData, Comms>,
    uids: ArrayOfMaps<MapData, Uids>,
    rules4: ArrayOfMaps<MapData, Rules4>,
    rules6: ArrayOfMaps<MapData, Rules6>,
    exc4: ArrayOfMaps<MapData, Exc4>,
    exc6: ArrayOfMaps<MapData, Exc6>,
    patterns: ArrayOfMaps<MapData, Patterns>,
    classes: ArrayOfMaps<MapData, Classes>,
    name_rules: ArrayOfMaps<MapData, NameRules>,
    generation: u32,
    /// The cgroup map of the generation in force, for adding cgroups that
    /// appear later.
    live_cgroups: Option<Cgroups>,
    switched_at: Option<Instant>,
    /// Bumped with every change to the cgroups of the generation in force,
    /// so the kernel's remembered walks are redone.
    epoch: u32,
}

fn map_err(what: &'static str) -> impl Fn(aya::maps::MapError) -> KernelError {
    move |e| KernelError::from_aya(format!("policy maps: {what}"), e)
}

impl PolicyMaps {
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Result<Self, KernelError> {
        let mut take = |name: &str| super::take_map(ebpf, name);
        let active: Map = take(names::POLICY_ACTIVE)?;
        macro_rules! outer {
            ($name:expr, $what:literal) => {
                ArrayOfMaps::try_from(take($name)?).map_err(map_err($what))?
            };
        }
        Ok(PolicyMaps {
            active: Array::try_from(active).map_err(map_err("opening POLICY_ACTIVE"))?,
            policies: outer!(names::POLICIES, "opening POLICIES"),
            cgroups: outer!(names::CGROUP_POLICY, "opening CGROUP_POLICY"),
            comms: outer!(names::COMM_POLICY, "opening COMM_POLICY"),
            uids: outer!(names::UID_POLICY, "opening UID_POLICY"),
            rules4: outer!(names::DEST_RULES_V4, "opening DEST_RULES_V4"),
            rules6: outer!(names::DEST_RULES_V6, "opening DEST_RULES_V6"),
            exc4: outer!(names::EXCEPTIONS_V4, "opening EXCEPTIONS_V4"),
            exc6: outer!(names::EXCEPTIONS_V6, "opening EXCEPTIONS_V6"),
            patterns: outer!(names::NAME_PATTERNS, "opening NAME_PATTERNS"),
            classes: outer!(names::NAME_CLASSES, "opening NAME_CLASSES"),
            name_rules: outer!(names::NAME_RULES, "opening NAME_RULES"),
            generation: 0,
            live_cgroups: None,
            switched_at: None,
            epoch: 0,
        })
    }

    /// Numbers this daemon's generations on from `last`, the previous
    /// daemon's: records it decided, read late from the pinned ring, keep
    /// numbers no generation of this daemon has. Only before the first
    /// install.
    pub(super) fn numbered_after(&mut self, last: u32) {
        debug_assert_eq!(self.generation, 0, "policy maps already installed");
        self.generation = last;
    }

    /// The generation in force (0: none yet).
    #[must_use]
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The number the next [`PolicyMaps::install`] will switch to.
    #[must_use]
    pub fn next_generation(&self) -> u32 {
        self.generation.wrapping_add(1).max(1)
    }

    /// Builds a new generation from `compiled` and the cgroups that select
    /// a workload (`(cgroup id, policy index)`), then switches to it. On
    /// error the generation in force stays, untouched. Blocks for the rest
    /// of the grace period if the previous switch was less than [`GRACE`]
    /// ago.
    ///
    /// # Errors
    /// If the kernel refuses a map.
    #[expect(
        clippy::too_many_lines,
        reason = "eleven maps built and published in turn"
    )]
    pub fn install(
        &mut self,
        compiled: &Compiled,
        cgroups: &[(u64, u32)],
    ) -> Result<u32, KernelError> {
        let generation = self.next_generation();
        let slot = generation & 1;

        let mut policies: Policies =
            Array::create(MAX_POLICIES, 0).map_err(map_err("creating the policy array"))?;
        for (i, p) in compiled.policies.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            policies
                .set(i, *p, 0)
                .map_err(map_err("filling the policy array"))?;
        }
        let mut by_cgroup: Cgroups = HashMap::create(MAX_CGROUP_POLICIES, BPF_F_NO_PREALLOC)
            .map_err(map_err("creating the cgroup map"))?;
        for &(id, index) in cgroups {
            by_cgroup
                .insert(id, index, 0)
                .map_err(map_err("filling the cgroup map"))?;
        }
        let mut by_comm: Comms = HashMap::create(MAX_PROCESS_POLICIES, BPF_F_NO_PREALLOC)
            .map_err(map_err("creating the process map"))?;
        for (comm, index) in &compiled.comm {
            by_comm
                .insert(comm, index, 0)
                .map_err(map_err("filling the process map"))?;
        }
        let mut by_uid: Uids = HashMap::create(MAX_PROCESS_POLICIES, BPF_F_NO_PREALLOC)
            .map_err(map_err("creating the uid map"))?;
        for (uid, index) in &compiled.uid {
            by_uid
                .insert(uid, index, 0)
                .map_err(map_err("filling the uid map"))?;
        }
        let mut rules4: Rules4 = LpmTrie::create(MAX_DEST_RULES, BPF_F_NO_PREALLOC)
            .map_err(map_err("creating the IPv4 rules"))?;
        for (n, r) in &compiled.rules_v4 {
            rules4
                .insert(
                    &Key::new(u32::from(n.prefix_len()), n.network().octets()),
                    *r,
                    0,
                )
                .map_err(map_err("filling the IPv4 rules"))?;
        }
        let mut rules6: Rules6 = LpmTrie::create(MAX_DEST_RULES, BPF_F_NO_PREALLOC)
            .map_err(map_err("creating the IPv6 rules"))?;
        for (n, r) in &compiled.rules_v6 {
            rules6
                .insert(
                    &Key::new(u32::from(n.prefix_len()), n.network().octets()),
                    *r,
                    0,
                )
                .map_err(map_err("filling the IPv6 rules"))?;
        }
        let mut exc4: Exc4 = LpmTrie::create(MAX_EXCEPTIONS, BPF_F_NO_PREALLOC)
            .map_err(map_err("creating the IPv4 exceptions"))?;
        for (index, n, r) in &compiled.exceptions_v4 {
            let i = index.to_be_bytes();
            let a = n.network().octets();
            let key = [i[0], i[1], a[0], a[1], a[2], a[3], 0, 0];
            exc4.insert(&Key::new(16 + u32::from(n.prefix_len()), key), *r, 0)
                .map_err(map_err("filling the IPv4 exceptions"))?;
        }
        let mut exc6: Exc6 = LpmTrie::create(MAX_EXCEPTIONS, BPF_F_NO_PREALLOC)
            .map_err(map_err("creating the IPv6 exceptions"))?;
        for (index, n, r) in &compiled.exceptions_v6 {
            let mut key = [0u8; 20];
            key[..2].copy_from_slice(&index.to_be_bytes());
            key[2..18].copy_from_slice(&n.network().octets());
            exc6.insert(&Key::new(16 + u32::from(n.prefix_len()), key), *r, 0)
                .map_err(map_err("filling the IPv6 exceptions"))?;
        }
        let mut patterns: Patterns = HashMap::create(MAX_NAME_PATTERNS, BPF_F_NO_PREALLOC)
            .map_err(map_err("creating the name patterns"))?;
        for (key, id) in &compiled.names.patterns {
            patterns
                .insert(key, id, 0)
                .map_err(map_err("filling the name patterns"))?;
        }
        let mut classes: Classes = HashMap::create(MAX_NAME_PATTERNS, BPF_F_NO_PREALLOC)
            .map_err(map_err("creating the name classes"))?;
        for (id, class) in &compiled.names.classes {
            classes
                .insert(id, class, 0)
                .map_err(map_err("filling the name classes"))?;
        }
        let mut name_rules: NameRules = HashMap::create(MAX_NAME_RULES, BPF_F_NO_PREALLOC)
            .map_err(map_err("creating the name rules"))?;
        for (key, rule) in &compiled.names.rules {
            name_rules
                .insert(key, rule, 0)
                .map_err(map_err("filling the name rules"))?;
        }

        // The slot about to be written was in force until the last switch;
        // give programs that read it then time to finish.
        if let Some(at) = self.switched_at {
            let since = at.elapsed();
            if since < GRACE {
                std::thread::sleep(GRACE.checked_sub(since).unwrap_or_default());
            }
        }
        self.policies
            .set(slot, &policies, 0)
            .map_err(map_err("publishing policies"))?;
        self.cgroups
            .set(slot, &by_cgroup, 0)
            .map_err(map_err("publishing the cgroup map"))?;
        self.comms
            .set(slot, &by_comm, 0)
            .map_err(map_err("publishing the process map"))?;
        self.uids
            .set(slot, &by_uid, 0)
            .map_err(map_err("publishing the uid map"))?;
        self.rules4
            .set(slot, &rules4, 0)
            .map_err(map_err("publishing the IPv4 rules"))?;
        self.rules6
            .set(slot, &rules6, 0)
            .map_err(map_err("publishing the IPv6 rules"))?;
        self.exc4
            .set(slot, &exc4, 0)
            .map_err(map_err("publishing the IPv4 exceptions"))?;
        self.exc6
            .set(slot, &exc6, 0)
            .map_err(map_err("publishing the IPv6 exceptions"))?;
        self.patterns
            .set(slot, &patterns, 0)
            .map_err(map_err("publishing the name patterns"))?;
        self.classes
            .set(slot, &classes, 0)
            .map_err(map_err("publishing the name classes"))?;
        self.name_rules
            .set(slot, &name_rules, 0)
            .map_err(map_err("publishing the name rules"))?;
        self.active
            .set(
                0,
                PolicyActive {
                    generation,
                    epoch: self.epoch,
                },
                0,
            )
            .map_err(map_err("switching generations"))?;
        self.generation = generation;
        self.live_cgroups = Some(by_cgroup);
        self.switched_at = Some(Instant::now());
        Ok(generation)
    }

    /// Adds a cgroup that appeared after the generation in force was built.
    ///
    /// # Errors
    /// If the map is full.
    pub fn add_cgroup(&mut self, id: u64, index: u32) -> Result<(), KernelError> {
        if let Some(m) = self.live_cgroups.as_mut() {
            m.insert(id, index, 0).map_err(map_err("adding a cgroup"))?;
            self.bump_epoch()?;
        }
        Ok(())
    }

    /// Forgets a cgroup that was removed.
    pub fn remove_cgroup(&mut self, id: u64) {
        if let Some(m) = self.live_cgroups.as_mut()
            && m.remove(&id).is_ok()
        {
            let _ = self.bump_epoch();
        }
    }

    /// Makes the live cgroup map of the generation in force hold exactly
    /// `want` (cgroup id, policy index); returns how many entries changed.
    ///
    /// # Errors
    /// If the map is full.
    pub fn sync_cgroups(&mut self, want: &[(u64, u32)]) -> Result<usize, KernelError> {
        let Some(m) = self.live_cgroups.as_mut() else {
            return Ok(0);
        };
        let want: std::collections::HashMap<u64, u32> = want.iter().copied().collect();
        let stale: Vec<u64> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|id| !want.contains_key(id))
            .collect();
        let mut changed = 0;
        for id in stale {
            if m.remove(&id).is_ok() {
                changed += 1;
            }
        }
        for (&id, &index) in &want {
            if m.get(&id, 0).ok() != Some(index) {
                m.insert(id, index, 0).map_err(map_err("adding a cgroup"))?;
                changed += 1;
            }
        }
        if changed > 0 {
            self.bump_epoch()?;
        }
        Ok(changed)
    }

    /// Descendants of a changed cgroup may have remembered an older walk.
    fn bump_epoch(&mut self) -> Result<(), KernelError> {
        self.epoch = self.epoch.wrapping_add(1);
        self.active
            .set(
                0,
                PolicyActive {
                    generation: self.generation,
                    epoch: self.epoch,
                },
                0,
            )
            .map_err(map_err("renewing the cgroup cache"))
    }
}
