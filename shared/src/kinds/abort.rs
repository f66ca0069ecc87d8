//! `abort`: kills the worker process that runs it — a poison task, for
//! proving that a task which crashes its worker stops at `max_attempts`.
//! Test-only: offered only with `ENABLE_TEST_KINDS`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Kind, TaskContext, TaskFailure};
use crate::domain::Role;

#[derive(Debug)]
pub struct Abort;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbortPayload {}

impl Kind for Abort {
    const NAME: &'static str = "abort";
    const DESCRIPTION: &'static str = "Aborts the worker process (fault tests only).";
    const CATEGORY: &'static str = "testing";
    const TEST_ONLY: bool = true;
    // It kills the worker that runs it: only admins may, and never often.
    const MIN_ROLE: Role = Role::Admin;
    const MAX_ATTEMPTS: (i32, i32) = (1, 3);
    type Payload = AbortPayload;

    fn payload_schema() -> Value {
        json!({"type": "object", "additionalProperties": false})
    }

    async fn run(_payload: AbortPayload, _ctx: TaskContext) -> Result<Value, TaskFailure> {
        tracing::error!("aborting the worker process, as the abort kind does");
        std::process::abort()
    }
}
