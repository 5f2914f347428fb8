//! The configuration file, validated as a whole: every section, the
//! built-in default and the shipped examples.

use std::{path::PathBuf, time::Duration};

use geoip::CountryCode;
use residency_api::{DEFAULT_API_PORT, DEFAULT_API_SOCKET};
use residency_evidence::DEFAULT_STATE_DIR;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, "test.toml")
}

#[test]
fn evidence_and_api_settings_are_checked() {
    let c = parse("").unwrap();
    assert_eq!(c.evidence.directory, PathBuf::from(DEFAULT_STATE_DIR));
    assert_eq!(c.evidence.checkpoint_records, 10_000);
    assert_eq!(c.evidence.retention, None);
    assert_eq!(
        c.api.listen,
        Some(([127, 0, 0, 1], DEFAULT_API_PORT).into())
    );
    assert_eq!(c.api.socket, Some(PathBuf::from(DEFAULT_API_SOCKET)));
    assert_eq!(
        c.api.token_file,
        PathBuf::from("/var/lib/residency/api.token")
    );
    let c = parse(
        "[evidence]\ndirectory = \"/srv/ev\"\nretention_days = 30\nmax_size_mib = 1024\n\
         [api]\nlisten = \"off\"\nsocket = \"off\"\n",
    )
    .unwrap();
    assert_eq!(c.evidence.retention, Some(Duration::from_hours(24 * 30)));
    assert_eq!(c.evidence.max_bytes, Some(1 << 30));
    assert_eq!(c.api.listen, None);
    assert_eq!(c.api.socket, None);
    assert_eq!(c.api.token_file, PathBuf::from("/srv/ev/api.token"));
    for (text, field, says) in [
        (
            "[api]\nlisten = \"0.0.0.0:7470\"\n",
            "api.listen",
            "not a loopback",
        ),
        (
            "[api]\nlisten = \"localhost\"\n",
            "api.listen",
            "not an address",
        ),
        ("[api]\nsocket = \"api.sock\"\n", "api.socket", "absolute"),
        (
            "[evidence]\ndirectory = \"state\"\n",
            "evidence.directory",
            "absolute",
        ),
        (
            "[evidence]\ncheckpoint_records = 0\n",
            "evidence.checkpoint_records",
            "outside",
        ),
        (
            "[evidence]\nmax_size_mib = 1\n",
            "evidence.max_size_mib",
            "outside",
        ),
        ("[evidence]\nkeep = 1\n", "evidence.keep", "unknown field"),
    ] {
        let e = parse(text).unwrap_err();
        assert_eq!(e.field, field, "{text}: {e}");
        assert!(e.message.contains(says), "{text}: {e}");
        assert_eq!(e.line, Some(2), "{text}: {e}");
    }
    // A tenant named twice would index a flow twice under it.
    let e = parse(
        "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\n\
         tenants = [\"a\", \"a\"]\nuid = 5\n",
    )
    .unwrap_err();
    assert_eq!(e.field, "workload[0].tenants[1]", "{e}");
    assert!(e.message.contains("named twice"), "{e}");
}

#[test]
fn builtin_default_parses_and_is_safe() {
    let config = Config::builtin().expect("the built-in config must be valid");
    assert_eq!(config.mode, Mode::Monitor, "the default must never block");
    assert!(!config.may_block());
    assert_eq!(config.output, Output::Stdout);
}

/// The Debian package's /etc/residency/residency.toml: valid, monitor mode,
/// and naming the GeoIP database the package installs (one of the places
/// the daemon also searches).
#[test]
fn the_packaged_config_is_valid_safe_and_names_the_packaged_database() {
    let text = include_str!("../../debian/residency.toml");
    let config = Config::from_toml(text, "debian/residency.toml").unwrap();
    assert_eq!(
        config.mode,
        Mode::Monitor,
        "a package must never block by surprise"
    );
    assert!(!config.may_block());
    let db = config.geoip.database.expect("names the packaged database");
    assert!(
        crate::geodb::SEARCH_PATHS.contains(&db.to_str().unwrap()),
        "{} is not where the daemon looks",
        db.display()
    );
    assert_eq!(
        config.evidence.directory,
        Config::builtin().unwrap().evidence.directory
    );
}

#[test]
fn empty_file_gives_defaults() {
    let config = parse("").unwrap();
    assert_eq!(config.mode, Mode::Monitor);
    assert_eq!(config.kernel.cgroup, PathBuf::new());
    assert_eq!(config.kernel.ring_buffer_bytes, 1024 * 1024);
    assert_eq!(config.kernel.wakeup_bytes, 256 * 1024);
    assert_eq!(config.kernel.poll_interval, Duration::from_millis(10));
    assert_eq!(config.deny_rules().count(), 0);
    assert_eq!(
        config.policy.allowed,
        CountrySet::all(),
        "no list: every country"
    );
    assert_eq!(config.policy.unknown, Choice::Flag);
    assert_eq!(config.policy.local, Choice::Allow);
    assert_eq!(config.rules.len(), 1, "only the local ranges");
}

#[test]
fn unknown_key_names_line_and_key() {
    let err = parse("mode = \"monitor\"\n\n[kernel]\nring_bufer_kib = 64\n").unwrap_err();
    assert_eq!(err.line, Some(4), "{err}");
    assert!(err.message.contains("ring_bufer_kib"), "{err}");
    assert!(err.to_string().starts_with("test.toml:4: "), "{err}");
}

#[test]
fn bad_mode_lists_valid_ones() {
    let err = parse("mode = \"block\"\n").unwrap_err();
    assert_eq!(err.line, Some(1));
    assert!(
        err.message.contains("monitor") && err.message.contains("enforce"),
        "{err}"
    );
}

#[test]
fn deny_rules_get_ids_in_order_and_normalise() {
    let config = parse(
        r#"
[[deny]]
name = "a"
destinations = ["203.0.113.0/24", "2001:db8::/32"]

[[deny]]
name = "b"
destinations = ["198.51.100.7", "::ffff:192.0.2.0/120"]
"#,
    )
    .unwrap();
    let deny: Vec<&Rule> = config.deny_rules().collect();
    assert_eq!(deny.len(), 2);
    assert_eq!(deny[0].id, 1);
    assert_eq!(deny[1].id, 2);
    assert_eq!(config.rule_name(2), Some("b"));
    assert_eq!(config.rule_name(0), Some("geoip"));
    assert_eq!(config.rule_name(3), Some("local-networks"));
    assert_eq!(config.rule_name(4), None);
    let b: Vec<String> = deny[1]
        .destinations
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(b, ["198.51.100.7/32", "192.0.2.0/24"]);
}

#[test]
fn bad_cidr_names_rule_entry_and_line() {
    let err = parse(
        "[[deny]]\nname = \"x\"\ndestinations = [\n  \"10.0.0.0/8\",\n  \"10.0.0.0/33\",\n]\n",
    )
    .unwrap_err();
    assert_eq!(err.field, "deny[0].destinations[1]");
    assert_eq!(err.line, Some(5));
    assert!(err.message.contains("10.0.0.0/33"), "{err}");
}

#[test]
fn host_bits_are_refused_with_a_suggestion() {
    let err = parse("[[deny]]\nname = \"x\"\ndestinations = [\"10.1.2.3/8\"]\n").unwrap_err();
    assert!(err.message.contains("did you mean \"10.0.0.0/8\""), "{err}");
}

#[test]
fn wide_v6_prefix_over_mapped_range_is_refused() {
    let err = parse("[[deny]]\nname = \"x\"\ndestinations = [\"::/0\"]\n").unwrap_err();
    assert!(err.message.contains("IPv4-mapped"), "{err}");
}

#[test]
fn duplicate_and_empty_rules_are_refused() {
    let err = parse("[[deny]]\nname = \"x\"\ndestinations = [\"10.0.0.0/8\"]\n[[deny]]\nname = \"x\"\ndestinations = [\"11.0.0.0/8\"]\n").unwrap_err();
    assert_eq!(err.line, Some(5));
    assert!(err.message.contains("already"), "{err}");
    let err = parse("[[deny]]\nname = \"x\"\ndestinations = []\n").unwrap_err();
    assert_eq!(err.field, "deny[0].destinations");
}

#[test]
fn a_prefix_belongs_to_one_rule() {
    let err = parse(
        "[[deny]]\nname = \"a\"\ndestinations = [\"10.0.0.0/8\"]\n[[deny]]\nname = \"b\"\ndestinations = [\"::ffff:10.0.0.0/104\"]\n",
    )
    .unwrap_err();
    assert_eq!(err.field, "deny[1].destinations[0]");
    assert!(err.message.contains("deny[0]"), "{err}");
}

#[test]
fn policy_sets_and_internal_networks() {
    let c = parse(
        r#"
[policy]
allowed = ["dach", "EEA", "JP"]
unknown = "block"
local = "flag"
local_networks = ["127.0.0.0/8"]
[[jurisdiction]]
name = "dach"
countries = ["DE", "AT", "CH"]
[[internal]]
name = "dc"
destinations = ["10.20.0.0/16"]
jurisdiction = "CH"
"#,
    )
    .unwrap();
    let cc = |s: &str| s.parse::<CountryCode>().unwrap();
    assert!(c.policy.allowed.contains(cc("CH")) && c.policy.allowed.contains(cc("NO")));
    assert!(c.policy.allowed.contains(cc("JP")) && !c.policy.allowed.contains(cc("US")));
    assert_eq!(c.policy.allowed_names, ["dach", "EEA", "JP"]);
    assert_eq!(
        (c.policy.unknown, c.policy.local),
        (Choice::Block, Choice::Flag)
    );
    assert_eq!(c.rules[0].kind, RuleKind::Internal(cc("CH")));
    assert_eq!(c.rules[1].kind, RuleKind::Local);
    assert_eq!(
        c.rules[1].destinations.len(),
        1,
        "local_networks replaces the defaults"
    );
}

#[test]
fn policy_mistakes_name_the_entry() {
    let err = parse("[policy]\nallowed = [\"EEA\", \"UK\"]\n").unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.line),
        ("policy.allowed[1]", Some(2))
    );
    assert!(
        err.message
            .contains("\"UK\" is neither a country code nor a jurisdiction set"),
        "{err}"
    );
    let err = parse("[policy]\nallowed = []\n").unwrap_err();
    assert_eq!(err.field, "policy.allowed");
    let err = parse("[policy]\nunknown = \"deny\"\n").unwrap_err();
    assert!(
        err.message.contains("allow") && err.message.contains("block"),
        "{err}"
    );
    let err = parse("[[jurisdiction]]\nname = \"x\"\ncountries = [\"DE\", \"XX\"]\n").unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.line),
        ("jurisdiction[0].countries[1]", Some(3))
    );
    let err = parse("[[jurisdiction]]\nname = \"EU\"\ncountries = [\"DE\"]\n").unwrap_err();
    assert_eq!(err.field, "jurisdiction[0].name");
    let err = parse("[[internal]]\nname = \"dc\"\ndestinations = [\"10.0.0.0/8\"]\njurisdiction = \"Germany\"\n").unwrap_err();
    assert_eq!(
        (err.field.as_str(), err.line),
        ("internal[0].jurisdiction", Some(4))
    );
    let err = parse("[geoip]\ndatabase = \"\"\n").unwrap_err();
    assert_eq!(err.field, "geoip.database");
    let err = parse(
        "[[deny]]\nname = \"a\"\ndestinations = [\"10.1.0.0/16\"]\n[[internal]]\nname = \"b\"\ndestinations = [\"10.1.0.0/16\"]\njurisdiction = \"DE\"\n",
    )
    .unwrap_err();
    assert_eq!(err.field, "internal[0].destinations[0]");
}

const TENANTS: &str = r#"
[[tenant]]
id = "acme"
allowed = ["EEA"]
mode = "enforce"
unknown = "block"
[[tenant]]
id = "globex"
allowed = ["EEA", "ADEQUACY"]
[[workload]]
name = "llm"
role = "llm"
tenants = ["acme", "globex"]
cgroup = ["/system.slice/llm.service"]
[[workload]]
name = "logs"
role = "logging"
tenants = ["globex"]
process = "vector"
mode = "monitor"
"#;

#[test]
fn workloads_take_the_intersection_and_the_strictest_choice() {
    let c = parse(TENANTS).unwrap();
    let cc = |s: &str| s.parse::<CountryCode>().unwrap();
    let llm = &c.workloads[0];
    assert!(llm.allowed.contains(cc("DE")));
    assert!(
        !llm.allowed.contains(cc("GB")),
        "GB is adequate for globex, not for acme"
    );
    assert_eq!(llm.unknown, Choice::Block, "the strictest of the tenants'");
    assert_eq!(llm.mode, Mode::Enforce, "acme enforces");
    let logs = &c.workloads[1];
    assert!(logs.allowed.contains(cc("GB")));
    assert_eq!(logs.mode, Mode::Monitor, "the workload's own mode wins");
    assert_eq!(c.workload("logs").map(|(i, _)| i), Some(2));
    assert_eq!(c.workload_of(1).map(|w| w.name.as_str()), Some("llm"));
    assert!(c.workload_of(0).is_none());
    assert!(c.may_block(), "a workload enforces");
    assert_eq!(c.hash.len(), 64);
}

#[test]
fn modes_come_from_workload_then_tenants_then_the_top_level() {
    let c = parse(
        "mode = \"enforce\"\n\
         [[tenant]]\nid = \"quiet\"\nallowed = [\"EEA\"]\nmode = \"monitor\"\n\
         [[tenant]]\nid = \"plain\"\nallowed = [\"EEA\"]\n\
         [[workload]]\nname = \"a\"\nrole = \"llm\"\ntenants = [\"quiet\"]\nuid = 1\n\
         [[workload]]\nname = \"b\"\nrole = \"llm\"\ntenants = [\"plain\"]\nuid = 2\n\
         [[workload]]\nname = \"c\"\nrole = \"llm\"\ntenants = [\"quiet\", \"plain\"]\nuid = 3\n\
         [[workload]]\nname = \"d\"\nrole = \"llm\"\ntenants = [\"plain\"]\nmode = \"monitor\"\nuid = 4\n",
    )
    .unwrap();
    let modes: Vec<Mode> = c.workloads.iter().map(|w| w.mode).collect();
    assert_eq!(
        modes,
        vec![Mode::Monitor, Mode::Enforce, Mode::Enforce, Mode::Monitor],
        "a monitor tenant's workload monitors even under a top-level enforce; \
         a tenant without a mode takes the top level's; any enforcing tenant enforces; \
         the workload's own mode wins"
    );
}

#[test]
fn warns_about_spoofable_looser_and_empty_policies() {
    let c = parse(
        "mode = \"enforce\"\n[policy]\nallowed = [\"DE\"]\n\
         [[tenant]]\nid = \"eu\"\nallowed = [\"EEA\"]\n\
         [[tenant]]\nid = \"us\"\nallowed = [\"US\"]\n\
         [[workload]]\nname = \"shipper\"\nrole = \"logging\"\ntenants = [\"eu\"]\nprocess = \"vector\"\n\
         [[workload]]\nname = \"strict\"\nrole = \"llm\"\ntenants = [\"eu\"]\nprocess = \"ok\"\nunit = \"ok.service\"\n\
         [[workload]]\nname = \"nowhere\"\nrole = \"backup\"\ntenants = [\"eu\", \"us\"]\nuid = 7\n\
         [[exception]]\nname = \"old\"\ndestinations = [\"192.0.2.0/24\"]\nbasis = \"scc\"\n\
         justification = \"x\"\nexpires = \"2020-01-01\"\ntenants = [\"eu\"]\n",
    )
    .unwrap();
    let w = c.warnings("2026-11-22T00:00:00Z".parse().unwrap());
    assert_eq!(w.len(), 3, "{w:#?}");
    assert!(
        w.iter()
            .any(|m| m.contains("\"nowhere\"") && m.contains("no country in common")),
        "{w:#?}"
    );
    assert!(
        w.iter().any(|m| m.contains("\"shipper\"")
            && m.contains("process name")
            && m.contains("countries")),
        "{w:#?}"
    );
    assert!(
        !w.iter().any(|m| m.contains("\"strict\"")),
        "has a unit too"
    );
    assert!(w.iter().any(|m| m.contains("\"old\" expired")));
}

#[test]
fn two_tenants_may_have_exceptions_to_the_same_prefix() {
    let c = parse(
        "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[tenant]]\nid = \"b\"\nallowed = [\"EEA\"]\n\
         [[workload]]\nname = \"wa\"\nrole = \"logging\"\ntenants = [\"a\"]\nuid = 1\n\
         [[workload]]\nname = \"wb\"\nrole = \"logging\"\ntenants = [\"b\"]\nuid = 2\n\
         [[exception]]\nname = \"a-siem\"\ndestinations = [\"198.51.100.0/24\"]\nbasis = \"scc\"\n\
         justification = \"a's SCC\"\nexpires = \"2099-01-01\"\ntenants = [\"a\"]\n\
         [[exception]]\nname = \"b-siem\"\ndestinations = [\"198.51.100.0/24\"]\nbasis = \"dpf\"\n\
         justification = \"b's DPF\"\nexpires = \"2098-01-01\"\ntenants = [\"b\"]\n",
    )
    .unwrap();
    let k = crate::policy::compile(&c, jiff::Timestamp::UNIX_EPOCH);
    assert_eq!(
        k.exceptions_v4
            .iter()
            .map(|(i, _, _)| *i)
            .collect::<Vec<_>>(),
        vec![1, 2],
        "one per workload"
    );
}

#[test]
fn parse_errors_name_the_field_by_position() {
    // (`field_at` itself is tested in `residency-config`.)
    let err = parse("[policy]\nunknown = \"maybe\"\n").unwrap_err();
    assert_eq!(err.field, "policy.unknown", "{err}");
}

#[test]
#[expect(clippy::too_many_lines, reason = "one case per mistake")]
fn each_kind_of_tenant_and_workload_mistake_is_named() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "[[tenant]]\nid = \"a b\"\nallowed = [\"EEA\"]\n",
            "tenant[0].id",
            "not a tenant id",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = []\n",
            "tenant[0].allowed",
            "is empty",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"XX\"]\n",
            "tenant[0].allowed[0]",
            "neither a country",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n",
            "tenant[1].id",
            "already a tenant",
        ),
        (
            "[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"nobody\"]\nuid = 1\n",
            "workload[0].tenants[0]",
            "not a tenant",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\n",
            "workload[0]",
            "no selector",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"chatbot\"\ntenants = [\"a\"]\nuid = 1\n",
            "workload[0].role",
            "chatbot",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nprocess = \"a-very-long-process-name\"\n",
            "workload[0].process",
            "15 bytes",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\ncgroup = [\"system.slice\"]\n",
            "workload[0].cgroup[0]",
            "must start with '/'",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nuid = 5\n[[workload]]\nname = \"v\"\nrole = \"llm\"\ntenants = [\"a\"]\nuid = 5\n",
            "workload[1].uid",
            "already selects workload \"w\"",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nexe = \"vector\"\n",
            "workload[0].exe",
            "absolute path",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nuid = 1\nnamespace = \"inference\"\n",
            "workload[0].namespace",
            "needs a [kubernetes] section",
        ),
        (
            "[kubernetes]\n[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nnamespace = \"Inference\"\n",
            "workload[0].namespace",
            "not a namespace name",
        ),
        (
            "[kubernetes]\n[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\npod_labels = { \"app/\" = \"x\" }\n",
            "workload[0].pod_labels",
            "not a label key",
        ),
        (
            "[kubernetes]\n[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\npod_labels = { app = \"-x\" }\n",
            "workload[0].pod_labels",
            "not a label value",
        ),
        (
            "[kubernetes]\n[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"pods:a/llm\"\nrole = \"llm\"\ntenants = [\"a\"]\nuid = 3\n",
            "workload[0].name",
            "kept for the workloads of pods",
        ),
        (
            "[kubernetes]\ntenant_label = \"Residency.io/tenant\"\n",
            "kubernetes.tenant_label",
            "DNS subdomain",
        ),
        (
            "[kubernetes]\nnamespace_labels = \"yes\"\n",
            "kubernetes.namespace_labels",
            "is not a choice",
        ),
        (
            "[kubernetes]\ncri_socket = \"run/containerd.sock\"\n",
            "kubernetes.cri_socket",
            "absolute path",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\ncgroup = [\"/\"]\n",
            "workload[0].cgroup[0]",
            "cgroup2 root",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\ncgroup = [\"/a/[b\"]\n",
            "workload[0].cgroup[0]",
            "not a valid glob",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nunit = \"system.slice/x.service\"\n",
            "workload[0].unit",
            "systemd unit name",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nuid = 1\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nuid = 2\n",
            "workload[1].name",
            "already",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nprocess = \"vllm\"\n[[workload]]\nname = \"v\"\nrole = \"llm\"\ntenants = [\"a\"]\nexe = \"/opt/vllm\"\n",
            "workload[1].exe",
            "already selects workload \"w\"",
        ),
        (
            "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"llm\"\ntenants = [\"a\"]\nuid = 1\nmode = \"block-everything\"\n",
            "workload[0].mode",
            "block-everything",
        ),
    ];
    for (toml, field, needle) in cases {
        let err = parse(toml).unwrap_err();
        assert_eq!(err.field, *field, "{toml}\n{err}");
        assert!(err.to_string().contains(needle), "{toml}\n{err}");
        assert!(err.line.is_some(), "every mistake has a line: {err}");
    }
}

#[test]
fn each_kind_of_exception_mistake_is_named() {
    let base = "[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n[[workload]]\nname = \"w\"\nrole = \"logging\"\ntenants = [\"a\"]\nuid = 1\n";
    let exc = |body: &str| {
        format!("{base}[[exception]]\nname = \"e\"\ndestinations = [\"198.51.100.0/24\"]\n{body}")
    };
    let cases: &[(String, &str, &str)] = &[
        (
            exc(
                "basis = \"scc\"\njustification = \"x\"\nexpires = \"2099-01-01\"\ntenants = [\"a\"]\n\
                 [[exception]]\nname = \"f\"\ndestinations = [\"192.0.2.0/24\", \"198.51.100.0/24\"]\n\
                 basis = \"dpf\"\njustification = \"y\"\nexpires = \"2099-01-01\"\nworkloads = [\"w\"]\n",
            ),
            "exception[1].destinations[1]",
            "already an exception for workload \"w\"",
        ),
        (
            exc(
                "basis = \"scc\"\njustification = \"x\"\nexpires = \"2099-01-01\"\ntenants = [\"a\"]\n",
            )
            .replace("198.51.100.0/24", "siem.example.com"),
            "exception[0].destinations[0]",
            "host names go in `names`",
        ),
        (
            exc(
                "basis = \"scc\"\njustification = \"\"\nexpires = \"2099-01-01\"\ntenants = [\"a\"]\n",
            ),
            "exception[0].justification",
            "is empty",
        ),
        (
            exc(
                "basis = \"scc\"\njustification = \"x\"\nexpires = \"next year\"\ntenants = [\"a\"]\n",
            ),
            "exception[0].expires",
            "is not a date",
        ),
        (
            exc("basis = \"scc\"\njustification = \"x\"\nexpires = \"2099-01-01\"\n"),
            "exception[0]",
            "applies to nothing",
        ),
        (
            exc(
                "basis = \"scc\"\njustification = \"x\"\nexpires = \"2099-01-01\"\ntenants = [\"b\"]\n",
            ),
            "exception[0].tenants[0]",
            "not a tenant",
        ),
        (
            exc(
                "basis = \"scc\"\njustification = \"x\"\nexpires = \"2099-01-01\"\nworkloads = [\"v\"]\n",
            ),
            "exception[0].workloads[0]",
            "not a workload",
        ),
        (
            exc(
                "basis = \"trust-me\"\njustification = \"x\"\nexpires = \"2099-01-01\"\ntenants = [\"a\"]\n",
            ),
            "exception[0].basis",
            "scc",
        ),
    ];
    for (toml, field, needle) in cases {
        let err = parse(toml).unwrap_err();
        assert_eq!(err.field, *field, "{toml}\n{err}");
        assert!(err.to_string().contains(needle), "{toml}\n{err}");
    }
    let ok = parse(&exc("basis = \"scc\"\njustification = \"x\"\nexpires = \"2027-03-01T12:00:00Z\"\ntenants = [\"a\"]\nroles = [\"logging\"]\n")).unwrap();
    let e = &ok.exceptions[0];
    assert_eq!(e.expires.to_string(), "2027-03-01T12:00:00Z");
    assert!(e.applies_to(&ok.workloads[0]));
    assert_eq!(ok.rule_name(e.id), Some("e"));
}

#[test]
fn the_tenant_example_parses() {
    let text = include_str!("../../config/example-tenants.toml");
    let c = Config::from_toml(text, "example-tenants.toml").unwrap();
    assert_eq!(c.tenants.len(), 2);
    assert_eq!(c.workloads.len(), 4);
    assert_eq!(c.exceptions.len(), 1);
}

#[test]
fn ring_size_must_be_a_power_of_two() {
    let err = parse("[kernel]\nring_buffer_kib = 100\n").unwrap_err();
    assert_eq!(err.field, "kernel.ring_buffer_kib");
    assert_eq!(err.line, Some(2));
    let err = parse("[kernel]\nring_buffer_kib = 2\n").unwrap_err();
    assert_eq!(err.field, "kernel.ring_buffer_kib");
    let err = parse("[kernel]\nring_buffer_kib = 4\nwakeup_kib = 8\n").unwrap_err();
    assert_eq!(err.field, "kernel.wakeup_kib");
}

#[test]
fn persistence_defaults_and_refusals() {
    let c = parse("").unwrap();
    assert!(c.kernel.persist, "a clean stop keeps enforcing by default");
    assert_eq!(c.kernel.instance, "default");
    assert_eq!(c.kernel.stale_after, None);
    assert_eq!(c.kernel.when_stale, crate::kernel::WhenStale::Enforce);
    let c = parse(
        "[kernel]\npersist = false\ninstance = \"node-a_1.x\"\nstale_after_secs = 45\nwhen_stale = \"monitor\"\n",
    )
    .unwrap();
    assert!(!c.kernel.persist);
    assert_eq!(c.kernel.instance, "node-a_1.x");
    assert_eq!(
        c.kernel.stale_after,
        Some(std::time::Duration::from_secs(45))
    );
    assert_eq!(c.kernel.when_stale, crate::kernel::WhenStale::Monitor);
    for bad in ["../x", "", ".hidden", "a/b", "x y"] {
        let err = parse(&format!("[kernel]\ninstance = \"{bad}\"\n")).unwrap_err();
        assert_eq!(err.field, "kernel.instance", "{bad}");
    }
    let err = parse("[kernel]\nwhen_stale = \"allow\"\n").unwrap_err();
    assert_eq!(err.field, "kernel.when_stale");
    assert_eq!(err.line, Some(2));
}

#[test]
fn flow_settings_default_and_refuse_out_of_range() {
    let c = parse("").unwrap();
    assert!(c.kernel.flows);
    assert_eq!(c.kernel.flow_report, Duration::from_mins(1));
    assert_eq!(c.kernel.max_flows, 65_536);
    let c = parse("[kernel]\nflow_report_secs = 5\nmax_flows = 100\n").unwrap();
    assert_eq!(c.kernel.flow_report, Duration::from_secs(5));
    assert_eq!(c.kernel.max_flows, 100);
    for (text, field) in [
        ("max_flows = 8", "kernel.max_flows"),
        ("max_flows = 99999999999", "kernel.max_flows"),
        ("flow_report_secs = 0", "kernel.flow_report_secs"),
    ] {
        let err = parse(&format!("[kernel]\n{text}\n")).unwrap_err();
        assert_eq!((err.field.as_str(), err.line), (field, Some(2)), "{text}");
    }
}

#[test]
fn cgroup_paths_are_relative_to_the_mount() {
    let c = parse("[kernel]\ncgroup = \"/system.slice/x.service/\"\n").unwrap();
    assert_eq!(c.kernel.cgroup, PathBuf::from("system.slice/x.service"));
    let err = parse("[kernel]\ncgroup = \"/a/../b\"\n").unwrap_err();
    assert_eq!(err.field, "kernel.cgroup");
}

#[test]
fn enforce_at_root_needs_the_interlock() {
    let rule = "[[deny]]\nname = \"x\"\ndestinations = [\"10.0.0.0/8\"]\n";
    let c = parse(&format!("mode = \"enforce\"\n{rule}")).unwrap();
    let err = c.check_enforce_interlock(true).unwrap_err();
    assert_eq!(err.field, "mode");
    assert!(c.check_enforce_interlock(false).is_ok());
    let c = parse(&format!(
        "mode = \"enforce\"\n[kernel]\nallow_enforce_at_root = true\n{rule}"
    ))
    .unwrap();
    assert!(c.check_enforce_interlock(true).is_ok());
    // Monitor mode can never block, so the root is fine.
    let c = parse(rule).unwrap();
    assert!(c.check_enforce_interlock(true).is_ok());
}

#[test]
fn may_block_only_in_enforce_with_rules() {
    let with_rule = "[[deny]]\nname = \"x\"\ndestinations = [\"10.0.0.0/8\"]\n";
    assert!(!parse(with_rule).unwrap().may_block());
    let enforce = format!("mode = \"enforce\"\n[kernel]\ncgroup = \"t\"\n{with_rule}");
    assert!(parse(&enforce).unwrap().may_block());
    assert!(
        !parse("mode = \"enforce\"\n[kernel]\ncgroup = \"t\"\n")
            .unwrap()
            .may_block(),
        "nothing can block"
    );
    assert!(
        parse("mode = \"enforce\"\n[policy]\nallowed = [\"EEA\"]\n")
            .unwrap()
            .may_block()
    );
    assert!(
        parse("mode = \"enforce\"\n[policy]\nunknown = \"block\"\n")
            .unwrap()
            .may_block()
    );
}

#[test]
fn output_target() {
    assert_eq!(
        parse("[output]\nevents = \"-\"\n").unwrap().output,
        Output::Stdout
    );
    assert_eq!(
        parse("[output]\nevents = \"/var/log/r.jsonl\"\n")
            .unwrap()
            .output,
        Output::File(PathBuf::from("/var/log/r.jsonl"))
    );
    assert_eq!(
        parse("[output]\nevents = \"\"\n").unwrap_err().field,
        "output.events"
    );
}

#[test]
#[expect(clippy::too_many_lines, reason = "one case per way of choosing")]
fn pods_select_workloads_by_namespace_labels_and_tenant_label() {
    use std::collections::BTreeMap;
    let c = Config::from_toml(
        r#"
[kubernetes]
[[tenant]]
id = "acme"
allowed = ["EEA"]
mode = "enforce"
[[tenant]]
id = "globex"
allowed = ["US"]
[[workload]]
name = "vllm"
role = "llm"
tenants = ["acme"]
namespace = ["inference", "team-*"]
pod_labels = { app = "vllm" }
"#,
        "t",
    )
    .unwrap();
    // One configured workload, then one per tenant and role.
    assert_eq!(c.workloads.len(), 1 + 2 * Role::ALL.len());
    let (index, w) = c.workload("pods:globex/crm-sync").unwrap();
    assert_eq!(w.tenants, ["globex"]);
    assert_eq!(w.role, Role::CrmSync);
    assert!(index > 1);
    let facts = |ns: &str, labels: &[(&str, &str)], ns_labels: Option<&[(&str, &str)]>| PodFacts {
        namespace: ns.to_owned(),
        name: "p".to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        namespace_labels: ns_labels.map(|l| {
            l.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        }),
    };
    let which = |p: &PodFacts| {
        c.workloads
            .iter()
            .find(|w| {
                w.selectors.pods.as_ref().is_some_and(|s| {
                    s.matches(
                        p,
                        c.kubernetes.tenant_label.as_deref(),
                        &c.kubernetes.role_label,
                    )
                })
            })
            .map(|w| w.name.clone())
    };
    assert_eq!(
        which(&facts("inference", &[("app", "vllm")], None)).as_deref(),
        Some("vllm")
    );
    assert_eq!(
        which(&facts("team-x", &[("app", "vllm")], None)).as_deref(),
        Some("vllm")
    );
    assert_eq!(which(&facts("default", &[("app", "vllm")], None)), None);
    assert_eq!(which(&facts("inference", &[("app", "other")], None)), None);
    // The configured workload comes first, then labels choose.
    assert_eq!(
        which(&facts(
            "inference",
            &[("app", "vllm"), ("residency.io/tenant", "globex")],
            None
        ))
        .as_deref(),
        Some("vllm")
    );
    assert_eq!(
        which(&facts(
            "x",
            &[
                ("residency.io/tenant", "globex"),
                ("residency.io/role", "crm-sync")
            ],
            None
        ))
        .as_deref(),
        Some("pods:globex/crm-sync")
    );
    assert_eq!(
        which(&facts("x", &[("residency.io/tenant", "acme")], None)).as_deref(),
        Some("pods:acme/other"),
        "no role label: other"
    );
    assert_eq!(
        which(&facts(
            "x",
            &[
                ("residency.io/tenant", "acme"),
                ("residency.io/role", "chef")
            ],
            None
        )),
        None,
        "a role that is not one selects nothing"
    );
    assert_eq!(
        which(&facts("x", &[("residency.io/tenant", "initech")], None)),
        None
    );
    // The namespace's labels, when its own do not say.
    assert_eq!(
        which(&facts(
            "x",
            &[],
            Some(&[
                ("residency.io/tenant", "acme"),
                ("residency.io/role", "llm")
            ])
        ))
        .as_deref(),
        Some("pods:acme/llm")
    );
    assert_eq!(
        which(&facts(
            "x",
            &[("residency.io/tenant", "globex")],
            Some(&[("residency.io/tenant", "acme")])
        ))
        .as_deref(),
        Some("pods:globex/other"),
        "the pod's own label wins"
    );
    // Without [kubernetes], no label workloads; tenant_label = "" turns them off.
    let plain = Config::from_toml("[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n", "t").unwrap();
    assert!(plain.workloads.is_empty());
    let off = Config::from_toml(
        "[kubernetes]\ntenant_label = \"\"\n[[tenant]]\nid = \"a\"\nallowed = [\"EEA\"]\n",
        "t",
    )
    .unwrap();
    assert!(off.workloads.is_empty());
}
