//! Handing committed task rows to the queue: the second half of every
//! create, retry and scheduled fire. The row is committed first; this
//! pushes one `RunTask` per row in a single round trip, timed for each
//! row's next attempt. If Redis refuses, the rows' enqueued mark is cleared
//! and the reconciler pushes them later: creating work never fails because
//! Redis is down.
//!
//! Every creator — the API's single and batch creates and its Celery alias,
//! a schedule's run-now, the scheduler's fires — ends here after its
//! commit, so this is where `keel_tasks_created_total{kind}` is counted.

use sqlx::PgPool;

use crate::{
    db::tasks::{self, Task},
    queue::{JobQueue, PushError, RunTask},
};

/// Pushes jobs for `rows` (already committed), counting them created.
///
/// # Errors
/// The push failed; the rows are marked not enqueued (best effort) and
/// stay safe in Postgres.
pub async fn push_tasks(db: &PgPool, jobs: &JobQueue, rows: &[Task]) -> Result<(), PushError> {
    // Before the first await: a caller dropped mid-push has still created them.
    count_created(rows);
    push_counted(db, jobs, rows).await
}

/// [`push_tasks`] for rows already passed to [`count_created`].
///
/// # Errors
/// As [`push_tasks`].
pub async fn push_counted(db: &PgPool, jobs: &JobQueue, rows: &[Task]) -> Result<(), PushError> {
    if rows.is_empty() {
        return Ok(());
    }
    let batch = rows
        .iter()
        .map(|t| {
            let at = Some(t.next_attempt_at);
            (
                RunTask {
                    task_id: t.id,
                    run_at: at,
                },
                at,
            )
        })
        .collect();
    let pushed = jobs.push_many(batch).await;
    if let Err(e) = &pushed {
        tracing::warn!(error = %e, count = rows.len(), "tasks not queued; the reconciler will queue them");
        let ids: Vec<_> = rows.iter().map(|t| t.id).collect();
        if let Err(e) = tasks::mark_not_enqueued(db, &ids).await {
            tracing::warn!(error = %e, "could not clear the enqueued mark");
        }
    }
    pushed
}

/// Counts the rows of `rows` that come straight from their insert. The
/// insert marks a row enqueued with the clock of the transaction that
/// creates it, so `enqueued_at == created_at` holds until the row is marked
/// again — by a user's retry or a reconciler's re-push, each in a later
/// transaction — and those are not creations.
pub fn count_created(rows: &[Task]) {
    for row in rows.iter().filter(|t| t.enqueued_at == Some(t.created_at)) {
        metrics::counter!("keel_tasks_created_total", "kind" => row.kind.clone()).increment(1);
    }
}
