//! HTTP(S) POST for the JSON sinks (Splunk HEC, Elasticsearch bulk,
//! webhooks): one client per sink, keeping its connections alive between
//! batches.

use std::{fmt, time::Duration};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{
    Request, Uri,
    body::Bytes,
    header::{HeaderName, HeaderValue, RETRY_AFTER},
};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use rustls_pki_types::ServerName;
use tokio::time::timeout;

use super::{TlsFiles, TransportError, client_tls, describe, rustls_cause, tls::trust_nothing};

/// The largest answer read: Elasticsearch's bulk answer has one item per
/// document, so a large batch gets a large answer.
const MAX_REPLY: usize = 16 << 20;
/// How much of a refusal's body goes into the error message.
const ERROR_BODY_CHARS: usize = 1024;
/// Idle connections are closed after this long (receivers and load
/// balancers commonly close theirs after 60 s; closing first avoids
/// sending on a connection the other side is closing).
const IDLE: Duration = Duration::from_secs(30);

/// A successful (2xx) answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// POSTs to HTTP and HTTPS URLs with one pool of kept-alive connections.
pub struct HttpSender {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    /// Why `https://` cannot work (no TLS files given and no system CA
    /// certificates), said when such a URL is used.
    https_unavailable: Option<String>,
}

impl fmt::Debug for HttpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSender")
            .field("timeout", &self.timeout)
            .field("https_unavailable", &self.https_unavailable)
            .finish_non_exhaustive()
    }
}

impl HttpSender {
    /// A sender that trusts the CAs of `tls` (or the system's) and
    /// presents its client certificate when one is configured.
    /// `timeout` bounds connecting, and separately each request from
    /// sending to the last byte of the answer.
    ///
    /// # Errors
    /// When the TLS files are unusable (see [`client_tls`]). Without TLS
    /// files, a system without CA certificates is reported only when an
    /// `https://` URL is used.
    pub fn new(tls: Option<&TlsFiles>, timeout: Duration) -> Result<Self, TransportError> {
        let (config, https_unavailable) = match tls {
            Some(files) => (client_tls(files)?, None),
            None => match client_tls(&TlsFiles::default()) {
                Ok(config) => (config, None),
                Err(e) => (trust_nothing()?, Some(e.to_string())),
            },
        };
        let mut http = HttpConnector::new();
        // The HTTPS connector wraps this one and handles https:// itself.
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_mins(1)));
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(rustls::ClientConfig::clone(&config))
            .https_or_http();
        let builder = match tls.and_then(|f| f.server_name.clone()) {
            Some(name) => {
                let server_name = ServerName::try_from(name.clone()).map_err(|_| {
                    TransportError::Config(format!(
                        "TLS server name {name:?} is neither a DNS name nor an IP address"
                    ))
                })?;
                builder.with_server_name_resolver(FixedServerNameResolver::new(server_name))
            }
            None => builder,
        };
        let connector = builder.enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE)
            .build(connector);
        Ok(HttpSender {
            client,
            timeout,
            https_unavailable,
        })
    }

    /// POSTs `body` with `headers` (Content-Length is set from the body)
    /// and reads the whole answer.
    ///
    /// # Errors
    /// [`TransportError::Http`] for an answer other than 2xx (redirects
    /// are not followed); [`TransportError::Config`] for a URL that is not
    /// `http://` or `https://` with a host; and connection, TLS, timeout
    /// and request errors.
    pub async fn post(
        &self,
        url: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: Vec<u8>,
    ) -> Result<HttpReply, TransportError> {
        let shown = shown_url(url);
        match url.scheme_str() {
            Some("http") => {}
            Some("https") => {
                if let Some(why) = &self.https_unavailable {
                    return Err(TransportError::Config(format!("{shown}: {why}")));
                }
            }
            _ => {
                return Err(TransportError::Config(format!(
                    "URL {shown} must start with http:// or https://"
                )));
            }
        }
        if url.host().is_none_or(str::is_empty) {
            return Err(TransportError::Config(format!("URL {shown} has no host")));
        }
        let mut request = Request::post(url.clone())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| TransportError::Config(format!("URL {shown}: {e}")))?;
        for (name, value) in headers {
            request.headers_mut().append(name.clone(), value.clone());
        }
        let exchange = async {
            let response = self.client.request(request).await.map_err(|e| {
                if rustls_cause(&e).is_some() {
                    TransportError::Tls {
                        address: authority(url),
                        detail: describe(&e),
                    }
                } else if e.is_connect() {
                    TransportError::Connect {
                        address: authority(url),
                        detail: describe(&e),
                    }
                } else {
                    TransportError::Request {
                        url: shown.clone(),
                        detail: describe(&e),
                    }
                }
            })?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let body = Limited::new(response.into_body(), MAX_REPLY)
                .collect()
                .await
                .map_err(|e| TransportError::Request {
                    url: shown.clone(),
                    detail: format!("reading the answer: {}", describe(&*e)),
                })?
                .to_bytes();
            Ok::<_, TransportError>((status, retry_after, body))
        };
        let (status, retry_after, body) =
            timeout(self.timeout, exchange)
                .await
                .map_err(|_| TransportError::Timeout {
                    target: shown.clone(),
                    operation: "waiting for the answer",
                    after: self.timeout,
                })??;
        if status.is_success() {
            return Ok(HttpReply {
                status: status.as_u16(),
                body: body.to_vec(),
            });
        }
        let text = String::from_utf8_lossy(&body);
        let mut text: String = text.trim().chars().take(ERROR_BODY_CHARS).collect();
        if text.len() < body.len() && body.len() > ERROR_BODY_CHARS {
            text.push_str("...");
        }
        Err(TransportError::Http {
            url: shown,
            status: status.as_u16(),
            body: text,
            retry_after,
        })
    }
}

/// `host:port` of a URL, for messages.
fn authority(url: &Uri) -> String {
    let host = url.host().unwrap_or_default();
    let port = url.port_u16().unwrap_or(match url.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    format!("{host}:{port}")
}

/// The URL as messages show it: without credentials or query, where
/// tokens are sometimes put.
fn shown_url(url: &Uri) -> String {
    let scheme = url.scheme_str().unwrap_or("?");
    let host = url.host().unwrap_or_default();
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{scheme}://{host}{port}{}", url.path())
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tokio::{
        io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
        net::TcpListener,
    };
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::transport::testing::Pki;

    const T: Duration = Duration::from_secs(5);

    /// One request as it came over the wire.
    #[derive(Debug)]
    struct Seen {
        head: String,
        body: Vec<u8>,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }
    }

    /// Reads one HTTP/1.1 request (Content-Length bodies only), or None at
    /// the end of the connection.
    async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Seen> {
        let mut data = Vec::new();
        let mut byte = [0u8; 1];
        while !data.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            data.push(byte[0]);
        }
        let head = String::from_utf8(data).unwrap();
        let mut seen = Seen {
            head,
            body: Vec::new(),
        };
        let length: usize = seen.header("content-length").unwrap().parse().unwrap();
        seen.body = vec![0; length];
        stream.read_exact(&mut seen.body).await.unwrap();
        Some(seen)
    }

    /// A hand-written HTTP/1.1 receiver (independent of hyper), over TLS
    /// when given a configuration. Answers every request with `answer`;
    /// counts connections.
    async fn receiver(
        tls: Option<Arc<rustls::ServerConfig>>,
        answer: &'static str,
    ) -> (
        u16,
        tokio::sync::mpsc::UnboundedReceiver<Seen>,
        Arc<AtomicUsize>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(config) => {
                            if let Ok(stream) = TlsAcceptor::from(config).accept(tcp).await {
                                serve(stream, answer, tx).await;
                            }
                        }
                        None => serve(tcp, answer, tx).await,
                    }
                });
            }
        });
        (port, rx, connections)
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        answer: &str,
        tx: tokio::sync::mpsc::UnboundedSender<Seen>,
    ) {
        while let Some(seen) = read_request(&mut stream).await {
            let _ = tx.send(seen);
            if answer.is_empty() {
                // Never answers.
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 27\r\n\r\n{\"text\":\"Success\",\"code\":0}";

    fn headers() -> Vec<(HeaderName, HeaderValue)> {
        vec![
            (
                hyper::header::AUTHORIZATION,
                HeaderValue::from_static("Splunk 0000-token"),
            ),
            (
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                HeaderName::from_static("webhook-id"),
                HeaderValue::from_static("msg_1"),
            ),
        ]
    }

    #[tokio::test]
    async fn posts_with_headers_over_tls_and_keeps_the_connection() {
        let pki = Pki::new();
        let (port, mut seen, connections) = receiver(Some(pki.server(false)), OK).await;
        let sender = HttpSender::new(Some(&pki.files(false)), T).unwrap();
        let url: Uri = format!("https://localhost:{port}/services/collector/event")
            .parse()
            .unwrap();
        for i in 0..2 {
            let body = format!("{{\"event\":{i}}}").into_bytes();
            let reply = sender.post(&url, &headers(), body.clone()).await.unwrap();
            assert_eq!(reply.status, 200);
            assert_eq!(reply.body, br#"{"text":"Success","code":0}"#);
            let request = seen.recv().await.unwrap();
            assert!(
                request
                    .head
                    .starts_with("POST /services/collector/event HTTP/1.1\r\n"),
                "{}",
                request.head
            );
            assert_eq!(request.header("authorization"), Some("Splunk 0000-token"));
            assert_eq!(request.header("content-type"), Some("application/json"));
            assert_eq!(request.header("webhook-id"), Some("msg_1"));
            assert_eq!(request.body, body);
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1, "kept alive");
    }

    #[tokio::test]
    async fn posts_over_plain_http_and_presents_a_client_certificate_over_https() {
        let (port, mut seen, _) = receiver(None, OK).await;
        let sender = HttpSender::new(None, T).unwrap();
        let url: Uri = format!("http://127.0.0.1:{port}/hook").parse().unwrap();
        sender.post(&url, &[], b"{}".to_vec()).await.unwrap();
        assert_eq!(seen.recv().await.unwrap().body, b"{}");

        let pki = Pki::new();
        let (port, mut seen, _) = receiver(Some(pki.server(true)), OK).await;
        let url: Uri = format!("https://127.0.0.1:{port}/hook").parse().unwrap();
        let with_cert = HttpSender::new(Some(&pki.files(true)), T).unwrap();
        with_cert.post(&url, &[], b"{}".to_vec()).await.unwrap();
        assert_eq!(seen.recv().await.unwrap().body, b"{}");
        let without = HttpSender::new(Some(&pki.files(false)), T).unwrap();
        let err = without.post(&url, &[], b"{}".to_vec()).await.unwrap_err();
        assert!(matches!(err, TransportError::Tls { .. }), "{err:?}");
        assert!(err.to_string().contains("client certificate"), "{err}");
        assert!(err.retryable());
    }

    #[tokio::test]
    async fn a_refusal_is_an_http_error_that_says_whether_to_retry() {
        let (port, _seen, _) = receiver(
            None,
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: 7\r\ncontent-length: 4\r\n\r\nbusy",
        )
        .await;
        let sender = HttpSender::new(None, T).unwrap();
        let url: Uri = format!("http://127.0.0.1:{port}/_bulk?token=secret")
            .parse()
            .unwrap();
        let err = sender.post(&url, &[], b"{}".to_vec()).await.unwrap_err();
        match &err {
            TransportError::Http {
                status,
                body,
                retry_after,
                ..
            } => {
                assert_eq!(*status, 503);
                assert_eq!(body, "busy");
                assert_eq!(*retry_after, Some(Duration::from_secs(7)));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.retryable());
        let text = err.to_string();
        assert!(text.contains("HTTP 503") && text.contains("busy"), "{text}");
        assert!(
            !text.contains("secret"),
            "the query stays out of messages: {text}"
        );

        let (port, _seen, _) = receiver(
            None,
            "HTTP/1.1 401 Unauthorized\r\ncontent-length: 13\r\n\r\nInvalid token",
        )
        .await;
        let url: Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let err = sender.post(&url, &[], b"{}".to_vec()).await.unwrap_err();
        assert!(!err.retryable(), "{err:?}");
        assert!(err.to_string().contains("Invalid token"), "{err}");
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_makes_the_post_time_out() {
        let (port, _seen, _) = receiver(None, "").await;
        let after = Duration::from_millis(300);
        let sender = HttpSender::new(None, after).unwrap();
        let url: Uri = format!("http://127.0.0.1:{port}/").parse().unwrap();
        let started = std::time::Instant::now();
        let err = sender.post(&url, &[], b"{}".to_vec()).await.unwrap_err();
        assert!(matches!(err, TransportError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn an_untrusted_receiver_is_a_tls_error() {
        let pki = Pki::new();
        let (port, _seen, _) = receiver(Some(pki.server(false)), OK).await;
        let files = TlsFiles {
            ca: Some(pki.other_ca()),
            ..TlsFiles::default()
        };
        let sender = HttpSender::new(Some(&files), T).unwrap();
        let url: Uri = format!("https://localhost:{port}/").parse().unwrap();
        let err = sender.post(&url, &[], b"{}".to_vec()).await.unwrap_err();
        assert!(matches!(err, TransportError::Tls { .. }), "{err:?}");
        assert!(
            err.to_string().contains("check the sink's CA file"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn urls_must_be_http_or_https() {
        let sender = HttpSender::new(None, T).unwrap();
        let url: Uri = "ftp://127.0.0.1/".parse().unwrap();
        let err = sender.post(&url, &[], Vec::new()).await.unwrap_err();
        assert!(matches!(err, TransportError::Config(_)) && !err.retryable());
    }
}
