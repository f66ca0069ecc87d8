//! The OpenAPI document's frame: title, version, tags and the shared
//! schemas. Paths are collected from the routers themselves.

use utoipa::OpenApi;

use crate::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keel API",
        description = "Accounts, roles, 2FA, API keys and background tasks. Every error is \
                       RFC 9457 `application/problem+json` with a stable `code`.",
        license(name = "MIT"),
    ),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "health", description = "Health, readiness and metrics"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;
