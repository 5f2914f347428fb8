//! Every kernel program, in every variant the daemon can load, passes the
//! kernel's verifier and attaches. The variants differ in load-time
//! constants (the deny path compiled in or out, the wakeup threshold) and in
//! map sizes, and the verifier judges each one on its own.

use std::time::Duration;

use residency_daemon::{config::Config, kernel};
use residency_tests::{
    TestCgroup, TestPins, bpftool_attached, bpftool_attached_after_detach, bpftool_xlated_bytes,
    cgroup2_mount, privileged_or_skip,
};

const VARIANTS: &[(&str, &str)] = &[
    ("monitor, no rules", "mode = \"monitor\"\n"),
    (
        "monitor with rules (deny path compiled out)",
        "mode = \"monitor\"\n[[deny]]\nname = \"r\"\ndestinations = [\"127.0.0.66/32\", \"::1/128\"]\n",
    ),
    (
        "enforce with rules (deny path compiled in)",
        "mode = \"enforce\"\n[[deny]]\nname = \"r\"\ndestinations = [\"127.0.0.66/32\", \"::1/128\"]\n",
    ),
    (
        "smallest ring, wakeup on every record",
        "[kernel]\nring_buffer_kib = 4\nwakeup_kib = 0\n",
    ),
    (
        "enforce without name tracking",
        "mode = \"enforce\"\n[names]\ntrack = false\n",
    ),
    (
        "names without TLS server names, smallest name map",
        "[names]\nsni = false\nmax_entries = 1024\n",
    ),
    (
        "enforce, flows not followed",
        "mode = \"enforce\"\n[kernel]\nflows = false\n",
    ),
    (
        "no names, flows not followed: no packet programs",
        "[kernel]\nflows = false\n[names]\ntrack = false\n",
    ),
    (
        "names without TLS server names, flows not followed: ingress only",
        "[kernel]\nflows = false\n[names]\nsni = false\n",
    ),
    (
        "enforce, flows reported every second, no names",
        "mode = \"enforce\"\n[kernel]\nflow_report_secs = 1\n[names]\ntrack = false\n",
    ),
];

#[test]
fn every_program_variant_passes_the_verifier() -> anyhow::Result<()> {
    if !privileged_or_skip("every_program_variant_passes_the_verifier") {
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let _enter = runtime.enter();
    let mount = cgroup2_mount()?;
    for (name, toml) in VARIANTS {
        let cg = TestCgroup::new("verifier")?;
        let config = Config::from_toml(toml, name)?;
        let target = kernel::CgroupTarget::resolve(&mount, &cg.path)?;
        assert!(!target.is_root, "tests attach only to their own cgroup");
        let compiled = residency_daemon::policy::compile(&config, jiff::Timestamp::now());
        let pins = TestPins::new("verifier");
        let mut k = kernel::start(
            &config.kernel,
            &config.names,
            config.may_block(),
            &compiled,
            &[],
            target,
            None,
            pins.open()?,
        )
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?
        .kernel;
        assert_eq!(k.attached.may_block, config.may_block(), "{name}");
        if let Some(progs) = bpftool_attached(&cg)? {
            let mut kinds: Vec<&str> = progs
                .iter()
                .map(|p| p.split(':').next().unwrap_or(""))
                .collect();
            kinds.sort_unstable();
            // One packet program per direction, where a part of it is on:
            // in, DNS answers (names) and bytes (flows); out, TLS hellos
            // (server names) and bytes. The socket's end and the TCP
            // connection's come with flows.
            let mut want = vec![
                "cgroup_inet4_connect",
                "cgroup_inet6_connect",
                "cgroup_udp4_sendmsg",
                "cgroup_udp6_sendmsg",
            ];
            let (names, sni, flows) = (
                config.names.track,
                config.names.track && config.names.sni,
                config.kernel.flows,
            );
            if names || flows {
                want.push("cgroup_inet_ingress");
            }
            if sni || flows {
                want.push("cgroup_inet_egress");
            }
            if flows {
                want.extend(["cgroup_inet_sock_release", "cgroup_sock_ops"]);
            }
            want.sort_unstable();
            assert_eq!(kinds, want, "{name}: {progs:?}");
        }
        k.attached.detach();
        assert!(!pins.exists(), "{name}: detach left the pins");
        drop(k);
        if let Some(progs) = bpftool_attached_after_detach(&cg, Duration::from_secs(2))? {
            assert!(progs.is_empty(), "{name}: left attached: {progs:?}");
        }
    }
    Ok(())
}

/// Monitor mode's promise, checked structurally: with the same rules, the
/// programs the verifier accepted in monitor mode are smaller than in
/// enforce mode in every hook, because the deny path was pruned as dead code
/// (`MAY_BLOCK` is a frozen constant). Behaviour is checked end to end in
/// `pipeline.rs`.
#[test]
fn monitor_mode_programs_have_no_deny_path() -> anyhow::Result<()> {
    if !privileged_or_skip("monitor_mode_programs_have_no_deny_path") {
        return Ok(());
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let _enter = runtime.enter();
    let mount = cgroup2_mount()?;
    let rules = "[[deny]]\nname = \"r\"\ndestinations = [\"127.0.0.66/32\", \"::1/128\"]\n";
    let mut sizes = Vec::new();
    for mode in ["monitor", "enforce"] {
        let cg = TestCgroup::new("pruned")?;
        let config = Config::from_toml(&format!("mode = \"{mode}\"\n{rules}"), mode)?;
        let compiled = residency_daemon::policy::compile(&config, jiff::Timestamp::now());
        let pins = TestPins::new("pruned");
        let k = kernel::start(
            &config.kernel,
            &config.names,
            config.may_block(),
            &compiled,
            &[],
            kernel::CgroupTarget::resolve(&mount, &cg.path)?,
            None,
            pins.open()?,
        )?
        .kernel;
        let Some(mut s) = bpftool_xlated_bytes(&cg)? else {
            eprintln!("SKIPPED monitor_mode_programs_have_no_deny_path: bpftool is not installed");
            return Ok(());
        };
        // The name and flow programs never deny, in either mode.
        s.retain(|(hook, _)| {
            !hook.starts_with("cgroup_inet_ingress")
                && !hook.starts_with("cgroup_inet_egress")
                && !hook.starts_with("cgroup_inet_sock_release")
                && !hook.starts_with("cgroup_sock_ops")
        });
        drop(k);
        sizes.push(s);
    }
    assert_eq!(sizes[0].len(), 4);
    for (monitor, enforce) in sizes[0].iter().zip(&sizes[1]) {
        assert_eq!(monitor.0, enforce.0);
        assert!(
            monitor.1 < enforce.1,
            "{}: monitor program ({} bytes) is not smaller than enforce ({} bytes)",
            monitor.0,
            monitor.1,
            enforce.1
        );
    }
    Ok(())
}
