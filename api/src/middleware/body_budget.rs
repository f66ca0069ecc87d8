//! The process's budget of request-body bytes held while they arrive: a
//! route that reads its body whole (JSON) keeps every byte until the last
//! one comes, so many slow clients each sending most of `MAX_BODY_BYTES`
//! could otherwise pin `MAX_BODY_BYTES` × `HTTP_MAX_CONNECTIONS` (a GiB at
//! the defaults) for as long as `REQUEST_TIMEOUT_SECONDS`. An upload
//! streams its body on, but holds what its store buffers (a part or three),
//! so it draws up to that. Past the budget a body is refused with 503
//! `server_busy` rather than made to wait, as a wait would let the same
//! slow clients stall every other request.
//!
//! What a body holds is more than its bytes when they come in many small
//! frames (each one a buffer and a place in a list, and a share of the
//! connection's read buffer it keeps whole), so small frames are gathered
//! into frames of [`GATHER_BYTES`] (copied, which frees the read buffer)
//! before they go on, and each frame that goes on costs [`FRAME_COST`]
//! more.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
};

use axum::body::{Body, Bytes, HttpBody};
use bytes::BytesMut;
use http_body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The first bytes of every body are not counted: small requests (a task's
/// create, a login) never meet the budget, however full it is, and what
/// they hold is bounded by `HTTP_MAX_CONNECTIONS` × this (16 MiB at the
/// defaults).
const FREE_BYTES: usize = 16 * 1024;
/// What a frame costs besides its bytes: its buffer, its place in the list
/// the body is gathered in, and the allocator's rounding, with room to spare.
const FRAME_COST: usize = 256;
/// Frames smaller than this are gathered (copied) into one of this size,
/// so that neither the frames nor the read buffers they came in are held
/// one by one (1-byte chunks held about 90 bytes per byte otherwise). At
/// most this much of a body waits here, uncounted.
const GATHER_BYTES: usize = 16 * 1024;

/// Bytes of request bodies being received, shared by every connection.
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<Semaphore>);

impl BodyBudget {
    /// A budget of `bytes`, at least one whole body of `max_body_bytes` so
    /// that a body within the limit can always be received on its own.
    pub fn new(bytes: usize, max_body_bytes: usize) -> Self {
        let bytes = bytes.max(max_body_bytes).min(Semaphore::MAX_PERMITS);
        Self(Arc::new(Semaphore::new(bytes)))
    }

    /// `body`, drawing what its frames cost past [`FREE_BYTES`] from the
    /// budget, up to `max_held` in all, until it is dropped; `refused` is set
    /// if the budget ran out (the body then ends with an error).
    pub fn charge(&self, body: Body, max_held: usize, refused: Arc<AtomicBool>) -> Body {
        Body::new(Charged {
            inner: body,
            budget: Arc::clone(&self.0),
            held: None,
            received: 0,
            max_held,
            refused,
            gathered: BytesMut::new(),
            next: None,
        })
    }
}

/// The budget ran out while this body was arriving.
#[derive(Debug, thiserror::Error)]
#[error("too many request bodies are being received at once")]
pub struct OverBudget;

/// A body whose bytes are counted against a [`BodyBudget`].
struct Charged {
    inner: Body,
    budget: Arc<Semaphore>,
    /// What this body holds of the budget, given back when it is dropped,
    /// by which time the extractor has its bytes (or gave up on them).
    held: Option<OwnedSemaphorePermit>,
    /// What the frames so far cost.
    received: usize,
    /// The most this body holds at once (a streamed upload, its store's
    /// buffers), past which it draws no more.
    max_held: usize,
    refused: Arc<AtomicBool>,
    /// Small frames' bytes, gathered until there are [`GATHER_BYTES`].
    gathered: BytesMut,
    /// A frame that came while small ones were gathered: it goes on after
    /// them.
    next: Option<Frame<Bytes>>,
}

impl Charged {
    /// Takes what a frame of `len` bytes costs; false if the budget has not
    /// that much left.
    fn take(&mut self, len: usize) -> bool {
        let charged = |received: usize| received.saturating_sub(FREE_BYTES).min(self.max_held);
        let before = charged(self.received);
        self.received = self.received.saturating_add(len + FRAME_COST);
        let cost = charged(self.received) - before;
        if cost == 0 {
            return true;
        }
        let Ok(cost) = u32::try_from(cost) else {
            return false;
        };
        match Arc::clone(&self.budget).try_acquire_many_owned(cost) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }
}

impl Charged {
    /// Passes `frame` on, charged; an error if the budget ran out.
    fn pass(&mut self, frame: Frame<Bytes>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let len = frame.data_ref().map_or(0, Bytes::len);
        if !self.take(len) {
            self.refused.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(OverBudget))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    /// The gathered bytes as one frame.
    fn gathered(&mut self) -> Frame<Bytes> {
        Frame::data(self.gathered.split().freeze())
    }
}

impl HttpBody for Charged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Some(frame) = self.next.take() {
            return self.pass(frame);
        }
        loop {
            match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.len() < GATHER_BYTES => {
                        // One buffer for the lot, not one per doubling.
                        self.gathered.reserve(GATHER_BYTES);
                        self.gathered.extend_from_slice(&data);
                        if self.gathered.len() >= GATHER_BYTES {
                            let frame = self.gathered();
                            return self.pass(frame);
                        }
                    }
                    // A large frame, or trailers: after what is gathered.
                    other => {
                        let frame = other.map_or_else(|trailers| trailers, Frame::data);
                        if self.gathered.is_empty() {
                            return self.pass(frame);
                        }
                        self.next = Some(frame);
                        let gathered = self.gathered();
                        return self.pass(gathered);
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None if self.gathered.is_empty() => return Poll::Ready(None),
                None => {
                    let gathered = self.gathered();
                    return self.pass(gathered);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.gathered.is_empty() && self.next.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let waiting = self.gathered.len()
            + self
                .next
                .as_ref()
                .and_then(Frame::data_ref)
                .map_or(0, Bytes::len);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + waiting as u64);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + waiting as u64);
        }
        hint
    }
}
