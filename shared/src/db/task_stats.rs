//! Task figures for the ops dashboard: how many finished per minute over
//! the last hour, read through `tasks_finished_at_idx` (made for the purge).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgExecutor};

/// Tasks that finished in one minute.
#[derive(Debug, Clone, Copy, FromRow, Serialize, PartialEq, Eq)]
pub struct Minute {
    pub minute: DateTime<Utc>,
    pub completed: i64,
    pub failed: i64,
}

/// Completed and failed tasks per minute over the last `minutes` minutes,
/// oldest first, with a row for every minute (zeros included); the last
/// row is the current, unfinished minute.
///
/// # Errors
/// The database fails.
pub async fn throughput(db: impl PgExecutor<'_>, minutes: i32) -> Result<Vec<Minute>, sqlx::Error> {
    sqlx::query_as(
        "WITH span AS ( \
             SELECT generate_series(date_trunc('minute', now()) - make_interval(mins => $1 - 1), \
                                    date_trunc('minute', now()), interval '1 minute') AS minute \
         ), done AS ( \
             SELECT date_trunc('minute', finished_at) AS minute, \
                    count(*) FILTER (WHERE status = 'completed') AS completed, \
                    count(*) FILTER (WHERE status = 'failed') AS failed \
             FROM tasks \
             WHERE status IN ('completed', 'failed') \
               AND finished_at >= date_trunc('minute', now()) - make_interval(mins => $1 - 1) \
             GROUP BY 1 \
         ) \
         SELECT span.minute, COALESCE(done.completed, 0) AS completed, \
                COALESCE(done.failed, 0) AS failed \
         FROM span LEFT JOIN done USING (minute) ORDER BY span.minute",
    )
    .bind(minutes)
    .fetch_all(db)
    .await
}
