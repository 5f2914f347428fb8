//! Real receivers for the SIEM sink tests: a real `rsyslogd` (Debian's
//! package) listening on UDP, TCP, TLS and mutual TLS, and an HTTP(S)
//! receiver that records every request and answers as a test tells it.
//!
//! Both listen on 127.0.0.1 only, on free ports, and clean up after
//! themselves: [`Rsyslog`] stops the rsyslogd it started (by its pid) and
//! removes its directory; [`HttpsReceiver`] stops its server thread.

use std::{
    fmt, fs,
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail, ensure};
use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use hmac::{Hmac, Mac as _};
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::watch;

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";

/// A test PKI in a directory: a CA, a server certificate for `localhost`
/// and 127.0.0.1, and a client certificate, as PEM files.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate: what a client must trust.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A client certificate the CA signed (for mutual TLS).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    server_der: CertificateDer<'static>,
    server_key_der: Vec<u8>,
}

impl TestPki {
    /// Generates the certificates into `dir`.
    ///
    /// # Errors
    /// If generating or writing fails.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "residency test receivers CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;

        let server_key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server = params.signed_by(&server_key, &*ca)?;

        let client_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["residency-sink".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "residency-sink");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = params.signed_by(&client_key, &*ca)?;

        let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
            let path = dir.join(name);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        Ok(TestPki {
            ca: write("ca.pem", &ca.pem())?,
            server_cert: write("server.pem", &server.pem())?,
            server_key: write("server.key", &server_key.serialize_pem())?,
            client_cert: write("client.pem", &client.pem())?,
            client_key: write("client.key", &client_key.serialize_pem())?,
            server_der: server.der().clone(),
            server_key_der: server_key.serialize_der(),
        })
    }

    /// A rustls server configuration with the server certificate.
    ///
    /// # Errors
    /// If rustls refuses the certificate.
    pub fn rustls_server(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.server_der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key_der.clone())),
            )?;
        Ok(Arc::new(config))
    }
}

/// Why a receiver cannot run here: its program is not installed. Tests
/// turn this into a skip, except under `CI=true`.
#[derive(Debug)]
pub struct NotInstalled(pub String);

impl fmt::Display for NotInstalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotInstalled {}

/// The inputs of [`Rsyslog`], each written to its own file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyslogInput {
    Udp,
    Tcp,
    /// TLS, any client (gtls driver, auth mode `anon`).
    Tls,
    /// TLS requiring a client certificate the CA signed (auth mode
    /// `x509/certvalid`).
    Mtls,
}

impl SyslogInput {
    pub const ALL: [SyslogInput; 4] = [
        SyslogInput::Udp,
        SyslogInput::Tcp,
        SyslogInput::Tls,
        SyslogInput::Mtls,
    ];

    /// Also the name of the input's file (`<name>.log`) and ruleset.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            SyslogInput::Udp => "udp",
            SyslogInput::Tcp => "tcp",
            SyslogInput::Tls => "tls",
            SyslogInput::Mtls => "mtls",
        }
    }
}

/// A real rsyslogd, run as the current user from a temporary directory
/// with a configuration of its own: no system configuration, no journal,
/// kernel log or local socket inputs; only network inputs on 127.0.0.1.
///
/// Each input writes every message to its own file as `%rawmsg%` and a
/// newline: the message exactly as received, without the octet-counting
/// frame. rsyslog escapes control characters on receipt (a newline inside
/// a message arrives as `#012`).
pub struct Rsyslog {
    pub udp_port: u16,
    /// Plain TCP; octet-counted framing (RFC 6587) is on explicitly.
    pub tcp_port: u16,
    /// TLS (RFC 5425) with the gtls driver, any client.
    pub tls_port: u16,
    /// TLS that requires a client certificate signed by the CA.
    pub mtls_port: u16,
    /// The CA that signed rsyslog's certificate: what clients trust.
    pub ca_path: PathBuf,
    /// The certificates, including a client certificate for `mtls_port`.
    pub pki: TestPki,
    child: Option<Child>,
    config: PathBuf,
    pidfile: PathBuf,
    stderr: PathBuf,
    dir: tempfile::TempDir,
}

impl fmt::Debug for Rsyslog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rsyslog")
            .field("udp_port", &self.udp_port)
            .field("tcp_port", &self.tcp_port)
            .field("tls_port", &self.tls_port)
            .field("mtls_port", &self.mtls_port)
            .field("dir", &self.dir.path())
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

/// Where Debian puts rsyslog's plugins (multiarch), if the gtls driver is
/// among them.
fn gtls_driver() -> Option<PathBuf> {
    let mut candidates = vec![PathBuf::from("/usr/lib/rsyslog")];
    if let Ok(entries) = fs::read_dir("/usr/lib") {
        candidates.extend(entries.flatten().map(|e| e.path().join("rsyslog")));
    }
    candidates
        .into_iter()
        .map(|dir| dir.join("lmnsd_gtls.so"))
        .find(|p| p.is_file())
}

/// Free ports on 127.0.0.1: one UDP, three TCP, all held until all are
/// chosen (a port released at once could be handed out again).
fn free_ports() -> anyhow::Result<(u16, [u16; 3])> {
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    let tcp = [
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    ];
    let mut ports = [0; 3];
    for (port, listener) in ports.iter_mut().zip(&tcp) {
        *port = listener.local_addr()?.port();
    }
    Ok((udp.local_addr()?.port(), ports))
}

/// Socket inodes of `/proc/net/<table>` bound to 127.0.0.1:`port` in
/// `state` (hex, as the kernel prints it: 0A is LISTEN, 07 an unconnected
/// UDP socket).
fn socket_inodes(table: &str, port: u16, state: &str) -> Vec<String> {
    let want = format!("0100007F:{port:04X}");
    fs::read_to_string(format!("/proc/net/{table}"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.get(1) == Some(&want.as_str()) && cols.get(3) == Some(&state))
                .then(|| cols.get(9).map(|s| (*s).to_owned()))
                .flatten()
        })
        .collect()
}

/// Socket inodes a process holds open.
fn process_sockets(pid: u32) -> Vec<String> {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| fs::read_link(e.path()).ok())
                .filter_map(|target| {
                    target
                        .to_str()?
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Rsyslog {
    /// Writes certificates and a configuration into a new temporary
    /// directory, and starts rsyslogd on free ports.
    ///
    /// # Errors
    /// [`NotInstalled`] (inside the `anyhow::Error`) if rsyslogd or its
    /// gtls driver is missing; otherwise if the configuration is refused
    /// or rsyslogd does not listen within 15 s (the error carries its
    /// output).
    pub fn start() -> anyhow::Result<Self> {
        if !Path::new(RSYSLOGD).is_file() {
            return Err(NotInstalled(format!(
                "{RSYSLOGD} is not installed (Debian packages rsyslog and rsyslog-gnutls; `cargo xtask test` installs them)"
            ))
            .into());
        }
        if gtls_driver().is_none() {
            return Err(NotInstalled(
                "rsyslog's TLS driver lmnsd_gtls.so is not installed (Debian package rsyslog-gnutls; `cargo xtask test` installs it)"
                    .to_owned(),
            )
            .into());
        }
        let dir = tempfile::Builder::new()
            .prefix("residency-rsyslog-")
            .tempdir()?;
        let pki = TestPki::generate(dir.path())?;
        let work = dir.path().join("work");
        fs::create_dir(&work)?;
        let (udp_port, [tcp_port, tls_port, mtls_port]) = free_ports()?;
        let mut rsyslog = Rsyslog {
            udp_port,
            tcp_port,
            tls_port,
            mtls_port,
            ca_path: pki.ca.clone(),
            config: dir.path().join("rsyslog.conf"),
            pidfile: dir.path().join("rsyslogd.pid"),
            stderr: dir.path().join("rsyslogd.log"),
            pki,
            child: None,
            dir,
        };
        fs::write(&rsyslog.config, rsyslog.configuration(&work))?;
        // A configuration error makes rsyslogd carry on without the
        // broken part; a validation run says so up front.
        let check = Command::new(RSYSLOGD)
            .args(["-N1", "-f"])
            .arg(&rsyslog.config)
            .stdin(Stdio::null())
            .output()
            .context("running rsyslogd -N1")?;
        ensure!(
            check.status.success(),
            "rsyslogd refuses the configuration {}: {}{}",
            rsyslog.config.display(),
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        rsyslog.spawn()?;
        Ok(rsyslog)
    }

    fn configuration(&self, work: &Path) -> String {
        let file = |input: SyslogInput| self.file(input).display().to_string();
        let tls = |port: u16, input: SyslogInput, auth: &str| {
            format!(
                r#"input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="{name}"
      supportOctetCountedFraming="on"
      streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{auth}"
      streamDriver.caFile="{ca}" streamDriver.certFile="{cert}" streamDriver.keyFile="{key}")
"#,
                name = input.name(),
                ca = self.pki.ca.display(),
                cert = self.pki.server_cert.display(),
                key = self.pki.server_key.display(),
            )
        };
        let mut conf = format!(
            r#"# Written by residency-tests for one test; see tests/src/receivers.rs.
global(
    workDirectory="{work}"
    maxMessageSize="64k"
    net.enableDNS="off"
    defaultNetstreamDriverCAFile="{ca}"
    defaultNetstreamDriverCertFile="{cert}"
    defaultNetstreamDriverKeyFile="{key}"
)
module(load="imudp")
module(load="imtcp" maxSessions="200")
template(name="raw" type="string" string="%rawmsg%\n")
"#,
            work = work.display(),
            ca = self.pki.ca.display(),
            cert = self.pki.server_cert.display(),
            key = self.pki.server_key.display(),
        );
        let rulesets = SyslogInput::ALL.map(|input| {
            format!(
                "ruleset(name=\"{name}\") {{ action(type=\"omfile\" file=\"{file}\" template=\"raw\") stop }}\n",
                name = input.name(),
                file = file(input),
            )
        });
        let plain = format!(
            "input(type=\"imudp\" address=\"127.0.0.1\" port=\"{udp}\" ruleset=\"udp\")\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{tcp}\" ruleset=\"tcp\" supportOctetCountedFraming=\"on\")\n",
            udp = self.udp_port,
            tcp = self.tcp_port,
        );
        conf.extend(rulesets);
        conf.push_str(&plain);
        conf.push_str(&tls(self.tls_port, SyslogInput::Tls, "anon"));
        conf.push_str(&tls(self.mtls_port, SyslogInput::Mtls, "x509/certvalid"));
        conf
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr)?;
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(&self.config)
            .arg("-i")
            .arg(&self.pidfile)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr)
            .spawn()
            .context("starting rsyslogd")?;
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!("rsyslogd exited ({status}): {}", self.log());
            }
            if self.listening(pid) {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.stop();
                bail!(
                    "rsyslogd did not listen on 127.0.0.1 ports udp {} tcp {} tls {} mtls {} within 15 s: {}",
                    self.udp_port,
                    self.tcp_port,
                    self.tls_port,
                    self.mtls_port,
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether every port is bound by this rsyslogd (its own sockets, so
    /// not some other program that took a port). A listening TCP socket
    /// accepts connections (the kernel completes them); probing by
    /// connecting would make gtls log a failed handshake.
    fn listening(&self, pid: u32) -> bool {
        let ours = process_sockets(pid);
        let held = |table: &str, port: u16, state: &str| {
            socket_inodes(table, port, state)
                .iter()
                .any(|inode| ours.contains(inode))
        };
        held("udp", self.udp_port, "07")
            && [self.tcp_port, self.tls_port, self.mtls_port]
                .into_iter()
                .all(|port| held("tcp", port, "0A"))
    }

    /// The pid of the running rsyslogd.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The port of an input.
    #[must_use]
    pub fn port(&self, input: SyslogInput) -> u16 {
        match input {
            SyslogInput::Udp => self.udp_port,
            SyslogInput::Tcp => self.tcp_port,
            SyslogInput::Tls => self.tls_port,
            SyslogInput::Mtls => self.mtls_port,
        }
    }

    /// The file an input writes to.
    #[must_use]
    pub fn file(&self, input: SyslogInput) -> PathBuf {
        self.dir.path().join(format!("{}.log", input.name()))
    }

    /// rsyslogd's own output (errors and warnings), for failure messages.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The messages an input has written so far, one per line, in order.
    #[must_use]
    pub fn lines(&self, input: SyslogInput) -> Vec<String> {
        fs::read_to_string(self.file(input))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits until an input has written at least `n` messages, and
    /// returns them all.
    ///
    /// # Errors
    /// If fewer arrive within `timeout`; the error shows what did arrive
    /// and rsyslogd's output.
    pub fn wait_lines(
        &self,
        input: SyslogInput,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.lines(input);
            if lines.len() >= n {
                return Ok(lines);
            }
            if Instant::now() > deadline {
                bail!(
                    "rsyslog's {} input wrote {} of {n} messages within {timeout:?}: {lines:#?}\nrsyslogd: {}",
                    input.name(),
                    lines.len(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops rsyslogd: SIGTERM to the process this guard started (so it
    /// flushes its files), SIGKILL if it has not exited after 5 s. Its
    /// files stay until the guard is dropped.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops rsyslogd and starts it again on the same ports, appending to
    /// the same files (a receiver that goes down and comes back).
    ///
    /// # Errors
    /// If it does not come back.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts [`Rsyslog`], or says why the test is skipped: `None` when
/// rsyslog is not installed, except under `CI=true`, where `cargo xtask
/// test` installs it and a skip would hide a missing check.
///
/// # Errors
/// If rsyslog fails to start, or is missing under `CI=true`.
pub fn rsyslog_or_skip(test: &str) -> anyhow::Result<Option<Rsyslog>> {
    match Rsyslog::start() {
        Ok(rsyslog) => Ok(Some(rsyslog)),
        Err(e) if e.is::<NotInstalled>() => {
            if std::env::var("CI").as_deref() == Ok("true") {
                return Err(e.context(format!("{test}: CI=true, so rsyslog must be installed")));
            }
            eprintln!("SKIPPED {test}: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// One request the [`HttpsReceiver`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status the receiver answered.
    pub status: u16,
}

impl Received {
    /// The first value of a header (name in any case).
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    ///
    /// # Errors
    /// If it is not JSON.
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).context("request body is not JSON")
    }
}

/// What the receiver answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// A status with an empty body.
    #[must_use]
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A status with a JSON body.
    #[must_use]
    pub fn json(status: u16, body: &Value) -> Self {
        Reply {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.to_string().into_bytes(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// Chooses the reply to a request.
pub type Responder = Arc<dyn Fn(&Received) -> Reply + Send + Sync>;

/// 200 with an empty body, to everything.
#[must_use]
pub fn answer_ok() -> Responder {
    Arc::new(|_| Reply::status(200))
}

/// Splunk HTTP Event Collector: `Authorization: Splunk <token>` or 401
/// (missing or malformed) / 403 (wrong token), with HEC's bodies and
/// codes; success is `{"text":"Success","code":0}`.
#[must_use]
pub fn splunk_hec(token: &str) -> Responder {
    let token = token.to_owned();
    Arc::new(move |request| match request.header("authorization") {
        None => Reply::json(401, &json!({"text": "Token is required", "code": 2})),
        Some(value) => match value.strip_prefix("Splunk ") {
            None => Reply::json(401, &json!({"text": "Invalid authorization", "code": 3})),
            Some(given) if given.trim() != token => {
                Reply::json(403, &json!({"text": "Invalid token", "code": 4}))
            }
            Some(_) => Reply::json(200, &json!({"text": "Success", "code": 0})),
        },
    })
}

/// The items of an Elasticsearch bulk answer for an NDJSON bulk body: one
/// per action line (`index`, `create`, `update`, `delete`; all but
/// `delete` are followed by a document line).
///
/// # Errors
/// If a line is not JSON or an action is unknown.
pub fn bulk_items(body: &[u8]) -> anyhow::Result<Vec<Value>> {
    let text = std::str::from_utf8(body).context("bulk body is not UTF-8")?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let mut items = Vec::new();
    while let Some(line) = lines.next() {
        let action: Value = serde_json::from_str(line)
            .with_context(|| format!("malformed action/metadata line {line:?}"))?;
        let (kind, meta) = action
            .as_object()
            .and_then(|o| o.iter().next())
            .context("empty action line")?;
        let (status, result) = match kind.as_str() {
            "index" | "create" => (201, "created"),
            "update" => (200, "updated"),
            "delete" => (200, "deleted"),
            other => bail!("unknown bulk action {other:?}"),
        };
        if kind != "delete" {
            let doc = lines
                .next()
                .with_context(|| format!("{kind} action without a document"))?;
            serde_json::from_str::<Value>(doc)
                .with_context(|| format!("document line is not JSON: {doc:?}"))?;
        }
        let n = items.len();
        items.push(json!({ kind: {
            "_index": meta.get("_index").cloned().unwrap_or(Value::Null),
            "_id": meta.get("_id").cloned().unwrap_or_else(|| json!(format!("test-{n}"))),
            "status": status,
            "result": result,
        }}));
    }
    Ok(items)
}

/// Elasticsearch `_bulk`: `{"errors":false,"items":[...]}` with one item
/// per action line, or 400 with an Elasticsearch-style error for a
/// malformed body.
#[must_use]
pub fn elasticsearch_bulk() -> Responder {
    Arc::new(|request| match bulk_items(&request.body) {
        Ok(items) => Reply::json(200, &json!({"took": 1, "errors": false, "items": items})),
        Err(e) => Reply::json(
            400,
            &json!({
                "error": {"type": "illegal_argument_exception", "reason": format!("{e:#}")},
                "status": 400
            }),
        ),
    })
}

/// The key of a Standard Webhooks secret as it is written
/// (`whsec_<base64>`): the decoded bytes.
#[must_use]
pub fn webhook_key(secret: &str) -> Option<Vec<u8>> {
    BASE64
        .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
        .ok()
}

/// How far `webhook-timestamp` may be from now (Standard Webhooks'
/// recommended tolerance).
pub const WEBHOOK_TOLERANCE: Duration = Duration::from_mins(5);

/// Verifies a Standard Webhooks v1 signature, written here from the
/// specification rather than shared with the sender: `webhook-signature`
/// holds space-separated `v1,<base64>` entries, one of which must be
/// base64(HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")), and
/// `webhook-timestamp` (Unix seconds) must be within
/// [`WEBHOOK_TOLERANCE`] of now. `key` is the decoded secret (see
/// [`webhook_key`]).
#[must_use]
pub fn verify_standard_webhook(key: &[u8], headers: &[(String, String)], body: &[u8]) -> bool {
    verify_standard_webhook_at(key, headers, body, SystemTime::now())
}

/// [`verify_standard_webhook`] as of `now`.
#[must_use]
pub fn verify_standard_webhook_at(
    key: &[u8],
    headers: &[(String, String)],
    body: &[u8],
    now: SystemTime,
) -> bool {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(seconds) = timestamp.parse::<u64>() else {
        return false;
    };
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if now.abs_diff(seconds) > WEBHOOK_TOLERANCE.as_secs() {
        return false;
    }
    let Ok(mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    let mut mac = mac;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    signatures.split(' ').any(|entry| {
        entry
            .strip_prefix("v1,")
            .and_then(|b64| BASE64.decode(b64).ok())
            // verify_slice compares in constant time.
            .is_some_and(|signature| mac.clone().verify_slice(&signature).is_ok())
    })
}

/// A temporary answer that overrides the responder.
#[derive(Debug, Clone)]
struct Override {
    reply: Reply,
    until: Option<Instant>,
    remaining: Option<usize>,
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Received>>,
    overrides: Mutex<Option<Override>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Server {
    stop: watch::Sender<bool>,
    thread: thread::JoinHandle<()>,
}

/// An HTTP(S) receiver on 127.0.0.1: records every request in order and
/// answers with its [`Responder`], unless told to answer something else
/// for a while. It runs on its own thread and runtime, so it serves tests
/// with or without a runtime of their own.
pub struct HttpsReceiver {
    pub port: u16,
    /// The CA of the server certificate (for TLS receivers).
    pub ca_path: Option<PathBuf>,
    tls: Option<Arc<rustls::ServerConfig>>,
    responder: Responder,
    shared: Arc<Shared>,
    server: Option<Server>,
    _dir: tempfile::TempDir,
}

impl fmt::Debug for HttpsReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsReceiver")
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("running", &self.server.is_some())
            .finish_non_exhaustive()
    }
}

impl HttpsReceiver {
    /// An HTTPS receiver with a certificate for `localhost` and
    /// 127.0.0.1 from a new CA ([`HttpsReceiver::ca_path`]).
    ///
    /// # Errors
    /// If the certificates or the socket cannot be made.
    pub fn start(responder: Responder) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("residency-https-")
            .tempdir()?;
        let pki = TestPki::generate(dir.path())?;
        Self::launch(Some(pki.rustls_server()?), Some(pki.ca), responder, dir)
    }

    /// A plain HTTP receiver.
    ///
    /// # Errors
    /// If the socket cannot be made.
    pub fn start_plain(responder: Responder) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("residency-http-")
            .tempdir()?;
        Self::launch(None, None, responder, dir)
    }

    fn launch(
        tls: Option<Arc<rustls::ServerConfig>>,
        ca_path: Option<PathBuf>,
        responder: Responder,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let mut receiver = HttpsReceiver {
            port: listener.local_addr()?.port(),
            ca_path,
            tls,
            responder,
            shared: Arc::new(Shared::default()),
            server: None,
            _dir: dir,
        };
        receiver.serve(listener)?;
        Ok(receiver)
    }

    fn serve(&mut self, listener: TcpListener) -> anyhow::Result<()> {
        listener.set_nonblocking(true)?;
        let (stop, mut stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let tls = self.tls.clone().map(tokio_rustls::TlsAcceptor::from);
        let responder = Arc::clone(&self.responder);
        let shared = Arc::clone(&self.shared);
        let thread = thread::Builder::new()
            .name(format!("https-receiver-{}", self.port))
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    loop {
                        let accepted = tokio::select! {
                            a = listener.accept() => a,
                            _ = stopped.changed() => return,
                        };
                        let Ok((tcp, _)) = accepted else { continue };
                        let tls = tls.clone();
                        let responder = Arc::clone(&responder);
                        let shared = Arc::clone(&shared);
                        tokio::spawn(async move {
                            match tls {
                                Some(acceptor) => {
                                    if let Ok(stream) = acceptor.accept(tcp).await {
                                        connection(TokioIo::new(stream), responder, shared).await;
                                    }
                                }
                                None => connection(TokioIo::new(tcp), responder, shared).await,
                            }
                        });
                    }
                });
                // Dropping the runtime here ends every open connection:
                // a stopped receiver keeps no kept-alive connection open.
            })?;
        self.server = Some(Server { stop, thread });
        Ok(())
    }

    /// The URL of `path` on this receiver (`https://localhost:<port>`, or
    /// `http://127.0.0.1:<port>` for a plain one).
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        if self.tls.is_some() {
            format!("https://localhost:{}{path}", self.port)
        } else {
            format!("http://127.0.0.1:{}{path}", self.port)
        }
    }

    /// The address, for clients that connect by IP.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Every request so far, in order of arrival.
    #[must_use]
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.shared.requests).clone()
    }

    /// Waits until at least `n` requests have arrived and returns them.
    ///
    /// # Errors
    /// If fewer arrive within `timeout`.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> anyhow::Result<Vec<Received>> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return Ok(requests);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} of {n} requests arrived within {timeout:?}: {:?}",
                    requests.len(),
                    requests
                        .iter()
                        .map(|r| format!("{} {} -> {}", r.method, r.path, r.status))
                        .collect::<Vec<_>>()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Answers `reply` instead of the responder for `duration`.
    pub fn answer_for(&self, reply: Reply, duration: Duration) {
        *lock(&self.shared.overrides) = Some(Override {
            reply,
            until: Some(Instant::now() + duration),
            remaining: None,
        });
    }

    /// Answers `reply` instead of the responder to the next `n` requests.
    pub fn answer_next(&self, reply: Reply, n: usize) {
        *lock(&self.shared.overrides) = Some(Override {
            reply,
            until: None,
            remaining: Some(n),
        });
    }

    /// Back to the responder.
    pub fn answer_normally(&self) {
        *lock(&self.shared.overrides) = None;
    }

    /// Stops listening and closes every connection; the port stays free
    /// for [`HttpsReceiver::resume`]. Requests recorded so far are kept.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.stop.send(true);
            let _ = server.thread.join();
        }
    }

    /// Listens again on the same port, after [`HttpsReceiver::stop`].
    ///
    /// # Errors
    /// If the port cannot be bound again.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        ensure!(self.server.is_none(), "the receiver is running");
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .with_context(|| format!("binding 127.0.0.1:{} again", self.port))?;
        self.serve(listener)
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn connection<I>(io: I, responder: Responder, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let responder = Arc::clone(&responder);
        let shared = Arc::clone(&shared);
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await?.to_bytes().to_vec();
            let mut received = Received {
                method: parts.method.to_string(),
                path: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| parts.uri.path().to_owned(), ToString::to_string),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body,
                status: 0,
            };
            let overridden = {
                let mut overrides = lock(&shared.overrides);
                let active = overrides.as_mut().and_then(|o| {
                    let live = o.until.is_none_or(|t| Instant::now() < t)
                        && o.remaining.is_none_or(|n| n > 0);
                    if live && let Some(n) = &mut o.remaining {
                        *n -= 1;
                    }
                    live.then(|| o.reply.clone())
                });
                if active.is_none() {
                    *overrides = None;
                }
                active
            };
            let reply = overridden.unwrap_or_else(|| responder(&received));
            received.status = reply.status;
            lock(&shared.requests).push(received);
            let mut response = hyper::Response::builder().status(reply.status);
            for (name, value) in &reply.headers {
                response = response.header(name, value);
            }
            let response = response
                .body(Full::new(Bytes::from(reply.body)))
                .unwrap_or_else(|_| {
                    let mut r = hyper::Response::new(Full::new(Bytes::new()));
                    *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
                    r
                });
            Ok::<_, hyper::Error>(response)
        }
    });
    let _ = http1::Builder::new().serve_connection(io, service).await;
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use hyper::{
        Uri,
        header::{AUTHORIZATION, HeaderName, HeaderValue},
    };
    use residency_siem::transport::{HttpSender, TlsFiles, TransportError};
    use serde_json::{Value, json};

    use super::*;

    const T: Duration = Duration::from_secs(5);

    fn sender(receiver: &HttpsReceiver) -> HttpSender {
        let files = receiver.ca_path.clone().map(|ca| TlsFiles {
            ca: Some(ca),
            ..TlsFiles::default()
        });
        HttpSender::new(files.as_ref(), T).unwrap()
    }

    fn url(receiver: &HttpsReceiver, path: &str) -> Uri {
        receiver.url(path).parse().unwrap()
    }

    #[tokio::test]
    async fn records_requests_in_order_and_answers_with_the_responder() {
        let receiver = HttpsReceiver::start(splunk_hec("t0k3n")).unwrap();
        let sender = sender(&receiver);
        let hec = url(&receiver, "/services/collector/event?channel=x");
        let auth = [(AUTHORIZATION, HeaderValue::from_static("Splunk t0k3n"))];

        let reply = sender
            .post(&hec, &auth, br#"{"event":1}"#.to_vec())
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body, json!({"text": "Success", "code": 0}));

        let wrong = [(AUTHORIZATION, HeaderValue::from_static("Splunk nope"))];
        let err = sender
            .post(&hec, &wrong, br#"{"event":2}"#.to_vec())
            .await
            .unwrap_err();
        assert!(
            matches!(err, TransportError::Http { status: 403, .. }) && !err.retryable(),
            "{err:?}"
        );
        let err = sender
            .post(&hec, &[], br#"{"event":3}"#.to_vec())
            .await
            .unwrap_err();
        assert!(
            matches!(err, TransportError::Http { status: 401, .. }),
            "{err:?}"
        );

        let requests = receiver.wait_requests(3, T).unwrap();
        let seen: Vec<(&str, &str, u16, &[u8])> = requests
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str(), r.status, &r.body[..]))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    "POST",
                    "/services/collector/event?channel=x",
                    200,
                    &br#"{"event":1}"#[..]
                ),
                (
                    "POST",
                    "/services/collector/event?channel=x",
                    403,
                    br#"{"event":2}"#
                ),
                (
                    "POST",
                    "/services/collector/event?channel=x",
                    401,
                    br#"{"event":3}"#
                ),
            ]
        );
        assert_eq!(requests[0].header("Authorization"), Some("Splunk t0k3n"));
        assert_eq!(requests[2].header("authorization"), None);
    }

    #[tokio::test]
    async fn answers_a_status_for_a_number_of_requests_or_a_while() {
        let receiver = HttpsReceiver::start_plain(answer_ok()).unwrap();
        let sender = sender(&receiver);
        let hook = url(&receiver, "/hook");
        receiver.answer_next(Reply::status(503).with_header("retry-after", "2"), 2);
        for _ in 0..2 {
            let err = sender.post(&hook, &[], b"{}".to_vec()).await.unwrap_err();
            match err {
                TransportError::Http {
                    status: 503,
                    retry_after,
                    ..
                } => assert_eq!(retry_after, Some(Duration::from_secs(2))),
                other => panic!("{other:?}"),
            }
        }
        sender.post(&hook, &[], b"{}".to_vec()).await.unwrap();

        receiver.answer_for(Reply::status(429), Duration::from_secs(1));
        let err = sender.post(&hook, &[], b"{}".to_vec()).await.unwrap_err();
        assert!(err.retryable(), "{err:?}");
        tokio::time::sleep(Duration::from_millis(1200)).await;
        sender.post(&hook, &[], b"{}".to_vec()).await.unwrap();
        let statuses: Vec<u16> = receiver.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [503, 503, 200, 429, 200]);
    }

    #[tokio::test]
    async fn stops_and_comes_back_on_the_same_port() {
        let mut receiver = HttpsReceiver::start(answer_ok()).unwrap();
        let sender = sender(&receiver);
        let hook = url(&receiver, "/hook");
        sender.post(&hook, &[], b"1".to_vec()).await.unwrap();
        let port = receiver.port;

        receiver.stop();
        let err = sender.post(&hook, &[], b"2".to_vec()).await.unwrap_err();
        assert!(err.retryable(), "{err:?}");

        receiver.resume().unwrap();
        assert_eq!(receiver.port, port);
        sender.post(&hook, &[], b"3".to_vec()).await.unwrap();
        let bodies: Vec<Vec<u8>> = receiver.requests().into_iter().map(|r| r.body).collect();
        assert_eq!(bodies, [b"1".to_vec(), b"3".to_vec()]);
    }

    #[tokio::test]
    async fn answers_a_bulk_request_with_one_item_per_action() {
        let receiver = HttpsReceiver::start_plain(elasticsearch_bulk()).unwrap();
        let sender = sender(&receiver);
        let bulk = url(&receiver, "/_bulk");
        let ndjson = [(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/x-ndjson"),
        )];
        let body = concat!(
            r#"{"create":{"_index":"residency","_id":"a"}}"#,
            "\n",
            r#"{"@timestamp":"2026-11-22T10:00:00Z"}"#,
            "\n",
            r#"{"index":{"_index":"residency"}}"#,
            "\n",
            r#"{"n":2}"#,
            "\n",
            r#"{"delete":{"_index":"residency","_id":"c"}}"#,
            "\n",
        );
        let reply = sender
            .post(&bulk, &ndjson, body.as_bytes().to_vec())
            .await
            .unwrap();
        let answer: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(answer["errors"], false);
        let items = answer["items"].as_array().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0]["create"]["_id"], "a");
        assert_eq!(items[0]["create"]["status"], 201);
        assert_eq!(items[2]["delete"]["_id"], "c");

        let err = sender
            .post(&bulk, &ndjson, b"not json\n".to_vec())
            .await
            .unwrap_err();
        assert!(
            matches!(err, TransportError::Http { status: 400, .. }),
            "{err:?}"
        );
    }

    fn webhook_headers(id: &str, ts: &str, signature: &str) -> Vec<(String, String)> {
        vec![
            ("webhook-id".to_owned(), id.to_owned()),
            ("webhook-timestamp".to_owned(), ts.to_owned()),
            ("webhook-signature".to_owned(), signature.to_owned()),
        ]
    }

    #[test]
    fn verifies_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = webhook_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let then = UNIX_EPOCH + Duration::from_secs(1_614_265_330);
        let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let headers = webhook_headers("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", signature);
        assert!(verify_standard_webhook_at(&key, &headers, body, then));
        // One of several signatures (key rotation) is enough.
        let several = webhook_headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            &format!("v1,AAAA {signature} v1a,xyz"),
        );
        assert!(verify_standard_webhook_at(&key, &several, body, then));
        // A changed body, id, key or a stale timestamp fails.
        assert!(!verify_standard_webhook_at(&key, &headers, b"{}", then));
        let other_id = webhook_headers("msg_other", "1614265330", signature);
        assert!(!verify_standard_webhook_at(&key, &other_id, body, then));
        assert!(!verify_standard_webhook_at(
            b"other key",
            &headers,
            body,
            then
        ));
        let later = then + WEBHOOK_TOLERANCE + Duration::from_secs(1);
        assert!(!verify_standard_webhook_at(&key, &headers, body, later));
        assert!(!verify_standard_webhook(&key, &headers, body));
        assert!(!verify_standard_webhook_at(&key, &headers[..2], body, then));
    }

    #[test]
    fn verifies_a_fresh_signature() {
        let key = b"a secret key of some length".to_vec();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string();
        let body = br#"{"type":"violation"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("msg_1.{now}.").as_bytes());
        mac.update(body);
        let signature = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
        let headers = webhook_headers("msg_1", &now, &signature);
        assert!(verify_standard_webhook(&key, &headers, body));
    }
}
