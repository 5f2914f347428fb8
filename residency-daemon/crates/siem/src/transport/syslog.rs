//! Syslog over UDP (RFC 5426), TCP (RFC 6587) and TLS (RFC 5425).
//!
//! The messages come formatted (complete RFC 5424 messages); this module
//! frames and sends them. Over TCP and TLS the framing is octet counting
//! (`LEN SP MSG`), which, unlike newline framing, carries messages with
//! embedded newlines intact and is what RFC 5425 requires.

use std::{
    fmt,
    io::Read as _,
    net::SocketAddr,
    os::fd::AsFd as _,
    str::FromStr,
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, TcpStream, UdpSocket, lookup_host},
    time::timeout,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use super::{TlsFiles, TransportError, client_tls, describe};

/// The largest UDP payload over IPv4 (65535 - 8 UDP - 20 IP header bytes).
const UDP_MAX_V4: usize = 65_507;
/// The largest UDP payload over IPv6 without jumbograms (65535 - 8).
const UDP_MAX_V6: usize = 65_527;

/// How syslog messages travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyslogProtocol {
    /// One datagram per message (RFC 5426): no delivery guarantee at all.
    Udp,
    /// Octet-counted frames on a TCP stream (RFC 6587).
    Tcp,
    /// Octet-counted frames in TLS (RFC 5425).
    Tls,
}

impl SyslogProtocol {
    /// The name used in configuration.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            SyslogProtocol::Udp => "udp",
            SyslogProtocol::Tcp => "tcp",
            SyslogProtocol::Tls => "tls",
        }
    }
}

impl fmt::Display for SyslogProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SyslogProtocol {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "udp" => Ok(SyslogProtocol::Udp),
            "tcp" => Ok(SyslogProtocol::Tcp),
            "tls" => Ok(SyslogProtocol::Tls),
            other => Err(TransportError::Config(format!(
                "unknown syslog protocol {other:?}: use \"udp\", \"tcp\" or \"tls\""
            ))),
        }
    }
}

enum Connection {
    Udp { socket: UdpSocket, limit: usize },
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Sends syslog messages to one receiver, keeping its connection open
/// between batches.
pub struct SyslogSender {
    address: String,
    protocol: SyslogProtocol,
    tls: Option<Arc<ClientConfig>>,
    server_name: Option<String>,
    timeout: Duration,
    connection: Option<Connection>,
}

impl fmt::Debug for SyslogSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyslogSender")
            .field("address", &self.address)
            .field("protocol", &self.protocol)
            .field("server_name", &self.server_name)
            .field("timeout", &self.timeout)
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

impl SyslogSender {
    /// A sender to `address` (`host:port`; an IPv6 address in brackets).
    /// Nothing happens until the first [`send`](Self::send).
    ///
    /// For TLS, `tls` is the client configuration (see [`client_tls`]);
    /// without one, the system's CA certificates are trusted. The
    /// receiver's certificate must name `server_name`, or else the host
    /// in `address`. `timeout` bounds each step: resolving, connecting,
    /// the TLS handshake, and writing a batch.
    #[must_use]
    pub fn new(
        address: String,
        protocol: SyslogProtocol,
        tls: Option<Arc<ClientConfig>>,
        server_name: Option<String>,
        timeout: Duration,
    ) -> Self {
        SyslogSender {
            address,
            protocol,
            tls,
            server_name,
            timeout,
            connection: None,
        }
    }

    /// Sends one batch of messages, each a complete RFC 5424 message
    /// without framing.
    ///
    /// UDP sends one datagram per message; if any message is larger than
    /// a datagram can be, nothing of the batch is sent. TCP and TLS frame
    /// each message by octet counting (`LEN SP MSG`) and write the whole
    /// batch at once, then flush.
    ///
    /// The connection is made on first use and kept; after any error it
    /// is dropped, and the next call connects again. The caller retries
    /// the whole batch, so the receiver may see part of a batch twice,
    /// but only when a connection died in the middle of writing it. And
    /// `Ok` means only that the bytes left this host: syslog over TCP has
    /// no acknowledgement, so messages written just before a receiver
    /// dies can be lost without an error. A connection the receiver has
    /// closed is noticed before writing, which covers a receiver that
    /// restarted between batches. Over UDP, `Ok` promises nothing.
    ///
    /// # Errors
    /// [`TransportError::TooLarge`] (UDP), [`TransportError::Config`] for
    /// an address without a port or an invalid server name, and otherwise
    /// resolution, connection, handshake, write and timeout errors, which
    /// are retryable.
    pub async fn send(&mut self, messages: &[Vec<u8>]) -> Result<(), TransportError> {
        if messages.is_empty() {
            return Ok(());
        }
        self.try_send(messages).await
    }

    /// Ends the connection cleanly (a TLS `close_notify`), if there is one.
    pub async fn close(&mut self) {
        if let Some(connection) = self.connection.take() {
            let _ = match connection {
                Connection::Udp { .. } => return,
                Connection::Tcp(mut s) => timeout(self.timeout, s.shutdown()).await,
                Connection::Tls(mut s) => timeout(self.timeout, s.shutdown()).await,
            };
        }
    }

    async fn try_send(&mut self, messages: &[Vec<u8>]) -> Result<(), TransportError> {
        // Taken out while in use: whatever fails below drops it, and the
        // next batch connects again.
        let mut connection = self.connection.take();
        if let Some(c) = &mut connection
            && !is_open(c).await
        {
            connection = None;
        }
        let mut connection = match connection {
            Some(c) => c,
            None => self.connect().await?,
        };
        self.write(&mut connection, messages).await?;
        self.connection = Some(connection);
        Ok(())
    }

    async fn write(
        &self,
        connection: &mut Connection,
        messages: &[Vec<u8>],
    ) -> Result<(), TransportError> {
        let after = self.timeout;
        let timed_out = |operation| TransportError::Timeout {
            target: self.address.clone(),
            operation,
            after,
        };
        let io_error = |source| TransportError::Io {
            target: self.address.clone(),
            source,
        };
        match connection {
            Connection::Udp { socket, limit } => {
                if let Some(m) = messages.iter().find(|m| m.len() > *limit) {
                    return Err(TransportError::TooLarge {
                        size: m.len(),
                        limit: *limit,
                    });
                }
                for m in messages {
                    timeout(after, socket.send(m))
                        .await
                        .map_err(|_| timed_out("sending a datagram"))?
                        .map_err(io_error)?;
                }
            }
            Connection::Tcp(stream) => {
                let frames = octet_counted(messages);
                timeout(after, async {
                    stream.write_all(&frames).await?;
                    stream.flush().await
                })
                .await
                .map_err(|_| timed_out("writing a batch (the receiver is not reading)"))?
                .map_err(io_error)?;
            }
            Connection::Tls(stream) => {
                let frames = octet_counted(messages);
                timeout(after, async {
                    stream.write_all(&frames).await?;
                    stream.flush().await
                })
                .await
                .map_err(|_| timed_out("writing a batch (the receiver is not reading)"))?
                .map_err(io_error)?;
            }
        }
        Ok(())
    }

    async fn connect(&mut self) -> Result<Connection, TransportError> {
        let host = host_of(&self.address).ok_or_else(|| {
            TransportError::Config(format!(
                "syslog address {:?} is not host:port (write an IPv6 address as [addr]:port)",
                self.address
            ))
        })?;
        let addresses: Vec<SocketAddr> = timeout(self.timeout, lookup_host(&self.address))
            .await
            .map_err(|_| self.timed_out("resolving the host name"))?
            .map_err(|source| TransportError::Resolve {
                address: self.address.clone(),
                source,
            })?
            .collect();
        if addresses.is_empty() {
            return Err(TransportError::Resolve {
                address: self.address.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
            });
        }
        match self.protocol {
            SyslogProtocol::Udp => self.connect_udp(&addresses).await,
            SyslogProtocol::Tcp => Ok(Connection::Tcp(self.connect_tcp(&addresses).await?)),
            SyslogProtocol::Tls => {
                let name = self.server_name.clone().unwrap_or_else(|| host.to_owned());
                let server_name = ServerName::try_from(name.clone()).map_err(|_| {
                    TransportError::Config(format!(
                        "TLS server name {name:?} is neither a DNS name nor an IP address"
                    ))
                })?;
                let config = if let Some(c) = &self.tls {
                    Arc::clone(c)
                } else {
                    let c = client_tls(&TlsFiles::default())?;
                    self.tls = Some(Arc::clone(&c));
                    c
                };
                let tcp = self.connect_tcp(&addresses).await?;
                let started = Instant::now();
                let mut stream = timeout(
                    self.timeout,
                    TlsConnector::from(config).connect(server_name, tcp),
                )
                .await
                .map_err(|_| self.timed_out("in the TLS handshake"))?
                .map_err(|e| TransportError::Tls {
                    address: self.address.clone(),
                    detail: describe(&e),
                })?;
                if stream.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3) {
                    self.await_refusal(&mut stream, started.elapsed()).await?;
                }
                Ok(Connection::Tls(Box::new(stream)))
            }
        }
    }

    async fn connect_udp(&self, addresses: &[SocketAddr]) -> Result<Connection, TransportError> {
        let mut last = None;
        for &addr in addresses {
            let (local, limit): (SocketAddr, usize) = if addr.is_ipv4() {
                (([0, 0, 0, 0], 0).into(), UDP_MAX_V4)
            } else {
                (([0u16; 8], 0).into(), UDP_MAX_V6)
            };
            let attempt = async {
                let socket = UdpSocket::bind(local).await?;
                // Connected, so that an ICMP "port unreachable" comes back
                // as an error on a later send rather than being ignored.
                socket.connect(addr).await?;
                Ok::<_, std::io::Error>(socket)
            };
            match attempt.await {
                Ok(socket) => return Ok(Connection::Udp { socket, limit }),
                Err(e) => last = Some(e),
            }
        }
        Err(TransportError::Connect {
            address: self.address.clone(),
            detail: last.map_or_else(|| "no addresses".to_owned(), |e| describe(&e)),
        })
    }

    async fn connect_tcp(&self, addresses: &[SocketAddr]) -> Result<TcpStream, TransportError> {
        let attempts = async {
            let mut last = None;
            for &addr in addresses {
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()
                } else {
                    TcpSocket::new_v6()
                };
                let attempt = async {
                    let socket = socket?;
                    // Notices a receiver that vanished while the
                    // connection sat idle between batches.
                    socket.set_keepalive(true)?;
                    let stream = socket.connect(addr).await?;
                    stream.set_nodelay(true)?;
                    Ok::<_, std::io::Error>(stream)
                };
                match attempt.await {
                    Ok(stream) => return Ok(stream),
                    Err(e) => last = Some(e),
                }
            }
            Err(last)
        };
        match timeout(self.timeout, attempts).await {
            Err(_) => Err(self.timed_out("connecting")),
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(last)) => Err(TransportError::Connect {
                address: self.address.clone(),
                detail: last.map_or_else(|| "no addresses".to_owned(), |e| describe(&e)),
            }),
        }
    }

    /// In TLS 1.3 the client finishes its handshake before the server
    /// has checked the client's certificate, so a receiver that refuses
    /// it (or requires one) can only say so afterwards, with an alert or
    /// by closing. Syslog receivers never answer otherwise, so without
    /// this wait every batch would seem sent and be lost. Waits twice as
    /// long as the handshake took (two round trips), at least 100 ms, at
    /// most the timeout; a connection that is still quiet then is
    /// accepted. The cost is that wait once per connection.
    async fn await_refusal(
        &self,
        stream: &mut TlsStream<TcpStream>,
        handshake: Duration,
    ) -> Result<(), TransportError> {
        let wait = (handshake * 2)
            .max(Duration::from_millis(100))
            .min(self.timeout);
        let mut buf = [0u8; 1024];
        let refused = |detail: String| TransportError::Tls {
            address: self.address.clone(),
            detail,
        };
        match timeout(wait, stream.read(&mut buf)).await {
            Err(_) | Ok(Ok(1..)) => Ok(()),
            // Closed, cleanly or not (rsyslog's gtls just closes).
            Ok(Ok(0)) => Err(refused(
                "the receiver closed the connection right after the handshake: \
                 it may require a client certificate it trusts (set the sink's cert and key)"
                    .to_owned(),
            )),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(refused(
                "the receiver closed the connection right after the handshake: \
                 it may require a client certificate it trusts (set the sink's cert and key)"
                    .to_owned(),
            )),
            Ok(Err(e)) => Err(refused(describe(&e))),
        }
    }

    fn timed_out(&self, operation: &'static str) -> TransportError {
        TransportError::Timeout {
            target: self.address.clone(),
            operation,
            after: self.timeout,
        }
    }
}

/// The host of `host:port` (brackets of an IPv6 address removed), if the
/// port is there and a number.
fn host_of(address: &str) -> Option<&str> {
    let (host, port) = address.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// The batch as one buffer of `LEN SP MSG` frames.
fn octet_counted(messages: &[Vec<u8>]) -> Vec<u8> {
    let total = messages.iter().map(|m| m.len() + 8).sum();
    let mut frames = Vec::with_capacity(total);
    for m in messages {
        frames.extend_from_slice(m.len().to_string().as_bytes());
        frames.push(b' ');
        frames.extend_from_slice(m);
    }
    frames
}

/// What the socket under a connection holds, seen with a syscall of its
/// own: tokio's readiness may lag behind (it is refreshed only when the
/// runtime polls its driver, which a runtime blocked on this one future
/// does not do between calls).
#[derive(Debug, PartialEq, Eq)]
enum Peeked {
    /// Nothing to read: the connection is open as far as this side knows.
    Quiet,
    /// Bytes are waiting.
    Data,
    /// The receiver closed or reset the connection.
    Closed,
}

/// Peeks through a duplicate of the socket's descriptor (non-blocking,
/// like the original; closing the duplicate leaves the socket open).
fn peek(stream: &TcpStream) -> Peeked {
    let Ok(fd) = stream.as_fd().try_clone_to_owned() else {
        return Peeked::Quiet;
    };
    let socket = std::net::TcpStream::from(fd);
    match socket.peek(&mut [0u8; 1]) {
        Ok(0) => Peeked::Closed,
        Ok(_) => Peeked::Data,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Peeked::Quiet,
        Err(_) => Peeked::Closed,
    }
}

/// Whether a kept connection can take the next batch. Syslog receivers
/// never send on the stream, so anything to read is the end of it, or
/// (over TLS) records rustls must process to tell.
async fn is_open(connection: &mut Connection) -> bool {
    match connection {
        Connection::Udp { .. } => true,
        Connection::Tcp(stream) => match peek(stream) {
            Peeked::Quiet => true,
            Peeked::Closed => false,
            Peeked::Data => drain(stream),
        },
        Connection::Tls(stream) => match peek(stream.get_ref().0) {
            Peeked::Quiet => true,
            Peeked::Closed => false,
            Peeked::Data => tls_still_open(stream).await,
        },
    }
}

/// Reads and drops what a plain TCP receiver sent; false if the stream
/// ends behind it.
fn drain(stream: &TcpStream) -> bool {
    let Ok(fd) = stream.as_fd().try_clone_to_owned() else {
        return true;
    };
    let mut socket = std::net::TcpStream::from(fd);
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        match socket.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

/// Lets rustls process the records waiting on a TLS connection (a late
/// session ticket is harmless; an alert or `close_notify` ends it). If
/// they cannot be processed now, the connection is given up: a needless
/// reconnect costs a handshake, a dead connection would cost the batch.
async fn tls_still_open(stream: &mut TlsStream<TcpStream>) -> bool {
    // Lets the runtime poll its driver, so that tokio sees the bytes.
    tokio::task::yield_now().await;
    let mut buf = [0u8; 1024];
    for _ in 0..16 {
        match timeout(Duration::ZERO, stream.read(&mut buf)).await {
            Err(_) => return peek(stream.get_ref().0) == Peeked::Quiet,
            Ok(Ok(0) | Err(_)) => return false,
            Ok(Ok(_)) => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::{
        io::{AsyncRead, AsyncReadExt as _},
        net::{TcpListener, UdpSocket},
        time::timeout,
    };
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::transport::testing::Pki;

    const T: Duration = Duration::from_secs(5);

    fn messages() -> Vec<Vec<u8>> {
        vec![
            br#"<134>1 2026-11-22T10:00:00.000000Z host app 1 msgid [x@32473 a="b"] hello"#
                .to_vec(),
            // Octets, not characters, are counted; a newline inside a
            // message stays inside its frame.
            "<132>1 2026-11-22T10:00:01Z host app 1 - - h\u{e9}llo\nsecond line".into(),
            b"<134>1 - - - - - -".to_vec(),
        ]
    }

    fn framed(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            out.extend_from_slice(format!("{} ", m.len()).as_bytes());
            out.extend_from_slice(m);
        }
        out
    }

    /// Reads exactly `n` bytes (the test fails after 5 s).
    async fn read_n<S: AsyncRead + Unpin>(stream: &mut S, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        timeout(T, stream.read_exact(&mut buf))
            .await
            .expect("receiver waited too long")
            .unwrap();
        buf
    }

    #[tokio::test]
    async fn udp_sends_one_datagram_per_message() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = receiver.local_addr().unwrap().to_string();
        let mut sender = SyslogSender::new(address, SyslogProtocol::Udp, None, None, T);
        let sent = messages();
        sender.send(&sent).await.unwrap();
        for m in &sent {
            let mut buf = vec![0; 70_000];
            let n = timeout(T, receiver.recv(&mut buf)).await.unwrap().unwrap();
            assert_eq!(&buf[..n], &m[..], "one datagram per message, unframed");
        }
    }

    #[tokio::test]
    async fn udp_refuses_a_batch_with_a_message_too_large_for_a_datagram() {
        let receiver = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = receiver.local_addr().unwrap().to_string();
        let mut sender = SyslogSender::new(address, SyslogProtocol::Udp, None, None, T);
        let batch = vec![b"<134>1 - - - - - - small".to_vec(), vec![b'x'; 70_000]];
        let err = sender.send(&batch).await.unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::TooLarge {
                    size: 70_000,
                    limit: 65_507
                }
            ),
            "{err:?}"
        );
        assert!(!err.retryable());
        assert!(err.to_string().contains("TCP or TLS"), "{err}");
        // Nothing of the batch went out.
        let mut buf = [0; 100];
        assert!(
            timeout(Duration::from_millis(200), receiver.recv(&mut buf))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn tcp_frames_by_octet_counting_in_one_write() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let mut sender = SyslogSender::new(address, SyslogProtocol::Tcp, None, None, T);
        let sent = messages();
        sender.send(&sent).await.unwrap();
        let (mut stream, _) = listener.accept().await.unwrap();
        let want = framed(&sent);
        assert!(want.starts_with(b"73 <134>1 2026-11-22T10:00:00.000000Z"));
        assert_eq!(read_n(&mut stream, want.len()).await, want);
        // A second batch reuses the connection.
        sender.send(&sent[..1]).await.unwrap();
        let one = framed(&sent[..1]);
        assert_eq!(read_n(&mut stream, one.len()).await, one);
        assert!(
            timeout(Duration::from_millis(100), listener.accept())
                .await
                .is_err(),
            "no second connection"
        );
    }

    #[tokio::test]
    async fn tls_trusts_the_configured_ca_and_frames_by_octet_counting() {
        let pki = Pki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = TlsAcceptor::from(pki.server(false));
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let want = framed(&messages());
            read_n(&mut tls, want.len()).await
        });
        // By name: the certificate names localhost.
        let config = client_tls(&pki.files(false)).unwrap();
        let mut sender = SyslogSender::new(
            format!("localhost:{port}"),
            SyslogProtocol::Tls,
            Some(config),
            None,
            T,
        );
        sender.send(&messages()).await.unwrap();
        assert_eq!(server.await.unwrap(), framed(&messages()));
    }

    #[tokio::test]
    async fn tls_refuses_a_receiver_the_ca_did_not_sign() {
        let pki = Pki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let acceptor = TlsAcceptor::from(pki.server(false));
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _ = acceptor.accept(tcp).await;
        });
        let files = TlsFiles {
            ca: Some(pki.other_ca()),
            ..TlsFiles::default()
        };
        let mut sender = SyslogSender::new(
            address,
            SyslogProtocol::Tls,
            Some(client_tls(&files).unwrap()),
            None,
            T,
        );
        let err = sender.send(&messages()).await.unwrap_err();
        assert!(matches!(err, TransportError::Tls { .. }), "{err:?}");
        assert!(
            err.to_string().contains("check the sink's CA file"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn tls_checks_the_server_name() {
        let pki = Pki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let acceptor = TlsAcceptor::from(pki.server(false));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await?;
                    let mut sink = Vec::new();
                    tls.read_to_end(&mut sink).await
                });
            }
        });
        let config = client_tls(&pki.files(false)).unwrap();
        let mut wrong = SyslogSender::new(
            address.clone(),
            SyslogProtocol::Tls,
            Some(config.clone()),
            Some("siem.example".to_owned()),
            T,
        );
        let err = wrong.send(&messages()).await.unwrap_err();
        assert!(err.to_string().contains("server name"), "{err}");
        // Connecting by IP with the name the certificate carries.
        let mut right = SyslogSender::new(
            address,
            SyslogProtocol::Tls,
            Some(config),
            Some("localhost".to_owned()),
            T,
        );
        right.send(&messages()).await.unwrap();
    }

    /// A receiver that requires a client certificate: returns what it read
    /// and the certificate the client presented, per connection.
    async fn mtls_receiver(
        pki: &Pki,
    ) -> (
        String,
        tokio::sync::mpsc::UnboundedReceiver<Result<(Vec<u8>, usize), String>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let acceptor = TlsAcceptor::from(pki.server(true));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let result = match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let certs = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
                        let mut buf = vec![0; framed(&messages()).len()];
                        tls.read_exact(&mut buf)
                            .await
                            .map(|_| (buf, certs))
                            .map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(result);
            }
        });
        (address, rx)
    }

    #[tokio::test]
    async fn tls_presents_the_client_certificate_when_configured() {
        let pki = Pki::new();
        let (address, mut results) = mtls_receiver(&pki).await;
        let mut sender = SyslogSender::new(
            address,
            SyslogProtocol::Tls,
            Some(client_tls(&pki.files(true)).unwrap()),
            Some("localhost".to_owned()),
            T,
        );
        sender.send(&messages()).await.unwrap();
        let (read, certs) = results.recv().await.unwrap().unwrap();
        assert_eq!(read, framed(&messages()));
        assert_eq!(certs, 1, "the client certificate was presented");
    }

    #[tokio::test]
    async fn tls_without_a_client_certificate_fails_where_one_is_required() {
        let pki = Pki::new();
        let (address, mut results) = mtls_receiver(&pki).await;
        let mut sender = SyslogSender::new(
            address,
            SyslogProtocol::Tls,
            Some(client_tls(&pki.files(false)).unwrap()),
            Some("localhost".to_owned()),
            T,
        );
        // TLS 1.3: the refusal comes after the client's handshake is
        // done; the sender must still report it rather than lose the
        // batch.
        let err = sender.send(&messages()).await.unwrap_err();
        assert!(matches!(err, TransportError::Tls { .. }), "{err:?}");
        assert!(err.retryable());
        assert!(err.to_string().contains("client certificate"), "{err}");
        assert!(results.recv().await.unwrap().is_err());
    }

    #[tokio::test]
    async fn tcp_reconnects_after_the_receiver_closed_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let mut sender = SyslogSender::new(address, SyslogProtocol::Tcp, None, None, T);
        let sent = messages();
        let want = framed(&sent);

        sender.send(&sent).await.unwrap();
        let (mut first, _) = listener.accept().await.unwrap();
        assert_eq!(read_n(&mut first, want.len()).await, want);
        drop(first);
        // Let the close reach the sender's side.
        tokio::time::sleep(Duration::from_millis(100)).await;

        sender.send(&sent).await.unwrap();
        let (mut second, _) = timeout(T, listener.accept()).await.unwrap().unwrap();
        assert_eq!(
            read_n(&mut second, want.len()).await,
            want,
            "the whole second batch arrived on the new connection"
        );
    }

    /// A runtime blocked on one send at a time does not poll its driver
    /// in between, so tokio has not seen the close when the next batch
    /// comes; the sender must still notice it and not write the batch
    /// into a dead connection.
    #[test]
    fn a_close_between_blocking_calls_is_noticed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let mut sender = SyslogSender::new(address, SyslogProtocol::Tcp, None, None, T);
        let sent = messages();
        let want = framed(&sent);
        listener.set_nonblocking(true).unwrap();
        let read = |listener: &std::net::TcpListener| {
            use std::io::Read as _;
            let started = Instant::now();
            let mut stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(started.elapsed() < T, "no new connection");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            stream.set_nonblocking(false).unwrap();
            stream.set_read_timeout(Some(T)).unwrap();
            let mut buf = vec![0; want.len()];
            stream.read_exact(&mut buf).unwrap();
            buf
        };
        rt.block_on(sender.send(&sent)).unwrap();
        assert_eq!(read(&listener), want);
        // The first connection is closed once read; give the FIN time to
        // arrive without running the runtime.
        std::thread::sleep(Duration::from_millis(100));
        rt.block_on(sender.send(&sent)).unwrap();
        assert_eq!(read(&listener), want, "the batch came on a new connection");
    }

    #[tokio::test]
    async fn tls_reconnects_after_the_receiver_closed_the_connection() {
        let pki = Pki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let acceptor = TlsAcceptor::from(pki.server(false));
        let mut sender = SyslogSender::new(
            address,
            SyslogProtocol::Tls,
            Some(client_tls(&pki.files(false)).unwrap()),
            Some("localhost".to_owned()),
            T,
        );
        let batch = messages();
        let want = framed(&batch);
        for round in 0..2 {
            let (sent, accepted) = tokio::join!(sender.send(&batch), async {
                let (tcp, _) = timeout(T, listener.accept()).await.unwrap().unwrap();
                let mut tls = acceptor.accept(tcp).await.unwrap();
                let read = read_n(&mut tls, want.len()).await;
                // A clean TLS close (close_notify), then the socket.
                tls.shutdown().await.unwrap();
                read
            });
            sent.unwrap();
            assert_eq!(accepted, want, "round {round}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test]
    async fn a_receiver_that_never_reads_makes_the_send_time_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        // Accepts, then never reads: the socket buffers fill up.
        let held = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        });
        let after = Duration::from_millis(500);
        let mut sender = SyslogSender::new(address, SyslogProtocol::Tcp, None, None, after);
        let batch = vec![vec![b'x'; 1 << 20]; 64];
        let started = Instant::now();
        let err = sender.send(&batch).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, TransportError::Timeout { .. }), "{err:?}");
        assert!(err.retryable());
        assert!(took >= after && took < Duration::from_secs(3), "{took:?}");
        held.abort();
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_retryable_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let mut sender = SyslogSender::new(address.clone(), SyslogProtocol::Tcp, None, None, T);
        let err = sender.send(&messages()).await.unwrap_err();
        assert!(matches!(err, TransportError::Connect { .. }), "{err:?}");
        assert!(err.retryable());
        assert!(err.to_string().contains(&address), "{err}");
    }

    #[tokio::test]
    async fn an_address_without_a_port_is_a_config_error() {
        let mut sender =
            SyslogSender::new("localhost".to_owned(), SyslogProtocol::Tcp, None, None, T);
        let err = sender.send(&messages()).await.unwrap_err();
        assert!(matches!(err, TransportError::Config(_)), "{err:?}");
        assert!(!err.retryable());
    }

    #[test]
    fn protocols_parse_from_their_names() {
        for p in [
            SyslogProtocol::Udp,
            SyslogProtocol::Tcp,
            SyslogProtocol::Tls,
        ] {
            assert_eq!(p.as_str().parse::<SyslogProtocol>().unwrap(), p);
        }
        let err = "relp".parse::<SyslogProtocol>().unwrap_err();
        assert!(
            err.to_string().contains("\"udp\", \"tcp\" or \"tls\""),
            "{err}"
        );
    }

    #[test]
    fn hosts_are_taken_from_addresses() {
        assert_eq!(host_of("siem.example:6514"), Some("siem.example"));
        assert_eq!(host_of("[::1]:6514"), Some("::1"));
        assert_eq!(host_of("siem.example"), None);
        assert_eq!(host_of(":6514"), None);
        assert_eq!(host_of("siem.example:tls"), None);
    }
}
