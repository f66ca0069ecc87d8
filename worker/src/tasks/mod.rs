//! The `tasks` queue: one attempt of a user task per `RunTask` job. A job
//! is only a hint that a row may be runnable; the row decides. The attempt
//! is claimed with a lease (zero rows: a duplicate, dropped), runs under its
//! timeout while the lease is renewed and progress is written, and ends
//! with one fenced write — completed, retrying with backoff, or failed.

mod batch;
mod leases;
mod retry;

use std::{sync::Arc, time::Duration};

use apalis::prelude::BoxDynError;
use chrono::{DateTime, Utc};
use keel_shared::{
    Config, RedisClient,
    db::tasks::{self, Finish, Outcome, Task, Unclaimed},
    kinds::{self, TaskContext, TaskFailure, TaskServices},
    queue::{JobQueue, RunTask},
    storage::Storage,
    task_events,
};
use sqlx::PgPool;
use tokio::sync::{Semaphore, watch};
use tokio_util::{
    sync::CancellationToken,
    task::{AbortOnDropHandle, TaskTracker},
};

use crate::{stats::Stats, supervisor, wake::WakeSignal};
use batch::{BatchError, Claim, Claims, Finishes};
use leases::Leases;
pub use retry::RetryPolicy;

/// How long a task of a kind this worker does not run waits, at least and
/// at most, before a worker tries it again.
const UNKNOWN_KIND_WAIT: Duration = Duration::from_secs(5);
const UNKNOWN_KIND_LONGEST_WAIT: Duration = Duration::from_secs(300);
/// How often a running task's progress is written at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Margin past a foreign lease's end before trying to take it over.
const TAKEOVER_MARGIN: Duration = Duration::from_millis(50);
/// A job not due for longer than this goes back to Redis for its time
/// instead of holding a concurrency slot while it waits.
const LONGEST_HOLD: Duration = Duration::from_secs(2);
/// A job released early by at most this waits in its apalis slot; one due
/// later waits in memory (with a safety copy in Redis), leaving the slot
/// free for due work.
const SLOT_WAIT: Duration = Duration::from_millis(10);

/// Everything an attempt needs, shared by the queue's handlers.
#[derive(Debug)]
pub struct TaskRunner {
    db: PgPool,
    redis: RedisClient,
    jobs: JobQueue,
    lease: Duration,
    retry: RetryPolicy,
    /// Lent to every attempt: kind settings, the HTTP client, the pool, storage.
    services: TaskServices,
    claims: Claims,
    finishes: Finishes,
    leases: Leases,
    /// Attempts run as their own tokio tasks, so an apalis worker that dies
    /// (and drops its handlers) cannot cut an attempt off mid-way; jobs
    /// waiting in memory for their time are tracked here too.
    attempts: TaskTracker,
    /// `WORKER_CONCURRENCY`: attempts running at once, whether they came
    /// straight from apalis or from a job that waited in memory.
    run_slots: Arc<Semaphore>,
    stats: Arc<Stats>,
    /// Stop taking work: jobs not yet started are handed back at once.
    stopping: CancellationToken,
    /// The grace period is over: running attempts are handed back too.
    grace_over: CancellationToken,
}

/// Why an attempt ended without an outcome of its own.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the database failed: {0}")]
    Database(#[from] BatchError),
}

impl TaskRunner {
    /// Starts the claim, finish and lease loops of worker `worker`; the
    /// lease loop runs until `finished` (after the drain).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        config: &Config,
        db: PgPool,
        redis: RedisClient,
        storage: Storage,
        worker: &str,
        stats: Arc<Stats>,
        stopping: CancellationToken,
        grace_over: CancellationToken,
        finished: CancellationToken,
    ) -> Self {
        let lease = Duration::from_secs(config.tasks.lease_seconds);
        Self {
            jobs: JobQueue::new(redis.clone()),
            claims: Claims::start(db.clone(), redis.clone(), worker.to_owned(), lease),
            finishes: Finishes::start(db.clone(), redis.clone(), worker.to_owned()),
            leases: Leases::start(db.clone(), lease, finished),
            attempts: TaskTracker::new(),
            run_slots: Arc::new(Semaphore::new(config.worker_concurrency())),
            retry: RetryPolicy {
                base: Duration::from_millis(config.tasks.retry_base_ms),
                max: Duration::from_secs(config.tasks.retry_max_seconds),
            },
            services: TaskServices::new(config, db.clone(), storage),
            db,
            redis,
            lease,
            stats,
            stopping,
            grace_over,
        }
    }

    /// Handles one `RunTask` job.
    ///
    /// # Errors
    /// The database failed before the claim; apalis then schedules the job
    /// again, and the row — still unclaimed — is safe either way.
    pub async fn run(self: &Arc<Self>, job: RunTask) -> Result<(), RunError> {
        // Redis hands jobs out up to two seconds early (it counts whole seconds).
        if let Some(at) = job.run_at {
            let wait = until(at);
            if wait > SLOT_WAIT && self.hold_in_memory(job, at).await {
                return Ok(());
            }
            if !self.wait(wait).await {
                self.hand_back_job(job).await;
                return Ok(());
            }
        }
        self.claim_and_run(job).await
    }

    /// Waits for `job`'s time outside apalis, so its slot takes due work
    /// meanwhile. A safety copy released a lease after `at` covers this
    /// process dying first (the copy finds the task done and drops itself
    /// otherwise). `false` if the copy could not be pushed: then the caller
    /// waits in its slot instead.
    async fn hold_in_memory(self: &Arc<Self>, job: RunTask, at: DateTime<Utc>) -> bool {
        let copy_at = at + chrono::Duration::from_std(self.lease).unwrap_or_default();
        if self.jobs.push_release_at(job, copy_at).await.is_err() {
            return false;
        }
        let runner = self.clone();
        self.attempts.spawn(async move {
            if !runner.wait(until(at)).await {
                runner.hand_back_job(job).await;
                return;
            }
            if let Err(e) = runner.claim_and_run(job).await {
                tracing::warn!(error = %e, task_id = %job.task_id, "claim failed; the safety copy will retry");
            }
        });
        true
    }

    /// Claims the task of `job` (once it is due by the database clock) and
    /// runs the attempt in a free run slot.
    async fn claim_and_run(self: &Arc<Self>, job: RunTask) -> Result<(), RunError> {
        let Ok(_slot) = self.run_slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let mut waited_out_lease = false;
        let task = loop {
            match self.claims.claim(job.task_id).await? {
                Claim::Claimed(task) => break task,
                Claim::Unclaimed(Unclaimed::Drop) => return Ok(()),
                Claim::Unclaimed(Unclaimed::NotYetDue(wait)) if wait > LONGEST_HOLD => {
                    // A stale job (say, an orphan of a task that is now retrying later):
                    // its own push comes due then; this copy waits in Redis, not in a slot.
                    let later = RunTask {
                        task_id: job.task_id,
                        run_at: Some(Utc::now() + wait),
                    };
                    self.hand_back_job(later).await;
                    return Ok(());
                }
                Claim::Unclaimed(Unclaimed::NotYetDue(wait)) => {
                    // The database clock says not yet (this machine's runs ahead).
                    if !self.wait(wait).await {
                        self.hand_back_job(job).await;
                        return Ok(());
                    }
                }
                Claim::Unclaimed(Unclaimed::Leased(wait)) => {
                    // Another attempt holds it. If its worker died (this job came back
                    // as its orphan) the lease runs out and the task is ours; if it
                    // lives, it renews before then and this job is a duplicate.
                    if waited_out_lease {
                        return Ok(());
                    }
                    waited_out_lease = true;
                    if !self.wait(wait + TAKEOVER_MARGIN).await {
                        self.hand_back_job(job).await;
                        return Ok(());
                    }
                }
            }
        };
        let runner = self.clone();
        // Awaited here so apalis acknowledges the job only after the attempt,
        // but not owned here: dropping this future does not stop the attempt.
        let _ = self
            .attempts
            .spawn(async move { runner.attempt(*task).await })
            .await;
        Ok(())
    }

    /// Stops the attempt of `id` under lease `token` if this worker runs it
    /// (someone cancelled the task); `false` if it does not.
    pub fn stop_attempt(&self, id: uuid::Uuid, token: &str) -> bool {
        self.leases.stop(id, token)
    }

    /// Waits for attempts still running outside any apalis worker.
    pub async fn drained(&self) {
        self.attempts.close();
        self.attempts.wait().await;
    }

    /// Runs one claimed attempt to its end.
    async fn attempt(&self, task: Task) {
        self.stats.started();
        let token = task.lease_owner.clone().unwrap_or_default();
        let lease = self.leases.hold(task.id, &token);
        let kind_label = task.kind.clone();
        metrics::counter!("keel_tasks_started_total", "kind" => kind_label.clone()).increment(1);
        if let Some(started) = task.started_at {
            let delay = (started - task.next_attempt_at)
                .to_std()
                .unwrap_or_default();
            metrics::histogram!("keel_task_start_delay_seconds").record(delay.as_secs_f64());
        }
        let began = std::time::Instant::now();
        // A kind that may not be interrupted is never stopped, whatever asks.
        let interruptible = kinds::find(&task.kind).is_none_or(|k| k.interruptible);
        let stopped = async {
            if interruptible {
                lease.stopped().cancelled().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let outcome = tokio::select! {
            outcome = self.execute(&task, &token) => Some(outcome),
            () = lease.lost().cancelled() => None,
            // Dropping `execute` aborts the handler's tokio task.
            () = stopped => Some(Outcome::Cancelled),
            () = self.grace_over.cancelled() => Some(Outcome::HandBack),
        };
        drop(lease);
        metrics::histogram!("keel_task_run_seconds", "kind" => kind_label.clone())
            .record(began.elapsed().as_secs_f64());
        let Some(outcome) = outcome else {
            // Another attempt owns the task now; anything written would be fenced.
            self.stats.abandoned();
            return;
        };
        let failed = matches!(outcome, Outcome::Retry { .. } | Outcome::Failed(_));
        // A hand-back or a snooze is not an attempt that ended.
        let ended = !matches!(
            outcome,
            Outcome::HandBack | Outcome::Snooze { .. } | Outcome::PutOff { .. }
        );
        let name = match &outcome {
            Outcome::Completed(_) => "keel_tasks_completed_total",
            Outcome::Retry { .. } => "keel_tasks_retried_total",
            Outcome::Failed(_) => "keel_tasks_failed_total",
            Outcome::HandBack => "keel_tasks_handed_back_total",
            Outcome::Cancelled => "keel_tasks_cancelled_running_total",
            Outcome::Snooze { .. } => "keel_tasks_snoozed_total",
            Outcome::PutOff { .. } => "keel_tasks_put_off_total",
        };
        metrics::counter!(name, "kind" => kind_label).increment(1);
        let next_run = match &outcome {
            Outcome::Retry { delay, .. }
            | Outcome::Snooze { delay }
            | Outcome::PutOff { delay } => Some(Some(Utc::now() + *delay)),
            Outcome::HandBack => Some(None),
            _ => None,
        };
        let finish = Finish {
            id: task.id,
            token,
            outcome,
        };
        match self.record(finish).await {
            Some(()) => {
                if !ended {
                    self.stats.abandoned();
                } else {
                    self.stats.ended(failed);
                }
                if let Some(run_at) = next_run {
                    self.push(task.id, run_at).await;
                }
            }
            None => self.stats.abandoned(),
        }
    }

    /// Runs the kind's handler under the task's timeout, writing progress.
    async fn execute(&self, task: &Task, token: &str) -> Outcome {
        let Some(kind) = kinds::find_enabled(&task.kind, &self.services.settings) else {
            // Built without this kind (a rolling deploy, a fleet with
            // several builds): put it off for a worker that has it, not
            // failed for good. Uncapped: no kind here to say how often.
            // Longer the longer it has waited (a tenth of its age, 5 s to
            // 5 min), so a backlog of such tasks costs little while it waits.
            let age = (Utc::now() - task.created_at).to_std().unwrap_or_default();
            let delay = (age / 10).clamp(UNKNOWN_KIND_WAIT, UNKNOWN_KIND_LONGEST_WAIT);
            tracing::warn!(task_id = %task.id, kind = %task.kind, ?delay, "a kind this worker does not run; put off for a worker that does");
            return Outcome::PutOff { delay };
        };
        let (mut ctx, progress) =
            TaskContext::new(task.id, task.attempts, task.owner_id, &self.services);
        ctx.snoozes = task.snoozes;
        // Its own tokio task, so a panic in the handler is a failed attempt,
        // not a dead worker; aborted when dropped, so a timeout, a lost lease
        // or a hand-back stops the handler too.
        let mut handle = AbortOnDropHandle::new(tokio::spawn(kind.run(task.payload.clone(), ctx)));
        let timeout = Duration::from_secs(u64::try_from(task.timeout_seconds).unwrap_or(1));
        let result = tokio::select! {
            joined = tokio::time::timeout(timeout, &mut handle) => match joined {
                Ok(Ok(result)) => result,
                Ok(Err(join)) if join.is_panic() => Err(TaskFailure::retryable(format!(
                    "the handler panicked: {}", panic_message(join.into_panic())
                ))),
                Ok(Err(_)) => Err(TaskFailure::retryable("the handler was cancelled")),
                Err(_) => Err(TaskFailure::retryable(format!(
                    "timed out after {}s", task.timeout_seconds
                ))),
            },
            never = self.write_progress(task, token, progress) => match never {},
        };
        drop(handle);
        match result {
            Ok(value) => Outcome::Completed(value),
            Err(TaskFailure {
                snooze: Some(_), ..
            }) if task.snoozes >= kind.max_snoozes => Outcome::Failed(format!(
                "snoozed {} times, the most kind {:?} allows",
                task.snoozes, task.kind
            )),
            Err(TaskFailure {
                snooze: Some(delay),
                ..
            }) => Outcome::Snooze { delay },
            Err(failure) if failure.retryable && task.attempts < task.max_attempts => {
                Outcome::Retry {
                    error: failure.message,
                    delay: self.retry.delay(task.attempts),
                }
            }
            Err(failure) => Outcome::Failed(failure.message),
        }
    }

    /// Writes the latest progress, at most every [`PROGRESS_EVERY`]. Never returns.
    async fn write_progress(
        &self,
        task: &Task,
        token: &str,
        mut progress: watch::Receiver<i16>,
    ) -> std::convert::Infallible {
        loop {
            if progress.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            let value = *progress.borrow_and_update();
            match tasks::set_progress(&self.db, task.id, token, value).await {
                Ok(Some(state)) => task_events::publish(&self.redis, &[state]).await,
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, task_id = %task.id, "progress not written"),
            }
            tokio::time::sleep(PROGRESS_EVERY).await;
        }
    }

    /// Writes the outcome, retrying while the database is away (the lease
    /// fences a write that comes too late). `None`: the lease was lost.
    async fn record(&self, finish: Finish) -> Option<()> {
        let id = finish.id;
        let mut backoff = Duration::from_millis(100);
        let deadline = std::time::Instant::now() + self.lease;
        loop {
            match self.finishes.finish(finish.clone()).await {
                Ok(Some(_)) => return Some(()),
                Ok(None) => {
                    tracing::warn!(task_id = %id, "lease lost before the outcome was written; it is discarded");
                    return None;
                }
                Err(e) if std::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, task_id = %id, "could not record the outcome; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::error!(error = %e, task_id = %id, "gave up recording the outcome; the lease will expire and the task run again");
                    return None;
                }
            }
        }
    }

    /// Pushes the next attempt of `id`; if Redis refuses, clears the
    /// enqueued mark so the reconciler pushes it.
    async fn push(&self, id: uuid::Uuid, run_at: Option<DateTime<Utc>>) {
        let job = RunTask {
            task_id: id,
            run_at,
        };
        if let Err(e) = self.jobs.push(job, run_at).await {
            tracing::warn!(error = %e, task_id = %id, "could not queue the next attempt; the reconciler will");
            if let Err(e) = tasks::mark_not_enqueued(&self.db, &[id]).await {
                tracing::warn!(error = %e, task_id = %id, "could not clear the enqueued mark");
            }
        }
    }

    /// Gives a job this worker will not start now back to Redis.
    async fn hand_back_job(&self, job: RunTask) {
        if let Err(e) = self.jobs.push(job, job.run_at).await {
            tracing::warn!(error = %e, task_id = %job.task_id, "could not hand the job back; the reconciler will");
            if let Err(e) = tasks::mark_not_enqueued(&self.db, &[job.task_id]).await {
                tracing::warn!(error = %e, task_id = %job.task_id, "could not clear the enqueued mark");
            }
        }
    }

    /// Sleeps `duration` unless the worker starts stopping; `false` if it did.
    async fn wait(&self, duration: Duration) -> bool {
        if duration.is_zero() {
            return !self.stopping.is_cancelled();
        }
        tokio::select! {
            () = self.stopping.cancelled() => false,
            () = tokio::time::sleep(duration) => true,
        }
    }
}

/// Time left until `at` by this machine's clock (zero if past).
fn until(at: DateTime<Utc>) -> Duration {
    (at - Utc::now()).to_std().unwrap_or_default()
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into())
}

impl supervisor::Handler<RunTask> for TaskRunner {
    async fn handle(self: Arc<Self>, job: RunTask) -> Result<(), BoxDynError> {
        TaskRunner::run(&self, job).await.map_err(Into::into)
    }
}

/// Runs the `tasks` queue until `stop` (see [`supervisor::run`]).
///
/// # Errors
/// Never for a Redis outage.
pub async fn run_queue(
    runner: Arc<TaskRunner>,
    wake: WakeSignal,
    base_name: String,
    concurrency: usize,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let setup = supervisor::QueueSetup {
        jobs: runner.jobs.clone(),
        redis: runner.redis.clone(),
        lease: runner.lease,
        base_name,
        concurrency,
    };
    supervisor::run(setup, runner, wake, stop).await
}
