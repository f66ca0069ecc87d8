//! The `maintenance` queue: the purges the built-in schedules ask for — of
//! expired rows (hourly) and of finished work past its retention (daily) —
//! and the hourly sweep of stored objects no file row points at.
//! Every step deletes in slices, so no statement holds a large table for
//! long; each job is idempotent, and a lost one is simply done by the next
//! tick.

use std::{sync::Arc, time::Duration};

use apalis::prelude::BoxDynError;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt as _;
use keel_shared::{
    Config,
    db::{
        email_deliveries, email_tokens, files, idempotency, refresh_tokens, schedules,
        tasks::{self, TaskStatus},
        two_factor,
    },
    queue::{Maintenance, MaintenanceJob},
    storage::Storage,
};
use sqlx::PgPool;

/// Rows one statement deletes.
const SLICE: i64 = 5000;
/// How long a fire record is kept: far longer than any clock skew between
/// scheduler replicas, short enough to stay small with per-second schedules.
const RUNS_KEPT: Duration = Duration::from_secs(24 * 3600);
/// How old an object without a row must be before it is swept. An upload
/// writes its objects before their rows, and the first file of a request
/// waits for the last one: a request may take up to an hour
/// (`REQUEST_TIMEOUT_SECONDS` is at most 3600), so twice that leaves a
/// margin no upload still in flight reaches.
pub const ORPHAN_AGE: Duration = Duration::from_secs(2 * 3600);
/// Keys one query checks for rows.
const KEYS_PER_QUERY: usize = 500;
/// Objects one sweep deletes at most; a larger backlog waits for the next
/// hour, so one run never holds the queue for long.
const SWEEP_LIMIT: u64 = 10_000;

#[derive(Debug)]
pub struct MaintenanceRunner {
    db: PgPool,
    storage: Storage,
    retention: chrono::Duration,
}

impl MaintenanceRunner {
    pub fn new(config: &Config, db: PgPool, storage: Storage) -> Self {
        Self {
            db,
            storage,
            retention: chrono::Duration::days(i64::from(config.tasks.retention_days)),
        }
    }

    /// Maintenance jobs hold no lease; apalis's orphan detection runs near this.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(60)
    }

    /// Does `work`; returns how many rows (or objects) it deleted.
    ///
    /// # Errors
    /// Postgres or the file store failed; the next tick tries again.
    pub async fn run(&self, work: Maintenance) -> anyhow::Result<u64> {
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.db)
            .await?;
        let db = &self.db;
        let mut deleted = 0;
        match work {
            Maintenance::PurgeExpired => {
                let runs_before = now - chrono::Duration::from_std(RUNS_KEPT)?;
                for expired in [
                    refresh_tokens::EXPIRED,
                    two_factor::EXPIRED,
                    email_tokens::EXPIRED,
                ] {
                    deleted += drain(|| expired.delete_some(db, now, SLICE)).await?;
                }
                deleted += drain(|| idempotency::purge_expired(db, now, SLICE)).await?;
                deleted +=
                    drain(|| schedules::OLD_RUNS.delete_some(db, runs_before, SLICE)).await?;
            }
            Maintenance::PurgeFinished => {
                let before = now - self.retention;
                for status in [
                    TaskStatus::Completed,
                    TaskStatus::Failed,
                    TaskStatus::Cancelled,
                    TaskStatus::Expired,
                ] {
                    deleted += drain(|| tasks::purge_finished(db, status, before, SLICE)).await?;
                }
                deleted +=
                    drain(|| email_deliveries::FINISHED.delete_some(db, before, SLICE)).await?;
            }
            Maintenance::SweepOrphans => {
                // The store's clock, not Postgres's, dates objects; the
                // hour's margin dwarfs any skew between them.
                deleted += self
                    .sweep_orphans(Utc::now() - chrono::Duration::from_std(ORPHAN_AGE)?)
                    .await?;
            }
        }
        Ok(deleted)
    }

    /// Deletes the objects under `files/` last written before `before` that
    /// no file row points at, up to a bound per run; returns how many.
    ///
    /// # Errors
    /// Postgres or the file store failed.
    pub async fn sweep_orphans(&self, before: DateTime<Utc>) -> anyhow::Result<u64> {
        // A batch at a time as the store lists them: a bucket of millions
        // of files never sits in memory whole.
        let mut batches = self
            .storage
            .keys_older_than(files::OBJECT_PREFIX, before)
            .try_chunks(KEYS_PER_QUERY);
        let (mut checked, mut deleted) = (0, 0);
        'keys: while let Some(batch) = batches.try_next().await.map_err(|e| e.1)? {
            checked += batch.len();
            for key in files::unreferenced(&self.db, &batch).await? {
                self.storage.delete(&key).await?;
                deleted += 1;
                if deleted == SWEEP_LIMIT {
                    break 'keys;
                }
            }
        }
        tracing::info!(
            checked,
            deleted,
            location = self.storage.location(),
            "orphaned objects swept"
        );
        Ok(deleted)
    }
}

/// Repeats a sliced delete until a slice comes back short.
async fn drain<F, Fut>(mut slice: F) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, sqlx::Error>>,
{
    let mut total = 0;
    loop {
        let n = slice().await?;
        total += n;
        if n < SLICE.unsigned_abs() {
            return Ok(total);
        }
    }
}

impl crate::supervisor::Handler<MaintenanceJob> for MaintenanceRunner {
    async fn handle(self: Arc<Self>, job: MaintenanceJob) -> Result<(), BoxDynError> {
        let outcome = self.run(job.work).await;
        let status = match &outcome {
            Ok(deleted) => {
                tracing::info!(work = ?job.work, deleted, "maintenance done");
                "completed"
            }
            Err(e) => {
                tracing::warn!(work = ?job.work, error = %e, "maintenance failed; the next tick tries again");
                "failed"
            }
        };
        if let Some(schedule) = job.schedule_id
            && let Err(e) = schedules::set_last_status(&self.db, schedule, status).await
        {
            tracing::warn!(error = %e, "could not record how maintenance went");
        }
        Ok(())
    }
}
