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

use crate::problems::Code;

pub use crate::problems::PROBLEM_JSON;

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
    /// The task a create collided with, for `task_not_unique`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub existing_task_id: Option<uuid::Uuid>,
}

/// One invalid field of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Self::with_status(code.status(), code.as_str(), detail)
    }

    /// A bare status's problem (axum's and tower-http's own refusals): its
    /// generic code, or `error` for a status no code stands for.
    pub fn of_status(status: StatusCode, detail: impl Into<String>) -> Self {
        match Code::of_status(status) {
            Some(code) if code.status() == status => Self::new(code, detail),
            // A 5xx other than 500, 503 and 504 keeps its own status.
            Some(code) => Self::with_status(status, code.as_str(), detail),
            None => Self::with_status(status, "error", detail),
        }
    }

    fn with_status(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:keel:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            code: code.to_owned(),
            request_id: None,
            errors: None,
            existing_task_id: None,
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

/// The longest reason given for one invalid field, in characters.
pub const MAX_MESSAGE_CHARS: usize = 300;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client's fault: answered as is, logged at debug.
    #[error("{code}: {detail}")]
    Client {
        code: Code,
        detail: String,
        errors: Vec<FieldError>,
    },
    /// No or bad credentials: 401 with `WWW-Authenticate: Bearer`.
    #[error("{code}: {detail}")]
    Unauthorized { code: Code, detail: String },
    /// Over a rate limit: 429 with `Retry-After` and the `RateLimit-*` headers.
    #[error("rate limited")]
    RateLimited(crate::auth::rate_limit::decision::Decision),
    /// Refused for a while, whoever asks (a paused second step): 429 with
    /// `Retry-After`.
    #[error("{code}: {detail}")]
    Paused {
        code: Code,
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
    /// A create collided with an existing unique task: 409 `task_not_unique`
    /// naming it.
    #[error("not unique: {existing_task_id}")]
    NotUnique {
        detail: String,
        existing_task_id: uuid::Uuid,
    },
    /// A bug or an unexpected failure: 500, logged with its cause chain.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// The client's `code`, saying `detail`; a 401 is `Unauthorized`.
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        if code.status() == StatusCode::UNAUTHORIZED {
            return Self::Unauthorized { code, detail };
        }
        Self::Client {
            code,
            detail,
            errors: Vec::new(),
        }
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(Code::NotFound, detail)
    }

    /// 422 with the reasons per field, each cut to [`MAX_MESSAGE_CHARS`]:
    /// a message may quote the client's value, and a 1 MB value quoted
    /// twice would make the refusal larger than the request.
    pub fn validation(mut errors: Vec<FieldError>) -> Self {
        for error in &mut errors {
            if let Some((cut, _)) = error.message.char_indices().nth(MAX_MESSAGE_CHARS) {
                error.message.truncate(cut);
                error.message.push('…');
            }
        }
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => format!("{} fields are invalid", errors.len()),
        };
        Self::Client {
            code: Code::ValidationFailed,
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
                    code: Code::ValidationFailed,
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
                code,
                detail,
                errors,
            } => {
                let mut problem = Problem::new(code, detail);
                problem.errors = (!errors.is_empty()).then_some(errors);
                problem.into_response()
            }
            Self::Unauthorized { code, detail } => {
                let mut response = Problem::new(code, detail).into_response();
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
                let mut response = Problem::new(Code::RateLimited, detail).into_response();
                decision.apply(response.headers_mut());
                response
            }
            Self::Paused {
                code,
                detail,
                retry_after_secs,
            } => {
                let mut response = Problem::new(code, detail).into_response();
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
                response
            }
            Self::Busy(detail) => {
                tracing::debug!(detail, "refused while busy");
                let mut response = Problem::new(Code::ServerBusy, detail).into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Self::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "dependency unavailable");
                let code = Code::ServiceUnavailable;
                let mut response = Problem::new(code, code.detail()).into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                response
            }
            Self::NotUnique {
                detail,
                existing_task_id,
            } => {
                let mut problem = Problem::new(Code::TaskNotUnique, detail);
                problem.existing_task_id = Some(existing_task_id);
                problem.into_response()
            }
            Self::Internal(cause) => {
                // The cause chain is for the log only; the client learns nothing internal.
                tracing::error!(error = format!("{cause:#}"), "internal error");
                let code = Code::InternalError;
                Problem::new(code, code.detail()).into_response()
            }
        }
    }
}

impl From<Code> for ApiError {
    /// The code with its own detail.
    fn from(code: Code) -> Self {
        Self::new(code, code.detail())
    }
}

/// A database result whose error may be a constraint the client broke (a
/// taken name): those become the client's problem, the rest stay errors.
pub trait OnConstraint<T> {
    /// `code`, with its own detail, for an error that violated the named
    /// constraint; any other error as [`ApiError::from`] makes it.
    fn on_constraint(self, violated: &[(&str, Code)]) -> Result<T, ApiError>;
}

impl<T> OnConstraint<T> for Result<T, sqlx::Error> {
    fn on_constraint(self, violated: &[(&str, Code)]) -> Result<T, ApiError> {
        self.map_err(|e| ApiError::on_constraint(e, violated))
    }
}

impl ApiError {
    /// [`OnConstraint::on_constraint`] for an error on its own.
    pub fn on_constraint(e: sqlx::Error, violated: &[(&str, Code)]) -> Self {
        let constraint = constraint_of(&e);
        violated
            .iter()
            .find(|(name, _)| Some(*name) == constraint)
            .map_or_else(|| e.into(), |(_, code)| Self::from(*code))
    }
}

/// The constraint a database error violated, if any.
pub fn constraint_of(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}
