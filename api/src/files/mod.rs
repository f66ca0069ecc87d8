//! What a stored file does: an upload streamed into storage ([`upload`]),
//! recorded within its owner's quota ([`record`]), and its bytes served back
//! whole or by range ([`range`]), with an `ETag` ([`serve`]). The files and
//! avatar routes call these.

pub mod range;
pub mod upload;

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures_util::TryStreamExt as _;
use keel_shared::db::{
    self,
    files::{File, NewFile},
};
use uuid::Uuid;

use self::range::Ranged;
use crate::problems::Code;
use crate::{error::ApiError, state::AppState};

/// Records `received` (written to storage, not yet recorded) as `owner`'s,
/// within their storage quota, in a transaction of its own. If that fails,
/// their objects are deleted: nothing stays in storage unrecorded.
///
/// # Errors
/// Over the quota (413), or the database fails.
pub async fn record(
    state: &AppState,
    owner: Uuid,
    received: &[NewFile],
) -> Result<Vec<File>, ApiError> {
    let recorded = async {
        let mut tx = state.db.begin().await?;
        let quota = state.config.storage.user_storage_quota_bytes;
        let recorded = db::files::insert_within_quota(&mut tx, owner, received, quota).await?;
        tx.commit().await?;
        Ok::<_, ApiError>(recorded)
    }
    .await;
    if recorded.is_err() {
        upload::discard(&state.storage, received).await;
    }
    recorded
}

/// Answers `file`'s bytes under `headers`' conditions and range; as an
/// attachment, or inline (avatars, which are checked images).
///
/// # Errors
/// An unsatisfiable range, or storage failing.
pub async fn serve(
    state: &AppState,
    file: &File,
    headers: &HeaderMap,
    attachment: bool,
) -> Result<Response, ApiError> {
    let etag = format!("\"{}\"", file.sha256_hex());
    let size = u64::try_from(file.size).unwrap_or(0);
    let mut response = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "private, max-age=0, must-revalidate");
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v == "*"
                || v.split(',')
                    .any(|t| t.trim().trim_start_matches("W/") == etag)
        })
    {
        return Ok(response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid headers"));
    }
    let range = match requested_range(headers, &etag, size) {
        Ok(range) => range,
        Err(()) => {
            let mut refused = ApiError::new(
                Code::RangeNotSatisfiable,
                format!("the file has {size} bytes"),
            )
            .into_response();
            refused.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}")).expect("ascii"),
            );
            return Ok(refused);
        }
    };
    let (status, range) = match range {
        Some(r) => {
            response = response.header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{size}", r.start, r.end - 1),
            );
            (StatusCode::PARTIAL_CONTENT, Some(r))
        }
        None => (StatusCode::OK, None),
    };
    let length = range.as_ref().map_or(size, |r| r.end - r.start);
    // An empty file has no range to ask the store for.
    let body = if length == 0 {
        Body::empty()
    } else {
        let stream = state
            .storage
            .get(&file.object_key, range)
            .await
            .map_err(|e| {
                ApiError::unavailable(anyhow::Error::new(e).context("file storage failed"))
            })?;
        Body::from_stream(stream.map_err(std::io::Error::other))
    };
    let disposition = content_disposition(&file.name, attachment);
    Ok(response
        .status(status)
        .header(header::CONTENT_TYPE, &file.content_type)
        .header(header::CONTENT_LENGTH, length)
        .header(header::CONTENT_DISPOSITION, disposition)
        .body(body)
        .expect("valid headers"))
}

/// The one range asked for, if any and if it applies (`If-Range` matching
/// the `ETag`): see [`range::requested`]. `Err` when nothing asked for lies
/// in the file (416).
fn requested_range(
    headers: &HeaderMap,
    etag: &str,
    size: u64,
) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v != etag)
    {
        return Ok(None);
    }
    match range::requested(value, size) {
        Ranged::Whole => Ok(None),
        Ranged::Part(range) => Ok(Some(range)),
        Ranged::Unsatisfiable => Err(()),
    }
}

/// `attachment` (or `inline`) with the name as ASCII and as UTF-8 (RFC 6266).
fn content_disposition(name: &str, attachment: bool) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let encoded: String = name
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let kind = if attachment { "attachment" } else { "inline" };
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_carry_the_name_safely() {
        assert_eq!(
            content_disposition("a \"b\".txt", true),
            "attachment; filename=\"a _b_.txt\"; filename*=UTF-8''a%20%22b%22.txt"
        );
        assert_eq!(
            content_disposition("é.png", false),
            "inline; filename=\"_.png\"; filename*=UTF-8''%C3%A9.png"
        );
    }
}
