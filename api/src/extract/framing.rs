//! A bound on what a multipart form may make the server hold outside its
//! parts' data: the preamble, each part's header block, the epilogue.
//!
//! multer (under axum's `Multipart`) buffers everything it has received
//! while it looks for the end of a header block or for the first
//! boundary, with no limit of its own: a 200 MiB part name held 1.2 GiB.
//! This stream sits in front of it and follows the form's framing as the
//! bytes pass, failing the body once any of those spans passes
//! [`MAX_FRAMING_BYTES`]. Part data streams through untouched; the
//! handlers hold each part to its own limit.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use axum::body::Bytes;
use hyper::body::Frame;
use memchr::memmem::Finder;

/// The most bytes a preamble, one part's header block or the epilogue may
/// take. Real forms use a few hundred.
pub const MAX_FRAMING_BYTES: usize = 16 * 1024;

/// Where in the form the bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Span {
    /// Before the first `--boundary`.
    Preamble,
    /// After a boundary: its line's end and the part's header block, up to
    /// the blank line (or `--` for the closing boundary).
    Headers,
    /// A part's data, up to the next `CRLF--boundary`.
    Data,
    /// After the closing boundary.
    Epilogue,
}

/// Why a form was cut off.
#[derive(Debug, thiserror::Error)]
#[error("the form's {0} is longer than {MAX_FRAMING_BYTES} bytes")]
pub struct FramingError(&'static str);

/// `inner`'s frames, failing once the form's framing passes its bound.
#[derive(Debug)]
pub struct FramingGuard<S> {
    inner: S,
    dash_boundary: Vec<u8>,
    delimiter: Finder<'static>,
    span: Span,
    /// The bytes of the current preamble or header block (bounded).
    pending: Vec<u8>,
    /// In part data: the last bytes of the previous chunk, so a delimiter
    /// split between two chunks is found.
    carry: Vec<u8>,
    epilogue: usize,
}

impl<S> FramingGuard<S> {
    pub fn new(inner: S, boundary: &str) -> Self {
        let dash_boundary = format!("--{boundary}").into_bytes();
        let delimiter = Finder::new(format!("\r\n--{boundary}").as_bytes()).into_owned();
        Self {
            inner,
            dash_boundary,
            delimiter,
            span: Span::Preamble,
            pending: Vec::new(),
            carry: Vec::new(),
            epilogue: 0,
        }
    }

    /// Follows `input` through the form's framing.
    fn feed(&mut self, input: &[u8]) -> Result<(), FramingError> {
        let delimiter_len = self.delimiter.needle().len();
        let mut owned: Vec<u8>;
        let mut bytes = input;
        loop {
            match self.span {
                Span::Data => {
                    // A delimiter across the previous chunk's end and this one's start.
                    let head = &bytes[..bytes.len().min(delimiter_len - 1)];
                    let carried = self.carry.len();
                    let mut junction = std::mem::take(&mut self.carry);
                    junction.extend_from_slice(head);
                    let found = self
                        .delimiter
                        .find(&junction)
                        .map(|at| at + delimiter_len - carried)
                        .or_else(|| self.delimiter.find(bytes).map(|at| at + delimiter_len));
                    if let Some(after) = found {
                        bytes = &bytes[after..];
                        self.span = Span::Headers;
                        self.pending.clear();
                        continue;
                    }
                    let keep = delimiter_len - 1;
                    self.carry = if bytes.len() >= keep {
                        bytes[bytes.len() - keep..].to_vec()
                    } else {
                        junction[junction.len().saturating_sub(keep)..].to_vec()
                    };
                    return Ok(());
                }
                Span::Preamble | Span::Headers => {
                    self.pending.extend_from_slice(bytes);
                    // (where the span's own bytes end, where the next span begins, which)
                    let next = if self.span == Span::Preamble {
                        Finder::new(&self.dash_boundary)
                            .find(&self.pending)
                            .map(|at| (at, at + self.dash_boundary.len(), Span::Headers))
                    } else if self.pending.starts_with(b"--") {
                        Some((0, 2, Span::Epilogue))
                    } else {
                        Finder::new(b"\r\n\r\n")
                            .find(&self.pending)
                            .map(|at| (at, at + 4, Span::Data))
                    };
                    let length = next.map_or(self.pending.len(), |(at, _, _)| at);
                    if length > MAX_FRAMING_BYTES {
                        return Err(FramingError(if self.span == Span::Preamble {
                            "text before the first part"
                        } else {
                            "header block of a part"
                        }));
                    }
                    let Some((_, end, span)) = next else {
                        return Ok(());
                    };
                    owned = self.pending.split_off(end);
                    self.pending.clear();
                    self.span = span;
                    bytes = &owned;
                }
                Span::Epilogue => {
                    self.epilogue += bytes.len();
                    if self.epilogue > MAX_FRAMING_BYTES {
                        return Err(FramingError("text after the last part"));
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// A body, not a stream, so the inner body's own errors (the request's
/// size limit) pass through unwrapped and are still told apart (413).
impl hyper::body::Body for FramingGuard<axum::body::Body> {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let checked = match frame.data_ref() {
                    Some(data) => {
                        let data = data.clone();
                        self.feed(&data)
                    }
                    None => Ok(()),
                };
                Poll::Ready(Some(checked.map(|()| frame).map_err(Into::into)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into_inner()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The `boundary` parameter of a `multipart/form-data` content type.
pub fn boundary_of(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty() && b.len() <= 70)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_in(chunk_size: usize, body: &[u8]) -> Result<(), FramingError> {
        let mut guard = FramingGuard::new((), "XyZ");
        body.chunks(chunk_size).try_for_each(|c| guard.feed(c))
    }

    #[test]
    fn a_form_of_any_size_passes_in_chunks_of_any_size() {
        let data = vec![b'a'; 100_000];
        let mut body =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\n"
                .to_vec();
        body.extend_from_slice(&data);
        for _ in 0..50 {
            body.extend_from_slice(
                b"\r\n--XyZ\r\nContent-Disposition: form-data; name=\"tags\"\r\n\r\nx",
            );
        }
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        for size in [1, 2, 3, 7, 64, 4096, body.len()] {
            feed_in(size, &body).unwrap_or_else(|e| panic!("chunks of {size}: {e}"));
        }
    }

    #[test]
    fn long_names_headers_preambles_and_epilogues_are_cut_off() {
        let long = "n".repeat(MAX_FRAMING_BYTES + 1);
        let cases = [
            format!("--XyZ\r\nContent-Disposition: form-data; name=\"{long}\"\r\n\r\nx\r\n--XyZ--"),
            format!("--XyZ\r\nX-Junk: {long}\r\n\r\nx\r\n--XyZ--"),
            format!("{long}--XyZ\r\n\r\nx\r\n--XyZ--"),
            format!("--XyZ\r\n\r\nx\r\n--XyZ\r\nX: {long}\r\n\r\n"),
            format!("--XyZ\r\n\r\nx\r\n--XyZ--{long}"),
        ];
        for (i, body) in cases.iter().enumerate() {
            for size in [5, 1000, body.len()] {
                assert!(
                    feed_in(size, body.as_bytes()).is_err(),
                    "case {i} in chunks of {size}"
                );
            }
        }
    }

    #[test]
    fn the_boundary_comes_from_the_content_type() {
        assert_eq!(
            boundary_of("multipart/form-data; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary_of("multipart/form-data;Boundary=\"a b\"; charset=utf-8").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary_of("multipart/form-data"), None);
        assert_eq!(boundary_of("multipart/form-data; boundary="), None);
    }
}
