//! A test host's server: binds TCP and UDP sockets on the given addresses
//! and port (0: any free one), prints one JSON line with the bound
//! addresses, then accepts and closes connections until it is killed. Run
//! inside a test network namespace (`ip netns exec`), it stands in for a
//! remote endpoint.
#![forbid(unsafe_code)]

use std::{
    io::Write as _,
    net::{SocketAddr, UdpSocket},
};

fn main() -> anyhow::Result<()> {
    let mut bound = Vec::new();
    let mut keep = Vec::new();
    for arg in std::env::args().skip(1) {
        let addr: SocketAddr = arg.parse()?;
        let tcp = residency_tests::listen_tcp(addr)?;
        let udp = UdpSocket::bind(SocketAddr::new(addr.ip(), tcp.local_addr()?.port()))?;
        bound.push(serde_json::json!({ "tcp": tcp.local_addr()?.to_string(), "udp": udp.local_addr()?.to_string() }));
        keep.push(udp);
        std::thread::spawn(move || {
            while let Ok((s, _)) = tcp.accept() {
                drop(s);
            }
        });
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::Value::Array(bound))?;
    out.flush()?;
    drop(out);
    loop {
        std::thread::park();
    }
}
