//! A team's own task kind, outside Keel's crates: `greet {name, shout?}`.
//! It is the "Writing your own kinds" walk-through of the README, and the
//! test that runs it through the API and a worker built here.
//!
//! Three pieces: the payload type (its JSON Schema derived from it), the
//! [`Kind`] (name, policy, handler), and [`registry`] — Keel's built-in
//! kinds plus this one — which `src/bin/greet-api.rs` and
//! `src/bin/greet-worker.rs` hand to Keel's own `main`s.

use keel_shared::kinds::{
    self, Kind, KindSettings, PayloadError, Registry, TaskContext, TaskFailure,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What a `greet` task is asked: the API checks a create against this
/// type (and its schema), and the worker hands the handler a parsed one.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GreetPayload {
    /// Who to greet.
    #[schemars(length(min = 1, max = 100))]
    pub name: String,
    /// Greet loudly.
    #[serde(default)]
    pub shout: bool,
}

/// The kind: a name clients use, a description, and the handler.
#[derive(Debug)]
pub struct Greet;

impl Kind for Greet {
    const NAME: &'static str = "greet";
    const DESCRIPTION: &'static str = "Greets `name`, loudly with `shout`.";
    const CATEGORY: &'static str = "example";
    type Payload = GreetPayload;

    fn payload_schema() -> Value {
        kinds::schema_of::<GreetPayload>()
    }

    /// What the type cannot say: checked by the API before the task exists.
    fn check(payload: &GreetPayload, _settings: &KindSettings) -> Vec<PayloadError> {
        let chars = payload.name.trim().chars().count();
        if (1..=100).contains(&chars) {
            Vec::new()
        } else {
            vec![PayloadError::new("name", "must be 1 to 100 characters")]
        }
    }

    /// One attempt: `Ok` is the task's result; an `Err` is retried (or not,
    /// with `TaskFailure::permanent`) or put off (`TaskFailure::snooze`).
    async fn run(payload: GreetPayload, ctx: TaskContext) -> Result<Value, TaskFailure> {
        ctx.progress(50);
        let greeting = format!("Hello, {}!", payload.name.trim());
        let greeting = if payload.shout {
            greeting.to_uppercase()
        } else {
            greeting
        };
        Ok(json!({"greeting": greeting}))
    }
}

/// Keel's built-in kinds and `greet`: what both binaries offer.
pub fn registry() -> Registry {
    Registry::builtin().with::<Greet>()
}
