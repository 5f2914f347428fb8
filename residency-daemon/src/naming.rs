//! The names on records: the DNS answers and TLS `ClientHello`s the kernel
//! copied, parsed (`residency-names`) and kept per workload, then attached
//! to each flow as the kernel judged it.
//!
//! The kernel decides by the pattern its own DNS parse found; the flow
//! record says which answer that was (its stamp), so the name written is
//! exactly the one that judged, even when the address has several.

use std::sync::Arc;

use residency_catalog::{Catalog, Endpoint, Jurisdiction};
use residency_common::{ConnectEvent, NAME_EXPIRED, NAME_FOUND, NAME_NONE};
use residency_names::{Framing, Hello, NameCache, NameCacheConfig, ParseStats};
use residency_record::{DestName, EndpointInfo, Flow, NameSource, Record};
use tracing::debug;

use crate::kernel::{DnsAnswerBytes, TlsBytes};

/// Why no name is known for a destination.
pub const NO_ANSWER: &str = "no DNS answer this workload received named this address: a \
     hard-coded address, /etc/hosts, DNS over HTTPS or TLS, or an answer cached before \
     residency started";
/// Why a name the kernel once had is not used.
pub const EXPIRED: &str = "the DNS answers that named this address for this workload are older than their TTL \
     (and names.min_ttl_secs)";
/// The kernel judged by a name whose answer the daemon did not get.
pub const MISSED: &str = "the kernel judged by a DNS answer whose copy did not reach the \
     daemon (ring buffer full): the name is not known here";

/// Connections whose `ClientHello` is being put together, at most.
const HELLOS: usize = 4096;

/// Names per workload, and `ClientHello`s in progress.
pub struct Namer {
    cache: NameCache,
    stats: ParseStats,
    /// Socket cookie -> the connection's flow (for the TLS record) and the
    /// bytes so far.
    hellos: lru::LruCache<u64, Partial>,
    /// Watched TCP connections, by cookie, until their hello: what the
    /// TLS record says of the flow.
    flows: lru::LruCache<u64, Watched>,
    /// Catalog entries as records cite them, built once per entry (per
    /// catalog: a reload brings another).
    endpoints: std::collections::HashMap<u32, Arc<EndpointInfo>>,
    /// The catalog `endpoints` was built from (held, so that its address
    /// cannot be another catalog's).
    endpoints_of: Option<Arc<Catalog>>,
}

/// What a `tls-server-name` record says of the connection's flow.
struct Watched {
    resolved: Option<String>,
    pid: u32,
    process: String,
    dest_ip: std::net::IpAddr,
    dest_port: u16,
    boot_ns: u64,
    pod: Option<Arc<residency_record::PodInfo>>,
}

/// A `ClientHello` being put together.
struct Partial {
    bytes: Vec<u8>,
}

impl Namer {
    #[must_use]
    pub fn new(min_ttl_secs: u64, capacity: usize) -> Self {
        let config = NameCacheConfig {
            capacity,
            min_ttl: std::time::Duration::from_secs(min_ttl_secs),
            ..NameCacheConfig::default()
        };
        let cap = std::num::NonZeroUsize::new(HELLOS).unwrap_or(std::num::NonZeroUsize::MIN);
        Namer {
            cache: NameCache::new(&config),
            stats: ParseStats::default(),
            hellos: lru::LruCache::new(cap),
            flows: lru::LruCache::new(cap),
            endpoints: std::collections::HashMap::new(),
            endpoints_of: None,
        }
    }

    /// A catalog entry as records cite it, shared by every record that
    /// cites it.
    fn cite(&mut self, catalog: &Arc<Catalog>, e: &Endpoint) -> Arc<EndpointInfo> {
        if !self
            .endpoints_of
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, catalog))
        {
            self.endpoints.clear();
            self.endpoints_of = Some(catalog.clone());
        }
        self.endpoints
            .entry(e.pattern.id())
            .or_insert_with(|| endpoint_info(e))
            .clone()
    }

    /// Parse counters, for metrics.
    #[must_use]
    pub fn stats(&self) -> &ParseStats {
        &self.stats
    }

    /// Names kept.
    #[must_use]
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether no name is kept.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Keeps the names of a DNS answer for its workload. A garbage answer
    /// is counted and dropped; it changes nothing else. Whether it was used.
    pub fn answer(&mut self, ev: &DnsAnswerBytes) -> bool {
        let framing = if ev.tcp { Framing::Tcp } else { Framing::Udp };
        // The kernel copied the message without the TCP length prefix.
        let parsed = if ev.tcp {
            let mut framed = Vec::with_capacity(ev.msg.len() + 2);
            framed.extend_from_slice(&u16::try_from(ev.msg_len).unwrap_or(u16::MAX).to_be_bytes());
            framed.extend_from_slice(&ev.msg);
            residency_names::parse_dns(&framed, framing)
        } else {
            residency_names::parse_dns(&ev.msg, framing)
        };
        self.stats.count_dns(&parsed);
        match parsed {
            Ok(answer) => {
                self.cache.insert(ev.cgroup_id, &answer, ev.boot_ns);
                true
            }
            Err(e) => {
                debug!(cgroup = ev.cgroup_id, "DNS answer not used: {e}");
                false
            }
        }
    }

    /// The name behind a flow, as the kernel judged it.
    pub fn name_flow(
        &mut self,
        flow: &mut Flow,
        ev: &ConnectEvent,
        catalog: Option<&Arc<Catalog>>,
    ) {
        let name = match ev.name_state {
            NAME_NONE => DestName::unknown(NO_ANSWER),
            NAME_EXPIRED => DestName::unknown(EXPIRED),
            NAME_FOUND => {
                let found = self
                    .cache
                    .get_by_stamp(flow.cgroup_id, flow.dest_ip, ev.name_stamp)
                    .map(|c| (c.name.clone(), c.chain.clone()));
                let also = if ev.name_stamp2 == 0 {
                    Vec::new()
                } else {
                    self.cache
                        .get_by_stamp(flow.cgroup_id, flow.dest_ip, ev.name_stamp2)
                        .map(|c| vec![c.name.clone()])
                        .unwrap_or_default()
                };
                if let Some((name, chain)) = found {
                    let endpoint = catalog
                        .and_then(|c| Some((c, c.lookup(&name)?)))
                        .map(|(c, e)| self.cite(c, e));
                    DestName {
                        endpoint,
                        cnames: chain.into_iter().skip(1).collect(),
                        also,
                        name: Some(name),
                        source: NameSource::Dns,
                        reason: None,
                        sni: None,
                    }
                } else {
                    let mut n = DestName::unknown(MISSED);
                    n.endpoint = catalog
                        .and_then(|c| Some((c, c.by_pattern_id(ev.name_pattern)?)))
                        .map(|(c, e)| self.cite(c, e));
                    n.also = also;
                    n
                }
            }
            // Names are not tracked.
            _ => return,
        };
        if ev.flags & residency_common::FLAG_TLS_WATCHED != 0 {
            self.flows.put(
                flow.cookie,
                Watched {
                    resolved: name.name.clone(),
                    pid: flow.pid,
                    process: flow.process_name.clone(),
                    dest_ip: flow.dest_ip,
                    dest_port: flow.dest_port,
                    boot_ns: flow.boot_ns,
                    pod: flow.pod.clone(),
                },
            );
        }
        flow.name = Some(Box::new(name));
    }

    /// The first bytes of a watched connection: once they hold a whole
    /// `ClientHello`, the record that says its server name.
    pub fn tls(&mut self, ev: &TlsBytes, catalog: Option<&Catalog>) -> Option<Record> {
        let entry = self
            .hellos
            .get_or_insert_mut(ev.cookie, || Partial { bytes: Vec::new() });
        if usize::try_from(ev.offset).ok() != Some(entry.bytes.len()) {
            // A retransmission or a gap: what follows cannot be joined.
            self.hellos.pop(&ev.cookie);
            return None;
        }
        entry.bytes.extend_from_slice(&ev.data);
        let parsed = residency_names::parse_client_hello(&entry.bytes);
        self.stats.count_hello(&parsed);
        let hello = match parsed {
            Ok(Hello::NeedMore { .. }) => return None,
            Ok(Hello::Complete(h)) => h,
            Ok(Hello::NotTls) | Err(_) => {
                self.hellos.pop(&ev.cookie);
                self.flows.pop(&ev.cookie);
                return None;
            }
        };
        self.hellos.pop(&ev.cookie);
        let flow = self.flows.pop(&ev.cookie);
        let sni = hello.sni?;
        Some(server_name_record(flow.as_ref(), ev, &sni, catalog))
    }
}

/// The `tls-server-name` record: the server name, the resolved name, and
/// whether the catalog judges them differently.
fn server_name_record(
    flow: Option<&Watched>,
    ev: &TlsBytes,
    sni: &str,
    catalog: Option<&Catalog>,
) -> Record {
    let resolved = flow.and_then(|f| f.resolved.clone());
    let sni_endpoint = catalog.and_then(|c| c.lookup(sni));
    let resolved_endpoint = resolved
        .as_deref()
        .and_then(|n| catalog.and_then(|c| c.lookup(n)));
    let jurisdiction = |e: Option<&Endpoint>| e.map(|e| e.jurisdiction.to_string());
    // Flagged when the two names are judged by different jurisdictions:
    // the data goes where the server name says, not where the DNS name did.
    let differs = match (&resolved, resolved_endpoint, sni_endpoint) {
        (Some(r), _, _) if r == sni => false,
        (_, Some(a), Some(b)) => a.jurisdiction.to_string() != b.jurisdiction.to_string(),
        (_, None, Some(_)) | (_, Some(_), None) => true,
        (_, None, None) => false,
    };
    let message = if differs {
        format!(
            "flagged: TLS server name {sni} is judged by another jurisdiction ({}) than the \
             resolved name {} ({})",
            jurisdiction(sni_endpoint).unwrap_or_else(|| "GeoIP".into()),
            resolved.as_deref().unwrap_or("(none)"),
            jurisdiction(resolved_endpoint).unwrap_or_else(|| "GeoIP".into()),
        )
    } else {
        format!("TLS server name {sni}")
    };
    let fields = serde_json::json!({
        "socket_cookie": ev.cookie,
        "cgroup": { "id": ev.cgroup_id },
        "tls": { "server_name": sni },
        "resolved_name": resolved,
        "flagged": differs,
        "sni_endpoint": sni_endpoint.map(|e| serde_json::json!({
            "id": e.id, "provider": e.provider, "service": e.service,
            "jurisdiction": e.jurisdiction.to_string(), "source": e.source,
        })),
        "flow": flow.map(|f| serde_json::json!({
            "pid": f.pid,
            "process": f.process,
            "destination": { "ip": f.dest_ip, "port": f.dest_port },
            "boot_ns": f.boot_ns,
        })),
    });
    Record::note(residency_record::Lifecycle::TlsServerName, message, fields)
        .with_pod(flow.and_then(|f| f.pod.clone()))
}

/// A catalog entry as records cite it.
#[must_use]
pub fn endpoint_info(e: &Endpoint) -> Arc<EndpointInfo> {
    let (jurisdiction, countries) = match &e.jurisdiction {
        Jurisdiction::Countries { countries, names } => {
            (names.clone(), countries.iter().collect::<Vec<_>>())
        }
        Jurisdiction::Global => (vec!["GLOBAL".to_owned()], Vec::new()),
        Jurisdiction::Unknown => (vec!["UNKNOWN".to_owned()], Vec::new()),
    };
    Arc::new(EndpointInfo {
        id: e.id.clone(),
        pattern: e.pattern.to_string(),
        provider: e.provider.clone(),
        service: e.service.clone(),
        jurisdiction,
        countries,
        determines_region: e.determines_region,
        source: e.source.clone(),
        origin: e.origin.as_str(),
    })
}
