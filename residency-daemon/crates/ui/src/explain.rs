//! A flow record's decision in plain words: what was decided, by what
//! (rule, exception, catalog entry, the GeoIP country), under which policy
//! version and which GeoIP database.

use std::fmt::Write as _;

use serde_json::Value;

fn s(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

/// Where the flow went, as people name it: `api.openai.com (203.0.113.7:443)`.
pub fn destination(record: &Value) -> String {
    let d = &record["destination"];
    let addr = match (s(&d["ip"]), d["port"].as_u64()) {
        (Some(ip), Some(port)) if ip.contains(':') => format!("[{ip}]:{port}"),
        (Some(ip), Some(port)) => format!("{ip}:{port}"),
        (Some(ip), None) => ip.to_owned(),
        _ => "an unknown address".to_owned(),
    };
    match s(&record["residency"]["name"]["value"]) {
        Some(name) => format!("{name} ({addr})"),
        None => addr,
    }
}

/// One sentence: why this verdict.
pub fn why(record: &Value) -> String {
    let r = &record["residency"];
    let verdict = s(&r["verdict"]).unwrap_or("decided");
    let country = s(&r["country"]).or_else(|| s(&record["destination"]["geo"]["country_iso_code"]));
    let workload = s(&r["workload"]["name"]);
    let whose = match workload {
        Some(w) => format!("workload {w}'s policy"),
        None => "the default policy".to_owned(),
    };
    let basis = s(&r["transfer_basis"]);
    let cause = match s(&r["decided_by"]).unwrap_or("") {
        "geoip" => match country {
            Some(c) => format!("the address is in {c} by the GeoIP database, and {whose}"),
            None => format!("the GeoIP database and {whose}"),
        },
        "exception" => {
            let e = &r["exception"];
            format!(
                "exception {} of {whose} (basis {}, until {}: {})",
                s(&e["name"]).unwrap_or("?"),
                s(&e["basis"]).unwrap_or("?"),
                s(&e["expires"]).unwrap_or("?"),
                s(&e["justification"]).unwrap_or("no justification recorded")
            )
        }
        "catalog" => {
            let ep = &r["name"]["endpoint"];
            format!(
                "the endpoint catalog: {} is {} {} processing in {} ({}), and {whose}",
                s(&r["name"]["value"]).unwrap_or("the name"),
                s(&ep["provider"]).unwrap_or("?"),
                s(&ep["service"]).unwrap_or(""),
                ep["jurisdiction"]
                    .as_array()
                    .map(|j| j
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                s(&ep["source"]).unwrap_or("no source")
            )
        }
        "denied" => format!("a rule of {whose} denies this destination"),
        "local" => "the destination is this host (loopback or a local address)".to_owned(),
        "internal" => format!("the destination is an internal network {whose} allows"),
        "unknown" => format!(
            "the GeoIP database does not know the address, and {whose} decides unknown addresses"
        ),
        "ambiguous" => "the name resolved to addresses in more than one jurisdiction".to_owned(),
        "resolver-bypass" => {
            "the workload asked a resolver other than the one residency watches".to_owned()
        }
        other if !other.is_empty() => format!("{other}, under {whose}"),
        _ => whose,
    };
    let mut out = format!("{} because {cause}", capital(verdict));
    if let Some(b) = basis {
        let _ = write!(out, "; transfer basis {b}");
    }
    if let Some(c) = s(&r["transfer_condition"]) {
        let _ = write!(out, " (on condition: {c})");
    }
    if r["stale"].as_bool() == Some(true) {
        out.push_str("; released because the daemon had been away too long (kernel.when_stale)");
    }
    out.push('.');
    out
}

/// The versions the decision was taken under.
pub fn versions(record: &Value) -> String {
    let r = &record["residency"];
    let policy = match s(&r["policy"]["hash"]) {
        Some(h) => format!(
            "policy version {} (generation {})",
            h.get(..12).unwrap_or(h),
            r["policy"]["generation"].as_u64().unwrap_or(0)
        ),
        None => "an unrecorded policy version".to_owned(),
    };
    let geoip = match s(&r["geoip"]["database"]) {
        Some(db) => {
            let built = r["geoip"]["build_epoch"]
                .as_i64()
                .and_then(|e| jiff::Timestamp::from_second(e).ok())
                .map(|t| t.strftime("%Y-%m-%d").to_string())
                .unwrap_or_default();
            format!(
                "GeoIP {db} built {built} (table generation {})",
                r["geoip"]["generation"].as_u64().unwrap_or(0)
            )
        }
        None => "no GeoIP database".to_owned(),
    };
    format!("Decided by the kernel under {policy} and {geoip}.")
}

fn capital(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_blocked_geoip_decision_in_words() {
        let r = json!({
            "destination": {"ip": "198.51.100.9", "port": 443},
            "residency": {"verdict": "blocked", "decided_by": "geoip", "country": "US",
                "transfer_basis": "none",
                "policy": {"generation": 3, "hash": "3f1c0123456789abcdef"},
                "geoip": {"generation": 1, "database": "GeoLite2-Country", "build_epoch": 1_781_726_006},
                "workload": {"name": "crm-sync"}}
        });
        assert_eq!(
            why(&r),
            "Blocked because the address is in US by the GeoIP database, and workload \
             crm-sync's policy; transfer basis none."
        );
        assert_eq!(destination(&r), "198.51.100.9:443");
        let v = versions(&r);
        assert!(
            v.contains("policy version 3f1c01234567 (generation 3)"),
            "{v}"
        );
        assert!(v.contains("GeoLite2-Country built 2026-"), "{v}");
    }

    #[test]
    fn an_exception_names_itself() {
        let r = json!({"residency": {"verdict": "allowed", "decided_by": "exception",
            "exception": {"name": "vendor-x", "basis": "scc", "expires": "2027-01-01T00:00:00Z",
                          "justification": "DPA signed"},
            "name": {"value": "api.vendor.example"}},
            "destination": {"ip": "2001:db8::1", "port": 443}});
        assert!(why(&r).contains("exception vendor-x of the default policy (basis scc"));
        assert_eq!(destination(&r), "api.vendor.example ([2001:db8::1]:443)");
    }
}
