//! The handlers, one per [`Endpoint`](super::routes::Endpoint).
//!
//! Store queries block (`SQLite`), so they run on tokio's blocking pool;
//! transitions go through the store's writer, which records them in the
//! chain.

use std::sync::Arc;

use axum::{
    Json,
    extract::State,
    http::{StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::json;

use super::{
    auth::Caller,
    errors::{JsonBody, PathParam, Problem},
    params::{self, Query},
    routes::{OPENMETRICS, TAR},
    state::Shared,
};
use residency_evidence::{EvidenceError, ViolationState, bundle, chain};

type S = State<Arc<Shared>>;

/// Longest note a transition takes, in bytes.
pub const MAX_NOTE: usize = 4096;

/// Runs a blocking store query off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, EvidenceError> + Send + 'static,
) -> Result<T, Problem> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Problem::store(e)),
        Err(e) => Err(Problem::internal(format!("the query failed: {e}"))),
    }
}

pub async fn healthz(uri: Uri) -> Result<Json<serde_json::Value>, Problem> {
    Query::parse(&uri, &[])?;
    Ok(Json(json!({ "status": "ok" })))
}

pub async fn readyz(State(s): S, uri: Uri) -> Result<Response, Problem> {
    Query::parse(&uri, &[])?;
    let attached = s.api.attached.get() == 1;
    let writable = s.api.reader.writable();
    let checks = json!({
        "kernel_programs_attached": attached,
        "evidence_store_writable": writable,
    });
    let failed: Vec<&str> = [
        (!attached).then_some("the kernel programs are not attached"),
        (!writable).then_some(
            "the evidence store takes no writes (writes fail: a full disk?); enforcement goes on, \
             records not stored are counted and a gap record is written when writes succeed \
             again (see the log and residency_store_records_not_stored)",
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    Ok(if failed.is_empty() {
        (
            StatusCode::OK,
            Json(json!({ "ready": true, "checks": checks })),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "checks": checks, "error": failed.join("; ") })),
        )
            .into_response()
    })
}

pub async fn metrics(State(s): S, uri: Uri) -> Result<Response, Problem> {
    Query::parse(&uri, &[])?;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &s.api.metrics)
        .map_err(|e| Problem::internal(format!("cannot render the metrics: {e}")))?;
    Ok(([(header::CONTENT_TYPE, OPENMETRICS)], text).into_response())
}

pub async fn openapi(State(s): S, uri: Uri) -> Result<Response, Problem> {
    Query::parse(&uri, &[])?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        s.openapi.clone(),
    )
        .into_response())
}

pub async fn flows(State(s): S, uri: Uri) -> Result<Response, Problem> {
    let q = Query::parse(&uri, params::FLOWS)?;
    let (filter, page) = (q.filter(), q.page());
    let reader = s.api.reader.clone();
    let found = blocking(move || reader.flows(&filter, &page)).await?;
    Ok(Json(found).into_response())
}

pub async fn flow(State(s): S, PathParam(seq): PathParam, uri: Uri) -> Result<Response, Problem> {
    Query::parse(&uri, &[])?;
    let params::Value::Number(seq) = params::SEQ.kind.parse("seq", &seq)? else {
        return Err(Problem::bad_request("seq: not a record sequence number"));
    };
    let reader = s.api.reader.clone();
    match blocking(move || reader.record(seq)).await? {
        Some(r) => Ok(Json(r).into_response()),
        None => Err(Problem::not_found(format!(
            "there is no record {seq} (never written, or pruned by retention)"
        ))),
    }
}

pub async fn violations(State(s): S, uri: Uri) -> Result<Response, Problem> {
    let q = Query::parse(&uri, params::VIOLATIONS)?;
    let (filter, page) = (q.violation_filter(), q.page());
    let reader = s.api.reader.clone();
    let found = blocking(move || reader.violations(&filter, &page)).await?;
    Ok(Json(found).into_response())
}

fn violation_id(raw: &str) -> Result<i64, Problem> {
    match params::ID.kind.parse("id", raw)? {
        params::Value::Id(id) => Ok(id),
        _ => Err(Problem::bad_request("id: not a violation id")),
    }
}

pub async fn violation(
    State(s): S,
    PathParam(id): PathParam,
    uri: Uri,
) -> Result<Response, Problem> {
    Query::parse(&uri, &[])?;
    let id = violation_id(&id)?;
    let reader = s.api.reader.clone();
    match blocking(move || reader.violation(id)).await? {
        Some(v) => Ok(Json(v).into_response()),
        None => Err(Problem::store(EvidenceError::NoViolation(id))),
    }
}

/// The body of an acknowledgement or resolution.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    /// Why: required, at most [`MAX_NOTE`] bytes.
    pub note: String,
}

async fn transition(
    s: &Shared,
    caller: Caller,
    id: &str,
    uri: &Uri,
    body: NoteBody,
    to: ViolationState,
) -> Result<Response, Problem> {
    Query::parse(uri, &[])?;
    let id = violation_id(id)?;
    let note = body.note.trim();
    if note.is_empty() {
        return Err(Problem::bad_request(
            "note: empty; say why (who looked, what was done)",
        ));
    }
    if note.len() > MAX_NOTE {
        return Err(Problem::bad_request(format!(
            "note: {} bytes, longer than {MAX_NOTE}",
            note.len()
        )));
    }
    let v = s
        .api
        .evidence
        .transition(id, to, note.to_owned(), caller.by())
        .await
        .map_err(Problem::store)?;
    Ok(Json(v).into_response())
}

pub async fn acknowledge(
    State(s): S,
    caller: Caller,
    PathParam(id): PathParam,
    uri: Uri,
    JsonBody(body): JsonBody<NoteBody>,
) -> Result<Response, Problem> {
    transition(&s, caller, &id, &uri, body, ViolationState::Acknowledged).await
}

pub async fn resolve(
    State(s): S,
    caller: Caller,
    PathParam(id): PathParam,
    uri: Uri,
    JsonBody(body): JsonBody<NoteBody>,
) -> Result<Response, Problem> {
    transition(&s, caller, &id, &uri, body, ViolationState::Resolved).await
}

pub async fn transfers(State(s): S, uri: Uri) -> Result<Response, Problem> {
    let q = Query::parse(&uri, params::TRANSFERS)?;
    let filter = q.filter();
    let reader = s.api.reader.clone();
    let items = blocking(move || reader.transfers(&filter)).await?;
    Ok(Json(json!({ "items": items })).into_response())
}

pub async fn policy(State(s): S, uri: Uri) -> Result<Response, Problem> {
    Query::parse(&uri, &[])?;
    let reader = s.api.reader.clone();
    let history = blocking(move || reader.policies()).await?;
    Ok(Json(json!({ "current": history.first(), "history": history })).into_response())
}

pub async fn checkpoint(State(s): S, uri: Uri) -> Result<Response, Problem> {
    Query::parse(&uri, &[])?;
    let reader = s.api.reader.clone();
    match blocking(move || reader.latest_checkpoint()).await? {
        Some(c) => Ok(Json(c).into_response()),
        None => Err(Problem::not_found(
            "no checkpoint has been signed yet (one is signed after evidence.checkpoint_records \
             records or evidence.checkpoint_interval_secs)",
        )),
    }
}

pub async fn proof(State(s): S, uri: Uri) -> Result<Response, Problem> {
    let q = Query::parse(&uri, params::EXPORT)?;
    let (from, to) = (q.time("from"), q.time("to"));
    let reader = s.api.reader.clone();
    let proof = blocking(move || reader.period_proof(from, to)).await?;
    Ok(Json(proof).into_response())
}

pub async fn public_key(State(s): S, uri: Uri) -> Result<Response, Problem> {
    Query::parse(&uri, &[])?;
    let key = s.api.reader.public_key();
    Ok(Json(json!({
        "public_key": chain::public_key_text(key),
        "key_id": chain::key_id(key),
    }))
    .into_response())
}

pub async fn export(State(s): S, uri: Uri) -> Result<Response, Problem> {
    let q = Query::parse(&uri, params::EXPORT)?;
    let (from, to) = (q.time("from"), q.time("to"));
    // Sign the head first, so that the bundle ends on a checkpoint even
    // when its range reaches the newest records.
    if let Err(e) = s.api.evidence.checkpoint().await {
        return Err(Problem::store(e));
    }
    let reader = s.api.reader.clone();
    let made = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        bundle::export(&reader, from, to, &mut out).map(|summary| (summary, out))
    })
    .await
    .map_err(|e| Problem::internal(format!("the export failed: {e}")))?;
    let (summary, tar) = match made {
        Ok(v) => v,
        // The export's own refusals (an empty or too large range) are
        // about the request.
        Err(e @ (EvidenceError::EmptyRange | EvidenceError::TooManyRecords { .. })) => {
            return Err(Problem::bad_request(e.to_string()));
        }
        Err(e @ EvidenceError::ExportBusy) => {
            return Err(Problem::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                e.to_string(),
            ));
        }
        Err(e) => return Err(Problem::store(e)),
    };
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    let disposition = format!(
        "attachment; filename=\"residency-evidence-{stamp}-{}-{}.tar\"",
        summary.first_seq, summary.last_seq
    );
    let mut response = ([(header::CONTENT_TYPE, TAR)], tar).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-disposition", disposition),
        ("x-residency-first-seq", summary.first_seq.to_string()),
        ("x-residency-last-seq", summary.last_seq.to_string()),
        ("x-residency-records", summary.records.to_string()),
    ] {
        if let Ok(v) = header::HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    Ok(response)
}
