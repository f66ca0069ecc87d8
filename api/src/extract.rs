//! Extractors that turn axum's rejections into `ApiError`s: `AppJson` (a
//! `Json` whose malformed, mistyped or oversized bodies answer
//! problem+json), `JsonBytes` (the same checks, with the exact body kept),
//! `AppMultipart`, `AppQuery`, `AppPath` and `JsonOrForm`.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request, rejection::JsonRejection},
    http::{HeaderMap, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::error::{ApiError, FieldError};
use crate::problems::Code;

mod framing;

/// JSON in and out. As an extractor: 415 without a JSON content type, 400
/// for malformed JSON, 413 over the body limit, 422 (naming the field) for
/// well-formed JSON of the wrong shape, an array included.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        JsonBytes::from_request(req, state).await?.parse().map(Self)
    }
}

impl<T: Serialize> IntoResponse for AppJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A JSON body as its exact bytes, for handlers that must hash what the
/// client sent (`Idempotency-Key`) before parsing it with
/// [`JsonBytes::parse`]. Refuses as `AppJson` does: 415 without a JSON
/// content type, 413 over the body limit; parsing gives 400 or 422.
#[derive(Debug, Clone, Default)]
pub struct JsonBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for JsonBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(req.headers()) {
            return Err(unsupported_media_type());
        }
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    payload_too_large()
                } else {
                    ApiError::new(Code::BadRequest, rejection.body_text())
                }
            })
    }
}

impl JsonBytes {
    /// The body, a JSON object, as `T`: 400 for malformed JSON, 422 naming
    /// the field for well-formed JSON of the wrong shape.
    ///
    /// # Errors
    /// As above.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        // serde reads a struct from an array too, field by field in order
        // (`["a@example.com"]` as `{"email": …}`); every body Keel takes is
        // an object, as its document says.
        if self.0.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::validation(vec![FieldError {
                field: "body".into(),
                message: "must be a JSON object".into(),
            }]));
        }
        axum::Json::<T>::from_bytes(&self.0)
            .map(|axum::Json(value)| value)
            .map_err(|rejection| json_rejection(&rejection))
    }
}

/// A `multipart/form-data` body, read part by part. As an extractor: 415
/// `unsupported_media_type` for any other content type, 400
/// `malformed_multipart` for a multipart type without a usable boundary.
#[derive(Debug)]
pub struct AppMultipart(pub axum::extract::Multipart);

impl<S: Send + Sync> FromRequest<S> for AppMultipart {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let essence = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        if essence.as_deref() != Some("multipart/form-data") {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "expected a body with Content-Type: multipart/form-data",
            ));
        }
        let no_boundary = || {
            ApiError::new(
                Code::MalformedMultipart,
                "the multipart body cannot be read: its Content-Type has no usable boundary",
            )
        };
        let boundary = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(framing::boundary_of)
            .ok_or_else(no_boundary)?;
        // The framing is bounded before multer buffers it (see `framing`).
        let req =
            req.map(|body| axum::body::Body::new(framing::FramingGuard::new(body, &boundary)));
        axum::extract::Multipart::from_request(req, state)
            .await
            .map(Self)
            .map_err(|_| no_boundary())
    }
}

/// `application/json` or any `application/*+json`, as axum's `Json` accepts.
fn has_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        Code::UnsupportedMediaType,
        "expected a body with Content-Type: application/json",
    )
}

fn payload_too_large() -> ApiError {
    ApiError::new(Code::PayloadTooLarge, "the request body is too large")
}

fn json_rejection(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => unsupported_media_type(),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::new(Code::MalformedJson, serde_text(rejection))
        }
        JsonRejection::JsonDataError(_) => invalid_field(&serde_text(rejection)),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            payload_too_large()
        }
        // The body could not be read (axum says 400).
        other => ApiError::new(Code::BadRequest, other.body_text()),
    }
}

/// serde's own message (with the field's path), without axum's
/// "Failed to deserialize the JSON body…: " preamble.
fn serde_text(rejection: &JsonRejection) -> String {
    let text = rejection.body_text();
    match text.split_once(": ") {
        Some((preamble, rest)) if preamble.starts_with("Failed to") => rest.to_owned(),
        _ => text,
    }
}

/// A 422 from a serde message, or a query or form rejection's text
/// ("Failed to …: <serde message>"): the field it names, and what was
/// wrong in the client's terms.
fn invalid_field(text: &str) -> ApiError {
    let message = match text.split_once(": ") {
        Some((preamble, rest)) if preamble.starts_with("Failed to") => rest,
        _ => text,
    };
    let field = field_of(message);
    ApiError::validation(vec![FieldError {
        message: client_terms(message, &field),
        field,
    }])
}

/// A serde message said the way a client reads it: without the field's
/// path (the error names the field already), without a position in the
/// body, and without the names of parser internals (chrono's "input
/// contains invalid characters", a Rust type's name).
pub(crate) fn client_terms(message: &str, field: &str) -> String {
    let message = message
        .strip_prefix(field)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(message);
    if message.starts_with("duplicate field") {
        return "is given more than once".to_owned();
    }
    let message = match message.rfind(" at line ") {
        Some(at) if message[at..].contains(" column ") => &message[..at],
        _ => message,
    };
    const TIMESTAMP: &str = "must be an RFC 3339 timestamp such as 2026-01-15T09:30:00Z";
    // chrono's parse errors (`chrono::format::ParseErrorKind`).
    let chrono = [
        "input contains invalid characters",
        "premature end of input",
        "trailing input",
        "input is out of range",
        "input is not enough for unique date and time",
        "no possible date and time matching input",
        "bad or unsupported format string",
    ];
    if chrono.contains(&message) {
        return TIMESTAMP.to_owned();
    }
    // The standard library's number and boolean parse errors (query strings).
    match message {
        "invalid digit found in string" | "cannot parse integer from empty string" => {
            return "must be a whole number".to_owned();
        }
        "number too large to fit in target type" => return "is too large".to_owned(),
        "number too small to fit in target type" => return "is too small".to_owned(),
        "provided string was not `true` or `false`" => return "must be true or false".to_owned(),
        _ => {}
    }
    if message.starts_with("UUID parsing failed") {
        return "must be a UUID".to_owned();
    }
    if message.contains("internally tagged enum") {
        return "must be a JSON object with a `type` field".to_owned();
    }
    if let Some((got, expected)) = message
        .strip_prefix("invalid type: ")
        .and_then(|m| m.split_once(", expected "))
    {
        let expected = if expected.starts_with("struct ") || expected.starts_with("a map") {
            "a JSON object"
        } else {
            expected
        };
        return format!("must be {expected}, not {got}");
    }
    message.to_owned()
}

/// The field a serde message names (`missing field `name``, `duplicate
/// field `page``, or a path like `tasks[0].name: invalid type…`), or
/// `body` when it names none.
fn field_of(message: &str) -> String {
    if let Some(rest) = message.split_once('`').map(|(_, r)| r)
        && let Some((field, _)) = rest.split_once('`')
        && ["missing field", "unknown field", "duplicate field"]
            .iter()
            .any(|m| message.starts_with(m))
    {
        return field.to_owned();
    }
    match message.split_once(": ") {
        Some((path, _)) if !path.contains(' ') && path != "." => path.to_owned(),
        _ => "body".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::{client_terms, field_of};

    #[test]
    fn messages_say_once_what_was_wrong_in_the_clients_terms() {
        let said = |m: &str| client_terms(m, &field_of(m));
        assert_eq!(
            said("scheduled_at: input contains invalid characters at line 1 column 69"),
            "must be an RFC 3339 timestamp such as 2026-01-15T09:30:00Z"
        );
        assert_eq!(
            said("tasks[0].scheduled_at: premature end of input at line 1 column 40"),
            "must be an RFC 3339 timestamp such as 2026-01-15T09:30:00Z"
        );
        assert_eq!(
            said("invalid type: null, expected internally tagged enum ClientMessage"),
            "must be a JSON object with a `type` field"
        );
        assert_eq!(
            said("name: invalid type: integer `1`, expected a string at line 1 column 9"),
            "must be a string, not integer `1`"
        );
        assert_eq!(
            said("invalid type: sequence, expected struct NewTaskRequest at line 1 column 0"),
            "must be a JSON object, not sequence"
        );
        assert_eq!(
            said("missing field `name` at line 1 column 2"),
            "missing field `name`"
        );
        assert_eq!(
            said("page: invalid digit found in string"),
            "must be a whole number"
        );
        assert_eq!(
            said("size: number too large to fit in target type"),
            "is too large"
        );
        assert_eq!(
            said("is_active: provided string was not `true` or `false`"),
            "must be true or false"
        );
        assert_eq!(field_of("duplicate field `page`"), "page");
        assert_eq!(said("duplicate field `page`"), "is given more than once");
    }

    #[test]
    fn field_names_come_from_serde_messages() {
        assert_eq!(field_of("missing field `name` at line 1 column 2"), "name");
        assert_eq!(
            field_of("unknown field `role`, expected one of `a`"),
            "role"
        );
        assert_eq!(
            field_of("tasks[0].name: invalid type: integer `1`, expected a string"),
            "tasks[0].name"
        );
        assert_eq!(
            field_of("invalid type: integer `1`, expected a string at line 1 column 1"),
            "body"
        );
    }
}

/// Query parameters; a bad one is a 422 naming it.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for AppQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(invalid_field(&rejection.body_text())),
        }
    }
}

/// Path parameters; one that does not parse (an id that is not a UUID)
/// names nothing that exists: 404.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppPath<T>(pub T);

impl<T, S> FromRequestParts<S> for AppPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Self(value))
            .map_err(|_| ApiError::not_found(format!("nothing at {}", parts.uri.path())))
    }
}

/// A body as JSON or as `application/x-www-form-urlencoded` (the OAuth2
/// token endpoint takes both).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonOrForm<T>(pub T);

impl<T, S> FromRequest<S> for JsonOrForm<T>
where
    T: serde::de::DeserializeOwned + 'static,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_form = req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return AppJson::<T>::from_request(req, state)
                .await
                .map(|AppJson(v)| Self(v));
        }
        match axum::extract::Form::<T>::from_request(req, state).await {
            Ok(axum::extract::Form(value)) => Ok(Self(value)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(
                ApiError::new(Code::PayloadTooLarge, "the request body is too large"),
            ),
            Err(rejection) => Err(invalid_field(&rejection.body_text())),
        }
    }
}
