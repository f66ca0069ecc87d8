//! `/api/v1/files`: multipart uploads streamed to storage, the caller's
//! files (an admin's: everyone's), their metadata, downloads (whole or by
//! range, with an `ETag`), and deletion of the row and then its object.
//! Another user's file answers 404, as if it did not exist.

use axum::{
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use keel_shared::db::files::{self, File, Purpose};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Principal,
    avatars,
    error::ApiError,
    extract::{AppJson, AppMultipart, AppPath, AppQuery},
    files::{record, serve, upload},
    openapi::{OwnObject, SignedIn, ValidationFailed},
    pagination::{Page, PageQuery, PageRequest},
    problems::problem_response,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_files, list_files))
        .routes(routes!(get_file, delete_file))
        .routes(routes!(download))
        // The upload's own limits apply (per file, per request, the quota),
        // checked as the bytes stream in; see `middleware::body_limit`.
        .layer(DefaultBodyLimit::disable())
}

/// A stored file.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "01936f0f-1a2b-7c3d-8e4f-5a6b7c8d9e0f", "owner_id": "01936f0e-5c4d-7a1b-9e2f-3a4b5c6d7e8f",
    "name": "report.pdf", "size": 48213, "content_type": "application/pdf",
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "description": "Q3 figures", "tags": ["finance", "q3"], "purpose": "upload", "task_id": null,
    "created_at": "2026-01-15T09:30:00Z"
}))]
pub struct FileResponse {
    pub id: Uuid,
    pub owner_id: Uuid,
    /// The uploaded name without any directory part.
    pub name: String,
    /// Bytes.
    pub size: i64,
    /// Detected from the content, not taken from the upload.
    pub content_type: String,
    /// SHA-256 of the content, lower-case hex; also the download's `ETag`.
    pub sha256: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    /// `upload`, `avatar` or `task_output`.
    pub purpose: Purpose,
    /// The task that wrote this file (`task_output`).
    pub task_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl From<File> for FileResponse {
    fn from(f: File) -> Self {
        Self {
            sha256: f.sha256_hex(),
            id: f.id,
            owner_id: f.owner_id,
            name: f.name,
            size: f.size,
            content_type: f.content_type,
            description: f.description,
            tags: f.tags,
            purpose: f.purpose,
            task_id: f.task_id,
            created_at: f.created_at,
        }
    }
}

/// The files one upload stored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"items": [{
        "id": "01936f0f-1a2b-7c3d-8e4f-5a6b7c8d9e0f", "owner_id": "01936f0e-5c4d-7a1b-9e2f-3a4b5c6d7e8f",
        "name": "report.pdf", "size": 48213, "content_type": "application/pdf",
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "description": "Q3 figures", "tags": ["finance", "q3"], "purpose": "upload", "task_id": null,
        "created_at": "2026-01-15T09:30:00Z"
    }]}))]
pub struct Uploaded {
    pub items: Vec<FileResponse>,
}

/// A multipart upload (`multipart/form-data`). Any other part is refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"file": ["(the bytes of report.pdf)"], "description": "Q3 figures", "tags": ["finance,q3"]}))]
#[allow(dead_code)] // Documents the form; the handler reads it part by part.
pub struct UploadForm {
    /// One or more files (repeat the part), each with a file name; at most
    /// `MAX_FILES_PER_UPLOAD` (10 by default).
    #[schema(value_type = Vec<String>, format = Binary, min_items = 1)]
    file: Vec<Vec<u8>>,
    /// Applies to every file of the upload; at most 1,000 characters.
    #[schema(max_length = 1000)]
    description: Option<String>,
    /// Tags: repeat the part, or put several in one part separated by
    /// commas (`finance,q3`); at most 20 in all, each 1 to 50 printable
    /// characters. Empty items are skipped.
    #[schema(example = json!(["finance,q3"]))]
    tags: Option<Vec<String>>,
}

/// Uploads one or more files, streamed to storage (never held whole in
/// memory). Each file may be `MAX_UPLOAD_BYTES` at most and all of the
/// caller's files `USER_STORAGE_QUOTA_BYTES` together (413 beyond); the
/// type is detected from the bytes; names lose any directory part.
#[utoipa::path(post, path = "/api/v1/files", tag = "files", security(("bearer" = []), ("api_key" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        SignedIn,
        (status = 201, description = "The stored files", body = Uploaded),
        (status = 400, response = inline(MalformedMultipart)),
        (status = 413, response = inline(TooLarge)),
        (status = 415, response = inline(NotMultipart)),
        (status = 422, response = ValidationFailed),
    ))]
async fn upload_files(
    State(state): State<AppState>,
    principal: Principal,
    AppMultipart(mut multipart): AppMultipart,
) -> Result<impl IntoResponse, ApiError> {
    let owner = principal.id();
    let used = u64::try_from(files::used_bytes(&state.db, owner).await?).unwrap_or(0);
    let limits = upload::Limits {
        file: state.config.storage.max_upload_bytes,
        quota_left: state
            .config
            .storage
            .user_storage_quota_bytes
            .saturating_sub(used),
        files: state.config.storage.max_files_per_upload as usize,
    };
    let received = upload::receive(&state.storage, &mut multipart, owner, limits).await?;
    let items: Vec<FileResponse> = record(&state, owner, &received.files)
        .await?
        .into_iter()
        .map(FileResponse::from)
        .collect();
    for item in &items {
        tracing::info!(user_id = %owner, file_id = %item.id, size = item.size, content_type = item.content_type, "file uploaded");
    }
    Ok((StatusCode::CREATED, AppJson(Uploaded { items })))
}

/// The caller's uploads and task outputs, newest first (an admin's list
/// holds everyone's). Avatars are not listed.
#[utoipa::path(get, path = "/api/v1/files", tag = "files", security(("bearer" = []), ("api_key" = [])),
    params(PageQuery),
    responses(
        SignedIn,
        (status = 200, description = "A page of files", body = Page<FileResponse>,
            example = json!({"items": [{
        "id": "01936f0f-1a2b-7c3d-8e4f-5a6b7c8d9e0f", "owner_id": "01936f0e-5c4d-7a1b-9e2f-3a4b5c6d7e8f",
        "name": "report.pdf", "size": 48213, "content_type": "application/pdf",
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "description": "Q3 figures", "tags": ["finance", "q3"], "purpose": "upload", "task_id": null,
        "created_at": "2026-01-15T09:30:00Z"
    }], "total": 1, "page": 1, "size": 20, "pages": 1})),
        (status = 422, response = ValidationFailed),
    ))]
async fn list_files(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<AppJson<Page<FileResponse>>, ApiError> {
    let page = PageRequest::parse(query)?;
    let owner = (!principal.is_admin()).then(|| principal.id());
    let (items, total) = files::list(&state.db, owner, page.limit(), page.offset()).await?;
    let items = items.into_iter().map(FileResponse::from).collect();
    Ok(AppJson(Page::new(items, total, page)))
}

/// File `id` if the caller may see it: their own, or any for an admin.
async fn visible(state: &AppState, principal: &Principal, id: Uuid) -> Result<File, ApiError> {
    files::find(&state.db, id)
        .await?
        .filter(|f| f.owner_id == principal.id() || principal.is_admin())
        .ok_or_else(|| ApiError::not_found("no such file"))
}

/// A file's metadata.
#[utoipa::path(get, path = "/api/v1/files/{id}", tag = "files", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The file's id")),
    responses(
        OwnObject,
        (status = 200, description = "The file", body = FileResponse),
    ))]
async fn get_file(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
) -> Result<AppJson<FileResponse>, ApiError> {
    visible(&state, &principal, id)
        .await
        .map(|f| AppJson(FileResponse::from(f)))
}

/// Deletes a file: its row, then its object (an object that cannot be
/// deleted now is swept later). Deleting the caller's current avatar
/// removes it, as `DELETE /users/me/avatar` does: `avatar_url` becomes `null`.
#[utoipa::path(delete, path = "/api/v1/files/{id}", tag = "files", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The file's id")),
    responses(
        OwnObject,
        (status = 204, description = "Deleted"),
    ))]
async fn delete_file(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    let file = visible(&state, &principal, id).await?;
    let mut tx = state.db.begin().await?;
    // An avatar's owner is locked before its row, as a change of avatar
    // locks them; and their `avatar_url` must not go on naming it.
    let avatar_owner = match file.purpose {
        Purpose::Avatar => avatars::lock_user(&mut tx, file.owner_id).await?,
        _ => None,
    };
    let Some(file) = files::delete(&mut *tx, id).await? else {
        return Err(ApiError::not_found("no such file"));
    };
    if let Some(owner) = &avatar_owner {
        avatars::forget(&mut tx, owner, file.id).await?;
    }
    tx.commit().await?;
    if let Some(owner) = avatar_owner {
        state.users.invalidate(owner.id).await;
    }
    if let Err(e) = state.storage.delete(&file.object_key).await {
        tracing::warn!(error = %e, file_id = %id, "could not delete a file's object; the sweep will");
    }
    tracing::info!(user_id = %principal.id(), file_id = %id, "file deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The file's bytes, streamed: whole (200) or one `Range: bytes=…` (206;
/// 416 when it lies past the end). `ETag` is the SHA-256; a matching
/// `If-None-Match` answers 304. Always `Content-Disposition: attachment`,
/// so a browser never renders an upload as a page of this site.
#[utoipa::path(get, path = "/api/v1/files/{id}/content", tag = "files", security(("bearer" = []), ("api_key" = [])),
    params(
        ("id" = Uuid, Path, description = "The file's id"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`, `bytes=1024-` or `bytes=-512`"),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` of a copy the client holds"),
    ),
    responses(
        OwnObject,
        (status = 200, description = "The whole file, as the type detected at upload", content_type = "*/*", body = Vec<u8>,
            headers(("ETag" = String), ("Content-Disposition" = String), ("Accept-Ranges" = String))),
        (status = 206, description = "The requested range", content_type = "*/*", body = Vec<u8>,
            headers(("Content-Range" = String), ("ETag" = String))),
        (status = 304, description = "Not modified: the client's copy is current"),
        (status = 416, response = inline(RangeNotSatisfiable)),
    ))]
async fn download(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let file = visible(&state, &principal, id).await?;
    serve(&state, &file, &headers, true).await
}

problem_response!(
    /// `malformed_multipart`: the body is not a readable multipart form.
    MalformedMultipart = [MalformedMultipart]
);
problem_response!(
    /// `file_too_large` (over `MAX_UPLOAD_BYTES`), `quota_exceeded`, or
    /// `payload_too_large` (the whole request).
    TooLarge = [FileTooLarge, QuotaExceeded, PayloadTooLarge]
);
problem_response!(
    /// `unsupported_media_type`: the body is not `multipart/form-data`.
    NotMultipart = [UnsupportedMediaType]
);
problem_response!(
    /// `range_not_satisfiable`.
    RangeNotSatisfiable = [RangeNotSatisfiable]
);
