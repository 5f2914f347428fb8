//! Random and mutated inputs: no panic, no hang, and every result keeps
//! the invariants. Seeded, so a failure reproduces; the seed of the failing
//! input is in the message.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use hickory_proto::rr::RecordType;
use residency_names::{
    DnsAnswer, Framing, Hello, MAX_ADDRESSES, MAX_ALPN, MAX_CNAMES, MAX_HELLO, MAX_NAME_LEN,
    NameCache, NameCacheConfig, parse_client_hello, parse_dns,
};

use crate::wire::{
    Wire, a, aaaa, alpn, bytes, client_hello, cname, hand_hello, response, sni, tcp,
};

const RANDOM: usize = 100_000;
const MUTATIONS: usize = 100_000;

/// splitmix64: small, seeded, good enough to spread bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }
}

fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.ends_with('.')
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

fn check_dns(answer: &DnsAnswer, context: &str) {
    assert!(
        is_host_name(&answer.qname),
        "{context}: qname {:?}",
        answer.qname
    );
    assert!(answer.addresses.len() <= MAX_ADDRESSES, "{context}");
    assert!(answer.cnames.len() <= MAX_CNAMES, "{context}");
    assert!(answer.chain.len() <= MAX_CNAMES + 1, "{context}");
    assert_eq!(answer.chain.first(), Some(&answer.qname), "{context}");
    for r in &answer.addresses {
        assert!(is_host_name(&r.owner), "{context}: owner {:?}", r.owner);
        assert_eq!(r.in_chain, answer.chain.contains(&r.owner), "{context}");
        assert!(r.ttl <= 0x7fff_ffff, "{context}");
    }
    for c in &answer.cnames {
        assert!(
            is_host_name(&c.owner) && is_host_name(&c.target),
            "{context}: {c:?}"
        );
    }
    for n in &answer.chain {
        assert!(is_host_name(n), "{context}: chain {n:?}");
    }
}

fn check_hello(data: &[u8], context: &str) {
    match parse_client_hello(data) {
        Ok(Hello::Complete(hello)) => {
            if let Some(sni) = &hello.sni {
                assert!(is_host_name(sni), "{context}: sni {sni:?}");
            }
            assert!(hello.alpn.len() <= MAX_ALPN, "{context}");
        }
        Ok(Hello::NeedMore { total_len }) => {
            assert!(
                total_len > data.len(),
                "{context}: {total_len} <= {}",
                data.len()
            );
            assert!(total_len <= MAX_HELLO, "{context}: {total_len}");
        }
        Ok(Hello::NotTls) | Err(_) => {}
    }
}

fn check_all(data: &[u8], context: &str, cache: &mut NameCache) {
    for framing in [Framing::Udp, Framing::Tcp] {
        if let Ok(answer) = parse_dns(data, framing) {
            check_dns(&answer, context);
            cache.insert(1, &answer, 0);
        }
    }
    check_hello(data, context);
}

fn dns_corpus() -> Vec<Vec<u8>> {
    let mut corpus = vec![
        bytes(&response(
            1,
            "www.shop.example.",
            RecordType::A,
            vec![
                cname("www.shop.example.", 3600, "shop.cdn.example."),
                cname("shop.cdn.example.", 600, "edge.cdn2.example."),
                cname("edge.cdn2.example.", 120, "e1.edge.example."),
                a("e1.edge.example.", 20, Ipv4Addr::new(198, 51, 100, 7)),
                aaaa("e1.edge.example.", 20, Ipv6Addr::LOCALHOST),
            ],
        )),
        bytes(&response(
            2,
            "many.example.",
            RecordType::A,
            (0..40u8)
                .map(|i| a("many.example.", 30, Ipv4Addr::new(10, 0, 0, i)))
                .collect(),
        )),
    ];
    let mut w = Wire::response("x.example", [2, 1, 1]);
    w.ptr(12).rr(1, 60, &[192, 0, 2, 1]);
    w.ptr(12).rr(5, 60, &[0xc0, 12]);
    w.ptr(12).rr(6, 60, &[0; 22]);
    w.u8(0).rr(41, 0, &[]);
    corpus.push(w.0);
    let tcp_framed: Vec<Vec<u8>> = corpus.iter().map(|m| tcp(m)).collect();
    corpus.extend(tcp_framed);
    corpus
}

fn hello_corpus() -> Vec<Vec<u8>> {
    vec![
        client_hello("api.example.com", &["h2", "http/1.1"], None),
        client_hello("frag.example", &["h2"], Some(64)),
        hand_hello(&[
            (51, vec![0xff]),
            (0, sni(b"after.example")),
            (16, alpn(&["h2", "x"])),
        ]),
    ]
}

/// One mutation: bit flips, a cut, a splice with another input, bytes
/// inserted or overwritten with values that parsers trip on.
fn mutate(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = corpus[rng.below(corpus.len())].clone();
    for _ in 0..=rng.below(4) {
        let len = data.len().max(1);
        match rng.below(6) {
            0 => {
                for _ in 0..=rng.below(8) {
                    let at = rng.below(len);
                    if let Some(b) = data.get_mut(at) {
                        *b ^= 1 << rng.below(8);
                    }
                }
            }
            1 => data.truncate(rng.below(len)),
            2 => {
                let other = &corpus[rng.below(corpus.len())];
                let at = rng.below(len).min(data.len());
                let from = rng.below(other.len());
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            3 => {
                let at = rng.below(len).min(data.len());
                let n = rng.below(16);
                let insert = rng.bytes(n);
                data.splice(at..at, insert);
            }
            4 => {
                let at = rng.below(len);
                let value = [0x00, 0x3f, 0x40, 0x80, 0xc0, 0xff][rng.below(6)];
                if let Some(b) = data.get_mut(at) {
                    *b = value;
                }
            }
            _ => {
                // A compression pointer somewhere, to somewhere.
                let at = rng.below(len);
                let target = u16::try_from(rng.below(data.len() + 8)).unwrap_or(0);
                let ptr = (0xc000 | target).to_be_bytes();
                if at + 1 < data.len() {
                    data[at..at + 2].copy_from_slice(&ptr);
                }
            }
        }
    }
    data
}

#[test]
fn random_bytes() {
    let start = Instant::now();
    let mut rng = Rng(0x5eed_0001);
    let mut cache = NameCache::new(&NameCacheConfig::default());
    for i in 0..RANDOM {
        let len = rng.below(600);
        let mut data = rng.bytes(len);
        // Steer a share of them past the first checks: a response with one
        // question, or a TLS handshake record.
        match i % 4 {
            1 if data.len() >= 12 => data[2..6].copy_from_slice(&[0x81, 0x80, 0, 1]),
            2 if data.len() >= 6 => data[..3].copy_from_slice(&[0x16, 0x03, 0x01]),
            _ => {}
        }
        check_all(&data, &format!("random #{i}"), &mut cache);
    }
    eprintln!("{RANDOM} random inputs in {:?}", start.elapsed());
}

#[test]
fn mutated_messages() {
    let start = Instant::now();
    let mut rng = Rng(0x5eed_0002);
    let dns = dns_corpus();
    let hello = hello_corpus();
    let mut cache = NameCache::new(&NameCacheConfig {
        capacity: 1024,
        ..NameCacheConfig::default()
    });
    let mut parsed = 0;
    for i in 0..MUTATIONS {
        let corpus = if i % 2 == 0 { &dns } else { &hello };
        let data = mutate(&mut rng, corpus);
        let context = format!("mutation #{i}");
        for framing in [Framing::Udp, Framing::Tcp] {
            if let Ok(answer) = parse_dns(&data, framing) {
                check_dns(&answer, &context);
                cache.insert(u64::try_from(i % 7).unwrap(), &answer, 0);
                parsed += 1;
            }
        }
        check_hello(&data, &context);
    }
    assert!(cache.len() <= 1024);
    // The mutations must reach past the first checks to be worth running.
    assert!(parsed > MUTATIONS / 10, "only {parsed} parsed");
    eprintln!(
        "{MUTATIONS} mutations in {:?}, {parsed} parsed",
        start.elapsed()
    );
}
