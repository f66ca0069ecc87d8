//! The reconciler: Postgres is the truth, Redis the transport, and this pass
//! (the built-in `system.reconcile` schedule, every `RECONCILE_SECONDS`, on
//! one scheduler replica at a time) makes Redis match the truth again:
//!
//! - tasks and email deliveries never handed to Redis (a push failed, or
//!   the process died between commit and push) are pushed;
//! - if Redis lost its data (restarted without persistence, `FLUSHDB`) —
//!   seen by a sentinel key that vanished — everything waiting is pushed
//!   again; if it lost some jobs (a process died between commit and push,
//!   after marking the row enqueued) — seen as fewer due jobs in Redis than
//!   overdue rows in Postgres — the overdue rows are pushed again;
//! - running tasks whose lease ran out (their worker died or stalled) go
//!   back to `retrying` and are pushed, or `failed` at `max_attempts`
//!   (`cancelled` if someone had asked them to stop);
//! - `pending` tasks past their `expires_at` that no worker reached end
//!   `expired`;
//! - 2FA challenges whose code was never made get their job again.
//!
//! A push is at least once: the workers' claims drop duplicates. "Due" and
//! "expired" are judged by the database clock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_shared::{
    RedisClient,
    db::{
        email_deliveries,
        tasks::{self, TaskState},
        two_factor,
    },
    queue::{EmailJob, JobQueue, dispatch},
    task_events,
};
use sqlx::PgPool;

/// Rows one statement takes, so a large backlog is pushed in pieces.
const BATCH: i64 = 1000;
/// How long the live updates of a pass may take.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
/// A lease must be this far past its end before the reconciler ends it: a
/// live worker's renewal may be a moment late. Half the reconcile period
/// when that is shorter, so no lease stays expired longer than two periods.
const LEASE_GRACE: Duration = Duration::from_secs(2);
/// Rows due and handed over this long ago but unclaimed are overdue.
const OVERDUE_AFTER: Duration = Duration::from_secs(10);
/// A challenge without a code this long after it opened lost its job.
const CODELESS_AFTER: Duration = Duration::from_secs(5);
/// The advisory lock that makes one replica reconcile at a time.
const LOCK_KEY: i64 = 0x6b65_656c_7265_636f; // "keelreco"

/// The configuration a pass follows.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How far past its end a lease is ended.
    pub lease_grace: Duration,
    /// The retry backoff of an attempt lost with its worker: the workers'
    /// (`TASK_RETRY_BASE_MS`, `TASK_RETRY_MAX_SECONDS`).
    pub retry: (Duration, Duration),
}

impl Settings {
    pub fn from_config(config: &keel_shared::Config) -> Self {
        Self {
            lease_grace: LEASE_GRACE.min(Duration::from_secs(config.tasks.reconcile_seconds) / 2),
            retry: (
                Duration::from_millis(config.tasks.retry_base_ms),
                Duration::from_secs(config.tasks.retry_max_seconds),
            ),
        }
    }
}

/// What one pass repaired.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Repairs {
    pub tasks_pushed: u64,
    pub leases_expired: u64,
    pub tasks_expired: u64,
    pub emails_pushed: u64,
    pub codes_pushed: u64,
    /// Redis had lost its data.
    pub redis_lost: bool,
}

/// One pass, unless another replica holds the lock (`None`).
///
/// # Errors
/// Postgres or Redis failed; the next pass starts over.
pub async fn pass(
    db: &PgPool,
    redis: &RedisClient,
    jobs: &JobQueue,
    settings: Settings,
) -> anyhow::Result<Option<Repairs>> {
    let mut lock = db.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *lock)
        .await?;
    if !locked {
        return Ok(None);
    }
    let result = repair(db, redis, jobs, settings).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *lock)
        .await?;
    result.map(Some)
}

async fn repair(
    db: &PgPool,
    redis: &RedisClient,
    jobs: &JobQueue,
    settings: Settings,
) -> anyhow::Result<Repairs> {
    let mut repairs = Repairs::default();
    // Before the leases: the rows they hand back are marked enqueued after
    // it, so a full push below does not take them twice.
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(db).await?;
    // Leases first, in PostgreSQL alone: a dead worker's tasks leave
    // `running` even while Redis is down. Their push comes after; if it
    // fails, they wait as every unpushed row does (the sentinel or the
    // overdue count below finds them on a later pass).
    let mut retrying = Vec::new();
    // What changed here, for live views (a cancel answered 202 ends here).
    let mut changed: Vec<TaskState> = Vec::new();
    loop {
        let rows = tasks::expire_leases(db, settings.lease_grace, settings.retry, BATCH).await?;
        if rows.is_empty() {
            break;
        }
        repairs.leases_expired += rows.len() as u64;
        changed.extend(rows.iter().map(TaskState::from));
        retrying.extend(rows.into_iter().filter(|t| !t.status.is_finished()));
    }
    // Past their deadline before any worker claimed them: also PostgreSQL alone.
    loop {
        let ended = tasks::expire_overdue(db, BATCH).await?;
        if ended.is_empty() {
            break;
        }
        repairs.tasks_expired += ended.len() as u64;
        metrics::counter!("keel_tasks_expired_total").increment(ended.len() as u64);
        changed.extend(ended);
    }
    // Best effort, and brief: Redis may be the thing that is down.
    let _ = tokio::time::timeout(PUBLISH_TIMEOUT, task_events::publish(redis, &changed)).await;
    // Everything handed to Redis before now is gone if the sentinel is.
    let mut lost_before = sentinel_missing(redis).await?.then_some(now);
    repairs.redis_lost = lost_before.is_some();
    if repairs.redis_lost {
        tracing::warn!("Redis lost its data; queueing every waiting job again");
    } else {
        let overdue = tasks::count_overdue(db, OVERDUE_AFTER).await?;
        let due = jobs.due_depth(keel_shared::queue::Queue::Tasks).await?;
        if u64::try_from(overdue).unwrap_or(0) > due {
            tracing::warn!(
                overdue,
                due,
                "Redis holds fewer due tasks than are overdue; queueing the overdue again"
            );
            lost_before = Some(now - chrono::Duration::from_std(OVERDUE_AFTER).unwrap_or_default());
        }
    }

    loop {
        let rows = tasks::take_for_push(db, lost_before, BATCH).await?;
        if rows.is_empty() {
            break;
        }
        repairs.tasks_pushed += rows.len() as u64;
        dispatch::push_tasks(db, jobs, &rows).await?;
    }
    for chunk in retrying.chunks(usize::try_from(BATCH).unwrap_or(1000)) {
        dispatch::push_tasks(db, jobs, chunk).await?;
    }
    loop {
        let rows = email_deliveries::take_for_push(db, lost_before, BATCH).await?;
        if rows.is_empty() {
            break;
        }
        repairs.emails_pushed += rows.len() as u64;
        let batch = rows
            .into_iter()
            .map(|(id, at)| (EmailJob::Send { delivery_id: id }, Some(at)))
            .collect();
        jobs.push_many(batch).await?;
    }
    let codeless = two_factor::codeless(db, CODELESS_AFTER).await?;
    if !codeless.is_empty() {
        repairs.codes_pushed = codeless.len() as u64;
        let batch = codeless
            .into_iter()
            .map(|id| (EmailJob::TwoFactorCode { challenge_id: id }, None))
            .collect();
        jobs.push_many(batch).await?;
    }
    for (what, n) in [
        ("task_pushed", repairs.tasks_pushed),
        ("lease_expired", repairs.leases_expired),
        ("task_expired", repairs.tasks_expired),
        ("email_pushed", repairs.emails_pushed),
        ("code_pushed", repairs.codes_pushed),
    ] {
        metrics::counter!("keel_reconciler_repairs_total", "what" => what).increment(n);
    }
    if repairs.redis_lost {
        metrics::counter!("keel_reconciler_redis_losses_total").increment(1);
    }
    Ok(repairs)
}

/// Sets the sentinel if it is missing; `true` when it was (Redis started
/// empty or was flushed — or this is the deployment's first pass, when a
/// full push is merely redundant).
async fn sentinel_missing(redis: &RedisClient) -> redis::RedisResult<bool> {
    let set: Option<String> = redis::cmd("SET")
        .arg(redis.key("sentinel"))
        .arg(Utc::now().to_rfc3339())
        .arg("NX")
        .query_async(&mut redis.conn())
        .await?;
    Ok(set.is_some())
}
