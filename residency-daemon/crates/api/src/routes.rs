//! The route table: the one list of what the API serves.
//!
//! The router is built from it (each [`Endpoint`] maps to its handler in
//! one exhaustive `match`), the `OpenAPI` document is generated from it,
//! authentication reads which routes are public from it, and the query
//! parser refuses any parameter it does not list. A route cannot be served
//! without being documented, nor documented without being served; the
//! tests check both through the real router.

use super::params::{self, Param};

/// An HTTP method the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
}

impl Method {
    /// As on the wire: `GET`, `POST`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }

    /// As `OpenAPI` writes it: `get`, `post`.
    #[must_use]
    pub fn lower(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
        }
    }

    /// For axum's router.
    #[must_use]
    pub fn filter(self) -> axum::routing::MethodFilter {
        match self {
            Method::Get => axum::routing::MethodFilter::GET,
            Method::Post => axum::routing::MethodFilter::POST,
        }
    }
}

/// What a route does; each has one handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    Flows,
    Flow,
    Violations,
    Violation,
    Acknowledge,
    Resolve,
    Transfers,
    Policy,
    Checkpoint,
    Proof,
    PublicKey,
    Export,
}

/// One possible answer of a route.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: u16,
    /// A schema under `components.schemas`.
    pub schema: &'static str,
    pub description: &'static str,
}

/// The success answer of a route.
#[derive(Debug, Clone, Copy)]
pub struct Reply {
    pub media: &'static str,
    /// A schema under `components.schemas`.
    pub schema: &'static str,
    pub description: &'static str,
}

/// One route.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: Method,
    /// In axum's and `OpenAPI`'s shared syntax: `/v1/flows/{seq}`.
    pub path: &'static str,
    pub endpoint: Endpoint,
    /// Served without a token or peer check.
    pub public: bool,
    pub tag: &'static str,
    pub summary: &'static str,
    pub description: &'static str,
    pub path_params: &'static [Param],
    pub query: &'static [Param],
    /// The JSON request body's schema, if it takes one.
    pub body: Option<&'static str>,
    pub reply: Reply,
    /// Other answers, beyond the 401/403 of every authenticated route.
    pub errors: &'static [Answer],
}

pub const JSON: &str = "application/json";
/// What `prometheus_client` renders.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TAR: &str = "application/x-tar";

const E400: Answer = Answer {
    status: 400,
    schema: "Error",
    description: "A parameter, or the body, is wrong; the error names it.",
};
const E404_RECORD: Answer = Answer {
    status: 404,
    schema: "Error",
    description: "No record has this sequence number (never written, or pruned).",
};
const E404_VIOLATION: Answer = Answer {
    status: 404,
    schema: "Error",
    description: "No violation has this id.",
};
const E404_CHECKPOINT: Answer = Answer {
    status: 404,
    schema: "Error",
    description: "No checkpoint has been signed yet.",
};
const E409: Answer = Answer {
    status: 409,
    schema: "Error",
    description: "The violation's state does not allow this (e.g. acknowledging a resolved one).",
};
const E413: Answer = Answer {
    status: 413,
    schema: "Error",
    description: "The body is larger than 16 KiB.",
};
const E415: Answer = Answer {
    status: 415,
    schema: "Error",
    description: "The body is not sent as application/json.",
};
const E500: Answer = Answer {
    status: 500,
    schema: "Error",
    description: "The evidence store failed (the daemon logs why).",
};
const E429: Answer = Answer {
    status: 429,
    schema: "Error",
    description: "Another export is running; one runs at a time.",
};
const E503: Answer = Answer {
    status: 503,
    schema: "Error",
    description: "The evidence store has stopped taking writes after a write failure.",
};
const READY_503: Answer = Answer {
    status: 503,
    schema: "Ready",
    description: "Not ready; `checks` and `error` say which check failed.",
};

/// Every route the API serves.
pub static ROUTES: &[Route] = &[
    Route {
        method: Method::Get,
        path: "/healthz",
        endpoint: Endpoint::Healthz,
        public: true,
        tag: "health",
        summary: "Liveness: 200 while the API serves",
        description: "Needs no token.",
        path_params: &[],
        query: &[],
        body: None,
        reply: Reply {
            media: JSON,
            schema: "Health",
            description: "The API is serving.",
        },
        errors: &[],
    },
    Route {
        method: Method::Get,
        path: "/readyz",
        endpoint: Endpoint::Readyz,
        public: true,
        tag: "health",
        summary: "Readiness: the kernel programs are attached and the store takes writes",
        description: "200 only when both hold; otherwise 503, naming the check that failed. \
                      Needs no token, like /healthz, so that a kubelet probe can ask; it says \
                      nothing but which checks hold.",
        path_params: &[],
        query: &[],
        body: None,
        reply: Reply {
            media: JSON,
            schema: "Ready",
            description: "Ready.",
        },
        errors: &[READY_503],
    },
    Route {
        method: Method::Get,
        path: "/metrics",
        endpoint: Endpoint::Metrics,
        public: false,
        tag: "health",
        summary: "Prometheus metrics (OpenMetrics text), prefixed residency_",
        description: "Decisions by verdict, kernel drops and submissions, ring-buffer lag, and the \
                      evidence store: records, commits, commit and ingest latency histograms, \
                      checkpoints, head sequence, size, pruned records, queued batches, write \
                      failures, whether it takes writes and since when, and records not stored \
                      while it did not.",
        path_params: &[],
        query: &[],
        body: None,
        reply: Reply {
            media: OPENMETRICS,
            schema: "Text",
            description: "The metrics.",
        },
        errors: &[],
    },
    Route {
        method: Method::Get,
        path: "/v1/openapi.json",
        endpoint: Endpoint::OpenApi,
        public: false,
        tag: "meta",
        summary: "This document",
        description: "Generated from the same route table the router is built from.",
        path_params: &[],
        query: &[],
        body: None,
        reply: Reply {
            media: JSON,
            schema: "Object",
            description: "An OpenAPI 3.1 document.",
        },
        errors: &[],
    },
    Route {
        method: Method::Get,
        path: "/v1/flows",
        endpoint: Endpoint::Flows,
        public: false,
        tag: "flows",
        summary: "Decisions, filtered, newest first, a page at a time",
        description: "Pass `next` back as `cursor` for the following page; the last page has no \
                      `next`. Filters combine with AND. `namespace` and `pod` select flows \
                      from Kubernetes pods (`orchestrator.namespace`, \
                      `orchestrator.resource.name`).",
        path_params: &[],
        query: params::FLOWS,
        body: None,
        reply: Reply {
            media: JSON,
            schema: "RecordPage",
            description: "A page of records.",
        },
        errors: &[E400, E500],
    },
    Route {
        method: Method::Get,
        path: "/v1/flows/{seq}",
        endpoint: Endpoint::Flow,
        public: false,
        tag: "flows",
        summary: "One record of the chain by sequence number",
        description: "Any record: a decision, or a lifecycle record such as a violation's \
                      acknowledgement (whose `seq` the violation names).",
        path_params: &[params::SEQ],
        query: &[],
        body: None,
        reply: Reply {
            media: JSON,
            schema: "StoredRecord",
            description: "The record, its sequence number and chain hash.",
        },
        errors: &[E400, E404_RECORD, E500],
    },
    Route {
        method: Method::Get,
        path: "/v1/violations",
        endpoint: Endpoint::Violations,
        public: false,
        tag: "violations",
        summary: "Violations (repeated breaches of policy), newest first, a page at a time",
        description: "A violation groups the blocked or flagged flows of one workload to one \
                      destination under one rule until it is resolved. Each carries its NIS2 \
                      Art. 23 deadlines.",
        path_params: &[],
        query: params::VIOLATIONS,
        body: None,
        reply: Reply {
            media: JSON,
            schema: "ViolationPage",
            description: "A page of violations.",
        },
        errors: &[E400, E500],
    },
    Route {
        method: Method::Get,
        path: "/v1/violations/{id}",
        endpoint: Endpoint::Violation,
        public: false,
        tag: "violations",
        summary: "One violation",
        description: "",
        path_params: &[params::ID],
        query: &[],
        body: None,
        reply: Reply {
            media: JSON,
            schema: "Violation",
            description: "The violation.",
        },
        errors: &[E400, E404_VIOLATION, E500],
    },
    Route {
        method: Method::Post,
        path: "/v1/violations/{id}/ack",
        endpoint: Endpoint::Acknowledge,
        public: false,
        tag: "violations",
        summary: "Acknowledge an open violation, with a note",
        description: "Recorded in the chain (a `violation-acknowledged` record naming who: \
                      `token` for TCP clients, `uid:N` on the socket).",
        path_params: &[params::ID],
        query: &[],
        body: Some("Note"),
        reply: Reply {
            media: JSON,
            schema: "Violation",
            description: "The violation, acknowledged.",
        },
        errors: &[E400, E404_VIOLATION, E409, E413, E415, E500, E503],
    },
    Route {
        method: Method::Post,
        path: "/v1/violations/{id}/resolve",
        endpoint: Endpoint::Resolve,
        public: false,
        tag: "violations",
        summary: "Resolve an open or acknowledged violation, with a note",
        description: "Recorded in the chain (a `violation-resolved` record). A repeat of the \
                      same breach afterwards opens a new violation.",
        path_params: &[params::ID],
        query: &[],
        body: Some("Note"),
        reply: Reply {
            media: JSON,
            schema: "Violation",
            description: "The violation, resolved.",
        },
        errors: &[E400, E404_VIOLATION, E409, E413, E415, E500, E503],
    },
    Route {
        method: Method::Get,
        path: "/v1/transfers/summary",
        endpoint: Endpoint::Transfers,
        public: false,
        tag: "flows",
        summary: "The data-flow map: tenant x role x country x transfer basis x provider and \
                  service x Kubernetes namespace, counted",
        description: "Time bounds apply per UTC day. `verdict` keeps the rows with at least one \
                      flow of that verdict. `provider` and `service` come from the endpoint \
                      catalog entry of the destination's name; flows to destinations the \
                      catalog does not list count under provider `unlisted`, without a service. \
                      Flows from Kubernetes pods count per namespace (`namespace`; absent for \
                      flows of no pod), and `namespace` keeps that namespace's rows.",
        path_params: &[],
        query: params::TRANSFERS,
        body: None,
        reply: Reply {
            media: JSON,
            schema: "TransferSummary",
            description: "The rows.",
        },
        errors: &[E400, E500],
    },
    Route {
        method: Method::Get,
        path: "/v1/policy",
        endpoint: Endpoint::Policy,
        public: false,
        tag: "evidence",
        summary: "The policy in force and every version loaded before",
        description: "Read only: no endpoint changes policy.",
        path_params: &[],
        query: &[],
        body: None,
        reply: Reply {
            media: JSON,
            schema: "Policy",
            description: "`current` is the newest version (null before any was recorded); \
                          `history` lists all, newest first.",
        },
        errors: &[E500],
    },
    Route {
        method: Method::Get,
        path: "/v1/checkpoints/latest",
        endpoint: Endpoint::Checkpoint,
        public: false,
        tag: "evidence",
        summary: "The newest signed checkpoint, with the public key that verifies it",
        description: "",
        path_params: &[],
        query: &[],
        body: None,
        reply: Reply {
            media: JSON,
            schema: "Checkpoint",
            description: "The checkpoint.",
        },
        errors: &[E404_CHECKPOINT, E500],
    },
    Route {
        method: Method::Get,
        path: "/v1/checkpoints",
        endpoint: Endpoint::Proof,
        public: false,
        tag: "evidence",
        summary: "The signed checkpoints that cover the flows of a period",
        description: "The newest checkpoint signed before the period's first flow record and the \
                      oldest signed at or after its last: the second's signature covers every \
                      record of the period through the hash chain. A transfer report cites them; \
                      `residency evidence verify --bundle` checks them offline.",
        path_params: &[],
        query: params::EXPORT,
        body: None,
        reply: Reply {
            media: JSON,
            schema: "PeriodProof",
            description: "The period's first and last flow records and the checkpoints around \
                          them (each absent when there is none).",
        },
        errors: &[E400, E500],
    },
    Route {
        method: Method::Get,
        path: "/v1/evidence/public-key",
        endpoint: Endpoint::PublicKey,
        public: false,
        tag: "evidence",
        summary: "The store's Ed25519 public key",
        description: "Pin it, and give it to auditors: it verifies every checkpoint and export.",
        path_params: &[],
        query: &[],
        body: None,
        reply: Reply {
            media: JSON,
            schema: "PublicKey",
            description: "The key.",
        },
        errors: &[],
    },
    Route {
        method: Method::Get,
        path: "/v1/evidence/export",
        endpoint: Endpoint::Export,
        public: false,
        tag: "evidence",
        summary: "An export bundle (tar) that an auditor verifies offline",
        description: "The records in the time window with their chain hashes and the signed \
                      checkpoints that cover them. Without bounds: everything the store holds.",
        path_params: &[],
        query: params::EXPORT,
        body: None,
        reply: Reply {
            media: TAR,
            schema: "Binary",
            description: "The bundle, as an attachment.",
        },
        errors: &[E400, E429, E500, E503],
    },
];

/// Is the route at `path` (as matched: `/v1/flows/{seq}`) served without
/// authentication?
#[must_use]
pub fn is_public(path: &str) -> bool {
    ROUTES.iter().any(|r| r.public && r.path == path)
}
