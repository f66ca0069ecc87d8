//! API documentation: `/openapi.json`, Swagger UI at `/docs` and Redoc at
//! `/redoc` (aliases `/api/docs`, `/api/redoc`). Every asset is compiled
//! into the binary: no CDN, so the docs work offline and behind firewalls.

use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, header},
    middleware::{Next, from_fn},
    response::{Html, IntoResponse, Redirect, Response},
    routing::get,
};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::state::AppState;

/// The docs pages run scripts and inline styles of their own, from this origin only.
const DOCS_CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
     script-src 'self'; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'";

const REDOC_JS: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");

const REDOC_HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Keel API — Redoc</title>
</head>
<body>
  <redoc spec-url="/openapi.json"></redoc>
  <script src="/redoc/redoc.standalone.js"></script>
</body>
</html>
"#;

#[allow(deprecated)] // the aliases are deprecated for clients, not for us
/// `openapi`: the whole document, as [`crate::openapi::complete`] makes it.
pub fn router(openapi: serde_json::Value) -> Router<AppState> {
    let swagger: Router<AppState> = SwaggerUi::new("/docs")
        .external_url_unchecked("/openapi.json", openapi)
        .into();
    swagger
        .route("/redoc", get(redoc))
        .route("/redoc/redoc.standalone.js", get(redoc_js))
        .route("/api/docs", get(docs_alias))
        .route("/api/redoc", get(redoc_alias))
        .layer(from_fn(docs_csp))
}

/// The docs' own paths, for the document: they are served by [`router`],
/// which needs the finished document and so comes after it.
pub fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(DocsPaths::openapi())
}

#[derive(Debug, OpenApi)]
#[openapi(paths(openapi_json, swagger_ui, redoc, docs_alias, redoc_alias))]
struct DocsPaths;

// `SwaggerUi` serves `/openapi.json` and `/docs/` itself; these two bodiless
// functions only carry their descriptions into the document (`DocsPaths`).

/// This document: OpenAPI 3.1, as JSON.
#[utoipa::path(get, path = "/openapi.json", tag = "docs",
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json",
        example = json!({"openapi": "3.1.0", "info": {"title": "Keel API", "version": "0.1.0"}, "paths": {}}))))]
pub fn openapi_json() {}

/// Swagger UI over this document (`/docs` redirects here), served from the
/// binary: it works offline.
#[utoipa::path(get, path = "/docs/", tag = "docs",
    responses((status = 200, description = "The Swagger UI page", body = String, content_type = "text/html")))]
pub fn swagger_ui() {}

/// Redoc over this document, served from the binary.
#[utoipa::path(get, path = "/redoc", tag = "docs",
    responses((status = 200, description = "The Redoc page", body = String, content_type = "text/html")))]
pub async fn redoc() -> Html<&'static str> {
    Html(REDOC_HTML)
}

/// Alias of `/docs/`.
#[utoipa::path(get, path = "/api/docs", tag = "docs",
    responses((status = 308, description = "To `/docs/`", headers(("Location" = String, description = "`/docs/`")))))]
#[deprecated = "use GET /docs/"]
pub async fn docs_alias() -> Redirect {
    Redirect::permanent("/docs/")
}

/// Alias of `/redoc`.
#[utoipa::path(get, path = "/api/redoc", tag = "docs",
    responses((status = 308, description = "To `/redoc`", headers(("Location" = String, description = "`/redoc`")))))]
#[deprecated = "use GET /redoc"]
pub async fn redoc_alias() -> Redirect {
    Redirect::permanent("/redoc")
}

async fn redoc_js() -> Response {
    let mut response = REDOC_JS.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=86400"),
    );
    response
}

async fn docs_csp(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_CSP),
    );
    response
}
