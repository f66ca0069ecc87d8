//! Every problem `code` the API answers with: its status, what it means,
//! and the detail it says when nothing more precise is known. One list,
//! from which errors are made ([`crate::error::ApiError::new`]), the
//! OpenAPI error responses and their examples are built
//! ([`problem_response!`], over [`response`]), and `api/README.md`'s table is checked.

use axum::http::StatusCode;
use serde_json::{Value, json};
use utoipa::openapi::{
    ContentBuilder, Ref, ResponseBuilder,
    example::ExampleBuilder,
    header::HeaderBuilder,
    response::Response,
    schema::{ObjectBuilder, Type},
};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The request id the examples quote.
const EXAMPLE_REQUEST_ID: &str = "0193b4d2-7c1e-7f00-8a4e-2f9d1c3b5a60";

macro_rules! codes {
    ($($variant:ident: $status:ident $code:literal, $summary:literal, $detail:literal;)*) => {
        /// A problem `code`, with its status.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Code {
            $(#[doc = $summary] $variant,)*
        }

        impl Code {
            /// Every code, in the order of the README's table.
            pub const ALL: &[Self] = &[$(Self::$variant),*];

            /// What clients branch on.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $code,)*
                }
            }

            pub const fn status(self) -> StatusCode {
                match self {
                    $(Self::$variant => StatusCode::$status,)*
                }
            }

            /// What it means, in a line.
            pub const fn summary(self) -> &'static str {
                match self {
                    $(Self::$variant => $summary,)*
                }
            }

            /// The detail of a problem nothing more precise is said of, and
            /// of the OpenAPI example.
            pub const fn detail(self) -> &'static str {
                match self {
                    $(Self::$variant => $detail,)*
                }
            }
        }
    };
}

codes! {
    // What axum, tower-http and the extractors refuse, by status.
    BadRequest: BAD_REQUEST "bad_request", "the request cannot be read", "the request cannot be read";
    MalformedJson: BAD_REQUEST "malformed_json", "the body is not well-formed JSON", "EOF while parsing an object at line 1 column 15";
    MalformedMultipart: BAD_REQUEST "malformed_multipart", "the multipart body cannot be read", "the multipart body cannot be read: its Content-Type has no usable boundary";
    Unauthorized: UNAUTHORIZED "unauthorized", "not signed in", "sign in first";
    Forbidden: FORBIDDEN "forbidden", "the caller's role is too low", "this needs the admin role";
    NotFound: NOT_FOUND "not_found", "nothing there, or nothing the caller may see", "no such task";
    MethodNotAllowed: METHOD_NOT_ALLOWED "method_not_allowed", "the path takes other methods (`Allow` lists them)", "method not allowed";
    NotAcceptable: NOT_ACCEPTABLE "not_acceptable", "no representation the `Accept` header allows", "not acceptable";
    RequestTimeout: REQUEST_TIMEOUT "request_timeout", "the request took longer than `REQUEST_TIMEOUT_SECONDS`", "the request took too long";
    Conflict: CONFLICT "conflict", "the request conflicts with the current state", "the request conflicts with the current state";
    PayloadTooLarge: PAYLOAD_TOO_LARGE "payload_too_large", "the body is over the route's limit (`MAX_BODY_BYTES` for JSON)", "the request body is too large";
    UnsupportedMediaType: UNSUPPORTED_MEDIA_TYPE "unsupported_media_type", "the body is not of the type the route reads", "expected a body with Content-Type: application/json";
    ValidationFailed: UNPROCESSABLE_ENTITY "validation_failed", "well-formed but invalid: `errors` names each field and why", "name: must be 1 to 200 characters";
    RateLimited: TOO_MANY_REQUESTS "rate_limited", "over a rate limit; retry after `Retry-After` seconds", "too many requests; retry in 12 s";
    InternalError: INTERNAL_SERVER_ERROR "internal_error", "a bug or an unexpected failure (logged with the request id)", "an unexpected error occurred";
    ServiceUnavailable: SERVICE_UNAVAILABLE "service_unavailable", "PostgreSQL or Redis is unavailable; worth a retry", "a service Keel depends on is unavailable; try again shortly";
    Timeout: GATEWAY_TIMEOUT "timeout", "an upstream did not answer in time", "an upstream did not answer in time";
    // Keel's own load limits.
    ServerBusy: SERVICE_UNAVAILABLE "server_busy", "Keel is saturated (the password hasher, the body budget); retry after `Retry-After`", "too many sign-ins at once; try again shortly";
    TooManyConnections: SERVICE_UNAVAILABLE "too_many_connections", "the API holds `HTTP_MAX_CONNECTIONS` connections; this one is closed", "the server has 1024 connections open, its limit; try again shortly";
    DatabaseUnavailable: SERVICE_UNAVAILABLE "database_unavailable", "`/health/db`: PostgreSQL does not answer", "PostgreSQL does not answer";
    CacheUnavailable: SERVICE_UNAVAILABLE "cache_unavailable", "`/health/cache`: Redis does not answer", "Redis does not answer";
    NotReady: SERVICE_UNAVAILABLE "not_ready", "`/ready`: `errors` says what is not (`database`, `redis`, `migrations`, `lifecycle`)", "redis: unreachable";
    // Credentials.
    NotAuthenticated: UNAUTHORIZED "not_authenticated", "no credential was sent", "sign in: send a bearer token or an API key";
    TokenExpired: UNAUTHORIZED "token_expired", "the access token has expired; refresh it", "the access token has expired";
    InvalidToken: UNAUTHORIZED "invalid_token", "the access token is malformed, invalid or revoked", "the access token is invalid";
    InvalidApiKey: UNAUTHORIZED "invalid_api_key", "the API key is unknown, malformed or expired", "the API key is invalid or expired";
    InvalidCredentials: UNAUTHORIZED "invalid_credentials", "wrong username, email or password, or an account that cannot sign in", "wrong username, email or password";
    InvalidRefreshToken: UNAUTHORIZED "invalid_refresh_token", "the refresh token is unknown, expired, revoked, or spent (which revokes its family)", "the refresh token is invalid, expired or revoked";
    InvalidCode: UNAUTHORIZED "invalid_code", "a wrong second-factor code; `detail` says how many tries are left", "wrong code; 4 tries left";
    ChallengeClosed: UNAUTHORIZED "challenge_closed", "the 2FA challenge is used, expired or out of tries; sign in again", "this challenge is used, expired or out of tries; sign in again";
    InvalidLink: BAD_REQUEST "invalid_token", "a verification or reset link that is unknown, used or expired", "this reset link is unknown, used or expired; ask for a new one";
    ApiKeyNotAllowed: FORBIDDEN "api_key_not_allowed", "an API key cannot do this; it needs the user's own session", "an API key cannot do this; sign in with a password";
    TwoFactorRequired: FORBIDDEN "two_factor_required", "the account signs in with a second factor: use `/auth/login`, then `/auth/verify-2fa`", "this account signs in with a second factor: POST /api/v1/auth/login, then /api/v1/auth/verify-2fa";
    RoleNotAllowed: FORBIDDEN "role_not_allowed", "registration creates `user` accounts only", "registration creates `user` accounts only";
    CsrfFailed: FORBIDDEN "csrf_failed", "a dashboard form that is stale or came from another site", "this form is stale or came from another site; reload the page and try again";
    CrossOrigin: FORBIDDEN "cross_origin", "a dashboard form posted from another site", "this form was posted from another site";
    SecondFactorLocked: TOO_MANY_REQUESTS "second_factor_locked", "too many wrong codes: the account's second step is paused (`Retry-After`)", "too many wrong codes for this account; the second step is paused until 14:05 UTC";
    // Accounts.
    UsernameTaken: CONFLICT "username_taken", "the username is taken", "that username is taken";
    EmailTaken: CONFLICT "email_taken", "an account has that email (admin commands only; registration does not say)", "an account with that email exists";
    LastSuperadmin: CONFLICT "last_superadmin", "the only active superadmin cannot be demoted, deactivated or deleted", "the last active superadmin cannot be demoted, deactivated or deleted";
    EmailAlreadyVerified: CONFLICT "email_already_verified", "the address is verified already", "this address is verified already";
    EmailNotVerified: CONFLICT "email_not_verified", "this needs a verified email address", "verify your email address first";
    TooManyApiKeys: CONFLICT "too_many_api_keys", "the user has the most API keys allowed (25)", "at most 25 keys per user";
    TotpAlreadyEnabled: CONFLICT "totp_already_enabled", "TOTP is on; disable it first to set up a new secret", "TOTP is already on; disable it first to set up a new secret";
    TotpNotSetUp: CONFLICT "totp_not_set_up", "no TOTP setup is pending", "no TOTP setup is pending; POST /api/v1/auth/totp/setup first";
    TotpNotEnabled: CONFLICT "totp_not_enabled", "TOTP is not on", "TOTP is not on";
    // Sign-in with a provider.
    InvalidOauthState: BAD_REQUEST "invalid_oauth_state", "the sign-in is unknown, expired, finished, or from another browser", "this sign-in is unknown, expired, already finished, or was started in another browser; start again";
    OauthDenied: BAD_REQUEST "oauth_denied", "the provider did not sign the user in", "GitHub did not sign you in (access_denied)";
    OauthCodeMissing: BAD_REQUEST "oauth_code_missing", "the provider sent no authorization code", "the provider sent no authorization code";
    OauthCodeRejected: BAD_REQUEST "oauth_code_rejected", "the provider refused the authorization code (a replayed one)", "GitHub refused the authorization code (invalid_grant)";
    OauthIdTokenInvalid: BAD_REQUEST "oauth_id_token_invalid", "the provider's ID token failed its checks", "the provider's answer failed its checks; sign in again";
    OauthIssuerMismatch: BAD_REQUEST "oauth_issuer_mismatch", "the answer came from another issuer than the provider's", "the answer came from another issuer than the provider's; start again";
    OauthEmailMissing: BAD_REQUEST "oauth_email_missing", "the provider gave no usable email address", "GitHub gave no usable email address; allow Keel to read it, then sign in again";
    OauthEmailUnverified: CONFLICT "oauth_email_unverified", "the provider has not verified the email address", "GitHub has not verified your email address; verify it there, then sign in again";
    OauthProviderUnavailable: SERVICE_UNAVAILABLE "oauth_provider_unavailable", "the provider does not answer", "sign-in with GitHub is unavailable right now; try again shortly";
    // Tasks and schedules.
    TooManyUnfinishedTasks: TOO_MANY_REQUESTS "too_many_unfinished_tasks", "the user has `MAX_UNFINISHED_TASKS_PER_USER` unfinished tasks; wait for some to finish", "at most 1000 unfinished tasks per user; wait for some to finish";
    IdempotencyKeyMismatch: UNPROCESSABLE_ENTITY "idempotency_key_mismatch", "the `Idempotency-Key` was used with another request", "this Idempotency-Key was used with another request";
    KindForbidden: FORBIDDEN "kind_forbidden", "the caller's role may not create tasks of this kind", "tasks of kind \"abort\" need the admin role";
    TaskNotUnique: CONFLICT "task_not_unique", "a task with the same unique key exists", "an unfinished sleep task of yours has the same unique key; it is existing_task_id";
    TaskNotCancellable: CONFLICT "task_not_cancellable", "the task is finished, or runs as a kind that may not be interrupted", "the task is completed; only unfinished tasks can be cancelled";
    TaskNotRetryable: CONFLICT "task_not_retryable", "only a failed, cancelled or expired task can be retried", "the task is running; only failed, cancelled or expired tasks can be retried";
    TaskNotWaiting: CONFLICT "task_not_waiting", "only a task that waits for a later time can run now", "only a pending or retrying task that waits for a later time can run now";
    ScheduleNotFound: NOT_FOUND "schedule_not_found", "no such schedule", "no such schedule";
    ScheduleReadOnly: FORBIDDEN "schedule_read_only", "built-in schedules cannot be changed, deleted or run by hand", "built-in schedules cannot be changed, deleted or run by hand";
    ScheduleNameTaken: CONFLICT "schedule_name_taken", "a schedule has this name already", "a schedule has this name already";
    // Files and avatars.
    FileTooLarge: PAYLOAD_TOO_LARGE "file_too_large", "a file is over `MAX_UPLOAD_BYTES` (an avatar over `MAX_AVATAR_BYTES`)", "a file may be at most 10485760 bytes";
    QuotaExceeded: PAYLOAD_TOO_LARGE "quota_exceeded", "the upload would take the user over their storage quota", "this would take you over your storage quota (1024 bytes left)";
    RangeNotSatisfiable: RANGE_NOT_SATISFIABLE "range_not_satisfiable", "the `Range` selects nothing of the file (`Content-Range` gives its size)", "the file has 1024 bytes";
    UnsupportedImage: UNSUPPORTED_MEDIA_TYPE "unsupported_image", "an avatar that is not PNG, JPEG or WebP, as its bytes tell", "an avatar is a PNG, JPEG or WebP image; this is gif";
    InvalidImage: UNPROCESSABLE_ENTITY "invalid_image", "an avatar whose image cannot be read", "the image is truncated";
    ImageTooLarge: UNPROCESSABLE_ENTITY "image_too_large", "an avatar over 4096 pixels on a side", "the image is 5000 × 3000 pixels; at most 4096 on each side";
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Code {
    /// The generic code of a bare status (axum's and tower-http's own
    /// refusals), if there is one.
    pub fn of_status(status: StatusCode) -> Option<Self> {
        match status {
            StatusCode::BAD_REQUEST => Some(Self::BadRequest),
            StatusCode::UNAUTHORIZED => Some(Self::Unauthorized),
            StatusCode::FORBIDDEN => Some(Self::Forbidden),
            StatusCode::NOT_FOUND => Some(Self::NotFound),
            StatusCode::METHOD_NOT_ALLOWED => Some(Self::MethodNotAllowed),
            StatusCode::NOT_ACCEPTABLE => Some(Self::NotAcceptable),
            StatusCode::REQUEST_TIMEOUT => Some(Self::RequestTimeout),
            StatusCode::CONFLICT => Some(Self::Conflict),
            StatusCode::PAYLOAD_TOO_LARGE => Some(Self::PayloadTooLarge),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Some(Self::UnsupportedMediaType),
            StatusCode::UNPROCESSABLE_ENTITY => Some(Self::ValidationFailed),
            StatusCode::TOO_MANY_REQUESTS => Some(Self::RateLimited),
            StatusCode::SERVICE_UNAVAILABLE => Some(Self::ServiceUnavailable),
            StatusCode::GATEWAY_TIMEOUT => Some(Self::Timeout),
            s if s.is_server_error() => Some(Self::InternalError),
            _ => None,
        }
    }

    /// The problem body of the OpenAPI example.
    pub fn example(self) -> Value {
        let mut example = json!({
            "type": format!("urn:keel:problem:{}", self.as_str()),
            "title": self.status().canonical_reason().unwrap_or("Error"),
            "status": self.status().as_u16(),
            "detail": self.detail(),
            "code": self.as_str(),
            "request_id": EXAMPLE_REQUEST_ID,
        });
        // The codes that name fields show one.
        let field = match self {
            Self::ValidationFailed => Some(("name", "must be 1 to 200 characters")),
            Self::NotReady => Some(("redis", "unreachable")),
            _ => None,
        };
        if let Some((field, message)) = field {
            example["errors"] = json!([{"field": field, "message": message}]);
        }
        example
    }

    /// The README's table of codes, a row each.
    pub fn table() -> String {
        let mut table = String::from("| code | status | meaning |\n| --- | ---: | --- |\n");
        for code in Self::ALL {
            table.push_str(&format!(
                "| `{}` | {} | {} |\n",
                code.as_str(),
                code.status().as_u16(),
                code.summary()
            ));
        }
        table
    }
}

/// A header of an error response: its name and what it says.
pub type Header = (&'static str, &'static str);

/// `WWW-Authenticate`, on every 401.
const WWW_AUTHENTICATE: Header = ("WWW-Authenticate", "`Bearer`");
/// `Retry-After`, on the refusals worth retrying.
pub const RETRY_AFTER: Header = ("Retry-After", "Seconds until a retry may succeed");

/// An `application/problem+json` response that answers one of `codes`, each
/// shown by its example; a 401 also says `WWW-Authenticate`.
pub fn response(description: &str, codes: &[Code], headers: &[Header]) -> Response {
    let mut content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem")));
    content = match codes {
        [one] => content.example(Some(one.example())),
        many => content.examples_from_iter(many.iter().map(|code| {
            let example = ExampleBuilder::new()
                .summary(code.summary())
                .value(Some(code.example()));
            (code.as_str(), example)
        })),
    };
    let mut response = ResponseBuilder::new()
        .description(description)
        .content(PROBLEM_JSON, content.build());
    let unauthorized = codes
        .iter()
        .any(|code| code.status() == StatusCode::UNAUTHORIZED);
    let headers = unauthorized
        .then_some(&WWW_AUTHENTICATE)
        .into_iter()
        .chain(headers);
    for (name, description) in headers {
        // The others are counts: of seconds, or of requests.
        let schema = ObjectBuilder::new().schema_type(if *name == WWW_AUTHENTICATE.0 {
            Type::String
        } else {
            Type::Integer
        });
        response = response.header(
            *name,
            HeaderBuilder::new()
                .schema(Some(schema))
                .description(Some(*description))
                .build(),
        );
    }
    response.build()
}

/// Declares `$name`, an OpenAPI error response (a component, or `inline` in
/// a route's annotation) answering `$codes`, described by its doc comment.
macro_rules! problem_response {
    ($(#[doc = $doc:literal])+ $vis:vis $name:ident = [$($code:ident),+ $(,)?] $(, headers = [$($header:expr),+])?) => {
        $(#[doc = $doc])+
        #[derive(Debug)]
        $vis struct $name;

        impl<'s> utoipa::ToResponse<'s> for $name {
            fn response() -> (
                &'s str,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            ) {
                let description = [$($doc),+].map(str::trim).join(" ");
                (
                    stringify!($name),
                    $crate::problems::response(
                        &description,
                        &[$($crate::problems::Code::$code),+],
                        &[$($($header),+)?],
                    )
                    .into(),
                )
            }
        }
    };
}
pub(crate) use problem_response;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once_per_status() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(
                seen.insert((code.as_str(), code.status())),
                "{code:?} twice"
            );
            assert!(
                code.status().is_client_error() || code.status().is_server_error(),
                "{code:?}"
            );
        }
    }

    #[test]
    fn the_readme_table_lists_every_code() {
        let readme = include_str!("../README.md");
        let table = Code::table();
        assert!(
            readme.contains(&table),
            "api/README.md's table of problem codes is out of date; it should read:\n{table}"
        );
    }
}
