//! `residency-bench evidence`: the evidence store.
//!
//! - ingest: records per second appended with the hash chain, the indexes
//!   and group commit, next to writing the same lines to a JSON-lines file;
//! - end-to-end latency from the kernel's decision to the record being
//!   queryable, with a real daemon and clients at a paced rate;
//! - queries over a store of `--records` records (10 M by default): the
//!   API's `/v1/flows` filtered by tenant and country (and other shapes),
//!   over HTTP and straight from the reader;
//! - `evidence verify` speed next to `sha256sum` of the same file, and the
//!   store's size per million records.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use residency_common::{DestKind, Hook, Verdict};
use residency_daemon::config::Config;
use residency_evidence::{self as evidence, Evidence, EvidenceConfig, Filter, Page};
use residency_record::{Decider, Flow, Index, PolicyView, ProcessInfo, Transport};

use super::write_section;

/// Countries the synthetic flows go to, with whether the tenants (EEA +
/// adequacy) allow them.
const COUNTRIES: [(&str, bool); 20] = [
    ("DE", true),
    ("FR", true),
    ("NL", true),
    ("IE", true),
    ("SE", true),
    ("PL", true),
    ("IT", true),
    ("ES", true),
    ("GB", true),
    ("JP", true),
    ("CH", true),
    ("CA", true),
    ("US", false),
    ("IN", false),
    ("SG", false),
    ("AU", false),
    ("BR", true),
    ("CN", false),
    ("ZA", false),
    ("KR", true),
];
pub const TENANTS: usize = 50;
/// Rounds of the ingest measurement.
const ROUNDS: usize = 3;

/// 50 tenants with one enforcing workload each.
fn config() -> anyhow::Result<Config> {
    let mut text = String::from("mode = \"monitor\"\n");
    let roles = ["llm", "crm-sync", "logging", "backup", "other"];
    for t in 0..TENANTS {
        let _ = write!(
            text,
            "[[tenant]]\nid = \"tenant-{t:02}\"\nallowed = [\"EEA\", \"ADEQUACY\"]\nmode = \"enforce\"\n\
             [[workload]]\nname = \"tenant-{t:02}-{role}\"\nrole = \"{role}\"\ntenants = [\"tenant-{t:02}\"]\n\
             cgroup = [\"/bench/w{t:02}\"]\n",
            role = roles[t % roles.len()]
        );
    }
    Ok(Config::from_toml(&text, "bench")?)
}

/// Writes flow `i` (of tenant `i % 50`, country `i / 50 % 20`) as the
/// daemon's encoder does.
pub struct Flows {
    policy: Arc<PolicyView>,
    process: Arc<ProcessInfo>,
    start_ns: i128,
}

impl Flows {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Flows {
            policy: Arc::new(residency_daemon::policy::view(&config()?)),
            process: Arc::new(ProcessInfo {
                executable: Some("/usr/bin/python3.12".into()),
                args: vec![
                    "python3".into(),
                    "/srv/sync/crm_sync.py".into(),
                    "--batch".into(),
                    "500".into(),
                ],
                args_truncated: false,
            }),
            start_ns: jiff::Timestamp::now().as_nanosecond() - 86_400 * 1_000_000_000,
        })
    }

    fn encode(&self, i: u64, out: &mut Vec<u8>) -> anyhow::Result<Index> {
        let tenant = usize::try_from(i % TENANTS as u64)?;
        let (country, allowed) = COUNTRIES[usize::try_from(i / TENANTS as u64 % 20)?];
        let host = u8::try_from(i / 1000 % 16)?;
        let flow = Flow {
            time: jiff::Timestamp::from_nanosecond(self.start_ns + i128::from(i) * 100_000)?,
            boot_ns: i,
            cgroup_id: 1000 + tenant as u64,
            cgroup_path: Some(format!("/bench/w{tenant:02}").into()),
            pid: 4000 + u32::try_from(tenant)?,
            tid: 4000 + u32::try_from(tenant)?,
            uid: 1000,
            gid: 1000,
            process_name: "python3".into(),
            process: Some(self.process.clone()),
            hook: Hook::Connect4,
            transport: Transport::Tcp,
            dest_ip: IpAddr::V4(Ipv4Addr::new(
                198,
                18,
                u8::try_from(i / TENANTS as u64 % 20)?,
                host,
            )),
            dest_port: 443,
            v4_mapped: false,
            stale: false,
            verdict: if allowed {
                Verdict::Allowed
            } else {
                Verdict::Blocked
            },
            rule_id: 0,
            dest_kind: DestKind::Geo,
            country: country.parse::<geoip::CountryCode>().ok(),
            geo_gen: 0,
            geo_version: None,
            detail: None,
            policy: u16::try_from(tenant + 1)?,
            policy_gen: 1,
            policy_view: Some(Decider(self.policy.clone())),
            name: None,
            cookie: 0,
            pod: None,
            flow_id: None,
            totals: None,
        };
        // As the pipeline does: the line, and its columns from the same
        // document.
        Ok(residency_record::encode_flow_indexed(&flow, out)?)
    }

    /// Records `from..to` as one newline-terminated batch, with columns.
    fn batch(&self, from: u64, to: u64) -> anyhow::Result<(Vec<u8>, Vec<Option<Index>>)> {
        let mut out = Vec::with_capacity(usize::try_from(to - from)? * 1100);
        let mut index = Vec::with_capacity(usize::try_from(to - from)?);
        for i in from..to {
            index.push(Some(self.encode(i, &mut out)?));
        }
        Ok((out, index))
    }
}

pub fn evidence_config(dir: &Path) -> EvidenceConfig {
    EvidenceConfig {
        directory: dir.to_owned(),
        checkpoint_records: 10_000,
        checkpoint_interval: Duration::from_mins(1),
        retention: None,
        max_bytes: None,
        wal_limit: evidence::WAL_LIMIT,
        dict_samples: evidence::codec::SAMPLES,
    }
}

pub fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a small vector"
    )]
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

/// Results for the table.
#[derive(Default)]
pub struct Numbers {
    pub ingest: Vec<(String, f64, String)>,
    pub latency: Vec<String>,
    pub queries: Vec<(String, f64, f64, usize)>,
    pub verify: Vec<(String, f64, f64)>,
    pub size: Vec<String>,
}

/// Ingest: `n` records in 1,000-record batches (the pipeline's batch is up
/// to 1 MiB, about 1,000 records), pre-encoded so that only the store is
/// timed; the same bytes written to a file as the JSON-lines sink does.
pub async fn ingest(
    dir: &Path,
    n: u64,
    flows: &Flows,
    numbers: &mut Numbers,
) -> anyhow::Result<Evidence> {
    eprintln!("evidence: encoding {n} records");
    let mut batches = Vec::new();
    let mut i = 0;
    while i < n {
        let to = (i + 1000).min(n);
        batches.push(flows.batch(i, to)?);
        i = to;
    }
    let bytes: usize = batches.iter().map(|(b, _)| b.len()).sum();

    // Reference: the JSON-lines file sink (write + flush per batch).
    {
        use std::io::Write as _;
        let path = dir.join("reference.jsonl");
        let mut f = std::io::BufWriter::with_capacity(256 * 1024, std::fs::File::create(&path)?);
        let t = Instant::now();
        for (b, _) in &batches {
            f.write_all(b)?;
            f.flush()?;
        }
        f.get_ref().sync_data()?;
        let secs = t.elapsed().as_secs_f64();
        #[expect(clippy::cast_precision_loss, reason = "a rate")]
        numbers.ingest.push((
            "JSON-lines file (the existing sink), for reference".into(),
            n as f64 / secs,
            format!("{:.0} MB/s", bytes as f64 / 1e6 / secs),
        ));
        std::fs::remove_file(&path)?;
    }

    // Three rounds, each into a fresh store (this VM's disk and CPU vary
    // by ±20% from run to run); the last store is kept for the queries.
    let mut committed = Vec::new();
    let mut indexed = Vec::new();
    let mut lag = Vec::new();
    let mut kept = None;
    for round in 0..ROUNDS {
        eprintln!(
            "evidence: ingesting {n} records into a new store (round {}/{ROUNDS})",
            round + 1
        );
        let store = dir.join(format!("store-{round}"));
        let (ev, _) = Evidence::open(&evidence_config(&store))?;
        let t = Instant::now();
        for (b, index) in batches.iter().cloned() {
            ev.append_indexed(b, index).await?;
        }
        ev.checkpoint().await?; // a round trip: everything is committed
        let secs = t.elapsed().as_secs_f64();
        ensure!(
            ev.wait_indexed(Duration::from_mins(10)).await,
            "the indexer did not catch up"
        );
        let indexed_secs = t.elapsed().as_secs_f64();
        let head = ev.stats().head_seq.get();
        ensure!(
            u64::try_from(head)? == n,
            "the store holds {head} records of {n}: records were lost"
        );
        #[expect(clippy::cast_precision_loss, reason = "a rate")]
        let (c, i) = (n as f64 / secs, n as f64 / indexed_secs);
        eprintln!("evidence: ingest {c:.0} records/s committed, {i:.0} indexed");
        committed.push(c);
        indexed.push(i);
        lag.push(indexed_secs - secs);
        if round + 1 == ROUNDS {
            kept = Some(ev);
        } else {
            ev.close().await?;
            drop(ev);
            std::fs::remove_dir_all(&store)?;
        }
    }
    let range = |v: &[f64]| {
        format!(
            "{:.0}-{:.0}",
            v.iter().copied().fold(f64::INFINITY, f64::min),
            v.iter().copied().fold(0.0, f64::max)
        )
    };
    let c = pct(&mut committed.clone(), 0.5);
    let i = pct(&mut indexed.clone(), 0.5);
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let mb = bytes as f64 / 1e6 / (n as f64 / c);
    numbers.ingest.push((
        "evidence store: hash chain and group commit (committed, verifiable)".into(),
        c,
        format!(
            "median of {ROUNDS} rounds ({} records/s), {mb:.0} MB/s; {n} of {n} stored in every round",
            range(&committed)
        ),
    ));
    numbers.ingest.push((
        "evidence store: also indexed (queryable by filter), indexer on the second core".into(),
        i,
        format!(
            "median of {ROUNDS} ({}); indexing finished {:.2} s after the last commit (median)",
            range(&indexed),
            pct(&mut lag, 0.5)
        ),
    ));
    let ev = kept.context("no round ran")?;
    Ok(ev)
}

/// Fills the store up to `total` records, encoding on the fly.
pub async fn fill(ev: &Evidence, from: u64, total: u64, flows: &Flows) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut last = Instant::now();
    let mut i = from;
    while i < total {
        let to = (i + 1000).min(total);
        let (b, index) = flows.batch(i, to)?;
        ev.append_indexed(b, index).await?;
        i = to;
        if last.elapsed() >= Duration::from_secs(10) {
            last = Instant::now();
            #[expect(clippy::cast_precision_loss, reason = "progress")]
            let rate = (i - from) as f64 / t.elapsed().as_secs_f64();
            eprintln!("evidence: {i} of {total} records ({rate:.0}/s)");
        }
    }
    ev.checkpoint().await?;
    ensure!(
        ev.wait_indexed(Duration::from_hours(1)).await,
        "the indexer did not catch up"
    );
    Ok(())
}

/// Query shapes: (name, filter); tenant and country are drawn per query.
/// A query shape: its name, and the filter for a (tenant, country) draw.
type Shape = (&'static str, fn(usize, usize) -> Filter);

fn shapes() -> Vec<Shape> {
    fn tenant(t: usize) -> String {
        format!("tenant-{:02}", t % TENANTS)
    }
    fn country(c: usize) -> String {
        COUNTRIES[c % 20].0.to_owned()
    }
    vec![
        ("tenant and country", |t, c| Filter {
            tenant: Some(tenant(t)),
            country: Some(country(c)),
            ..Filter::default()
        }),
        ("tenant", |t, _| Filter {
            tenant: Some(tenant(t)),
            ..Filter::default()
        }),
        ("country", |_, c| Filter {
            country: Some(country(c)),
            ..Filter::default()
        }),
        ("workload and verdict blocked", |t, _| Filter {
            workload: Some(format!(
                "tenant-{:02}-{}",
                t % TENANTS,
                ["llm", "crm-sync", "logging", "backup", "other"][t % TENANTS % 5]
            )),
            verdict: Some("blocked".into()),
            ..Filter::default()
        }),
        ("destination address", |t, c| Filter {
            dst_ip: Some(IpAddr::V4(Ipv4Addr::new(
                198,
                18,
                u8::try_from(c % 20).unwrap_or(0),
                u8::try_from(t % 16).unwrap_or(0),
            ))),
            ..Filter::default()
        }),
    ]
}

/// p50/p99 of each query shape, straight from the reader.
pub fn queries_direct(ev: &Evidence, n: usize, numbers: &mut Numbers) -> anyhow::Result<()> {
    for (name, shape) in shapes() {
        let mut times = Vec::with_capacity(n);
        let mut found = 0;
        for q in 0..n {
            let f = shape(q * 7 + 3, q * 13 + 1);
            let t = Instant::now();
            let page = ev.reader().flows(&f, &Page::default())?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            found += page.items.len();
        }
        numbers.queries.push((
            format!("{name} (reader)"),
            pct(&mut times, 0.5),
            pct(&mut times, 0.99),
            found / n.max(1),
        ));
    }
    Ok(())
}

/// The query shape the goal names, over HTTP: `GET /v1/flows?tenant=&country=`
/// to the API served on loopback with its bearer token, as an auditor's
/// tool would call it.
pub async fn queries_http(
    ev: &Evidence,
    dir: &Path,
    n: usize,
    numbers: &mut Numbers,
) -> anyhow::Result<()> {
    use residency_api::{
        self as api, ApiConfig,
        client::{Client, Target},
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let config = ApiConfig {
        listen: Some("127.0.0.1:0".parse()?),
        socket: None,
        token_file: dir.join("api.token"),
    };
    let metrics = residency_daemon::metrics::Metrics::new(ev.stats());
    let serving = api::serve(
        &config,
        dir,
        api::ApiState {
            reader: ev.reader().clone(),
            evidence: ev.clone(),
            metrics: metrics.registry.clone(),
            attached: metrics.pipeline.attached.clone(),
        },
        stop_rx,
    )
    .await?;
    let addr = serving.tcp.context("no TCP listener")?;
    let token = std::fs::read_to_string(dir.join("api.token"))?;
    let client = Client::new(Target::Tcp(addr.to_string()), Some(token.trim().to_owned()));
    let mut times = Vec::with_capacity(n);
    let mut found = 0;
    for q in 0..n {
        let path = format!(
            "/v1/flows?tenant=tenant-{:02}&country={}",
            (q * 7 + 3) % TENANTS,
            COUNTRIES[(q * 13 + 1) % 20].0
        );
        let t = Instant::now();
        let v = client.get_json(&path).await?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        found += v["items"].as_array().map_or(0, Vec::len);
    }
    numbers.queries.insert(
        0,
        (
            "**tenant and country, `GET /v1/flows` over HTTP** (new connection per request)".into(),
            pct(&mut times, 0.5),
            pct(&mut times, 0.99),
            found / n.max(1),
        ),
    );
    let _ = stop_tx.send(true);
    serving.stopped().await;
    Ok(())
}

/// Kernel decision to queryable, with the real daemon: clients in a test
/// cgroup send UDP datagrams at `rate` per second for `seconds`; the
/// daemon's own histogram (`/metrics`) gives the distribution.
pub fn latency(
    rt: &tokio::runtime::Runtime,
    rate: u64,
    seconds: u64,
    numbers: &mut Numbers,
) -> anyhow::Result<()> {
    use residency_tests::{ClientOptions, Daemon, Listener, Op, TestCgroup, action, spawn_client};
    let cg = TestCgroup::new("bench-evidence")?;
    let listener = Listener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let daemon = Daemon::start("mode = \"monitor\"\n[kernel]\npoll_interval_ms = 10\n", &cg)?;
    daemon.wait_for(Duration::from_secs(30), |r| action(r) == "started")?;
    // Two clients, each sending `per_pass` datagrams, then pausing 1 ms
    // (a pass itself takes about a fifth of that, hence the 1.25).
    let per_pass = usize::try_from(rate * 5 / 4 / 2 / 1000)?.max(1);
    let ops = vec![Op::Udp(listener.udp); per_pass];
    let mut clients = Vec::new();
    let t = Instant::now();
    for _ in 0..2 {
        clients.push(spawn_client(
            &ops,
            &ClientOptions {
                cgroup: Some(&cg),
                duration_ms: Some(seconds * 1000),
                interval_us: Some(1000),
                ..Default::default()
            },
        )?);
    }
    for mut c in clients {
        c.wait()?;
    }
    let secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    let client = residency_api::client::Client::new(
        residency_api::client::Target::Socket(daemon.socket.clone()),
        None,
    );
    let reply = rt.block_on(client.request(hyper::Method::GET, "/metrics", None))?;
    let text = String::from_utf8_lossy(&reply.body).into_owned();
    if std::env::var_os("BENCH_DEBUG").is_some() {
        eprintln!("{text}");
    }
    // Only the stopped record: a long round's records do not fit in
    // memory as JSON values.
    let stopped = daemon
        .stop_finding(|r| action(r) == "stopped")?
        .context("no stopped record")?;
    let submitted = stopped["residency"]["counters"]["kernel_submitted"]
        .as_u64()
        .unwrap_or(0);
    let dropped = stopped["residency"]["counters"]["kernel_dropped"]
        .as_u64()
        .unwrap_or(0);
    let bucket = |le: &str| -> f64 {
        text.lines()
            .find(|l| {
                l.starts_with("residency_store_ingest_latency_seconds_bucket")
                    && l.contains(&format!("le=\"{le}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let count = bucket("+Inf");
    ensure!(count > 0.0, "no latency observations in /metrics: {text}");
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    let achieved = submitted as f64 / secs;
    let mut line = format!(
        "{achieved:.0} events/s for {secs:.0} s ({submitted} decisions, {dropped} lost in the kernel); \
         share of flows queryable within: "
    );
    for le in ["0.01", "0.02", "0.03", "0.05", "0.1"] {
        let _ = write!(
            line,
            "{:.0} ms {:.2}%, ",
            le.parse::<f64>()? * 1e3,
            bucket(le) / count * 100.0
        );
    }
    line.truncate(line.len() - 2);
    let p99_within = [
        "0.005", "0.01", "0.02", "0.03", "0.04", "0.05", "0.1", "0.25", "0.5", "1", "5",
    ]
    .iter()
    .find(|le| bucket(le) / count >= 0.99)
    .map_or("over 5 s".to_owned(), |le| {
        format!("≤ {} ms", le.parse::<f64>().unwrap_or(0.0) * 1e3)
    });
    let _ = write!(line, ". p99 {p99_within} (histogram bucket bound).");
    numbers.latency.push(line);
    Ok(())
}

/// `evidence verify` next to `sha256sum` of the database file.
pub fn verify(dir: &Path, numbers: &mut Numbers) -> anyhow::Result<()> {
    let store = dir.join(format!("store-{}", ROUNDS - 1));
    let report = evidence::verify::store(&store, None, &[], &mut |done, total| {
        if done % 1_000_000 < 50_000 {
            eprintln!("evidence: verified {done} of {total}");
        }
    })?;
    ensure!(
        report.ok(),
        "the bench store does not verify: {:?}",
        report.faults
    );
    let db = evidence::db_path(&store);
    let size = std::fs::metadata(&db)?.len();
    #[expect(clippy::cast_precision_loss, reason = "sizes")]
    numbers.verify.push((
        format!(
            "`residency evidence verify` ({} records, {:.0} MB of canonical record bytes \
             decompressed and hashed, from a {:.0} MB file)",
            report.records,
            report.bytes as f64 / 1e6,
            size as f64 / 1e6,
        ),
        report.mb_per_s(),
        report.elapsed.as_secs_f64(),
    ));
    let t = Instant::now();
    let out = std::process::Command::new("sha256sum").arg(&db).output()?;
    ensure!(out.status.success(), "sha256sum failed");
    let secs = t.elapsed().as_secs_f64();
    #[expect(clippy::cast_precision_loss, reason = "a rate")]
    numbers.verify.push((
        "`sha256sum` of the database file, for reference".into(),
        size as f64 / 1e6 / secs,
        secs,
    ));
    Ok(())
}

pub fn size(dir: &Path, records: u64, numbers: &mut Numbers) -> anyhow::Result<()> {
    let store = dir.join(format!("store-{}", ROUNDS - 1));
    let chain = std::fs::metadata(evidence::db_path(&store))?.len();
    let mut all = 0;
    for e in std::fs::read_dir(&store)? {
        let e = e?;
        if e.file_type()?.is_file() {
            all += e.metadata()?.len();
        }
    }
    #[expect(clippy::cast_precision_loss, reason = "sizes")]
    let mib_per_m = |b: u64| b as f64 / (records as f64 / 1e6) / (1u64 << 20) as f64;
    #[expect(clippy::cast_precision_loss, reason = "sizes")]
    numbers.size.push(format!(
        "{records} records: {:.2} GiB on disk, {:.0} MiB per million records \
         (the chain file `evidence.db` {:.0}, the index file the rest)",
        all as f64 / f64::from(1u32 << 30),
        mib_per_m(all),
        mib_per_m(chain),
    ));
    Ok(())
}

pub fn render(n: u64, records: u64, numbers: &Numbers) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Measured {} by `cargo xtask bench evidence` on this 2-core VM: synthetic flows \
         encoded by the daemon's own ECS encoder (50 tenants, 20 countries, about 1,000 bytes \
         per record).\n",
        jiff::Zoned::now().strftime("%Y-%m-%d"),
    );
    let _ = writeln!(
        out,
        "**Ingest** ({n} records in 1,000-record batches; goal ≥ 100k/s, no loss):\n"
    );
    let _ = writeln!(out, "| writer | records/s | notes |\n|---|---:|---|");
    for (name, rate, note) in &numbers.ingest {
        let _ = writeln!(out, "| {name} | {rate:.0} | {note} |");
    }
    if !numbers.latency.is_empty() {
        let _ = writeln!(
            out,
            "\n**Kernel decision to queryable** (goal p99 ≤ 50 ms at 50k events/s):\n"
        );
        for l in &numbers.latency {
            let _ = writeln!(out, "- {l}");
        }
    }
    let _ = writeln!(
        out,
        "\n**Queries** over {records} records (first page of 100, newest first; goal p99 ≤ 50 ms for tenant and country):\n"
    );
    let _ = writeln!(
        out,
        "| filter | p50 | p99 | rows per page |\n|---|---:|---:|---:|"
    );
    for (name, p50, p99, rows) in &numbers.queries {
        let _ = writeln!(out, "| {name} | {p50:.2} ms | {p99:.2} ms | {rows} |");
    }
    let _ = writeln!(out, "\n**Verify** (goal ≥ 100 MB/s):\n");
    let _ = writeln!(out, "| | MB/s | time |\n|---|---:|---:|");
    for (name, rate, secs) in &numbers.verify {
        let _ = writeln!(out, "| {name} | {rate:.0} | {secs:.1} s |");
    }
    let _ = writeln!(out, "\n**Size**: {}", numbers.size.join("; "));
    out
}

/// Runs the store-level parts; the API and daemon parts are in the caller.
pub async fn run_store(
    dir: &Path,
    ingest_n: u64,
    records: u64,
    queries: usize,
    numbers: &mut Numbers,
) -> anyhow::Result<Evidence> {
    let flows = Flows::new()?;
    let ev = ingest(dir, ingest_n, &flows, numbers).await?;
    if records > ingest_n {
        eprintln!("evidence: filling the store to {records} records");
        fill(&ev, ingest_n, records, &flows).await?;
    }
    queries_direct(&ev, queries, numbers)?;
    Ok(ev)
}

/// A scratch directory for the store, removed afterwards.
pub fn scratch(base: Option<PathBuf>) -> anyhow::Result<tempfile::TempDir> {
    let base = base.unwrap_or_else(|| PathBuf::from("/var/tmp"));
    tempfile::Builder::new()
        .prefix("residency-bench-evidence-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a scratch directory in {}", base.display()))
}

pub fn write(path: &Path, body: &str) -> anyhow::Result<()> {
    write_section(path, "evidence", body)
}

/// Command-line settings.
pub struct Args {
    pub records: u64,
    pub ingest: u64,
    pub queries: usize,
    pub rate: u64,
    pub seconds: u64,
    pub latency_rounds: usize,
    pub latency_only: bool,
    pub scratch: Option<PathBuf>,
}

pub fn main(args: &Args, write_to: Option<&Path>) -> anyhow::Result<()> {
    ensure!(
        args.records >= args.ingest && args.ingest > 0,
        "--records must be at least --ingest"
    );
    let rt = tokio::runtime::Runtime::new()?;
    let mut numbers = Numbers::default();
    // Several rounds: tail latency on this VM varies from run to run.
    for round in 1..=args.latency_rounds {
        eprintln!(
            "evidence: latency round {round}/{}, {} s at {} events/s",
            args.latency_rounds, args.seconds, args.rate
        );
        latency(&rt, args.rate, args.seconds, &mut numbers)?;
        eprintln!(
            "evidence: {}",
            numbers.latency.last().map_or("", String::as_str)
        );
    }
    if args.latency_only {
        return Ok(());
    }
    let dir = scratch(args.scratch.clone())?;
    rt.block_on(async {
        let ev = run_store(
            dir.path(),
            args.ingest,
            args.records,
            args.queries,
            &mut numbers,
        )
        .await?;
        queries_http(&ev, dir.path(), args.queries, &mut numbers).await?;
        ev.close().await?;
        anyhow::Ok(())
    })?;
    size(dir.path(), args.records, &mut numbers)?;
    verify(dir.path(), &mut numbers)?;
    let out = render(args.ingest, args.records, &numbers);
    println!("{out}");
    if let Some(path) = write_to {
        write(path, &out)?;
        eprintln!("wrote the table to {}", path.display());
    }
    Ok(())
}
