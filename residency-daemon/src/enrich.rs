//! The enrich stage: turns a kernel record into a [`Flow`] that says, in
//! userspace terms, who sent what where and what was decided.
//!
//! That means wall-clock time, addresses, names, the `GeoIP` detail
//! (country, continent, AS) of the database generation that decided, the
//! view of the policy generation that decided (workload, role, tenants,
//! exception, hash: [`crate::policy::Versions`]), and the caller's
//! executable, command line and cgroup path ([`crate::identity`]). The
//! flow itself is the record crate's ([`residency_record::Flow`]); DNS
//! names join here when that stage lands.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use geoip::CountryCode;
use residency_common::{
    AF_INET, AF_INET6, ConnectEvent, DestKind, FLAG_V4_MAPPED, Hook, IPPROTO_TCP, IPPROTO_UDP,
    Verdict,
};
use residency_record::{Decider, Flow, Transport};

use crate::{
    geodb::{DetailCache, Registry},
    identity::{CgroupPaths, Processes, SharedTree},
    policy::Versions,
};

/// What the writer enriches from: shared with the tasks that keep each
/// current.
#[derive(Clone)]
pub struct Sources {
    /// `GeoIP` generation -> database.
    pub registry: Arc<Registry>,
    /// Policy generation -> the view records are explained with.
    pub versions: Arc<Versions>,
    /// The cgroup tree.
    pub tree: SharedTree,
    /// How long names hold and how many are kept.
    pub names: crate::config::NamesConfig,
    /// The pods the runtime named (`[kubernetes]`).
    pub pods: Option<crate::pods::SharedPods>,
}

/// The writer's caches in front of [`Sources`].
pub struct Enricher {
    sources: Sources,
    details: DetailCache,
    processes: Processes,
    cgroups: CgroupPaths,
    names: crate::naming::Namer,
    pods: Option<crate::pods::PodCache>,
}

impl Enricher {
    /// `details`: how many `GeoIP` lookups to remember; `names`: the
    /// name settings (how long a name holds, how many are kept).
    #[must_use]
    pub fn new(sources: Sources, details: usize) -> Self {
        let names = sources.names;
        Enricher {
            cgroups: CgroupPaths::new(sources.tree.clone()),
            pods: sources.pods.clone().map(crate::pods::PodCache::new),
            sources,
            details: DetailCache::new(details),
            processes: Processes::default(),
            names: crate::naming::Namer::new(
                names.min_ttl_secs,
                usize::try_from(names.max_entries).unwrap_or(usize::MAX),
            ),
        }
    }

    /// The name behind a flow, as the kernel judged it (`ev` is the
    /// kernel's record of the flow).
    pub fn name(&mut self, flow: &mut Flow, ev: &ConnectEvent) {
        let catalog = self.sources.versions.catalog(flow.policy_gen);
        self.names.name_flow(flow, ev, catalog.as_ref());
    }

    /// A DNS answer or TLS bytes from the kernel; a TLS server name gives
    /// a record. Counted in `metrics`.
    pub fn observe_names(
        &mut self,
        record: &crate::kernel::Decoded,
        metrics: &crate::metrics::PipelineMetrics,
    ) -> Option<residency_record::Record> {
        match record {
            crate::kernel::Decoded::Dns(answer) => {
                if self.names.answer(answer) {
                    metrics.dns_answers.inc();
                } else {
                    metrics.dns_rejected.inc();
                }
                metrics
                    .names_kept
                    .set(i64::try_from(self.names.len()).unwrap_or(i64::MAX));
                None
            }
            crate::kernel::Decoded::Tls(bytes) => {
                let catalog = self.sources.versions.latest_catalog();
                let record = self.names.tls(bytes, catalog.as_deref());
                if record.is_some() {
                    metrics.tls_server_names.inc();
                }
                record
            }
            _ => None,
        }
    }

    /// Everything userspace adds to a kernel record.
    pub fn enrich(&mut self, flow: &mut Flow) {
        add_geo(flow, &self.sources.registry, &mut self.details);
        // The view of the generation that decided, for names, modes and
        // the hash; none if it is no longer held (better no explanation
        // than another policy's).
        flow.policy_view = self.sources.versions.get(flow.policy_gen).map(Decider);
        flow.process = self
            .processes
            .lookup(flow.pid, flow.tid, &flow.process_name);
        flow.cgroup_path = self.cgroups.path_of(flow.cgroup_id);
        if let (Some(pods), Some(path)) = (&mut self.pods, &flow.cgroup_path) {
            flow.pod = pods.get(flow.cgroup_id, path);
        }
    }

    /// Keeps the process table current from the kernel's exec, fork and
    /// exit records, which arrive in order with the decisions.
    pub fn observe(&mut self, record: &crate::kernel::Decoded) {
        self.processes.observe(record);
    }
}

/// Maps the kernel's `CLOCK_BOOTTIME` stamps to wall-clock time.
///
/// The offset is re-read for every batch, so a clock step (NTP, an operator)
/// shows up within one batch instead of skewing every later record.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    realtime_minus_boot_ns: i128,
}

impl Clock {
    /// Reads both clocks now.
    #[must_use]
    pub fn now() -> Self {
        use nix::time::{ClockId, clock_gettime};
        let ns = |id| {
            clock_gettime(id).map_or(0i128, |t| {
                i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
            })
        };
        let boot = ns(ClockId::CLOCK_BOOTTIME);
        let real = ns(ClockId::CLOCK_REALTIME);
        Clock {
            realtime_minus_boot_ns: real - boot,
        }
    }

    /// Wall-clock time of a `CLOCK_BOOTTIME` stamp.
    #[must_use]
    pub fn wall(&self, boot_ns: u64) -> jiff::Timestamp {
        let ns = i128::from(boot_ns) + self.realtime_minus_boot_ns;
        jiff::Timestamp::from_nanosecond(ns).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }
}

/// A kernel record with a field this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrichError {
    #[error("unknown hook {0}")]
    Hook(u8),
    #[error("unknown verdict {0}")]
    Verdict(u8),
    #[error("unknown address family {0}")]
    Family(u8),
    #[error("unknown destination kind {0}")]
    DestKind(u8),
}

/// Builds a flow from a kernel record (enriched later by [`Enricher`]).
///
/// # Errors
/// If the record carries a hook, verdict or family number this build
/// does not know.
pub fn decode(ev: &ConnectEvent, clock: &Clock) -> Result<Flow, EnrichError> {
    let hook = Hook::from_u8(ev.hook).ok_or(EnrichError::Hook(ev.hook))?;
    let dest_kind = DestKind::from_u8(ev.dest_kind).ok_or(EnrichError::DestKind(ev.dest_kind))?;
    let verdict = Verdict::from_u8(ev.verdict).ok_or(EnrichError::Verdict(ev.verdict))?;
    let dest_ip = match ev.family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(
            ev.daddr[0],
            ev.daddr[1],
            ev.daddr[2],
            ev.daddr[3],
        )),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(ev.daddr)),
        other => return Err(EnrichError::Family(other)),
    };
    let transport = match ev.protocol {
        IPPROTO_TCP => Transport::Tcp,
        IPPROTO_UDP => Transport::Udp,
        _ => Transport::Other,
    };
    let name_len = ev
        .comm
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(ev.comm.len());
    Ok(Flow {
        time: clock.wall(ev.boot_ns),
        boot_ns: ev.boot_ns,
        cgroup_id: ev.cgroup_id,
        cgroup_path: None,
        pid: ev.tgid,
        tid: ev.tid,
        uid: ev.uid,
        gid: ev.gid,
        process_name: String::from_utf8_lossy(&ev.comm[..name_len]).into_owned(),
        process: None,
        hook,
        transport,
        dest_ip,
        dest_port: ev.dport,
        v4_mapped: ev.flags & FLAG_V4_MAPPED != 0,
        stale: ev.flags & residency_common::FLAG_STALE != 0,
        verdict,
        rule_id: ev.rule_id,
        dest_kind,
        country: CountryCode::from_index(ev.country),
        geo_gen: ev.geo_gen,
        geo_version: None,
        detail: None,
        policy: ev.policy,
        policy_gen: ev.policy_gen,
        policy_view: None,
        name: None,
        cookie: ev.cookie,
        pod: None,
        flow_id: flow_id(ev.cookie, ev.flow),
        totals: None,
    })
}

/// The first 8 hex digits of the kernel's boot id: socket cookies count
/// from boot, so the flow id needs it to be unique across reboots.
fn boot_prefix() -> &'static str {
    static BOOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map_or_else(
            |_| "00000000".to_owned(),
            |s| s.chars().filter(char::is_ascii_hexdigit).take(8).collect(),
        )
    })
}

/// `<boot>-<cookie>-<n>`, or none when the kernel does not follow the
/// flow (`n` 0).
fn flow_id(cookie: u64, n: u32) -> Option<Arc<str>> {
    (n != 0).then(|| Arc::from(format!("{}-{cookie}-{n}", boot_prefix())))
}

/// A kernel record with no flow to total (the kernel never writes one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("flow totals without a flow number")]
pub struct NoFlow;

/// What the writer remembers of a live flow between its records: the
/// totals last written (a report two CPUs made at once is then counted
/// once) and the name its decision was explained with (a week later the
/// answer that named it has expired).
#[derive(Debug, Clone, Default)]
pub struct FlowMemo {
    last: residency_record::FlowCounts,
    name: Option<Box<residency_record::DestName>>,
}

/// Live flows the writer remembers, at most (an older flow's next
/// totals then rely on the kernel's own "previous").
const FLOW_MEMOS: usize = 16_384;

fn counts(t: &residency_common::FlowTotals) -> residency_record::FlowCounts {
    residency_record::FlowCounts {
        bytes_out: t.bytes_out,
        bytes_in: t.bytes_in,
        packets_out: t.packets_out,
        packets_in: t.packets_in,
        calls: t.calls,
    }
}

/// The larger of each count.
fn newest(
    a: residency_record::FlowCounts,
    b: residency_record::FlowCounts,
) -> residency_record::FlowCounts {
    residency_record::FlowCounts {
        bytes_out: a.bytes_out.max(b.bytes_out),
        bytes_in: a.bytes_in.max(b.bytes_in),
        packets_out: a.packets_out.max(b.packets_out),
        packets_in: a.packets_in.max(b.packets_in),
        calls: a.calls.max(b.calls),
    }
}

/// Builds a flow's totals record from a kernel report: the decision as
/// it began, with what moved since.
///
/// # Errors
/// As [`decode`], or [`NoFlow`].
pub fn decode_totals(
    ev: &residency_common::FlowEvent,
    clock: &Clock,
    memos: &mut lru::LruCache<(u64, u32), FlowMemo>,
) -> Result<(Flow, Option<Box<residency_record::DestName>>), String> {
    use residency_record::{FlowReport, FlowStage};
    let d = &ev.decision;
    if d.flow == 0 {
        return Err(NoFlow.to_string());
    }
    let mut flow = decode(d, clock).map_err(|e| e.to_string())?;
    let start = flow.time;
    flow.time = clock.wall(ev.boot_ns);
    let stage = match ev.stage {
        residency_common::FLOW_UPDATE => FlowStage::Update,
        residency_common::FLOW_END => FlowStage::Closed,
        residency_common::FLOW_SUPERSEDED => FlowStage::Superseded,
        other => return Err(format!("unknown flow stage {other}")),
    };
    let key = (d.cookie, d.flow);
    let totals = counts(&ev.totals);
    let memo = if stage.ended() {
        memos.pop(&key)
    } else {
        memos.get(&key).cloned()
    };
    let base = newest(
        counts(&ev.previous),
        memo.as_ref().map(|m| m.last).unwrap_or_default(),
    );
    let name = memo.and_then(|m| m.name);
    if !stage.ended() {
        memos.put(
            key,
            FlowMemo {
                last: newest(base, totals),
                name: name.clone(),
            },
        );
    }
    let tcp = flow.transport == Transport::Tcp;
    flow.totals = Some(Box::new(FlowReport {
        stage,
        start,
        established_after_ns: (tcp && ev.established_ns != 0)
            .then(|| ev.established_ns.saturating_sub(d.boot_ns)),
        tcp_state: if tcp {
            residency_record::tcp_state_str(ev.tcp_state)
        } else {
            None
        },
        totals,
        delta: totals.since(&base),
    }));
    Ok((flow, name))
}

/// A new memo store for [`decode_totals`].
#[must_use]
pub fn flow_memos() -> lru::LruCache<(u64, u32), FlowMemo> {
    lru::LruCache::new(
        std::num::NonZeroUsize::new(FLOW_MEMOS).unwrap_or(std::num::NonZeroUsize::MIN),
    )
}

/// Remembers a decision's name for its flow's later totals records.
pub fn remember_decision(
    memos: &mut lru::LruCache<(u64, u32), FlowMemo>,
    flow: &Flow,
    ev: &ConnectEvent,
) {
    if ev.flow != 0 {
        memos.put(
            (ev.cookie, ev.flow),
            FlowMemo {
                last: residency_record::FlowCounts::default(),
                name: flow.name.clone(),
            },
        );
    }
}

/// Adds the `GeoIP` detail: from the generation the kernel consulted, or
/// the newest one for destinations a rule decided. Local destinations get
/// none (there is nothing to say about 10.0.0.1 in a country database).
fn add_geo(flow: &mut Flow, registry: &Registry, cache: &mut DetailCache) {
    if flow.dest_kind == DestKind::Local {
        return;
    }
    let Some(generation) = registry.get(flow.geo_gen) else {
        return;
    };
    flow.detail = Some(cache.get(&generation, flow.dest_ip));
    flow.geo_version = Some(generation.version.clone());
}

#[cfg(test)]
mod tests {
    use residency_common::{EventHeader, EventKind};

    use super::*;

    fn event(family: u8, daddr: [u8; 16]) -> ConnectEvent {
        ConnectEvent {
            header: EventHeader {
                kind: EventKind::Connect as u32,
                size: 96,
            },
            boot_ns: 1_000_000_000,
            cgroup_id: 5,
            tgid: 10,
            tid: 11,
            uid: 65534,
            gid: 65534,
            rule_id: 0,
            geo_gen: 3,
            dport: 8080,
            country: "US".parse::<CountryCode>().unwrap().index(),
            family,
            protocol: IPPROTO_UDP,
            hook: Hook::Sendmsg6 as u8,
            verdict: Verdict::Flagged as u8,
            flags: FLAG_V4_MAPPED,
            dest_kind: DestKind::Geo as u8,
            policy: 0,
            daddr,
            comm: *b"a\xffb\0\0\0\0\0\0\0\0\0\0\0\0\0",
            policy_gen: 1,
            cookie: 0,
            name_stamp: 0,
            name_stamp2: 0,
            name_pattern: 0,
            name_state: 0,
            _pad: [0; 3],
            flow: 0,
            _pad2: 0,
        }
    }

    #[test]
    fn decodes_v4_v6_and_names() {
        let clock = Clock {
            realtime_minus_boot_ns: 1_700_000_000_000_000_000,
        };
        let mut d = [0u8; 16];
        d[..4].copy_from_slice(&[10, 1, 2, 3]);
        let f = decode(&event(AF_INET, d), &clock).unwrap();
        assert_eq!(f.dest_ip, "10.1.2.3".parse::<IpAddr>().unwrap());
        assert_eq!(f.transport, Transport::Udp);
        assert_eq!(f.verdict, Verdict::Flagged);
        assert!(f.v4_mapped);
        assert_eq!(
            f.process_name, "a\u{fffd}b",
            "non-UTF-8 comm is replaced, not dropped"
        );
        assert_eq!(f.time.as_nanosecond(), 1_700_000_001_000_000_000);
        assert_eq!(f.country, Some("US".parse().unwrap()));
        assert_eq!((f.dest_kind, f.geo_gen), (DestKind::Geo, 3));

        let v6: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let f = decode(&event(AF_INET6, v6.octets()), &clock).unwrap();
        assert_eq!(f.dest_ip, IpAddr::V6(v6));
    }

    #[test]
    fn refuses_unknown_numbers() {
        let clock = Clock::now();
        assert_eq!(
            decode(&event(7, [0; 16]), &clock),
            Err(EnrichError::Family(7))
        );
        let mut ev = event(AF_INET, [0; 16]);
        ev.verdict = 0;
        assert_eq!(decode(&ev, &clock), Err(EnrichError::Verdict(0)));
        ev.verdict = 1;
        ev.hook = 9;
        assert_eq!(decode(&ev, &clock), Err(EnrichError::Hook(9)));
    }

    fn totals_event(
        stage: u8,
        totals: (u64, u64),
        previous: (u64, u64),
    ) -> residency_common::FlowEvent {
        let mut decision = event(AF_INET, [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        decision.protocol = IPPROTO_TCP;
        decision.cookie = 77;
        decision.flow = 2;
        let t = |(o, i): (u64, u64)| residency_common::FlowTotals {
            bytes_out: o,
            bytes_in: i,
            packets_out: 1,
            packets_in: 1,
            calls: 1,
        };
        residency_common::FlowEvent {
            header: EventHeader {
                kind: EventKind::Flow as u32,
                size: 248,
            },
            boot_ns: 3_000_000_000,
            decision,
            totals: t(totals),
            previous: t(previous),
            established_ns: 1_000_050_000,
            stage,
            tcp_state: 1,
            _pad: [0; 6],
        }
    }

    #[test]
    fn totals_carry_the_decision_and_count_each_byte_once() {
        use residency_common::{FLOW_END, FLOW_UPDATE};
        use residency_record::FlowStage;
        let clock = Clock {
            realtime_minus_boot_ns: 1_700_000_000_000_000_000,
        };
        let mut memos = flow_memos();
        let (f, _) = decode_totals(
            &totals_event(FLOW_UPDATE, (100, 10), (0, 0)),
            &clock,
            &mut memos,
        )
        .unwrap();
        let r = f.totals.as_deref().unwrap();
        assert_eq!(r.stage, FlowStage::Update);
        assert_eq!((r.delta.bytes_out, r.delta.bytes_in), (100, 10));
        assert_eq!(r.established_after_ns, Some(50_000));
        assert_eq!(r.tcp_state, Some("established"));
        assert_eq!(f.time.as_nanosecond(), 1_700_000_003_000_000_000);
        assert_eq!(r.start.as_nanosecond(), 1_700_000_001_000_000_000);
        assert!(f.flow_id.as_deref().unwrap().ends_with("-77-2"));
        // Two CPUs reported the same totals at once: the second adds nothing.
        let (f, _) = decode_totals(
            &totals_event(FLOW_UPDATE, (100, 10), (0, 0)),
            &clock,
            &mut memos,
        )
        .unwrap();
        assert_eq!(f.totals.as_deref().unwrap().delta.bytes_out, 0);
        // The end adds what moved since, and forgets the flow.
        let (f, _) = decode_totals(
            &totals_event(FLOW_END, (250, 40), (100, 10)),
            &clock,
            &mut memos,
        )
        .unwrap();
        let r = f.totals.as_deref().unwrap();
        assert_eq!(
            (r.stage, r.delta.bytes_out, r.delta.bytes_in),
            (FlowStage::Closed, 150, 30)
        );
        assert!(memos.is_empty());
        // Without the writer's memory (a restart), the kernel's previous
        // totals give the delta.
        let (f, _) = decode_totals(
            &totals_event(FLOW_END, (250, 40), (200, 40)),
            &clock,
            &mut memos,
        )
        .unwrap();
        assert_eq!(f.totals.as_deref().unwrap().delta.bytes_out, 50);
        // A stage this build does not know is refused, in words.
        let e = decode_totals(&totals_event(9, (1, 1), (0, 0)), &clock, &mut memos).unwrap_err();
        assert!(e.contains("stage 9"), "{e}");
    }

    #[test]
    fn clock_tracks_realtime() {
        let c = Clock::now();
        let boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).unwrap();
        let boot_ns = u64::try_from(boot.tv_sec()).unwrap() * 1_000_000_000
            + u64::try_from(boot.tv_nsec()).unwrap();
        let skew = c.wall(boot_ns).duration_since(jiff::Timestamp::now()).abs();
        assert!(skew < jiff::SignedDuration::from_secs(2), "skew {skew:?}");
    }
}
