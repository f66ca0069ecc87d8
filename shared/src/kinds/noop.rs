//! `noop`: does nothing and succeeds — the default kind, and the one the
//! benchmarks measure the pipeline with.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Kind, TaskContext, TaskFailure};

#[derive(Debug)]
pub struct Noop;

/// Any object; its fields are ignored.
#[derive(Debug, Serialize, Deserialize)]
pub struct NoopPayload {}

impl Kind for Noop {
    const NAME: &'static str = "noop";
    const DESCRIPTION: &'static str = "Does nothing and succeeds at once.";
    const CATEGORY: &'static str = "testing";
    type Payload = NoopPayload;

    fn payload_schema() -> Value {
        json!({"type": "object", "description": "Ignored."})
    }

    async fn run(_payload: NoopPayload, _ctx: TaskContext) -> Result<Value, TaskFailure> {
        Ok(Value::Null)
    }
}
