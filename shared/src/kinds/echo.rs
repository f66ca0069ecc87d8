//! `echo`: the result is the payload — the Celery `test-task` alias's kind.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Kind, TaskContext, TaskFailure};

#[derive(Debug)]
pub struct Echo;

impl Kind for Echo {
    const NAME: &'static str = "echo";
    const DESCRIPTION: &'static str = "Returns its payload as the result.";
    const CATEGORY: &'static str = "testing";
    type Payload = EchoPayload;

    fn payload_schema() -> Value {
        json!({"type": "object", "description": "Any object; it becomes the result."})
    }

    async fn run(payload: EchoPayload, _ctx: TaskContext) -> Result<Value, TaskFailure> {
        Ok(Value::Object(payload.0))
    }
}

/// Any JSON object.
#[derive(Debug, Serialize, Deserialize)]
pub struct EchoPayload(Map<String, Value>);
