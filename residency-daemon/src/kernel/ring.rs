//! Reading decisions out of the kernel's ring buffer.
//!
//! The kernel submits most records without a wakeup (see `residency-ebpf`),
//! so readiness on the ring's file descriptor means "a lot is waiting", not
//! "something is waiting": the reader also drains on a timer.

use std::{io, os::fd::AsRawFd as _};

use aya::maps::{Map, MapData, RingBuf};
use residency_common::{
    ConnectEvent, DnsEvent, EventHeader, EventKind, ExecEvent, FlowEvent, ProcessEvent, TlsEvent,
};
use tokio::io::unix::AsyncFd;

use super::KernelError;

/// The kernel-to-daemon ring buffer.
pub struct EventRing {
    ring: AsyncFd<RingBuf<MapData>>,
}

/// A record from the ring that is not what this daemon understands. Only a
/// kernel object from another build could produce one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record of unknown kind {kind} ({size} bytes)")]
    UnknownKind { kind: u32, size: u32 },
    #[error("record of kind {kind} has {got} bytes, expected {want}")]
    Size { kind: u32, got: usize, want: usize },
}

impl EventRing {
    pub(super) fn new(map: Map) -> Result<Self, KernelError> {
        let ring = RingBuf::try_from(map)
            .map_err(|e| KernelError::from_aya("opening the event ring buffer", e))?;
        let fd = ring.as_raw_fd();
        // SAFETY: the ring owns its map's file descriptor and is owned by the
        // AsyncFd from here on, so the descriptor stays open and unchanged
        // for as long as it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| KernelError::Aya {
                doing: format!("registering ring buffer fd {fd} with the runtime"),
                source: Box::new(e),
            })?;
        Ok(EventRing { ring })
    }

    /// Waits until the kernel signals that records are waiting.
    ///
    /// # Errors
    /// Only if the runtime's reactor fails.
    pub async fn readable(&mut self) -> io::Result<()> {
        let mut guard = self.ring.readable_mut().await?;
        // Clear before the caller drains: a wakeup that arrives during the
        // drain then sets readiness again instead of being lost.
        guard.clear_ready();
        Ok(())
    }

    /// Hands waiting records to `accept` in order, for as long as it has
    /// room (`room` says how many more it can take). Returns how many records
    /// were consumed.
    pub fn drain(
        &mut self,
        mut room: usize,
        mut accept: impl FnMut(Result<Decoded, DecodeError>),
    ) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        // Check room before taking a record: once taken, it is gone from the
        // kernel's ring, so it must have somewhere to go.
        while room > 0 {
            let Some(item) = ring.next() else { break };
            accept(decode(&item));
            n += 1;
            room -= 1;
        }
        n
    }
}

/// A record from the kernel, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Connect(ConnectEvent),
    /// Boxed: ten times the size of a decision.
    Exec(Box<ExecEvent>),
    Fork(ProcessEvent),
    Exit(ProcessEvent),
    /// A DNS answer a watched socket received.
    Dns(Box<DnsAnswerBytes>),
    /// First payload bytes of a watched TCP connection.
    Tls(Box<TlsBytes>),
    /// A flow's totals (boxed: twice the size of a decision).
    Flow(Box<FlowEvent>),
}

/// `N` bytes at `at` (within the checked size: the callers read fields of
/// the header, which the size check covers).
fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(b) = bytes.get(at..at + N) {
        out.copy_from_slice(b);
    }
    out
}

fn dns_answer(bytes: &[u8], size: usize) -> DnsAnswerBytes {
    use core::mem::offset_of;
    let at = offset_of!(DnsEvent, msg);
    let copied = u32::from_ne_bytes(field(bytes, offset_of!(DnsEvent, copied))) as usize;
    let n = copied.min(size - at);
    DnsAnswerBytes {
        boot_ns: u64::from_ne_bytes(field(bytes, offset_of!(DnsEvent, boot_ns))),
        cgroup_id: u64::from_ne_bytes(field(bytes, offset_of!(DnsEvent, cgroup_id))),
        pattern: u32::from_ne_bytes(field(bytes, offset_of!(DnsEvent, pattern))),
        msg_len: u32::from_ne_bytes(field(bytes, offset_of!(DnsEvent, msg_len))),
        mapped: u16::from_ne_bytes(field(bytes, offset_of!(DnsEvent, mapped))),
        tcp: field::<1>(bytes, offset_of!(DnsEvent, protocol))[0] == residency_common::IPPROTO_TCP,
        msg: bytes[at..at + n].to_vec(),
    }
}

fn tls_bytes(bytes: &[u8]) -> TlsBytes {
    use core::mem::offset_of;
    let at = offset_of!(TlsEvent, data);
    let n = (u32::from_ne_bytes(field(bytes, offset_of!(TlsEvent, len))) as usize)
        .min(residency_common::TLS_EVENT_BYTES);
    TlsBytes {
        boot_ns: u64::from_ne_bytes(field(bytes, offset_of!(TlsEvent, boot_ns))),
        cookie: u64::from_ne_bytes(field(bytes, offset_of!(TlsEvent, cookie))),
        cgroup_id: u64::from_ne_bytes(field(bytes, offset_of!(TlsEvent, cgroup_id))),
        offset: u32::from_ne_bytes(field(bytes, offset_of!(TlsEvent, offset))),
        data: bytes[at..at + n].to_vec(),
    }
}

/// A [`DnsEvent`] with only the bytes the kernel copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAnswerBytes {
    pub boot_ns: u64,
    pub cgroup_id: u64,
    /// Pattern id the kernel matched (0: none).
    pub pattern: u32,
    /// The whole message's length; `msg` may hold less.
    pub msg_len: u32,
    /// Addresses the kernel mapped to the name.
    pub mapped: u16,
    pub tcp: bool,
    pub msg: Vec<u8>,
}

/// A [`TlsEvent`] with only the bytes the kernel copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsBytes {
    pub boot_ns: u64,
    pub cookie: u64,
    pub cgroup_id: u64,
    pub offset: u32,
    pub data: Vec<u8>,
}

/// Decodes one ring-buffer record: the header names the kind, and the size
/// must be exactly that kind's.
///
/// # Errors
/// A [`DecodeError`] for a short record, an unknown kind or a wrong size.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    if bytes.len() < size_of::<EventHeader>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: at least a header's bytes; EventHeader is plain integers.
    let header: EventHeader = unsafe { bytes.as_ptr().cast::<EventHeader>().read_unaligned() };
    let want = match header.kind {
        k if k == EventKind::Connect as u32 => size_of::<ConnectEvent>(),
        k if k == EventKind::Exec as u32 => size_of::<ExecEvent>(),
        k if k == EventKind::Fork as u32 || k == EventKind::Exit as u32 => {
            size_of::<ProcessEvent>()
        }
        // Variable: the header and the bytes of the message copied.
        k if k == EventKind::Dns as u32 => {
            let head = core::mem::offset_of!(DnsEvent, msg);
            let size = header.size as usize;
            let copied =
                u32::from_ne_bytes(field(bytes, core::mem::offset_of!(DnsEvent, copied))) as usize;
            if size <= head || size > size_of::<DnsEvent>() || head + copied != size {
                return Err(DecodeError::Size {
                    kind: header.kind,
                    got: bytes.len(),
                    want: size_of::<DnsEvent>(),
                });
            }
            size
        }
        k if k == EventKind::Tls as u32 => size_of::<TlsEvent>(),
        k if k == EventKind::Flow as u32 => size_of::<FlowEvent>(),
        _ => {
            return Err(DecodeError::UnknownKind {
                kind: header.kind,
                size: header.size,
            });
        }
    };
    if bytes.len() < want || header.size as usize != want {
        return Err(DecodeError::Size {
            kind: header.kind,
            got: bytes.len(),
            want,
        });
    }
    // SAFETY: `want` bytes of the kind the header names, checked above;
    // each type is #[repr(C)] integers and byte arrays, valid for any bits.
    Ok(unsafe {
        match header.kind {
            k if k == EventKind::Connect as u32 => {
                Decoded::Connect(bytes.as_ptr().cast::<ConnectEvent>().read_unaligned())
            }
            k if k == EventKind::Exec as u32 => Decoded::Exec(Box::new(
                bytes.as_ptr().cast::<ExecEvent>().read_unaligned(),
            )),
            k if k == EventKind::Fork as u32 => {
                Decoded::Fork(bytes.as_ptr().cast::<ProcessEvent>().read_unaligned())
            }
            k if k == EventKind::Dns as u32 => Decoded::Dns(Box::new(dns_answer(bytes, want))),
            k if k == EventKind::Tls as u32 => Decoded::Tls(Box::new(tls_bytes(bytes))),
            k if k == EventKind::Flow as u32 => Decoded::Flow(Box::new(
                bytes.as_ptr().cast::<FlowEvent>().read_unaligned(),
            )),
            _ => Decoded::Exit(bytes.as_ptr().cast::<ProcessEvent>().read_unaligned()),
        }
    })
}

#[cfg(test)]
mod tests {
    use residency_common::{AF_INET, ConnectEvent, EventHeader, EventKind};

    use super::*;

    fn sample() -> ConnectEvent {
        ConnectEvent {
            header: EventHeader {
                kind: EventKind::Connect as u32,
                size: u32::try_from(size_of::<ConnectEvent>()).unwrap(),
            },
            boot_ns: 7,
            cgroup_id: 42,
            tgid: 100,
            tid: 101,
            uid: 1000,
            gid: 1000,
            rule_id: 3,
            geo_gen: 1,
            dport: 443,
            country: 57,
            family: AF_INET,
            protocol: 6,
            hook: 1,
            verdict: 1,
            flags: 0,
            dest_kind: 1,
            policy: 0,
            daddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
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

    fn bytes_of(ev: &ConnectEvent) -> Vec<u8> {
        // SAFETY: ConnectEvent has no padding, so every byte is initialised.
        unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(ev).cast::<u8>(),
                size_of::<ConnectEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn round_trip() {
        let ev = sample();
        assert_eq!(decode(&bytes_of(&ev)), Ok(Decoded::Connect(ev)));
    }

    #[test]
    fn process_records_decode_by_kind() {
        let exit = ProcessEvent {
            header: EventHeader {
                kind: EventKind::Exit as u32,
                size: u32::try_from(size_of::<ProcessEvent>()).unwrap(),
            },
            parent: 10,
            pid: 11,
            flags: residency_common::EXIT_GROUP_DEAD,
            _pad: 0,
        };
        // SAFETY: a plain #[repr(C)] value viewed as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&exit).cast::<u8>(),
                size_of::<ProcessEvent>(),
            )
        };
        assert_eq!(decode(bytes), Ok(Decoded::Exit(exit)));
        // A fork's header with an exit's bytes is still a fork of that size.
        let mut fork = exit;
        fork.header.kind = EventKind::Fork as u32;
        // SAFETY: as above.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&fork).cast::<u8>(),
                size_of::<ProcessEvent>(),
            )
        };
        assert_eq!(decode(bytes), Ok(Decoded::Fork(fork)));
        // An exec record must be an exec record's size.
        let mut short = fork;
        short.header.kind = EventKind::Exec as u32;
        // SAFETY: as above.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&short).cast::<u8>(),
                size_of::<ProcessEvent>(),
            )
        };
        assert!(matches!(decode(bytes), Err(DecodeError::Size { .. })));
    }

    #[test]
    fn refuses_short_unknown_and_missized_records() {
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let mut ev = sample();
        ev.header.kind = 99;
        assert!(matches!(
            decode(&bytes_of(&ev)),
            Err(DecodeError::UnknownKind { kind: 99, .. })
        ));
        let ev = sample();
        let bytes = bytes_of(&ev);
        assert!(matches!(
            decode(&bytes[..40]),
            Err(DecodeError::Size { .. })
        ));
        let mut ev = sample();
        ev.header.size = 12;
        assert!(matches!(
            decode(&bytes_of(&ev)),
            Err(DecodeError::Size { .. })
        ));
    }

    /// A DNS record as the kernel writes it: the header, then only the
    /// bytes of the message it copied.
    fn dns_record(msg: &[u8], size_delta: i64) -> Vec<u8> {
        let head = core::mem::offset_of!(residency_common::DnsEvent, msg);
        let size = u32::try_from(i64::try_from(head + msg.len()).unwrap() + size_delta).unwrap();
        let mut b = Vec::new();
        b.extend_from_slice(&(EventKind::Dns as u32).to_ne_bytes());
        b.extend_from_slice(&size.to_ne_bytes());
        b.extend_from_slice(&77u64.to_ne_bytes()); // boot_ns
        b.extend_from_slice(&5u64.to_ne_bytes()); // cgroup
        b.extend_from_slice(&9u32.to_ne_bytes()); // pattern
        b.extend_from_slice(&u32::try_from(msg.len() + 100).unwrap().to_ne_bytes()); // msg_len
        b.extend_from_slice(&u32::try_from(msg.len()).unwrap().to_ne_bytes()); // copied
        b.extend_from_slice(&3u16.to_ne_bytes()); // mapped
        b.push(residency_common::IPPROTO_UDP);
        b.push(0);
        assert_eq!(b.len(), head);
        b.extend_from_slice(msg);
        b
    }

    #[test]
    fn dns_records_are_as_long_as_their_message() {
        let msg = b"\x12\x34\x81\x80 an answer";
        let Ok(Decoded::Dns(d)) = decode(&dns_record(msg, 0)) else {
            panic!("not a DNS record");
        };
        assert_eq!(
            (d.boot_ns, d.cgroup_id, d.pattern, d.mapped, d.tcp),
            (77, 5, 9, 3, false)
        );
        assert_eq!(d.msg, msg);
        // A size that is not the record's, or past the largest record, is
        // refused rather than read past.
        assert!(decode(&dns_record(msg, 1)).is_err());
        assert!(
            decode(&dns_record(msg, -5)).is_err(),
            "size and copied disagree"
        );
        let huge = vec![0u8; residency_common::DNS_EVENT_BYTES + 1];
        assert!(decode(&dns_record(&huge, 0)).is_err());
    }
}
