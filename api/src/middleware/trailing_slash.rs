//! A trailing slash is optional on every path: `/tasks/` routes as `/tasks`.
//! Swagger UI is the exception: its page at `/docs/` loads its assets by
//! relative URL, which only resolve under the slash.

use axum::http::{Request, Uri, uri::PathAndQuery};

/// Paths left as they are.
const KEEP_PREFIX: &str = "/docs/";

pub fn trim<B>(mut req: Request<B>) -> Request<B> {
    let path = req.uri().path();
    if path.len() <= 1 || !path.ends_with('/') || path.starts_with(KEEP_PREFIX) {
        return req;
    }
    let trimmed = match path.trim_end_matches('/') {
        "" => "/",
        p => p,
    };
    let path_and_query = match req.uri().query() {
        Some(query) => format!("{trimmed}?{query}"),
        None => trimmed.to_owned(),
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = PathAndQuery::try_from(path_and_query) {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trimmed(uri: &str) -> String {
        trim(Request::builder().uri(uri).body(()).unwrap())
            .uri()
            .to_string()
    }

    #[test]
    fn trims_slashes_but_keeps_the_query_and_the_docs() {
        assert_eq!(trimmed("/api/v1/tasks/"), "/api/v1/tasks");
        assert_eq!(trimmed("/api/v1/tasks//?page=2"), "/api/v1/tasks?page=2");
        assert_eq!(trimmed("/"), "/");
        assert_eq!(trimmed("/docs/"), "/docs/");
        assert_eq!(trimmed("/health"), "/health");
    }
}
