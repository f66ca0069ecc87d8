//! The gauges of shared state — the work waiting in Postgres and Redis, and
//! the live workers — sampled when `/metrics` is scraped.
//!
//! Why at scrape time, by the API and the scheduler: the numbers live in
//! Postgres and Redis, not in any process, so any process can report them.
//! Sampling on scrape (at most once a second, however many scrapers ask)
//! costs nothing while nobody looks and is never staler than the scrape; a
//! background loop would query every few seconds in every replica, and a
//! scrape would still see a sample up to one period old. The API reports
//! them because it is what ops scrape first; the scheduler because one always
//! runs, even where the API is not scraped. Workers do not: there are many,
//! and each would repeat the same numbers. Several replicas exporting the
//! same gauge is harmless — query with `max`, not `sum`.
//!
//! - `keel_queue_depth{queue, state}`: the `tasks` queue from Postgres, the
//!   status of record — `pending` (due), `scheduled` (later), `running` —
//!   counted as the admin queues view counts them. Finished tasks are not a
//!   depth (counting them would scan every finished row); the
//!   `keel_tasks_{completed,failed}_total` counters cover them.
//! - `keel_queue_oldest_pending_seconds{queue}`: how long the longest-waiting
//!   due task has waited since it became due, by the database clock; 0 when
//!   none waits.
//! - `keel_queue_redis_jobs{queue, state}`: what Redis holds for every
//!   queue, as the queues view's `redis` part shows it — `scheduled`,
//!   `active`, `in_flight`, `done`, `dead`. The only depth of the `email` and
//!   `maintenance` queues, and a check of the transport for `tasks`.
//! - `keel_workers_alive`: workers whose heartbeat is fresh.
//!
//! A part whose source fails or is slower than [`SAMPLE_TIMEOUT`] keeps its
//! last values (logged); the scrape is answered anyway.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::{sync::Mutex, time::Instant};

use crate::{
    db::tasks,
    queue::{JobQueue, Queue},
    redis_client::RedisClient,
    workers,
};

/// Scrapes closer together than this share one sample.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest a scrape waits on Postgres or Redis.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Samples the queue and worker gauges; cheap to clone.
#[derive(Clone, Debug)]
pub struct QueueGauges {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: PgPool,
    redis: RedisClient,
    jobs: JobQueue,
    /// When the last sample started; held while one runs, so concurrent
    /// scrapes wait for it instead of starting their own.
    last: Mutex<Option<Instant>>,
}

impl QueueGauges {
    pub fn new(db: PgPool, redis: RedisClient) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                jobs: JobQueue::new(redis.clone()),
                redis,
                last: Mutex::new(None),
            }),
        }
    }

    /// Sets the gauges from Postgres and Redis, unless a sample started
    /// less than a second ago.
    pub async fn refresh(&self) {
        let mut last = self.inner.last.lock().await;
        if last.is_some_and(|at| at.elapsed() < MIN_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        tokio::join!(self.sample_postgres(), self.sample_redis());
    }

    async fn sample_postgres(&self) {
        let backlog =
            match tokio::time::timeout(SAMPLE_TIMEOUT, tasks::backlog(&self.inner.db)).await {
                Ok(Ok(backlog)) => backlog,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "queue gauges not sampled from Postgres");
                    return;
                }
                Err(_) => {
                    tracing::warn!("queue gauges not sampled from Postgres: it timed out");
                    return;
                }
            };
        let queue = Queue::Tasks.name();
        for (state, n) in [
            ("pending", backlog.due),
            ("scheduled", backlog.scheduled),
            ("running", backlog.running),
        ] {
            metrics::gauge!("keel_queue_depth", "queue" => queue, "state" => state).set(n as f64);
        }
        metrics::gauge!("keel_queue_oldest_pending_seconds", "queue" => queue)
            .set(backlog.oldest_due_seconds);
    }

    async fn sample_redis(&self) {
        let sample = async {
            let depths = self.inner.jobs.depths().await?;
            let alive = workers::count_alive(&self.inner.redis).await?;
            Ok::<_, redis::RedisError>((depths, alive))
        };
        let (depths, alive) = match tokio::time::timeout(SAMPLE_TIMEOUT, sample).await {
            Ok(Ok(sample)) => sample,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "queue gauges not sampled from Redis");
                return;
            }
            Err(_) => {
                tracing::warn!("queue gauges not sampled from Redis: it timed out");
                return;
            }
        };
        for (queue, d) in depths {
            for (state, n) in [
                ("scheduled", d.scheduled),
                ("active", d.active),
                ("in_flight", d.in_flight),
                ("done", d.done),
                ("dead", d.dead),
            ] {
                metrics::gauge!("keel_queue_redis_jobs", "queue" => queue.name(), "state" => state)
                    .set(n as f64);
            }
        }
        metrics::gauge!("keel_workers_alive").set(alive as f64);
    }
}
