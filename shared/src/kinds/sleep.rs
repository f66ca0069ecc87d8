//! `sleep {ms}`: waits, reporting progress about ten times — the kind for
//! long tasks, timeouts, leases and draining. `steady_sleep` (test-only)
//! does the same but may not be stopped once it runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Kind, KindSettings, PayloadError, TaskContext, TaskFailure};

/// The longest sleep a payload may ask for: one day, the longest timeout.
const MAX_MS: u64 = 86_400_000;

#[derive(Debug)]
pub struct Sleep;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepPayload {
    #[serde(deserialize_with = "crate::whole_number::deserialize")]
    pub ms: u64,
}

impl Kind for Sleep {
    const NAME: &'static str = "sleep";
    const DESCRIPTION: &'static str = "Sleeps for `ms` milliseconds, reporting progress.";
    const CATEGORY: &'static str = "testing";
    type Payload = SleepPayload;

    fn payload_schema() -> Value {
        json!({
            "type": "object",
            "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": MAX_MS}},
            "required": ["ms"],
            "additionalProperties": false,
        })
    }

    fn check(payload: &SleepPayload, _settings: &KindSettings) -> Vec<PayloadError> {
        if payload.ms > MAX_MS {
            vec![PayloadError::new("ms", format!("must be at most {MAX_MS}"))]
        } else {
            Vec::new()
        }
    }

    async fn run(payload: SleepPayload, ctx: TaskContext) -> Result<Value, TaskFailure> {
        const STEPS: u64 = 10;
        let step = Duration::from_millis(payload.ms / STEPS);
        for done in 1..=STEPS {
            tokio::time::sleep(step).await;
            ctx.progress(u8::try_from(done * 100 / STEPS).unwrap_or(100));
        }
        // What integer division left over.
        tokio::time::sleep(Duration::from_millis(payload.ms % STEPS)).await;
        Ok(json!({"slept_ms": payload.ms}))
    }
}

/// `sleep` that declares itself not interruptible: what a cancel of a
/// running task must refuse, shown with a kind the tests can hold running.
#[derive(Debug)]
pub struct SteadySleep;

impl Kind for SteadySleep {
    const NAME: &'static str = "steady_sleep";
    const DESCRIPTION: &'static str =
        "Sleeps for `ms` milliseconds; once running it may not be cancelled.";
    const CATEGORY: &'static str = "testing";
    const TEST_ONLY: bool = true;
    const INTERRUPTIBLE: bool = false;
    type Payload = SleepPayload;

    fn payload_schema() -> Value {
        Sleep::payload_schema()
    }

    fn check(payload: &SleepPayload, settings: &KindSettings) -> Vec<PayloadError> {
        Sleep::check(payload, settings)
    }

    async fn run(payload: SleepPayload, ctx: TaskContext) -> Result<Value, TaskFailure> {
        Sleep::run(payload, ctx).await
    }
}
