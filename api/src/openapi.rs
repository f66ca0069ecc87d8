//! The OpenAPI document's frame: title, version, tags and the shared
//! schemas. Paths are collected from the routers themselves.

use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::error::{FieldError, Problem};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Keel API",
        description = "Accounts, roles, 2FA, API keys, background tasks and their schedules. \
                       Every error is RFC 9457 `application/problem+json` with a stable `code`.",
        license(name = "MIT"),
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "auth", description = "Registration, sign-in, tokens"),
        (name = "users", description = "Profiles, roles and the user list"),
        (name = "api-keys", description = "Keys that act as their owner"),
        (name = "tasks", description = "Background tasks: create, follow, cancel, retry"),
        (name = "schedules", description = "Cron schedules that create tasks (admin)"),
        (name = "admin", description = "Operations: workers, queues, statistics (admin)"),
        (name = "health", description = "Health, readiness and metrics"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

/// `bearer` (an access JWT) and `api_key` (`X-API-Key`), so Swagger UI can authorize.
#[derive(Debug)]
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}
