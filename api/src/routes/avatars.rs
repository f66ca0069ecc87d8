//! Avatars: `PUT`/`DELETE /api/v1/users/me/avatar` set and remove the
//! caller's picture (PNG, JPEG or WebP, told by its bytes and held to a size
//! and pixel limit), stored as a `files` row of purpose `avatar`; and
//! `GET /api/v1/avatars/{id}` serves it to anyone, as `<img>` tags send no
//! credentials. Replacing one is [`crate::avatars`]'s.

use axum::{
    extract::{DefaultBodyLimit, Multipart, State, multipart::Field},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::Response,
};
use bytes::Bytes;
use imagesize::ImageType;
use keel_shared::{
    db::files::{self, NewFile, Purpose},
    storage::{Storage, WriteError},
};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Principal,
    avatars::{avatar_id, replace},
    error::{ApiError, FieldError},
    extract::{AppJson, AppMultipart, AppPath},
    files::{serve, upload},
    openapi::{NotFound, ResourceErrors, SignedIn},
    problems::{Code, problem_response},
    responses::UserResponse,
    state::AppState,
};

/// The widest and tallest avatar, in pixels: what a browser decodes for an
/// `<img>` stays bounded (4096 × 4096 × 4 bytes is 64 MiB).
const MAX_SIDE: usize = 4096;
/// How much of the image is kept to read its dimensions from: a JPEG's
/// frame header comes after its EXIF, ICC and XMP segments, often past the
/// 8 KiB storage keeps for sniffing (each segment is at most 64 KiB).
const HEADER_BYTES: usize = 256 * 1024;
/// Avatar URLs name one image for ever (a new avatar is a new id), so
/// caches may keep them; briefly, so a removed avatar disappears soon.
const CACHE_CONTROL: &str = "public, max-age=3600";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(put_avatar, delete_avatar))
        .routes(routes!(get_avatar))
        // The avatar's own limit applies as the bytes stream in; the
        // request's is `MAX_AVATAR_BYTES` plus room for the form (see
        // `middleware::body_limit`).
        .layer(DefaultBodyLimit::disable())
}

/// An avatar upload (`multipart/form-data`).
#[derive(Debug, ToSchema)]
#[schema(example = json!({"file": "(the image's bytes)"}))]
// No other part is taken; the schema says so (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Documents the form; the handler reads it part by part.
pub struct AvatarForm {
    /// The image, PNG, JPEG or WebP as its bytes tell (the name and the
    /// part's `Content-Type` are not believed): at most `MAX_AVATAR_BYTES`,
    /// 1 to 4096 pixels on each side. The part may also be named `avatar`.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// Sets the caller's avatar: the image is stored and `avatar_url` becomes
/// its public URL, `{APP_BASE_URL}/api/v1/avatars/{id}`. The avatar it
/// replaces, if Keel stored it, is deleted. Avatars count against the
/// storage quota.
#[utoipa::path(put, path = "/api/v1/users/me/avatar", tag = "users", security(("bearer" = []), ("api_key" = [])),
    request_body(content = AvatarForm, content_type = "multipart/form-data"),
    responses(
        SignedIn,
        (status = 200, description = "The caller, with `avatar_url` at the new image", body = UserResponse,
            example = json!({
                "id": "01936f0e-5c4d-7a1b-9e2f-3a4b5c6d7e8f", "username": "alice", "email": "alice@example.com",
                "first_name": "Alice", "last_name": "Liddell", "phone_number": null, "phone_verified": false,
                "avatar_url": "https://keel.example.com/api/v1/avatars/01937a2b-3c4d-7e5f-8a9b-0c1d2e3f4a5b",
                "bio": null, "timezone": "Europe/Berlin", "language": "en", "role": "user",
                "is_active": true, "two_fa_enabled": false, "totp_enabled": false, "email_verified": true,
                "last_login_at": "2026-01-15T09:30:00Z", "created_at": "2026-01-10T08:00:00Z",
                "updated_at": "2026-01-15T09:31:00Z"
            })),
        (status = 400, response = inline(MalformedMultipart)),
        (status = 413, response = inline(TooLarge)),
        (status = 415, response = inline(NotAnImage)),
        (status = 422, response = inline(BadImage)),
    ))]
async fn put_avatar(
    State(state): State<AppState>,
    principal: Principal,
    AppMultipart(mut multipart): AppMultipart,
) -> Result<AppJson<UserResponse>, ApiError> {
    let owner = principal.id();
    let limit = state.config.storage.max_avatar_bytes;
    let mut received = None;
    let read = read_parts(&state.storage, &mut multipart, owner, limit, &mut received).await;
    let image = match (read, received) {
        (Ok(()), Some(image)) => image,
        (Ok(()), None) => return Err(field_error("file", "an image part is required")),
        (Err(e), received) => {
            discard(&state.storage, received.as_ref()).await;
            return Err(e);
        }
    };
    let user = match replace(&state, owner, Some(&image)).await {
        Ok(user) => user,
        Err(e) => {
            discard(&state.storage, Some(&image)).await;
            return Err(e);
        }
    };
    tracing::info!(user_id = %owner, file_id = %image.id, size = image.size, content_type = image.content_type, "avatar set");
    Ok(AppJson(user.into()))
}

/// Removes the caller's avatar: `avatar_url` becomes `null`, and the image,
/// if Keel stored it, is deleted. Without an avatar, the same answer.
#[utoipa::path(delete, path = "/api/v1/users/me/avatar", tag = "users", security(("bearer" = []), ("api_key" = [])),
    responses(
        SignedIn,
        (status = 200, description = "The caller, without an avatar", body = UserResponse),
    ))]
async fn delete_avatar(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<AppJson<UserResponse>, ApiError> {
    let user = replace(&state, principal.id(), None).await?;
    tracing::info!(user_id = %principal.id(), "avatar removed");
    Ok(AppJson(user.into()))
}

/// An avatar's image, to anyone: `avatar_url` points here. Only a user's
/// current avatar is served (any other file is 404), inline, as the type its
/// bytes were found to be; `ETag`, `If-None-Match` and `Range` work as for
/// file downloads.
#[utoipa::path(get, path = "/api/v1/avatars/{id}", tag = "users",
    params(
        ("id" = Uuid, Path, description = "The avatar's id: the last segment of `avatar_url`"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`"),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of a copy the client holds"),
    ),
    responses(
        ResourceErrors,
        (status = 200, description = "The image, as the type its bytes were found to be",
            content((Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/webp")),
            headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 206, description = "The requested range",
            content((Vec<u8> = "image/png"), (Vec<u8> = "image/jpeg"), (Vec<u8> = "image/webp")),
            headers(("Content-Range" = String), ("ETag" = String))),
        (status = 304, description = "Not modified: the client's copy is current"),
        (status = 404, response = NotFound),
        (status = 416, response = inline(RangeNotSatisfiable)),
    ))]
async fn get_avatar(
    State(state): State<AppState>,
    AppPath(id): AppPath<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let gone = || ApiError::not_found("no such avatar");
    let file = files::find(&state.db, id)
        .await?
        .filter(|f| f.purpose == Purpose::Avatar)
        .ok_or_else(gone)?;
    // A file whose owner has since set a URL of their own (PATCH /users/me)
    // is no longer their avatar: it stays private.
    let owner = state.users.get(&state.db, file.owner_id).await?;
    if owner.and_then(|u| avatar_id(u.user.avatar_url.as_deref())) != Some(file.id) {
        return Err(gone());
    }
    let mut response = serve(&state, &file, &headers, false).await?;
    if response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED {
        let headers = response.headers_mut();
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        );
        // Pages of other origins show avatars, even those isolated with
        // `Cross-Origin-Embedder-Policy`. (`X-Content-Type-Options: nosniff`
        // comes with every response, from `middleware::security_headers`.)
        headers.insert(
            HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("cross-origin"),
        );
    }
    Ok(response)
}

async fn read_parts(
    storage: &Storage,
    multipart: &mut Multipart,
    owner: Uuid,
    limit: u64,
    received: &mut Option<NewFile>,
) -> Result<(), ApiError> {
    while let Some(field) = multipart.next_field().await.map_err(upload::malformed)? {
        match field.name().unwrap_or_default() {
            "file" | "avatar" if received.is_none() => {
                *received = Some(store(storage, field, owner, limit).await?);
            }
            name @ ("file" | "avatar") => {
                return Err(field_error(name, "an avatar is one image"));
            }
            other => {
                return Err(field_error(
                    if other.is_empty() { "form" } else { other },
                    "is not a field of an avatar upload (file)",
                ));
            }
        }
    }
    Ok(())
}

/// Streams the image part into storage, held to `limit` bytes; its type and
/// dimensions are checked before the object is completed, so a refused
/// image leaves nothing behind.
async fn store(
    storage: &Storage,
    mut field: Field<'_>,
    owner: Uuid,
    limit: u64,
) -> Result<NewFile, ApiError> {
    let name = match field.file_name() {
        Some(name) if !name.trim().is_empty() => upload::sanitize_name(name),
        _ => "avatar".to_owned(),
    };
    let id = Uuid::now_v7();
    let key = files::object_key(id);
    let mut object = storage.writer(&key, limit);
    let mut header = Vec::new();
    loop {
        let chunk: Bytes = match field.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                object.abort().await;
                return Err(upload::malformed(e));
            }
        };
        if header.len() < HEADER_BYTES {
            let take = (HEADER_BYTES - header.len()).min(chunk.len());
            header.extend_from_slice(&chunk[..take]);
        }
        match object.write(chunk).await {
            Ok(()) => {}
            Err(WriteError::TooLarge) => {
                object.abort().await;
                return Err(ApiError::new(
                    Code::FileTooLarge,
                    format!("an avatar may be at most {limit} bytes"),
                ));
            }
            Err(WriteError::Store(e)) => {
                object.abort().await;
                return Err(storage_failed(e));
            }
        }
    }
    let content_type = match inspect(&header) {
        Ok(content_type) => content_type,
        Err(e) => {
            object.abort().await;
            return Err(e);
        }
    };
    let written = object.finish().await.map_err(storage_failed)?;
    Ok(NewFile {
        id,
        owner_id: owner,
        purpose: Purpose::Avatar,
        name,
        size: i64::try_from(written.size).unwrap_or(i64::MAX),
        content_type: content_type.to_owned(),
        sha256: written.sha256,
        description: None,
        tags: Vec::new(),
        task_id: None,
        object_key: key,
    })
}

/// The image's type, if its bytes are a PNG, JPEG or WebP whose header
/// gives 1 to [`MAX_SIDE`] pixels a side. Two readers must agree on the
/// type (`infer`, `imagesize`), so a file made to pass one is refused.
fn inspect(header: &[u8]) -> Result<&'static str, ApiError> {
    let (content_type, format) = match upload::sniff(header) {
        "image/png" => ("image/png", ImageType::Png),
        "image/jpeg" => ("image/jpeg", ImageType::Jpeg),
        "image/webp" => ("image/webp", ImageType::Webp),
        other => {
            return Err(ApiError::new(
                Code::UnsupportedImage,
                format!("an avatar is a PNG, JPEG or WebP image; this is {other}"),
            ));
        }
    };
    let invalid = |why: &str| ApiError::new(Code::InvalidImage, format!("the image {why}"));
    if imagesize::image_type(header).ok() != Some(format) {
        return Err(invalid("is not what its first bytes say"));
    }
    // `imagesize` reads a PNG's size at its offset without looking for the
    // chunk that holds it, which must come first.
    if format == ImageType::Png && header.get(12..16) != Some(b"IHDR".as_slice()) {
        return Err(invalid("has no header chunk"));
    }
    let size = imagesize::blob_size(header).map_err(|_| invalid("header cannot be read"))?;
    if size.width == 0 || size.height == 0 {
        return Err(invalid("has no pixels"));
    }
    if size.width > MAX_SIDE || size.height > MAX_SIDE {
        return Err(ApiError::new(
            Code::ImageTooLarge,
            format!(
                "the image is {} × {} pixels; at most {MAX_SIDE} on each side",
                size.width, size.height
            ),
        ));
    }
    Ok(content_type)
}

/// Deletes the object of an image that will not be recorded.
async fn discard(storage: &Storage, image: Option<&NewFile>) {
    if let Some(image) = image {
        upload::discard(storage, std::slice::from_ref(image)).await;
    }
}

fn storage_failed(e: impl std::error::Error + Send + Sync + 'static) -> ApiError {
    ApiError::unavailable(anyhow::Error::new(e).context("file storage failed"))
}

fn field_error(field: &str, message: &str) -> ApiError {
    ApiError::validation(vec![FieldError {
        field: field.into(),
        message: message.into(),
    }])
}

problem_response!(
    /// `malformed_multipart`: the body is not a readable multipart form.
    MalformedMultipart = [MalformedMultipart]
);
problem_response!(
    /// `file_too_large` (over `MAX_AVATAR_BYTES`), `quota_exceeded` (over what is
    /// left of `USER_STORAGE_QUOTA_BYTES`, the replaced avatar's bytes freed), or
    /// `payload_too_large` (the whole request).
    TooLarge = [FileTooLarge, QuotaExceeded, PayloadTooLarge]
);
problem_response!(
    /// `unsupported_image`: the bytes are not a PNG, JPEG or WebP image, whatever
    /// the name or the part's type say; or `unsupported_media_type`: the body is
    /// not `multipart/form-data`.
    NotAnImage = [UnsupportedImage, UnsupportedMediaType]
);
problem_response!(
    /// `image_too_large` (over 4096 pixels a side), `invalid_image` (its header
    /// cannot be read, or it has no pixels), or `validation_failed` (no image part,
    /// a second one, or another field).
    BadImage = [ImageTooLarge, InvalidImage, ValidationFailed]
);
problem_response!(
    /// `range_not_satisfiable`.
    RangeNotSatisfiable = [RangeNotSatisfiable]
);

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG's signature and header chunk, `width` × `height`.
    fn png(width: u32, height: u32) -> Vec<u8> {
        let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        bytes.extend_from_slice(&width.to_be_bytes());
        bytes.extend_from_slice(&height.to_be_bytes());
        bytes.extend_from_slice(b"\x08\x06\0\0\0\0\0\0\0");
        bytes
    }

    fn code(result: Result<&str, ApiError>) -> &'static str {
        match result {
            Err(ApiError::Client { code, .. }) => code.as_str(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn types_and_sizes_come_from_the_header() {
        assert_eq!(inspect(&png(1, 1)).unwrap(), "image/png");
        assert_eq!(inspect(&png(4096, 4096)).unwrap(), "image/png");
        assert_eq!(code(inspect(&png(4097, 1))), "image_too_large");
        assert_eq!(code(inspect(&png(0, 1))), "invalid_image");
        assert_eq!(code(inspect(b"\x89PNG\r\n\x1a\n")), "invalid_image");
        let mut not_ihdr = png(1, 1);
        not_ihdr[12..16].copy_from_slice(b"IDAT");
        assert_eq!(code(inspect(&not_ihdr)), "invalid_image");
        assert_eq!(code(inspect(b"GIF89a\x01\0\x01\0")), "unsupported_image");
        assert_eq!(code(inspect(b"hello, world")), "unsupported_image");
        // `infer` calls it WebP from bytes 8 to 12 alone; `imagesize` wants RIFF.
        assert_eq!(code(inspect(b"XXXX\0\0\0\0WEBPVP8 ")), "invalid_image");
    }
}
