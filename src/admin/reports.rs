//! `GET /reports` and `GET /reports/{id}`: the kept impact reports, as
//! JSON, or one as Markdown when the caller accepts `text/markdown`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{api, AdminState, ApiError};
use crate::report::{markdown, Report};

/// Every kept report, newest first.
pub(super) async fn list(State(state): State<AdminState>) -> Json<api::ReportList> {
    let reports = state.reports.newest_first(summary);
    Json(api::ReportList { reports })
}

/// One report: Markdown when `Accept` names `text/markdown`, else JSON.
pub(super) async fn show(
    State(state): State<AdminState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    let report = state.reports.get(&id).ok_or(ApiError::UnknownReport(id))?;
    if wants_markdown(&headers) {
        let content_type = [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")];
        return Ok((content_type, markdown(&report)).into_response());
    }
    Ok(Json(report).into_response())
}

fn summary(report: &Report) -> api::ReportSummary {
    api::ReportSummary {
        id: report.id.clone(),
        scenario: report.scenario.clone(),
        started_at: report.started_at.clone(),
        ended_at: report.ended_at.clone(),
        ended: report.ended.clone(),
        complete: report.complete,
    }
}

/// Whether `Accept` lists `text/markdown` (any parameters, any quality
/// but 0).
fn wants_markdown(headers: &HeaderMap) -> bool {
    (headers.get_all(header::ACCEPT).iter())
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let is_markdown = parts
                .next()
                .is_some_and(|kind| kind.eq_ignore_ascii_case("text/markdown"));
            let refused = parts.any(|p| {
                let quality = p.strip_prefix("q=").and_then(|q| q.parse::<f64>().ok());
                quality == Some(0.0)
            });
            is_markdown && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, value.parse().unwrap());
        headers
    }

    #[test]
    fn markdown_is_answered_only_to_those_who_accept_it() {
        assert!(wants_markdown(&accept("text/markdown")));
        assert!(wants_markdown(&accept(
            "application/json;q=0.5, text/markdown; charset=utf-8"
        )));
        assert!(wants_markdown(&accept("Text/Markdown;q=0.8")));
        assert!(!wants_markdown(&accept("text/markdown;q=0")));
        assert!(!wants_markdown(&accept("application/json")));
        assert!(!wants_markdown(&HeaderMap::new()));
    }
}
