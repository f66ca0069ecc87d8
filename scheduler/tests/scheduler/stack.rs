//! A test's own deployment: a database, a Redis prefix (or a Redis server
//! of its own), `keel-scheduler` and `keel-worker` processes, and a worker
//! in this process (the same code as `keel-worker`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_shared::{
    Config, RedisClient,
    db::{
        self,
        schedules::{self, Schedule, ScheduleSpec},
        tasks::{self, NewTask, Task, TaskStatus},
    },
    job_queue::JobQueue,
    testing::{self, ChildGuard, RedisServer, TestDatabase},
};
use keel_worker::app::Worker;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::SCHEDULER_BIN;

pub const LONG: Duration = Duration::from_secs(60);

pub struct Setup {
    pub db: TestDatabase,
    pub prefix: String,
    pub redis_url: String,
    pub config: Config,
    pub pool: PgPool,
    pub redis: RedisClient,
    pub jobs: JobQueue,
    pub owner: Uuid,
}

impl Setup {
    /// On the Redis every test shares, under a prefix of its own.
    pub async fn new() -> Self {
        Self::on(testing::redis_url()).await
    }

    /// On the test's own Redis server.
    pub async fn with_own_redis(server: &RedisServer) -> Self {
        Self::on(server.url()).await
    }

    async fn on(redis_url: String) -> Self {
        let db = TestDatabase::create().await.unwrap();
        let prefix = testing::unique_redis_prefix();
        let config = testing::config(
            &db.url,
            &prefix,
            &["--metrics-port", "0", "--redis-url", &redis_url],
        );
        let pool = db::connect(&config).await.unwrap();
        let redis = RedisClient::connect(&config).await.unwrap();
        let jobs = JobQueue::new(redis.clone());
        let owner = testing::insert_user(&pool, "sch").await;
        Self {
            db,
            prefix,
            redis_url,
            config,
            pool,
            redis,
            jobs,
            owner,
        }
    }

    /// A `keel-scheduler` reconciling every second; its ops port is `port`.
    pub fn scheduler_on(&self, port: u16) -> ChildGuard {
        let mut command = testing::service_command(SCHEDULER_BIN, &self.db.url, &self.prefix, port);
        command
            .env("REDIS_URL", &self.redis_url)
            .env("RECONCILE_SECONDS", "1")
            .env("RUST_LOG", "warn");
        ChildGuard::spawn(command)
    }

    pub fn scheduler(&self) -> ChildGuard {
        self.scheduler_on(testing::free_port())
    }

    /// A `keel-worker` process called `name` (built beside the scheduler)
    /// with `env` on top.
    pub fn worker_process(&self, name: &str, env: &[(&str, &str)]) -> ChildGuard {
        let binary = std::path::Path::new(SCHEDULER_BIN).with_file_name("keel-worker");
        assert!(
            binary.exists(),
            "{} is built with the workspace",
            binary.display()
        );
        let mut command = testing::service_command(
            binary.to_str().unwrap(),
            &self.db.url,
            &self.prefix,
            testing::free_port(),
        );
        command
            .env("REDIS_URL", &self.redis_url)
            .env("RUST_LOG", "warn")
            .args(["--name", name]);
        for (key, value) in env {
            command.env(key, value);
        }
        ChildGuard::spawn(command)
    }

    /// A worker in this process; cancel the token to stop it.
    pub async fn worker(&self) -> CancellationToken {
        let worker = Worker::build(&self.config).await.unwrap();
        let stop = worker.shutdown_token();
        tokio::spawn(worker.run_until_stopped());
        stop
    }

    pub async fn db_now(&self) -> DateTime<Utc> {
        sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// `n` `kind` tasks, due now or in `in_ms`; inserted, not pushed.
    pub async fn insert_kind(
        &self,
        n: usize,
        kind: &str,
        payload: serde_json::Value,
        in_ms: Option<i64>,
    ) -> Vec<Task> {
        let now = self.db_now().await;
        let specs: Vec<NewTask> = (0..n)
            .map(|_| NewTask {
                name: "t".into(),
                kind: kind.into(),
                payload: payload.clone(),
                max_attempts: 3,
                timeout_seconds: 60,
                priority: 0,
                scheduled_at: in_ms.map(|ms| now + chrono::Duration::milliseconds(ms)),
                schedule_id: None,
            })
            .collect();
        tasks::insert_many(&self.pool, self.owner, "test", &specs, None)
            .await
            .unwrap()
            .unwrap()
    }

    /// `n` `noop` tasks, due now or in `in_ms`; inserted, not pushed.
    pub async fn insert(&self, n: usize, in_ms: Option<i64>) -> Vec<Task> {
        self.insert_kind(n, "noop", json!({}), in_ms).await
    }

    /// An enabled `noop` schedule on `cron` (UTC), owned by the test's user.
    pub async fn schedule(&self, name: &str, cron: &str) -> Schedule {
        schedules::insert(
            &self.pool,
            self.owner,
            &ScheduleSpec {
                name: name.into(),
                cron: cron.into(),
                timezone: "UTC".into(),
                kind: "noop".into(),
                payload: json!({}),
                enabled: true,
                next_run_at: None,
            },
        )
        .await
        .unwrap()
    }

    /// Waits until every task is finished; returns them.
    pub async fn all_finished(&self) -> Vec<Task> {
        let deadline = tokio::time::Instant::now() + LONG;
        loop {
            let (all, _) = tasks::list(&self.pool, &tasks::TaskFilter::default(), 100_000, 0)
                .await
                .unwrap();
            let open = all.iter().filter(|t| !t.status.is_finished()).count();
            if open == 0 {
                return all;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{open} of {} unfinished",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the scheduler's first reconcile pass (it sets the sentinel).
    pub async fn first_pass(&self) {
        let deadline = tokio::time::Instant::now() + LONG;
        loop {
            let exists: bool = redis::cmd("EXISTS")
                .arg(self.redis.key("sentinel"))
                .query_async(&mut self.redis.conn())
                .await
                .unwrap();
            if exists {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "no reconcile pass");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many attempts of task `id` started.
    pub async fn runs_of(&self, id: Uuid) -> usize {
        tasks::history(&self.pool, id)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.to_status == TaskStatus::Running)
            .count()
    }

    /// The fires of `schedule` so far: `(fire_at, fired_at, fired_by, task_id)`, oldest first.
    pub async fn runs(&self, schedule: Uuid) -> Vec<Run> {
        sqlx::query_as(
            "SELECT fire_at, fired_at, fired_by, task_id FROM schedule_runs \
             WHERE schedule_id = $1 ORDER BY fire_at",
        )
        .bind(schedule)
        .fetch_all(&self.pool)
        .await
        .unwrap()
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Run {
    pub fire_at: DateTime<Utc>,
    pub fired_at: DateTime<Utc>,
    pub fired_by: String,
    pub task_id: Option<Uuid>,
}
