//! The geoip crate against databases written for each test.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a bad literal in a test should panic there"
)]

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use geoip::{
    CountryCode, Database, flatten,
    layout::V4Layout,
    testdb::{Entry, Layout, address_in, build},
};
use ipnet::IpNet;
use proptest::prelude::*;

fn open(bytes: Vec<u8>) -> Database {
    Database::from_bytes(bytes, Path::new("test.mmdb")).expect("valid test database")
}

fn cc(s: &str) -> CountryCode {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn geoip2_layout_gives_every_field() {
    let db = open(build(
        Layout::GeoIp2,
        "GeoIP2-City",
        1_780_000_000,
        &[
            Entry {
                network: "81.2.69.0/24",
                country: Some("DE"),
                registered_country: Some("DE"),
                continent: Some("EU"),
                asn: Some(3320),
                as_org: Some("Deutsche Telekom AG"),
            },
            Entry {
                network: "2001:db8::/32",
                registered_country: Some("US"),
                continent: Some("NA"),
                ..Default::default()
            },
        ],
    ));
    assert_eq!(db.version().database_type, "GeoIP2-City");
    assert_eq!(db.version().build_epoch, 1_780_000_000);
    assert_eq!(db.version().label(), "GeoIP2-City@1780000000");

    let g = db.lookup(ip("81.2.69.160")).unwrap().expect("record");
    assert_eq!(g.network.to_string(), "81.2.69.0/24");
    assert_eq!(g.country, Some(cc("DE")));
    assert_eq!(g.registered_country, Some(cc("DE")));
    assert_eq!(g.continent.as_deref(), Some("EU"));
    assert_eq!(g.asn, Some(3320));
    assert_eq!(g.as_org.as_deref(), Some("Deutsche Telekom AG"));

    // Only a registered country: that is the effective one.
    let g = db.lookup(ip("2001:db8::7")).unwrap().expect("record");
    assert_eq!(g.country, None);
    assert_eq!(g.effective_country(), Some(cc("US")));

    assert_eq!(db.lookup(ip("8.8.8.8")).unwrap(), None);
}

#[test]
fn ip_location_db_layout_and_mapped_addresses() {
    let db = open(build(
        Layout::IpLocationDb,
        "country",
        1,
        &[
            Entry::country("192.0.2.0/24", "FR"),
            Entry::country("2001:db8::/48", "JP"),
        ],
    ));
    let country = |s: &str| {
        db.lookup(ip(s))
            .unwrap()
            .and_then(|g| g.effective_country())
    };
    assert_eq!(country("192.0.2.1"), Some(cc("FR")));
    assert_eq!(
        country("::ffff:192.0.2.1"),
        Some(cc("FR")),
        "mapped is judged as IPv4"
    );
    assert_eq!(country("2001:db8::1"), Some(cc("JP")));
    assert_eq!(country("2001:db8:1::1"), None);
    // ::/96 holds the IPv4 tree in a MaxMind DB; an IPv6 address there
    // (::1, ::c000:201) must not borrow an IPv4 record.
    assert_eq!(country("::c000:201"), None);
}

#[test]
fn pseudo_codes_are_no_country_and_are_counted() {
    let db = open(build(
        Layout::IpLocationDb,
        "country",
        1,
        &[
            Entry::country("10.0.0.0/8", "EU"),
            Entry::country("11.0.0.0/8", "ZZ"),
            Entry::country("12.0.0.0/8", "SE"),
        ],
    ));
    assert_eq!(db.lookup(ip("10.1.1.1")).unwrap().unwrap().country, None);
    let t = flatten(&db).unwrap();
    assert_eq!(t.stats.unknown_codes.get("EU"), Some(&1));
    assert_eq!(t.stats.unknown_codes.get("ZZ"), Some(&1));
    assert_eq!(t.v4.len(), 1);
    assert_eq!(t.lookup(ip("10.1.1.1")), None);
    assert_eq!(t.lookup(ip("12.1.1.1")), Some(cc("SE")));
}

#[test]
fn flattening_merges_neighbours_with_the_same_country() {
    // Four /26 of one /24, three of them DE (with different ASNs, as real
    // data has), one FR; and a DE /24 right after.
    let e = |network, country, asn| Entry {
        network,
        country: Some(country),
        asn: Some(asn),
        ..Default::default()
    };
    let db = open(build(
        Layout::GeoIp2,
        "t",
        1,
        &[
            e("198.51.100.0/26", "DE", 1),
            e("198.51.100.64/26", "DE", 2),
            e("198.51.100.128/26", "FR", 3),
            e("198.51.100.192/26", "DE", 4),
            e("198.51.101.0/24", "DE", 5),
        ],
    ));
    let t = flatten(&db).unwrap();
    assert_eq!(t.stats.networks_v4, 5);
    let got: Vec<String> = t.v4.iter().map(|(n, c)| format!("{n} {c}")).collect();
    assert_eq!(
        got,
        [
            "198.51.100.0/25 DE",
            "198.51.100.128/26 FR",
            "198.51.100.192/26 DE",
            "198.51.101.0/24 DE",
        ]
    );
    assert_eq!(t.stats.prefixes_v4, 4);
}

#[test]
fn bad_files_are_refused_with_a_clear_error() {
    let missing = Database::open(Path::new("/nonexistent/x.mmdb")).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("cannot open GeoIP database /nonexistent/x.mmdb"),
        "{missing}"
    );
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.mmdb");
    std::fs::write(&text, "this is not a database\n").unwrap();
    let err = Database::open(&text).unwrap_err();
    assert!(
        err.to_string().contains("is not a usable MaxMind DB file"),
        "{err}"
    );
    let good = build(
        Layout::GeoIp2,
        "t",
        1,
        &[Entry::country("10.0.0.0/8", "DE")],
    );
    let cut =
        Database::from_bytes(good[..good.len() / 2].to_vec(), Path::new("cut.mmdb")).unwrap_err();
    assert!(cut.to_string().contains("cut.mmdb"), "{cut}");
}

const COUNTRIES: [&str; 6] = ["DE", "FR", "US", "JP", "BR", "NO"];

fn arb_entry() -> impl Strategy<Value = (IpNet, usize, u8)> {
    let v4 = (any::<u32>(), 8u8..=32).prop_map(|(a, p)| {
        IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), p)
            .unwrap()
            .trunc()
    });
    let v6 = (any::<u128>(), 16u8..=64).prop_map(|(a, p)| {
        // Stay out of ::/96 (the IPv4 subtree) and its aliases.
        let mut a = (a | (1u128 << 125)) & !(1u128 << 126);
        // And out of 6to4 (2002::/16) and Teredo (2001::/32), which the
        // writer refuses as aliases of the IPv4 subtree: move them next door.
        if a >> 112 == 0x2002 || a >> 96 == 0x2001_0000 {
            a ^= 1u128 << 112;
        }
        IpNet::new(IpAddr::V6(a.into()), p).unwrap().trunc()
    });
    // Kinds: 0 located, 1 registered only, 2 a pseudo-code located and a
    // real registered country, 3 a pseudo-code only.
    (prop_oneof![3 => v4, 1 => v6], 0..COUNTRIES.len(), 0u8..4)
}

fn entry(network: &'static str, country: &'static str, kind: u8) -> Entry {
    match kind {
        0 => Entry::country(network, country),
        1 => Entry {
            network,
            registered_country: Some(country),
            ..Default::default()
        },
        2 => Entry {
            network,
            country: Some("EU"),
            registered_country: Some(country),
            ..Default::default()
        },
        _ => Entry {
            network,
            country: Some("ZZ"),
            ..Default::default()
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every sampled address gets the same country from the flattened
    /// table, from the kernel's IPv4 layout, and from the database itself.
    #[test]
    fn flattened_tables_agree_with_the_database(
        entries in proptest::collection::vec(arb_entry(), 1..40),
        seeds in proptest::collection::vec(any::<u128>(), 64),
    ) {
        let leaked: Vec<Entry> = entries
            .iter()
            .map(|(net, c, kind)| entry(Box::leak(net.to_string().into_boxed_str()), COUNTRIES[*c], *kind))
            .collect();
        let db = open(build(Layout::GeoIp2, "t", 1, &leaked));
        let tables = flatten(&db).unwrap();
        let layout = V4Layout::build(&tables.v4).unwrap();

        prop_assert!(tables.v4.windows(2).all(|w| w[0].0.broadcast() < w[1].0.network()), "sorted, disjoint");
        prop_assert!(tables.v6.windows(2).all(|w| w[0].0.broadcast() < w[1].0.network()), "sorted, disjoint");

        let mut samples: Vec<IpAddr> = Vec::new();
        for (i, seed) in seeds.iter().enumerate() {
            let (net, _, _) = entries[i % entries.len()];
            samples.push(address_in(net, *seed));
            #[expect(clippy::cast_possible_truncation, reason = "any 32 bits will do")]
            samples.push(IpAddr::V4(Ipv4Addr::from(*seed as u32)));
        }
        for a in samples {
            let want = db.lookup(a).unwrap().and_then(|g| g.effective_country());
            prop_assert_eq!(tables.lookup(a), want, "flattened table at {}", a);
            if let IpAddr::V4(v4) = a {
                prop_assert_eq!(CountryCode::from_index(layout.lookup(v4)), want, "v4 layout at {}", a);
            }
        }
    }

    /// Damaged files never panic: they are refused, or, if the damage is
    /// where verification cannot see it, lookups and flattening still return.
    #[test]
    fn damaged_files_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..16),
        cut in any::<Option<usize>>(),
    ) {
        let mut bytes = build(
            Layout::GeoIp2,
            "t",
            1,
            &[
                Entry { network: "10.0.0.0/8", country: Some("DE"), asn: Some(1), as_org: Some("x"), ..Default::default() },
                Entry::country("2001:db8::/32", "US"),
                Entry::country("192.0.2.0/28", "FR"),
            ],
        );
        for (at, byte) in flips {
            let i = at % bytes.len();
            bytes[i] = byte;
        }
        if let Some(c) = cut {
            bytes.truncate(c % (bytes.len() + 1));
        }
        if let Ok(db) = Database::from_bytes(bytes, Path::new("damaged.mmdb")) {
            for a in ["10.1.2.3", "192.0.2.5", "2001:db8::1", "8.8.8.8", "::1"] {
                let _ = db.lookup(ip(a));
            }
            let _ = flatten(&db);
        }
    }
}

/// An open database keeps answering when its file is rewritten in place
/// (`cp` over it, truncation): it reads from its own sealed copy. Mapping
/// the file directly would fault (SIGBUS) on the first read past the new
/// end, killing the process.
#[test]
fn rewriting_the_file_in_place_does_not_disturb_an_open_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.mmdb");
    let nets: Vec<String> = (0..3000u32)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    // Distinct ASNs keep the writer from merging the networks.
    let entries: Vec<Entry> = nets
        .iter()
        .zip(1u32..)
        .map(|(n, asn)| Entry {
            network: Box::leak(n.clone().into_boxed_str()),
            country: Some(if n.ends_with(".7.0/24") { "FR" } else { "DE" }),
            asn: Some(asn),
            ..Default::default()
        })
        .collect();
    geoip::testdb::write(&path, Layout::IpLocationDb, "t", 1, &entries);
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 4 * 4096, "bigger than a few pages: {size}");
    let db = Database::open(&path).unwrap();
    // Rewrite in place, as `cp` or a careless updater would.
    std::fs::write(&path, b"x").unwrap();
    for i in (0..3000u32).step_by(97) {
        let a: IpAddr = format!("10.{}.{}.1", i / 256, i % 256).parse().unwrap();
        let want = if i % 256 == 7 { "FR" } else { "DE" };
        assert_eq!(
            db.lookup(a).unwrap().and_then(|g| g.country),
            Some(cc(want)),
            "{a}"
        );
    }
    assert!(flatten(&db).is_ok());
}
