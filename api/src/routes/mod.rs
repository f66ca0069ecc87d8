//! The router: one module per resource, each exporting its routes, merged
//! here with the docs, the 404 fallback and the middleware stack.

pub mod docs;
pub mod health;

use axum::{
    Router,
    http::{Method, Uri},
};
use utoipa_axum::router::OpenApiRouter;

use crate::{error::ApiError, middleware, openapi::ApiDoc, state::AppState};

/// The whole HTTP surface, with state attached.
pub fn router(state: AppState) -> Router {
    let (api, openapi) = OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .merge(health::router())
        .split_for_parts();
    let router = api.merge(docs::router(openapi)).fallback(not_found);
    middleware::apply(router, &state.config).with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}
