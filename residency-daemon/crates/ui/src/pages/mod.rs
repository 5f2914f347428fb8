//! The pages, and what they share: store queries off the async runtime,
//! filters as the API parses them, forms checked against the session.

pub mod flows;
pub mod overview;
pub mod policy;
pub mod violations;

use std::sync::Arc;

use axum::{
    Extension,
    extract::{RawQuery, State},
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
};
use residency_api::{Problem, params};
use residency_evidence::{
    EvidenceError, Filter, Page, Reader,
    query::{MAX_PAGE, ViolationFilter},
};

use super::{S, Session, Ui, layout, report};

/// Runs a store query on tokio's blocking pool; a failure is a page that
/// says what failed.
pub(crate) async fn blocking<T: Send + 'static>(
    session: &Session,
    f: impl FnOnce() -> Result<T, EvidenceError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(layout::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(session),
            &format!("The evidence store could not answer: {e}"),
        )),
        Err(e) => Err(layout::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(session),
            &format!("The query failed: {e}"),
        )),
    }
}

/// The query as a filter form sends it: empty fields dropped, a date
/// (`2026-12-07`, from a date field) taken as midnight UTC (for `to`, the
/// midnight after it: the day is included), and the dashboard's own
/// parameters (`keep`) set aside, decoded.
pub(crate) fn cleaned(raw: Option<&str>, keep: &[&str]) -> (String, Vec<(String, String)>) {
    let mut api = form_urlencoded::Serializer::new(String::new());
    let mut own = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        let v = v.trim();
        if v.is_empty() {
            continue;
        }
        if keep.contains(&k.as_ref()) {
            own.push((k.into_owned(), v.to_owned()));
            continue;
        }
        if k == "from" && is_date(v) {
            api.append_pair(&k, &format!("{v}T00:00:00Z"));
        } else if k == "to" && is_date(v) {
            let next = format!("{v}T00:00:00Z")
                .parse::<jiff::Timestamp>()
                .map(|t| t + jiff::SignedDuration::from_hours(24));
            match next {
                Ok(t) => api.append_pair(&k, &t.to_string()),
                // Not a real day (2026-02-31): the API's parser says so.
                Err(_) => api.append_pair(&k, v),
            };
        } else {
            api.append_pair(&k, v);
        }
    }
    (api.finish(), own)
}

/// What a date field shows for the API's `from` or `to`: the day, and for
/// `to` at midnight the day before (the last one included).
pub(crate) fn date_field(name: &str, api: &str) -> String {
    match api.parse::<jiff::Timestamp>() {
        Ok(t) if name == "to" && t.as_second().rem_euclid(86_400) == 0 => (t
            - jiff::SignedDuration::from_hours(24))
        .strftime("%Y-%m-%d")
        .to_string(),
        Ok(t) => t.strftime("%Y-%m-%d").to_string(),
        Err(_) => String::new(),
    }
}

/// A list page's filter query: cleaned, parsed as the API parses it for
/// `allowed`, and its pairs (to fill the form back in and page on).
pub(crate) fn filter_query(
    raw: Option<&str>,
    allowed: &'static [params::Param],
) -> Result<(params::Query, Vec<(String, String)>), Problem> {
    let (query, _) = cleaned(raw, &[]);
    let q = parse(&query, allowed)?;
    Ok((q, pairs(&query)))
}

/// The value of `name` among a form's pairs (empty when absent).
pub(crate) fn value(shown: &[(String, String)], name: &str) -> String {
    shown
        .iter()
        .find(|(n, _)| n == name)
        .map_or(String::new(), |(_, v)| v.clone())
}

/// A query's pairs, decoded (to fill the filter form back in).
pub(crate) fn pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The link to the next page: the same filters, the page's `next` as the
/// cursor.
pub(crate) fn next_page(base: &str, shown: &[(String, String)], next: u64) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(shown.iter().filter(|(k, _)| k != "cursor"))
        .append_pair("cursor", &next.to_string())
        .finish();
    format!("{base}?{query}")
}

/// `YYYY-MM-DD`, as a date field sends it.
fn is_date(v: &str) -> bool {
    v.len() == 10
        && v.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

/// A filter query, parsed as the API parses it (the same names, kinds
/// and errors).
pub(crate) fn parse(
    query: &str,
    allowed: &'static [params::Param],
) -> Result<params::Query, Problem> {
    let uri: Uri = format!("/?{query}")
        .parse()
        .map_err(|_| Problem::bad_request("the query is not valid"))?;
    params::Query::parse(&uri, allowed)
}

/// The form's token must be the session's: the page refusing it if not.
pub(crate) fn stale_form(session: &Session, given: &str) -> Option<Response> {
    use subtle::ConstantTimeEq as _;
    if bool::from(given.as_bytes().ct_eq(session.csrf.as_bytes())) {
        None
    } else {
        Some(layout::error(
            StatusCode::FORBIDDEN,
            Some(session),
            "This form is out of date (it came from an earlier session): reload the page and send \
             it again.",
        ))
    }
}

/// A 400 page for a filter the API would refuse.
pub(crate) fn bad_filter(session: &Session, p: &Problem) -> Response {
    layout::error(p.status, Some(session), &p.message)
}

/// The data of a tenant's transfer report, from the store.
///
/// # Errors
/// If the store cannot be read.
pub fn report_data(
    reader: &Reader,
    tenant: &str,
    from: jiff::Timestamp,
    to: jiff::Timestamp,
) -> Result<report::Data, EvidenceError> {
    let filter = Filter {
        from: Some(from),
        to: Some(to),
        tenant: Some(tenant.to_owned()),
        ..Filter::default()
    };
    let transfers = reader
        .transfers(&filter)?
        .into_iter()
        .filter_map(|r| serde_json::to_value(r).ok())
        .collect();
    let mut violations = Vec::new();
    let mut cursor = None;
    loop {
        let page = reader.violations(
            &ViolationFilter {
                state: None,
                records: filter.clone(),
            },
            &Page {
                cursor,
                limit: MAX_PAGE,
                ..Page::default()
            },
        )?;
        violations.extend(
            page.items
                .into_iter()
                .filter_map(|v| serde_json::to_value(v).ok()),
        );
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    let checkpoint = reader
        .latest_checkpoint()?
        .and_then(|c| serde_json::to_value(c).ok())
        .unwrap_or(serde_json::Value::Null);
    let proof = serde_json::to_value(reader.period_proof(Some(from), Some(to))?)
        .unwrap_or(serde_json::Value::Null);
    Ok(report::Data {
        tenant: tenant.to_owned(),
        from: from.to_string(),
        to: to.to_string(),
        made: jiff::Timestamp::now().to_string(),
        transfers,
        violations,
        checkpoint,
        proof,
    })
}

/// `GET /ui/report?tenant=&from=&to=`: the tenant's transfer report, as
/// `residency report` makes it (the same page).
pub(crate) async fn report(
    State(ui): S,
    Extension(session): Extension<Session>,
    RawQuery(raw): RawQuery,
) -> Response {
    let (query, own) = cleaned(raw.as_deref(), &["tenant"]);
    let q = match parse(&query, params::EXPORT) {
        Ok(q) => q,
        Err(p) => return bad_filter(&session, &p),
    };
    let Some(tenant) = own.into_iter().find(|(k, _)| k == "tenant").map(|(_, v)| v) else {
        return layout::error(
            StatusCode::BAD_REQUEST,
            Some(&session),
            "tenant: which tenant's report? (e.g. /ui/report?tenant=acme&from=2026-11-01&to=2026-12-01)",
        );
    };
    let to = q.time("to").unwrap_or_else(jiff::Timestamp::now);
    let from = q.time("from").unwrap_or_else(|| {
        to.checked_sub(jiff::SignedDuration::from_hours(30 * 24))
            .unwrap_or(to)
    });
    let (from, to) = report::whole_days(from, to);
    let reader = ui_reader(&ui);
    match blocking(&session, move || report_data(&reader, &tenant, from, to)).await {
        Ok(data) => axum::response::Html(data.html()).into_response(),
        Err(r) => r,
    }
}

pub(crate) fn ui_reader(ui: &Arc<Ui>) -> Reader {
    ui.api.reader.clone()
}
