//! End-to-end: alerts from a real daemon to real receivers. A blocked
//! connect reaches rsyslog over UDP, TCP, TLS and mutual TLS (RFC 5424 and
//! CEF), Splunk HEC, Elasticsearch bulk and a signed webhook; receivers
//! that are down get every alert exactly once, in order, when they return;
//! checkpoints reach the SIEM and pin the chain; a sink that falls past its
//! spool leaves a gap record in the chain; a storm becomes one alert and a
//! count.

use std::{
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use residency_tests::{
    ClientOptions, Daemon, Listener, Op, TestCgroup, action, privileged_or_skip,
    receivers::{
        HttpsReceiver, Reply, SyslogInput, elasticsearch_bulk, rsyslog_or_skip, splunk_hec,
        verify_standard_webhook, webhook_key,
    },
    run_client, workspace_bin,
};
use serde_json::Value;

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const HEC_TOKEN: &str = "0b5e0e9c-5c55-4b55-9d3c-1f2d7f0e7a11";

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// The acme tenant (EEA only, enforced) and its LLM workload, plus `sinks`.
fn config(root: &str, sinks: &str) -> String {
    format!(
        r#"
mode = "monitor"
[kernel]
poll_interval_ms = 5
[policy]
local_networks = ["10.0.0.0/8"]
[evidence]
checkpoint_records = 100000
checkpoint_interval_secs = 1

[[tenant]]
id = "acme"
name = "ACME GmbH"
allowed = ["EEA"]
mode = "enforce"

[[workload]]
name = "acme-llm"
role = "llm"
tenants = ["acme"]
cgroup = ["{root}/llm"]
{sinks}
"#
    )
}

fn secret_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    Ok(p)
}

struct Setup {
    dir: tempfile::TempDir,
    cg: TestCgroup,
    llm: PathBuf,
    us: Listener,
    state: PathBuf,
    db: PathBuf,
}

fn setup(name: &str) -> anyhow::Result<Setup> {
    let dir = tempfile::tempdir()?;
    let db = residency_tests::de_us_db(dir.path());
    let us = Listener::bind(v4(33))?;
    let cg = TestCgroup::new(name)?;
    let llm = cg.child("llm")?;
    let state = dir.path().join("state");
    Ok(Setup {
        dir,
        cg,
        llm,
        us,
        state,
        db,
    })
}

impl Setup {
    fn start(&self, sinks: &str) -> anyhow::Result<Daemon> {
        let daemon = Daemon::start_with(
            &config(&self.cg.relative()?, sinks),
            &self.cg,
            &[
                OsStr::new("--geoip"),
                self.db.as_os_str(),
                OsStr::new("--state-dir"),
                self.state.as_os_str(),
            ],
        )?;
        daemon.wait_for(Duration::from_secs(10), |r| action(r) == "policy-loaded")?;
        Ok(daemon)
    }

    /// `n` blocked connects to the US from the LLM workload.
    fn blocked(&self, ops: &[Op]) -> anyhow::Result<Value> {
        let n = ops.len();
        let report = run_client(
            ops,
            &ClientOptions {
                cgroup_dir: Some(&self.llm),
                ..Default::default()
            },
        )?;
        let eperm: u64 = (0..n)
            .map(|i| report["ops"][i]["errors"]["EPERM"].as_u64().unwrap_or(0))
            .sum();
        anyhow::ensure!(eperm == n as u64, "expected {n} blocked connects: {report}");
        Ok(report)
    }
}

/// The flow records the daemon wrote, blocked ones only.
fn blocked_flows(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|r| r["residency"]["verdict"] == "blocked")
        .collect()
}

/// The structured data parameters of an RFC 5424 message, by name
/// (repeated names in order), unescaping `\"`, `\\` and `\]`.
fn sd_params(msg: &str) -> Vec<(String, String)> {
    let Some(start) = msg.find("[residency@") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let bytes: Vec<char> = msg[start..].chars().collect();
    let mut i = bytes.iter().position(|&c| c == ' ').unwrap_or(bytes.len());
    while i < bytes.len() && bytes[i] != ']' {
        while i < bytes.len() && bytes[i] == ' ' {
            i += 1;
        }
        let name_start = i;
        while i < bytes.len() && bytes[i] != '=' {
            i += 1;
        }
        let name: String = bytes[name_start..i].iter().collect();
        i += 2; // ="
        let mut value = String::new();
        while i < bytes.len() && bytes[i] != '"' {
            if bytes[i] == '\\' && i + 1 < bytes.len() {
                i += 1;
            }
            value.push(bytes[i]);
            i += 1;
        }
        i += 1;
        out.push((name, value));
    }
    out
}

fn param<'a>(p: &'a [(String, String)], name: &str) -> Option<&'a str> {
    p.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, every transport")]
fn a_violation_reaches_rsyslog_over_udp_tcp_tls_and_mutual_tls_and_as_cef() -> anyhow::Result<()> {
    let test = "a_violation_reaches_rsyslog_over_udp_tcp_tls_and_mutual_tls_and_as_cef";
    if !privileged_or_skip(test) {
        return Ok(());
    }
    let Some(rsyslog) = rsyslog_or_skip(test)? else {
        return Ok(());
    };
    let s = setup("siem-syslog")?;
    let ca = rsyslog.ca_path.display().to_string();
    // Violations only: a checkpoint signed while the daemon starts (the
    // interval here is 1 s) would race the violation to each receiver;
    // checkpoints to SIEMs are tested on their own.
    let sinks = format!(
        r#"
[[sink]]
name = "udp"
type = "syslog"
address = "127.0.0.1:{udp}"
protocol = "udp"
throttle_secs = 0
receives = ["violations"]

[[sink]]
name = "tcp"
type = "syslog"
address = "127.0.0.1:{tcp}"
protocol = "tcp"
throttle_secs = 0
receives = ["violations"]

[[sink]]
name = "cef"
type = "syslog"
format = "cef"
address = "127.0.0.1:{tcp}"
protocol = "tcp"
throttle_secs = 0
receives = ["violations"]

[[sink]]
name = "tls"
type = "syslog"
address = "127.0.0.1:{tls}"
protocol = "tls"
ca_file = "{ca}"
server_name = "localhost"
throttle_secs = 0
receives = ["violations"]

[[sink]]
name = "mtls"
type = "syslog"
address = "127.0.0.1:{mtls}"
protocol = "tls"
ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"
server_name = "localhost"
throttle_secs = 0
receives = ["violations"]
"#,
        udp = rsyslog.port(SyslogInput::Udp),
        tcp = rsyslog.port(SyslogInput::Tcp),
        tls = rsyslog.port(SyslogInput::Tls),
        mtls = rsyslog.port(SyslogInput::Mtls),
        cert = rsyslog.pki.client_cert.display(),
        key = rsyslog.pki.client_key.display(),
    );
    let daemon = s.start(&sinks)?;
    s.blocked(&[Op::Tcp(s.us.tcp)])?;
    let udp = rsyslog.wait_lines(SyslogInput::Udp, 1, Duration::from_secs(10))?;
    let tcp = rsyslog.wait_lines(SyslogInput::Tcp, 2, Duration::from_secs(10))?;
    let tls = rsyslog.wait_lines(SyslogInput::Tls, 1, Duration::from_secs(10))?;
    let mtls = rsyslog.wait_lines(SyslogInput::Mtls, 1, Duration::from_secs(10))?;
    let records = daemon.stop()?;
    let flows = blocked_flows(&records);
    assert_eq!(flows.len(), 1, "one blocked flow");
    let flow = flows[0];
    let event_time: jiff::Timestamp = flow["@timestamp"].as_str().unwrap_or("").parse()?;

    let rfc5424: Vec<&String> = udp
        .iter()
        .chain(tcp.iter().filter(|l| !l.contains("CEF:0|")))
        .chain(&tls)
        .chain(&mtls)
        .collect();
    assert_eq!(rfc5424.len(), 4, "one message per transport: {rfc5424:?}");
    for line in rfc5424 {
        // <PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG
        let mut fields = line.splitn(7, ' ');
        let pri_version = fields.next().unwrap_or("");
        assert!(
            pri_version.starts_with('<') && pri_version.ends_with(">1"),
            "{line}"
        );
        let ts: jiff::Timestamp = fields.next().unwrap_or("").parse()?;
        // The event's time, not the time it was sent (microseconds kept).
        assert_eq!(
            ts.as_microsecond(),
            event_time.as_microsecond(),
            "timestamp is the decision's: {line}"
        );
        let p = sd_params(line);
        assert_eq!(param(&p, "tenant"), Some("acme"), "{line}");
        assert_eq!(param(&p, "country"), Some("US"), "{line}");
        assert_eq!(param(&p, "role"), Some("llm"), "{line}");
        assert_eq!(param(&p, "verdict"), Some("blocked"), "{line}");
        assert_eq!(param(&p, "workload"), Some("acme-llm"), "{line}");
        assert!(param(&p, "rule").is_some_and(|r| !r.is_empty()), "{line}");
        assert!(line.contains("[residency@32473 "), "{line}");
    }
    let cef = tcp
        .iter()
        .find(|l| l.contains("CEF:0|"))
        .ok_or_else(|| anyhow::anyhow!("no CEF message: {tcp:?}"))?;
    for expect in [
        "cs1Label=country",
        "cs1=US",
        "cs2Label=tenant",
        "cs2=acme",
        "cs3Label=role",
        "cs3=llm",
        "cs4Label=rule",
        "act=blocked",
        "dst=127.0.0.33",
    ] {
        assert!(cef.contains(expect), "{expect} in {cef}");
    }
    Ok(())
}

/// Blocked connects to distinct ports (distinct alerts).
fn distinct_connects(s: &Setup, n: u16) -> Vec<Op> {
    // The listener's TCP port and the ports above it: closed ports are
    // refused, but the kernel blocks first, so nothing is sent.
    let base = s.us.tcp.port();
    (0..n)
        .map(|i| Op::Tcp(std::net::SocketAddr::new(v4(33), base.wrapping_add(i))))
        .collect()
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, three receivers")]
fn receivers_down_then_up_get_every_alert_exactly_once_in_order() -> anyhow::Result<()> {
    if !privileged_or_skip("receivers_down_then_up_get_every_alert_exactly_once_in_order") {
        return Ok(());
    }
    let s = setup("siem-http")?;
    let hook = HttpsReceiver::start(residency_tests::receivers::answer_ok())?;
    let hec = HttpsReceiver::start(splunk_hec(HEC_TOKEN))?;
    let mut es = HttpsReceiver::start(elasticsearch_bulk())?;
    let secret = secret_file(s.dir.path(), "webhook.secret", WEBHOOK_SECRET)?;
    let token = secret_file(s.dir.path(), "hec.token", HEC_TOKEN)?;
    let ca = |r: &HttpsReceiver| {
        r.ca_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let sinks = format!(
        r#"
[[sink]]
name = "hook"
type = "webhook"
url = "{hook_url}"
secret_file = "{secret}"
ca_file = "{hook_ca}"
throttle_secs = 0
retry_max_secs = 1
receives = ["violations"]

[[sink]]
name = "splunk"
type = "splunk-hec"
url = "{hec_url}"
token_file = "{token}"
ca_file = "{hec_ca}"
throttle_secs = 0
retry_max_secs = 1
receives = ["violations"]

[[sink]]
name = "elastic"
type = "elasticsearch"
url = "{es_url}"
ca_file = "{es_ca}"
throttle_secs = 0
retry_max_secs = 1
receives = ["violations"]
"#,
        hook_url = hook.url("/alerts"),
        secret = secret.display(),
        hook_ca = ca(&hook),
        hec_url = hec.url("/"),
        token = token.display(),
        hec_ca = ca(&hec),
        es_url = es.url("/"),
        es_ca = ca(&es),
    );
    let daemon = s.start(&sinks)?;
    // Down: the webhook and HEC answer 503, Elasticsearch is not there at
    // all (connections refused).
    hook.answer_for(Reply::status(503), Duration::from_secs(4));
    hec.answer_for(Reply::status(503), Duration::from_secs(4));
    es.stop();
    let n = 20;
    s.blocked(&distinct_connects(&s, n))?;
    std::thread::sleep(Duration::from_secs(2));
    es.resume()?;
    let n = usize::from(n);
    let deadline = Duration::from_secs(20);
    let accepted = |r: &HttpsReceiver, per: fn(&residency_tests::receivers::Received) -> usize| {
        let start = Instant::now();
        loop {
            let ok: usize = r
                .requests()
                .iter()
                .filter(|q| q.status == 200)
                .map(per)
                .sum();
            if ok >= n || start.elapsed() > deadline {
                return r.requests();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let hook_requests = accepted(&hook, |_| 1);
    let hec_requests = accepted(&hec, |q| {
        serde_json::Deserializer::from_slice(&q.body)
            .into_iter::<Value>()
            .count()
    });
    let es_requests = accepted(&es, |q| {
        residency_tests::receivers::bulk_items(&q.body).map_or(0, |i| i.len())
    });
    // Each sink's counters on /metrics.
    let metrics = metrics(&daemon)?;
    for sink in ["hook", "splunk", "elastic"] {
        let want = Some(n as u64);
        let sent = series(&metrics, "residency_sink_sent_total", sink);
        assert!(sent >= want, "{sink} sent {sent:?}: {metrics}");
        assert!(
            series(&metrics, "residency_sink_failed_total", sink) >= Some(1),
            "{sink} failed while down"
        );
        assert!(
            series(&metrics, "residency_sink_latency_seconds_count", sink) >= want,
            "{sink} latency observed"
        );
        assert_eq!(
            series(&metrics, "residency_sink_dropped_total", sink),
            Some(0)
        );
    }
    let records = daemon.stop()?;
    assert_eq!(blocked_flows(&records).len(), n, "{n} blocked flows");
    let chain_seqs = chain_blocked(&s.state)?;
    assert_eq!(chain_seqs.len(), n, "{n} blocked flows in the chain");

    // Webhook: each accepted message once, in order, signed.
    let key = webhook_key(WEBHOOK_SECRET).unwrap_or_default();
    assert!(
        hook_requests.iter().any(|q| q.status == 503),
        "the webhook was down for a while"
    );
    let ok: Vec<_> = hook_requests.iter().filter(|q| q.status == 200).collect();
    let ids: Vec<String> = ok
        .iter()
        .map(|q| q.header("webhook-id").unwrap_or("").to_owned())
        .collect();
    assert_eq!(ok.len(), n, "exactly {n} accepted: {ids:?}");
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), n, "no duplicates: {ids:?}");
    let seqs: Vec<u64> = ok
        .iter()
        .map(|q| {
            q.json()
                .ok()
                .and_then(|v| {
                    v["data"]["event"]["sequence"]
                        .as_u64()
                        .or(v["data"]["metadata"]["uid"]
                            .as_str()
                            .and_then(|s| s.parse().ok()))
                })
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(seqs, chain_seqs, "each blocked flow once, in order");
    for q in &ok {
        assert!(
            verify_standard_webhook(&key, &q.headers, &q.body),
            "signature of {:?}",
            q.header("webhook-id")
        );
    }

    // HEC: n events accepted, in order, with the token.
    let events: Vec<Value> = hec_requests
        .iter()
        .filter(|q| q.status == 200)
        .flat_map(|q| {
            serde_json::Deserializer::from_slice(&q.body)
                .into_iter::<Value>()
                .filter_map(Result::ok)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(hec_requests.iter().any(|q| q.status == 503));
    assert_eq!(events.len(), n, "exactly {n} HEC events");
    let hec_seqs: Vec<u64> = events
        .iter()
        .map(|e| {
            e["fields"]["seq"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .or_else(|| e["fields"]["seq"].as_u64())
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(hec_seqs, chain_seqs, "each blocked flow once, in order");
    for e in &events {
        assert!(e["time"].as_f64().is_some(), "event time: {e}");
        assert_eq!(e["event"]["residency"]["verdict"], "blocked", "{e}");
    }

    // Elasticsearch: n documents created with distinct ids, in order.
    let ids: Vec<String> = es_requests
        .iter()
        .filter(|q| q.status == 200)
        .flat_map(|q| residency_tests::receivers::bulk_items(&q.body).unwrap_or_default())
        .map(|i| i["create"]["_id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ids.len(), n, "exactly {n} documents: {ids:?}");
    let es_seqs: Vec<u64> = ids
        .iter()
        .map(|id| {
            id.rsplit('-')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(
        es_seqs, chain_seqs,
        "each blocked flow once, in order: {ids:?}"
    );
    assert!(
        ids.iter().all(|id| id.len() > "violation-".len() + 8),
        "ids name the store: {ids:?}"
    );
    Ok(())
}

/// The daemon's `/metrics`, over its socket.
fn metrics(daemon: &Daemon) -> anyhow::Result<String> {
    use residency_api::client::{Client, Target};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = Client::new(Target::Socket(daemon.socket.clone()), None);
    let reply = rt.block_on(client.request(hyper::Method::GET, "/metrics", None))?;
    Ok(String::from_utf8_lossy(&reply.body).into_owned())
}

/// The value of `name{sink="<sink>"}` in Prometheus text (NaN if absent).
fn series(text: &str, name: &str, sink: &str) -> Option<u64> {
    let label = format!("{{sink=\"{sink}\"}}");
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// `residency` with arguments; (exit code, stdout+stderr).
/// Exit code and everything the command printed.
fn residency(args: &[&OsStr]) -> anyhow::Result<(i32, String)> {
    let (code, out, err) = residency_tests::residency_cli(args)?;
    Ok((code, format!("{out}{err}")))
}

/// The sequence numbers of the blocked flows in the chain, in order.
fn chain_blocked(state: &Path) -> anyhow::Result<Vec<u64>> {
    let c = rusqlite::Connection::open_with_flags(
        state.join("evidence.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mut stmt = c.prepare(
        "SELECT seq FROM records WHERE kind = 'flow' AND verdict = 'blocked' ORDER BY seq",
    )?;
    let seqs = stmt
        .query_map([], |r| r.get::<_, i64>(0))?
        .map(|s| Ok(u64::try_from(s?)?))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(seqs)
}

/// The newest sequence number in the store.
fn store_head(state: &Path) -> anyhow::Result<u64> {
    let c = rusqlite::Connection::open_with_flags(
        state.join("evidence.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let seq: i64 = c.query_row("SELECT max(seq) FROM records", [], |r| r.get(0))?;
    Ok(u64::try_from(seq)?)
}

#[test]
fn checkpoints_reach_the_siem_and_pin_the_chain() -> anyhow::Result<()> {
    if !privileged_or_skip("checkpoints_reach_the_siem_and_pin_the_chain") {
        return Ok(());
    }
    let s = setup("siem-checkpoints")?;
    let out = s.dir.path().join("checkpoints.json");
    let sinks = format!(
        r#"
[[sink]]
name = "heads"
type = "file"
path = "{}"
receives = ["checkpoints"]
"#,
        out.display()
    );
    let daemon = s.start(&sinks)?;
    s.blocked(&[Op::Tcp(s.us.tcp)])?;
    // Interval checkpoints (every second here) go out while it runs.
    std::thread::sleep(Duration::from_secs(2));
    daemon.stop()?;
    let text = std::fs::read_to_string(&out)?;
    let checkpoints: Vec<Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert!(!checkpoints.is_empty(), "no checkpoint reached the file");
    let last = checkpoints.last().cloned().unwrap_or_default();
    let c = &last["residency"]["checkpoint"];
    // The last one signs the chain's last record (the stop), and went out
    // as the daemon stopped.
    let signed = c["seq"].as_u64().unwrap_or(0);
    let store_head = store_head(&s.state)?;
    assert_eq!(
        signed, store_head,
        "the final checkpoint is sent at stop: {last}"
    );
    let pin = format!(
        "{}:{}",
        c["seq"].as_u64().unwrap_or(0),
        c["head"].as_str().unwrap_or("")
    );
    // The copy held outside pins the store.
    let (code, report) = residency(&[
        OsStr::new("evidence"),
        OsStr::new("verify"),
        OsStr::new("--store"),
        s.state.as_os_str(),
        OsStr::new("--checkpoint"),
        OsStr::new(&pin),
    ])?;
    assert_eq!(code, 0, "{report}");
    // A head the chain does not have fails.
    let wrong = format!("{}:{}", c["seq"].as_u64().unwrap_or(0), "0".repeat(64));
    let (code, report) = residency(&[
        OsStr::new("evidence"),
        OsStr::new("verify"),
        OsStr::new("--store"),
        s.state.as_os_str(),
        OsStr::new("--checkpoint"),
        OsStr::new(&wrong),
    ])?;
    assert_ne!(code, 0, "{report}");
    Ok(())
}

#[test]
fn a_sink_past_its_spool_writes_a_gap_into_the_chain() -> anyhow::Result<()> {
    if !privileged_or_skip("a_sink_past_its_spool_writes_a_gap_into_the_chain") {
        return Ok(());
    }
    let s = setup("siem-spool")?;
    let hook = HttpsReceiver::start(residency_tests::receivers::answer_ok())?;
    hook.answer_for(Reply::status(503), Duration::from_hours(1));
    let secret = secret_file(s.dir.path(), "webhook.secret", WEBHOOK_SECRET)?;
    let sinks = format!(
        r#"
[[sink]]
name = "small"
type = "webhook"
url = "{}"
secret_file = "{}"
ca_file = "{}"
receives = ["flows"]
spool_max_records = 1000
retry_max_secs = 1
"#,
        hook.url("/"),
        secret.display(),
        hook.ca_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    let daemon = s.start(&sinks)?;
    // 1,500 allowed connects to Germany (each its own socket, so each is
    // a decision record; repeated datagrams would be one): flows the sink
    // cannot deliver.
    let de = Listener::bind(v4(17))?;
    let report = run_client(
        &vec![Op::Tcp(de.tcp); 1500],
        &ClientOptions {
            cgroup_dir: Some(&s.llm),
            ..Default::default()
        },
    )?;
    assert!(report["ops"].is_array(), "{report}");
    let gap = daemon.wait_for(Duration::from_secs(15), |r| action(r) == "sink-gap");
    let records = daemon.stop()?;
    let gap = gap?;
    assert_eq!(gap["residency"]["sink"]["name"], "small", "{gap}");
    let skipped = gap["residency"]["sink"]["skipped"].as_u64().unwrap_or(0);
    assert!(skipped >= 500, "skipped at least the overflow: {gap}");
    assert!(
        records.iter().any(|r| action(r) == "sink-gap"),
        "the gap is a record"
    );
    // And it is in the chain, which still verifies.
    let (code, report) = residency(&[
        OsStr::new("evidence"),
        OsStr::new("verify"),
        OsStr::new("--store"),
        s.state.as_os_str(),
    ])?;
    assert_eq!(code, 0, "{report}");
    Ok(())
}

#[test]
fn a_storm_is_one_alert_then_a_count() -> anyhow::Result<()> {
    if !privileged_or_skip("a_storm_is_one_alert_then_a_count") {
        return Ok(());
    }
    let s = setup("siem-storm")?;
    let out = s.dir.path().join("alerts.json");
    let sinks = format!(
        r#"
[[sink]]
name = "storm"
type = "file"
path = "{}"
receives = ["violations"]
throttle_secs = 2
"#,
        out.display()
    );
    let daemon = s.start(&sinks)?;
    s.blocked(&vec![Op::Tcp(s.us.tcp); 50])?;
    // The first at once; the count when the window closes.
    let start = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        if lines.len() >= 2 || start.elapsed() > Duration::from_secs(10) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    daemon.stop()?;
    assert_eq!(lines.len(), 2, "one alert, then one count: {lines:?}");
    assert_eq!(
        lines[0]["residency"]["alert"]["count"]
            .as_u64()
            .unwrap_or(1),
        1,
        "{}",
        lines[0]
    );
    assert_eq!(lines[1]["residency"]["alert"]["count"], 49, "{}", lines[1]);
    Ok(())
}

/// A process whose name is hostile: bytes that are not UTF-8 and every
/// character some format must escape. The daemon records the name with
/// U+FFFD for each byte that is not UTF-8; every format then carries that
/// name intact and escaped by its own rules.
#[test]
fn a_hostile_process_name_is_escaped_in_every_format() -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let test = "a_hostile_process_name_is_escaped_in_every_format";
    if !privileged_or_skip(test) {
        return Ok(());
    }
    let Some(rsyslog) = rsyslog_or_skip(test)? else {
        return Ok(());
    };
    let s = setup("siem-escape")?;
    // 14 bytes (a process name keeps 15): 0xff is not UTF-8.
    let raw: &[u8] = b"x\xff|=]\n\"\\ab c";
    let link = s.dir.path().join(OsStr::from_bytes(raw));
    std::os::unix::fs::symlink(workspace_bin("egress-client")?, &link)?;
    let name = String::from_utf8_lossy(raw).into_owned();
    let file = |f: &str| s.dir.path().join(format!("alerts.{f}"));
    let sinks = format!(
        r#"
[[sink]]
name = "ecs"
type = "file"
path = "{ecs}"
throttle_secs = 0
receives = ["violations"]

[[sink]]
name = "ocsf"
type = "file"
format = "ocsf"
path = "{ocsf}"
throttle_secs = 0
receives = ["violations"]

[[sink]]
name = "cef"
type = "file"
format = "cef"
path = "{cef}"
throttle_secs = 0
receives = ["violations"]

[[sink]]
name = "syslog"
type = "syslog"
address = "127.0.0.1:{tcp}"
protocol = "tcp"
throttle_secs = 0
receives = ["violations"]
"#,
        ecs = file("ecs").display(),
        ocsf = file("ocsf").display(),
        cef = file("cef").display(),
        tcp = rsyslog.port(SyslogInput::Tcp),
    );
    let daemon = s.start(&sinks)?;
    let report = run_client(
        &[Op::Tcp(s.us.tcp)],
        &ClientOptions {
            cgroup_dir: Some(&s.llm),
            exe: Some(&link),
            ..Default::default()
        },
    )?;
    assert_eq!(report["ops"][0]["errors"]["EPERM"], 1, "{report}");
    let syslog = rsyslog.wait_lines(SyslogInput::Tcp, 1, Duration::from_secs(10))?;
    let start = Instant::now();
    while ["ecs", "ocsf", "cef"].iter().any(|f| {
        std::fs::read_to_string(file(f))
            .unwrap_or_default()
            .is_empty()
    }) && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let records = daemon.stop()?;
    let flow = blocked_flows(&records)
        .first()
        .copied()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no blocked flow"))?;
    assert_eq!(flow["process"]["name"], name.as_str(), "the record: {flow}");

    // ECS and OCSF: one JSON line each, the name intact.
    let one_line = |f: &str| -> anyhow::Result<Value> {
        let written = std::fs::read_to_string(file(f))?;
        let lines: Vec<&str> = written.lines().collect();
        anyhow::ensure!(lines.len() == 1, "{f}: one line, not {lines:?}");
        Ok(serde_json::from_str(lines[0])?)
    };
    assert_eq!(one_line("ecs")?["process"]["name"], name.as_str());
    // A violation is a Detection Finding: the process is its evidence.
    assert_eq!(
        one_line("ocsf")?["evidences"][0]["process"]["name"],
        name.as_str()
    );

    // CEF: one line; in the extension `\` and `=` are escaped and the
    // newline is `\n`; `|` needs no escape there.
    let cef = std::fs::read_to_string(file("cef"))?;
    assert_eq!(cef.lines().count(), 1, "{cef:?}");
    let want = "sproc=x\u{FFFD}|\\=]\\n\"\\\\ab c";
    assert!(cef.contains(want), "{want:?} in {cef:?}");

    // RFC 5424 over TCP: one message (octet counting keeps the newline
    // inside it; rsyslog writes it as #012), `"`, `\` and `]` escaped in
    // the structured data.
    assert_eq!(syslog.len(), 1, "{syslog:?}");
    let p = sd_params(&syslog[0]);
    assert_eq!(
        param(&p, "process"),
        Some("x\u{FFFD}|=]#012\"\\ab c"),
        "{}",
        syslog[0]
    );
    Ok(())
}

#[test]
fn a_restart_while_the_receiver_is_down_loses_nothing_and_repeats_nothing() -> anyhow::Result<()> {
    if !privileged_or_skip("a_restart_while_the_receiver_is_down_loses_nothing_and_repeats_nothing")
    {
        return Ok(());
    }
    let s = setup("siem-restart")?;
    let hook = HttpsReceiver::start(residency_tests::receivers::answer_ok())?;
    let secret = secret_file(s.dir.path(), "webhook.secret", WEBHOOK_SECRET)?;
    let sinks = format!(
        r#"
[[sink]]
name = "hook"
type = "webhook"
url = "{}"
secret_file = "{}"
ca_file = "{}"
throttle_secs = 0
retry_max_secs = 1
receives = ["violations"]
"#,
        hook.url("/"),
        secret.display(),
        hook.ca_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
    // Down across a restart: five violations before it, five after.
    hook.answer_for(Reply::status(503), Duration::from_hours(1));
    let daemon = s.start(&sinks)?;
    s.blocked(&distinct_connects(&s, 5))?;
    std::thread::sleep(Duration::from_millis(500));
    let mut records = daemon.stop()?;
    let daemon = s.start(&sinks)?;
    let ops: Vec<Op> = distinct_connects(&s, 10).split_off(5);
    s.blocked(&ops)?;
    hook.answer_normally();
    let start = Instant::now();
    while hook.requests().iter().filter(|q| q.status == 200).count() < 10
        && start.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    records.extend(daemon.stop()?);
    assert_eq!(blocked_flows(&records).len(), 10, "ten blocked flows");
    let chain_seqs = chain_blocked(&s.state)?;
    let got: Vec<u64> = hook
        .requests()
        .iter()
        .filter(|q| q.status == 200)
        .map(|q| {
            q.json()
                .ok()
                .and_then(|v| v["data"]["event"]["sequence"].as_u64())
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(got, chain_seqs, "each once, in order, across the restart");
    Ok(())
}

#[test]
fn a_dead_sink_does_not_hold_up_another() -> anyhow::Result<()> {
    if !privileged_or_skip("a_dead_sink_does_not_hold_up_another") {
        return Ok(());
    }
    let s = setup("siem-dead")?;
    let secret = secret_file(s.dir.path(), "webhook.secret", WEBHOOK_SECRET)?;
    // Nothing listens on this port: every attempt is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let out = s.dir.path().join("alerts.json");
    let sinks = format!(
        r#"
[[sink]]
name = "dead"
type = "webhook"
url = "http://127.0.0.1:{dead}/"
secret_file = "{}"
receives = ["violations", "flows"]

[[sink]]
name = "live"
type = "file"
path = "{}"
receives = ["violations"]
"#,
        secret.display(),
        out.display()
    );
    let daemon = s.start(&sinks)?;
    // The dead sink is failing before the violation happens.
    std::thread::sleep(Duration::from_millis(500));
    s.blocked(&[Op::Tcp(s.us.tcp)])?;
    let at = Instant::now();
    let arrived = loop {
        if !std::fs::read_to_string(&out).unwrap_or_default().is_empty() {
            break at.elapsed();
        }
        if at.elapsed() > Duration::from_secs(5) {
            break at.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // The counters move just after the line is written, and after the
    // dead sink's next attempt (it polls the chain every 100 ms).
    let mut metrics = metrics(&daemon)?;
    let waited = Instant::now();
    while (series(&metrics, "residency_sink_sent_total", "live") != Some(1)
        || series(&metrics, "residency_sink_failed_total", "dead") < Some(1))
        && waited.elapsed() < Duration::from_secs(2)
    {
        std::thread::sleep(Duration::from_millis(20));
        metrics = self::metrics(&daemon)?;
    }
    daemon.stop()?;
    assert!(
        arrived < Duration::from_secs(1),
        "the live sink's alert took {arrived:?} beside a dead sink"
    );
    assert!(
        series(&metrics, "residency_sink_failed_total", "dead") >= Some(1),
        "{metrics}"
    );
    assert_eq!(
        series(&metrics, "residency_sink_sent_total", "live"),
        Some(1),
        "{metrics}"
    );
    Ok(())
}
