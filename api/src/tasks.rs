//! What a task does at the API: created (one or a batch, under its owner's
//! cap and an optional idempotency key), cancelled, retried, made due now,
//! pushed to the queue and published to live updates; who may see one; and
//! the kind and payload check a task and a schedule share. The task and
//! schedule routes and the dashboard call these.

use std::time::Duration;

use axum::http::StatusCode;
use keel_shared::{
    db::{
        idempotency::{self, Claim},
        tasks::{self, NewTask, Task, TaskState, TaskStatus},
    },
    kinds,
    queue::dispatch,
    task_events,
    task_intake::{Create, Created as Intake},
};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::problems::Code;
use crate::{
    auth::Principal,
    error::{ApiError, constraint_of},
    state::AppState,
};

/// How long a live-update publish may hold a response: it is best effort.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(500);

/// Whether a create answers one task or `{items}`: the answer a reused
/// idempotency key replays is recorded with the tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    One,
    Batch,
}

/// What inserting did: created the tasks, or found the first response to a
/// reused idempotency key.
#[derive(Debug)]
pub(crate) enum Created {
    Fresh(Vec<Task>),
    /// A unique create found its twin and was asked to answer with it.
    Existing(Box<Task>),
    /// The status and body first answered, to answer again.
    Replay {
        status: u16,
        body: Value,
    },
}

/// What a unique create does when its key is taken (the key itself is on
/// the task, [`NewTask::unique_key`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Uniqueness {
    /// Also a twin created within this long, whatever its status.
    pub period: Option<Duration>,
    /// Answer with the twin instead of 409.
    pub existing: bool,
}

/// Creates `new` for the caller (claiming the idempotency key and recording
/// the answer, as `shape` says, in the same transaction; for a unique
/// create, first looking for its twin under the key's lock), then pushes
/// the jobs. The rows commit before the push: with Redis down the tasks are
/// still accepted, marked not enqueued for the reconciler.
///
/// # Errors
/// The owner's cap (429), a key used with another request (422), a unique
/// key taken (409), or a dependency down.
pub(crate) async fn create(
    state: &AppState,
    principal: &Principal,
    idempotency: Option<(String, Vec<u8>)>,
    new: Vec<NewTask>,
    shape: Shape,
    uniqueness: Option<Uniqueness>,
) -> Result<Created, ApiError> {
    let cap = state.config.tasks.max_unfinished_per_user;
    let over_cap = || too_many_unfinished(cap);
    let actor = principal.id().to_string();
    if idempotency.is_none() && uniqueness.is_none() {
        // Written with whatever creates arrive beside it: one transaction,
        // one INSERT, one push for the group (see `task_intake`).
        let create = Create {
            owner: principal.id(),
            actor,
            tasks: new,
            cap: Some(cap),
        };
        return match state.intake.create(create).await? {
            Intake::Tasks(created) => {
                publish(state, created.iter().map(TaskState::from).collect()).await;
                Ok(Created::Fresh(created))
            }
            Intake::OverCap => Err(over_cap()),
        };
    }
    let mut tx = state.db.begin().await?;
    let wanted = i64::try_from(new.len()).unwrap_or(i64::MAX);
    // Concurrent creates of one owner check one after another, so together
    // they cannot pass the cap. Checked after the key: a replay is answered
    // whatever the owner has now.
    let room = if cap > 0 {
        tasks::room_under_cap(&mut tx, principal.id(), i64::from(cap), wanted).await?
    } else {
        i64::MAX
    };
    if let Some((key, hash)) = &idempotency {
        match idempotency::claim(&mut tx, principal.id(), key, hash).await? {
            Claim::Fresh => {}
            Claim::Replay { status, body } => return Ok(Created::Replay { status, body }),
            Claim::Mismatch => {
                return Err(ApiError::new(
                    Code::IdempotencyKeyMismatch,
                    "this Idempotency-Key was used with another request",
                ));
            }
        }
    }
    // After the idempotency key (a replay answers as it first did), under
    // the unique key's lock: see `tasks::find_unique`.
    if let (Some(uniqueness), Some(key)) = (
        uniqueness,
        new.first().and_then(|t| t.unique_key.as_deref()),
    ) && let Some(twin) = tasks::find_unique(&mut tx, key, uniqueness.period).await?
    {
        if uniqueness.existing {
            return Ok(Created::Existing(Box::new(twin)));
        }
        return Err(ApiError::NotUnique {
            detail: format!(
                "a task with the same unique key is {} (created {}); it is existing_task_id",
                twin.status, twin.created_at
            ),
            existing_task_id: twin.id,
        });
    }
    if room < wanted {
        return Err(over_cap());
    }
    let created = tasks::insert_many(&mut *tx, principal.id(), &actor, &new).await?;
    let body = match shape {
        Shape::One => serde_json::to_value(&created[0]),
        // `{items}`, as the batch route's `TaskBatch` answers.
        Shape::Batch => serde_json::to_value(&created).map(|items| json!({ "items": items })),
    }
    .map_err(|e| ApiError::Internal(e.into()))?;
    if let Some((key, _)) = &idempotency {
        idempotency::record(
            &mut tx,
            principal.id(),
            key,
            StatusCode::CREATED.as_u16(),
            &body,
        )
        .await?;
    }
    tx.commit().await?;
    enqueue(state, &created).await;
    Ok(Created::Fresh(created))
}

/// 403 `kind_forbidden` unless `principal`'s role may create every task of
/// `new` (each kind's [`kinds::Kind::MIN_ROLE`]).
pub(crate) fn require_kind_role(principal: &Principal, new: &[NewTask]) -> Result<(), ApiError> {
    for task in new {
        if let Some(kind) = kinds::find(&task.kind)
            && principal.role() < kind.min_role
        {
            return Err(ApiError::new(
                Code::KindForbidden,
                format!(
                    "tasks of kind {:?} need the {} role",
                    task.kind, kind.min_role
                ),
            ));
        }
    }
    Ok(())
}

/// The unique key of a task of `kind` for `owner` whose chosen payload
/// fields are `values` (an object, keys sorted): a hash, so any payload
/// makes a short key, and one owner's key never matches another's. Values
/// equal as JSON make one key: `1`, `1.0` and `1e0` are one number.
pub(crate) fn unique_key(kind: &str, owner: Uuid, values: &Value) -> String {
    use sha2::{Digest as _, Sha256};
    use std::fmt::Write as _;
    // serde_json's maps are sorted: equal values print equal once their
    // numbers are written one way.
    let canonical = json!([kind, owner, canonical_numbers(values)]).to_string();
    Sha256::digest(canonical.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// `value` with every whole number written as an integer (`1.0` → `1`,
/// `-0.0` → `0`), as far as a float holds integers exactly.
fn canonical_numbers(value: &Value) -> Value {
    /// Integers a float holds exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            #[allow(clippy::cast_possible_truncation)]
            Some(f) if f.fract() == 0.0 && f.abs() <= EXACT => Value::from(f as i64),
            _ => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(canonical_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), canonical_numbers(v)))
                .collect(),
        ),
        _ => value.clone(),
    }
}

/// 429 `too_many_unfinished_tasks` unless `owner` has room for one more
/// unfinished task under `cap` (0: no cap): a retry or a schedule's run-now.
pub(crate) async fn require_room_for_one(
    tx: &mut sqlx::PgConnection,
    owner: Uuid,
    cap: u32,
) -> Result<(), ApiError> {
    if cap > 0 && tasks::room_under_cap(tx, owner, i64::from(cap), 1).await? < 1 {
        return Err(too_many_unfinished(cap));
    }
    Ok(())
}

/// 429 `too_many_unfinished_tasks`: the owner is at `MAX_UNFINISHED_TASKS_PER_USER`.
fn too_many_unfinished(cap: u32) -> ApiError {
    ApiError::new(
        Code::TooManyUnfinishedTasks,
        format!("at most {cap} unfinished tasks per user; wait for some to finish"),
    )
}

/// Pushes `created` (already committed) and publishes their state. A failed
/// push is not the client's problem: the rows are marked not enqueued and
/// the reconciler pushes them once Redis is back. The push runs detached
/// and is awaited: a client that hangs up after the commit (dropping this
/// request) must not cancel it.
pub(crate) async fn enqueue(state: &AppState, created: &[Task]) {
    let (state, created) = (state.clone(), created.to_vec());
    let push = tokio::spawn(async move {
        if dispatch::push_tasks(&state.db, &state.jobs, &created)
            .await
            .is_err()
        {
            // Redis is sick: a live update would only wait on it too.
            return;
        }
        publish(&state, created.iter().map(TaskState::from).collect()).await;
    });
    if let Err(e) = push.await {
        tracing::warn!(error = %e, "the push of new tasks failed; the reconciler will queue them");
    }
}

/// Publishes live updates, without letting a slow Redis hold the response.
pub(crate) async fn publish(state: &AppState, states: Vec<TaskState>) {
    if tokio::time::timeout(PUBLISH_TIMEOUT, task_events::publish(&state.redis, &states))
        .await
        .is_err()
    {
        tracing::debug!(count = states.len(), "publishing task updates timed out");
    }
}

/// What a cancel did.
#[derive(Debug)]
pub(crate) enum Cancelled {
    /// The task is `cancelled`.
    Done(Task),
    /// The task still runs: its worker was told, and has not let go within
    /// [`STOP_WAIT`]. The request stays on the row; the worker ends the
    /// task `cancelled` at its next lease renewal at the latest.
    Requested(Task),
}

/// How long a cancel of a running task waits for its worker to let go.
const STOP_WAIT: Duration = Duration::from_secs(5);
/// How often the row is read meanwhile.
const STOP_POLL: Duration = Duration::from_millis(50);
/// Cancels waiting for their worker at once, per API process: each reads
/// the row every [`STOP_POLL`] for up to [`STOP_WAIT`].
static STOP_WAITERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(32);

/// Cancels the task `id` if `principal` may see it: a waiting task at once;
/// a running one by telling its worker and waiting for it to let go.
///
/// # Errors
/// 404 for a task the caller may not see; 409 for a finished task, or a
/// running one whose kind may not be interrupted.
pub(crate) async fn cancel(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<Cancelled, ApiError> {
    let task = visible_task(state, principal, id).await?;
    let actor = principal.id().to_string();
    // A waiting task may start between the two statements; a running one
    // may end, or hand its attempt back. Each turn reads the state afresh.
    for _ in 0..3 {
        if let Some(task) = tasks::cancel(&state.db, id, &actor).await? {
            publish(state, vec![TaskState::from(&task)]).await;
            return Ok(Cancelled::Done(task));
        }
        if !kinds::find(&task.kind).is_none_or(|k| k.interruptible) {
            let now = tasks::get(&state.db, id).await?.ok_or_else(no_such_task)?;
            if now.status == TaskStatus::Running {
                return Err(not_interruptible(&task.kind));
            }
        }
        if let Some(task) = tasks::request_cancel(&state.db, id, &actor).await? {
            if task.status == TaskStatus::Cancelled {
                // Its worker had died: nothing to tell.
                publish(state, vec![TaskState::from(&task)]).await;
                return Ok(Cancelled::Done(task));
            }
            return stop_running(state, task).await;
        }
        let now = tasks::get(&state.db, id).await?.ok_or_else(no_such_task)?;
        if now.status.is_finished() {
            return Err(not_cancellable(now.status));
        }
    }
    Err(ApiError::new(
        Code::TaskNotCancellable,
        "the task keeps changing state; try again",
    ))
}

/// Tells the worker running `task` to stop, and waits for the row to say
/// it did.
async fn stop_running(state: &AppState, task: Task) -> Result<Cancelled, ApiError> {
    let token = task.lease_owner.clone().unwrap_or_default();
    request_stops(state, &[(task.id, token)]).await;
    // Waiting holds a connection; past this many waits at once, answer at
    // once (202) and let the worker finish the job without a watcher.
    let Ok(_waiting) = STOP_WAITERS.try_acquire() else {
        return Ok(Cancelled::Requested(task));
    };
    let deadline = tokio::time::Instant::now() + STOP_WAIT;
    loop {
        tokio::time::sleep(STOP_POLL).await;
        let state_now = tasks::get_state(&state.db, task.id).await?;
        let status = state_now.map(|s| s.status);
        if status != Some(TaskStatus::Running) || tokio::time::Instant::now() >= deadline {
            break;
        }
    }
    let now = tasks::get(&state.db, task.id)
        .await?
        .ok_or_else(no_such_task)?;
    match now.status {
        TaskStatus::Cancelled => Ok(Cancelled::Done(now)),
        TaskStatus::Running => Ok(Cancelled::Requested(now)),
        other => Err(ApiError::new(
            Code::TaskNotCancellable,
            format!("the task was {other} before its worker could stop it"),
        )),
    }
}

/// Tells the workers running `attempts` to stop them, without letting a
/// slow Redis hold the response: the requests are on the rows, and the
/// workers' lease renewals read them.
async fn request_stops(state: &AppState, attempts: &[(Uuid, String)]) {
    let told = tokio::time::timeout(
        PUBLISH_TIMEOUT,
        task_events::request_stops(&state.redis, attempts),
    )
    .await;
    if !matches!(told, Ok(Ok(()))) {
        tracing::debug!(
            count = attempts.len(),
            "stop requests did not reach Redis; the workers' lease renewals will see them"
        );
    }
}

/// What a bulk action does to each task its filter matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BulkAction {
    /// Waiting tasks are cancelled; running ones are asked to stop.
    Cancel,
    /// Failed, cancelled and expired tasks run again.
    Retry,
}

/// Rows one bulk statement changes: a large action runs in pieces, and
/// never holds many rows' locks at once.
const BULK_BATCH: i64 = 1_000;

/// `action` on every task `filter` matches, as admin `principal`: how many
/// the filter matched (whatever their status) and how many changed. A
/// running task asked to stop counts as changed; it ends `cancelled` as a
/// single cancel's does. Retried tasks are queued like any retry, past
/// their owners' caps of unfinished tasks (an admin's decision).
///
/// The work runs on its own tokio task, awaited: a client that hangs up,
/// or a request timeout, does not stop it half-way.
///
/// # Errors
/// The database fails.
pub(crate) async fn bulk(
    state: &AppState,
    principal: &Principal,
    action: BulkAction,
    filter: &tasks::BulkFilter,
) -> Result<(i64, u64), ApiError> {
    let (state, actor, filter) = (state.clone(), principal.id().to_string(), filter.clone());
    tokio::spawn(async move { bulk_detached(&state, actor, action, &filter).await })
        .await
        .map_err(|e| ApiError::Internal(e.into()))?
}

async fn bulk_detached(
    state: &AppState,
    actor: String,
    action: BulkAction,
    filter: &tasks::BulkFilter,
) -> Result<(i64, u64), ApiError> {
    let matched = tasks::count_matching(&state.db, filter).await?;
    // Rows changed from here on (by this action, or by anyone) are not
    // taken: a retried task that fails again at once is not retried again.
    let began: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&state.db)
        .await?;
    let filter = &tasks::BulkFilter {
        unchanged_since: Some(began),
        ..filter.clone()
    };
    // A running task of a kind that may not be interrupted is not stopped,
    // as a single cancel would not.
    let stoppable = &tasks::BulkFilter {
        kinds_not: kinds::registry::installed()
            .kinds()
            .iter()
            .filter(|k| !k.interruptible)
            .map(|k| k.name.to_owned())
            .collect(),
        ..filter.clone()
    };
    let mut changed = 0;
    match action {
        BulkAction::Cancel => {
            loop {
                let cancelled =
                    tasks::bulk_cancel_waiting(&state.db, filter, &actor, BULK_BATCH).await?;
                if cancelled.is_empty() {
                    break;
                }
                changed += cancelled.len() as u64;
                publish(state, cancelled).await;
            }
            loop {
                let asked =
                    tasks::bulk_request_cancel(&state.db, stoppable, &actor, BULK_BATCH).await?;
                if asked.is_empty() {
                    break;
                }
                changed += asked.len() as u64;
                request_stops(state, &asked).await;
            }
        }
        BulkAction::Retry => loop {
            let retried = tasks::bulk_retry(&state.db, filter, &actor, BULK_BATCH).await?;
            if retried.is_empty() {
                break;
            }
            changed += retried.len() as u64;
            for task in &retried {
                metrics::counter!("keel_tasks_retried_total", "kind" => task.kind.clone())
                    .increment(1);
            }
            enqueue(state, &retried).await;
        },
    }
    tracing::info!(?action, ?filter, matched, changed, by = %actor, "bulk task action");
    Ok((matched, changed))
}

/// 409: the task is finished.
fn not_cancellable(status: TaskStatus) -> ApiError {
    ApiError::new(
        Code::TaskNotCancellable,
        format!("the task is {status}; only unfinished tasks can be cancelled"),
    )
}

/// 409: the task runs, and its kind may not be stopped half-way.
fn not_interruptible(kind: &str) -> ApiError {
    ApiError::new(
        Code::TaskNotCancellable,
        format!(
            "the task is running, and kind {kind:?} may not be interrupted; cancel it before it starts"
        ),
    )
}

/// Runs the `failed`, `cancelled` or `expired` task `id` again, if `principal` may see it.
///
/// # Errors
/// 404 for a task the caller may not see, 409 for one in another state.
pub(crate) async fn retry(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<Task, ApiError> {
    visible_task(state, principal, id).await?;
    // A retried task is unfinished again: it counts against its owner's
    // cap like a new one, under the same lock.
    let cap = state.config.tasks.max_unfinished_per_user;
    let mut tx = state.db.begin().await?;
    if cap > 0 {
        let owner = tasks::owner_of(&mut *tx, id)
            .await?
            .ok_or_else(no_such_task)?;
        require_room_for_one(&mut tx, owner, cap).await?;
    }
    // A unique task comes back unfinished: not while a twin is.
    let retried = match tasks::retry(&mut *tx, id, &principal.id().to_string()).await {
        Err(e) if constraint_of(&e) == Some("tasks_unique_live_idx") => {
            drop(tx);
            let twin = tasks::live_twin(&state.db, id).await?;
            return Err(ApiError::NotUnique {
                detail: "an unfinished task has the same unique key; it is existing_task_id".into(),
                existing_task_id: twin.unwrap_or(id),
            });
        }
        other => other?,
    };
    tx.commit().await?;
    let Some(task) = retried else {
        let now = tasks::get(&state.db, id).await?.ok_or_else(no_such_task)?;
        return Err(ApiError::new(
            Code::TaskNotRetryable,
            format!(
                "the task is {}; only failed, cancelled or expired tasks can be retried",
                now.status
            ),
        ));
    };
    enqueue(state, std::slice::from_ref(&task)).await;
    Ok(task)
}

/// Makes the waiting task `id` (scheduled for later, or backing off before a
/// retry) due now, if `principal` may see it.
///
/// # Errors
/// 404 for a task the caller may not see, 409 for one that is not waiting.
pub(crate) async fn run_now(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<Task, ApiError> {
    visible_task(state, principal, id).await?;
    let Some(task) = tasks::run_now(&state.db, id, &principal.id().to_string()).await? else {
        return Err(ApiError::new(
            Code::TaskNotWaiting,
            "only a pending or retrying task that waits for a later time can run now",
        ));
    };
    enqueue(state, std::slice::from_ref(&task)).await;
    Ok(task)
}

/// The task `id`, if the caller may see it: their own, or any for an admin.
pub(crate) async fn visible_task(
    state: &AppState,
    principal: &Principal,
    id: Uuid,
) -> Result<Task, ApiError> {
    tasks::get(&state.db, id)
        .await?
        .filter(|t| t.owner_id == principal.id() || principal.is_admin())
        .ok_or_else(no_such_task)
}

/// 404 for a task that does not exist, or that the caller may not see.
pub(crate) fn no_such_task() -> ApiError {
    ApiError::not_found("no such task")
}

/// Reports through `invalid` an unknown (or disabled) `kind`, or what is
/// wrong with `payload` for it, field by field (`payload.url`): the checks
/// a task create and a schedule share.
pub(crate) fn check_kind(
    state: &AppState,
    kind: &str,
    payload: &Value,
    invalid: &mut impl FnMut(&str, String),
) {
    match kinds::find_enabled(kind, &state.kinds) {
        None => invalid(
            "kind",
            format!(
                "unknown kind; one of {}",
                kinds::enabled(&state.kinds)
                    .map(|k| k.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Some(spec) => {
            if let Err(problems) = spec.check(payload, &state.kinds) {
                for problem in problems {
                    let path = if problem.field.is_empty() {
                        "payload".to_owned()
                    } else {
                        format!("payload.{}", problem.field)
                    };
                    invalid(&path, problem.message);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_equal_as_json_make_one_unique_key() {
        let owner = Uuid::nil();
        let key = |v: Value| unique_key("echo", owner, &json!({"n": v}));
        assert_eq!(key(json!(1)), key(json!(1.0)));
        assert_eq!(key(json!(0)), key(json!(-0.0)));
        assert_eq!(key(json!([2, {"x": 3.0}])), key(json!([2.0, {"x": 3}])));
        assert_ne!(key(json!(1)), key(json!("1")), "a string is not a number");
        assert_ne!(key(json!(1.5)), key(json!(1)));
        assert_ne!(
            unique_key("echo", owner, &json!({})),
            unique_key("noop", owner, &json!({}))
        );
    }
}
