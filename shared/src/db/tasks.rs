//! The `tasks` table and its history: creating tasks (one or a batch, under
//! the owner's cap), reading and listing them, the user's cancel and retry,
//! and the worker's lease — claim, progress, renewal, and the fenced final
//! write. A claim stores a lease token unique to that attempt
//! (`{worker}/{random}`) in `lease_owner`; every later write of the attempt
//! says `AND lease_owner = $token`, so an attempt that lost its lease —
//! even to a later attempt on the same worker — changes nothing.
//!
//! The hot statements find their rows by id and nothing else the planner
//! could use: a lease token is only ever set on a `running` row (a CHECK
//! says so), so the attempt's writes need no `status = 'running'`, and the
//! claim states its condition as a `CASE`. Statistics taken on a quiet
//! table say there are no running or due rows; given an indexable status
//! condition, the planner then scans every such row (and every dead entry
//! autovacuum has not yet removed) on each batch, instead of its few ids.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgConnection, PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Running,
    Retrying,
    Completed,
    Failed,
    Cancelled,
    /// Not started by its `expires_at`: it never ran, and never will.
    Expired,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 7] = [
        Self::Pending,
        Self::Running,
        Self::Retrying,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    /// The status called `s`, if there is one.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// No more attempts will run.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::Expired
        )
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl sqlx::Type<Postgres> for TaskStatus {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <&str as sqlx::Type<Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <&str as sqlx::Type<Postgres>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Postgres> for TaskStatus {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let s = <&str as sqlx::Decode<Postgres>>::decode(value)?;
        Self::parse(s).ok_or_else(|| format!("unknown task status {s:?}").into())
    }
}

/// A task row. Lease and bookkeeping columns are not serialised.
#[derive(Debug, Clone, FromRow, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = Task::example))]
pub struct Task {
    pub id: Uuid,
    pub owner_id: Uuid,
    #[cfg_attr(feature = "openapi", schema(example = "nightly report"))]
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(example = "sleep"))]
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
    pub status: TaskStatus,
    /// 0 to 100.
    pub progress: i16,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub result: Option<serde_json::Value>,
    pub error: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub timeout_seconds: i32,
    pub priority: i16,
    pub scheduled_at: DateTime<Utc>,
    /// When the next attempt may start (equals `scheduled_at` before the first).
    pub next_attempt_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub schedule_id: Option<Uuid>,
    /// The worker that ran the latest attempt.
    pub worker_id: Option<String>,
    #[serde(skip)]
    pub lease_owner: Option<String>,
    #[serde(skip)]
    pub lease_expires_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub enqueued_at: Option<DateTime<Utc>>,
    /// Times the task put itself off (see [`Outcome::Snooze`]): a snoozed
    /// task waits `pending` or `retrying` with its attempt given back.
    #[serde(default)]
    pub snoozes: i32,
    /// If it has not started by then, it ends `expired` and never runs (a
    /// task that started once, and snoozed or was handed back, does not
    /// expire).
    pub expires_at: Option<DateTime<Utc>>,
}

#[cfg(feature = "openapi")]
impl Task {
    /// The task the API's documentation shows, wherever a task appears.
    pub fn example() -> serde_json::Value {
        serde_json::json!({
            "id": "01936f0e-7d2a-7c3e-8f41-5b6c7d8e9f01", "owner_id": "01936f0e-5c4d-7a1b-9e2f-3a4b5c6d7e8f",
            "name": "nightly report", "kind": "sleep", "payload": {"ms": 500}, "status": "completed",
            "progress": 100, "result": {"slept_ms": 500}, "error": null, "attempts": 1, "max_attempts": 3,
            "timeout_seconds": 300, "priority": 0, "scheduled_at": "2026-01-15T02:30:00Z",
            "next_attempt_at": "2026-01-15T02:30:00Z", "started_at": "2026-01-15T02:30:01Z",
            "finished_at": "2026-01-15T02:30:02Z", "created_at": "2026-01-15T02:30:00Z",
            "updated_at": "2026-01-15T02:30:02Z", "schedule_id": null, "worker_id": "worker-7f3c",
            "expires_at": null, "snoozes": 0
        })
    }
}

/// The columns every query returns, as a literal for `concat!`.
macro_rules! task_columns {
    () => {
        "id, owner_id, name, kind, payload, status, progress, result, error, attempts, \
         max_attempts, timeout_seconds, priority, scheduled_at, next_attempt_at, started_at, \
         finished_at, created_at, updated_at, schedule_id, worker_id, lease_owner, \
         lease_expires_at, enqueued_at, snoozes, expires_at"
    };
}

/// What a retry sets, as a literal for `concat!`: the task `pending` again
/// with a fresh set of attempts, due now, marked enqueued, with nothing of
/// its last run left (result, error, lease, stop request, snoozes,
/// deadline). One list for the single and the bulk retry.
macro_rules! retry_columns {
    () => {
        "status = 'pending', attempts = 0, progress = 0, result = NULL, \
         error = NULL, started_at = NULL, finished_at = NULL, next_attempt_at = now(), \
         lease_owner = NULL, lease_expires_at = NULL, cancel_requested_at = NULL, snoozes = 0, \
         expires_at = NULL, enqueued_at = now()"
    };
}

/// The short form `GET /tasks/{id}/status` and live updates carry.
#[derive(Debug, Clone, FromRow, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({
    "id": "01936f0e-7d2a-7c3e-8f41-5b6c7d8e9f01", "status": "running", "progress": 40,
    "attempts": 1, "updated_at": "2026-01-15T02:30:01Z"
})))]
pub struct TaskState {
    pub id: Uuid,
    #[serde(skip)]
    pub owner_id: Uuid,
    pub status: TaskStatus,
    pub progress: i16,
    pub attempts: i32,
    pub updated_at: DateTime<Utc>,
}

impl From<&Task> for TaskState {
    fn from(task: &Task) -> Self {
        Self {
            id: task.id,
            owner_id: task.owner_id,
            status: task.status,
            progress: task.progress,
            attempts: task.attempts,
            updated_at: task.updated_at,
        }
    }
}

/// One status change, for the task's history.
#[derive(Debug, Clone, FromRow, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TaskEvent {
    pub from_status: Option<TaskStatus>,
    pub to_status: TaskStatus,
    /// A user id, a worker name, or `system`.
    pub actor: Option<String>,
    /// The attempt the change belongs to.
    pub attempt: i32,
    pub at: DateTime<Utc>,
}

/// A task to create, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub name: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub max_attempts: i32,
    pub timeout_seconds: i32,
    pub priority: i16,
    /// `None`: now, by the database clock.
    pub scheduled_at: Option<DateTime<Utc>>,
    pub schedule_id: Option<Uuid>,
    /// See [`Task::expires_at`].
    pub expires_at: Option<DateTime<Utc>>,
    /// The key no other unfinished task may share (see [`find_unique`]).
    pub unique_key: Option<String>,
}

/// Inserts `tasks` for `owner` in one statement. The rows are marked
/// enqueued: the caller pushes them next and clears the mark with
/// [`mark_not_enqueued`] if the push fails. Returned in the order given.
/// No cap is checked here: a capped caller asked [`room_under_cap`] in the
/// same transaction first.
///
/// # Errors
/// The database fails.
pub async fn insert_many(
    db: impl PgExecutor<'_>,
    owner: Uuid,
    actor: &str,
    tasks: &[NewTask],
) -> Result<Vec<Task>, sqlx::Error> {
    let rows: Vec<GroupRow<'_>> = tasks
        .iter()
        .map(|task| GroupRow { owner, actor, task })
        .collect();
    insert_group(db, &rows, &[]).await
}

/// One task of a group insert: its owner, who asked for it, what it is.
#[derive(Debug, Clone)]
pub struct GroupRow<'a> {
    pub owner: Uuid,
    pub actor: &'a str,
    pub task: &'a NewTask,
}

/// What a group asks of one capped owner: `wanted` more unfinished tasks
/// under `cap`.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    pub owner: Uuid,
    pub wanted: i64,
    pub cap: i64,
}

/// Inserts the tasks of many creates (of any owners) in one statement,
/// marked enqueued; the rows in the order given.
///
/// With `within` empty, no cap is checked: the caller asked
/// [`room_under_cap`] for each capped owner in the same transaction. With
/// it, the statement locks each of those owners' bounds (as
/// [`room_under_cap`] does, in owner order) and inserts every row if each
/// owner's bound leaves room for what it wants, and none otherwise (then
/// the caller checks the owners one by one): the common case, an owner far
/// below the cap, is one statement and, outside a transaction, one commit.
///
/// # Errors
/// The database fails.
pub async fn insert_group(
    db: impl PgExecutor<'_>,
    rows: &[GroupRow<'_>],
    within: &[Wanted],
) -> Result<Vec<Task>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|_| Uuid::now_v7()).collect();
    let owners: Vec<Uuid> = rows.iter().map(|r| r.owner).collect();
    let actors: Vec<&str> = rows.iter().map(|r| r.actor).collect();
    let names: Vec<&str> = rows.iter().map(|r| r.task.name.as_str()).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.task.kind.as_str()).collect();
    let payloads: Vec<&serde_json::Value> = rows.iter().map(|r| &r.task.payload).collect();
    let max_attempts: Vec<i32> = rows.iter().map(|r| r.task.max_attempts).collect();
    let timeouts: Vec<i32> = rows.iter().map(|r| r.task.timeout_seconds).collect();
    let priorities: Vec<i16> = rows.iter().map(|r| r.task.priority).collect();
    let scheduled: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.task.scheduled_at).collect();
    let schedules: Vec<Option<Uuid>> = rows.iter().map(|r| r.task.schedule_id).collect();
    let expiries: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.task.expires_at).collect();
    let unique_keys: Vec<Option<&str>> =
        rows.iter().map(|r| r.task.unique_key.as_deref()).collect();
    let mut capped: Vec<Wanted> = within.to_vec();
    capped.sort_unstable_by_key(|w| w.owner);
    let capped_owners: Vec<Uuid> = capped.iter().map(|w| w.owner).collect();
    let capped_wanted: Vec<i64> = capped.iter().map(|w| w.wanted).collect();
    let capped_caps: Vec<i64> = capped.iter().map(|w| w.cap).collect();
    let mut created: Vec<Task> = sqlx::query_as(concat!(
        "WITH wanted AS (
             SELECT * FROM unnest($12::uuid[], $13::bigint[], $14::bigint[])
                 AS w(owner_id, wanted, cap)
         ), bounds AS (
             SELECT owner_id, at_most FROM open_task_bounds
             WHERE owner_id = ANY($12) ORDER BY owner_id FOR UPDATE
         ), fits AS (
             SELECT count(b.owner_id) = cardinality($12::uuid[])
                    AND coalesce(bool_and(b.at_most + w.wanted <= w.cap), true) AS ok
             FROM wanted w LEFT JOIN bounds b USING (owner_id)
         )
         INSERT INTO tasks (id, owner_id, name, kind, payload, max_attempts, timeout_seconds,
                            priority, scheduled_at, next_attempt_at, schedule_id, changed_by,
                            enqueued_at, expires_at, unique_key)
         SELECT t.id, t.owner_id, t.name, t.kind, t.payload, t.max_attempts, t.timeout_seconds,
                t.priority, COALESCE(t.scheduled_at, now()), COALESCE(t.scheduled_at, now()),
                t.schedule_id, t.actor, now(), t.expires_at, t.unique_key
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::jsonb[],
                     $7::int[], $8::int[], $9::smallint[], $10::timestamptz[], $11::uuid[],
                     $15::timestamptz[], $16::text[])
              AS t(id, owner_id, actor, name, kind, payload, max_attempts, timeout_seconds,
                   priority, scheduled_at, schedule_id, expires_at, unique_key),
              fits
         WHERE fits.ok
         RETURNING ",
        task_columns!()
    ))
    .bind(&ids)
    .bind(&owners)
    .bind(&actors)
    .bind(&names)
    .bind(&kinds)
    .bind(&payloads)
    .bind(&max_attempts)
    .bind(&timeouts)
    .bind(&priorities)
    .bind(&scheduled)
    .bind(&schedules)
    .bind(&capped_owners)
    .bind(&capped_wanted)
    .bind(&capped_caps)
    .bind(&expiries)
    .bind(&unique_keys)
    .fetch_all(db)
    .await?;
    // RETURNING keeps no promised order; put the rows back in the caller's.
    let position: std::collections::HashMap<Uuid, usize> =
        ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
    created.sort_by_key(|t| position.get(&t.id).copied().unwrap_or(usize::MAX));
    Ok(created)
}

/// Which tasks a bulk action takes (every condition set must hold).
#[derive(Debug, Clone, Default)]
pub struct BulkFilter {
    pub status: Option<TaskStatus>,
    pub kind: Option<String>,
    pub owner: Option<Uuid>,
    pub created_before: Option<DateTime<Utc>>,
    /// Leave tasks of these kinds out.
    pub kinds_not: Vec<String>,
    /// Only rows last changed before this (by the database clock): an
    /// action that loops over batches takes no row it changed itself, nor
    /// one changed by anyone else since it began.
    pub unchanged_since: Option<DateTime<Utc>>,
}

impl BulkFilter {
    /// ` WHERE …` for this filter (`WHERE true` for none), then `AND …` from
    /// the caller.
    fn push_where(&self, qb: &mut QueryBuilder<Postgres>) {
        qb.push(" WHERE true");
        if let Some(status) = self.status {
            qb.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(kind) = &self.kind {
            qb.push(" AND kind = ").push_bind(kind.clone());
        }
        if let Some(owner) = self.owner {
            qb.push(" AND owner_id = ").push_bind(owner);
        }
        if let Some(before) = self.created_before {
            qb.push(" AND created_at < ").push_bind(before);
        }
        if !self.kinds_not.is_empty() {
            qb.push(" AND NOT (kind = ANY(")
                .push_bind(self.kinds_not.clone())
                .push("))");
        }
        if let Some(since) = self.unchanged_since {
            qb.push(" AND updated_at < ").push_bind(since);
        }
    }
}

/// How many tasks `filter` matches, whatever their status.
///
/// # Errors
/// The database fails.
pub async fn count_matching(
    db: impl PgExecutor<'_>,
    filter: &BulkFilter,
) -> Result<i64, sqlx::Error> {
    let mut qb = QueryBuilder::new("SELECT count(*) FROM tasks");
    filter.push_where(&mut qb);
    qb.build_query_scalar().fetch_one(db).await
}

/// `UPDATE tasks SET {set}, changed_by = actor` of up to `limit` rows
/// `filter` matches that also meet `only` (checked again on the locked
/// row), `RETURNING {returning}`.
fn bulk_update(
    set: &str,
    actor: &str,
    filter: &BulkFilter,
    only: &str,
    limit: i64,
    returning: &str,
) -> QueryBuilder<Postgres> {
    let mut qb = QueryBuilder::new(format!("UPDATE tasks SET {set}, changed_by = "));
    qb.push_bind(actor.to_owned());
    qb.push(" WHERE id IN (SELECT id FROM tasks");
    filter.push_where(&mut qb);
    qb.push(format!(" AND {only} LIMIT "))
        .push_bind(limit)
        .push(format!(
            " FOR UPDATE SKIP LOCKED) AND {only} RETURNING {returning}"
        ));
    qb
}

/// Cancels up to `limit` waiting (`pending`, `retrying`) tasks `filter`
/// matches, as `actor`; their new state. Called until it returns none.
///
/// # Errors
/// The database fails.
pub async fn bulk_cancel_waiting(
    db: impl PgExecutor<'_>,
    filter: &BulkFilter,
    actor: &str,
    limit: i64,
) -> Result<Vec<TaskState>, sqlx::Error> {
    // A worker may have claimed and snoozed a row since this statement
    // began: its `started_at` is later than `now()`.
    let set = "status = 'cancelled', finished_at = greatest(now(), started_at)";
    let only = "status IN ('pending', 'retrying')";
    let returning = "id, owner_id, status, progress, attempts, updated_at";
    let mut qb = bulk_update(set, actor, filter, only, limit, returning);
    qb.build_query_as().fetch_all(db).await
}

/// Asks up to `limit` running tasks `filter` matches (not asked before) to
/// stop, as `actor`: their ids and lease tokens, for the stop messages.
///
/// # Errors
/// The database fails.
pub async fn bulk_request_cancel(
    db: impl PgExecutor<'_>,
    filter: &BulkFilter,
    actor: &str,
    limit: i64,
) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
    let set = "cancel_requested_at = now()";
    let only = "status = 'running' AND cancel_requested_at IS NULL";
    let returning = "id, coalesce(lease_owner, '')";
    let mut qb = bulk_update(set, actor, filter, only, limit, returning);
    qb.build_query_as().fetch_all(db).await
}

/// Retries up to `limit` `failed`, `cancelled` or `expired` tasks `filter`
/// matches, as [`retry`] does one, marked enqueued (the caller pushes them).
/// A unique task whose key an unfinished task holds is left as it is, and
/// of several finished twins only the newest comes back; one whose key a
/// create holds locked right now is left too (the create, committed, then
/// holds the key).
///
/// # Errors
/// The database fails.
pub async fn bulk_retry(
    db: impl PgExecutor<'_>,
    filter: &BulkFilter,
    actor: &str,
    limit: i64,
) -> Result<Vec<Task>, sqlx::Error> {
    let mut qb = QueryBuilder::new(concat!(
        "UPDATE tasks SET ",
        retry_columns!(),
        ", changed_by = "
    ));
    qb.push_bind(actor.to_owned());
    qb.push(" WHERE id IN (SELECT DISTINCT ON (coalesce(unique_key, id::text)) id FROM tasks t");
    filter.push_where(&mut qb);
    qb.push(
        " AND status IN ('failed', 'cancelled', 'expired') \
          AND (unique_key IS NULL OR (NOT EXISTS ( \
              SELECT 1 FROM tasks twin WHERE twin.unique_key = t.unique_key \
                AND twin.status IN ('pending', 'running', 'retrying')) \
              AND pg_try_advisory_xact_lock(hashtextextended(unique_key, 0)))) \
          ORDER BY coalesce(unique_key, id::text), created_at DESC LIMIT ",
    )
    .push_bind(limit)
    .push(") AND status IN ('failed', 'cancelled', 'expired') RETURNING ")
    .push(task_columns!());
    qb.build_query_as().fetch_all(db).await
}

/// The unfinished task sharing task `id`'s unique key, other than `id`.
///
/// # Errors
/// The database fails.
pub async fn live_twin(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT twin.id FROM tasks t JOIN tasks twin ON twin.unique_key = t.unique_key \
         WHERE t.id = $1 AND twin.id <> t.id \
           AND twin.status IN ('pending', 'running', 'retrying') LIMIT 1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Takes the lock that orders creates of `unique_key` until the
/// transaction ends, then finds the task they would collide with: an
/// unfinished one with that key, or (with `period`) one created within it.
/// Creates that hold the lock one after another see each other's commits,
/// so concurrent creates of one key make exactly one task.
///
/// # Errors
/// The database fails.
pub async fn find_unique(
    tx: &mut PgConnection,
    unique_key: &str,
    period: Option<Duration>,
) -> Result<Option<Task>, sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(unique_key)
        .execute(&mut *tx)
        .await?;
    sqlx::query_as(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE unique_key = $1 \
           AND (status IN ('pending', 'running', 'retrying') \
                OR created_at > now() - $2 * interval '1 millisecond') \
         ORDER BY created_at DESC LIMIT 1"
    ))
    .bind(unique_key)
    .bind(period.map_or(0, millis))
    .fetch_optional(&mut *tx)
    .await
}

/// How many more unfinished tasks `owner` may have under `cap`, for a
/// create (or retry) of `wanted`; negative when already past it. Locks,
/// until `tx` ends, the row that orders one owner's cap checks: creates
/// and retries of the same owner check and commit one at a time, so
/// together they cannot pass the cap (other owners are not held up, and
/// sign-ins and profile changes, on the user's own row, never wait).
///
/// The count is not made on every create. `open_task_bounds` keeps an
/// upper bound of each owner's unfinished tasks: every insert and every
/// reopening raises it (by trigger, in the writer's transaction), and
/// nothing lowers it but a count here. While the bound leaves room for
/// `wanted`, the true count does too; only when it does not are the
/// owner's unfinished tasks counted (up to `cap`) and the bound set to the
/// count. An owner far below the cap is counted about once per `cap`
/// tasks created, not on every create; the common case is one statement.
///
/// # Errors
/// The database fails.
pub async fn room_under_cap(
    tx: &mut PgConnection,
    owner: Uuid,
    cap: i64,
    wanted: i64,
) -> Result<i64, sqlx::Error> {
    // FOR UPDATE waits for whoever holds the row and then reads its latest
    // version: every raise committed before is in it, and an insert of
    // this owner still running raises it after this transaction.
    let lock = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT at_most FROM open_task_bounds WHERE owner_id = $1 FOR UPDATE",
        )
        .bind(owner)
    };
    let bound = match lock().fetch_optional(&mut *tx).await? {
        Some(bound) => bound,
        None => {
            // The owner's first task: the row to lock, made once.
            sqlx::query(
                "INSERT INTO open_task_bounds (owner_id, at_most) VALUES ($1, 0) \
                 ON CONFLICT (owner_id) DO NOTHING",
            )
            .bind(owner)
            .execute(&mut *tx)
            .await?;
            lock().fetch_one(&mut *tx).await?
        }
    };
    if bound.saturating_add(wanted) <= cap {
        return Ok(cap - bound);
    }
    let unfinished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM tasks \
             WHERE owner_id = $1 AND status IN ('pending', 'running', 'retrying') LIMIT $2) open",
    )
    .bind(owner)
    .bind(cap)
    .fetch_one(&mut *tx)
    .await?;
    // At least min(count, cap): a bound at the cap is counted again next
    // time, so one stored short of a count past the cap is still safe.
    sqlx::query("UPDATE open_task_bounds SET at_most = $2 WHERE owner_id = $1")
        .bind(owner)
        .bind(unfinished)
        .execute(&mut *tx)
        .await?;
    Ok(cap - unfinished)
}

/// The owner of task `id`.
///
/// # Errors
/// The database fails.
pub async fn owner_of(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT owner_id FROM tasks WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// Clears the enqueued mark of `ids` after a failed push, so the reconciler
/// knows they were never handed to Redis.
///
/// # Errors
/// The database fails.
pub async fn mark_not_enqueued(db: impl PgExecutor<'_>, ids: &[Uuid]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE tasks SET enqueued_at = NULL WHERE id = ANY($1)")
        .bind(ids)
        .execute(db)
        .await?;
    Ok(())
}

/// # Errors
/// The database fails.
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Task>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        task_columns!(),
        " FROM tasks WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// # Errors
/// The database fails.
pub async fn get_state(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<TaskState>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, owner_id, status, progress, attempts, updated_at FROM tasks WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The status changes of `id`, oldest first.
///
/// # Errors
/// The database fails.
pub async fn history(db: impl PgExecutor<'_>, id: Uuid) -> Result<Vec<TaskEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT from_status, to_status, actor, attempt, at FROM task_events \
         WHERE task_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

/// Which tasks a list shows.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// `None`: everybody's (admins).
    pub owner: Option<Uuid>,
    pub status: Option<TaskStatus>,
    pub kind: Option<String>,
}

/// A page of tasks matching `filter`, newest first, and how many match.
///
/// # Errors
/// The database fails.
pub async fn list(
    db: impl PgExecutor<'_> + Copy,
    filter: &TaskFilter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Task>, i64), sqlx::Error> {
    let where_clause = |qb: &mut QueryBuilder<Postgres>| {
        qb.push(" WHERE true");
        if let Some(owner) = filter.owner {
            qb.push(" AND owner_id = ").push_bind(owner);
        }
        if let Some(status) = filter.status {
            qb.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(kind) = filter.kind.clone() {
            qb.push(" AND kind = ").push_bind(kind);
        }
    };
    let mut count = QueryBuilder::new("SELECT count(*) FROM tasks");
    where_clause(&mut count);
    let total: i64 = count.build_query_scalar().fetch_one(db).await?;
    let mut page = QueryBuilder::new(concat!("SELECT ", task_columns!(), " FROM tasks"));
    where_clause(&mut page);
    // Ids are UUID v7: their order is creation order.
    page.push(" ORDER BY id DESC LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    let tasks = page.build_query_as::<Task>().fetch_all(db).await?;
    Ok((tasks, total))
}

/// `pending`/`retrying` → `cancelled`. `None` when the task is in any other
/// state (a worker claimed it first, or it is finished).
///
/// # Errors
/// The database fails.
pub async fn cancel(
    db: impl PgExecutor<'_>,
    id: Uuid,
    actor: &str,
) -> Result<Option<Task>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE tasks SET status = 'cancelled', finished_at = greatest(now(), started_at), \
             changed_by = $2 \
         WHERE id = $1 AND status IN ('pending', 'retrying') RETURNING ",
        task_columns!()
    ))
    .bind(id)
    .bind(actor)
    .fetch_optional(db)
    .await
}

/// Asks the attempt running `id` to stop: the request is recorded on the
/// row (the attempt's worker ends it `cancelled`, told over Redis or at its
/// next lease renewal). A row whose lease has already run out (its worker
/// died) is `cancelled` here and now, its lease cleared so that a worker
/// waking late writes nothing. `None` when the task is not running.
///
/// # Errors
/// The database fails.
pub async fn request_cancel(
    db: impl PgExecutor<'_>,
    id: Uuid,
    actor: &str,
) -> Result<Option<Task>, sqlx::Error> {
    // Every right-hand side reads the row as it was, and `now()` is fixed
    // for the statement: "orphaned" is one judgement for all of them.
    sqlx::query_as(concat!(
        "UPDATE tasks SET cancel_requested_at = coalesce(cancel_requested_at, now()), \
             changed_by = $2, \
             status = CASE WHEN lease_expires_at < now() THEN 'cancelled' ELSE status END, \
             error = CASE WHEN lease_expires_at < now() THEN 'cancelled while running' \
                          ELSE error END, \
             finished_at = CASE WHEN lease_expires_at < now() \
                                THEN greatest(now(), started_at) END, \
             lease_owner = CASE WHEN lease_expires_at < now() THEN NULL ELSE lease_owner END, \
             lease_expires_at = CASE WHEN lease_expires_at < now() THEN NULL \
                                     ELSE lease_expires_at END \
         WHERE id = $1 AND status = 'running' RETURNING ",
        task_columns!()
    ))
    .bind(id)
    .bind(actor)
    .fetch_optional(db)
    .await
}

/// `failed`/`cancelled` → `pending`, with a fresh set of attempts, due now.
/// The row is marked enqueued: the caller pushes it next.
///
/// Counts `keel_tasks_retried_total{kind}`, the counter the worker bumps
/// for a failed attempt with attempts left: both mean "this task runs
/// again", and a dashboard wants them together. Counted here, not at the
/// push, because a push cannot tell a user's retry from a reconciler's
/// re-push; the one caller passes the pool, so the row is committed.
///
/// # Errors
/// The database fails.
pub async fn retry(
    db: impl PgExecutor<'_>,
    id: Uuid,
    actor: &str,
) -> Result<Option<Task>, sqlx::Error> {
    let task: Option<Task> = sqlx::query_as(concat!(
        "UPDATE tasks SET ",
        retry_columns!(),
        ", changed_by = $2 \
         WHERE id = $1 AND status IN ('failed', 'cancelled', 'expired') RETURNING ",
        task_columns!()
    ))
    .bind(id)
    .bind(actor)
    .fetch_optional(db)
    .await?;
    if let Some(task) = &task {
        metrics::counter!("keel_tasks_retried_total", "kind" => task.kind.clone()).increment(1);
    }
    Ok(task)
}

/// A `pending` or `retrying` task waiting for a later time becomes due now
/// (ops' "run now"); the row is marked enqueued, and the caller pushes it.
/// `None` when the task is in another state or already due.
///
/// # Errors
/// The database fails.
pub async fn run_now(
    db: impl PgExecutor<'_>,
    id: Uuid,
    actor: &str,
) -> Result<Option<Task>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE tasks SET next_attempt_at = now(), \
             scheduled_at = CASE WHEN attempts = 0 THEN now() ELSE scheduled_at END, \
             enqueued_at = now(), changed_by = $2 \
         WHERE id = $1 AND status IN ('pending', 'retrying') AND next_attempt_at > now() \
         RETURNING ",
        task_columns!()
    ))
    .bind(id)
    .bind(actor)
    .fetch_optional(db)
    .await
}

/// Claims those of `ids` that may run now: `pending`/`retrying` and due by
/// the database clock (and, when `pending`, not past its `expires_at`), or
/// `running` under an expired lease with attempts left (the rest are for
/// [`end_unrunnable`]). Each claimed row
/// is `running`, leased to `worker` for `lease` under a fresh token (the
/// returned row's `lease_owner`), with its attempt counted.
/// Ids not returned were not claimable (see [`unclaimed_reasons`]).
///
/// # Errors
/// The database fails.
pub async fn claim(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    worker: &str,
    lease: Duration,
) -> Result<Vec<Task>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE tasks SET status = 'running', lease_owner = $2 || '/' || gen_random_uuid(), \
             lease_expires_at = now() + $3 * interval '1 millisecond', \
             attempts = attempts + 1, started_at = now(), finished_at = NULL, progress = 0, \
             worker_id = $2, changed_by = $2 \
         WHERE id = ANY($1) \
           AND CASE status \
                   WHEN 'pending' THEN next_attempt_at <= now() \
                                       AND (expires_at IS NULL OR expires_at > now() \
                                            OR started_at IS NOT NULL) \
                   WHEN 'retrying' THEN next_attempt_at <= now() \
                   WHEN 'running' THEN lease_expires_at < now() AND attempts < max_attempts \
                                       AND cancel_requested_at IS NULL \
                   ELSE false END \
         RETURNING ",
        task_columns!()
    ))
    .bind(ids)
    .bind(worker)
    .bind(millis(lease))
    .fetch_all(db)
    .await
}

/// Why a task was not claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unclaimed {
    /// Not due yet by the database clock: try again after this long.
    NotYetDue(Duration),
    /// Running under another worker's lease that ends after this long: if
    /// that worker died, the task is ours then; if it lives, it renews the
    /// lease before then and this job is a duplicate.
    Leased(Duration),
    /// Finished, cancelled, or gone: the job is a duplicate.
    Drop,
}

/// For ids [`claim`] did not return: which may be tried again, and when.
/// Only finished, cancelled or missing rows are `Drop`; an unfinished row
/// whose moment passed between the two statements is retried at once, never
/// dropped.
///
/// # Errors
/// The database fails.
pub async fn unclaimed_reasons(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, Unclaimed)>, sqlx::Error> {
    let rows: Vec<(Uuid, TaskStatus, i64, i64)> = sqlx::query_as(
        "SELECT id, status, \
             ceil(extract(epoch FROM next_attempt_at - now()) * 1000)::bigint, \
             coalesce(ceil(extract(epoch FROM lease_expires_at - now()) * 1000)::bigint, 0) \
         FROM tasks WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(db)
    .await?;
    let ms = |v: i64| Duration::from_millis(u64::try_from(v.max(1)).unwrap_or(1));
    Ok(ids
        .iter()
        .map(|id| {
            let reason = match rows.iter().find(|(row, ..)| row == id) {
                Some((_, TaskStatus::Pending | TaskStatus::Retrying, due, _)) => {
                    Unclaimed::NotYetDue(ms(*due))
                }
                Some((_, TaskStatus::Running, _, lease)) => Unclaimed::Leased(ms(*lease)),
                _ => Unclaimed::Drop,
            };
            (*id, reason)
        })
        .collect())
}

/// Ends those of `ids` that [`claim`] passed over and that will never run:
/// `failed` when their worker died during their last allowed attempt
/// (running, lease expired, attempts used up: a task that kills its worker
/// must not run forever; `cancelled` if someone had asked it to stop), and
/// `expired` when they are `pending` past their `expires_at`. Returns their
/// new state.
///
/// # Errors
/// The database fails.
pub async fn end_unrunnable(
    db: impl PgExecutor<'_>,
    ids: &[Uuid],
    actor: &str,
) -> Result<Vec<TaskState>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE tasks SET \
             status = CASE WHEN status = 'pending' THEN 'expired' \
                           WHEN cancel_requested_at IS NULL THEN 'failed' ELSE 'cancelled' END, \
             error = CASE WHEN status = 'pending' THEN 'expired before it started' \
                          WHEN cancel_requested_at IS NULL \
                 THEN 'the worker stopped during attempt ' || attempts || ' of ' || max_attempts \
                 ELSE 'cancelled while running' END, \
             finished_at = greatest(now(), started_at), lease_owner = NULL, \
             lease_expires_at = NULL, changed_by = $2 \
         WHERE id = ANY($1) \
           AND CASE status \
                   WHEN 'running' THEN lease_expires_at < now() AND attempts >= max_attempts \
                   WHEN 'pending' THEN expires_at <= now() AND started_at IS NULL \
                   ELSE false END \
         RETURNING id, owner_id, status, progress, attempts, updated_at",
    )
    .bind(ids)
    .bind(actor)
    .fetch_all(db)
    .await
}

/// Ends up to `limit` `pending` tasks past their `expires_at` as `expired`:
/// those no worker's claim reaches first (scheduled after their deadline,
/// in a paused queue, or with no worker running). Returns their new state.
///
/// # Errors
/// The database fails.
pub async fn expire_overdue(
    db: impl PgExecutor<'_>,
    limit: i64,
) -> Result<Vec<TaskState>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE tasks SET status = 'expired', error = 'expired before it started', \
             finished_at = now(), changed_by = 'reconciler' \
         WHERE id IN ( \
             SELECT id FROM tasks \
             WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= now() \
               AND started_at IS NULL \
             LIMIT $1 FOR UPDATE SKIP LOCKED) \
           AND status = 'pending' AND started_at IS NULL \
         RETURNING id, owner_id, status, progress, attempts, updated_at",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Renews the leases `(id, token)`; returns the ids still held (a task
/// missing from the answer was taken over or is no longer running), each
/// with whether someone asked it to stop.
///
/// # Errors
/// The database fails.
pub async fn renew_leases(
    db: impl PgExecutor<'_>,
    held: &[(Uuid, String)],
    lease: Duration,
) -> Result<Vec<(Uuid, bool)>, sqlx::Error> {
    // Rows are locked in id order, as every other batched write locks them,
    // so two of one worker's statements cannot deadlock.
    let mut held = held.to_vec();
    held.sort_unstable();
    let (ids, tokens): (Vec<Uuid>, Vec<String>) = held.into_iter().unzip();
    sqlx::query_as(
        "UPDATE tasks t SET lease_expires_at = now() + $3 * interval '1 millisecond' \
         FROM unnest($1::uuid[], $2::text[]) AS l(id, token) \
         WHERE t.id = l.id AND t.lease_owner = l.token \
         RETURNING t.id, t.cancel_requested_at IS NOT NULL",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(millis(lease))
    .fetch_all(db)
    .await
}

/// Records progress (0–100) of the attempt holding `token`.
///
/// # Errors
/// The database fails.
pub async fn set_progress(
    db: impl PgExecutor<'_>,
    id: Uuid,
    token: &str,
    progress: i16,
) -> Result<Option<TaskState>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE tasks SET progress = $3 \
         WHERE id = $1 AND lease_owner = $2 \
         RETURNING id, owner_id, status, progress, attempts, updated_at",
    )
    .bind(id)
    .bind(token)
    .bind(progress.clamp(0, 100))
    .fetch_optional(db)
    .await
}

/// How an attempt ended, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed(serde_json::Value),
    /// Failed; another attempt runs `delay` from now by the database clock.
    Retry {
        error: String,
        delay: Duration,
    },
    /// Failed for good.
    Failed(String),
    /// Not the task's fault (the worker is stopping): the attempt is given
    /// back uncounted and the task is due again at once.
    HandBack,
    /// Stopped because someone cancelled the task while it ran.
    Cancelled,
    /// The handler asked to run again after `delay`: like a hand-back, the
    /// attempt is not counted; the task's snoozes are.
    Snooze {
        delay: Duration,
    },
    /// This worker does not run the task's kind: it waits `delay` for one
    /// that does, no attempt counted, and, if it had never started before,
    /// it still has not (its deadline still holds).
    PutOff {
        delay: Duration,
    },
}

/// One attempt's end: the task, the attempt's lease token, the outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Finish {
    pub id: Uuid,
    pub token: String,
    pub outcome: Outcome,
}

/// Writes the outcomes of attempts, in one statement, as `worker`. Returns
/// the new state of each row whose lease the attempt still held; a row it
/// lost is left as it is and missing from the answer.
///
/// # Errors
/// The database fails.
pub async fn finish(
    db: impl PgExecutor<'_>,
    worker: &str,
    finishes: &[Finish],
) -> Result<Vec<TaskState>, sqlx::Error> {
    // In id order, like every batched write (no lock-order deadlocks).
    let mut sorted: Vec<&Finish> = finishes.iter().collect();
    sorted.sort_unstable_by_key(|f| f.id);
    let n = sorted.len();
    let (mut ids, mut tokens, mut statuses) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut results, mut errors, mut delays) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for finish in sorted {
        ids.push(finish.id);
        tokens.push(finish.token.as_str());
        let (status, result, error, delay) = match &finish.outcome {
            Outcome::Completed(result) => ("completed", Some(result), None, None),
            Outcome::Retry { error, delay } => {
                ("retrying", None, Some(error.as_str()), Some(millis(*delay)))
            }
            Outcome::Failed(error) => ("failed", None, Some(error.as_str()), None),
            Outcome::HandBack => ("handback", None, None, None),
            Outcome::Cancelled => ("cancelled", None, None, None),
            Outcome::Snooze { delay } => ("snooze", None, None, Some(millis(*delay))),
            Outcome::PutOff { delay } => ("putoff", None, None, Some(millis(*delay))),
        };
        statuses.push(status);
        results.push(result);
        errors.push(error);
        delays.push(delay);
    }
    sqlx::query_as(
        "UPDATE tasks t SET
             status = CASE WHEN (o.status = 'cancelled'
                                 OR (t.cancel_requested_at IS NOT NULL AND o.status <> 'completed'))
                           THEN 'cancelled'
                 WHEN o.status IN ('handback', 'snooze', 'putoff')
                     THEN CASE WHEN t.attempts <= 1 THEN 'pending' ELSE 'retrying' END
                 ELSE o.status END,
             started_at = CASE WHEN o.status = 'putoff' AND t.attempts <= 1 THEN NULL
                               ELSE t.started_at END,
             attempts = CASE WHEN o.status IN ('handback', 'snooze', 'putoff')
                                  AND t.cancel_requested_at IS NULL
                             THEN greatest(t.attempts - 1, 0) ELSE t.attempts END,
             snoozes = t.snoozes + CASE WHEN o.status = 'snooze' THEN 1 ELSE 0 END,
             result = CASE WHEN o.status = 'completed' THEN o.result ELSE t.result END,
             error = CASE WHEN o.status = 'completed' THEN NULL
                          WHEN o.status = 'cancelled' OR t.cancel_requested_at IS NOT NULL
                              THEN 'cancelled while running'
                          WHEN o.status IN ('handback', 'snooze', 'putoff') THEN t.error
                          ELSE o.error END,
             progress = CASE WHEN o.status = 'completed' THEN 100 ELSE t.progress END,
             next_attempt_at = CASE WHEN o.status = 'cancelled' OR t.cancel_requested_at IS NOT NULL
                                        THEN t.next_attempt_at
                                    WHEN o.status IN ('retrying', 'snooze', 'putoff')
                                        THEN now() + o.delay_ms * interval '1 millisecond'
                                    WHEN o.status = 'handback' THEN now()
                                    ELSE t.next_attempt_at END,
             finished_at = CASE WHEN o.status IN ('completed', 'failed', 'cancelled')
                                     OR t.cancel_requested_at IS NOT NULL
                                THEN greatest(now(), t.started_at) END,
             lease_owner = NULL,
             lease_expires_at = NULL,
             enqueued_at = CASE WHEN o.status IN ('retrying', 'handback', 'snooze', 'putoff')
                                     AND t.cancel_requested_at IS NULL
                                THEN now() ELSE t.enqueued_at END,
             changed_by = $1
         FROM unnest($2::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7::bigint[])
              AS o(id, token, status, result, error, delay_ms)
         WHERE t.id = o.id AND t.lease_owner = o.token
         RETURNING t.id, t.owner_id, t.status, t.progress, t.attempts, t.updated_at",
    )
    .bind(worker)
    .bind(&ids)
    .bind(&tokens)
    .bind(&statuses)
    .bind(&results)
    .bind(&errors)
    .bind(&delays)
    .fetch_all(db)
    .await
}

/// Waiting tasks (`pending`, `retrying`) by kind, for the queues view's
/// tasks no live worker can run.
///
/// # Errors
/// The database fails.
pub async fn waiting_by_kind(db: impl PgExecutor<'_>) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kind, count(*) FROM tasks WHERE status IN ('pending', 'retrying') GROUP BY kind",
    )
    .fetch_all(db)
    .await
}

/// Tasks by status, for stats and the queues view.
///
/// # Errors
/// The database fails.
pub async fn count_by_status(
    db: impl PgExecutor<'_>,
) -> Result<Vec<(TaskStatus, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, count(*) FROM tasks GROUP BY status ORDER BY status")
        .fetch_all(db)
        .await
}

/// The `tasks` queue's backlog, for the queues view and the gauges.
#[derive(Debug, Clone, Copy, PartialEq, FromRow)]
pub struct Backlog {
    /// Waiting and due (`pending` or `retrying`, `next_attempt_at` passed).
    pub due: i64,
    /// Waiting for a later time (`scheduled_at`, or a retry's backoff).
    pub scheduled: i64,
    pub running: i64,
    /// How long the longest-waiting due task has been due, by the database
    /// clock; 0 when none is.
    pub oldest_due_seconds: f64,
}

/// The backlog as the queues view and the gauges count it, and the
/// age of its oldest due task. Both scans walk partial indexes
/// (`tasks_due_idx`, `tasks_lease_idx`) holding only unfinished rows, so
/// the cost follows the backlog, never the table.
///
/// # Errors
/// The database fails.
pub async fn backlog(db: impl PgExecutor<'_>) -> Result<Backlog, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE next_attempt_at <= now()) AS due, \
                count(*) FILTER (WHERE next_attempt_at > now()) AS scheduled, \
                (SELECT count(*) FROM tasks WHERE status = 'running') AS running, \
                greatest(extract(epoch FROM now() - min(next_attempt_at)), 0)::float8 \
                    AS oldest_due_seconds \
         FROM tasks WHERE status IN ('pending', 'retrying')",
    )
    .fetch_one(db)
    .await
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Deletes up to `limit` tasks in `status` (a finished one) that finished
/// before `before`, with their history; returns how many. A schedule whose
/// last task goes keeps that task's status as its own `last_status`.
///
/// # Errors
/// The database fails.
pub async fn purge_finished(
    db: impl PgExecutor<'_>,
    status: TaskStatus,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let deleted: i64 = sqlx::query_scalar(
        "WITH doomed AS ( \
             SELECT id FROM tasks WHERE status = $1 AND finished_at < $2 LIMIT $3 \
         ), history AS ( \
             DELETE FROM task_events WHERE task_id IN (SELECT id FROM doomed) \
         ), remembered AS ( \
             UPDATE schedules SET last_status = $1 WHERE last_task_id IN (SELECT id FROM doomed) \
         ), gone AS ( \
             DELETE FROM tasks WHERE id IN (SELECT id FROM doomed) RETURNING 1 \
         ) \
         SELECT count(*) FROM gone",
    )
    .bind(status.as_str())
    .bind(before)
    .bind(limit)
    .fetch_one(db)
    .await?;
    Ok(u64::try_from(deleted).unwrap_or(0))
}

/// Waiting tasks to (re)push, marked enqueued now: those never handed to
/// Redis, and with `lost_before`, also those handed over before that time
/// (Redis lost them). At most `limit`, the most overdue first; rows another
/// reconciler is taking are skipped.
///
/// # Errors
/// The database fails.
pub async fn take_for_push(
    db: impl PgExecutor<'_>,
    lost_before: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<Task>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE tasks SET enqueued_at = now() WHERE id IN ( \
             SELECT id FROM tasks \
             WHERE status IN ('pending', 'retrying') \
               AND (enqueued_at IS NULL OR enqueued_at < $1) \
             ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING ",
        task_columns!()
    ))
    .bind(lost_before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Ends attempts whose lease ran out more than `grace` ago (their worker
/// died or stalled): `retrying` and marked enqueued (the caller pushes
/// them), `failed` when that was the last attempt, or `cancelled` when
/// someone asked it to stop. The stalled worker's later writes are fenced
/// off by the cleared lease.
///
/// A lost attempt is retried like a failed one, after a random 50–100 % of
/// `retry_base × 2^(attempt-1)` (at most `retry_max`): tasks that died
/// together with a task that kills its worker come back apart from it, so
/// it does not take the same neighbours down on every attempt.
///
/// # Errors
/// The database fails.
pub async fn expire_leases(
    db: impl PgExecutor<'_>,
    grace: Duration,
    (retry_base, retry_max): (Duration, Duration),
    limit: i64,
) -> Result<Vec<Task>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE tasks SET \
             status = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled' \
                           WHEN attempts >= max_attempts THEN 'failed' ELSE 'retrying' END, \
             error = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled while running' \
                          WHEN attempts >= max_attempts \
                          THEN 'the worker stopped during attempt ' || attempts || ' of ' || max_attempts \
                          ELSE 'the worker stopped during attempt ' || attempts END, \
             finished_at = CASE WHEN attempts >= max_attempts OR cancel_requested_at IS NOT NULL \
                                THEN greatest(now(), started_at) END, \
             next_attempt_at = CASE WHEN attempts >= max_attempts \
                                         OR cancel_requested_at IS NOT NULL THEN next_attempt_at \
                 ELSE now() + least($4, $3 * power(2, least(attempts - 1, 30))) \
                     * (0.5 + random() / 2) * interval '1 millisecond' END, \
             lease_owner = NULL, lease_expires_at = NULL, \
             enqueued_at = now(), changed_by = 'reconciler' \
         WHERE id IN ( \
             SELECT id FROM tasks \
             WHERE status = 'running' AND lease_expires_at < now() - $1 * interval '1 millisecond' \
             LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING ",
        task_columns!()
    ))
    .bind(millis(grace))
    .bind(limit)
    .bind(retry_base.as_secs_f64() * 1000.0)
    .bind(retry_max.as_secs_f64() * 1000.0)
    .fetch_all(db)
    .await
}

/// Waiting tasks that were due and handed to Redis more than `age` ago and
/// are still not claimed: if Redis holds fewer due jobs than this, some
/// jobs were lost.
///
/// # Errors
/// The database fails.
pub async fn count_overdue(db: impl PgExecutor<'_>, age: Duration) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM tasks WHERE status IN ('pending', 'retrying') \
           AND next_attempt_at < now() - $1 * interval '1 millisecond' \
           AND enqueued_at < now() - $1 * interval '1 millisecond'",
    )
    .bind(millis(age))
    .fetch_one(db)
    .await
}
