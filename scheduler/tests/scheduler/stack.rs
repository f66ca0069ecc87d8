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
    process::Service as _,
    queue::{JobQueue, Queue},
};
use keel_testing::{self as testing, ChildGuard, PostgresServer, RedisServer, TestDatabase};
use keel_worker::app::Worker;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::SCHEDULER_BIN;

pub const LONG: Duration = Duration::from_secs(60);

/// The schedulers' reconcile period here (`RECONCILE_SECONDS=1`).
pub const RECONCILE: Duration = Duration::from_secs(1);

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

    /// On a database of the test's own PostgreSQL server, and the shared Redis.
    pub async fn with_own_postgres(server: &PostgresServer) -> Self {
        let url = server.create_database("keel").await;
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let db = TestDatabase {
            name: "keel".into(),
            url,
            pool,
        };
        Self::on_database(db, testing::redis_url()).await
    }

    async fn on(redis_url: String) -> Self {
        Self::on_database(TestDatabase::create().await.unwrap(), redis_url).await
    }

    async fn on_database(db: TestDatabase, redis_url: String) -> Self {
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
        self.scheduler_with(port, &[])
    }

    /// A `keel-scheduler` as [`Setup::scheduler_on`], with `env` on top.
    pub fn scheduler_with(&self, port: u16, env: &[(&str, &str)]) -> ChildGuard {
        let mut command = testing::service_command(SCHEDULER_BIN, &self.db.url, &self.prefix, port);
        command
            .env("REDIS_URL", &self.redis_url)
            .env("RECONCILE_SECONDS", "1")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied());
        ChildGuard::spawn(command)
    }

    pub fn scheduler(&self) -> ChildGuard {
        self.scheduler_on(testing::free_port())
    }

    /// A `keel-scheduler` that has made its first reconcile pass.
    pub async fn scheduler_past_first_pass(&self) -> ChildGuard {
        let scheduler = self.scheduler();
        self.first_pass().await;
        scheduler
    }

    /// A `keel-worker` process called `name` with `env` on top.
    pub fn worker_process(&self, name: &str, env: &[(&str, &str)]) -> ChildGuard {
        let mut command = testing::service_command(
            &sibling_binary("keel-worker"),
            &self.db.url,
            &self.prefix,
            testing::free_port(),
        );
        command
            .env("REDIS_URL", &self.redis_url)
            .env("RUST_LOG", "warn")
            .args(["--name", name])
            .envs(env.iter().copied());
        ChildGuard::spawn(command)
    }

    /// A `keel-api` process with `env` on top; rate limits off, so bursts
    /// are not throttled.
    pub async fn api_process(&self, env: &[(&str, &str)]) -> ApiProcess {
        let port = testing::free_port();
        let mut command = testing::command(&sibling_binary("keel-api"));
        command
            .env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", &self.redis_url)
            .env("REDIS_PREFIX", &self.prefix)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("RATE_LIMIT_ENABLED", "false")
            .env("DATABASE_TIMEOUT_SECONDS", "2")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied());
        let process = ChildGuard::spawn(command);
        let base = format!("http://127.0.0.1:{port}");
        testing::wait_for_status(&format!("{base}/ready"), 200, LONG).await;
        ApiProcess {
            process,
            base,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// Inserts one task per `(kind, payload)`, due now, with `max_attempts`; not pushed.
    pub async fn insert_each(
        &self,
        specs: &[(&str, serde_json::Value)],
        max_attempts: i32,
    ) -> Vec<Task> {
        let specs: Vec<NewTask> = specs
            .iter()
            .map(|(kind, payload)| new_task(kind, payload.clone(), max_attempts, None))
            .collect();
        let mut all = Vec::new();
        // The insert binds arrays; a few thousand rows per statement.
        for chunk in specs.chunks(2000) {
            all.extend(
                tasks::insert_many(&self.pool, self.owner, "test", chunk)
                    .await
                    .unwrap(),
            );
        }
        all
    }

    /// How many tasks are finished.
    pub async fn finished_count(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM tasks WHERE status IN ('completed', 'failed', 'cancelled', 'expired')",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// Waits up to `timeout` until every task is finished, checking the
    /// invariants of [`testing::assert_task_invariants`] (reconcile period
    /// 1 s) on each look; returns them.
    pub async fn all_finished_within(&self, timeout: Duration) -> Vec<Task> {
        self.wait_all_finished(timeout, true).await
    }

    async fn wait_all_finished(&self, timeout: Duration, check: bool) -> Vec<Task> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if check {
                testing::assert_task_invariants(&self.pool, RECONCILE).await;
            }
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM tasks \
                 WHERE status NOT IN ('completed', 'failed', 'cancelled', 'expired')",
            )
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if open == 0 {
                let (all, _) = tasks::list(&self.pool, &tasks::TaskFilter::default(), 100_000, 0)
                    .await
                    .unwrap();
                return all;
            }
            assert!(tokio::time::Instant::now() < deadline, "{open} unfinished");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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
        let at = in_ms.map(|ms| now + chrono::Duration::milliseconds(ms));
        let specs: Vec<NewTask> = (0..n)
            .map(|_| new_task(kind, payload.clone(), 3, at))
            .collect();
        tasks::insert_many(&self.pool, self.owner, "test", &specs)
            .await
            .unwrap()
    }

    /// `n` `noop` tasks, due now or in `in_ms`; inserted, not pushed.
    pub async fn insert(&self, n: usize, in_ms: Option<i64>) -> Vec<Task> {
        self.insert_kind(n, "noop", json!({}), in_ms).await
    }

    /// An enabled `noop` schedule on `cron` (UTC), owned by the test's user.
    pub async fn schedule(&self, name: &str, cron: &str) -> Schedule {
        self.schedule_of(name, cron, "noop").await
    }

    /// An enabled schedule of `kind` (empty payload) on `cron` (UTC), owned
    /// by the test's user.
    pub async fn schedule_of(&self, name: &str, cron: &str, kind: &str) -> Schedule {
        schedules::insert(
            &self.pool,
            self.owner,
            &ScheduleSpec {
                name: name.into(),
                cron: cron.into(),
                timezone: "UTC".into(),
                kind: kind.into(),
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
        self.wait_all_finished(LONG, false).await
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

    /// Waits until apalis keeps `kept` acknowledged jobs of the `tasks`
    /// queue, and the data of as many; `what` says what was awaited if it
    /// never does.
    pub async fn wait_kept_jobs(&self, kept: u64, what: &str) {
        let config = self.jobs.apalis_config(Queue::Tasks);
        let mut conn = self.redis.conn();
        let deadline = tokio::time::Instant::now() + LONG;
        loop {
            let (done, data): (u64, u64) = redis::pipe()
                .scard(config.done_jobs_set())
                .hlen(config.job_data_hash())
                .query_async(&mut conn)
                .await
                .unwrap();
            if done == kept && data == kept {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {done} done, {data} data"
            );
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

/// A task of `kind` named `t`, due at `scheduled_at` (now when `None`).
fn new_task(
    kind: &str,
    payload: serde_json::Value,
    max_attempts: i32,
    scheduled_at: Option<DateTime<Utc>>,
) -> NewTask {
    NewTask {
        name: "t".into(),
        kind: kind.into(),
        payload,
        max_attempts,
        timeout_seconds: 60,
        priority: 0,
        scheduled_at,
        schedule_id: None,
        expires_at: None,
        unique_key: None,
    }
}

/// A binary of the workspace, built beside `keel-scheduler`.
fn sibling_binary(name: &str) -> String {
    let binary = std::path::Path::new(SCHEDULER_BIN).with_file_name(name);
    assert!(
        binary.exists(),
        "{} is built with the workspace",
        binary.display()
    );
    binary.to_str().unwrap().to_owned()
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Run {
    pub fire_at: DateTime<Utc>,
    pub fired_at: DateTime<Utc>,
    pub fired_by: String,
    pub task_id: Option<Uuid>,
}

/// A `keel-api` process and a client with a 10 s timeout.
pub struct ApiProcess {
    pub process: ChildGuard,
    pub base: String,
    pub client: reqwest::Client,
}

impl ApiProcess {
    /// Registers an account through the API and signs in: a bearer token.
    pub async fn token(&self) -> String {
        testing::sign_up(&self.client, &self.base).await
    }

    /// `POST /api/v1/tasks` of a `noop` task.
    pub async fn create_task(&self, token: &str) -> reqwest::Result<reqwest::Response> {
        create_noop(&self.client, &self.base, token).await
    }
}

/// `POST /api/v1/tasks` of a `noop` task to the API at `base`.
pub async fn create_noop(
    client: &reqwest::Client,
    base: &str,
    token: &str,
) -> reqwest::Result<reqwest::Response> {
    client
        .post(format!("{base}/api/v1/tasks"))
        .bearer_auth(token)
        .json(&json!({"name": "burst", "kind": "noop"}))
        .send()
        .await
}

/// A webhook receiver for `http_request` probe tasks: counts the
/// deliveries of each key (`POST /effect/{key}`). The effect is the key's
/// first delivery — a receiver deduplicating by key, as an idempotent
/// webhook does — so "each effect once" is "every key delivered".
pub struct EffectSink {
    pub port: u16,
    deliveries: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>,
}

impl EffectSink {
    pub async fn start() -> Self {
        use axum::{Router, extract::Path, routing::post};
        let deliveries =
            std::sync::Arc::<std::sync::Mutex<std::collections::HashMap<String, u32>>>::default();
        let seen = deliveries.clone();
        let app = Router::new().route(
            "/effect/{key}",
            post(move |Path(key): Path<String>| async move {
                *seen.lock().unwrap().entry(key).or_default() += 1;
                "ok"
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { port, deliveries }
    }

    /// The `http_request` payload of a probe with `key`.
    pub fn probe(&self, key: &str) -> serde_json::Value {
        json!({"method": "POST", "url": format!("http://127.0.0.1:{}/effect/{key}", self.port)})
    }

    /// Deliveries per key so far.
    pub fn deliveries(&self) -> std::collections::HashMap<String, u32> {
        self.deliveries.lock().unwrap().clone()
    }
}
