//! `residency-bench siem`: alerts per second per sink type, each to a
//! real receiver on loopback, next to the cost of encoding alone; and the
//! kernel path (connect latency in the watched cgroup) with the daemon
//! alone, with a dead sink retrying, and with a live sink taking every
//! flow, cases interleaved round by round.

use std::{fmt::Write as _, net::Ipv4Addr, path::Path, time::Instant};

use anyhow::{Context as _, ensure};
use residency_siem::{
    alert::{Alert, AlertKind},
    config::{Destination, Receives, SinkConfig, Tls},
    format::{self, Context, Format},
    out::Out,
};
use residency_tests::{
    Daemon, Listener, Op, TestCgroup,
    receivers::{HttpsReceiver, Rsyslog, SyslogInput, elasticsearch_bulk, splunk_hec},
};

use super::{Sample, median, storm, write_section};

const HEC_TOKEN: &str = "bench-token";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A blocked violation, as the daemon's ECS encoder writes it.
fn alert(seq: u64) -> Alert {
    let time = jiff::Timestamp::now();
    let doc = serde_json::json!({
        "@timestamp": time.to_string(),
        "event": {"kind": "event", "category": ["network"], "type": ["connection", "denied"],
                  "action": "connect", "outcome": "failure", "module": "residency",
                  "dataset": "residency.flow", "sequence": seq},
        "network": {"transport": "tcp", "type": "ipv4", "direction": "egress"},
        "destination": {"ip": "203.0.113.7", "port": 443, "geo": {"country_iso_code": "US"}},
        "process": {"pid": 4242, "name": "python3", "thread": {"id": "4242"},
                    "executable": "/usr/bin/python3.11",
                    "command_line": "python3 -m crm_sync --tenant acme"},
        "user": {"id": "1000"}, "group": {"id": "1000"},
        "rule": {"id": "3", "name": "tenant:acme", "ruleset": "residency"},
        "residency": {"verdict": "blocked", "hook": "connect4", "mode": "enforce",
                      "decided_by": "geoip", "country": "US",
                      "policy": {"generation": 1, "hash": "9f2c", "index": 1},
                      "workload": {"name": "crm-sync", "role": "crm-sync"},
                      "tenants": ["acme"], "transfer_basis": "none"},
    });
    Alert {
        kind: AlertKind::Violation,
        seq,
        time,
        doc,
        checkpoint: None,
        count: 1,
        span: None,
    }
}

fn sink(name: &str, destination: Destination, format: &str, tls: Tls) -> SinkConfig {
    SinkConfig {
        name: name.to_owned(),
        destination,
        format: format.to_owned(),
        receives: Receives {
            violations: true,
            ..Receives::default()
        },
        tls,
        batch_max: 500,
        spool_max_records: 1_000_000,
        throttle: None,
        timeout: std::time::Duration::from_secs(30),
        retry_max: std::time::Duration::from_secs(1),
    }
}

fn secret(dir: &Path, name: &str, text: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    Ok(p)
}

/// One sink type's numbers.
struct Row {
    name: String,
    encode_per_sec: f64,
    sent_per_sec: f64,
    delivered: String,
}

/// How fast `alerts` encode in `format` alone (no I/O).
fn encode_rate(alerts: &[Alert], format: Format) -> f64 {
    let ctx = Context::default();
    let t = Instant::now();
    let mut bytes = 0usize;
    for a in alerts {
        bytes += match format {
            Format::Rfc5424 => format::syslog::rfc5424(a, &ctx, 16, a.summary().as_bytes()).len(),
            Format::Cef => format::cef::cef(a, &ctx).len(),
            Format::Ocsf => format::ocsf::ocsf(a, &ctx).to_string().len(),
            Format::Ecs => format::ecs::ecs(a).to_string().len(),
        };
    }
    std::hint::black_box(bytes);
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let rate = alerts.len() as f64 / t.elapsed().as_secs_f64();
    rate
}

/// Sends every alert through `config`'s sender in batches; alerts/s until
/// the last send returned.
async fn send_rate(config: &SinkConfig, alerts: &[Alert]) -> anyhow::Result<f64> {
    let mut out = Out::new(config, "bench").map_err(|e| anyhow::anyhow!("{}: {e}", config.name))?;
    let t = Instant::now();
    for chunk in alerts.chunks(config.batch_max as usize) {
        out.send(chunk)
            .await
            .map_err(|p| anyhow::anyhow!("{}: {}", config.name, p.error))?;
    }
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let rate = alerts.len() as f64 / t.elapsed().as_secs_f64();
    Ok(rate)
}

#[expect(clippy::too_many_lines, reason = "one case per sink type")]
async fn throughput(n: u64, dir: &Path) -> anyhow::Result<Vec<Row>> {
    let alerts: Vec<Alert> = (1..=n).map(alert).collect();
    let mut rows = Vec::new();
    let rsyslog = Rsyslog::start().context("rsyslog (cargo xtask test installs it)")?;
    let ca = Some(rsyslog.ca_path.clone());
    let syslog = |protocol: &str, input: SyslogInput, format: &str| {
        sink(
            &format!("syslog-{protocol}-{format}"),
            Destination::Syslog {
                address: format!("127.0.0.1:{}", rsyslog.port(input)),
                protocol: protocol.to_owned(),
                facility: 16,
                enterprise_number: 32473,
            },
            format,
            Tls {
                ca_file: ca.clone(),
                server_name: Some("localhost".into()),
                ..Tls::default()
            },
        )
    };
    let wait_for = |input: SyslogInput, want: usize| {
        let t = Instant::now();
        while rsyslog.lines(input).len() < want && t.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        rsyslog.lines(input).len()
    };
    let count = usize::try_from(n)?;
    let mut tcp_seen = 0;
    for (protocol, input, format, f) in [
        ("udp", SyslogInput::Udp, "rfc5424", Format::Rfc5424),
        ("tcp", SyslogInput::Tcp, "rfc5424", Format::Rfc5424),
        ("tcp", SyslogInput::Tcp, "cef", Format::Cef),
        ("tls", SyslogInput::Tls, "rfc5424", Format::Rfc5424),
    ] {
        let before = if input == SyslogInput::Tcp {
            tcp_seen
        } else {
            0
        };
        let rate = send_rate(&syslog(protocol, input, format), &alerts).await?;
        let got = wait_for(input, before + count) - before;
        if input == SyslogInput::Tcp {
            tcp_seen += got;
        }
        rows.push(Row {
            name: format!("syslog {format} over {protocol} → rsyslog"),
            encode_per_sec: encode_rate(&alerts, f),
            sent_per_sec: rate,
            delivered: format!("{got} of {count} written by rsyslog"),
        });
    }
    for (format, f) in [
        ("ecs", Format::Ecs),
        ("ocsf", Format::Ocsf),
        ("cef", Format::Cef),
    ] {
        let path = dir.join(format!("alerts-{format}.json"));
        let config = sink(
            &format!("file-{format}"),
            Destination::File { path: path.clone() },
            format,
            Tls::default(),
        );
        let rate = send_rate(&config, &alerts).await?;
        let lines = std::fs::read_to_string(&path)?.lines().count();
        rows.push(Row {
            name: format!("file, {format} lines"),
            encode_per_sec: encode_rate(&alerts, f),
            sent_per_sec: rate,
            delivered: format!("{lines} of {count} lines"),
        });
    }
    let tls_to = |r: &HttpsReceiver| Tls {
        ca_file: r.ca_path.clone(),
        ..Tls::default()
    };
    let es = HttpsReceiver::start(elasticsearch_bulk())?;
    let config = sink(
        "elasticsearch",
        Destination::Elasticsearch {
            url: es.url("/"),
            index: "bench".into(),
            api_key_file: None,
        },
        "ecs",
        tls_to(&es),
    );
    let rate = send_rate(&config, &alerts).await?;
    let docs: usize = es
        .requests()
        .iter()
        .filter(|q| q.status == 200)
        .map(|q| residency_tests::receivers::bulk_items(&q.body).map_or(0, |i| i.len()))
        .sum();
    rows.push(Row {
        name: "Elasticsearch `_bulk` (HTTPS)".into(),
        encode_per_sec: encode_rate(&alerts, Format::Ecs),
        sent_per_sec: rate,
        delivered: format!("{docs} of {count} documents"),
    });
    let hec = HttpsReceiver::start(splunk_hec(HEC_TOKEN))?;
    let config = sink(
        "splunk",
        Destination::SplunkHec {
            url: hec.url("/"),
            token_file: secret(dir, "hec.token", HEC_TOKEN)?,
            index: None,
            sourcetype: "residency".into(),
        },
        "ecs",
        tls_to(&hec),
    );
    let rate = send_rate(&config, &alerts).await?;
    let events: usize = hec
        .requests()
        .iter()
        .filter(|q| q.status == 200)
        .map(|q| {
            serde_json::Deserializer::from_slice(&q.body)
                .into_iter::<serde_json::Value>()
                .count()
        })
        .sum();
    rows.push(Row {
        name: "Splunk HEC (HTTPS, batches of 500)".into(),
        encode_per_sec: encode_rate(&alerts, Format::Ecs),
        sent_per_sec: rate,
        delivered: format!("{events} of {count} events"),
    });
    let hook = HttpsReceiver::start(residency_tests::receivers::answer_ok())?;
    let config = sink(
        "webhook",
        Destination::Webhook {
            url: hook.url("/alerts"),
            secret_file: secret(dir, "webhook.secret", WEBHOOK_SECRET)?,
        },
        "ecs",
        tls_to(&hook),
    );
    // One signed request per alert: a tenth of the alerts is enough.
    let few = &alerts[..alerts.len() / 10];
    let rate = send_rate(&config, few).await?;
    let got = hook.requests().iter().filter(|q| q.status == 200).count();
    rows.push(Row {
        name: "webhook, Standard Webhooks signed (HTTPS, one request each)".into(),
        encode_per_sec: encode_rate(few, Format::Ecs),
        sent_per_sec: rate,
        delivered: format!("{got} of {} requests", few.len()),
    });
    Ok(rows)
}

/// The kernel path: connect latency in the watched cgroup with the daemon
/// and no sink, with a dead sink that retries, and with a live sink that
/// takes every flow. Returns per case the median over rounds.
fn kernel_path(
    rounds: usize,
    connects: u64,
    dir: &Path,
) -> anyhow::Result<Vec<(&'static str, Sample, Vec<f64>)>> {
    let listener = Listener::bind(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let cg = TestCgroup::new("bench-siem")?;
    let secret = secret(dir, "dead.secret", WEBHOOK_SECRET)?;
    // Nothing listens here: every attempt is refused.
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let lines = dir.join("flows.json");
    let cases: [(&'static str, String); 3] = [
        ("daemon, no sink", String::new()),
        (
            "daemon, a dead webhook sink taking every flow (retrying)",
            format!(
                "[[sink]]\nname = \"dead\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{dead_port}/\"\nsecret_file = \"{}\"\nreceives = [\"flows\"]\nretry_max_secs = 1\n",
                secret.display()
            ),
        ),
        (
            "daemon, a live file sink taking every flow (OCSF)",
            format!(
                "[[sink]]\nname = \"live\"\ntype = \"file\"\npath = \"{}\"\nformat = \"ocsf\"\nreceives = [\"flows\"]\n",
                lines.display()
            ),
        ),
    ];
    // Warm-up.
    storm(&cg, Op::Tcp(listener.tcp), connects / 10)?;
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        for i in 0..cases.len() {
            let c = (i + round) % cases.len();
            eprintln!("round {}/{rounds}: {}", round + 1, cases[c].0);
            let config = format!("mode = \"monitor\"\n{}", cases[c].1);
            let daemon = Daemon::start(&config, &cg)?;
            daemon.wait_for(std::time::Duration::from_secs(30), |r| {
                residency_tests::action(r) == "started"
            })?;
            // Let the dead sink fail a few times first.
            std::thread::sleep(std::time::Duration::from_millis(500));
            samples[c].push(storm(&cg, Op::Tcp(listener.tcp), connects)?);
            daemon.stop()?;
        }
    }
    Ok(cases
        .iter()
        .zip(samples)
        .map(|((name, _), s)| {
            (
                *name,
                Sample {
                    p50: median(s.iter().map(|x| x.p50).collect()),
                    p99: median(s.iter().map(|x| x.p99).collect()),
                    per_sec: median(s.iter().map(|x| x.per_sec).collect()),
                },
                s.iter().map(|x| x.p50).collect(),
            )
        })
        .collect())
}

/// Runs both parts and writes the table.
pub fn run(alerts: u64, rounds: usize, connects: u64, write: Option<&Path>) -> anyhow::Result<()> {
    ensure!(
        alerts >= 100 && rounds > 0 && connects > 0,
        "counts too small"
    );
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let rows = rt.block_on(throughput(alerts, dir.path()))?;
    let kernel = kernel_path(rounds, connects, dir.path())?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured by `cargo xtask bench siem` on this 2-core VM: {alerts} violation alerts \
         (the daemon's ECS document of a blocked connect) sent through each sink's real sender \
         in batches of 500, to a receiver on loopback started by the benchmark (Debian's rsyslog \
         with its UDP, TCP and TLS inputs; a hyper HTTPS server for Elasticsearch, HEC and the \
         webhook). \"Encode only\" is the same alerts formatted with no I/O.\n"
    );
    let _ = writeln!(
        out,
        "| sink | encode only (alerts/s) | sent (alerts/s) | delivered |"
    );
    let _ = writeln!(out, "|---|---:|---:|---|");
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {} |",
            r.name, r.encode_per_sec, r.sent_per_sec, r.delivered
        );
    }
    let base = kernel[0].1.p99;
    let _ = writeln!(
        out,
        "\nThe kernel path with sinks (goal: a dead sink has no measurable effect): {connects} \
         loopback TCP connects per case per round in the watched cgroup, {rounds} rounds, cases \
         interleaved; medians over rounds. Every connect is a flow the sinks are offered.\n"
    );
    let _ = writeln!(
        out,
        "| case | p50 (µs) | p99 (µs) | connects/s | p99 vs no sink | p50 of each round (µs) |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---|");
    for (name, s, rounds) in &kernel {
        let each: Vec<String> = rounds.iter().map(|p| format!("{:.1}", p / 1e3)).collect();
        let _ = writeln!(
            out,
            "| {name} | {:.1} | {:.1} | {:.0} | {:+.1}% | {} |",
            s.p50 / 1e3,
            s.p99 / 1e3,
            s.per_sec,
            (s.p99 / base - 1.0) * 100.0,
            each.join(", ")
        );
    }
    print!("{out}");
    if let Some(path) = write {
        write_section(path, "siem", &out)?;
    }
    Ok(())
}
