//! The request body limit: `MAX_BODY_BYTES` for everything but the two
//! upload routes, whose bodies are files and get room for them
//! (`MAX_UPLOAD_BYTES` × `MAX_FILES_PER_UPLOAD`, or `MAX_AVATAR_BYTES`),
//! the per-file limits and the quota being checked as the bytes stream in.
//! Every body draws on the process's [`BodyBudget`]: a body read whole for
//! all its bytes, an upload for what its store buffers.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use http_body_util::Limited;
use keel_shared::{Config, storage::Storage};

use super::body_budget::BodyBudget;
use crate::error::ApiError;

/// Room for a form's boundaries and text fields around its files.
const FORM_OVERHEAD: u64 = 1024 * 1024;
/// What an upload keeps of an image's head beside its store's buffers
/// (`routes::avatars`).
const UPLOAD_HEAD_BYTES: usize = 256 * 1024;

/// The limits, by route, and the budget the whole-read bodies share.
#[derive(Debug, Clone)]
pub struct BodyLimits {
    default: u64,
    files: u64,
    avatar: u64,
    budget: BodyBudget,
    /// What one upload holds in memory at most.
    upload_held: usize,
}

impl BodyLimits {
    pub fn new(config: &Config) -> Self {
        Self {
            default: config.http.max_body_bytes as u64,
            files: config
                .storage
                .max_upload_bytes
                .saturating_mul(u64::from(config.storage.max_files_per_upload))
                .saturating_add(FORM_OVERHEAD),
            avatar: config
                .storage
                .max_avatar_bytes
                .saturating_add(FORM_OVERHEAD),
            budget: BodyBudget::new(
                config.http.max_buffered_body_bytes,
                config.http.max_body_bytes,
            ),
            // The avatar route also keeps the image's head to read its size.
            upload_held: Storage::bytes_held_per_upload(config) + UPLOAD_HEAD_BYTES,
        }
    }

    /// The route's limit, and the most of its body it holds at once: all
    /// of it when it is read whole, an upload's buffers when it streams.
    fn of(&self, method: &Method, path: &str) -> (u64, usize) {
        match (method, path.trim_end_matches('/')) {
            (&Method::POST, "/api/v1/files") => (self.files, self.upload_held),
            (&Method::PUT, "/api/v1/users/me/avatar") => (self.avatar, self.upload_held),
            _ => (self.default, usize::MAX),
        }
    }
}

/// Refuses a declared length over the route's limit at once (413), cuts
/// off a body that grows past it, and answers 503 `server_busy` (whatever
/// the handler made of its cut-off body) when the budget ran out.
pub async fn limit(State(limits): State<BodyLimits>, request: Request, next: Next) -> Response {
    let (limit, max_held) = limits.of(request.method(), request.uri().path());
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    // `Limited` goes outermost: axum's extractors tell its error (413) by
    // how deep it sits in the body's wrappers.
    let limited = |body| Body::new(Limited::new(body, limit));
    let refused = Arc::new(AtomicBool::new(false));
    let request =
        request.map(|body| limited(limits.budget.charge(body, max_held, Arc::clone(&refused))));
    let response = next.run(request).await;
    if refused.load(Ordering::Relaxed) {
        return ApiError::busy(
            "too many request bodies are being received at once; try again shortly",
        )
        .into_response();
    }
    response
}
