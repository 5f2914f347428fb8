//! Messages built two ways: with hickory-proto's encoder (what real
//! servers send, compressed), and byte by byte (what no encoder would
//! write).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

pub fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// A response to `qname`/`qtype` with the given answers, encoded.
pub fn response(id: u16, qname: &str, qtype: RecordType, answers: Vec<Record>) -> Message {
    let mut msg = Message::response(id, OpCode::Query);
    msg.add_query(Query::query(name(qname), qtype));
    for a in answers {
        msg.add_answer(a);
    }
    msg
}

pub fn a(owner: &str, ttl: u32, ip: Ipv4Addr) -> Record {
    Record::from_rdata(name(owner), ttl, RData::A(A(ip)))
}

pub fn aaaa(owner: &str, ttl: u32, ip: Ipv6Addr) -> Record {
    Record::from_rdata(name(owner), ttl, RData::AAAA(AAAA(ip)))
}

pub fn cname(owner: &str, ttl: u32, target: &str) -> Record {
    Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
}

pub fn bytes(msg: &Message) -> Vec<u8> {
    msg.to_vec().unwrap()
}

pub fn tcp(msg: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(msg.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(msg);
    out
}

pub fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse().unwrap())
}

/// A message written byte by byte.
#[derive(Default)]
pub struct Wire(pub Vec<u8>);

impl Wire {
    /// A header: `flags` 0x8180 is a standard response, no error.
    pub fn header(flags: u16, counts: [u16; 4]) -> Self {
        let mut w = Wire::default();
        w.u16(0x1234).u16(flags);
        for c in counts {
            w.u16(c);
        }
        w
    }

    /// A standard response with one question for `qname` type A, class IN.
    pub fn response(qname: &str, counts: [u16; 3]) -> Self {
        let mut w = Self::header(0x8180, [1, counts[0], counts[1], counts[2]]);
        w.name(qname).u16(1).u16(1);
        w
    }

    pub fn at(&self) -> u16 {
        u16::try_from(self.0.len()).unwrap()
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }

    /// Labels, without the terminating zero.
    pub fn labels(&mut self, name: &str) -> &mut Self {
        for label in name.split('.').filter(|l| !l.is_empty()) {
            self.u8(u8::try_from(label.len()).unwrap())
                .raw(label.as_bytes());
        }
        self
    }

    /// A whole uncompressed name.
    pub fn name(&mut self, name: &str) -> &mut Self {
        self.labels(name).u8(0)
    }

    pub fn ptr(&mut self, offset: u16) -> &mut Self {
        self.u16(0xc000 | offset)
    }

    /// The rest of a record after its owner name: type, class IN, TTL, and
    /// the data with its length.
    pub fn rr(&mut self, rtype: u16, ttl: u32, data: &[u8]) -> &mut Self {
        self.u16(rtype).u16(1).u32(ttl);
        self.u16(u16::try_from(data.len()).unwrap()).raw(data)
    }
}

/// The bytes a rustls client sends first: its ClientHello, in one record
/// unless `fragment` asks for smaller ones.
pub fn client_hello(server: &str, alpn: &[&str], fragment: Option<usize>) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.max_fragment_size = fragment;
    let server = rustls::pki_types::ServerName::try_from(server.to_owned()).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// A ClientHello written by hand with the given extensions, in one record.
pub fn hand_hello(extensions: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = Wire::default();
    body.u16(0x0303).raw(&[7; 32]).u8(0); // version, random, no session id
    body.u16(2).u16(0x1301).u8(1).u8(0); // one cipher suite, null compression
    let mut ext = Wire::default();
    for (kind, data) in extensions {
        ext.u16(*kind)
            .u16(u16::try_from(data.len()).unwrap())
            .raw(data);
    }
    body.u16(u16::try_from(ext.0.len()).unwrap()).raw(&ext.0);
    handshake_record(1, &body.0)
}

/// One handshake message of type `kind` in one record.
pub fn handshake_record(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut rec = Wire::default();
    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    rec.u8(0x16)
        .u16(0x0301)
        .u16(u16::try_from(body.len() + 4).unwrap());
    rec.u8(kind).raw(&len[1..]).raw(body);
    rec.0
}

/// The `server_name` extension's data for one host name.
pub fn sni(host: &[u8]) -> Vec<u8> {
    let mut w = Wire::default();
    let len = u16::try_from(host.len()).unwrap();
    w.u16(len + 3).u8(0).u16(len).raw(host);
    w.0
}

/// The ALPN extension's data.
pub fn alpn(protocols: &[&str]) -> Vec<u8> {
    let mut list = Wire::default();
    for p in protocols {
        list.u8(u8::try_from(p.len()).unwrap()).raw(p.as_bytes());
    }
    let mut w = Wire::default();
    w.u16(u16::try_from(list.0.len()).unwrap()).raw(&list.0);
    w.0
}
