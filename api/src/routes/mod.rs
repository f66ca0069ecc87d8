//! The router: one module per resource, each exporting its routes, merged
//! here with the docs, the 404 fallback and the middleware stack.

pub mod admin;
pub mod api_keys;
pub mod auth;
pub mod avatars;
pub mod docs;
pub mod files;
pub mod health;
pub mod oauth;
pub mod password_reset;
pub mod schedules;
pub mod tasks;
pub mod totp;
pub mod two_factor;
pub mod users;
pub mod verification;

use axum::{
    Router,
    http::{Method, Uri},
    middleware::from_fn_with_state,
};
use utoipa_axum::router::OpenApiRouter;

use crate::{error::ApiError, middleware, openapi::ApiDoc, state::AppState};

/// The whole HTTP surface, with state attached.
pub fn router(state: AppState) -> Router {
    // The resources count against the general rate limit; probes and docs do not.
    let resources = OpenApiRouter::new()
        .merge(auth::router())
        .merge(verification::router())
        .merge(password_reset::router())
        .merge(two_factor::router())
        .merge(oauth::router(&state.config))
        .merge(totp::router())
        .merge(users::router())
        .merge(api_keys::router())
        .merge(tasks::router())
        .merge(files::router())
        .merge(avatars::router())
        .merge(schedules::router())
        .merge(admin::router())
        .layer(from_fn_with_state(
            state.clone(),
            middleware::rate_limit::limit,
        ));
    let (api, openapi) = OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .merge(docs::documented())
        .merge(health::router())
        .merge(crate::ws::router())
        .merge(crate::dashboard::documented())
        .merge(resources)
        .split_for_parts();
    let mut openapi = crate::openapi::complete(&openapi, &state.kinds);
    crate::aliases::document(&mut openapi, &[&auth::ALIASES, &users::ALIASES]);
    let router = api
        .merge(docs::router(openapi))
        .merge(crate::dashboard::router())
        .fallback(not_found);
    middleware::apply(router, &state.config).with_state(state)
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}
