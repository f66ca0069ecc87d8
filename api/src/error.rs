//! `ApiError`, the one error type of the HTTP edge, and `Problem`, its RFC 9457
//! `application/problem+json` body. Every error the API answers — its own,
//! axum's rejections, tower-http's refusals — leaves as a `Problem` with a
//! stable `code`.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem detail, as every error response carries it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:keel:problem:not_found", "title": "Not Found", "status": 404,
    "detail": "no route for GET /api/v1/nope", "code": "not_found",
    "request_id": "0193b4d2-7c1e-7f00-8a4e-2f9d1c3b5a60"
}))]
pub struct Problem {
    /// `urn:keel:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// Stable and machine-readable: clients branch on this.
    pub code: String,
    /// The request's `X-Request-Id`, to quote when reporting a problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Per-field reasons, for `validation_failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// One invalid field of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:keel:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
            request_id: None,
            errors: None,
        }
    }

    /// The code for a bare status, when nothing more precise is known
    /// (axum's and tower-http's own refusals).
    pub fn code_for(status: StatusCode) -> &'static str {
        match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::NOT_ACCEPTABLE => "not_acceptable",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "validation_failed",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            s if s.is_server_error() => "internal_error",
            _ => "error",
        }
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The JSON body.
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("a problem serialises")
    }
}

impl IntoResponse for Problem {
    /// The body is final except for `request_id`, which the problem layer
    /// fills in from the request; it finds the problem in the extensions.
    fn into_response(self) -> Response {
        let mut response = (self.status_code(), self.to_body()).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response.extensions_mut().insert(self);
        response
    }
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client's fault: answered as is, logged at debug.
    #[error("{code}: {detail}")]
    Client {
        status: StatusCode,
        code: &'static str,
        detail: String,
        errors: Vec<FieldError>,
    },
    /// No or bad credentials: 401 with `WWW-Authenticate: Bearer`.
    #[error("{code}: {detail}")]
    Unauthorized { code: &'static str, detail: String },
    /// Over a rate limit: 429 with `Retry-After` and the `RateLimit-*` headers.
    #[error("rate limited")]
    RateLimited(crate::auth::rate_limit::decision::Decision),
    /// Refused for a while, whoever asks (a paused second step): 429 with
    /// `Retry-After`.
    #[error("{code}: {detail}")]
    Paused {
        code: &'static str,
        detail: String,
        retry_after_secs: u64,
    },
    /// Keel itself is saturated (the password hasher's queue is full): 503
    /// `server_busy` with `Retry-After: 1`, logged at debug (a flood would
    /// otherwise flood the log too).
    #[error("busy: {0}")]
    Busy(String),
    /// A dependency (Postgres, Redis) is down: 503, worth retrying.
    #[error("a dependency is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A bug or an unexpected failure: 500, logged with its cause chain.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn client(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self::Client {
            status,
            code,
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self::Unauthorized {
            code,
            detail: detail.into(),
        }
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::client(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::client(StatusCode::CONFLICT, code, detail)
    }

    /// 422 with the reasons per field.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => format!("{} fields are invalid", errors.len()),
        };
        Self::Client {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "validation_failed",
            detail,
            errors,
        }
    }

    pub fn busy(detail: impl Into<String>) -> Self {
        Self::Busy(detail.into())
    }

    pub fn unavailable(cause: impl Into<anyhow::Error>) -> Self {
        Self::Unavailable(cause.into())
    }
}

impl From<sqlx::Error> for ApiError {
    /// No connection (pool timeout, refused, reset) is the database being
    /// down, a 503, and so is the server saying so: shutting down or
    /// starting (class 57P), out of connections or resources (53), the
    /// connection lost (08) — a pooled connection is not pinged before
    /// each use, so the first statement after a shutdown reads its notice.
    /// Text Postgres cannot store (a NUL byte) is the client's 422; anything
    /// else is a bug.
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
                Self::Unavailable(anyhow::Error::new(e).context("PostgreSQL is unreachable"))
            }
            sqlx::Error::Io(_) => {
                keel_shared::db::connection_lost();
                Self::Unavailable(anyhow::Error::new(e).context("PostgreSQL is unreachable"))
            }
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| {
                    c.starts_with("57P") || c.starts_with("53") || c.starts_with("08")
                }) =>
            {
                // Out of connections (53) is a busy server, not a dead connection.
                if !db.code().is_some_and(|c| c.starts_with("53")) {
                    keel_shared::db::connection_lost();
                }
                Self::Unavailable(
                    anyhow::Error::new(sqlx::Error::Database(db))
                        .context("PostgreSQL is unavailable"),
                )
            }
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("22021" | "22P05")) =>
            {
                Self::Client {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    code: "validation_failed",
                    detail: "text may not contain NUL or unencodable characters".into(),
                    errors: vec![FieldError {
                        field: "body".into(),
                        message: "contains a character that cannot be stored".into(),
                    }],
                }
            }
            e => Self::Internal(anyhow::Error::new(e)),
        }
    }
}

impl From<redis::RedisError> for ApiError {
    /// Redis is infrastructure: any failure of it (unreachable, loading,
    /// read-only after a failover) is a dependency being unavailable.
    fn from(e: redis::RedisError) -> Self {
        Self::Unavailable(anyhow::Error::new(e).context("Redis failed"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Client {
                status,
                code,
                detail,
                errors,
            } => {
                let mut problem = Problem::new(status, code, detail);
                problem.errors = (!errors.is_empty()).then_some(errors);
                problem.into_response()
            }
            Self::Unauthorized { code, detail } => {
                let mut response =
                    Problem::new(StatusCode::UNAUTHORIZED, code, detail).into_response();
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
            Self::RateLimited(decision) => {
                let detail = format!(
                    "too many requests; retry in {} s",
                    decision.retry_after_secs.max(1)
                );
                let mut response =
                    Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail)
                        .into_response();
                decision.apply(response.headers_mut());
                response
            }
            Self::Paused {
                code,
                detail,
                retry_after_secs,
            } => {
                let mut response =
                    Problem::new(StatusCode::TOO_MANY_REQUESTS, code, detail).into_response();
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
                response
            }
            Self::Busy(detail) => {
                tracing::debug!(detail, "refused while busy");
                let mut response =
                    Problem::new(StatusCode::SERVICE_UNAVAILABLE, "server_busy", detail)
                        .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Self::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "dependency unavailable");
                let mut response = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    "a service Keel depends on is unavailable; try again shortly",
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                response
            }
            Self::Internal(cause) => {
                // The cause chain is for the log only; the client learns nothing internal.
                tracing::error!(error = format!("{cause:#}"), "internal error");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "an unexpected error occurred",
                )
                .into_response()
            }
        }
    }
}
