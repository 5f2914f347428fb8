use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::RecordType;
use residency_names::{DnsAnswer, DnsError, Framing, parse_dns};

use crate::wire::{Wire, a, aaaa, bytes, cname, response, tcp, v4};

fn udp(payload: &[u8]) -> Result<DnsAnswer, DnsError> {
    parse_dns(payload, Framing::Udp)
}

fn addrs(answer: &DnsAnswer) -> Vec<IpAddr> {
    answer.addresses.iter().map(|r| r.addr).collect()
}

#[test]
fn a_answer() {
    let msg = response(
        0xbeef,
        "WWW.Example.com.",
        RecordType::A,
        vec![
            a("www.example.com.", 300, Ipv4Addr::new(192, 0, 2, 1)),
            a("www.example.com.", 300, Ipv4Addr::new(192, 0, 2, 2)),
        ],
    );
    let answer = udp(&bytes(&msg)).unwrap();
    assert_eq!(answer.id, 0xbeef);
    assert_eq!(answer.qname, "www.example.com");
    assert_eq!(answer.qtype, 1);
    assert_eq!(answer.rcode, 0);
    assert!(!answer.truncated && !answer.cut);
    assert_eq!(addrs(&answer), [v4("192.0.2.1"), v4("192.0.2.2")]);
    assert!(
        answer
            .addresses
            .iter()
            .all(|r| r.in_chain && r.ttl == 300 && r.owner == "www.example.com")
    );
    assert_eq!(answer.chain, ["www.example.com"]);
    assert_eq!(answer.skipped, 0);
}

#[test]
fn aaaa_answer() {
    let ip: Ipv6Addr = "2001:db8::53".parse().unwrap();
    let msg = response(
        7,
        "v6.example.",
        RecordType::AAAA,
        vec![aaaa("v6.example.", 60, ip)],
    );
    let answer = udp(&bytes(&msg)).unwrap();
    assert_eq!(answer.qtype, 28);
    assert_eq!(addrs(&answer), [IpAddr::V6(ip)]);
    assert_eq!(answer.addresses[0].ttl, 60);
    assert!(answer.addresses[0].in_chain);
}

#[test]
fn cname_chain_of_three_hops() {
    let msg = response(
        1,
        "www.shop.example.",
        RecordType::A,
        vec![
            cname("www.shop.example.", 3600, "shop.cdn.example."),
            cname("shop.cdn.example.", 600, "edge.cdn2.example."),
            cname("edge.cdn2.example.", 120, "e1.edge.example."),
            a("e1.edge.example.", 20, Ipv4Addr::new(198, 51, 100, 7)),
        ],
    );
    let answer = udp(&bytes(&msg)).unwrap();
    assert_eq!(
        answer.chain,
        [
            "www.shop.example",
            "shop.cdn.example",
            "edge.cdn2.example",
            "e1.edge.example"
        ]
    );
    assert_eq!(answer.cnames.len(), 3);
    assert_eq!(answer.cnames[1].owner, "shop.cdn.example");
    assert_eq!(answer.cnames[1].target, "edge.cdn2.example");
    assert_eq!(answer.cnames[1].ttl, 600);
    let r = &answer.addresses[0];
    assert!(r.in_chain);
    assert_eq!(r.owner, "e1.edge.example");
    assert_eq!(answer.chain_to("e1.edge.example").unwrap().len(), 4);
    assert_eq!(answer.chain_ttl("e1.edge.example"), Some(120));
    assert_eq!(answer.chain_ttl("www.shop.example"), None);
}

#[test]
fn unrelated_addresses_are_not_in_the_chain() {
    let msg = response(
        1,
        "www.example.com.",
        RecordType::A,
        vec![
            cname("www.example.com.", 60, "edge.example.net."),
            a("edge.example.net.", 60, Ipv4Addr::new(192, 0, 2, 1)),
            // Injected: a name the question did not lead to.
            a("bank.example.org.", 86_400, Ipv4Addr::new(203, 0, 113, 66)),
        ],
    );
    let answer = udp(&bytes(&msg)).unwrap();
    assert_eq!(answer.addresses.len(), 2);
    assert!(answer.addresses[0].in_chain);
    assert!(!answer.addresses[1].in_chain);
    let attributable: Vec<_> = answer.attributable().map(|r| r.addr).collect();
    assert_eq!(attributable, [v4("192.0.2.1")]);
}

#[test]
fn conflicting_and_looping_cnames_end_the_chain() {
    let msg = response(
        1,
        "a.example.",
        RecordType::A,
        vec![
            cname("a.example.", 60, "b.example."),
            cname("a.example.", 60, "c.example."),
            a("b.example.", 60, Ipv4Addr::new(192, 0, 2, 1)),
            a("c.example.", 60, Ipv4Addr::new(192, 0, 2, 2)),
        ],
    );
    let answer = udp(&bytes(&msg)).unwrap();
    assert_eq!(answer.chain, ["a.example"]);
    assert_eq!(answer.attributable().count(), 0);

    let msg = response(
        1,
        "a.example.",
        RecordType::A,
        vec![
            cname("a.example.", 60, "b.example."),
            cname("b.example.", 60, "a.example."),
            a("b.example.", 60, Ipv4Addr::new(192, 0, 2, 1)),
        ],
    );
    let answer = udp(&bytes(&msg)).unwrap();
    assert_eq!(answer.chain, ["a.example", "b.example"]);
    assert_eq!(answer.attributable().count(), 1);
}

fn forty() -> Vec<u8> {
    let records = (0..40u8)
        .map(|i| a("many.example.", 30, Ipv4Addr::new(10, 0, 0, i)))
        .collect();
    bytes(&response(9, "many.example.", RecordType::A, records))
}

#[test]
fn answer_longer_than_512_bytes() {
    let msg = forty();
    assert!(msg.len() > 512, "{} bytes", msg.len());
    let answer = udp(&msg).unwrap();
    assert_eq!(answer.addresses.len(), 40);
    assert_eq!(answer.addresses[39].addr, v4("10.0.0.39"));
    assert!(!answer.cut);
}

#[test]
fn tcp_framing() {
    let msg = forty();
    let framed = tcp(&msg);
    let answer = parse_dns(&framed, Framing::Tcp).unwrap();
    assert_eq!(answer.addresses.len(), 40);
    assert!(!answer.cut);
    // The length prefix is not a DNS header: read without framing, it fails.
    assert!(udp(&framed).is_err());

    // Two messages in one segment: only the first is read.
    let mut two = framed.clone();
    two.extend_from_slice(&tcp(&bytes(&response(
        2,
        "other.example.",
        RecordType::A,
        vec![a("other.example.", 1, Ipv4Addr::LOCALHOST)],
    ))));
    assert_eq!(parse_dns(&two, Framing::Tcp).unwrap(), answer);

    // The start of the stream only: cut, with the records before the cut.
    let cut = parse_dns(&framed[..framed.len() / 2], Framing::Tcp).unwrap();
    assert!(cut.cut);
    assert!(!cut.addresses.is_empty() && cut.addresses.len() < 40);

    assert_eq!(
        parse_dns(&[], Framing::Tcp),
        Err(DnsError::TooShort { len: 0 })
    );
    assert_eq!(
        parse_dns(&[0], Framing::Tcp),
        Err(DnsError::TooShort { len: 0 })
    );
    assert!(matches!(
        parse_dns(&[0, 0], Framing::Tcp),
        Err(DnsError::TooShort { .. })
    ));
}

#[test]
fn cut_in_the_middle_of_a_record_keeps_what_came_before() {
    let msg = forty();
    let whole = udp(&msg).unwrap();
    // Every record is the same size: a pointer to the question's name, then
    // 10 bytes of header and 4 of address.
    let record = 16;
    let first = msg.len() - 40 * record;
    let cut_at = first + 10 * record + 7;
    let answer = udp(&msg[..cut_at]).unwrap();
    assert!(answer.cut);
    assert_eq!(answer.addresses.len(), 10);
    assert_eq!(answer.addresses[..], whole.addresses[..10]);

    // Every prefix that holds the question parses; the count of addresses
    // grows with the prefix and is the count of whole records in it.
    for len in first..=msg.len() {
        let answer = udp(&msg[..len]).unwrap();
        assert_eq!(answer.cut, len < msg.len(), "at {len}");
        assert_eq!(answer.addresses.len(), (len - first) / record, "at {len}");
    }
    // Cut inside the question: no answer at all.
    assert_eq!(
        udp(&msg[..first - 1]),
        Err(DnsError::TooShort { len: first - 1 })
    );
}

#[test]
fn truncated_bit() {
    let mut msg = response(
        3,
        "big.example.",
        RecordType::A,
        vec![a("big.example.", 5, Ipv4Addr::new(192, 0, 2, 9))],
    );
    msg.metadata.truncation = true;
    let answer = udp(&bytes(&msg)).unwrap();
    assert!(answer.truncated);
    assert!(!answer.cut);
    assert_eq!(answer.addresses.len(), 1);
}

#[test]
fn nxdomain_and_ttl_with_top_bit() {
    let mut w = Wire::header(0x8183, [1, 1, 0, 0]);
    w.name("gone.example").u16(1).u16(1);
    w.ptr(12).rr(1, 0x8000_0000, &[192, 0, 2, 1]);
    let answer = udp(&w.0).unwrap();
    assert_eq!(answer.rcode, 3);
    assert_eq!(answer.addresses[0].ttl, 0);
}

#[test]
fn other_types_and_classes_are_skipped() {
    let mut w = Wire::response("x.example", [3, 0, 0]);
    w.ptr(12).rr(16, 60, b"\x05hello"); // TXT
    w.ptr(12).u16(1).u16(3).u32(60).u16(4).raw(&[1, 2, 3, 4]); // A in class CH
    w.ptr(12).rr(1, 60, &[192, 0, 2, 1]);
    let answer = udp(&w.0).unwrap();
    assert_eq!(answer.skipped, 2);
    assert_eq!(addrs(&answer), [v4("192.0.2.1")]);
}

#[test]
fn names_that_are_not_host_names() {
    // The question.
    let mut w = Wire::response("a b.example", [0, 0, 0]);
    assert_eq!(udp(&w.0), Err(DnsError::BadQuestion));
    w = Wire::header(0x8180, [1, 0, 0, 0]);
    w.u8(0).u16(1).u16(1); // the root
    assert_eq!(udp(&w.0), Err(DnsError::BadQuestion));
    // An owner: the record is skipped.
    w = Wire::response("x.example", [2, 0, 0]);
    w.name("bad\u{1}.example").rr(1, 60, &[192, 0, 2, 1]);
    w.ptr(12).rr(1, 60, &[192, 0, 2, 2]);
    let answer = udp(&w.0).unwrap();
    assert_eq!(answer.skipped, 1);
    assert_eq!(addrs(&answer), [v4("192.0.2.2")]);
}

#[test]
fn not_a_response_or_not_a_query() {
    let mut w = Wire::header(0x0100, [1, 0, 0, 0]);
    w.name("x.example").u16(1).u16(1);
    assert_eq!(udp(&w.0), Err(DnsError::NotResponse));
    let mut w = Wire::header(0x8000 | (5 << 11), [1, 0, 0, 0]);
    w.name("x.example").u16(6).u16(1);
    assert_eq!(udp(&w.0), Err(DnsError::NotQuery(5)));
    assert_eq!(udp(&[]), Err(DnsError::TooShort { len: 0 }));
    assert_eq!(udp(&[0x12; 11]), Err(DnsError::TooShort { len: 11 }));
}

// Hostile inputs: each gives an error or a bounded answer.

fn malformed(result: Result<DnsAnswer, DnsError>) -> (usize, &'static str) {
    match result {
        Err(DnsError::Malformed { offset, what }) => (offset, what),
        other => panic!("expected malformed, got {other:?}"),
    }
}

#[test]
fn question_counts_other_than_one() {
    let mut w = Wire::header(0x8180, [0, 1, 0, 0]);
    w.name("x.example").rr(1, 60, &[1, 2, 3, 4]);
    assert_eq!(udp(&w.0), Err(DnsError::Questions(0)));
    let mut w = Wire::header(0x8180, [2, 0, 0, 0]);
    w.name("x.example")
        .u16(1)
        .u16(1)
        .name("y.example")
        .u16(1)
        .u16(1);
    assert_eq!(udp(&w.0), Err(DnsError::Questions(2)));
    assert_eq!(
        DnsError::Questions(2).to_string(),
        "2 questions, expected one"
    );
}

#[test]
fn pointer_to_itself() {
    let mut w = Wire::response("x.example", [1, 0, 0]);
    let at = w.at();
    w.ptr(at).rr(1, 60, &[1, 2, 3, 4]);
    let (offset, what) = malformed(udp(&w.0));
    assert_eq!(offset, usize::from(at));
    assert_eq!(what, "compression pointer does not point back");

    // In the question.
    let mut w = Wire::header(0x8180, [1, 0, 0, 0]);
    w.ptr(12).u16(1).u16(1);
    assert!(matches!(
        udp(&w.0),
        Err(DnsError::Malformed { offset: 12, .. })
    ));
}

#[test]
fn pointers_at_each_other() {
    // In the question: 12 points at 14, 14 points at 12.
    let mut w = Wire::header(0x8180, [1, 0, 0, 0]);
    w.ptr(14).ptr(12).u16(1).u16(1);
    malformed(udp(&w.0));
    // In an answer: the owner points forward at a pointer that points back
    // at it.
    let mut w = Wire::response("x.example", [1, 0, 0]);
    let at = w.at();
    w.ptr(at + 2).ptr(at).rr(1, 60, &[1, 2, 3, 4]);
    malformed(udp(&w.0));
    // A label, then a pointer back to that label's start.
    let mut w = Wire::response("x.example", [1, 0, 0]);
    let at = w.at();
    w.labels("loop").ptr(at).rr(1, 60, &[1, 2, 3, 4]);
    malformed(udp(&w.0));
}

#[test]
fn pointers_past_the_end() {
    for target in [0x00ff, 0x3fff] {
        let mut w = Wire::response("x.example", [1, 0, 0]);
        w.ptr(target).rr(1, 60, &[1, 2, 3, 4]);
        malformed(udp(&w.0));
    }
    // A CNAME target pointing past the end.
    let mut w = Wire::response("x.example", [1, 0, 0]);
    w.ptr(12).rr(5, 60, &[0xc0, 0xff]);
    malformed(udp(&w.0));
}

#[test]
fn label_length_past_the_end() {
    // In an answer's owner: the message ends inside the label: cut.
    let mut w2 = Wire::response("x.example", [2, 0, 0]);
    w2.ptr(12).rr(1, 60, &[192, 0, 2, 1]).u8(60).raw(b"short");
    let answer = udp(&w2.0).unwrap();
    assert!(answer.cut);
    assert_eq!(addrs(&answer), [v4("192.0.2.1")]);
    // In the question: too short.
    let mut w = Wire::header(0x8180, [1, 0, 0, 0]);
    w.u8(40).raw(b"abc");
    assert!(matches!(udp(&w.0), Err(DnsError::TooShort { .. })));
    // A label length with the reserved top bits.
    let mut w = Wire::response("x.example", [1, 0, 0]);
    w.u8(0x80).rr(1, 60, &[1, 2, 3, 4]);
    assert_eq!(malformed(udp(&w.0)).1, "reserved label type");
}

#[test]
fn rdlength_past_the_end() {
    let mut w = Wire::response("x.example", [2, 0, 0]);
    w.ptr(12).rr(1, 60, &[192, 0, 2, 1]);
    w.ptr(12).u16(1).u16(1).u32(60).u16(200).raw(&[1, 2, 3, 4]);
    let answer = udp(&w.0).unwrap();
    assert!(answer.cut);
    assert_eq!(addrs(&answer), [v4("192.0.2.1")]);
    // An A record whose length is not 4, with the bytes there: malformed.
    let mut w = Wire::response("x.example", [1, 0, 0]);
    w.ptr(12).rr(1, 60, &[192, 0, 2, 1, 0]);
    assert_eq!(malformed(udp(&w.0)).1, "record data length does not match");
    let mut w = Wire::response("x.example", [1, 0, 0]);
    w.ptr(12).rr(1, 60, &[192, 0]);
    malformed(udp(&w.0));
}

#[test]
fn name_longer_than_255_bytes_through_pointers() {
    // The question's name is one 63-byte label; each CNAME target adds a
    // 63-byte label and points at the previous name: the fourth reaches 257
    // bytes.
    let l = |c: char| c.to_string().repeat(63);
    // Each target: its label, then a pointer to the name before it.
    let mut w = Wire::response(&l('a'), [3, 0, 0]);
    let mut before = 12u16;
    for c in ['b', 'c', 'd'] {
        w.ptr(12).u16(5).u16(1).u32(60).u16(64 + 2);
        let here = w.at();
        w.labels(&l(c)).ptr(before);
        before = here;
    }
    assert_eq!(malformed(udp(&w.0)).1, "name longer than 255 bytes");
}

#[test]
fn many_answers_claimed_in_few_bytes() {
    let w = Wire::response("x.example", [65_535, 65_535, 65_535]);
    assert!(w.0.len() < 40);
    let answer = udp(&w.0).unwrap();
    assert!(answer.cut);
    assert!(answer.addresses.is_empty());
    let mut w = Wire::response("x.example", [65_535, 0, 0]);
    w.ptr(12).rr(1, 60, &[192, 0, 2, 1]).raw(&[0; 5]);
    let answer = udp(&w.0).unwrap();
    assert!(answer.cut);
    assert_eq!(answer.addresses.len(), 1);
}

#[test]
fn records_past_the_caps_are_skipped() {
    let n = residency_names::MAX_ADDRESSES + 10;
    let mut w = Wire::response("x.example", [u16::try_from(n).unwrap(), 0, 0]);
    for i in 0..n {
        w.ptr(12)
            .rr(1, 60, &u32::try_from(i).unwrap().to_be_bytes());
    }
    let answer = udp(&w.0).unwrap();
    assert_eq!(answer.addresses.len(), residency_names::MAX_ADDRESSES);
    assert_eq!(answer.skipped, 10);
    assert!(!answer.cut);

    let n = residency_names::MAX_CNAMES + 5;
    let mut w = Wire::response("c0.example", [u16::try_from(n).unwrap(), 0, 0]);
    for i in 0..n {
        w.name(&format!("c{i}.example")).rr(5, 60, &[]);
        // Patch the record's length and data: the next name in the chain.
        let len_at = w.0.len() - 2;
        let mut target = Wire::default();
        target.name(&format!("c{}.example", i + 1));
        w.0[len_at..].copy_from_slice(&u16::try_from(target.0.len()).unwrap().to_be_bytes());
        w.raw(&target.0);
    }
    let answer = udp(&w.0).unwrap();
    assert_eq!(answer.cnames.len(), residency_names::MAX_CNAMES);
    assert_eq!(answer.chain.len(), residency_names::MAX_CNAMES + 1);
}

#[test]
fn authority_and_additional_addresses_are_not_used() {
    let mut w = Wire::response("x.example", [1, 1, 1]);
    w.ptr(12).rr(1, 60, &[192, 0, 2, 1]);
    w.ptr(12).rr(1, 60, &[192, 0, 2, 2]);
    w.ptr(12).rr(1, 60, &[192, 0, 2, 3]);
    let answer = udp(&w.0).unwrap();
    assert_eq!(addrs(&answer), [v4("192.0.2.1")]);
    assert!(!answer.cut);
    // A cut in the additional section is still a cut.
    let answer = udp(&w.0[..w.0.len() - 2]).unwrap();
    assert!(answer.cut);
    assert_eq!(addrs(&answer), [v4("192.0.2.1")]);
}

#[test]
fn error_messages_are_plain() {
    assert_eq!(DnsError::NotResponse.to_string(), "not a response");
    assert_eq!(
        DnsError::Malformed {
            offset: 40,
            what: "reserved label type"
        }
        .to_string(),
        "malformed at byte 40: reserved label type"
    );
    assert_eq!(DnsError::TooShort { len: 3 }.reason(), "too_short");
}
