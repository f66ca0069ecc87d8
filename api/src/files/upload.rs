//! Reading a multipart upload: each `file` part streamed to storage as it
//! arrives (hashed, counted, held to the size limit and the quota), the
//! form fields beside them, and the names and types made safe.

use axum::{
    extract::{Multipart, multipart::Field},
    http::StatusCode,
};
use bytes::Bytes;
use keel_shared::{
    db::files::{self, NewFile, Purpose, RecordError},
    storage::{Storage, WriteError},
};
use uuid::Uuid;

use crate::error::{ApiError, FieldError};
use crate::problems::Code;

/// Longest `description`, and the most and longest `tags`.
const MAX_DESCRIPTION_CHARS: usize = 1000;
const MAX_TAGS: usize = 20;
const MAX_TAG_CHARS: usize = 50;
/// Longest file name kept (characters); longer ones keep their end (the extension).
const MAX_NAME_CHARS: usize = 255;

/// What one upload may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of one file.
    pub file: u64,
    /// Bytes the caller may still store.
    pub quota_left: u64,
    /// Files in the request.
    pub files: usize,
}

/// The files of an upload: written to storage, not yet recorded.
#[derive(Debug, Default)]
pub struct Received {
    pub files: Vec<NewFile>,
    pub description: Option<String>,
    pub tags: Vec<String>,
}

/// Reads the whole form, writing each file part to `storage` as it comes.
/// On any error the objects written so far are deleted again.
///
/// # Errors
/// A malformed form, a file over the limit or the quota (413), bad fields
/// (422), no file at all (422), or storage failing (503).
pub async fn receive(
    storage: &Storage,
    multipart: &mut Multipart,
    owner: Uuid,
    limits: Limits,
) -> Result<Received, ApiError> {
    let mut reading = Reading {
        storage,
        received: Received::default(),
        over: false,
    };
    let outcome = read_parts(storage, multipart, owner, limits, &mut reading.received).await;
    reading.over = true;
    let mut received = std::mem::take(&mut reading.received);
    if let Err(e) = outcome {
        discard(storage, &received.files).await;
        return Err(e);
    }
    if received.files.is_empty() {
        return Err(field_error("file", "at least one file part is required"));
    }
    for file in &mut received.files {
        file.description.clone_from(&received.description);
        file.tags.clone_from(&received.tags);
    }
    Ok(received)
}

/// A form being read. If the request ends before the reading does (the
/// request timeout drops the handler between two parts), the files
/// already stored are deleted in the background: nothing will record them,
/// and until the orphan sweep they would count against no one's quota.
struct Reading<'a> {
    storage: &'a Storage,
    received: Received,
    /// The reading ended, well or not; its caller deals with the files.
    over: bool,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        if self.over || self.received.files.is_empty() {
            return;
        }
        let storage = self.storage.clone();
        let files = std::mem::take(&mut self.received.files);
        tokio::spawn(async move { discard(&storage, &files).await });
    }
}

/// Deletes the objects of files that will not be recorded.
pub async fn discard(storage: &Storage, files: &[NewFile]) {
    for file in files {
        if let Err(e) = storage.delete(&file.object_key).await {
            // The orphan sweep removes it later.
            tracing::warn!(error = %e, key = file.object_key, "could not delete an unrecorded object");
        }
    }
}

async fn read_parts(
    storage: &Storage,
    multipart: &mut Multipart,
    owner: Uuid,
    limits: Limits,
    received: &mut Received,
) -> Result<(), ApiError> {
    let mut stored: u64 = 0;
    while let Some(field) = multipart.next_field().await.map_err(malformed)? {
        match field.name().unwrap_or_default() {
            "file" | "files" => {
                if received.files.len() >= limits.files {
                    return Err(field_error(
                        "file",
                        &format!("at most {} files per upload", limits.files),
                    ));
                }
                // A part without a file name is a text field, not a file
                // (and a browser's file input left empty sends an empty name).
                if field.file_name().is_none_or(str::is_empty) {
                    return Err(field_error("file", "must be a file part, with a file name"));
                }
                let quota_left = limits.quota_left.saturating_sub(stored);
                let file = store(storage, field, owner, limits.file, quota_left).await?;
                stored += u64::try_from(file.size).unwrap_or(u64::MAX);
                received.files.push(file);
            }
            "description" => {
                let text = text_field(field, MAX_DESCRIPTION_CHARS * 4).await?;
                if text.chars().count() > MAX_DESCRIPTION_CHARS {
                    return Err(field_error(
                        "description",
                        &format!("at most {MAX_DESCRIPTION_CHARS} characters"),
                    ));
                }
                received.description = Some(text).filter(|t| !t.trim().is_empty());
            }
            "tags" => {
                // Repeated `tags` parts, or one with commas: both read as a list.
                for tag in text_field(field, MAX_TAGS * (MAX_TAG_CHARS * 4 + 1))
                    .await?
                    .split(',')
                {
                    let tag = tag.trim();
                    if tag.is_empty() {
                        continue;
                    }
                    if tag.chars().count() > MAX_TAG_CHARS || tag.chars().any(char::is_control) {
                        return Err(field_error(
                            "tags",
                            &format!("each tag is 1 to {MAX_TAG_CHARS} printable characters"),
                        ));
                    }
                    if !received.tags.iter().any(|t| t == tag) {
                        received.tags.push(tag.to_owned());
                    }
                }
                if received.tags.len() > MAX_TAGS {
                    return Err(field_error("tags", &format!("at most {MAX_TAGS} tags")));
                }
            }
            other => {
                return Err(field_error(
                    if other.is_empty() { "form" } else { other },
                    "is not a field of an upload (file, description, tags)",
                ));
            }
        }
    }
    Ok(())
}

/// Streams one file part into storage.
async fn store(
    storage: &Storage,
    mut field: Field<'_>,
    owner: Uuid,
    file_limit: u64,
    quota_left: u64,
) -> Result<NewFile, ApiError> {
    let name = sanitize_name(field.file_name().unwrap_or_default());
    let id = Uuid::now_v7();
    let key = files::object_key(id);
    let mut upload = storage.writer(&key, file_limit.min(quota_left));
    loop {
        let chunk: Bytes = match field.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                upload.abort().await;
                return Err(malformed(e));
            }
        };
        match upload.write(chunk).await {
            Ok(()) => {}
            Err(WriteError::TooLarge) => {
                upload.abort().await;
                return Err(if quota_left < file_limit {
                    quota_exceeded(quota_left)
                } else {
                    ApiError::new(
                        Code::FileTooLarge,
                        format!("a file may be at most {file_limit} bytes"),
                    )
                });
            }
            Err(WriteError::Store(e)) => {
                upload.abort().await;
                return Err(ApiError::unavailable(
                    anyhow::Error::new(e).context("file storage failed"),
                ));
            }
        }
    }
    let written = upload
        .finish()
        .await
        .map_err(|e| ApiError::unavailable(anyhow::Error::new(e).context("file storage failed")))?;
    Ok(NewFile {
        id,
        owner_id: owner,
        purpose: Purpose::Upload,
        name,
        size: i64::try_from(written.size).unwrap_or(i64::MAX),
        content_type: sniff(&written.head).to_owned(),
        sha256: written.sha256,
        description: None,
        tags: Vec::new(),
        task_id: None,
        object_key: key,
    })
}

/// A text part, read chunk by chunk and refused (422) as soon as it passes
/// `max_bytes`: no more than that (and one chunk) is ever held, however
/// large the part the client sends.
async fn text_field(mut field: Field<'_>, max_bytes: usize) -> Result<String, ApiError> {
    let name = field.name().unwrap_or_default().to_owned();
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(malformed)? {
        if bytes.len() + chunk.len() > max_bytes {
            return Err(field_error(
                &name,
                &format!("is too long: at most {max_bytes} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).map_err(|_| field_error(&name, "must be UTF-8 text"))
}

/// The type of a file from its first bytes: a known signature, else UTF-8
/// text, else bytes. Whatever the client said is never used.
pub fn sniff(head: &[u8]) -> &'static str {
    if let Some(kind) = infer::get(head) {
        return kind.mime_type();
    }
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        // A character cut at the end of the sniffed prefix is still text.
        Err(e) => e.error_len().is_none() && head.len() - e.valid_up_to() < 4,
    };
    if head.is_empty() {
        "application/octet-stream"
    } else if text && !head.contains(&0) {
        "text/plain"
    } else {
        "application/octet-stream"
    }
}

/// A file name safe to show and to put in `Content-Disposition`: the last
/// path component only (so `../../etc/passwd` is `passwd`), no control
/// characters, no leading dots or surrounding spaces, at most 255
/// characters (keeping the end), and `file` when nothing is left.
pub fn sanitize_name(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = last.chars().filter(|c| !c.is_control()).collect();
    let clean = clean.trim().trim_start_matches('.').trim();
    if clean.is_empty() {
        return "file".to_owned();
    }
    let count = clean.chars().count();
    if count > MAX_NAME_CHARS {
        clean.chars().skip(count - MAX_NAME_CHARS).collect()
    } else {
        clean.to_owned()
    }
}

/// 413 `quota_exceeded`: the caller's files would pass `USER_STORAGE_QUOTA_BYTES`.
pub fn quota_exceeded(left: u64) -> ApiError {
    ApiError::new(
        Code::QuotaExceeded,
        format!("this would take you over your storage quota ({left} bytes left)"),
    )
}

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::OverQuota { left } => quota_exceeded(left),
            RecordError::Database(e) => e.into(),
        }
    }
}

fn field_error(field: &str, message: &str) -> ApiError {
    ApiError::validation(vec![FieldError {
        field: field.into(),
        message: message.into(),
    }])
}

/// A form that cannot be read: too large as a whole (413) or malformed (400).
pub fn malformed(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            Code::PayloadTooLarge,
            "the upload is larger than this server takes",
        )
    } else {
        ApiError::new(
            Code::MalformedMultipart,
            format!("the multipart body cannot be read: {}", e.body_text()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_directories_and_control_characters() {
        assert_eq!(sanitize_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_name("..\\..\\windows\\win.ini"), "win.ini");
        assert_eq!(sanitize_name("/"), "file");
        assert_eq!(sanitize_name(".."), "file");
        assert_eq!(sanitize_name(".hidden"), "hidden");
        assert_eq!(sanitize_name("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(sanitize_name("report 2026.pdf"), "report 2026.pdf");
        let long = format!("{}.txt", "x".repeat(300));
        let kept = sanitize_name(&long);
        assert_eq!(kept.chars().count(), 255);
        assert!(kept.ends_with(".txt"));
    }

    #[test]
    fn types_come_from_the_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(sniff(b"%PDF-1.7\n"), "application/pdf");
        assert_eq!(sniff("héllo, world".as_bytes()), "text/plain");
        assert_eq!(sniff(&"é".as_bytes()[..1]), "text/plain");
        assert_eq!(sniff(&[0, 1, 2, 3, 255]), "application/octet-stream");
        assert_eq!(sniff(b""), "application/octet-stream");
    }
}
