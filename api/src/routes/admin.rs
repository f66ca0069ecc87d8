//! `/api/v1/admin`: the operations view for admins — live workers, per-queue
//! counts (Postgres, the truth, beside what Redis holds) and user and task
//! statistics.

use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, Datelike as _, Utc};
use keel_shared::{
    db::{
        tasks::{self, TaskStatus},
        users::{self, UserStats},
    },
    domain::Role,
    queue::Queue,
    workers::{self, WorkerCard},
};
use serde::{Deserialize, Serialize};
use utoipa::{
    ToSchema,
    openapi::schema::{
        AnyOfBuilder, KnownFormat, Object, ObjectBuilder, Schema, SchemaFormat, Type,
    },
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    error::{ApiError, FieldError},
    extract::{AppJson, AppPath},
    openapi::{AdminOnly, JsonBodyErrors},
    problems::problem_response,
    queues::queue_stats,
    responses::QueueStats,
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workers))
        .routes(routes!(list_queues))
        .routes(routes!(pause_queue))
        .routes(routes!(resume_queue))
        .routes(routes!(purge_tasks))
        .routes(routes!(bulk_tasks))
        .routes(routes!(stats))
}

/// Live workers: those that heartbeated within the last 15 s.
#[utoipa::path(get, path = "/api/v1/admin/workers", tag = "admin", security(("bearer" = []), ("api_key" = [])),
    responses(
        AdminOnly,
        (status = 200, description = "The live workers", body = [WorkerCard],
            example = json!([{"id": "worker-7f3c", "hostname": "keel-worker-0", "pid": 4242,
                "queues": ["email", "tasks", "maintenance"], "concurrency": 8, "version": "0.1.0",
                "in_flight": 2, "processed": 1337, "failed": 3, "started_at": "2026-01-15T00:00:00Z",
                "last_seen": "2026-01-15T09:30:00Z"}])),
    ))]
async fn list_workers(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<AppJson<Vec<WorkerCard>>, ApiError> {
    principal.require(Role::Admin)?;
    Ok(AppJson(workers::list_alive(&state.redis).await?))
}

/// Per queue: pending, scheduled, running, done and failed, and what Redis holds.
#[utoipa::path(get, path = "/api/v1/admin/queues", tag = "admin", security(("bearer" = []), ("api_key" = [])),
    responses(
        AdminOnly,
        (status = 200, description = "Every queue's counts", body = [QueueStats]),
    ))]
async fn list_queues(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<AppJson<Vec<QueueStats>>, ApiError> {
    principal.require(Role::Admin)?;
    queue_stats(&state).await.map(AppJson)
}

/// A queue's pause state.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"name": "tasks", "paused": true}))]
pub struct QueuePause {
    pub name: Queue,
    pub paused: bool,
}

/// Pauses a queue: within 5 s its workers take no more of its jobs (those
/// running finish). New jobs still queue up and run after a resume.
#[utoipa::path(post, path = "/api/v1/admin/queues/{queue}/pause", tag = "admin", security(("bearer" = []), ("api_key" = [])),
    params(("queue" = Queue, Path, description = "`email`, `tasks` or `maintenance`")),
    responses(
        AdminOnly,
        (status = 200, description = "The queue, paused", body = QueuePause),
        (status = 404, response = inline(NoSuchQueue)),
    ))]
async fn pause_queue(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(name): AppPath<String>,
) -> Result<AppJson<QueuePause>, ApiError> {
    set_paused(&state, &principal, &name, true).await
}

/// Resumes a paused queue: its workers take jobs again within 5 s.
#[utoipa::path(post, path = "/api/v1/admin/queues/{queue}/resume", tag = "admin", security(("bearer" = []), ("api_key" = [])),
    params(("queue" = Queue, Path, description = "`email`, `tasks` or `maintenance`")),
    responses(
        AdminOnly,
        (status = 200, description = "The queue, running again", body = QueuePause,
            example = json!({"name": "tasks", "paused": false})),
        (status = 404, response = inline(NoSuchQueue)),
    ))]
async fn resume_queue(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(name): AppPath<String>,
) -> Result<AppJson<QueuePause>, ApiError> {
    set_paused(&state, &principal, &name, false).await
}

async fn set_paused(
    state: &AppState,
    principal: &Principal,
    name: &str,
    paused: bool,
) -> Result<AppJson<QueuePause>, ApiError> {
    principal.require(Role::Admin)?;
    let queue =
        Queue::parse(name).ok_or_else(|| ApiError::not_found(format!("no queue {name:?}")))?;
    state.jobs.set_paused(queue, paused).await?;
    tracing::info!(%queue, paused, by = %principal.id(), "queue pause changed");
    Ok(AppJson(QueuePause {
        name: queue,
        paused,
    }))
}

/// Which finished tasks to delete.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"status": "completed", "older_than": "7d"}))]
pub struct PurgeRequest {
    /// `completed`, `failed`, `cancelled` or `expired`.
    #[schema(schema_with = finished_status_schema)]
    pub status: String,
    /// Tasks that finished before this: an RFC 3339 time, or an age such
    /// as `30d`, `12h`, `15m`, `90s`.
    #[schema(schema_with = older_than_schema)]
    pub older_than: String,
}

/// The statuses a purge takes: the finished ones.
fn finished_status_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some("`completed`, `failed`, `cancelled` or `expired`."))
        .enum_values(Some(["completed", "failed", "cancelled", "expired"]))
        .examples(["completed"])
        .build()
}

/// What [`cutoff`] reads.
fn older_than_schema() -> Schema {
    AnyOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(r"^[0-9]{1,6}[smhd]$")),
        )
        .description(Some(
            "Tasks that finished before this: an RFC 3339 time, or an age of at most 6 digits \
             and a unit, such as `30d`, `12h`, `15m`, `90s`.",
        ))
        .examples(["7d"])
        .build()
        .into()
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"deleted": 5120}))]
pub struct Purged {
    pub deleted: u64,
}

/// Rows one purge statement deletes, so a large purge never holds long locks.
const PURGE_BATCH: i64 = 5_000;

/// Deletes finished tasks (and their history) of one status that finished
/// before a time.
#[utoipa::path(post, path = "/api/v1/admin/tasks/purge", tag = "admin", security(("bearer" = []), ("api_key" = [])),
    request_body = PurgeRequest,
    responses(
        JsonBodyErrors, AdminOnly,
        (status = 200, description = "How many tasks were deleted", body = Purged),
    ))]
async fn purge_tasks(
    State(state): State<AppState>,
    principal: Principal,
    AppJson(request): AppJson<PurgeRequest>,
) -> Result<AppJson<Purged>, ApiError> {
    principal.require(Role::Admin)?;
    let mut errors = Vec::new();
    let status = TaskStatus::parse(&request.status).filter(|s| s.is_finished());
    if status.is_none() {
        errors.push(FieldError {
            field: "status".into(),
            message: "must be completed, failed, cancelled or expired".into(),
        });
    }
    let before = cutoff(&request.older_than, Utc::now());
    if before.is_none() {
        errors.push(FieldError {
            field: "older_than".into(),
            message: "must be an RFC 3339 time or an age like 30d, 12h, 15m, 90s".into(),
        });
    }
    let (Some(status), Some(before)) = (status, before) else {
        return Err(ApiError::validation(errors));
    };
    let mut deleted = 0;
    loop {
        let batch = tasks::purge_finished(&state.db, status, before, PURGE_BATCH).await?;
        deleted += batch;
        if batch < PURGE_BATCH.unsigned_abs() {
            break;
        }
    }
    tracing::info!(%status, %before, deleted, by = %principal.id(), "finished tasks purged");
    Ok(AppJson(Purged { deleted }))
}

/// A bulk action: its kind and which tasks it takes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"action": "retry", "filter": {"status": "failed", "kind": "http_request",
    "created_before": "2026-01-15T00:00:00Z"}}))]
pub struct BulkRequest {
    pub action: BulkActionName,
    /// Every condition given must hold; none: every task.
    #[serde(default)]
    pub filter: BulkFilterRequest,
}

/// `retry` (failed, cancelled and expired tasks run again) or `cancel`
/// (waiting tasks are cancelled, running ones stopped).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BulkActionName {
    Retry,
    Cancel,
}

/// Which tasks a bulk action takes.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkFilterRequest {
    /// One task status.
    pub status: Option<TaskStatus>,
    #[schema(max_length = 100)]
    pub kind: Option<String>,
    /// The queue: `tasks`, the one tasks run on.
    pub queue: Option<TaskQueue>,
    /// The owner.
    pub user_id: Option<uuid::Uuid>,
    /// Created before this time.
    pub created_before: Option<DateTime<Utc>>,
}

/// The queues tasks run on.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskQueue {
    Tasks,
}

/// What a bulk action did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"matched": 1200, "changed": 1187}))]
pub struct BulkResult {
    /// Tasks the filter matched, whatever their status.
    pub matched: i64,
    /// Tasks the action changed (a running task asked to stop counts).
    pub changed: u64,
}

/// Retries or cancels every task a filter matches, in batches of 1,000.
#[utoipa::path(post, path = "/api/v1/admin/tasks/bulk", tag = "admin", security(("bearer" = []), ("api_key" = [])),
    request_body = BulkRequest,
    responses(
        JsonBodyErrors, AdminOnly,
        (status = 200, description = "How many tasks matched and how many changed", body = BulkResult),
    ))]
async fn bulk_tasks(
    State(state): State<AppState>,
    principal: Principal,
    AppJson(request): AppJson<BulkRequest>,
) -> Result<AppJson<BulkResult>, ApiError> {
    principal.require(Role::Admin)?;
    let filter = request.filter;
    let mut errors = Vec::new();
    if filter
        .kind
        .as_ref()
        .is_some_and(|k| k.chars().count() > 100)
    {
        errors.push(FieldError {
            field: "filter.kind".into(),
            message: "at most 100 characters".into(),
        });
    }
    // PostgreSQL's timestamps start in 4713 BC; nothing was created before
    // year 1 anyway.
    if filter.created_before.is_some_and(|at| at.year() < 1) {
        errors.push(FieldError {
            field: "filter.created_before".into(),
            message: "must be in year 1 or later".into(),
        });
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let action = match request.action {
        BulkActionName::Retry => crate::tasks::BulkAction::Retry,
        BulkActionName::Cancel => crate::tasks::BulkAction::Cancel,
    };
    let filter = tasks::BulkFilter {
        status: filter.status,
        kind: filter.kind,
        owner: filter.user_id,
        created_before: filter.created_before,
        ..tasks::BulkFilter::default()
    };
    let (matched, changed) = crate::tasks::bulk(&state, &principal, action, &filter).await?;
    Ok(AppJson(BulkResult { matched, changed }))
}

/// The time `older_than` names, from `now`: an RFC 3339 time, or an age of
/// 1 to 6 digits and a unit. Even `999999d` (2,700 years) stays within
/// PostgreSQL's `timestamptz`, which starts at 4713 BC: an older cutoff
/// would fail the query.
fn cutoff(older_than: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(older_than) {
        return Some(at.to_utc());
    }
    // By the last character, not byte: `5é` must not split inside `é`.
    let unit = older_than.chars().next_back()?;
    let number = &older_than[..older_than.len() - unit.len_utf8()];
    if !(1..=6).contains(&number.len()) || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = number.parse().ok()?;
    let age = match unit {
        's' => chrono::Duration::try_seconds(n),
        'm' => chrono::Duration::try_minutes(n),
        'h' => chrono::Duration::try_hours(n),
        'd' => chrono::Duration::try_days(n),
        _ => None,
    }?;
    now.checked_sub_signed(age)
}

/// Tasks by status.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskStats {
    pub total: i64,
    /// Every status, zeros included.
    pub by_status: BTreeMap<String, i64>,
}

/// Users by role, active and verified; tasks by status.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "users": {"total": 42, "active": 40, "verified": 38, "by_role": {"user": 39, "admin": 2, "superadmin": 1}},
    "tasks": {"total": 1356, "by_status": {"pending": 12, "running": 2, "retrying": 1, "completed": 1337, "failed": 4, "cancelled": 0}}
}))]
pub struct Stats {
    pub users: UserStats,
    pub tasks: TaskStats,
}

/// Counts across the deployment.
#[utoipa::path(get, path = "/api/v1/admin/stats", tag = "admin", security(("bearer" = []), ("api_key" = [])),
    responses(
        AdminOnly,
        (status = 200, description = "Users and tasks counted", body = Stats),
    ))]
async fn stats(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<AppJson<Stats>, ApiError> {
    principal.require(Role::Admin)?;
    let users = users::stats(&state.db).await?;
    let mut by_status: BTreeMap<String, i64> = TaskStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for (status, n) in tasks::count_by_status(&state.db).await? {
        by_status.insert(status.as_str().to_owned(), n);
    }
    Ok(AppJson(Stats {
        users,
        tasks: TaskStats {
            total: by_status.values().sum(),
            by_status,
        },
    }))
}

problem_response!(
    /// No such queue (`not_found`).
    NoSuchQueue = [NotFound]
);

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Duration, Utc};

    use super::cutoff;

    #[test]
    fn older_than_is_a_time_or_an_age() {
        let now: DateTime<Utc> = "2026-01-10T00:00:00Z".parse().unwrap();
        assert_eq!(cutoff("7d", now), Some(now - Duration::days(7)));
        assert_eq!(cutoff("12h", now), Some(now - Duration::hours(12)));
        assert_eq!(cutoff("90s", now), Some(now - Duration::seconds(90)));
        assert_eq!(
            cutoff("2026-01-01T00:00:00Z", now),
            Some("2026-01-01T00:00:00Z".parse().unwrap())
        );
        assert_eq!(cutoff("999999d", now), Some(now - Duration::days(999_999)));
        // The last character is the unit even when it is not ASCII.
        for bad in [
            "",
            "d",
            "-1d",
            "+1d",
            "7w",
            "soon",
            "1000000d",
            "9043912d",
            "99999999999999999d",
            "5é",
            "é",
        ] {
            assert_eq!(cutoff(bad, now), None, "{bad}");
        }
    }
}
