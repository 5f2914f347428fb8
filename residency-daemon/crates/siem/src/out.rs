//! One sink's output: its format and its transport, put together.

use std::path::Path;

use hyper::{
    Uri,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue},
};

use super::{
    alert::Alert,
    config::{Destination, SinkConfig},
    format::{self, Context, Format},
    transport::{
        FileSender, HttpSender, SyslogProtocol, SyslogSender, TlsFiles, TransportError, client_tls,
    },
};

/// Why a send failed, and how many alerts (from the start of the slice)
/// the receiver took before it did.
#[derive(Debug)]
pub struct Partial {
    pub delivered: usize,
    pub error: OutError,
}

/// A send or set-up failure.
#[derive(Debug, thiserror::Error)]
pub enum OutError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("{path}: {message}")]
    Secret { path: String, message: String },
    #[error("the receiver refused some alerts: {0}")]
    Refused(String),
    #[error("{0}")]
    Invalid(String),
}

impl OutError {
    /// How long the receiver asked to be left alone (`Retry-After`).
    #[must_use]
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            OutError::Transport(TransportError::Http { retry_after, .. }) => *retry_after,
            _ => None,
        }
    }
}

impl From<OutError> for Partial {
    fn from(error: OutError) -> Self {
        Partial {
            delivered: 0,
            error,
        }
    }
}

impl From<TransportError> for Partial {
    fn from(e: TransportError) -> Self {
        Partial::from(OutError::from(e))
    }
}

/// A sink's sender.
pub enum Out {
    Syslog {
        sender: SyslogSender,
        cef: bool,
        facility: u8,
        ctx: Context,
    },
    File {
        sender: FileSender,
        format: Format,
        ctx: Context,
    },
    Elasticsearch {
        http: HttpSender,
        uri: Uri,
        index: String,
        headers: Vec<(HeaderName, HeaderValue)>,
        store: String,
    },
    SplunkHec {
        http: HttpSender,
        uri: Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
        index: Option<String>,
        sourcetype: String,
        format: Format,
        ctx: Context,
    },
    Webhook {
        http: HttpSender,
        uri: Uri,
        secret: Vec<u8>,
        format: Format,
        ctx: Context,
    },
}

/// Reads a secret file: trimmed, non-empty, and not readable by others
/// (a token any local user can read is everyone's token).
fn secret(path: &Path) -> Result<String, OutError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |message: String| OutError::Secret {
        path: path.display().to_string(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(format!(
            "mode {:o} lets others read it; chmod 600 it",
            meta.permissions().mode() & 0o777
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Err(err("is empty".to_owned()));
    }
    Ok(text)
}

fn header(name: HeaderName, value: &str) -> Result<(HeaderName, HeaderValue), OutError> {
    let value = HeaderValue::from_str(value)
        .map_err(|_| OutError::Invalid(format!("{name}: not a valid header value")))?;
    Ok((name, value))
}

fn uri(url: &str) -> Result<Uri, OutError> {
    url.parse()
        .map_err(|e| OutError::Invalid(format!("\"{url}\" is not a URL: {e}")))
}

/// The URL with `path` in place of an empty or `/` path.
fn with_default_path(url: &str, path: &str) -> Result<Uri, OutError> {
    let u = uri(url)?;
    if u.path() == "/" || u.path().is_empty() {
        uri(&format!("{}{path}", url.trim_end_matches('/')))
    } else {
        Ok(u)
    }
}

impl Out {
    /// Builds the sender; reads secrets and certificates now, so that a
    /// mistake stops the start with a message.
    ///
    /// # Errors
    /// A secret, certificate or URL that cannot be used.
    pub fn new(config: &SinkConfig, store: &str) -> Result<Out, OutError> {
        let tls = TlsFiles {
            ca: config.tls.ca_file.clone(),
            cert: config.tls.cert_file.clone(),
            key: config.tls.key_file.clone(),
            server_name: config.tls.server_name.clone(),
        };
        let ctx = Context {
            store: store.to_owned(),
            ..Context::default()
        };
        let fmt = |f: &str| {
            f.parse::<Format>()
                .map_err(|_| OutError::Invalid(format!("unknown format {f}")))
        };
        Ok(match &config.destination {
            Destination::Syslog {
                address,
                protocol,
                facility,
                enterprise_number,
            } => {
                let protocol: SyslogProtocol = protocol
                    .parse()
                    .map_err(|_| OutError::Invalid(format!("unknown protocol {protocol}")))?;
                let client = if matches!(protocol, SyslogProtocol::Tls) {
                    Some(client_tls(&tls)?)
                } else {
                    None
                };
                Out::Syslog {
                    sender: SyslogSender::new(
                        address.clone(),
                        protocol,
                        client,
                        config.tls.server_name.clone(),
                        config.timeout,
                    ),
                    cef: config.format == "cef",
                    facility: *facility,
                    ctx: Context {
                        enterprise_number: *enterprise_number,
                        ..ctx
                    },
                }
            }
            // Synced before the cursor moves past what it wrote.
            Destination::File { path } => Out::File {
                sender: FileSender::new(path.clone()).with_fsync(true),
                format: fmt(&config.format)?,
                ctx,
            },
            Destination::Elasticsearch {
                url,
                index,
                api_key_file,
            } => {
                let mut headers = vec![header(CONTENT_TYPE, "application/x-ndjson")?];
                if let Some(f) = api_key_file {
                    headers.push(header(AUTHORIZATION, &format!("ApiKey {}", secret(f)?))?);
                }
                Out::Elasticsearch {
                    http: HttpSender::new(Some(&tls), config.timeout)?,
                    uri: with_default_path(url, "/_bulk")?,
                    index: index.clone(),
                    headers,
                    store: store.to_owned(),
                }
            }
            Destination::SplunkHec {
                url,
                token_file,
                index,
                sourcetype,
            } => Out::SplunkHec {
                http: HttpSender::new(Some(&tls), config.timeout)?,
                uri: with_default_path(url, "/services/collector/event")?,
                headers: vec![
                    header(CONTENT_TYPE, "application/json")?,
                    header(AUTHORIZATION, &format!("Splunk {}", secret(token_file)?))?,
                ],
                index: index.clone(),
                sourcetype: sourcetype.clone(),
                format: fmt(&config.format)?,
                ctx,
            },
            Destination::Webhook { url, secret_file } => Out::Webhook {
                http: HttpSender::new(Some(&tls), config.timeout)?,
                uri: uri(url)?,
                secret: format::webhook::decode_secret(&secret(secret_file)?).map_err(|e| {
                    OutError::Secret {
                        path: secret_file.display().to_string(),
                        message: e.to_string(),
                    }
                })?,
                format: fmt(&config.format)?,
                ctx,
            },
        })
    }

    /// Sends `alerts`, in order.
    ///
    /// # Errors
    /// What failed, and how many alerts were taken before it.
    pub async fn send(&mut self, alerts: &[Alert]) -> Result<(), Partial> {
        match self {
            Out::Syslog {
                sender,
                cef,
                facility,
                ctx,
            } => {
                let messages: Vec<Vec<u8>> = alerts
                    .iter()
                    .map(|a| {
                        let msg = if *cef {
                            format::cef::cef(a, ctx)
                        } else {
                            a.summary()
                        };
                        format::syslog::rfc5424(a, ctx, *facility, msg.as_bytes())
                    })
                    .collect();
                sender.send(&messages).await?;
            }
            Out::File {
                sender,
                format,
                ctx,
            } => {
                let mut lines = Vec::with_capacity(alerts.len());
                for a in alerts {
                    let line = match format {
                        Format::Cef => format::cef::cef(a, ctx).into_bytes(),
                        Format::Ocsf => json(&format::ocsf::ocsf(a, ctx))?,
                        Format::Ecs | Format::Rfc5424 => json(&format::ecs::ecs(a))?,
                    };
                    lines.push(line);
                }
                sender.send(&lines).await?;
            }
            Out::Elasticsearch {
                http,
                uri,
                index,
                headers,
                store,
            } => {
                let mut body = Vec::new();
                format::ecs::es_bulk(alerts, index, store, &mut body);
                let reply = http.post(uri, headers, body).await?;
                bulk_result(&reply.body)?;
            }
            Out::SplunkHec {
                http,
                uri,
                headers,
                index,
                sourcetype,
                format,
                ctx,
            } => {
                let mut body = Vec::new();
                format::hec::hec_batch(
                    alerts,
                    ctx,
                    index.as_deref(),
                    sourcetype,
                    *format,
                    &mut body,
                );
                http.post(uri, headers, body).await?;
            }
            Out::Webhook {
                http,
                uri,
                secret,
                format,
                ctx,
            } => {
                // One request per alert: each message is signed on its own.
                for (i, a) in alerts.iter().enumerate() {
                    let id = format::webhook::message_id(a, &ctx.store);
                    let body = format::webhook::body(a, ctx, *format);
                    let ts = jiff::Timestamp::now().as_second();
                    let mut headers =
                        vec![header(CONTENT_TYPE, "application/json").map_err(|e| partial(i, e))?];
                    for (name, value) in format::webhook::headers(secret, &id, ts, &body) {
                        headers.push(
                            header(HeaderName::from_static(name), &value)
                                .map_err(|e| partial(i, e))?,
                        );
                    }
                    http.post(uri, &headers, body)
                        .await
                        .map_err(|e| partial(i, e.into()))?;
                }
            }
        }
        Ok(())
    }
}

fn partial(delivered: usize, error: OutError) -> Partial {
    Partial { delivered, error }
}

fn json(v: &serde_json::Value) -> Result<Vec<u8>, Partial> {
    serde_json::to_vec(v).map_err(|e| Partial::from(OutError::Invalid(e.to_string())))
}

/// An Elasticsearch bulk reply: every item created, or already there (a
/// resend: 409 on `create` with the same `_id`).
fn bulk_result(body: &[u8]) -> Result<(), OutError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| OutError::Refused(format!("the bulk reply is not JSON: {e}")))?;
    if v.get("errors").and_then(serde_json::Value::as_bool) != Some(true) {
        return Ok(());
    }
    let bad: Vec<String> = v
        .get("items")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let op = item.as_object()?.values().next()?;
            let status = op.get("status").and_then(serde_json::Value::as_u64)?;
            (!matches!(status, 200 | 201 | 409)).then(|| {
                format!(
                    "{status} {}",
                    op.pointer("/error/reason")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("")
                )
            })
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(OutError::Refused(bad.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_replies() {
        assert!(bulk_result(br#"{"errors":false,"items":[]}"#).is_ok());
        // A resend: the documents exist already.
        assert!(
            bulk_result(
                br#"{"errors":true,"items":[{"create":{"status":409}},{"create":{"status":201}}]}"#
            )
            .is_ok()
        );
        let e = bulk_result(
            br#"{"errors":true,"items":[{"create":{"status":400,"error":{"reason":"mapper_parsing_exception"}}}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("mapper_parsing_exception"), "{e}");
        assert!(bulk_result(b"<html>").is_err());
    }

    #[test]
    fn secrets_must_be_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "abc\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(secret(&p).unwrap_err().to_string().contains("chmod 600"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(secret(&p).unwrap(), "abc");
        std::fs::write(&p, "  \n").unwrap();
        assert!(secret(&p).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn default_paths() {
        assert_eq!(
            with_default_path("https://splunk:8088", "/services/collector/event")
                .unwrap()
                .to_string(),
            "https://splunk:8088/services/collector/event"
        );
        assert_eq!(
            with_default_path("https://es:9200/custom/_bulk", "/_bulk")
                .unwrap()
                .to_string(),
            "https://es:9200/custom/_bulk"
        );
    }
}
