//! The paths the systems Keel replaces used for some operations, kept for
//! their clients: each is routed to the operation's own handler and
//! documented as that operation, marked deprecated and naming the path to
//! use instead. A route module declares its aliases beside its routes.

use axum::{
    handler::Handler,
    http::Method,
    routing::{MethodFilter, MethodRouter, on},
};
use serde_json::Value;

use crate::state::AppState;

/// An old `method` and `path` for the operation at `of`.
#[derive(Debug)]
pub struct Alias {
    pub method: Method,
    pub path: &'static str,
    /// The operation's own method and path.
    pub of: (Method, &'static str),
}

impl Alias {
    /// The alias's route, to the operation's `handler`.
    pub fn to<H, T>(&self, handler: H) -> MethodRouter<AppState>
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(self.method.clone())
            .expect("an alias's method is one axum routes");
        on(filter, handler)
    }
}

/// Adds each alias to the OpenAPI document: a copy of its operation's,
/// deprecated, with its own operation id and a summary naming the
/// operation to use.
pub fn document(doc: &mut Value, aliases: &[&[Alias]]) {
    for alias in aliases.iter().copied().flatten() {
        let (method, path) = &alias.of;
        let mut operation = doc["paths"][*path][lowercase(method)].clone();
        assert!(
            operation.is_object(),
            "the alias {} {} names no documented operation",
            alias.method,
            alias.path
        );
        let id = operation["operationId"].as_str().unwrap_or_default();
        operation["operationId"] = format!("alias_{id}").into();
        operation["summary"] = format!("Alias of `{method} {path}`.").into();
        operation["deprecated"] = true.into();
        doc["paths"][alias.path][lowercase(&alias.method)] = operation;
    }
}

/// A method as OpenAPI's path items name it.
fn lowercase(method: &Method) -> String {
    method.as_str().to_ascii_lowercase()
}
