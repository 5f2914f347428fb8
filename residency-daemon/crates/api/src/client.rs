//! The other side of the API: a small HTTP/1 client (hyper, over the unix
//! socket or TCP) and what `residency flows` and `residency violations`
//! print with it.
//!
//! By default it uses the socket when running as root and the socket
//! exists, and otherwise `127.0.0.1` (the port from the daemon's
//! `api.addr`, or 7470) with the token from `/var/lib/residency/api.token`.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request,
    body::Bytes,
    header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT},
};
use hyper_util::rt::TokioIo;
use residency_record::RecordView;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpStream, UnixStream},
};

use residency_evidence::DEFAULT_STATE_DIR;

use crate::config::{DEFAULT_API_PORT, DEFAULT_API_SOCKET};

/// How long one request may take, connection included.
const TIMEOUT: Duration = Duration::from_mins(2);

/// Where the API is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A unix socket.
    Socket(PathBuf),
    /// `host:port` over plain HTTP.
    Tcp(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Socket(p) => write!(f, "{}", p.display()),
            Target::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

impl Target {
    /// Parses `--api`: a socket path (`/run/residency/api.sock`,
    /// `unix:PATH`), `http://HOST[:PORT]`, or `HOST:PORT`.
    ///
    /// # Errors
    /// If it is none of those.
    pub fn parse(given: &str) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::Target {
            given: given.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = given.strip_prefix("unix:") {
            return Ok(Target::Socket(PathBuf::from(path)));
        }
        if given.starts_with('/') || given.starts_with('.') {
            return Ok(Target::Socket(PathBuf::from(given)));
        }
        if given.starts_with("https://") {
            return Err(bad(
                "the API speaks plain HTTP on loopback; use http://, or the unix socket",
            ));
        }
        if let Some(rest) = given.strip_prefix("http://") {
            let host = rest.trim_end_matches('/');
            if host.is_empty() || host.contains('/') {
                return Err(bad("expected http://HOST:PORT, without a path"));
            }
            // A port is there unless the text ends in the host: `name`,
            // `1.2.3.4`, `[::1]`.
            let has_port = host.rsplit_once(':').is_some_and(|(h, p)| {
                !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (!h.contains(':') || h.ends_with(']'))
            });
            return Ok(Target::Tcp(if has_port {
                host.to_owned()
            } else {
                format!("{host}:{DEFAULT_API_PORT}")
            }));
        }
        if given.parse::<std::net::SocketAddr>().is_ok() {
            return Ok(Target::Tcp(given.to_owned()));
        }
        Err(bad(
            "neither a socket path (/run/residency/api.sock) nor http://HOST:PORT",
        ))
    }
}

/// Why a command could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the residency API at {target}: {reason}: is the daemon running?")]
    Unreachable { target: String, reason: String },
    #[error("the API says: {message} (HTTP {status})")]
    Api { status: u16, message: String },
    #[error("cannot read the API token {}: {reason}", path.display())]
    Token {
        path: PathBuf,
        reason: String,
        /// It is there, but not for this user.
        denied: bool,
    },
    #[error("--api {given}: {reason}")]
    Target { given: String, reason: String },
    #[error("the residency API at {target} answered something unexpected: {reason}")]
    Protocol { target: String, reason: String },
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

/// A raw answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON, if the status is a success.
    ///
    /// # Errors
    /// The API's error text for a failure status; a protocol error if the
    /// body is not JSON.
    pub fn json(&self, target: &Target) -> Result<Value, ClientError> {
        self.check()?;
        serde_json::from_slice(&self.body).map_err(|e| ClientError::Protocol {
            target: target.to_string(),
            reason: format!("not JSON: {e}"),
        })
    }

    /// Turns a failure status into the API's error text.
    ///
    /// # Errors
    /// [`ClientError::Api`] for any status other than 2xx.
    pub fn check(&self) -> Result<(), ClientError> {
        if (200..300).contains(&self.status) {
            return Ok(());
        }
        let message = serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_owned());
        Err(ClientError::Api {
            status: self.status,
            message,
        })
    }
}

/// A client of one API endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    target: Target,
    /// Sent on TCP only.
    token: Option<String>,
}

impl Client {
    /// A client of `target`, with `token` for TCP.
    #[must_use]
    pub fn new(target: Target, token: Option<String>) -> Self {
        Client { target, token }
    }

    /// Where it connects.
    #[must_use]
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The client the commands use: `api` if given, otherwise the socket
    /// (as root, when it exists) or TCP on 127.0.0.1; for TCP, the token
    /// from `token_file` or the default one.
    ///
    /// # Errors
    /// If `api` cannot be parsed or the token cannot be read.
    pub fn discover(api: Option<&str>, token_file: Option<&Path>) -> Result<Self, ClientError> {
        let target = if let Some(a) = api {
            Target::parse(a)?
        } else {
            let socket = Path::new(DEFAULT_API_SOCKET);
            if nix::unistd::geteuid().is_root() && socket.exists() {
                Target::Socket(socket.to_owned())
            } else {
                let addr = std::fs::read_to_string(
                    Path::new(DEFAULT_STATE_DIR).join(crate::config::ADDR_FILE),
                )
                .ok()
                .map(|a| a.trim().to_owned())
                .filter(|a| a.parse::<std::net::SocketAddr>().is_ok())
                .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_API_PORT}"));
                Target::Tcp(addr)
            }
        };
        let token = match &target {
            Target::Socket(_) => None,
            Target::Tcp(_) => {
                let default = Path::new(DEFAULT_STATE_DIR).join("api.token");
                Some(read_token(token_file.unwrap_or(&default))?)
            }
        };
        Ok(Client::new(target, token))
    }

    /// Sends one request; `body` is JSON.
    ///
    /// # Errors
    /// If the API cannot be reached or the exchange fails. A failure status
    /// is not an error here (see [`Reply::check`]).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError> {
        let exchange = async {
            match &self.target {
                Target::Socket(p) => {
                    let io = UnixStream::connect(p)
                        .await
                        .map_err(|e| self.unreachable(&e))?;
                    self.exchange(io, "localhost", method, path, body).await
                }
                Target::Tcp(a) => {
                    let io = TcpStream::connect(a.as_str())
                        .await
                        .map_err(|e| self.unreachable(&e))?;
                    self.exchange(io, a, method, path, body).await
                }
            }
        };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Unreachable {
                target: self.target.to_string(),
                reason: format!("no answer within {} s", TIMEOUT.as_secs()),
            })?
    }

    /// `GET path` as JSON.
    ///
    /// # Errors
    /// As [`Client::request`], and the API's error for a failure status.
    pub async fn get_json(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::GET, path, None)
            .await?
            .json(&self.target)
    }

    fn unreachable(&self, e: &dyn fmt::Display) -> ClientError {
        ClientError::Unreachable {
            target: self.target.to_string(),
            reason: e.to_string(),
        }
    }

    async fn exchange<T>(
        &self,
        io: T,
        host: &str,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Reply, ClientError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let protocol = |e: &dyn fmt::Display| ClientError::Protocol {
            target: self.target.to_string(),
            reason: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.unreachable(&e))?;
        // The connection runs beside the request and ends with it.
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, host)
            .header(USER_AGENT, concat!("residency/", env!("CARGO_PKG_VERSION")));
        if let (Target::Tcp(_), Some(token)) = (&self.target, &self.token) {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        if body.is_some() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| protocol(&e))?;
        let res = sender.send_request(req).await.map_err(|e| protocol(&e))?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| protocol(&e))?
            .to_bytes();
        drop(sender);
        let _ = driver.await;
        Ok(Reply { status, body })
    }
}

/// Reads a token file.
///
/// # Errors
/// If it cannot be read or is empty, with a hint.
pub fn read_token(path: &Path) -> Result<String, ClientError> {
    let err = |reason: String| ClientError::Token {
        path: path.to_owned(),
        reason,
        denied: false,
    };
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => Err(err("it is empty".to_owned())),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(ClientError::Token {
            path: path.to_owned(),
            denied: true,
            reason: format!(
                "{e}: run as root (sudo), or pass --token-file with a copy you may read"
            ),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(err(format!(
            "{e}: the daemon creates it at start when api.listen is on; pass --api or \
             --token-file if yours is elsewhere"
        ))),
        Err(e) => Err(err(e.to_string())),
    }
}

/// `path?k=v&...`, percent-encoded.
#[must_use]
pub fn with_query(path: &str, query: &[(String, String)]) -> String {
    if query.is_empty() {
        return path.to_owned();
    }
    let pairs: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    format!("{path}?{}", pairs.join("&"))
}

/// Percent-encodes everything but the unreserved characters (so `+` in a
/// time offset survives).
fn encode(s: &str) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Flows,
    Violations,
}

impl Listing {
    fn path(self) -> &'static str {
        match self {
            Listing::Flows => "/v1/flows",
            Listing::Violations => "/v1/violations",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Listing::Flows => "flows",
            Listing::Violations => "violations",
        }
    }
}

/// A listing request.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// Filters and paging, as query parameters (`cursor`, `order` too).
    pub query: Vec<(String, String)>,
    /// Page size.
    pub limit: Option<u32>,
    /// Follow `next` to the end.
    pub all: bool,
    /// The API's JSON instead of a table: the response body as it came, or
    /// with `all`, one item per line.
    pub json: bool,
}

/// What a listing showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub items: usize,
    /// The cursor of the next page, when there is more.
    pub next: Option<u64>,
}

/// Lists flows or violations to `out`.
///
/// # Errors
/// If the API cannot be reached, refuses the request, or `out` fails.
pub async fn list(
    client: &Client,
    what: Listing,
    opts: &ListOptions,
    out: &mut dyn io::Write,
) -> Result<Listed, ClientError> {
    let mut query = opts.query.clone();
    if let Some(limit) = opts.limit {
        query.push(("limit".to_owned(), limit.to_string()));
    }
    let mut rows: Vec<Value> = Vec::new();
    let mut count = 0;
    loop {
        let reply = client
            .request(Method::GET, &with_query(what.path(), &query), None)
            .await?;
        let page = reply.json(client.target())?;
        let next = page.get("next").and_then(Value::as_u64);
        let items =
            page.get("items")
                .and_then(Value::as_array)
                .ok_or_else(|| ClientError::Protocol {
                    target: client.target().to_string(),
                    reason: "no \"items\" in the answer".to_owned(),
                })?;
        count += items.len();
        if opts.json && !opts.all {
            out.write_all(&reply.body)?;
            writeln!(out)?;
            return Ok(Listed { items: count, next });
        }
        if opts.json {
            for item in items {
                writeln!(out, "{item}")?;
            }
        } else {
            rows.extend(items.iter().cloned());
        }
        match next {
            Some(n) if opts.all => {
                query.retain(|(k, _)| k != "cursor");
                query.push(("cursor".to_owned(), n.to_string()));
            }
            _ => {
                if !opts.json {
                    if rows.is_empty() {
                        writeln!(out, "no {} match", what.noun())?;
                    } else {
                        let table = match what {
                            Listing::Flows => flows_table(&rows),
                            Listing::Violations => violations_table(&rows),
                        };
                        out.write_all(table.as_bytes())?;
                    }
                }
                return Ok(Listed { items: count, next });
            }
        }
    }
}

/// Acknowledges (or resolves) violation `id` with `note`, and says so on
/// `out`.
///
/// # Errors
/// If the API cannot be reached or refuses (no such violation, a state
/// that does not allow it, an empty note).
pub async fn transition(
    client: &Client,
    id: i64,
    resolve: bool,
    note: &str,
    json: bool,
    out: &mut dyn io::Write,
) -> Result<Value, ClientError> {
    let action = if resolve { "resolve" } else { "ack" };
    let body = serde_json::to_vec(&json!({ "note": note })).unwrap_or_default();
    let reply = client
        .request(
            Method::POST,
            &format!("/v1/violations/{id}/{action}"),
            Some(body),
        )
        .await?;
    let v = reply.json(client.target())?;
    if json {
        out.write_all(&reply.body)?;
        writeln!(out)?;
    } else {
        let done = if resolve { "resolved" } else { "acknowledged" };
        let t = &v[done];
        writeln!(
            out,
            "violation {id} {done} by {} (chain record {})",
            t["by"].as_str().unwrap_or("?"),
            t["seq"]
        )?;
    }
    Ok(v)
}

/// An aligned table: a header row, then the rows; two spaces apart.
#[must_use]
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `2026-11-22 10:00:00` (UTC) from an RFC 3339 time; the text as given if
/// it is not one.
fn short_time(v: &Value) -> String {
    short_time_str(v.as_str())
}

fn short_time_str(v: Option<&str>) -> String {
    match v {
        Some(s) => s.parse::<jiff::Timestamp>().map_or_else(
            |_| s.to_owned(),
            |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
        ),
        None => "-".to_owned(),
    }
}

/// The text, or `-` for nothing.
fn dash(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "-".to_owned(),
    }
}

fn endpoint(ip: &Value, port: &Value) -> String {
    endpoint_of(
        ip.as_str(),
        port.as_u64().and_then(|p| u16::try_from(p).ok()),
    )
}

/// Bytes as people read them: `0 B`, `950 B`, `3.1 MB`, `2.40 GB` (SI).
#[must_use]
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    #[expect(clippy::cast_precision_loss, reason = "a size to read, in 3 digits")]
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.2} {}", UNITS[unit])
    } else if v < 100.0 {
        format!("{v:.1} {}", UNITS[unit])
    } else {
        format!("{v:.0} {}", UNITS[unit])
    }
}

fn endpoint_of(ip: Option<&str>, port: Option<u16>) -> String {
    match (ip, port) {
        (Some(ip), Some(port)) if ip.contains(':') => format!("[{ip}]:{port}"),
        (Some(ip), Some(port)) => format!("{ip}:{port}"),
        (Some(ip), None) => ip.to_owned(),
        _ => "-".to_owned(),
    }
}

/// The flows table: one row per record (`{"seq", "hash", "record"}`).
#[must_use]
pub fn flows_table(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            let r = RecordView::from_value(&item["record"]);
            let tenants: Vec<String> = r.tenants().map(|t| dash(Some(t))).collect();
            vec![
                text(&item["seq"]),
                short_time_str(Some(&*r.timestamp).filter(|t| !t.is_empty())),
                dash(r.verdict()),
                dash(r.workload()),
                if tenants.is_empty() {
                    "-".to_owned()
                } else {
                    tenants.join(",")
                },
                endpoint_of(r.dst_ip(), r.dst_port()),
                dash(r.dst_domain()),
                dash(r.country()),
                dash(r.rule().1),
                match (
                    item["totals"]["bytes_out"].as_u64(),
                    item["totals"]["bytes_in"].as_u64(),
                ) {
                    (Some(o), Some(i)) => format!("{}/{}", human_bytes(o), human_bytes(i)),
                    _ => "-".to_owned(),
                },
            ]
        })
        .collect();
    table(
        &[
            "SEQ",
            "TIME (UTC)",
            "VERDICT",
            "WORKLOAD",
            "TENANTS",
            "DESTINATION",
            "NAME",
            "COUNTRY",
            "RULE",
            "SENT/RECEIVED",
        ],
        &rows,
    )
}

/// The violations table.
#[must_use]
pub fn violations_table(items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| {
            let d = &v["destination"];
            vec![
                text(&v["id"]),
                text(&v["state"]),
                text(&v["verdict"]),
                text(&v["count"]),
                text(&v["workload"]),
                endpoint(&d["ip"], &d["port"]),
                text(&d["country"]),
                short_time(&v["first_seen"]),
                short_time(&v["nis2"]["early_warning_due"]),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "STATE",
            "VERDICT",
            "COUNT",
            "WORKLOAD",
            "DESTINATION",
            "COUNTRY",
            "FIRST SEEN (UTC)",
            "NIS2 EARLY WARNING DUE",
        ],
        &rows,
    )
}
