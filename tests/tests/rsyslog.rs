//! The syslog transport against a real rsyslogd (Debian's package): RFC
//! 5424 messages sent over UDP, TCP and TLS arrive byte for byte,
//! structured data included; over TCP and TLS they are sent back to back
//! without newlines, so rsyslog can only have split them by their octet
//! counts. Mutual TLS works with a client certificate and fails clearly
//! without one, and a sender carries on after the receiver restarts.
//!
//! Needs no root: rsyslogd runs as the current user on free high ports of
//! 127.0.0.1. Without rsyslog installed the tests skip, except under
//! `CI=true`.

use std::time::Duration;

use residency_siem::transport::{
    SyslogProtocol, SyslogSender, TlsFiles, TransportError, client_tls,
};
use residency_tests::receivers::{Rsyslog, SyslogInput, rsyslog_or_skip};

const TIMEOUT: Duration = Duration::from_secs(5);
const ARRIVAL: Duration = Duration::from_secs(10);

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Three RFC 5424 messages, written by hand (not by the formatter under
/// test elsewhere), with structured data.
fn messages(tag: &str) -> Vec<String> {
    (1..=3)
        .map(|i| {
            format!(
                r#"<134>1 2026-11-22T10:00:0{i}.000000Z host app {i} msgid [x@32473 a="b" n="{i}"][y@32473 via="{tag}"] hello {i} over {tag}"#
            )
        })
        .collect()
}

fn bytes(messages: &[String]) -> Vec<Vec<u8>> {
    messages.iter().map(|m| m.as_bytes().to_vec()).collect()
}

fn sender(
    rsyslog: &Rsyslog,
    input: SyslogInput,
    tls: Option<TlsFiles>,
) -> anyhow::Result<SyslogSender> {
    let protocol = match input {
        SyslogInput::Udp => SyslogProtocol::Udp,
        SyslogInput::Tcp => SyslogProtocol::Tcp,
        SyslogInput::Tls | SyslogInput::Mtls => SyslogProtocol::Tls,
    };
    let config = tls.map(|files| client_tls(&files)).transpose()?;
    Ok(SyslogSender::new(
        format!("127.0.0.1:{}", rsyslog.port(input)),
        protocol,
        config,
        // The certificate names localhost and 127.0.0.1; check the name.
        Some("localhost".to_owned()),
        TIMEOUT,
    ))
}

fn trust(rsyslog: &Rsyslog) -> TlsFiles {
    TlsFiles {
        ca: Some(rsyslog.ca_path.clone()),
        ..TlsFiles::default()
    }
}

#[test]
fn messages_reach_rsyslog_byte_for_byte_over_udp_tcp_and_tls() -> anyhow::Result<()> {
    let Some(rsyslog) =
        rsyslog_or_skip("messages_reach_rsyslog_byte_for_byte_over_udp_tcp_and_tls")?
    else {
        return Ok(());
    };
    let rt = runtime()?;
    for input in [SyslogInput::Udp, SyslogInput::Tcp, SyslogInput::Tls] {
        let tls = (input == SyslogInput::Tls).then(|| trust(&rsyslog));
        let mut sender = sender(&rsyslog, input, tls)?;
        let sent = messages(input.name());
        rt.block_on(sender.send(&bytes(&sent)))
            .unwrap_or_else(|e| panic!("{}: {e}\nrsyslogd: {}", input.name(), rsyslog.log()));
        let lines = rsyslog.wait_lines(input, 3, ARRIVAL)?;
        assert_eq!(lines, sent, "{} input", input.name());
    }
    Ok(())
}

#[test]
fn mutual_tls_needs_the_client_certificate() -> anyhow::Result<()> {
    let Some(rsyslog) = rsyslog_or_skip("mutual_tls_needs_the_client_certificate")? else {
        return Ok(());
    };
    let rt = runtime()?;

    let without = trust(&rsyslog);
    let err = rt
        .block_on(
            sender(&rsyslog, SyslogInput::Mtls, Some(without))?.send(&bytes(&messages("none"))),
        )
        .expect_err("rsyslog requires a client certificate on this port");
    assert!(matches!(err, TransportError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("client certificate"), "{err}");

    let with = TlsFiles {
        cert: Some(rsyslog.pki.client_cert.clone()),
        key: Some(rsyslog.pki.client_key.clone()),
        ..trust(&rsyslog)
    };
    let sent = messages("mtls");
    rt.block_on(sender(&rsyslog, SyslogInput::Mtls, Some(with))?.send(&bytes(&sent)))
        .unwrap_or_else(|e| panic!("{e}\nrsyslogd: {}", rsyslog.log()));
    assert_eq!(
        rsyslog.wait_lines(SyslogInput::Mtls, 3, ARRIVAL)?,
        sent,
        "only the messages of the client with a certificate arrived"
    );
    Ok(())
}

#[test]
fn a_sender_carries_on_after_rsyslog_restarts() -> anyhow::Result<()> {
    let Some(mut rsyslog) = rsyslog_or_skip("a_sender_carries_on_after_rsyslog_restarts")? else {
        return Ok(());
    };
    let rt = runtime()?;
    for input in [SyslogInput::Tcp, SyslogInput::Tls] {
        let tls = (input == SyslogInput::Tls).then(|| trust(&rsyslog));
        let mut sender = sender(&rsyslog, input, tls)?;
        let before = messages("before");
        rt.block_on(sender.send(&bytes(&before)))?;
        assert_eq!(rsyslog.wait_lines(input, 3, ARRIVAL)?, before);

        rsyslog.stop();
        let err = rt.block_on(sender.send(&bytes(&before))).unwrap_err();
        assert!(err.retryable(), "{err:?}");
        assert!(matches!(err, TransportError::Connect { .. }), "{err:?}");

        rsyslog.restart()?;
        let after = messages("after");
        rt.block_on(sender.send(&bytes(&after)))
            .unwrap_or_else(|e| panic!("{e}\nrsyslogd: {}", rsyslog.log()));
        let lines = rsyslog.wait_lines(input, 6, ARRIVAL)?;
        assert_eq!(lines[3..], after[..], "{} input", input.name());
        assert_eq!(lines.len(), 6, "{lines:#?}");
    }
    Ok(())
}
