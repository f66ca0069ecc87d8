//! `JobQueue`: the producer side of the queues. It wraps apalis-redis so the
//! API and the scheduler push jobs without touching apalis types, and it
//! works around two apalis-redis habits (see `../shared/APALIS.md`):
//!
//! - Redis schedules in whole seconds, so a job meant for `run_at` is pushed
//!   a second early and carries `run_at`; the worker waits out the rest and
//!   starts it on time, never before.
//! - An idle worker only looks for work when polled, so every push of a job
//!   due now publishes a wake-up on the queue's channel; workers listen and
//!   fetch at once instead of polling tightly.

use std::time::Duration;

use apalis::prelude::{TaskBuilder, TaskSink as _};
use apalis_redis::{Config as ApalisConfig, RedisStorage};
use chrono::{DateTime, Utc};

use crate::{
    jobs::{Job, Queue},
    redis_client::RedisClient,
};

/// How long a push may take before the caller gives up and leaves the job
/// to the reconciler: creating work never waits on a sick Redis.
pub const PUSH_TIMEOUT: Duration = Duration::from_millis(1500);

/// Pushing a job failed; the row stays in Postgres for the reconciler.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("Redis refused the push: {0}")]
    Redis(String),
    #[error("the push did not finish within {PUSH_TIMEOUT:?}")]
    Timeout,
}

/// Pushes jobs to the Redis queues of one deployment (its key prefix).
#[derive(Clone, Debug)]
pub struct JobQueue {
    redis: RedisClient,
}

impl JobQueue {
    pub fn new(redis: RedisClient) -> Self {
        Self { redis }
    }

    /// The apalis queue name of `queue` under this deployment's prefix.
    pub fn queue_name(&self, queue: Queue) -> String {
        self.redis.key(queue.name())
    }

    /// The pub/sub channel that wakes the workers of `queue`.
    pub fn wake_channel(&self, queue: Queue) -> String {
        self.redis.key(&format!("wake:{}", queue.name()))
    }

    /// The apalis configuration every producer and worker of `queue` shares:
    /// the queue named explicitly, and apalis's own task locks off, because
    /// Postgres holds the leases. `persist_results` stays on: it is also
    /// what acknowledges a job (without it a handled job never leaves its
    /// worker's in-flight set).
    pub fn apalis_config(&self, queue: Queue) -> ApalisConfig {
        ApalisConfig::default()
            .queue(self.queue_name(queue))
            .lock_tasks(false)
            .persist_results(true)
            .emit_events(false)
    }

    /// The apalis storage of `J`'s queue, for the worker.
    pub fn storage<J: Job>(&self) -> RedisStorage<J> {
        RedisStorage::new(self.redis.conn()).with_config(self.apalis_config(J::QUEUE))
    }

    /// Pushes one job, to run at `run_at` (now when `None`).
    ///
    /// # Errors
    /// Redis failed or was too slow; nothing is half-done that the reconciler
    /// would not repair.
    pub async fn push<J: Job>(
        &self,
        job: J,
        run_at: Option<DateTime<Utc>>,
    ) -> Result<(), PushError> {
        self.push_many(vec![(job, run_at)]).await
    }

    /// Pushes `jobs` in one round trip, then wakes the workers if any is due.
    ///
    /// # Errors
    /// As [`JobQueue::push`].
    pub async fn push_many<J: Job>(
        &self,
        jobs: Vec<(J, Option<DateTime<Utc>>)>,
    ) -> Result<(), PushError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let now = Utc::now().timestamp();
        let mut due_now = false;
        let tasks: Vec<_> = jobs
            .into_iter()
            .map(|(job, run_at)| {
                let at = redis_run_at(run_at);
                due_now |= at <= now;
                TaskBuilder::new(job)
                    .run_at_timestamp(u64::try_from(at).unwrap_or_default())
                    .build()
            })
            .collect();
        let mut storage = self.storage::<J>();
        let push = async {
            storage
                .push_all(&mut futures_util::stream::iter(tasks))
                .await
                .map_err(|e| PushError::Redis(e.to_string()))?;
            if due_now {
                self.wake(J::QUEUE).await;
            }
            Ok(())
        };
        tokio::time::timeout(PUSH_TIMEOUT, push)
            .await
            .map_err(|_| PushError::Timeout)?
    }

    /// Tells the idle workers of `queue` to look for work now. Best effort:
    /// a missed wake-up costs one poll interval, not a job.
    pub async fn wake(&self, queue: Queue) {
        let published = redis::cmd("PUBLISH")
            .arg(self.wake_channel(queue))
            .arg(1)
            .query_async::<i64>(&mut self.redis.conn())
            .await;
        if let Err(e) = published {
            tracing::debug!(error = %e, %queue, "could not wake the workers");
        }
    }
}

/// The whole second at which Redis releases a job meant for `run_at`: the
/// second before it, so the worker holds it in time to start it on the dot.
fn redis_run_at(run_at: Option<DateTime<Utc>>) -> i64 {
    match run_at {
        Some(at) => at.timestamp() - 1,
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduled_job_is_released_a_second_early_and_an_immediate_one_at_once() {
        let at = DateTime::parse_from_rfc3339("2026-01-01T00:00:10.900Z")
            .unwrap()
            .to_utc();
        assert_eq!(redis_run_at(Some(at)), at.timestamp() - 1);
        assert_eq!(redis_run_at(None), 0);
    }
}
