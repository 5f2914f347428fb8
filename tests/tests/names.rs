//! End-to-end: flows judged and recorded by the name the process resolved.
//!
//! A real DNS server from Debian (dnsmasq, on 127.53.0.1:53) answers for
//! catalog names with loopback addresses that a test `GeoIP` database
//! places in Germany or the US ("loopback stands in for the world"; nothing
//! leaves the machine). Clients resolve through glibc's `getaddrinfo`
//! (python3, with `/etc/resolv.conf` bound over in a private mount
//! namespace) and through raw DNS queries; they run in a test cgroup whose
//! workload belongs to an EEA tenant in enforce mode.
//!
//! What is shown: a catalog name on an address `GeoIP` places in the US is
//! allowed (decided by the catalog), a global endpoint on an address
//! `GeoIP` places in Germany is blocked (EPERM), a CNAME chain, AAAA, an
//! answer too large for UDP retried over TCP, a connect made right after
//! the answer arrives (the race), an ambiguous address, DNS over TLS, a
//! TLS server name that differs from the resolved one, an address no
//! answer named, and hostile DNS packets that change nothing.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{Ipv4Addr, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use geoip::testdb::{Entry, Layout, write};
use residency_tests::{Daemon, Dnsmasq, TestCgroup, flows, privileged_or_skip};
use serde_json::Value;

const DNS: &str = "127.53.0.1";
const HOSTILE_DNS: &str = "127.53.0.2";
const RACE_NAMES: u8 = 100;

fn dnsmasq(dir: &Path) -> anyhow::Result<Option<Dnsmasq>> {
    let mut hosts = String::new();
    // 40 addresses for one name: more than a 512-byte UDP answer holds, so
    // glibc (which sends no EDNS) gets a truncated answer and asks over TCP.
    for i in 1..=40 {
        let _ = writeln!(hosts, "127.0.1.{i} big.example");
    }
    for i in 1..=RACE_NAMES {
        let _ = writeln!(hosts, "127.0.2.{i} r{i}.race.example");
    }
    Dnsmasq::start(
        dir,
        DNS,
        &hosts,
        "host-record=eu.api.openai.com,127.0.0.40,::1\n\
         host-record=api.openai.com,127.0.0.20\n\
         cname=api-eu1.hubapi.com,edge.hubspot-cdn.example\n\
         host-record=edge.hubspot-cdn.example,127.0.0.41\n\
         host-record=plain.example,127.0.0.33\n\
         host-record=eu-llm.example,127.0.0.43\n\
         host-record=us-llm.example,127.0.0.43\n\
         host-record=tls-eu.example,127.0.0.45\n\
         host-record=x.denied.example,127.0.0.21\n\
         host-record=scc.example,127.0.0.35\n",
    )
}

/// A DNS "server" that answers every query with hostile messages: pointer
/// loops, lengths past the end, counts that lie, a name longer than DNS
/// allows through pointers. The client must receive them (they reach its
/// socket through the kernel program), and nothing may change.
fn hostile_server(stop: Arc<AtomicBool>) -> anyhow::Result<thread::JoinHandle<()>> {
    let sock = UdpSocket::bind((HOSTILE_DNS, 53))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok(thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            let Ok((len, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if len < 12 {
                continue;
            }
            let id = [buf[0], buf[1]];
            let q = &buf[12..len];
            let head = |an: u16| {
                let mut h = vec![id[0], id[1], 0x81, 0x80, 0, 1];
                h.extend_from_slice(&an.to_be_bytes());
                h.extend_from_slice(&[0, 0, 0, 0]);
                h
            };
            let mut answers: Vec<Vec<u8>> = Vec::new();
            // An answer whose owner name points at itself.
            let mut self_loop = head(1);
            self_loop.extend_from_slice(q);
            let at = u16::try_from(self_loop.len()).unwrap_or(0) | 0xc000;
            self_loop.extend_from_slice(&at.to_be_bytes());
            self_loop.extend_from_slice(&[0, 1, 0, 1, 0, 0, 1, 0, 0, 4, 127, 0, 0, 36]);
            answers.push(self_loop);
            // Two pointers pointing at each other.
            let mut pair = head(1);
            pair.extend_from_slice(q);
            let at = u16::try_from(pair.len()).unwrap_or(0);
            pair.extend_from_slice(&((at + 2) | 0xc000).to_be_bytes());
            pair.extend_from_slice(&(at | 0xc000).to_be_bytes());
            answers.push(pair);
            // 65535 answers claimed, an rdlength past the end.
            let mut liar = head(65535);
            liar.extend_from_slice(q);
            liar.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 0, 0xff, 0xff, 127]);
            answers.push(liar);
            // A label length past the end of the message.
            let mut past_end = head(1);
            past_end.extend_from_slice(q);
            past_end.extend_from_slice(&[63, b'x']);
            answers.push(past_end);
            // Garbage with the response bit set.
            answers.push(vec![
                id[0], id[1], 0x81, 0x80, 0, 1, 0xff, 0xff, 0, 0, 0, 0, 0xc0,
            ]);
            for m in answers {
                let _ = sock.send_to(&m, from);
            }
        }
    }))
}

/// The client: resolves through getaddrinfo (or sends raw queries), then
/// connects, and reports each result as JSON.
const CLIENT: &str = r#"
import errno, json, socket, ssl, struct, sys, time
ops = json.loads(sys.argv[1])
out = []
def connect(family, addr, port):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((addr, port))
        return s, "ok"
    except OSError as e:
        s.close()
        return None, errno.errorcode.get(e.errno, str(e.errno))
def query(name, qid):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00\x00\x01\x00\x01"
for op in ops:
    kind = op["op"]
    if kind == "resolve":
        family = socket.AF_INET6 if op.get("family") == 6 else socket.AF_INET
        try:
            infos = socket.getaddrinfo(op["name"], op["port"], family, socket.SOCK_STREAM)
        except socket.gaierror as e:
            out.append({"name": op["name"], "error": str(e)})
            continue
        addr = infos[0][4][0]
        s, res = connect(family, addr, op["port"])
        entry = {"name": op["name"], "addr": addr, "addrs": len(infos), "result": res}
        if s is not None and op.get("sni"):
            # The ClientHello, made by Python's TLS stack in memory, then
            # sent in three writes: the kernel sees it in three segments.
            ctx = ssl.create_default_context()
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = ctx.wrap_bio(incoming, outgoing, server_hostname=op["sni"])
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            hello = outgoing.read()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            third = len(hello) // 3
            for part in (hello[:third], hello[third:2 * third], hello[2 * third:]):
                s.sendall(part)
                time.sleep(0.05)
            entry["hello_bytes"] = len(hello)
        if s is not None:
            s.close()
        out.append(entry)
    elif kind == "connect":
        s, res = connect(socket.AF_INET, op["addr"], op["port"])
        if s is not None:
            s.close()
        out.append({"addr": op["addr"], "port": op["port"], "result": res})
    elif kind == "race":
        # A raw query, and connect() the moment the answer is read: the
        # kernel must have the name before recv() returns.
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(2)
        results = []
        for i, name in enumerate(op["names"]):
            u.sendto(query(name, i + 1), (op["server"], 53))
            data, _ = u.recvfrom(4096)
            addr = socket.inet_ntoa(data[-4:])
            t0 = time.perf_counter_ns()
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.connect((addr, op["port"]))
                res = "ok"
            except OSError as e:
                res = errno.errorcode.get(e.errno, str(e.errno))
            gap = time.perf_counter_ns() - t0
            s.close()
            results.append({"name": name, "addr": addr, "result": res, "connect_ns": gap})
        out.append({"race": results})
    elif kind == "sleep":
        time.sleep(op["secs"])
    elif kind == "curl":
        import subprocess
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "3",
                            "http://%s:%d/" % (op["name"], op["port"])])
        out.append({"curl": op["name"], "exit": r.returncode})
    elif kind == "hostile":
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.settimeout(0.3)
        got = 0
        for i in range(op["rounds"]):
            u.sendto(query(op["name"], 0x4000 + i), (op["server"], 53))
            try:
                while True:
                    u.recvfrom(4096)
                    got += 1
            except socket.timeout:
                pass
        out.append({"hostile_received": got})
print(json.dumps(out))
"#;

/// Runs the client in `cgroup`, resolving through `resolv`.
fn client(cgroup: &Path, resolv: &Path, script: &Path, ops: &Value) -> anyhow::Result<Vec<Value>> {
    let inner = format!(
        "mount --bind {resolv} /etc/resolv.conf && exec python3 {script} \"$0\"",
        resolv = resolv.display(),
        script = script.display()
    );
    let procs = cgroup.join("cgroup.procs");
    // Join the cgroup first, then a private mount namespace in which
    // /etc/resolv.conf names the test's DNS server.
    let outer = format!(
        "echo $$ > {procs} && exec unshare --mount --propagation private sh -c '{inner}' \"$0\"",
        procs = procs.display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(outer)
        .arg(ops.to_string())
        .stdin(Stdio::null())
        .output()
        .context("running the python client")?;
    ensure!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "client output: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(v)
}

fn config(root: &str) -> String {
    format!(
        r#"
mode = "monitor"
[kernel]
poll_interval_ms = 5
[policy]
allowed = ["EEA"]
# Loopback stands in for the world here; the DNS servers are local.
local_networks = ["127.53.0.0/16", "10.0.0.0/8"]

[names]
# Names hold for 3 s (dnsmasq's TTL is 300 s): the test checks expiry.
min_ttl_secs = 3
max_ttl_secs = 3

[[tenant]]
id = "acme"
name = "ACME GmbH"
allowed = ["EEA", "ADEQUACY"]
mode = "enforce"

[[workload]]
name = "acme-llm"
role = "llm"
tenants = ["acme"]
cgroup = ["{root}/app"]

# Rules that name hosts: a deny for a German address, an exception for a
# US one.
[[deny]]
name = "no-denied-example"
names = ["*.denied.example"]

[[exception]]
name = "scc-example"
names = ["scc.example"]
basis = "scc"
justification = "SCC 2021/914 module 2 with Example Inc."
expires = "2099-01-01"
tenants = ["acme"]

[[endpoint]]
id = "test-eu-llm"
pattern = "eu-llm.example"
jurisdiction = ["DE"]
provider = "Test"
service = "EU LLM"
source = "test fixture"

[[endpoint]]
id = "test-us-llm"
pattern = "us-llm.example"
jurisdiction = ["US"]
provider = "Test"
service = "US LLM"
source = "test fixture"

[[endpoint]]
id = "test-big"
pattern = "big.example"
jurisdiction = ["DE"]
provider = "Test"
service = "Large answer"
source = "test fixture"

[[endpoint]]
id = "test-race"
pattern = "*.race.example"
jurisdiction = ["DE"]
provider = "Test"
service = "Race"
source = "test fixture"

[[endpoint]]
id = "test-tls-eu"
pattern = "tls-eu.example"
jurisdiction = ["DE"]
provider = "Test"
service = "TLS"
source = "test fixture"
"#
    )
}

/// A database that places 127.0.0.16/28 in DE and the rest of the test
/// addresses (and `::1`) in the US.
fn db(dir: &Path) -> PathBuf {
    let db = dir.join("c.mmdb");
    write(
        &db,
        Layout::IpLocationDb,
        "t",
        1,
        &[
            Entry::country("127.0.0.16/28", "DE"),
            Entry::country("127.0.0.32/28", "US"),
            Entry::country("127.0.1.0/24", "US"),
            Entry::country("127.0.2.0/24", "US"),
            Entry::country("::1/128", "US"),
        ],
    );
    db
}

fn flow_to<'a>(records: &'a [Value], ip: &str, port: u16) -> Option<&'a Value> {
    flows(records).into_iter().find(|f| {
        f["destination"]["ip"] == ip
            && f["destination"]["port"] == port
            && f["event"]["action"] == "connect"
    })
}

#[test]
#[expect(clippy::too_many_lines, reason = "one scenario, case by case")]
fn flows_are_judged_and_recorded_by_the_resolved_name() -> anyhow::Result<()> {
    if !privileged_or_skip("flows_are_judged_and_recorded_by_the_resolved_name") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let Some(_dns) = dnsmasq(dir.path())? else {
        return Ok(());
    };
    let stop = Arc::new(AtomicBool::new(false));
    let hostile = hostile_server(stop.clone())?;
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("nameserver {DNS}\noptions timeout:2 attempts:2\n"),
    )?;
    let script = dir.path().join("client.py");
    std::fs::File::create(&script)?.write_all(CLIENT.as_bytes())?;

    let cg = TestCgroup::new("names")?;
    let app = cg.child("app")?;
    let root = cg.relative()?;
    let db = db(dir.path());
    let daemon = Daemon::start_with(
        &config(&root),
        &cg,
        &[std::ffi::OsStr::new("--geoip"), db.as_os_str()],
    )?;
    // A TLS "server" that reads what it is sent (and answers nothing), so
    // that the client can send its hello in several writes.
    let tls = std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 45), 0))?;
    let tls_port = tls.local_addr()?.port();
    let tls_reader = thread::spawn(move || {
        if let Ok((mut conn, _)) = tls.accept() {
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = std::io::copy(&mut conn, &mut std::io::sink());
        }
    });
    let port = 9;

    let ops = serde_json::json!([
        {"op": "resolve", "name": "eu.api.openai.com", "port": port},
        {"op": "resolve", "name": "api.openai.com", "port": port},
        {"op": "resolve", "name": "api-eu1.hubapi.com", "port": port},
        {"op": "resolve", "name": "eu.api.openai.com", "port": port + 1, "family": 6},
        {"op": "resolve", "name": "plain.example", "port": port},
        {"op": "resolve", "name": "big.example", "port": port},
        {"op": "resolve", "name": "eu-llm.example", "port": port},
        {"op": "resolve", "name": "us-llm.example", "port": port + 1},
        {"op": "resolve", "name": "tls-eu.example", "port": tls_port, "sni": "api.openai.com"},
        {"op": "connect", "addr": "127.0.0.34", "port": port},
        {"op": "connect", "addr": "127.0.0.44", "port": 853},
        {"op": "curl", "name": "plain.example", "port": port + 2},
        {"op": "resolve", "name": "x.denied.example", "port": port},
        {"op": "resolve", "name": "scc.example", "port": port},
        {"op": "hostile", "server": HOSTILE_DNS, "name": "eu-llm.example", "rounds": 5},
        {"op": "race", "server": DNS, "port": port,
         "names": (1..=RACE_NAMES).map(|i| format!("r{i}.race.example")).collect::<Vec<_>>()},
    ]);
    let out = client(&app, &resolv, &script, &ops)?;
    // Another cgroup connects to an address the first one resolved: names
    // are never borrowed from another workload's lookups.
    let other = cg.child("other")?;
    client(
        &other,
        &resolv,
        &script,
        &serde_json::json!([{"op": "connect", "addr": "127.0.0.40", "port": port + 3}]),
    )?;
    // After the names' time (3 s), the same address has no live name.
    client(
        &app,
        &resolv,
        &script,
        &serde_json::json!([
            {"op": "sleep", "secs": 3.5},
            {"op": "connect", "addr": "127.0.0.40", "port": port + 4},
        ]),
    )?;
    stop.store(true, Ordering::Relaxed);
    let _ = hostile.join();
    let _ = tls_reader.join();
    let result = |name: &str| -> anyhow::Result<&Value> {
        out.iter()
            .find(|o| o["name"] == name)
            .with_context(|| format!("no client result for {name}: {out:?}"))
    };
    // The kernel's verdicts, as the process saw them.
    assert_ne!(
        result("eu.api.openai.com")?["result"],
        "EPERM",
        "EU catalog host on a 'US' address must be allowed: {out:?}"
    );
    assert_eq!(result("api.openai.com")?["result"], "EPERM", "{out:?}");
    assert_ne!(result("api-eu1.hubapi.com")?["result"], "EPERM", "{out:?}");
    assert_eq!(result("plain.example")?["result"], "EPERM", "{out:?}");
    let big = result("big.example")?;
    assert_eq!(big["addrs"], 40, "the TCP retry gave every address: {big}");
    assert_ne!(big["result"], "EPERM", "named over TCP: {big}");
    assert_ne!(result("eu-llm.example")?["result"], "EPERM", "{out:?}");
    let race = out
        .iter()
        .find_map(|o| o["race"].as_array())
        .context("race results")?;
    assert_eq!(race.len(), usize::from(RACE_NAMES));
    let lost: Vec<&Value> = race.iter().filter(|r| r["result"] == "EPERM").collect();
    assert!(
        lost.is_empty(),
        "connects right after the answer were judged without the name: {lost:?}"
    );
    let hostile_received = out
        .iter()
        .find_map(|o| o["hostile_received"].as_u64())
        .context("hostile results")?;
    assert!(
        hostile_received >= 25,
        "the hostile answers reached the client: {hostile_received}"
    );

    // The name counters on /metrics (over the daemon's socket), once the
    // last answers are through the pipeline.
    daemon.wait_for(Duration::from_secs(10), |r| {
        r["destination"]["ip"] == "127.0.0.40" && r["destination"]["port"] == port + 4
    })?;
    let metrics = metrics(&daemon)?;
    let value = |name: &str| -> Option<u64> {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert!(
        value("residency_dns_answers_total").is_some_and(|n| n >= u64::from(RACE_NAMES)),
        "{metrics}"
    );
    assert!(
        value("residency_dns_rejected_total").is_some_and(|n| n >= 1),
        "the hostile answers are counted: {metrics}"
    );
    assert!(
        value("residency_tls_server_names_total").is_some_and(|n| n >= 1),
        "{metrics}"
    );
    assert!(
        value("residency_names_kept").is_some_and(|n| n > 0),
        "{metrics}"
    );

    // The records: stop the daemon, so that every record is written.
    let records = daemon.stop()?;
    let find = |ip: &str, port: u16| {
        flow_to(&records, ip, port).with_context(|| format!("no flow to {ip}:{port}"))
    };
    let eu = find("127.0.0.40", port)?;
    assert_eq!(eu["destination"]["domain"], "eu.api.openai.com");
    assert_eq!(eu["residency"]["decided_by"], "catalog");
    assert_eq!(eu["residency"]["verdict"], "allowed");
    assert_eq!(eu["residency"]["name"]["endpoint"]["id"], "openai-api-eu");
    assert!(
        eu["residency"]["name"]["endpoint"]["source"]
            .as_str()
            .is_some_and(|s| s.starts_with("https://")),
        "{eu}"
    );
    let global = find("127.0.0.20", port)?;
    assert_eq!(global["residency"]["verdict"], "blocked");
    assert_eq!(global["residency"]["decided_by"], "catalog");
    assert_eq!(global["destination"]["domain"], "api.openai.com");
    let hub = find("127.0.0.41", port)?;
    assert_eq!(hub["destination"]["domain"], "api-eu1.hubapi.com");
    assert_eq!(
        hub["residency"]["name"]["cnames"][0],
        "edge.hubspot-cdn.example"
    );
    assert_eq!(hub["residency"]["decided_by"], "catalog");
    let v6 = find("::1", port + 1)?;
    assert_eq!(
        v6["destination"]["domain"], "eu.api.openai.com",
        "AAAA: {v6}"
    );
    assert_eq!(v6["residency"]["decided_by"], "catalog");
    let plain = find("127.0.0.33", port)?;
    assert_eq!(plain["destination"]["domain"], "plain.example");
    assert_eq!(plain["residency"]["decided_by"], "geoip");
    assert!(plain["residency"]["name"].get("endpoint").is_none());
    let big_flow = flows(&records)
        .into_iter()
        .find(|f| f["destination"]["domain"] == "big.example")
        .context("no flow named big.example")?;
    assert_eq!(big_flow["residency"]["decided_by"], "catalog");
    // Ambiguous: one address, two names judged differently (DE vs US).
    let amb_first = find("127.0.0.43", port)?;
    assert_eq!(
        amb_first["residency"]["decided_by"], "catalog",
        "one name so far"
    );
    let amb = find("127.0.0.43", port + 1)?;
    assert_eq!(amb["residency"]["decided_by"], "ambiguous", "{amb}");
    assert_eq!(amb["residency"]["verdict"], "flagged");
    assert!(
        amb["residency"]["name"]["also"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{amb}"
    );
    // No answer named this address.
    let bare = find("127.0.0.34", port)?;
    assert!(bare["destination"].get("domain").is_none());
    assert_eq!(bare["residency"]["name"]["source"], "none");
    assert!(
        bare["residency"]["name"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no DNS answer")),
        "{bare}"
    );
    assert_eq!(bare["residency"]["decided_by"], "geoip");
    // DNS over TLS: a resolver bypass, flagged by default.
    let dot = find("127.0.0.44", 853)?;
    assert_eq!(dot["residency"]["decided_by"], "resolver-bypass");
    assert_eq!(dot["residency"]["verdict"], "flagged");
    // The TLS server name differs in jurisdiction from the resolved name.
    let sni = records
        .iter()
        .find(|r| r["event"]["action"] == "tls-server-name")
        .with_context(|| format!("no tls-server-name record: {}", daemon_text(&records)))?;
    assert_eq!(sni["residency"]["tls"]["server_name"], "api.openai.com");
    assert_eq!(sni["residency"]["resolved_name"], "tls-eu.example");
    assert_eq!(sni["residency"]["flagged"], true);
    // The hello came in three segments: it was put together, and names
    // its flow.
    assert_eq!(
        sni["residency"]["socket_cookie"],
        find("127.0.0.45", tls_port)?["residency"]["socket_cookie"],
        "the TLS record names its flow"
    );
    // Every race connect is recorded with its name.
    for i in 1..=RACE_NAMES {
        let f = find(&format!("127.0.2.{i}"), port)?;
        assert_eq!(f["destination"]["domain"], format!("r{i}.race.example"));
    }
    // Rules that name hosts, in the kernel.
    assert_eq!(result("x.denied.example")?["result"], "EPERM", "{out:?}");
    assert_ne!(result("scc.example")?["result"], "EPERM", "{out:?}");
    let denied = find("127.0.0.21", port)?;
    assert_eq!(denied["residency"]["decided_by"], "denied");
    assert_eq!(denied["rule"]["name"], "no-denied-example");
    let excepted = find("127.0.0.35", port)?;
    assert_eq!(excepted["residency"]["decided_by"], "exception");
    assert_eq!(excepted["residency"]["exception"]["name"], "scc-example");
    // curl resolved through getaddrinfo too.
    let curl = find("127.0.0.33", port + 2)?;
    assert_eq!(curl["process"]["name"], "curl");
    assert_eq!(curl["destination"]["domain"], "plain.example");
    // Not borrowed across workloads.
    let borrowed = find("127.0.0.40", port + 3)?;
    assert!(
        borrowed["destination"].get("domain").is_none(),
        "{borrowed}"
    );
    assert_eq!(borrowed["residency"]["name"]["source"], "none");
    assert_eq!(borrowed["residency"]["decided_by"], "geoip");
    // Expired: older than the name's TTL (clamped to 3 s).
    let expired = find("127.0.0.40", port + 4)?;
    assert!(
        expired["residency"]["name"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("older than their TTL")),
        "{expired}"
    );
    assert_eq!(expired["residency"]["decided_by"], "geoip");
    // The started record says names are tracked, and with how large a
    // catalog (the built-in entries and the test's own).
    let started = records
        .iter()
        .find(|r| r["event"]["action"] == "started")
        .context("no started record")?;
    assert_eq!(started["residency"]["names"]["tracking"], "dns+tls");
    assert!(
        started["residency"]["names"]["catalog_entries"]
            .as_u64()
            .is_some_and(|n| n > 600),
        "{started}"
    );
    // The hostile answers crashed nothing: the daemon ran to a clean stop
    // with every decision accounted for.
    let stopped = records
        .iter()
        .find(|r| r["event"]["action"] == "stopped")
        .context("no stopped record")?;
    assert_eq!(
        stopped["residency"]["counters"]["undecodable"], 0,
        "{stopped}"
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

fn daemon_text(records: &[Value]) -> String {
    records
        .iter()
        .map(|r| r["event"]["action"].as_str().unwrap_or("?"))
        .collect::<Vec<_>>()
        .join(",")
}
