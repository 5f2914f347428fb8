//! Query parameters: what each endpoint takes, their types, and parsing
//! that names the parameter in every error.
//!
//! The same [`Param`] lists feed the route table (so the `OpenAPI`
//! document), and the parser, which refuses any parameter its endpoint does
//! not list: a misspelt filter is an error, never a silently wider answer.

use std::net::IpAddr;

use axum::http::Uri;
use serde_json::{Value as Json, json};

use super::errors::Problem;
use residency_evidence::{
    Filter, Order, Page, ViolationState,
    query::{DEFAULT_PAGE, MAX_PAGE, ViolationFilter},
};

/// Longest text value a filter takes.
const MAX_TEXT: usize = 256;

/// The type of a parameter: how it is parsed, and its `OpenAPI` schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// RFC 3339 timestamp.
    Time,
    /// Non-empty text of at most 256 bytes.
    Text,
    /// ISO 3166 alpha-2, case-insensitive.
    Country,
    /// `allowed`, `flagged` or `blocked`.
    Verdict,
    /// `open`, `acknowledged` or `resolved`.
    State,
    /// IPv4 or IPv6 address.
    Ip,
    /// A Kubernetes namespace: an RFC 1123 label (at most 63 of `a-z`,
    /// `0-9` and `-`, alphanumeric at both ends).
    Namespace,
    /// A Kubernetes pod name: an RFC 1123 subdomain (at most 253 of `a-z`,
    /// `0-9`, `-` and `.`, alphanumeric at both ends).
    Pod,
    /// The `next` of the previous page.
    Cursor,
    /// Page size, 1..=1000.
    Limit,
    /// `desc` or `asc`.
    Order,
    /// A record's sequence number (path).
    Seq,
    /// A violation's id (path).
    Id,
}

const VERDICTS: [&str; 3] = ["allowed", "flagged", "blocked"];
const STATES: [&str; 3] = ["open", "acknowledged", "resolved"];
const ORDERS: [&str; 2] = ["desc", "asc"];

impl Kind {
    /// The `OpenAPI` schema of a value of this kind.
    #[must_use]
    pub fn schema(self) -> Json {
        match self {
            Kind::Time => {
                json!({ "type": "string", "format": "date-time", "example": "2026-11-22T10:00:00Z" })
            }
            Kind::Text => json!({ "type": "string", "minLength": 1, "maxLength": MAX_TEXT }),
            Kind::Country => {
                json!({ "type": "string", "pattern": "^[A-Za-z]{2}$", "example": "DE" })
            }
            Kind::Verdict => json!({ "type": "string", "enum": VERDICTS }),
            Kind::Namespace => json!({
                "type": "string", "maxLength": 63, "pattern": LABEL_PATTERN, "example": "crm",
            }),
            Kind::Pod => json!({
                "type": "string", "maxLength": 253, "pattern": SUBDOMAIN_PATTERN,
                "example": "sync-7d9f8b6c4-x2x9q",
            }),
            Kind::State => json!({ "type": "string", "enum": STATES }),
            Kind::Ip => {
                json!({ "type": "string", "description": "IPv4 or IPv6", "example": "203.0.113.7" })
            }
            Kind::Cursor | Kind::Seq => {
                json!({ "type": "integer", "format": "int64", "minimum": 0 })
            }
            Kind::Id => json!({ "type": "integer", "format": "int64", "minimum": 1 }),
            Kind::Limit => {
                json!({ "type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE })
            }
            Kind::Order => json!({ "type": "string", "enum": ORDERS, "default": "desc" }),
        }
    }

    /// Parses `raw` as this kind; the error names `name`.
    ///
    /// # Errors
    /// A 400 that names the parameter and says what was expected.
    pub fn parse(self, name: &str, raw: &str) -> Result<Value, Problem> {
        let bad = |what: &str| Problem::bad_request(format!("{name}: \"{raw}\" {what}"));
        if raw.is_empty() {
            return Err(Problem::bad_request(format!(
                "{name}: empty value (leave the parameter out instead)"
            )));
        }
        Ok(match self {
            Kind::Time => Value::Time(raw.parse::<jiff::Timestamp>().map_err(|_| {
                bad("is not an RFC 3339 time with an offset, e.g. 2026-11-22T10:00:00Z")
            })?),
            Kind::Text => {
                if raw.len() > MAX_TEXT {
                    return Err(Problem::bad_request(format!(
                        "{name}: longer than {MAX_TEXT} bytes"
                    )));
                }
                Value::Text(raw.to_owned())
            }
            Kind::Country => {
                if raw.len() != 2 || !raw.bytes().all(|b| b.is_ascii_alphabetic()) {
                    return Err(bad("is not an ISO 3166 alpha-2 country code, e.g. DE"));
                }
                Value::Text(raw.to_ascii_uppercase())
            }
            Kind::Namespace => {
                if raw.len() > 63 || !rfc1123(raw, false) {
                    return Err(bad(
                        "is not a Kubernetes namespace: at most 63 of a-z, 0-9 and -, \
                         beginning and ending with a letter or digit",
                    ));
                }
                Value::Text(raw.to_owned())
            }
            Kind::Pod => {
                if raw.len() > 253 || !rfc1123(raw, true) {
                    return Err(bad(
                        "is not a Kubernetes pod name: at most 253 of a-z, 0-9, - and ., \
                         beginning and ending with a letter or digit",
                    ));
                }
                Value::Text(raw.to_owned())
            }
            Kind::Verdict => Value::Text(
                VERDICTS
                    .iter()
                    .find(|v| **v == raw)
                    .ok_or_else(|| bad("is not a verdict: allowed, flagged or blocked"))?
                    .to_string(),
            ),
            Kind::State => {
                Value::State(ViolationState::parse(raw).ok_or_else(|| {
                    bad("is not a violation state: open, acknowledged or resolved")
                })?)
            }
            Kind::Ip => Value::Ip(
                raw.parse()
                    .map_err(|_| bad("is not an IPv4 or IPv6 address"))?,
            ),
            Kind::Cursor => Value::Number(raw.parse().map_err(|_| {
                bad("is not a cursor: pass the \"next\" number of the previous page")
            })?),
            Kind::Seq => Value::Number(
                raw.parse()
                    .map_err(|_| bad("is not a record sequence number"))?,
            ),
            Kind::Id => {
                let id: i64 = raw
                    .parse()
                    .ok()
                    .filter(|id| *id > 0)
                    .ok_or_else(|| bad("is not a violation id (a positive number)"))?;
                Value::Id(id)
            }
            Kind::Limit => {
                let n: u64 = raw
                    .parse()
                    .map_err(|_| bad(&format!("is not a number in 1..={MAX_PAGE}")))?;
                Value::Limit(
                    u32::try_from(n)
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| bad(&format!("is outside 1..={MAX_PAGE}")))?,
                )
            }
            Kind::Order => Value::Order(match raw {
                "desc" => Order::Desc,
                "asc" => Order::Asc,
                _ => return Err(bad("is not an order: desc (newest first) or asc")),
            }),
        })
    }
}

/// An RFC 1123 label (or, with `dots`, a subdomain), as Kubernetes
/// validates namespace and pod names; the caller checks the length.
fn rfc1123(s: &str, dots: bool) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter()
            .all(|c| alnum(c) || *c == b'-' || (dots && *c == b'.'))
}

/// [`Kind::Namespace`]'s pattern, for the `OpenAPI` document.
const LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// [`Kind::Pod`]'s pattern.
const SUBDOMAIN_PATTERN: &str = "^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$";

/// A parsed parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Time(jiff::Timestamp),
    Text(String),
    Ip(IpAddr),
    State(ViolationState),
    Number(u64),
    Id(i64),
    Limit(u32),
    Order(Order),
}

/// A documented parameter.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub description: &'static str,
}

pub const FROM: Param = Param {
    name: "from",
    kind: Kind::Time,
    description: "Only at or after this time (RFC 3339). For violations: last seen at or after.",
};
pub const TO: Param = Param {
    name: "to",
    kind: Kind::Time,
    description: "Only before this time (RFC 3339). For violations: first seen before.",
};
pub const TENANT: Param = Param {
    name: "tenant",
    kind: Kind::Text,
    description: "Only flows that carry this tenant's data.",
};
pub const WORKLOAD: Param = Param {
    name: "workload",
    kind: Kind::Text,
    description: "Only this workload, by name.",
};
pub const ROLE: Param = Param {
    name: "role",
    kind: Kind::Text,
    description: "Only workloads of this role (llm, crm-sync, logging, backup, ...).",
};
pub const COUNTRY: Param = Param {
    name: "country",
    kind: Kind::Country,
    description: "Only destinations the kernel judged to be in this country (ISO 3166 alpha-2, any case).",
};
pub const VERDICT: Param = Param {
    name: "verdict",
    kind: Kind::Verdict,
    description: "Only this verdict.",
};
pub const DST_IP: Param = Param {
    name: "dst_ip",
    kind: Kind::Ip,
    description: "Only this destination address.",
};
pub const DST_NAME: Param = Param {
    name: "dst_name",
    kind: Kind::Text,
    description: "Only this destination host name (when one was recorded).",
};
pub const PROVIDER: Param = Param {
    name: "provider",
    kind: Kind::Text,
    description: "Only transfers to this provider, as the endpoint catalog names it (`unlisted`: \
                  destinations the catalog does not list, or whose name is not known).",
};
pub const NAMESPACE: Param = Param {
    name: "namespace",
    kind: Kind::Namespace,
    description: "Only flows from pods of this Kubernetes namespace (`orchestrator.namespace`).",
};
pub const POD: Param = Param {
    name: "pod",
    kind: Kind::Pod,
    description: "Only flows from this Kubernetes pod, by name (`orchestrator.resource.name`). \
                  For violations: the pod of the first occurrence.",
};
pub const STATE: Param = Param {
    name: "state",
    kind: Kind::State,
    description: "Only violations in this state.",
};
pub const CURSOR: Param = Param {
    name: "cursor",
    kind: Kind::Cursor,
    description: "The `next` of the previous page; leave out for the first page.",
};
pub const LIMIT: Param = Param {
    name: "limit",
    kind: Kind::Limit,
    description: "Page size.",
};
pub const ORDER: Param = Param {
    name: "order",
    kind: Kind::Order,
    description: "`desc`: newest first (the default); `asc`: oldest first.",
};
pub const SEQ: Param = Param {
    name: "seq",
    kind: Kind::Seq,
    description: "The record's sequence number in the chain.",
};
pub const ID: Param = Param {
    name: "id",
    kind: Kind::Id,
    description: "The violation's id.",
};

/// `GET /v1/flows`.
pub const FLOWS: &[Param] = &[
    FROM, TO, TENANT, WORKLOAD, ROLE, COUNTRY, VERDICT, DST_IP, DST_NAME, NAMESPACE, POD, CURSOR,
    LIMIT, ORDER,
];
/// `GET /v1/violations`.
pub const VIOLATIONS: &[Param] = &[
    FROM, TO, TENANT, WORKLOAD, ROLE, COUNTRY, VERDICT, DST_IP, DST_NAME, NAMESPACE, POD, STATE,
    CURSOR, LIMIT, ORDER,
];
/// `GET /v1/transfers/summary`.
pub const TRANSFERS: &[Param] = &[
    FROM, TO, TENANT, ROLE, COUNTRY, VERDICT, PROVIDER, NAMESPACE,
];
/// `GET /v1/evidence/export`.
pub const EXPORT: &[Param] = &[FROM, TO];

/// A request's query, checked against what its endpoint takes.
#[derive(Debug, Default)]
pub struct Query {
    values: Vec<(&'static str, Value)>,
}

impl Query {
    /// Parses the query of `uri`: every parameter must be in `allowed`,
    /// given once, and of the right kind.
    ///
    /// # Errors
    /// A 400 naming the first parameter that is wrong.
    pub fn parse(uri: &Uri, allowed: &'static [Param]) -> Result<Self, Problem> {
        let pairs: Vec<(String, String)> = axum::extract::Query::try_from_uri(uri)
            .map(|axum::extract::Query(q)| q)
            .map_err(|e| Problem::bad_request(format!("query string: {}", e.body_text())))?;
        let mut values: Vec<(&'static str, Value)> = Vec::with_capacity(pairs.len());
        for (name, raw) in pairs {
            let Some(param) = allowed.iter().find(|p| p.name == name) else {
                let names: Vec<&str> = allowed.iter().map(|p| p.name).collect();
                return Err(Problem::bad_request(if names.is_empty() {
                    format!(
                        "unknown query parameter \"{name}\": {} takes none",
                        uri.path()
                    )
                } else {
                    format!(
                        "unknown query parameter \"{name}\": {} takes {}",
                        uri.path(),
                        names.join(", ")
                    )
                }));
            };
            if values.iter().any(|(n, _)| *n == param.name) {
                return Err(Problem::bad_request(format!(
                    "{name}: given more than once"
                )));
            }
            values.push((param.name, param.kind.parse(param.name, &raw)?));
        }
        let q = Query { values };
        if let (Some(from), Some(to)) = (q.time("from"), q.time("to"))
            && from >= to
        {
            return Err(Problem::bad_request(format!(
                "from: {from} is not before to ({to})"
            )));
        }
        Ok(q)
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.values.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    fn text(&self, name: &str) -> Option<String> {
        match self.get(name) {
            Some(Value::Text(t)) => Some(t.clone()),
            _ => None,
        }
    }

    /// The `from` or `to` bound.
    #[must_use]
    pub fn time(&self, name: &str) -> Option<jiff::Timestamp> {
        match self.get(name) {
            Some(Value::Time(t)) => Some(*t),
            _ => None,
        }
    }

    /// The record filters.
    #[must_use]
    pub fn filter(&self) -> Filter {
        Filter {
            from: self.time("from"),
            to: self.time("to"),
            tenant: self.text("tenant"),
            workload: self.text("workload"),
            role: self.text("role"),
            country: self.text("country"),
            verdict: self.text("verdict"),
            dst_ip: match self.get("dst_ip") {
                Some(Value::Ip(ip)) => Some(*ip),
                _ => None,
            },
            dst_name: self.text("dst_name"),
            provider: self.text("provider"),
            namespace: self.text("namespace"),
            pod: self.text("pod"),
        }
    }

    /// The violation filters.
    #[must_use]
    pub fn violation_filter(&self) -> ViolationFilter {
        ViolationFilter {
            state: match self.get("state") {
                Some(Value::State(s)) => Some(*s),
                _ => None,
            },
            records: self.filter(),
        }
    }

    /// The page asked for.
    #[must_use]
    pub fn page(&self) -> Page {
        Page {
            cursor: match self.get("cursor") {
                Some(Value::Number(n)) => Some(*n),
                _ => None,
            },
            limit: match self.get("limit") {
                Some(Value::Limit(n)) => *n,
                _ => DEFAULT_PAGE,
            },
            order: match self.get("order") {
                Some(Value::Order(o)) => *o,
                _ => Order::Desc,
            },
        }
    }
}
