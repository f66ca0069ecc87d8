//! The `files` table: metadata of uploads, avatars and task outputs whose
//! bytes are objects in storage (`object_key`). Rows are inserted after
//! their object is written and deleted before it is, so a row always has
//! its object; the scheduler sweeps objects left without a row.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

macro_rules! file_columns {
    () => {
        "id, owner_id, purpose, name, size, content_type, sha256, description, tags, \
         task_id, object_key, created_at"
    };
}

/// Where objects of each purpose live in storage. Every key is under
/// [`OBJECT_PREFIX`], the part of the store the orphan sweep looks at.
pub const OBJECT_PREFIX: &str = "files";

/// What a file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Purpose {
    /// `POST /files`.
    Upload,
    /// `PUT /users/me/avatar`.
    Avatar,
    /// Written by a task (e.g. `export_tasks_csv`).
    TaskOutput,
}

/// A stored file's metadata.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct File {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub purpose: Purpose,
    pub name: String,
    pub size: i64,
    pub content_type: String,
    pub sha256: Vec<u8>,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub task_id: Option<Uuid>,
    pub object_key: String,
    pub created_at: DateTime<Utc>,
}

impl File {
    /// The checksum as lower-case hex (also the download's `ETag`).
    pub fn sha256_hex(&self) -> String {
        self.sha256.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A file about to be recorded; its object is already written.
#[derive(Debug, Clone)]
pub struct NewFile {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub purpose: Purpose,
    pub name: String,
    pub size: i64,
    pub content_type: String,
    pub sha256: [u8; 32],
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub task_id: Option<Uuid>,
    pub object_key: String,
}

/// The storage key of a new file `id`.
pub fn object_key(id: Uuid) -> String {
    format!("{OBJECT_PREFIX}/{id}")
}

/// Records `file`.
///
/// # Errors
/// The database fails.
pub async fn insert(db: impl PgExecutor<'_>, file: &NewFile) -> Result<File, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO files (id, owner_id, purpose, name, size, content_type, sha256, \
         description, tags, task_id, object_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING ",
        file_columns!()
    ))
    .bind(file.id)
    .bind(file.owner_id)
    .bind(file.purpose)
    .bind(&file.name)
    .bind(file.size)
    .bind(&file.content_type)
    .bind(file.sha256.as_slice())
    .bind(&file.description)
    .bind(&file.tags)
    .bind(file.task_id)
    .bind(&file.object_key)
    .fetch_one(db)
    .await
}

/// Why [`insert_within_quota`] recorded nothing.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the files would take their owner over the storage quota ({left} bytes left)")]
    OverQuota { left: u64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Records `new`, files of `owner`, if with every file they already keep
/// they stay within `quota` bytes; else records none. Checking before the
/// bytes arrive is not enough: two uploads that each fit alone would both
/// pass. So a lock on the owner, held until `tx` ends, makes the sum and
/// the inserts one step, and of two such uploads the second is refused.
///
/// # Errors
/// Over the quota, or the database fails.
pub async fn insert_within_quota(
    tx: &mut PgConnection,
    owner: Uuid,
    new: &[NewFile],
    quota: u64,
) -> Result<Vec<File>, RecordError> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('keel.files.quota:' || $1::text, 0))",
    )
    .bind(owner)
    .execute(&mut *tx)
    .await?;
    let used = u64::try_from(used_bytes(&mut *tx, owner).await?).unwrap_or(0);
    let adding: u64 = new
        .iter()
        .map(|f| u64::try_from(f.size).unwrap_or(u64::MAX))
        .fold(0, u64::saturating_add);
    if used.saturating_add(adding) > quota {
        return Err(RecordError::OverQuota {
            left: quota.saturating_sub(used),
        });
    }
    let mut recorded = Vec::with_capacity(new.len());
    for file in new {
        recorded.push(insert(&mut *tx, file).await?);
    }
    Ok(recorded)
}

/// File `id`.
///
/// # Errors
/// The database fails.
pub async fn find(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<File>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        file_columns!(),
        " FROM files WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// A page of uploads and task outputs (not avatars), newest first, of
/// `owner` or of everyone; and how many there are in all.
///
/// # Errors
/// The database fails.
pub async fn list(
    db: &sqlx::PgPool,
    owner: Option<Uuid>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<File>, i64), sqlx::Error> {
    let items = sqlx::query_as(concat!(
        "SELECT ",
        file_columns!(),
        " FROM files WHERE purpose <> 'avatar' AND ($1::uuid IS NULL OR owner_id = $1) \
         ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
    ))
    .bind(owner)
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    let total = sqlx::query_scalar(
        "SELECT count(*) FROM files WHERE purpose <> 'avatar' AND ($1::uuid IS NULL OR owner_id = $1)",
    )
    .bind(owner)
    .fetch_one(db)
    .await?;
    Ok((items, total))
}

/// Bytes `owner` keeps in files of every purpose.
///
/// # Errors
/// The database fails.
pub async fn used_bytes(db: impl PgExecutor<'_>, owner: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(sum(size), 0)::bigint FROM files WHERE owner_id = $1")
        .bind(owner)
        .fetch_one(db)
        .await
}

/// Deletes file `id`; the deleted row (its object is the caller's to delete).
///
/// # Errors
/// The database fails.
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<File>, sqlx::Error> {
    sqlx::query_as(concat!(
        "DELETE FROM files WHERE id = $1 RETURNING ",
        file_columns!()
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Of `keys`, those no file row points at.
///
/// # Errors
/// The database fails.
pub async fn unreferenced(
    db: impl PgExecutor<'_>,
    keys: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT k FROM unnest($1::text[]) AS k \
         WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.object_key = k)",
    )
    .bind(keys)
    .fetch_all(db)
    .await
}
