//! The `maintenance` queue: the purges the built-in schedules ask for — of
//! expired rows (hourly) and of finished work past its retention (daily).
//! Every step deletes in slices, so no statement holds a large table for
//! long; each job is idempotent, and a lost one is simply done by the next
//! tick.

use std::{sync::Arc, time::Duration};

use apalis::prelude::BoxDynError;
use chrono::{DateTime, Utc};
use keel_shared::{
    Config,
    db::{
        email_deliveries, email_tokens, idempotency, refresh_tokens, schedules,
        tasks::{self, TaskStatus},
        two_factor,
    },
    jobs::{Maintenance, MaintenanceJob},
};
use sqlx::PgPool;

/// Rows one statement deletes.
const SLICE: i64 = 5000;
/// How long a fire record is kept: far longer than any clock skew between
/// scheduler replicas, short enough to stay small with per-second schedules.
const RUNS_KEPT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug)]
pub struct MaintenanceRunner {
    db: PgPool,
    retention: chrono::Duration,
}

impl MaintenanceRunner {
    pub fn new(config: &Config, db: PgPool) -> Self {
        Self {
            db,
            retention: chrono::Duration::days(i64::from(config.task_retention_days)),
        }
    }

    /// Maintenance jobs hold no lease; apalis's orphan detection runs near this.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(60)
    }

    /// Does `work`; returns how many rows it deleted.
    ///
    /// # Errors
    /// Postgres failed; the next tick tries again.
    pub async fn run(&self, work: Maintenance) -> anyhow::Result<u64> {
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.db)
            .await?;
        let db = &self.db;
        let mut deleted = 0;
        match work {
            Maintenance::PurgeExpired => {
                let runs_before = now - chrono::Duration::from_std(RUNS_KEPT)?;
                deleted += drain(|| refresh_tokens::purge_expired(db, now, SLICE)).await?;
                deleted += drain(|| two_factor::purge_expired(db, now, SLICE)).await?;
                deleted += drain(|| email_tokens::purge_expired(db, now, SLICE)).await?;
                deleted += drain(|| idempotency::purge_expired(db, now, SLICE)).await?;
                deleted += drain(|| schedules::purge_runs(db, runs_before, SLICE)).await?;
            }
            Maintenance::PurgeFinished => {
                let before = now - self.retention;
                for status in [
                    TaskStatus::Completed,
                    TaskStatus::Failed,
                    TaskStatus::Cancelled,
                ] {
                    deleted += drain(|| tasks::purge_finished(db, status, before, SLICE)).await?;
                }
                deleted += drain(|| email_deliveries::purge_finished(db, before, SLICE)).await?;
            }
        }
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
