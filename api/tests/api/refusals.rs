//! The refusals several tests expect, each a status and the problem `code`
//! that goes with it, named once; and [`assert_refused`] to check one.

use keel_api::error::Problem;
use reqwest::{Response, StatusCode};

use crate::helpers::assert_problem;

/// A refusal as a test expects it: the status and the problem's `code`.
pub type Refusal = (StatusCode, &'static str);

pub const CHALLENGE_CLOSED: Refusal = (StatusCode::UNAUTHORIZED, "challenge_closed");
pub const EMAIL_NOT_VERIFIED: Refusal = (StatusCode::CONFLICT, "email_not_verified");
pub const FORBIDDEN: Refusal = (StatusCode::FORBIDDEN, "forbidden");
pub const INVALID_API_KEY: Refusal = (StatusCode::UNAUTHORIZED, "invalid_api_key");
pub const INVALID_CREDENTIALS: Refusal = (StatusCode::UNAUTHORIZED, "invalid_credentials");
/// A mailed link's token (verification, password reset) spent or expired.
pub const INVALID_EMAIL_TOKEN: Refusal = (StatusCode::BAD_REQUEST, "invalid_token");
pub const INVALID_REFRESH_TOKEN: Refusal = (StatusCode::UNAUTHORIZED, "invalid_refresh_token");
/// An access token refused.
pub const INVALID_TOKEN: Refusal = (StatusCode::UNAUTHORIZED, "invalid_token");
pub const MALFORMED_JSON: Refusal = (StatusCode::BAD_REQUEST, "malformed_json");
pub const MALFORMED_MULTIPART: Refusal = (StatusCode::BAD_REQUEST, "malformed_multipart");
pub const NOT_AUTHENTICATED: Refusal = (StatusCode::UNAUTHORIZED, "not_authenticated");
pub const NOT_FOUND: Refusal = (StatusCode::NOT_FOUND, "not_found");
pub const QUOTA_EXCEEDED: Refusal = (StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded");
pub const RATE_LIMITED: Refusal = (StatusCode::TOO_MANY_REQUESTS, "rate_limited");
pub const SECOND_FACTOR_LOCKED: Refusal = (StatusCode::TOO_MANY_REQUESTS, "second_factor_locked");
pub const SERVICE_UNAVAILABLE: Refusal = (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable");
pub const TWO_FACTOR_REQUIRED: Refusal = (StatusCode::FORBIDDEN, "two_factor_required");
pub const RANGE_NOT_SATISFIABLE: Refusal =
    (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable");
pub const UNSUPPORTED_MEDIA_TYPE: Refusal =
    (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");

/// [`assert_problem`] for a named [`Refusal`]; returns the problem.
pub async fn assert_refused(response: Response, (status, code): Refusal) -> Problem {
    assert_problem(response, status, code).await
}
