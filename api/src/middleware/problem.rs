//! Renders every error response as problem+json with the request's id:
//! `ApiError`s (which leave their `Problem` in the response extensions) and
//! the bare refusals of axum and tower-http (405, 408, 413, …). A handler's
//! own JSON error body is left alone.

use std::any::Any;

use axum::{
    body::{Body, to_bytes},
    extract::Request,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};

use super::request_id::REQUEST_ID;
use crate::error::{PROBLEM_JSON, Problem};
use crate::problems::Code;

/// Longest plain-text body of a bare refusal kept as the problem's detail.
const MAX_DETAIL: usize = 1024;

pub async fn finalize(req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let response = next.run(req).await;
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut problem = match parts.extensions.remove::<Problem>() {
        Some(problem) => problem,
        // A handler's deliberate JSON (the health report's 503) stays as it
        // is, and so do the dashboard's error pages, which browsers read.
        None if is_json(&parts.headers) || is_html(&parts.headers) => {
            return Response::from_parts(parts, body);
        }
        None => Problem::of_status(status, plain_detail(status, &parts.headers, body).await),
    };
    problem.request_id = request_id;
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(problem.to_body()))
}

/// `application/json` or `application/problem+json`.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let essence = v.split(';').next().unwrap_or_default().trim();
            essence == "application/json" || essence == PROBLEM_JSON
        })
}

/// `text/html`: a page made for a browser.
fn is_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"))
}

/// The refusal's own text when it is short plain text, else a sentence for the status.
async fn plain_detail(status: StatusCode, headers: &HeaderMap, body: Body) -> String {
    let is_text = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/plain"));
    if is_text
        && let Ok(bytes) = to_bytes(body, MAX_DETAIL).await
        && let Ok(text) = std::str::from_utf8(&bytes)
        && !text.trim().is_empty()
    {
        return text.trim().to_owned();
    }
    match status {
        StatusCode::METHOD_NOT_ALLOWED => {
            "this method is not allowed here; see the Allow header".into()
        }
        StatusCode::REQUEST_TIMEOUT => "the request took too long and was abandoned".into(),
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is too large".into(),
        s => s.canonical_reason().unwrap_or("error").to_lowercase(),
    }
}

/// A handler panicked: 500, and the panic message goes to the log only.
pub fn from_panic(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = message, "handler panicked");
    Problem::new(Code::InternalError, "an unexpected error occurred").into_response()
}
