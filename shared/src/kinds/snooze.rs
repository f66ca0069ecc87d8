//! `snooze {times, ms}` (test-only): puts itself off `times` times, `ms`
//! apart, then completes — the kind that shows a snooze spends no attempt,
//! and that a kind's cap of snoozes fails a task that never stops.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Kind, KindSettings, PayloadError, TaskContext, TaskFailure};

#[derive(Debug)]
pub struct Snooze;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnoozePayload {
    #[serde(deserialize_with = "crate::whole_number::deserialize")]
    pub times: u32,
    #[serde(deserialize_with = "crate::whole_number::deserialize")]
    pub ms: u32,
}

impl Kind for Snooze {
    const NAME: &'static str = "snooze";
    const DESCRIPTION: &'static str =
        "Snoozes `times` times, `ms` apart, then completes; at most 5 snoozes.";
    const CATEGORY: &'static str = "testing";
    const TEST_ONLY: bool = true;
    const MAX_SNOOZES: i32 = 5;
    type Payload = SnoozePayload;

    fn payload_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "times": {"type": "integer", "minimum": 0, "maximum": 1000},
                "ms": {"type": "integer", "minimum": 0, "maximum": 60_000},
            },
            "required": ["times", "ms"],
            "additionalProperties": false,
        })
    }

    fn check(payload: &SnoozePayload, _settings: &KindSettings) -> Vec<PayloadError> {
        let mut errors = Vec::new();
        if payload.times > 1000 {
            errors.push(PayloadError::new("times", "must be at most 1000"));
        }
        if payload.ms > 60_000 {
            errors.push(PayloadError::new("ms", "must be at most 60000"));
        }
        errors
    }

    async fn run(payload: SnoozePayload, ctx: TaskContext) -> Result<Value, TaskFailure> {
        if i64::from(ctx.snoozes) < i64::from(payload.times) {
            return Err(TaskFailure::snooze(Duration::from_millis(
                payload.ms.into(),
            )));
        }
        Ok(json!({"snoozed": ctx.snoozes, "attempt": ctx.attempt}))
    }
}
