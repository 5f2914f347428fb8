use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use hickory_proto::rr::RecordType;
use residency_names::{DnsAnswer, Framing, NameCache, NameCacheConfig, parse_dns};

use crate::wire::{a, bytes, cname, response, v4};

const SEC: u64 = 1_000_000_000;

fn answer(qname: &str, ttl: u32, ip: Ipv4Addr) -> DnsAnswer {
    let msg = response(1, qname, RecordType::A, vec![a(qname, ttl, ip)]);
    parse_dns(&bytes(&msg), Framing::Udp).unwrap()
}

fn config(capacity: usize, min_ttl: u64) -> NameCacheConfig {
    NameCacheConfig {
        capacity,
        min_ttl: Duration::from_secs(min_ttl),
        ..NameCacheConfig::default()
    }
}

fn names(cache: &mut NameCache, cgroup: u64, addr: IpAddr, now: u64) -> Vec<String> {
    cache
        .names(cgroup, addr, now)
        .into_iter()
        .map(|n| n.name.clone())
        .collect()
}

#[test]
fn default_floor_is_an_hour() {
    assert_eq!(NameCacheConfig::default().min_ttl, Duration::from_hours(1));
}

#[test]
fn expiry_with_a_floor() {
    let ip = Ipv4Addr::new(192, 0, 2, 1);
    let mut cache = NameCache::new(&config(16, 60));
    let t0 = 1_000 * SEC;
    // TTL 10 s, floor 60 s: kept for 60 s.
    cache.insert(7, &answer("short.example.", 10, ip), t0);
    // TTL 600 s: above the floor, kept for 600 s.
    cache.insert(8, &answer("long.example.", 600, ip), t0);
    let addr = IpAddr::V4(ip);
    assert_eq!(names(&mut cache, 7, addr, t0 + 59 * SEC), ["short.example"]);
    assert!(names(&mut cache, 7, addr, t0 + 60 * SEC).is_empty());
    assert_eq!(names(&mut cache, 8, addr, t0 + 599 * SEC), ["long.example"]);
    assert!(names(&mut cache, 8, addr, t0 + 600 * SEC).is_empty());
    let n = &cache.names(8, addr, t0)[0];
    assert_eq!((n.ttl, n.stamp_ns, n.expires_ns), (600, t0, t0 + 600 * SEC));

    // An expired name is still there for the answer that a kernel decision
    // refers to, until purged.
    assert_eq!(
        cache.get_by_stamp(7, addr, t0).unwrap().name,
        "short.example"
    );
    cache.purge_expired(t0 + 100 * SEC);
    assert_eq!(cache.get_by_stamp(7, addr, t0), None);
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.stats().expired, 1);
}

#[test]
fn the_chain_is_kept_and_its_shortest_link_counts() {
    let msg = response(
        1,
        "www.shop.example.",
        RecordType::A,
        vec![
            cname("www.shop.example.", 3600, "shop.cdn.example."),
            cname("shop.cdn.example.", 30, "e1.edge.example."),
            a("e1.edge.example.", 300, Ipv4Addr::new(198, 51, 100, 7)),
            a("other.example.", 300, Ipv4Addr::new(198, 51, 100, 8)),
        ],
    );
    let answer = parse_dns(&bytes(&msg), Framing::Udp).unwrap();
    let mut cache = NameCache::new(&config(16, 0));
    cache.insert(1, &answer, 0);
    let got = cache.names(1, v4("198.51.100.7"), 0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].name, "www.shop.example");
    assert_eq!(
        got[0].chain,
        ["www.shop.example", "shop.cdn.example", "e1.edge.example"]
    );
    assert_eq!(got[0].ttl, 30);
    // The address out of the chain is not stored.
    assert!(cache.names(1, v4("198.51.100.8"), 0).is_empty());
    assert_eq!(cache.stats().unattributed, 1);
    assert_eq!(cache.len(), 1);
}

#[test]
fn least_recently_used_is_evicted() {
    let mut cache = NameCache::new(&config(2, 60));
    cache.insert(
        1,
        &answer("one.example.", 60, Ipv4Addr::new(10, 0, 0, 1)),
        0,
    );
    cache.insert(
        1,
        &answer("two.example.", 60, Ipv4Addr::new(10, 0, 0, 2)),
        0,
    );
    // Using the first makes the second the least recently used.
    assert_eq!(names(&mut cache, 1, v4("10.0.0.1"), 0), ["one.example"]);
    cache.insert(
        1,
        &answer("three.example.", 60, Ipv4Addr::new(10, 0, 0, 3)),
        0,
    );
    assert_eq!(cache.len(), 2);
    assert_eq!(cache.evictions(), 1);
    assert!(names(&mut cache, 1, v4("10.0.0.2"), 0).is_empty());
    assert_eq!(names(&mut cache, 1, v4("10.0.0.1"), 0), ["one.example"]);
    assert_eq!(names(&mut cache, 1, v4("10.0.0.3"), 0), ["three.example"]);
    // Inserting again for a held pair evicts nothing.
    cache.insert(
        1,
        &answer("one.example.", 60, Ipv4Addr::new(10, 0, 0, 1)),
        5,
    );
    assert_eq!(cache.evictions(), 1);
    assert_eq!(cache.stats().entries, 2);
}

#[test]
fn one_workload_never_sees_another_workloads_names() {
    let ip = Ipv4Addr::new(203, 0, 113, 5);
    let mut cache = NameCache::new(&NameCacheConfig::default());
    cache.insert(100, &answer("tenant-a.example.", 300, ip), 10);
    assert_eq!(
        names(&mut cache, 100, IpAddr::V4(ip), 10),
        ["tenant-a.example"]
    );
    assert!(names(&mut cache, 200, IpAddr::V4(ip), 10).is_empty());
    assert_eq!(cache.get_by_stamp(200, IpAddr::V4(ip), 10), None);
    cache.insert(200, &answer("tenant-b.example.", 300, ip), 20);
    assert_eq!(
        names(&mut cache, 100, IpAddr::V4(ip), 20),
        ["tenant-a.example"]
    );
    assert_eq!(
        names(&mut cache, 200, IpAddr::V4(ip), 20),
        ["tenant-b.example"]
    );
    assert_eq!(cache.len(), 2);
}

#[test]
fn two_names_for_one_address() {
    let ip = Ipv4Addr::new(198, 51, 100, 1);
    let addr = IpAddr::V4(ip);
    let mut cache = NameCache::new(&config(16, 60));
    cache.insert(1, &answer("first.example.", 60, ip), 10 * SEC);
    cache.insert(1, &answer("second.example.", 60, ip), 20 * SEC);
    assert_eq!(
        names(&mut cache, 1, addr, 30 * SEC),
        ["second.example", "first.example"]
    );
    assert_eq!(
        cache.get_by_stamp(1, addr, 10 * SEC).unwrap().name,
        "first.example"
    );
    assert_eq!(
        cache.get_by_stamp(1, addr, 20 * SEC).unwrap().name,
        "second.example"
    );
    assert_eq!(cache.get_by_stamp(1, addr, 15 * SEC), None);
    // The first expires first.
    assert_eq!(names(&mut cache, 1, addr, 75 * SEC), ["second.example"]);
}

#[test]
fn answers_per_address_are_bounded() {
    let ip = Ipv4Addr::new(198, 51, 100, 1);
    let addr = IpAddr::V4(ip);
    let mut cache = NameCache::new(&NameCacheConfig {
        max_answers_per_address: 3,
        ..NameCacheConfig::default()
    });
    // The same name answered again and again keeps two answers, so the
    // other name stays.
    cache.insert(1, &answer("other.example.", 60, ip), 1);
    for stamp in 2..50 {
        cache.insert(1, &answer("busy.example.", 60, ip), stamp);
    }
    assert_eq!(
        names(&mut cache, 1, addr, 50),
        ["busy.example", "other.example"]
    );
    assert_eq!(
        cache.get_by_stamp(1, addr, 49).unwrap().name,
        "busy.example"
    );
    assert_eq!(
        cache.get_by_stamp(1, addr, 48).unwrap().name,
        "busy.example"
    );
    assert_eq!(cache.get_by_stamp(1, addr, 47), None);
    // Many names: the oldest answers go.
    for (i, stamp) in (100..110).enumerate() {
        cache.insert(1, &answer(&format!("n{i}.example."), 60, ip), stamp);
    }
    assert_eq!(
        names(&mut cache, 1, addr, 110),
        ["n9.example", "n8.example", "n7.example"]
    );
}
