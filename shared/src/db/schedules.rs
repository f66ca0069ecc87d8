//! The `schedules` table and its fire ledger `schedule_runs`: what the API
//! edits, what the scheduler loads, and the claim that makes one tick fire
//! once across replicas — an insert into `schedule_runs`, which only one
//! transaction can win for a `(schedule, fire_at)`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use super::Purge;

/// A schedule as the API shows it.
#[derive(Debug, Clone, FromRow, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = Schedule::example))]
pub struct Schedule {
    pub id: Uuid,
    #[cfg_attr(feature = "openapi", schema(example = "nightly report"))]
    pub name: String,
    /// 5 fields (`minute hour day month weekday`) or 6 (a leading `second`).
    #[cfg_attr(feature = "openapi", schema(example = "30 2 * * *"))]
    pub cron: String,
    /// IANA timezone the cron fields are read in.
    #[cfg_attr(feature = "openapi", schema(example = "Europe/Berlin"))]
    pub timezone: String,
    #[cfg_attr(feature = "openapi", schema(example = "echo"))]
    pub kind: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: serde_json::Value,
    pub enabled: bool,
    /// The next fire; null when disabled.
    pub next_run_at: Option<DateTime<Utc>>,
    pub last_run_at: Option<DateTime<Utc>>,
    /// The status of the last fire's task (system schedules: of their maintenance job).
    #[cfg_attr(feature = "openapi", schema(example = "completed"))]
    pub last_status: Option<String>,
    /// Built in: listed, never edited.
    pub system: bool,
    #[serde(skip)]
    pub owner_id: Option<Uuid>,
    /// Ticks before this are never caught up.
    #[serde(skip)]
    pub fire_from: DateTime<Utc>,
    /// The latest tick claimed; claims only move it forward.
    #[serde(skip)]
    pub last_tick_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[cfg(feature = "openapi")]
impl Schedule {
    /// The schedule the API's documentation shows.
    pub fn example() -> serde_json::Value {
        serde_json::json!({
            "id": "01936f0e-6a1b-7d2c-9e3f-4a5b6c7d8e9f", "name": "nightly report", "cron": "30 2 * * *",
            "timezone": "Europe/Berlin", "kind": "echo", "payload": {"message": "hello"}, "enabled": true,
            "next_run_at": "2026-01-16T01:30:00Z", "last_run_at": "2026-01-15T01:30:00Z",
            "last_status": "completed", "system": false, "created_at": "2026-01-10T08:00:00Z",
            "updated_at": "2026-01-10T08:00:00Z"
        })
    }
}

/// The select every read uses: the last status is the last task's while it exists.
macro_rules! select_schedules {
    ($where:literal) => {
        concat!(
            "SELECT s.id, s.name, s.cron, s.timezone, s.kind, s.payload, s.enabled, \
                    s.next_run_at, s.last_run_at, COALESCE(t.status, s.last_status) AS last_status, \
                    s.system, s.owner_id, s.fire_from, s.last_tick_at, s.created_at, s.updated_at \
             FROM schedules s LEFT JOIN tasks t ON t.id = s.last_task_id ",
            $where
        )
    };
}

/// What a schedule fires, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub enabled: bool,
    /// Computed from the cron in its timezone; `None` when disabled.
    pub next_run_at: Option<DateTime<Utc>>,
}

/// # Errors
/// The database fails; `schedules_name_key` when the name is taken.
pub async fn insert(
    db: impl PgExecutor<'_>,
    owner: Uuid,
    spec: &ScheduleSpec,
) -> Result<Schedule, sqlx::Error> {
    sqlx::query_as(
        "WITH s AS ( \
             INSERT INTO schedules (id, name, cron, timezone, kind, payload, enabled, owner_id, next_run_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING * \
         ) \
         SELECT id, name, cron, timezone, kind, payload, enabled, next_run_at, last_run_at, \
                last_status, system, owner_id, fire_from, last_tick_at, created_at, updated_at \
         FROM s",
    )
    .bind(Uuid::now_v7())
    .bind(&spec.name)
    .bind(&spec.cron)
    .bind(&spec.timezone)
    .bind(&spec.kind)
    .bind(&spec.payload)
    .bind(spec.enabled)
    .bind(owner)
    .bind(spec.next_run_at)
    .fetch_one(db)
    .await
}

/// # Errors
/// The database fails.
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Schedule>, sqlx::Error> {
    sqlx::query_as(select_schedules!("WHERE s.id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The schedule `id`, locked until the transaction ends: an edit reads,
/// merges and writes under it, so concurrent edits and ticks queue up
/// instead of undoing each other.
///
/// # Errors
/// The database fails.
pub async fn get_locked(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<Schedule>, sqlx::Error> {
    sqlx::query_as(select_schedules!("WHERE s.id = $1 FOR UPDATE OF s"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// A page of schedules, system ones first, then by name; and the total.
///
/// # Errors
/// The database fails.
pub async fn list(
    db: impl PgExecutor<'_> + Copy,
    limit: i64,
    offset: i64,
) -> Result<(Vec<Schedule>, i64), sqlx::Error> {
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM schedules")
        .fetch_one(db)
        .await?;
    let page = sqlx::query_as(select_schedules!(
        "ORDER BY s.system DESC, s.name LIMIT $1 OFFSET $2"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await?;
    Ok((page, total))
}

/// Every enabled schedule: what a scheduler replica loads.
///
/// # Errors
/// The database fails.
pub async fn enabled(db: impl PgExecutor<'_>) -> Result<Vec<Schedule>, sqlx::Error> {
    sqlx::query_as(select_schedules!("WHERE s.enabled"))
        .fetch_all(db)
        .await
}

/// Replaces what a user schedule fires. When `rescheduled` (the cron,
/// timezone or enabled flag changed) ticks before now are no longer caught
/// up. `None` for an unknown or system schedule.
///
/// # Errors
/// The database fails; `schedules_name_key` when the name is taken.
pub async fn update(
    db: impl PgExecutor<'_>,
    id: Uuid,
    spec: &ScheduleSpec,
    rescheduled: bool,
) -> Result<Option<Schedule>, sqlx::Error> {
    sqlx::query_as(
        "WITH s AS ( \
             UPDATE schedules SET name = $2, cron = $3, timezone = $4, kind = $5, payload = $6, \
                 enabled = $7, next_run_at = $8, \
                 fire_from = CASE WHEN $9 THEN now() ELSE fire_from END \
             WHERE id = $1 AND NOT system RETURNING * \
         ) \
         SELECT s.id, s.name, s.cron, s.timezone, s.kind, s.payload, s.enabled, s.next_run_at, \
                s.last_run_at, COALESCE(t.status, s.last_status) AS last_status, s.system, \
                s.owner_id, s.fire_from, s.last_tick_at, s.created_at, s.updated_at \
         FROM s LEFT JOIN tasks t ON t.id = s.last_task_id",
    )
    .bind(id)
    .bind(&spec.name)
    .bind(&spec.cron)
    .bind(&spec.timezone)
    .bind(&spec.kind)
    .bind(&spec.payload)
    .bind(spec.enabled)
    .bind(spec.next_run_at)
    .bind(rescheduled)
    .fetch_optional(db)
    .await
}

/// Deletes a user schedule (its tasks stay); `false` for an unknown or system one.
///
/// # Errors
/// The database fails.
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM schedules WHERE id = $1 AND NOT system")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Claims the tick `fire_at` of `schedule` for `replica`; returns the
/// schedule as it is now (what the fire must create) when this replica won.
///
/// The claim moves `last_tick_at` forward and records the run in one
/// statement, under the schedule's row lock, so of any number of replicas
/// exactly one wins a tick. It only wins for a tick later than every tick
/// claimed before (a stalled replica or one whose clock lags cannot fire
/// an old tick again), not before `fire_from`, while the schedule is
/// enabled with the same cron and timezone (a replica that has not yet
/// heard of an edit cannot fire the old timetable), and while its owner's
/// account is active.
///
/// # Errors
/// The database fails.
pub async fn claim_tick(
    db: impl PgExecutor<'_>,
    schedule: &Schedule,
    fire_at: DateTime<Utc>,
    replica: &str,
) -> Result<Option<Schedule>, sqlx::Error> {
    sqlx::query_as(
        "WITH s AS ( \
             UPDATE schedules SET last_tick_at = $2 \
             WHERE id = $1 AND enabled AND cron = $4 AND timezone = $5 \
               AND $2 >= fire_from AND $2 > COALESCE(last_tick_at, '-infinity') \
               AND (system OR EXISTS (SELECT 1 FROM users u WHERE u.id = owner_id AND u.is_active)) \
             RETURNING * \
         ), run AS ( \
             INSERT INTO schedule_runs (schedule_id, fire_at, fired_by) \
             SELECT id, $2, $3 FROM s ON CONFLICT DO NOTHING RETURNING schedule_id \
         ) \
         SELECT s.id, s.name, s.cron, s.timezone, s.kind, s.payload, s.enabled, s.next_run_at, \
                s.last_run_at, s.last_status, s.system, s.owner_id, s.fire_from, s.last_tick_at, \
                s.created_at, s.updated_at \
         FROM s JOIN run ON run.schedule_id = s.id",
    )
    .bind(schedule.id)
    .bind(fire_at)
    .bind(replica)
    .bind(&schedule.cron)
    .bind(&schedule.timezone)
    .fetch_optional(db)
    .await
}

/// Records a claimed tick: its task, if it made one, the status to show,
/// and the next fire.
///
/// # Errors
/// The database fails.
pub async fn record_fire(
    db: impl PgExecutor<'_>,
    id: Uuid,
    fire_at: DateTime<Utc>,
    task_id: Option<Uuid>,
    status: &str,
    next_run_at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH run AS (UPDATE schedule_runs SET task_id = $3 WHERE schedule_id = $1 AND fire_at = $2) \
         UPDATE schedules SET last_run_at = GREATEST(last_run_at, $2), last_task_id = $3, \
             last_status = $4, next_run_at = $5 \
         WHERE id = $1",
    )
    .bind(id)
    .bind(fire_at)
    .bind(task_id)
    .bind(status)
    .bind(next_run_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Records a run-now: its task and status; the timetable is untouched.
///
/// # Errors
/// The database fails.
pub async fn record_run_now(
    db: impl PgExecutor<'_>,
    id: Uuid,
    task_id: Uuid,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE schedules SET last_run_at = now(), last_task_id = $2, last_status = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(task_id)
    .bind(status)
    .execute(db)
    .await?;
    Ok(())
}

/// Shows `at` as the schedule's next fire, unless it already does: a
/// scheduler that loads a schedule (a built-in one, or one whose fires
/// were missed) sets what it will do next.
///
/// # Errors
/// The database fails.
pub async fn show_next_run(
    db: impl PgExecutor<'_>,
    id: Uuid,
    at: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE schedules SET next_run_at = $2 WHERE id = $1 AND next_run_at IS DISTINCT FROM $2",
    )
    .bind(id)
    .bind(at)
    .execute(db)
    .await?;
    Ok(())
}

/// Sets the status a system schedule shows (its maintenance job finished).
///
/// # Errors
/// The database fails.
pub async fn set_last_status(
    db: impl PgExecutor<'_>,
    id: Uuid,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE schedules SET last_status = $2 WHERE id = $1")
        .bind(id)
        .bind(status)
        .execute(db)
        .await?;
    Ok(())
}

/// What a built-in schedule does: its row's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemKind {
    /// Repairs the transport: jobs Redis lost, rows left unpushed.
    Reconcile,
    /// Deletes expired refresh tokens, challenges and links.
    PurgeExpired,
    /// Deletes finished tasks past `TASK_RETENTION_DAYS`.
    PurgeFinished,
    /// Deletes stored files no row points at.
    SweepOrphans,
    /// Trims finished jobs from Redis.
    TrimRedis,
}

impl SystemKind {
    pub const ALL: [Self; 5] = [
        Self::Reconcile,
        Self::PurgeExpired,
        Self::PurgeFinished,
        Self::SweepOrphans,
        Self::TrimRedis,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reconcile => "reconcile",
            Self::PurgeExpired => "purge_expired",
            Self::PurgeFinished => "purge_finished",
            Self::SweepOrphans => "sweep_orphans",
            Self::TrimRedis => "trim_redis",
        }
    }

    /// The kind a system row names; `None` for one this build does not know
    /// (written by a newer replica during a rolling upgrade).
    pub fn parse(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

/// A built-in schedule as code defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemSchedule {
    pub name: &'static str,
    pub cron: String,
    pub kind: SystemKind,
}

/// Creates the built-in schedules, or brings their cron up to date; every
/// scheduler replica does this at start. User schedules are never touched:
/// the API keeps the `system.` names for these.
///
/// # Errors
/// The database fails.
pub async fn ensure_system(
    db: impl PgExecutor<'_>,
    system: &[SystemSchedule],
) -> Result<(), sqlx::Error> {
    let names: Vec<&str> = system.iter().map(|s| s.name).collect();
    let crons: Vec<&str> = system.iter().map(|s| s.cron.as_str()).collect();
    let kinds: Vec<&str> = system.iter().map(|s| s.kind.as_str()).collect();
    let ids: Vec<Uuid> = system.iter().map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO schedules (id, name, cron, timezone, kind, system) \
         SELECT id, name, cron, 'UTC', kind, true \
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[]) AS s(id, name, cron, kind) \
         ON CONFLICT (name) DO UPDATE SET cron = EXCLUDED.cron, kind = EXCLUDED.kind \
         WHERE schedules.system \
           AND (schedules.cron, schedules.kind) IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.kind)",
    )
    .bind(&ids)
    .bind(&names)
    .bind(&crons)
    .bind(&kinds)
    .execute(db)
    .await?;
    Ok(())
}

/// Fire records older than the cut-off: the ledger only has to outlast the
/// replicas' clock skew.
pub const OLD_RUNS: Purge = Purge::new("schedule_runs", "fired_at < $2");

impl Schedule {
    /// The task one fire of this schedule creates, due at `fire_at`.
    pub fn task(&self, fire_at: DateTime<Utc>, timeout_seconds: i32) -> super::tasks::NewTask {
        super::tasks::NewTask {
            name: self.name.clone(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            max_attempts: 3,
            timeout_seconds,
            priority: 0,
            scheduled_at: Some(fire_at),
            schedule_id: Some(self.id),
            expires_at: None,
            unique_key: None,
        }
    }
}
