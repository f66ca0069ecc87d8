//! `fail {message}`: always fails, with `message` — for exercising retries.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Kind, KindSettings, PayloadError, TaskContext, TaskFailure};

#[derive(Debug)]
pub struct Fail;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailPayload {
    #[serde(default = "default_message")]
    pub message: String,
}

fn default_message() -> String {
    "failed on purpose".into()
}

impl Kind for Fail {
    const NAME: &'static str = "fail";
    const DESCRIPTION: &'static str = "Always fails with `message`; retried like any failure.";
    const CATEGORY: &'static str = "testing";
    type Payload = FailPayload;

    fn payload_schema() -> Value {
        json!({
            "type": "object",
            "properties": {"message": {"type": "string", "maxLength": 1000}},
            "additionalProperties": false,
        })
    }

    fn check(payload: &FailPayload, _settings: &KindSettings) -> Vec<PayloadError> {
        if payload.message.chars().count() > 1000 {
            vec![PayloadError::new(
                "message",
                "must be at most 1000 characters",
            )]
        } else {
            Vec::new()
        }
    }

    async fn run(payload: FailPayload, _ctx: TaskContext) -> Result<Value, TaskFailure> {
        Err(TaskFailure::retryable(payload.message))
    }
}
