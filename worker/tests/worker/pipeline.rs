//! A task pipeline for tests: a fresh database and Redis prefix, a user,
//! tasks created the way the API creates them (row first, then the push),
//! and real `keel-worker` processes on the same database and prefix.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_shared::{
    RedisClient,
    db::tasks::{self, NewTask, Task, TaskEvent, TaskStatus},
    queue::{JobQueue, dispatch},
};
use keel_testing::{self as testing, ChildGuard, TestDatabase};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

pub const WORKER_BIN: &str = env!("CARGO_BIN_EXE_keel-worker");

pub struct Pipeline {
    pub db: TestDatabase,
    pub pool: PgPool,
    pub prefix: String,
    pub redis: RedisClient,
    pub jobs: JobQueue,
    pub owner: Uuid,
}

impl Pipeline {
    pub async fn new() -> Self {
        let db = TestDatabase::create().await.unwrap();
        let prefix = testing::unique_redis_prefix();
        let config = testing::config(&db.url, &prefix, &[]);
        let pool = keel_shared::db::connect(&config).await.unwrap();
        let redis = RedisClient::connect(&config).await.unwrap();
        let jobs = JobQueue::new(redis.clone());
        let owner = testing::insert_user(&pool, "owner").await;
        Self {
            db,
            pool,
            prefix,
            redis,
            jobs,
            owner,
        }
    }

    /// A worker process with quick test timings and `env` on top.
    pub fn worker(&self, env: &[(&str, &str)]) -> ChildGuard {
        let mut command =
            testing::service_command(WORKER_BIN, &self.db.url, &self.prefix, testing::free_port());
        command
            .env("RUST_LOG", "warn")
            .env("WORKER_QUEUES", "tasks")
            .env("TASK_RETRY_BASE_MS", "200")
            .env("TASK_LEASE_SECONDS", "3")
            .env("SHUTDOWN_GRACE_SECONDS", "5")
            .envs(env.iter().copied());
        ChildGuard::spawn(command)
    }

    /// Creates tasks as the API does: rows committed, then one push.
    pub async fn create_many(&self, specs: Vec<NewTask>) -> Vec<Task> {
        let created = tasks::insert_many(&self.pool, self.owner, "test", &specs)
            .await
            .unwrap();
        dispatch::push_tasks(&self.pool, &self.jobs, &created)
            .await
            .unwrap();
        created
    }

    pub async fn create(&self, kind: &str, payload: Value) -> Task {
        self.create_many(vec![new_task(kind, payload)])
            .await
            .remove(0)
    }

    pub async fn get(&self, id: Uuid) -> Task {
        tasks::get(&self.pool, id).await.unwrap().unwrap()
    }

    pub async fn history(&self, id: Uuid) -> Vec<TaskEvent> {
        tasks::history(&self.pool, id).await.unwrap()
    }

    /// Creates a `noop` task and waits until it is finished: the worker is
    /// serving the queue.
    pub async fn finished_noop(&self, timeout: Duration) -> Task {
        let task = self.create("noop", noop()).await;
        self.finished(task.id, timeout).await
    }

    /// Creates `n` `sleep` tasks of `ms` each and waits until every one is running.
    pub async fn sleeping(&self, n: usize, ms: u64, timeout: Duration) -> Vec<Task> {
        let created = self
            .create_many(
                (0..n)
                    .map(|_| new_task("sleep", json!({ "ms": ms })))
                    .collect(),
            )
            .await;
        for task in &created {
            self.running(task.id, timeout).await;
        }
        created
    }

    /// Waits until `id` is running.
    pub async fn running(&self, id: Uuid, timeout: Duration) -> Task {
        self.wait_for(id, timeout, |t| t.status == TaskStatus::Running)
            .await
    }

    /// Waits until `id` is finished (completed, failed, cancelled or expired).
    pub async fn finished(&self, id: Uuid, timeout: Duration) -> Task {
        self.wait_for(id, timeout, |t| t.status.is_finished()).await
    }

    pub async fn wait_for(
        &self,
        id: Uuid,
        timeout: Duration,
        done: impl Fn(&Task) -> bool,
    ) -> Task {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let task = self.get(id).await;
            if done(&task) {
                return task;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} not there within {timeout:?}: {task:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every task of the owner is finished; returns them all.
    pub async fn all_finished(&self, timeout: Duration) -> Vec<Task> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (all, _) = tasks::list(
                &self.pool,
                &tasks::TaskFilter {
                    owner: Some(self.owner),
                    ..Default::default()
                },
                100_000,
                0,
            )
            .await
            .unwrap();
            let open = all.iter().filter(|t| !t.status.is_finished()).count();
            if open == 0 {
                return all;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{open} of {} tasks unfinished after {timeout:?}",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The database clock.
    pub async fn db_now(&self) -> DateTime<Utc> {
        sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

pub fn new_task(kind: &str, payload: Value) -> NewTask {
    NewTask {
        name: format!("{kind} task"),
        kind: kind.into(),
        payload,
        max_attempts: 3,
        timeout_seconds: 60,
        priority: 0,
        scheduled_at: None,
        schedule_id: None,
        expires_at: None,
        unique_key: None,
    }
}

/// Sends `signal` to `worker` and asserts it exits with 0 within `within`.
pub async fn assert_stops_cleanly(worker: &mut ChildGuard, signal: &str, within: Duration) {
    worker.signal(signal);
    let status = worker.wait_exit(within).await.expect("the worker stops");
    assert_eq!(status.code(), Some(0), "{}", worker.stderr());
}

/// How many times the history shows the task going to `status`.
pub fn transitions_to(history: &[TaskEvent], status: TaskStatus) -> usize {
    history.iter().filter(|e| e.to_status == status).count()
}

pub fn noop() -> Value {
    json!({})
}
