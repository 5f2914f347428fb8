//! `[[sink]]` tables: where alerts go, in which format, and which alerts.
//!
//! ```toml
//! [[sink]]
//! name = "soc"                    # unique; names metrics, cursor, gap records
//! type = "syslog"                 # syslog | file | elasticsearch | splunk-hec | webhook
//! address = "siem.example:6514"   # syslog: host:port
//! protocol = "tls"                # syslog: udp | tcp | tls
//! format = "rfc5424"              # syslog: rfc5424 | cef
//! ca_file = "/etc/residency/siem-ca.pem"
//! receives = ["violations", "checkpoints"]
//! ```

use std::{path::PathBuf, time::Duration};

use residency_config::{ConfigError, Locator, Spanned};
use serde::Deserialize;

/// Longest a sink may wait between two attempts, by default.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_mins(1);
/// Records a sink may fall behind before it skips ahead, by default.
pub const DEFAULT_SPOOL_RECORDS: u64 = 1_000_000;

/// One `[[sink]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    name: Spanned<String>,
    #[serde(rename = "type")]
    kind: Spanned<String>,
    receives: Option<Spanned<Vec<Spanned<String>>>>,
    format: Option<Spanned<String>>,
    // syslog
    address: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    facility: Option<Spanned<u8>>,
    enterprise_number: Option<Spanned<u32>>,
    // file
    path: Option<Spanned<String>>,
    // HTTP
    url: Option<Spanned<String>>,
    index: Option<Spanned<String>>,
    sourcetype: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    api_key_file: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    // TLS
    ca_file: Option<Spanned<String>>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
    // delivery
    batch_max: Option<Spanned<u32>>,
    spool_max_records: Option<Spanned<u64>>,
    throttle_secs: Option<Spanned<u64>>,
    timeout_secs: Option<Spanned<u64>>,
    retry_max_secs: Option<Spanned<u64>>,
}

/// Which alerts a sink takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[expect(clippy::struct_excessive_bools, reason = "four independent choices")]
pub struct Receives {
    /// Every flow, whatever its verdict.
    pub flows: bool,
    /// Flagged and blocked flows, as findings.
    pub violations: bool,
    /// Signed checkpoints of the chain.
    pub checkpoints: bool,
    /// Gap records (kernel drops, unclean stops, sinks that skipped).
    pub gaps: bool,
}

/// Where a sink sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// RFC 5424 syslog (or CEF over syslog).
    Syslog {
        address: String,
        protocol: String,
        facility: u8,
        enterprise_number: u32,
    },
    /// One line per alert appended to a file.
    File { path: PathBuf },
    /// Elasticsearch (or compatible) `_bulk`.
    Elasticsearch {
        url: String,
        index: String,
        api_key_file: Option<PathBuf>,
    },
    /// Splunk HTTP Event Collector.
    SplunkHec {
        url: String,
        token_file: PathBuf,
        index: Option<String>,
        sourcetype: String,
    },
    /// A webhook signed per Standard Webhooks v1.
    Webhook { url: String, secret_file: PathBuf },
}

/// TLS settings of a sink (syslog over TLS, HTTPS).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tls {
    /// CA bundle to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (mutual TLS).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name to check the server's certificate against, when it is not
    /// the host in the address.
    pub server_name: Option<String>,
}

/// One validated sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    pub name: String,
    pub destination: Destination,
    /// `rfc5424`, `cef`, `ocsf` or `ecs` (which apply depends on the
    /// destination).
    pub format: String,
    pub receives: Receives,
    pub tls: Tls,
    /// Alerts per send, at most.
    pub batch_max: u32,
    /// Records the sink may fall behind the chain before it skips ahead
    /// (and records a `sink-gap`).
    pub spool_max_records: u64,
    /// Repeats of one violation within this window become one alert with
    /// a count (`None`: every occurrence is sent).
    pub throttle: Option<Duration>,
    /// Each send's time limit.
    pub timeout: Duration,
    /// Longest wait between retries.
    pub retry_max: Duration,
}

impl SinkConfig {
    /// The destination type's name, as configured.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self.destination {
            Destination::Syslog { .. } => "syslog",
            Destination::File { .. } => "file",
            Destination::Elasticsearch { .. } => "elasticsearch",
            Destination::SplunkHec { .. } => "splunk-hec",
            Destination::Webhook { .. } => "webhook",
        }
    }
}

/// Validates every `[[sink]]`.
///
/// # Errors
/// The first problem, with its line.
pub fn validate(raw: &[RawSink], at: &Locator<'_>) -> Result<Vec<SinkConfig>, ConfigError> {
    let mut out: Vec<SinkConfig> = Vec::new();
    for s in raw {
        // The name first (a repeated name is the first thing to fix), then
        // the rest of the table.
        let name = valid_name(s, at)?;
        if out.iter().any(|o| o.name == name) {
            return Err(at.err(
                s.name.span(),
                "sink.name",
                &format!("a sink named \"{name}\" is already defined"),
            ));
        }
        out.push(SinkConfig::validate(s, at)?);
    }
    Ok(out)
}

impl SinkConfig {
    /// Validates one `[[sink]]`: its name, where it sends, in which
    /// format, which alerts, TLS, and the delivery limits.
    ///
    /// # Errors
    /// The first problem, with its line.
    pub fn validate(s: &RawSink, at: &Locator<'_>) -> Result<Self, ConfigError> {
        let name = valid_name(s, at)?;
        let v = Fields { s, at, name: &name };
        let (destination, formats, default_format) = v.destination()?;
        v.no_stray_fields()?;
        let format = v.format(formats, default_format)?;
        let receives = v.receives()?;
        let tls = v.tls()?;
        let batch_max = match &s.batch_max {
            None => 500,
            Some(n) if (1..=10_000).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                return Err(at.err(
                    n.span(),
                    &v.field("batch_max"),
                    "must be between 1 and 10000",
                ));
            }
        };
        let throttle = v.ranged(s.throttle_secs.as_ref(), "throttle_secs", 60, 0..=86_400)?;
        let spool_max_records = v.ranged(
            s.spool_max_records.as_ref(),
            "spool_max_records",
            DEFAULT_SPOOL_RECORDS,
            1_000..=1_000_000_000,
        )?;
        let timeout = v.ranged(s.timeout_secs.as_ref(), "timeout_secs", 10, 1..=300)?;
        let retry_max = v.ranged(
            s.retry_max_secs.as_ref(),
            "retry_max_secs",
            DEFAULT_RETRY_MAX.as_secs(),
            1..=3600,
        )?;
        Ok(SinkConfig {
            name,
            destination,
            format,
            receives,
            tls,
            batch_max,
            spool_max_records,
            throttle: (throttle > 0).then(|| Duration::from_secs(throttle)),
            timeout: Duration::from_secs(timeout),
            retry_max: Duration::from_secs(retry_max),
        })
    }
}

/// The sink's name, if it is one a metric label and a file name can carry.
fn valid_name(s: &RawSink, at: &Locator<'_>) -> Result<String, ConfigError> {
    let name = s.name.get_ref();
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(at.err(
            s.name.span(),
            "sink.name",
            "must be 1-64 characters of a-z, 0-9 and '-' (it names the sink's metrics and cursor file)",
        ));
    }
    Ok(name.clone())
}

/// One `[[sink]]` table under validation: its values, and errors that
/// name the sink.
struct Fields<'a> {
    s: &'a RawSink,
    at: &'a Locator<'a>,
    name: &'a str,
}

/// A destination, the formats it sends, and the one it sends by default.
type Sends = (Destination, &'static [&'static str], &'static str);

impl Fields<'_> {
    fn kind(&self) -> &str {
        self.s.kind.get_ref()
    }

    /// `sink "<name>".<f>`, for errors.
    fn field(&self, f: &str) -> String {
        format!("sink \"{}\".{f}", self.name)
    }

    /// An error about a setting the table lacks or should not have: at the
    /// sink's `type`.
    fn at_type(&self, f: &str, message: &str) -> ConfigError {
        self.at.err(self.s.kind.span(), &self.field(f), message)
    }

    fn need(
        &self,
        v: Option<&Spanned<String>>,
        f: &str,
        what: &str,
    ) -> Result<String, ConfigError> {
        v.map(|v| v.get_ref().clone())
            .ok_or_else(|| self.at_type(f, &format!("is required: {what}")))
    }

    fn abs(&self, v: Option<&Spanned<String>>, f: &str) -> Result<Option<PathBuf>, ConfigError> {
        match v {
            None => Ok(None),
            Some(p) if std::path::Path::new(p.get_ref()).is_absolute() => {
                Ok(Some(PathBuf::from(p.get_ref())))
            }
            Some(p) => Err(self
                .at
                .err(p.span(), &self.field(f), "must be an absolute path")),
        }
    }

    fn http_url(&self) -> Result<String, ConfigError> {
        let url = self.need(
            self.s.url.as_ref(),
            "url",
            "the receiver's http:// or https:// URL",
        )?;
        let span = self.s.url.as_ref().map(Spanned::span);
        match url.parse::<hyper::Uri>() {
            Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() => {
                Ok(url)
            }
            _ => Err(self.at.err_opt(
                span,
                &self.field("url"),
                &format!("\"{url}\" is not an http:// or https:// URL"),
            )),
        }
    }

    fn ranged(
        &self,
        v: Option<&Spanned<u64>>,
        f: &str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
    ) -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(n) if range.contains(n.get_ref()) => Ok(*n.get_ref()),
            Some(n) => Err(self.at.err(
                n.span(),
                &self.field(f),
                &format!("must be between {} and {}", range.start(), range.end()),
            )),
        }
    }

    fn destination(&self) -> Result<Sends, ConfigError> {
        let s = self.s;
        Ok(match self.kind() {
            "syslog" => (self.syslog()?, &["rfc5424", "cef"], "rfc5424"),
            "file" => {
                let path = self
                    .abs(s.path.as_ref(), "path")?
                    .ok_or_else(|| self.at_type("path", "is required: the file to append to"))?;
                (Destination::File { path }, &["ecs", "ocsf", "cef"], "ecs")
            }
            "elasticsearch" => (
                Destination::Elasticsearch {
                    url: self.http_url()?,
                    index: s
                        .index
                        .as_ref()
                        .map_or_else(|| "residency-alerts".to_owned(), |i| i.get_ref().clone()),
                    api_key_file: self.abs(s.api_key_file.as_ref(), "api_key_file")?,
                },
                &["ecs"],
                "ecs",
            ),
            "splunk-hec" => (
                Destination::SplunkHec {
                    url: self.http_url()?,
                    token_file: self.abs(s.token_file.as_ref(), "token_file")?.ok_or_else(
                        || self.at_type("token_file", "is required: a file holding the HEC token"),
                    )?,
                    index: s.index.as_ref().map(|i| i.get_ref().clone()),
                    sourcetype: s
                        .sourcetype
                        .as_ref()
                        .map_or_else(|| "residency".to_owned(), |t| t.get_ref().clone()),
                },
                &["ecs", "ocsf", "cef"],
                "ecs",
            ),
            "webhook" => (
                Destination::Webhook {
                    url: self.http_url()?,
                    secret_file: self
                        .abs(s.secret_file.as_ref(), "secret_file")?
                        .ok_or_else(|| {
                            self.at_type(
                                "secret_file",
                                "is required: a file holding the signing secret (whsec_...)",
                            )
                        })?,
                },
                &["ecs", "ocsf"],
                "ecs",
            ),
            other => {
                return Err(self.at_type(
                    "type",
                    &format!(
                        "\"{other}\" is not one of syslog, file, elasticsearch, splunk-hec, webhook"
                    ),
                ));
            }
        })
    }

    fn syslog(&self) -> Result<Destination, ConfigError> {
        let s = self.s;
        let address = self.need(
            s.address.as_ref(),
            "address",
            "host:port of the syslog receiver",
        )?;
        if !address.contains(':') {
            return Err(self.at.err_opt(
                s.address.as_ref().map(Spanned::span),
                &self.field("address"),
                &format!("\"{address}\" has no port (e.g. \"siem.example:6514\")"),
            ));
        }
        let protocol = self.need(s.protocol.as_ref(), "protocol", "udp, tcp or tls")?;
        if !matches!(protocol.as_str(), "udp" | "tcp" | "tls") {
            return Err(self.at.err_opt(
                s.protocol.as_ref().map(Spanned::span),
                &self.field("protocol"),
                &format!("\"{protocol}\" is not one of udp, tcp, tls"),
            ));
        }
        let facility = s.facility.as_ref().map_or(16, |f| *f.get_ref());
        if facility > 23 {
            return Err(self.at.err_opt(
                s.facility.as_ref().map(Spanned::span),
                &self.field("facility"),
                "must be 0-23 (16 is local0, the default)",
            ));
        }
        Ok(Destination::Syslog {
            address,
            protocol,
            facility,
            enterprise_number: s.enterprise_number.as_ref().map_or(32473, |n| *n.get_ref()),
        })
    }

    /// Fields that belong to other types are mistakes worth naming.
    fn no_stray_fields(&self) -> Result<(), ConfigError> {
        let (s, kind) = (self.s, self.kind());
        let stray: &[(&str, bool)] = &[
            ("address", s.address.is_some() && kind != "syslog"),
            ("protocol", s.protocol.is_some() && kind != "syslog"),
            ("facility", s.facility.is_some() && kind != "syslog"),
            ("path", s.path.is_some() && kind != "file"),
            ("url", s.url.is_some() && matches!(kind, "syslog" | "file")),
            ("token_file", s.token_file.is_some() && kind != "splunk-hec"),
            ("secret_file", s.secret_file.is_some() && kind != "webhook"),
            (
                "api_key_file",
                s.api_key_file.is_some() && kind != "elasticsearch",
            ),
            (
                "index",
                s.index.is_some() && !matches!(kind, "elasticsearch" | "splunk-hec"),
            ),
            ("sourcetype", s.sourcetype.is_some() && kind != "splunk-hec"),
            (
                "enterprise_number",
                s.enterprise_number.is_some() && kind != "syslog",
            ),
        ];
        match stray.iter().find(|(_, bad)| *bad) {
            Some((f, _)) => {
                Err(self.at_type(f, &format!("does not apply to a sink of type \"{kind}\"")))
            }
            None => Ok(()),
        }
    }

    fn format(&self, formats: &[&str], default: &str) -> Result<String, ConfigError> {
        match &self.s.format {
            None => Ok(default.to_owned()),
            Some(f) if formats.contains(&f.get_ref().as_str()) => Ok(f.get_ref().clone()),
            Some(f) => Err(self.at.err(
                f.span(),
                &self.field("format"),
                &format!(
                    "\"{}\" is not a format a {} sink sends (one of: {})",
                    f.get_ref(),
                    self.kind(),
                    formats.join(", ")
                ),
            )),
        }
    }

    fn receives(&self) -> Result<Receives, ConfigError> {
        let Some(list) = &self.s.receives else {
            return Ok(Receives {
                violations: true,
                checkpoints: true,
                gaps: true,
                ..Receives::default()
            });
        };
        if list.get_ref().is_empty() {
            return Err(self.at.err(
                list.span(),
                &self.field("receives"),
                "is empty: name at least one of violations, flows, checkpoints, gaps",
            ));
        }
        let mut receives = Receives::default();
        for r in list.get_ref() {
            match r.get_ref().as_str() {
                "violations" => receives.violations = true,
                "flows" => receives.flows = true,
                "checkpoints" => receives.checkpoints = true,
                "gaps" => receives.gaps = true,
                other => {
                    return Err(self.at.err(
                        r.span(),
                        &self.field("receives"),
                        &format!("\"{other}\" is not one of violations, flows, checkpoints, gaps"),
                    ));
                }
            }
        }
        Ok(receives)
    }

    fn tls(&self) -> Result<Tls, ConfigError> {
        let s = self.s;
        let tls = Tls {
            ca_file: self.abs(s.ca_file.as_ref(), "ca_file")?,
            cert_file: self.abs(s.cert_file.as_ref(), "cert_file")?,
            key_file: self.abs(s.key_file.as_ref(), "key_file")?,
            server_name: s.server_name.as_ref().map(|n| n.get_ref().clone()),
        };
        // TLS settings where nothing is encrypted are a mistake to name.
        let kind = self.kind();
        let plain = kind == "file"
            || (kind == "syslog" && s.protocol.as_ref().is_some_and(|p| p.get_ref() != "tls"))
            || s.url
                .as_ref()
                .is_some_and(|u| u.get_ref().starts_with("http://"));
        if plain
            && let Some(f) = [
                ("ca_file", tls.ca_file.is_some()),
                ("cert_file", tls.cert_file.is_some()),
                ("key_file", tls.key_file.is_some()),
                ("server_name", tls.server_name.is_some()),
            ]
            .iter()
            .find(|(_, set)| *set)
        {
            return Err(self.at_type(
                f.0,
                "applies only to TLS (protocol = \"tls\", or an https:// URL)",
            ));
        }
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(self.at_type(
                if tls.cert_file.is_some() {
                    "key_file"
                } else {
                    "cert_file"
                },
                "a client certificate needs both cert_file and key_file",
            ));
        }
        Ok(tls)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The `[[sink]]` tables of a file, as the daemon hands them over.
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        sink: Vec<RawSink>,
    }

    fn sinks(text: &str) -> Result<Vec<SinkConfig>, String> {
        let at = Locator::new(text, "test.toml");
        at.parse::<File>()
            .and_then(|f| validate(&f.sink, &at))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_type_parses_with_its_defaults() {
        let s = sinks(
            r#"
[[sink]]
name = "soc"
type = "syslog"
address = "127.0.0.1:6514"
protocol = "tls"
ca_file = "/etc/ca.pem"

[[sink]]
name = "lines"
type = "file"
path = "/var/log/residency/alerts.json"
format = "ocsf"
receives = ["flows", "violations"]

[[sink]]
name = "es"
type = "elasticsearch"
url = "https://127.0.0.1:9200"

[[sink]]
name = "splunk"
type = "splunk-hec"
url = "https://127.0.0.1:8088"
token_file = "/etc/residency/hec.token"
throttle_secs = 0

[[sink]]
name = "hook"
type = "webhook"
url = "https://127.0.0.1:9000/alerts"
secret_file = "/etc/residency/webhook.secret"
"#,
        )
        .unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].format, "rfc5424");
        assert_eq!(s[0].kind(), "syslog");
        assert!(s[0].receives.violations && s[0].receives.checkpoints && !s[0].receives.flows);
        assert_eq!(s[0].throttle, Some(Duration::from_mins(1)));
        assert_eq!(s[0].tls.ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(s[1].format, "ocsf");
        assert!(s[1].receives.flows && !s[1].receives.checkpoints);
        assert!(
            matches!(&s[2].destination, Destination::Elasticsearch { index, .. } if index == "residency-alerts")
        );
        assert_eq!(s[3].throttle, None);
        assert_eq!(s[4].format, "ecs");
    }

    #[test]
    fn mistakes_are_named_with_their_line() {
        for (text, expect) in [
            (
                "[[sink]]\nname = \"a\"\ntype = \"carrier-pigeon\"\n",
                "not one of syslog",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"syslog\"\nprotocol = \"udp\"\n",
                "address",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"syslog\"\naddress = \"h\"\nprotocol = \"udp\"\n",
                "no port",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"syslog\"\naddress = \"h:514\"\nprotocol = \"sctp\"\n",
                "udp, tcp, tls",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"rel/x\"\n",
                "absolute",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\nformat = \"rfc5424\"\n",
                "not a format a file sink",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"webhook\"\nurl = \"ftp://x\"\nsecret_file = \"/s\"\n",
                "not an http",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"webhook\"\nurl = \"https://x\"\n",
                "secret_file",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\nreceives = [\"everything\"]\n",
                "not one of violations",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\nreceives = []\n",
                "empty",
            ),
            (
                "[[sink]]\nname = \"A b\"\ntype = \"file\"\npath = \"/x\"\n",
                "a-z",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\n[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"/y\"\n",
                "already defined",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\naddress = \"h:1\"\n",
                "does not apply",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\nbatch_max = 0\n",
                "between 1 and 10000",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"syslog\"\naddress = \"h:6514\"\nprotocol = \"tls\"\ncert_file = \"/c\"\n",
                "both cert_file and key_file",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"syslog\"\naddress = \"h:514\"\nprotocol = \"tcp\"\nca_file = \"/ca\"\n",
                "applies only to TLS",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"webhook\"\nurl = \"http://h/\"\nsecret_file = \"/s\"\nca_file = \"/ca\"\n",
                "applies only to TLS",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\nenterprise_number = 1\n",
                "does not apply",
            ),
            (
                "[[sink]]\nname = \"a\"\ntype = \"file\"\npath = \"/x\"\nspool = 3\n",
                "unknown field",
            ),
        ] {
            let e = sinks(text).unwrap_err();
            assert!(e.contains(expect), "{text:?}: {e}");
            assert!(e.contains("test.toml"), "{e}");
        }
    }
}
