//! The OpenAPI document's frame: title, conventions, tags, security schemes,
//! and the error responses routes share. Paths come from the routers'
//! `#[utoipa::path]` annotations; `/openapi.json` serves the result.
//!
//! An operation lists its error responses itself. The ones many routes give
//! alike are components here, so an annotation names them in one line:
//! [`JsonBodyErrors`] (what `AppJson`, `JsonBytes` and `JsonOrForm` refuse),
//! [`ResourceErrors`] (the rate limiter, and PostgreSQL or Redis down) and
//! the groups that add who may call to it ([`SignedIn`], [`AdminOnly`], …),
//! and single responses such as [`Unauthorized`] or [`NotFound`]. List a group
//! first: a route's own entry for the same status, listed after it, replaces
//! the group's (`change-password` describes its 422 as a wrong password).
//!
//! The string formats the API parses (`keel_shared::domain`) are components
//! too, each stating its parser's rule ([`Timezone`], [`PhoneNumber`], …), so
//! a request the document allows is one the API accepts. What depends on the
//! configuration, the task kinds on offer, is filled in at startup
//! ([`complete`]).

use keel_shared::{
    domain,
    kinds::{self, KindSettings, KindSpec},
};
use serde_json::{Value, json};
use utoipa::{
    IntoResponses, Modify, OpenApi, PartialSchema, ToSchema,
    openapi::{
        RefOr,
        schema::{ObjectBuilder, Schema, Type},
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{
    error::{FieldError, Problem},
    problems::{RETRY_AFTER, problem_response},
};

/// The conventions every operation follows, as the document's description.
const DESCRIPTION: &str = "\
Accounts, roles, 2FA, API keys, background tasks, their schedules, operations \
and live updates over WebSockets.

- **JSON** in and out; timestamps are RFC 3339 UTC, ids are UUIDs. A trailing \
slash is optional on every path.
- **Authentication**: `Authorization: Bearer <access token>` (from `POST /api/v1/auth/login`) \
or `X-API-Key: <key>`, which acts as its owner. Missing or invalid: 401 with \
`WWW-Authenticate: Bearer`; not allowed: 403.
- **Errors** are RFC 9457 `application/problem+json` (`Problem`) with a stable, \
machine-readable `code`: malformed JSON 400, invalid fields 422 (with `errors`), \
body too large 413, wrong content type 415, duplicate 409, rate limited 429, a \
dependency down 503.
- **Lists** take `?page=1&size=20` (size at most 100) and answer \
`{items, total, page, size, pages}`, newest first unless the operation says otherwise.
- **Request ids**: every response carries `X-Request-Id` (the client's own, when it sent one).
- **Rate limits**: `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` on \
every `/api/v1` response; over the limit, 429 with `Retry-After`.
- **Aliases** from the systems Keel replaces are marked deprecated; each names the \
operation to use instead.";

#[derive(OpenApi)]
#[openapi(
    info(title = "Keel API", description = DESCRIPTION, license(name = "MIT")),
    components(
        schemas(Problem, FieldError),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            ApiKeyNotAllowed,
            NotFound,
            PayloadTooLarge,
            UnsupportedMediaType,
            ValidationFailed,
            RateLimited,
            Unavailable
        )
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "auth", description = "Registration, sign-in, tokens, 2FA, email verification, password reset"),
        (name = "users", description = "Profiles, roles and the user list"),
        (name = "api-keys", description = "Keys that act as their owner"),
        (name = "tasks", description = "Background tasks: create, follow, cancel, retry"),
        (name = "files", description = "Uploads and downloads of the caller's files, and task outputs"),
        (name = "schedules", description = "Cron schedules that create tasks (admin)"),
        (name = "admin", description = "Operations: workers, queues, statistics (admin)"),
        (name = "websockets", description = "Rooms, presence, chat and live task updates"),
        (name = "health", description = "Health, readiness and metrics"),
        (name = "docs", description = "This document, Swagger UI and Redoc"),
        (name = "dashboard", description = "The ops dashboard: HTML pages for admins in a browser"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

/// `bearer` (an access JWT) and `api_key` (`X-API-Key`), so Swagger UI can authorize.
#[derive(Debug)]
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token from `POST /api/v1/auth/login`, `/token`, \
                         `/refresh` or `/verify-2fa`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "A key from `POST /api/v1/api-keys`; it acts as its owner.",
            ))),
        );
        components.add_security_scheme(
            "dashboard_session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "keel_dashboard",
                "The dashboard's session, set by signing in at `/dashboard/login` (browsers).",
            ))),
        );
    }
}

// The shared error responses, built from the codes they answer with.

problem_response!(
    /// Malformed JSON (`malformed_json`), or a body that could not be read.
    pub BadRequest = [MalformedJson]
);
problem_response!(
    /// No credential, or one that is malformed, invalid, expired or revoked.
    pub Unauthorized = [NotAuthenticated, TokenExpired, InvalidApiKey]
);
problem_response!(
    /// The caller's role is too low (`forbidden`).
    pub Forbidden = [Forbidden]
);
problem_response!(
    /// Called with an API key (`api_key_not_allowed`): this needs the user's own
    /// session, a bearer token.
    pub ApiKeyNotAllowed = [ApiKeyNotAllowed]
);
problem_response!(
    /// Nothing there, or nothing the caller may see (`not_found`); an id that is
    /// not a UUID names nothing either.
    pub NotFound = [NotFound]
);
problem_response!(
    /// The body is over `MAX_BODY_BYTES` (`payload_too_large`).
    pub PayloadTooLarge = [PayloadTooLarge]
);
problem_response!(
    /// The body is not `application/json` (`unsupported_media_type`).
    pub UnsupportedMediaType = [UnsupportedMediaType]
);
problem_response!(
    /// Well-formed but invalid (`validation_failed`): `errors` names each field
    /// and why.
    pub ValidationFailed = [ValidationFailed]
);
problem_response!(
    /// Over a rate limit (`rate_limited`); retry after `Retry-After` seconds.
    pub RateLimited = [RateLimited],
    headers = [
        RETRY_AFTER,
        ("RateLimit-Limit", "Requests allowed in the window"),
        ("RateLimit-Remaining", "Requests left in the window: 0"),
        ("RateLimit-Reset", "Seconds until the window resets")
    ]
);
problem_response!(
    /// PostgreSQL or Redis is unavailable (`service_unavailable`), or Keel is
    /// saturated (`server_busy`); worth a retry.
    pub Unavailable = [ServiceUnavailable, ServerBusy],
    headers = [RETRY_AFTER]
);

/// What an operation with a JSON body can be refused for before its handler
/// runs: 400, 413, 415 and 422.
#[derive(Debug, IntoResponses)]
pub enum JsonBodyErrors {
    #[response(status = 400)]
    BadRequest(#[ref_response] BadRequest),
    #[response(status = 413)]
    PayloadTooLarge(#[ref_response] PayloadTooLarge),
    #[response(status = 415)]
    UnsupportedMediaType(#[ref_response] UnsupportedMediaType),
    #[response(status = 422)]
    ValidationFailed(#[ref_response] ValidationFailed),
}

/// Declares a group of error responses a resource answers with: the
/// listed ones, and 429 from the rate limiter and 503 when PostgreSQL or
/// Redis is down, which every `/api/v1` resource can answer.
macro_rules! resource_errors {
    ($(#[doc = $doc:literal])+ $name:ident $(, $status:tt $response:ident)* $(,)?) => {
        $(#[doc = $doc])+
        #[derive(Debug, IntoResponses)]
        pub enum $name {
            $(
                #[response(status = $status)]
                $response(#[ref_response] $response),
            )*
            #[response(status = 429)]
            RateLimited(#[ref_response] RateLimited),
            #[response(status = 503)]
            Unavailable(#[ref_response] Unavailable),
        }
    };
}

resource_errors!(
    /// What every `/api/v1` resource can answer: 429 and 503.
    ResourceErrors
);
resource_errors!(
    /// A resource for anyone signed in: 401, 429 and 503.
    SignedIn, 401 Unauthorized
);
resource_errors!(
    /// One of the caller's objects (another's is 404, as if it did not
    /// exist): 401, 404, 429 and 503.
    OwnObject, 401 Unauthorized, 404 NotFound
);
resource_errors!(
    /// A resource for admins: 401, 403 (`forbidden`), 429 and 503.
    AdminOnly, 401 Unauthorized, 403 Forbidden
);
resource_errors!(
    /// An object only admins reach: 401, 403 (`forbidden`), 404, 429 and 503.
    AdminObject, 401 Unauthorized, 403 Forbidden, 404 NotFound
);
resource_errors!(
    /// What only the user's own session may do, never an API key: 401, 403
    /// (`api_key_not_allowed`), 429 and 503.
    SessionOnly, 401 Unauthorized, 403 ApiKeyNotAllowed
);

// The string formats of request fields, as `value_type`s: each states the
// rule of the parser the handler runs, so what the document allows is what
// the API accepts.

/// A string with `pattern`, of at most `max_length` characters.
fn string_schema(
    description: &str,
    pattern: &str,
    max_length: impl Into<Option<usize>>,
    example: &str,
) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(Some(pattern))
        .max_length(max_length.into())
        .examples([example])
        .into()
}

/// An IANA time zone, as the tz database Keel is built with names it.
#[derive(Debug)]
pub struct Timezone;

impl PartialSchema for Timezone {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "An IANA time zone, as the tz database names it (case matters).",
            ))
            .enum_values(Some(domain::Timezone::names()))
            .examples(["Europe/Berlin"])
            .into()
    }
}

impl ToSchema for Timezone {}

/// A language tag such as `en` or `pt-BR`.
#[derive(Debug)]
pub struct LanguageTag;

impl PartialSchema for LanguageTag {
    fn schema() -> RefOr<Schema> {
        string_schema(
            "A language tag: 2 or 3 letters, then `-` and 1 to 8 letters or digits, repeated.",
            domain::LANGUAGE_PATTERN,
            35,
            "pt-BR",
        )
    }
}

impl ToSchema for LanguageTag {}

/// A phone number.
#[derive(Debug)]
pub struct PhoneNumber;

impl PartialSchema for PhoneNumber {
    fn schema() -> RefOr<Schema> {
        string_schema(
            "5 to 15 digits, with spaces, `-`, `(`, `)` and a leading `+` as you like.",
            domain::PHONE_NUMBER_PATTERN,
            None,
            "+33 1 23 45 67 89",
        )
    }
}

impl ToSchema for PhoneNumber {}

/// An http(s) URL of a picture.
#[derive(Debug)]
pub struct AvatarUrl;

impl PartialSchema for AvatarUrl {
    fn schema() -> RefOr<Schema> {
        string_schema(
            "An http(s) URL on a named host, at most 2048 characters; stored trimmed. \
             Setting another URL (or null) over an avatar uploaded with \
             `PUT /users/me/avatar` deletes that image.",
            domain::AVATAR_URL_PATTERN,
            2048,
            "https://cdn.example.com/avatars/alice.png",
        )
    }
}

impl ToSchema for AvatarUrl {}

/// A first or last name.
#[derive(Debug)]
pub struct PersonName;

impl PartialSchema for PersonName {
    fn schema() -> RefOr<Schema> {
        string_schema(
            "At most 100 characters on one line, no control characters; stored trimmed.",
            domain::PROFILE_LINE_PATTERN,
            100,
            "Alice",
        )
    }
}

impl ToSchema for PersonName {}

/// A short biography.
#[derive(Debug)]
pub struct Bio;

impl PartialSchema for Bio {
    fn schema() -> RefOr<Schema> {
        string_schema(
            "At most 1000 characters, no control characters but line feeds; stored trimmed.",
            domain::PROFILE_TEXT_PATTERN,
            1000,
            "Writes the nightly reports.",
        )
    }
}

impl ToSchema for Bio {}

/// The document as served: `doc` with the task kinds this deployment offers
/// (`ENABLE_TEST_KINDS` adds some) written into the request schemas that name
/// one. `kind` lists them, and `payload` must fit the chosen kind's
/// `payload_schema`, as `GET /api/v1/tasks/kinds` shows it.
///
/// # Panics
/// The document does not serialise (a bug, caught by every test).
pub fn complete(doc: &utoipa::openapi::OpenApi, settings: &KindSettings) -> Value {
    let mut doc = serde_json::to_value(doc).expect("the OpenAPI document serialises");
    let offered: Vec<&KindSpec> = kinds::enabled(settings).collect();
    let schemas = &mut doc["components"]["schemas"];
    // (schema, the kind an absent `kind` means, whether `payload` follows the kind)
    // A patch's payload is checked against the stored kind when it names none,
    // which no schema of the patch alone can say.
    for (name, default_kind, tied) in [
        ("NewTaskRequest", Some("noop"), true),
        ("NewScheduleRequest", None, true),
        ("SchedulePatch", None, false),
    ] {
        let schema = &mut schemas[name];
        let kind = &mut schema["properties"]["kind"];
        let nullable = kind["type"]
            .as_array()
            .is_some_and(|t| t.contains(&json!("null")));
        let mut names: Vec<Value> = offered.iter().map(|k| Value::from(k.name)).collect();
        if nullable {
            names.push(Value::Null);
        }
        kind["enum"] = Value::Array(names);
        if tied {
            let choices = offered
                .iter()
                .map(|kind| payload_choice(kind, default_kind));
            schema["oneOf"] = choices.collect();
        }
    }
    doc
}

/// The `kind` and `payload` a request naming `kind` has: its payload
/// required when the kind's schema requires a field, else optional (`null`
/// or absent is `{}`).
fn payload_choice(kind: &KindSpec, default_kind: Option<&str>) -> Value {
    let payload = (kind.payload_schema)();
    let payload_required = payload["required"]
        .as_array()
        .is_some_and(|r| !r.is_empty());
    let is_default = default_kind == Some(kind.name);
    let mut required = Vec::new();
    let kind_schema = if is_default {
        json!({"enum": [kind.name, null]})
    } else {
        required.push("kind");
        json!({"const": kind.name})
    };
    let payload_schema = if payload_required {
        required.push("payload");
        payload
    } else {
        json!({"oneOf": [{"type": "null"}, payload]})
    };
    let mut choice = json!({"properties": {"kind": kind_schema, "payload": payload_schema}});
    if !required.is_empty() {
        choice["required"] = json!(required);
    }
    choice
}
