use residency_names::{ClientHello, Hello, HelloError, MAX_HELLO, parse_client_hello};

use crate::wire::{alpn, client_hello, hand_hello, handshake_record, sni};

/// The lengths of the TLS records in `data`.
fn record_lengths(data: &[u8]) -> Vec<usize> {
    let mut lengths = Vec::new();
    let mut at = 0;
    while let Some(header) = data.get(at..at + 5) {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        lengths.push(len);
        at += 5 + len;
    }
    lengths
}

fn complete(data: &[u8]) -> ClientHello {
    match parse_client_hello(data) {
        Ok(Hello::Complete(hello)) => hello,
        other => panic!("expected a whole ClientHello, got {other:?}"),
    }
}

#[test]
fn rustls_client_hello() {
    let data = client_hello("API.Example.com", &["h2", "http/1.1"], None);
    let hello = complete(&data);
    assert_eq!(hello.sni.as_deref(), Some("api.example.com"));
    assert_eq!(hello.alpn, ["h2", "http/1.1"]);
    assert!(!hello.sni_refused && !hello.ech);
}

#[test]
fn split_over_segments_needs_more() {
    let data = client_hello("split.example", &[], None);
    let hello = complete(&data);
    // Three segments: a few bytes, most of it, the rest.
    let cuts = [3, data.len() / 2, data.len() - 1];
    // A record header and a handshake header at least.
    assert_eq!(
        parse_client_hello(&data[..cuts[0]]),
        Ok(Hello::NeedMore { total_len: 9 })
    );
    for &cut in &cuts[1..] {
        assert_eq!(
            parse_client_hello(&data[..cut]),
            Ok(Hello::NeedMore {
                total_len: data.len()
            }),
            "at {cut}"
        );
    }
    assert_eq!(complete(&data), hello);
    assert_eq!(hello.sni.as_deref(), Some("split.example"));
}

#[test]
fn one_hello_in_many_records() {
    // rustls splits its ClientHello into records of at most 64 bytes.
    let data = client_hello("frag.example", &["h2"], Some(64));
    let records = record_lengths(&data);
    assert!(records.len() >= 4, "{records:?}");
    assert!(records.iter().all(|&len| len <= 64), "{records:?}");
    let hello = complete(&data);
    assert_eq!(hello.sni.as_deref(), Some("frag.example"));
    assert_eq!(hello.alpn, ["h2"]);
    // Every shorter prefix asks for more, and for more than it has.
    let mut last = 0;
    for len in 0..data.len() {
        match parse_client_hello(&data[..len]) {
            Ok(Hello::NeedMore { total_len }) => {
                assert!(
                    total_len > len && total_len <= data.len(),
                    "at {len}: {total_len}"
                );
                assert!(total_len >= last);
                last = total_len;
            }
            other => panic!("at {len}: {other:?}"),
        }
    }
}

#[test]
fn no_server_name() {
    // rustls sends no server_name for an IP address.
    let hello = complete(&client_hello("192.0.2.1", &["http/1.1"], None));
    assert_eq!(hello.sni, None);
    assert!(!hello.sni_refused);
    assert_eq!(hello.alpn, ["http/1.1"]);
    let hello = complete(&hand_hello(&[]));
    assert_eq!(hello, ClientHello::default());
}

#[test]
fn not_tls() {
    for data in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"G",
        b"\x16\x02",
        // Application data, not a handshake.
        b"\x17\x03\x03\x00\x10",
        // A handshake record longer than TLS allows.
        b"\x16\x03\x01\x40\x01",
        // An empty handshake record.
        b"\x16\x03\x01\x00\x00",
    ] {
        assert_eq!(parse_client_hello(data), Ok(Hello::NotTls), "{data:?}");
    }
    assert_eq!(
        parse_client_hello(&[]),
        Ok(Hello::NeedMore { total_len: 9 })
    );
}

#[test]
fn garbage_after_the_first_record() {
    // The first record holds half a ClientHello; the next is not a handshake.
    let data = client_hello("x.example", &[], Some(64));
    let first = 5 + record_lengths(&data)[0];
    let mut bad = data[..first].to_vec();
    bad.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
    assert!(matches!(
        parse_client_hello(&bad),
        Err(HelloError::Malformed(_))
    ));
}

#[test]
fn other_handshake_messages_and_sizes() {
    let server_hello = handshake_record(2, &[0; 40]);
    assert_eq!(
        parse_client_hello(&server_hello),
        Err(HelloError::NotClientHello(2))
    );
    // A ClientHello that claims 1 MiB.
    let huge = b"\x16\x03\x01\x00\x04\x01\x10\x00\x00";
    assert!(matches!(
        parse_client_hello(huge),
        Err(HelloError::TooLong { .. })
    ));
    // One that claims a little more than the cap.
    let len = u32::try_from(MAX_HELLO).unwrap().to_be_bytes();
    let near = [0x16, 0x03, 0x01, 0x00, 0x04, 0x01, len[1], len[2], len[3]];
    assert!(matches!(
        parse_client_hello(&near),
        Err(HelloError::TooLong { .. })
    ));
    // A body that is not a ClientHello's.
    let bad = handshake_record(1, &[3, 3, 0]);
    assert_eq!(
        parse_client_hello(&bad),
        Err(HelloError::Malformed("ClientHello body"))
    );
}

#[test]
fn server_names_refused_and_odd_extensions() {
    let hello = complete(&hand_hello(&[(0, sni(b"bad name!.example"))]));
    assert_eq!(hello.sni, None);
    assert!(hello.sni_refused);
    let hello = complete(&hand_hello(&[(0, sni(b"Trailing.Dot.example."))]));
    assert_eq!(hello.sni.as_deref(), Some("trailing.dot.example"));
    // An extension tls-parser cannot read comes first: the name is still found.
    let hello = complete(&hand_hello(&[
        (51, vec![0xff]),
        (0, sni(b"after.example")),
        (16, alpn(&["h2"])),
    ]));
    assert_eq!(hello.sni.as_deref(), Some("after.example"));
    assert_eq!(hello.alpn, ["h2"]);
    // Encrypted Client Hello: the name is the outer one.
    let hello = complete(&hand_hello(&[
        (0, sni(b"public.example")),
        (0xfe0d, vec![0; 8]),
    ]));
    assert!(hello.ech);
    // Two server names.
    let twice = hand_hello(&[(0, sni(b"a.example")), (0, sni(b"b.example"))]);
    assert_eq!(
        parse_client_hello(&twice),
        Err(HelloError::Malformed("two server_name extensions"))
    );
    // A server_name extension that does not parse.
    let bad = hand_hello(&[(0, vec![0x00])]);
    assert!(matches!(
        parse_client_hello(&bad),
        Err(HelloError::Malformed(_))
    ));
    // Too many ALPN protocols: capped.
    let many: Vec<String> = (0..40).map(|i| format!("p{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let hello = complete(&hand_hello(&[(16, alpn(&many))]));
    assert_eq!(hello.alpn.len(), residency_names::MAX_ALPN);
}

#[test]
fn extensions_that_overrun_the_message() {
    let mut data = hand_hello(&[(0, sni(b"x.example"))]);
    // The extensions block's length is the last two bytes before the
    // extensions: 2 (type) + 2 (length) + 14 (data) = 18 bytes of them.
    let at = data.len() - 18 - 2;
    data[at + 1] += 1;
    assert!(matches!(
        parse_client_hello(&data),
        Err(HelloError::Malformed(_))
    ));
}
