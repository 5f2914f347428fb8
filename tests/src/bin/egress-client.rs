//! A test client: joins a cgroup, optionally drops privileges, then makes
//! outbound TCP connects and UDP sends to the given loopback addresses and
//! reports, as JSON on standard output, what each call returned.
//!
//! Each `connect()` and `sendto()` is a single system call timed on its own
//! (socket creation and close are outside the timed region), so the
//! benchmark's latencies are those of the hooked calls.
#![forbid(unsafe_code)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use nix::{
    errno::Errno,
    sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockType, SockaddrStorage, connect, sendto, setsockopt,
        socket, sockopt,
    },
    unistd::{Gid, Uid, setgid, setgroups, setuid},
};
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "Outbound test traffic for residency's end-to-end tests (loopback only)")]
struct Args {
    /// cgroup v2 directory to join first.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// uid (and gid) to switch to after joining.
    #[arg(long)]
    uid: Option<u32>,
    /// Repeat the whole list this many times.
    #[arg(long, default_value_t = 1)]
    repeat: u64,
    /// Instead of a count, repeat the list until this many milliseconds
    /// have passed.
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Instead of a count, repeat the list until this file exists (a test
    /// stops a storm when what it runs across is over).
    #[arg(long, value_name = "FILE")]
    until_file: Option<PathBuf>,
    /// Pause this many microseconds after each pass over the list.
    #[arg(long, default_value_t = 0)]
    interval_us: u64,
    /// Report latency percentiles per operation.
    #[arg(long)]
    timing: bool,
    /// Operations: tcp:ADDR:PORT or udp:ADDR:PORT (IPv6 in brackets);
    /// dns:NAME@SERVER (a DNS query and its answer, timed); or
    /// dnstcp:NAME@SERVER:PORT (a DNS query, then a timed connect to the
    /// answer's IPv4 address on PORT). `{i}` in NAME is the pass number,
    /// so that every pass asks for another name. bulk:BYTES@ADDR:PORT
    /// connects, sends BYTES, closes its sending side and reads until the
    /// server closes (timed as a whole; `received` counts what came back).
    /// send:BYTES@ADDR:PORT connects, sends BYTES and closes the socket at
    /// once: what the kernel has not sent yet goes out after `close()`.
    #[arg(required = true)]
    ops: Vec<String>,
}

enum Op {
    Tcp(SocketAddr),
    Bulk(SocketAddr, u64),
    Send(SocketAddr, u64),
    Udp(SocketAddr),
    Dns {
        name: String,
        server: SocketAddr,
    },
    DnsTcp {
        name: String,
        server: SocketAddr,
        port: u16,
    },
}

struct Stats {
    ok: u64,
    /// Bytes read back by `bulk:` operations.
    received: u64,
    errors: BTreeMap<String, u64>,
    nanos: Vec<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ops = args
        .ops
        .iter()
        .map(|s| parse_op(s))
        .collect::<anyhow::Result<Vec<_>>>()?;

    if let Some(cg) = &args.cgroup {
        std::fs::write(cg.join("cgroup.procs"), "0")
            .with_context(|| format!("joining cgroup {}", cg.display()))?;
    }
    if let Some(uid) = args.uid {
        setgroups(&[]).context("setgroups")?;
        setgid(Gid::from_raw(uid)).context("setgid")?;
        setuid(Uid::from_raw(uid)).context("setuid")?;
    }

    let mut stats: Vec<Stats> = ops
        .iter()
        .map(|_| Stats {
            ok: 0,
            received: 0,
            errors: BTreeMap::new(),
            nanos: Vec::new(),
        })
        .collect();
    let mut sockets = Sockets::new()?;

    let started = Instant::now();
    let deadline = args
        .duration_ms
        .map(|ms| started + std::time::Duration::from_millis(ms));
    let mut pass = 0u64;
    loop {
        match (deadline, &args.until_file) {
            (Some(d), _) if Instant::now() >= d => break,
            (None, Some(stop)) if stop.exists() => break,
            (None, None) if pass >= args.repeat => break,
            _ => {}
        }
        pass += 1;
        if args.interval_us > 0 && pass > 1 {
            std::thread::sleep(std::time::Duration::from_micros(args.interval_us));
        }
        for (op, st) in ops.iter().zip(stats.iter_mut()) {
            let (result, nanos) = match op {
                Op::Bulk(addr, bytes) => {
                    let t = Instant::now();
                    let r = bulk(*addr, *bytes);
                    let ns = elapsed_ns(t);
                    (
                        r.map(|got| {
                            st.received += got;
                        }),
                        ns,
                    )
                }
                Op::Send(addr, bytes) => {
                    let t = Instant::now();
                    let r = send_and_close(*addr, *bytes);
                    (r, elapsed_ns(t))
                }
                _ => sockets.run(op, pass)?,
            };
            match result {
                Ok(()) => st.ok += 1,
                Err(e) => *st.errors.entry(format!("{e:?}")).or_default() += 1,
            }
            if args.timing {
                st.nanos.push(nanos);
            }
        }
    }
    let wall = started.elapsed();

    let report = report(&args.ops, &mut stats, args.timing);
    println!(
        "{}",
        json!({
            "pid": std::process::id(),
            "wall_ns": u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX),
            "ops": report,
        })
    );
    Ok(())
}

/// The sockets the operations reuse.
struct Sockets {
    /// One UDP socket per family: `sendto()` is what is measured.
    udp4: OwnedFd,
    udp6: OwnedFd,
    /// DNS queries go out on one socket; answers are read with a timeout.
    dns: std::net::UdpSocket,
    query_id: u16,
}

impl Sockets {
    fn new() -> anyhow::Result<Self> {
        let udp = |family| socket(family, SockType::Datagram, SockFlag::empty(), None);
        let dns = std::net::UdpSocket::bind("127.0.0.1:0")?;
        dns.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        Ok(Sockets {
            udp4: udp(AddressFamily::Inet)?,
            udp6: udp(AddressFamily::Inet6)?,
            dns,
            query_id: 0,
        })
    }

    /// One operation: its result and the nanoseconds of the timed call.
    fn run(&mut self, op: &Op, pass: u64) -> anyhow::Result<(Result<(), Errno>, u64)> {
        Ok(match op {
            Op::Tcp(addr) => tcp_connect(*addr)?,
            Op::Bulk(..) | Op::Send(..) => unreachable!("run by main"),
            Op::Udp(addr) => {
                let fd = if addr.is_ipv4() {
                    &self.udp4
                } else {
                    &self.udp6
                };
                let dest = SockaddrStorage::from(*addr);
                let t = Instant::now();
                let r = sendto(fd.as_raw_fd(), b"r", &dest, MsgFlags::empty()).map(|_| ());
                (r, elapsed_ns(t))
            }
            Op::Dns { name, server } => {
                self.query_id = self.query_id.wrapping_add(1);
                let name = name.replace("{i}", &pass.to_string());
                let t = Instant::now();
                let r = resolve(&self.dns, *server, &name, self.query_id).map(|_| ());
                (r, elapsed_ns(t))
            }
            Op::DnsTcp { name, server, port } => {
                self.query_id = self.query_id.wrapping_add(1);
                let name = name.replace("{i}", &pass.to_string());
                match resolve(&self.dns, *server, &name, self.query_id) {
                    Ok(ip) => tcp_connect(SocketAddr::new(ip.into(), *port))?,
                    Err(e) => (Err(e), 0),
                }
            }
        })
    }
}

/// Per-operation results, with latency percentiles when timed.
fn report(ops: &[String], stats: &mut [Stats], timing: bool) -> Vec<Value> {
    ops.iter()
        .zip(stats.iter_mut())
        .map(|(name, st)| {
            let mut v =
                json!({ "op": name, "ok": st.ok, "errors": st.errors, "received": st.received });
            if timing && !st.nanos.is_empty() {
                st.nanos.sort_unstable();
                let pct = |p: f64| {
                    #[expect(
                        clippy::cast_possible_truncation,
                        clippy::cast_sign_loss,
                        clippy::cast_precision_loss,
                        reason = "an index into a sorted sample"
                    )]
                    let i = ((st.nanos.len() - 1) as f64 * p).round() as usize;
                    st.nanos[i]
                };
                v["p50_ns"] = json!(pct(0.50));
                v["p99_ns"] = json!(pct(0.99));
                v["p999_ns"] = json!(pct(0.999));
                v["max_ns"] = json!(pct(1.0));
                v["calls"] = json!(st.nanos.len());
            }
            v
        })
        .collect()
}

fn elapsed_ns(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One `connect()` on a fresh socket; the socket is closed with a reset so that
/// a storm of connects leaves no `TIME_WAIT` behind to exhaust ports.
fn tcp_connect(addr: SocketAddr) -> anyhow::Result<(Result<(), Errno>, u64)> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd: OwnedFd = socket(family, SockType::Stream, SockFlag::empty(), None)?;
    let dest = SockaddrStorage::from(addr);
    let t = Instant::now();
    let r = connect(fd.as_raw_fd(), &dest);
    let ns = elapsed_ns(t);
    let _ = setsockopt(
        &fd,
        sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    drop(fd);
    Ok((r, ns))
}

/// One A query and its answer: the answer's last IPv4 address, which must
/// be loopback (this client sends nowhere else).
fn resolve(
    sock: &std::net::UdpSocket,
    server: SocketAddr,
    name: &str,
    id: u16,
) -> Result<std::net::Ipv4Addr, Errno> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap_or(0));
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    sock.send_to(&q, server)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    let mut buf = [0u8; 1500];
    loop {
        let n = sock
            .recv(&mut buf)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        if n < 16 || buf[..2] != id.to_be_bytes() {
            continue; // a late answer to an earlier query
        }
        let ip = std::net::Ipv4Addr::new(buf[n - 4], buf[n - 3], buf[n - 2], buf[n - 1]);
        return if ip.is_loopback() {
            Ok(ip)
        } else {
            Err(Errno::EADDRNOTAVAIL)
        };
    }
}

#[expect(
    clippy::needless_pass_by_value,
    reason = "for `map_err`, which hands the error over"
)]
fn io(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

/// Connects to `addr` and writes `bytes` (as the socket takes them).
fn connect_and_write(addr: SocketAddr, bytes: u64) -> Result<std::net::TcpStream, Errno> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).map_err(io)?;
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        s.write_all(&chunk[..n]).map_err(io)?;
        left -= n as u64;
    }
    Ok(s)
}

/// `bytes` out, then `close()` at once, without waiting for them to leave.
fn send_and_close(addr: SocketAddr, bytes: u64) -> Result<(), Errno> {
    drop(connect_and_write(addr, bytes)?);
    Ok(())
}

/// A bulk transfer: `bytes` out, then whatever the server sends back
/// until it closes. The bytes read back, or the error.
fn bulk(addr: SocketAddr, bytes: u64) -> Result<u64, Errno> {
    use std::io::Read as _;
    let mut s = connect_and_write(addr, bytes)?;
    s.shutdown(std::net::Shutdown::Write).map_err(io)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        match s.read(&mut buf).map_err(io)? {
            0 => return Ok(got),
            n => got += n as u64,
        }
    }
}

fn parse_op(s: &str) -> anyhow::Result<Op> {
    let send = s.starts_with("send:");
    if let Some(rest) = s.strip_prefix("bulk:").or_else(|| s.strip_prefix("send:")) {
        let (bytes, addr) = rest
            .split_once('@')
            .context("expected bulk:BYTES@ADDR:PORT")?;
        let bytes: u64 = bytes.parse().context("bad byte count")?;
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("bad address in {s}"))?;
        ensure!(
            residency_tests::is_loopback(addr.ip()),
            "{s}: bulk transfers go to loopback only"
        );
        return Ok(if send {
            Op::Send(addr, bytes)
        } else {
            Op::Bulk(addr, bytes)
        });
    }
    if let Some(rest) = s.strip_prefix("dns:").or_else(|| s.strip_prefix("dnstcp:")) {
        let (name, at) = rest.split_once('@').context("expected NAME@SERVER")?;
        let (server, port) = if s.starts_with("dnstcp:") {
            let (ip, port) = at.rsplit_once(':').context("expected NAME@SERVER:PORT")?;
            (ip, Some(port.parse::<u16>().context("bad port")?))
        } else {
            (at, None)
        };
        let ip: std::net::IpAddr = server.parse().context("bad DNS server address")?;
        ensure!(ip.is_loopback(), "{s}: the DNS server must be on loopback");
        let server = SocketAddr::new(ip, 53);
        let name = name.to_owned();
        return Ok(match port {
            Some(port) => Op::DnsTcp { name, server, port },
            None => Op::Dns { name, server },
        });
    }
    let (kind, addr) = s
        .split_once(':')
        .context("expected tcp:ADDR:PORT or udp:ADDR:PORT")?;
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address in {s}"))?;
    if !residency_tests::is_loopback(addr.ip()) && !residency_tests::is_test_host(addr.ip()) {
        bail!(
            "{s}: this client only sends to loopback addresses and to the test hosts in {}",
            residency_tests::TEST_HOSTS
        );
    }
    match kind {
        "tcp" => Ok(Op::Tcp(addr)),
        "udp" => Ok(Op::Udp(addr)),
        _ => bail!("{s}: expected tcp: or udp:"),
    }
}
