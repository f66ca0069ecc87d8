//! The ops dashboard at `/dashboard`: queues, tasks, workers and schedules
//! for admins, rendered on the server (minijinja) with one small script for
//! refreshing. Every asset is compiled into the binary: no CDN.
//!
//! Sign-in is the API's own (same credentials, rate limits and 2FA); the
//! session is the access token in an `HttpOnly`, `Secure`, `SameSite=Strict`
//! cookie, and every action is a POST carrying a CSRF token. A bearer token
//! or API key also works, for scripts and curl.

mod actions;
mod chart;
mod pages;
mod session;
mod views;

use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::{Next, from_fn},
    response::{IntoResponse, Response},
    routing::{get, post},
};

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{error::ApiError, state::AppState};

/// Pages load scripts, styles and images from this origin only, and post
/// forms only to it.
const DASHBOARD_CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
     script-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("../../assets/dashboard/dashboard.css");
const JS: &str = include_str!("../../assets/dashboard/dashboard.js");

/// The overview, documented in OpenAPI (the entry point API.md lists).
pub fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(pages::overview))
        .layer(from_fn(headers))
}

/// The other pages, the actions and the assets: HTML for browsers.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/dashboard/tasks", get(pages::tasks))
        .route("/dashboard/tasks/bulk", post(actions::bulk))
        .route("/dashboard/tasks/{id}", get(pages::task))
        .route("/dashboard/tasks/{id}/{action}", post(actions::task))
        .route("/dashboard/workers", get(pages::workers))
        .route("/dashboard/schedules", get(pages::schedules))
        .route(
            "/dashboard/schedules/{id}/{action}",
            post(actions::schedule),
        )
        .route(
            "/dashboard/login",
            get(session::login_page).post(session::login),
        )
        .route("/dashboard/login/2fa", post(session::second_factor))
        .route("/dashboard/logout", post(session::logout))
        .route("/dashboard/assets/dashboard.css", get(css))
        .route("/dashboard/assets/dashboard.js", get(js))
        .layer(from_fn(headers))
}

async fn css() -> Response {
    asset(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    asset(JS, "text/javascript; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// The dashboard's CSP; pages are never cached (they show live state and
/// carry a CSRF token).
async fn headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DASHBOARD_CSP),
    );
    // The API's `no-referrer` would make browsers send `Origin: null` on
    // our own form posts; `same-origin` keeps the origin check meaningful.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// A failed page or action, shown as an HTML page with the problem's status,
/// code and detail (browsers are the dashboard's clients).
#[derive(Debug)]
pub struct PageError(ApiError);

impl<E: Into<ApiError>> From<E> for PageError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        // The API's rendering logs the error and sets headers (Retry-After, …).
        let (mut parts, _) = self.0.into_response().into_parts();
        let problem = parts.extensions.remove::<crate::error::Problem>();
        let (status, code, detail) = problem.map_or_else(
            || {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error".to_owned(),
                    String::new(),
                )
            },
            |p| (p.status_code(), p.code, p.detail),
        );
        let html = views::render(
            "error.html",
            minijinja::context! { status => status.as_u16(), code, detail },
        );
        parts.status = status;
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(parts, html.0.into())
    }
}
