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

use std::{
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};

use apalis::prelude::{TaskBuilder, TaskSink as _};
use apalis_redis::{Config as ApalisConfig, RedisStorage};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{
    queue::{Job, Queue},
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

/// Wake-ups from one process are at most this often: the worker's second
/// tap (3 ms after a wake-up) picks up whatever was pushed in between.
const WAKE_EVERY_MICROS: i64 = 1000;

/// Pushes jobs to the Redis queues of one deployment (its key prefix).
#[derive(Clone, Debug)]
pub struct JobQueue {
    redis: RedisClient,
    /// When this process last woke the workers, in µs since the epoch.
    last_wake: Arc<AtomicI64>,
}

impl JobQueue {
    pub fn new(redis: RedisClient) -> Self {
        Self {
            redis,
            last_wake: Arc::new(AtomicI64::new(0)),
        }
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
        let jobs = jobs
            .into_iter()
            .map(|(job, run_at)| (job, redis_run_at(run_at)))
            .collect();
        self.push_released(jobs).await
    }

    /// Pushes `job` for Redis to release at `release_at` (to the second),
    /// whatever time the job itself carries: the worker's safety copy of a
    /// job it holds in memory until its time.
    ///
    /// # Errors
    /// As [`JobQueue::push`].
    pub async fn push_release_at<J: Job>(
        &self,
        job: J,
        release_at: DateTime<Utc>,
    ) -> Result<(), PushError> {
        self.push_released(vec![(job, release_at.timestamp())])
            .await
    }

    /// Pushes `(job, unix second Redis releases it)` pairs.
    async fn push_released<J: Job>(&self, jobs: Vec<(J, i64)>) -> Result<(), PushError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let now = Utc::now().timestamp();
        let mut due_now = false;
        let tasks: Vec<_> = jobs
            .into_iter()
            .map(|(job, at)| {
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

    /// Jobs of `queue` that Redis holds and that are due: released or due to
    /// be released, and fetched but not acknowledged.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn due_depth(&self, queue: Queue) -> redis::RedisResult<u64> {
        let config = self.apalis_config(queue);
        let mut conn = self.redis.conn();
        let (scheduled, active, workers): (u64, u64, Vec<String>) = redis::pipe()
            .zcount(config.scheduled_jobs_set(), "-inf", Utc::now().timestamp())
            .llen(config.active_jobs_list())
            .zrange(config.workers_set(), 0, -1)
            .query_async(&mut conn)
            .await?;
        let in_flight = in_flight(&mut conn, &config, &workers).await?;
        Ok(scheduled + active + in_flight)
    }

    /// Forgets up to `max` acknowledged jobs of `queue` — their id in the
    /// done set, their data and their metadata — which apalis keeps forever;
    /// returns how many. Safe at any time: job ids are never reused, and
    /// Postgres keeps the outcome.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn trim_done(&self, queue: Queue, max: usize) -> redis::RedisResult<usize> {
        let config = self.apalis_config(queue);
        let mut conn = self.redis.conn();
        let ids: Vec<String> = redis::cmd("SPOP")
            .arg(config.done_jobs_set())
            .arg(max)
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        pipe.hdel(config.job_data_hash(), &ids).ignore();
        for id in &ids {
            pipe.del(format!("{}:{id}", config.job_meta_hash()))
                .ignore();
        }
        pipe.exec_async(&mut conn).await?;
        Ok(ids.len())
    }

    /// Moves up to `max` of `queue`'s due jobs from Redis's scheduled set to
    /// its ready list, oldest first; returns how many it moved.
    ///
    /// apalis promotes due jobs itself, inside its fetch, but all of them in
    /// one Lua `unpack`, which fails past about 8,000 ids ("too many results
    /// to unpack"); its worker then ends on every fetch, and a backlog that
    /// large — workers down while the API accepts tasks, or the reconciler
    /// restoring a flushed Redis — would never drain. Workers call this
    /// often, in bounded chunks, so apalis only ever finds a few due ids,
    /// and again before restarting a queue worker that failed (a burst can
    /// still come due between two rounds and reach apalis's fetch first;
    /// apalis fetches on every wake of its worker, so the promotion cannot
    /// be ordered before each fetch from outside).
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn promote_due(&self, queue: Queue, max: usize) -> redis::RedisResult<usize> {
        static PROMOTE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                r"local ids = redis.call('zrangebyscore', KEYS[1], 0, ARGV[1], 'LIMIT', 0, ARGV[2])
                if #ids > 0 then
                    redis.call('rpush', KEYS[2], unpack(ids))
                    redis.call('zrem', KEYS[1], unpack(ids))
                    redis.call('del', KEYS[3])
                    redis.call('lpush', KEYS[3], 1)
                end
                return #ids",
            )
        });
        let config = self.apalis_config(queue);
        PROMOTE
            .key(config.scheduled_jobs_set())
            .key(config.active_jobs_list())
            .key(config.signal_list())
            .arg(Utc::now().timestamp())
            .arg(max)
            .invoke_async(&mut self.redis.conn())
            .await
    }

    /// [`trim_done`](Self::trim_done) on every queue until nothing is left;
    /// returns how many jobs it forgot.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn trim_all_done(&self) -> redis::RedisResult<u64> {
        const SLICE: usize = 5000;
        let mut trimmed = 0;
        for queue in Queue::ALL {
            loop {
                let n = self.trim_done(queue, SLICE).await?;
                trimmed += n as u64;
                if n < SLICE {
                    break;
                }
            }
        }
        Ok(trimmed)
    }

    /// The key whose presence pauses `queue`.
    fn paused_key(&self, queue: Queue) -> String {
        self.redis.key(&format!("paused:{}", queue.name()))
    }

    /// Pauses or resumes `queue`: workers stop taking its jobs (those
    /// running finish) within a few seconds, and start again on resume.
    /// Pushing goes on; the jobs wait in Redis.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn set_paused(&self, queue: Queue, paused: bool) -> redis::RedisResult<()> {
        let cmd = if paused {
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.paused_key(queue)).arg(Utc::now().to_rfc3339());
            cmd
        } else {
            let mut cmd = redis::cmd("DEL");
            cmd.arg(self.paused_key(queue));
            cmd
        };
        cmd.exec_async(&mut self.redis.conn()).await
    }

    /// Whether each queue is paused, in [`Queue::ALL`] order.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn paused(&self) -> redis::RedisResult<Vec<bool>> {
        let mut pipe = redis::pipe();
        for queue in Queue::ALL {
            pipe.exists(self.paused_key(queue));
        }
        pipe.query_async(&mut self.redis.conn()).await
    }

    /// Whether `queue` is paused.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn is_paused(&self, queue: Queue) -> redis::RedisResult<bool> {
        redis::cmd("EXISTS")
            .arg(self.paused_key(queue))
            .query_async(&mut self.redis.conn())
            .await
    }

    /// Tells the idle workers of `queue` to look for work now, unless this
    /// process did within the last millisecond. Best effort: a missed
    /// wake-up costs one poll interval, not a job.
    pub async fn wake(&self, queue: Queue) {
        let now = Utc::now().timestamp_micros();
        let last = self.last_wake.load(Ordering::Relaxed);
        if now - last < WAKE_EVERY_MICROS
            || self
                .last_wake
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
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

/// Where one queue's jobs sit in Redis, counted with plain commands (the
/// apalis listing helpers are broken; see `../shared/APALIS.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QueueDepths {
    /// Pushed, not yet released to workers (`{q}:scheduled`).
    pub scheduled: u64,
    /// Released, not yet fetched (`{q}:active`).
    pub active: u64,
    /// Fetched by a worker and not yet acknowledged (`{q}:inflight:*`).
    pub in_flight: u64,
    /// Acknowledged (`{q}:done`; trimmed by the scheduler's maintenance).
    pub done: u64,
    /// Given up on by apalis (`{q}:dead`).
    pub dead: u64,
}

impl JobQueue {
    /// The Redis depths of every queue, in [`Queue::ALL`] order.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn depths(&self) -> redis::RedisResult<Vec<(Queue, QueueDepths)>> {
        let mut conn = self.redis.conn();
        let configs: Vec<ApalisConfig> =
            Queue::ALL.iter().map(|q| self.apalis_config(*q)).collect();
        let mut pipe = redis::pipe();
        for config in &configs {
            pipe.zcard(config.scheduled_jobs_set())
                .llen(config.active_jobs_list())
                .scard(config.done_jobs_set())
                .scard(config.dead_jobs_set())
                .zrange(config.workers_set(), 0, -1);
        }
        let answers: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        let mut depths = Vec::with_capacity(configs.len());
        for ((queue, config), chunk) in Queue::ALL.iter().zip(&configs).zip(answers.chunks_exact(5))
        {
            let count = |v: &redis::Value| redis::from_redis_value::<u64>(v.clone()).unwrap_or(0);
            let workers: Vec<String> =
                redis::from_redis_value(chunk[4].clone()).unwrap_or_default();
            let in_flight = in_flight(&mut conn, config, &workers).await?;
            depths.push((
                *queue,
                QueueDepths {
                    scheduled: count(&chunk[0]),
                    active: count(&chunk[1]),
                    in_flight,
                    done: count(&chunk[2]),
                    dead: count(&chunk[3]),
                },
            ));
        }
        Ok(depths)
    }
}

/// Jobs of `config`'s queue that `workers` fetched and have not yet
/// acknowledged: apalis keeps one in-flight set per worker.
async fn in_flight(
    conn: &mut redis::aio::ConnectionManager,
    config: &ApalisConfig,
    workers: &[String],
) -> redis::RedisResult<u64> {
    if workers.is_empty() {
        return Ok(0);
    }
    let mut sizes = redis::pipe();
    for worker in workers {
        sizes.scard(format!("{}:{worker}", config.inflight_jobs_set()));
    }
    let counts: Vec<u64> = sizes.query_async(conn).await?;
    Ok(counts.iter().sum())
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
