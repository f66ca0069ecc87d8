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

pub fn router(openapi: utoipa::openapi::OpenApi) -> Router<AppState> {
    let swagger: Router<AppState> = SwaggerUi::new("/docs").url("/openapi.json", openapi).into();
    swagger
        .route("/redoc", get(|| async { Html(REDOC_HTML) }))
        .route("/redoc/redoc.standalone.js", get(redoc_js))
        .route("/api/docs", get(|| async { Redirect::permanent("/docs/") }))
        .route(
            "/api/redoc",
            get(|| async { Redirect::permanent("/redoc") }),
        )
        .layer(from_fn(docs_csp))
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
