//! What Redis losing everything, Redis being down and a stalled worker do
//! to accepted work — nothing — with each test on a Redis server of its
//! own where it stops, wipes or weighs Redis.

use std::time::Duration;

use keel_shared::{
    db::tasks::{self, TaskStatus},
    queue::{Queue, dispatch},
};
use keel_testing::RedisServer;
use serde_json::json;

use crate::stack::{LONG, RECONCILE, Setup};

/// Jobs waiting in the `tasks` queue (their data), on `server`.
async fn jobs_in_redis(s: &Setup, server: &RedisServer) -> u64 {
    let config = s.jobs.apalis_config(Queue::Tasks);
    redis::cmd("HLEN")
        .arg(config.job_data_hash())
        .query_async(&mut server.conn().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn after_flushdb_every_due_and_future_task_is_queued_again_and_runs_once() {
    let server = RedisServer::start().await;
    let s = Setup::with_own_redis(&server).await;
    let _scheduler = s.scheduler_past_first_pass().await;
    let mut created = s.insert(200, None).await;
    created.extend(s.insert(200, Some(5000)).await);
    dispatch::push_tasks(&s.pool, &s.jobs, &created)
        .await
        .unwrap();
    assert_eq!(jobs_in_redis(&s, &server).await, 400);

    let _: () = redis::cmd("FLUSHDB")
        .query_async(&mut server.conn().await)
        .await
        .unwrap();
    let flushed = tokio::time::Instant::now();
    let deadline = flushed + LONG;
    while jobs_in_redis(&s, &server).await < 400 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all queued again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "FLUSHDB → all 400 tasks back in Redis in {:?} (reconcile period 1 s)",
        flushed.elapsed()
    );

    let _worker = s.worker().await;
    let all = s.all_finished().await;
    assert_eq!(all.len(), 400);
    for task in &all {
        assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
        assert_eq!(s.runs_of(task.id).await, 1, "each once");
        assert!(task.started_at.unwrap() >= task.scheduled_at, "never early");
    }
    keel_testing::assert_task_invariants(&s.pool, RECONCILE).await;
}

#[tokio::test]
async fn tasks_created_while_redis_is_down_run_after_it_restarts() {
    let mut server = RedisServer::start().await;
    let s = Setup::with_own_redis(&server).await;
    let _scheduler = s.scheduler_past_first_pass().await;
    let _worker = s.worker().await;

    server.stop();
    // What `POST /tasks` does with Redis down: the row commits, the push fails.
    let created = s.insert(50, None).await;
    assert!(
        dispatch::push_tasks(&s.pool, &s.jobs, &created)
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting = tasks::get(&s.pool, created[0].id).await.unwrap().unwrap();
    assert_eq!(waiting.status, TaskStatus::Pending);

    // Back, and empty: the scheduler and the worker reconnect by themselves.
    server.restart().await;
    let all = s.all_finished().await;
    assert_eq!(all.len(), 50);
    for task in &all {
        assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
        assert_eq!(task.attempts, 1);
    }
    keel_testing::assert_task_invariants(&s.pool, RECONCILE).await;
}

/// Pushes 10,000 `noop` tasks, waits until they completed and the trim
/// (every 10 s) forgot their jobs; returns the peak `used_memory` seen.
async fn ten_thousand_tasks_trimmed(s: &Setup, server: &RedisServer) -> u64 {
    for _ in 0..10 {
        let created = s.insert(1000, None).await;
        dispatch::push_tasks(&s.pool, &s.jobs, &created)
            .await
            .unwrap();
    }
    let peak = server.used_memory().await;
    let all = s.all_finished().await;
    assert!(all.iter().all(|t| t.status == TaskStatus::Completed));
    s.wait_kept_jobs(0, "jobs left after the trim").await;
    peak.max(server.used_memory().await)
}

#[tokio::test]
async fn redis_memory_returns_to_its_start_after_10000_tasks_and_the_trim() {
    let server = RedisServer::start().await;
    let s = Setup::with_own_redis(&server).await;
    let _scheduler = s.scheduler_past_first_pass().await;
    let _worker = s.worker().await;
    // A first round grows Redis's own tables (its keyspace never shrinks
    // back to its empty size: a bare redis-server keeps ~100 KB after 10,000
    // keys come and go) and loads the scripts: the start is a Redis that
    // has already worked, as in production.
    let empty = server.used_memory().await;
    ten_thousand_tasks_trimmed(&s, &server).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.used_memory().await;

    let peak = ten_thousand_tasks_trimmed(&s, &server).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server.used_memory().await;
    println!(
        "Redis used_memory: {empty} B empty, {before} B after a first 10,000 tasks, \
         {peak} B at the peak of the next 10,000, {after} B after their trim"
    );
    assert!(
        after.abs_diff(before) <= before / 10,
        "used_memory {after} B after the trim, {before} B before"
    );
}

#[tokio::test]
async fn a_worker_stopped_past_its_lease_changes_nothing_when_it_wakes() {
    let s = Setup::new().await;
    let _scheduler = s.scheduler_past_first_pass().await;
    let lease = [("TASK_LEASE_SECONDS", "2")];
    let first = s.worker_process("stalled", &lease);
    let created = s.insert_kind(1, "sleep", json!({"ms": 3000}), None).await;
    let id = created[0].id;
    dispatch::push_tasks(&s.pool, &s.jobs, &created)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let task = tasks::get(&s.pool, id).await.unwrap().unwrap();
        if task.status == TaskStatus::Running {
            assert!(task.worker_id.as_deref().unwrap().starts_with("stalled"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal("STOP");
    let _second = s.worker_process("healthy", &lease);

    // The lease runs out, the reconciler hands the task back, the healthy worker runs it.
    let deadline = tokio::time::Instant::now() + LONG;
    let done = loop {
        let task = tasks::get(&s.pool, id).await.unwrap().unwrap();
        if task.status.is_finished() {
            break task;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never finished: {task:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(done.status, TaskStatus::Completed);
    assert!(done.worker_id.as_deref().unwrap().starts_with("healthy"));
    assert_eq!(done.attempts, 2);
    let history = tasks::history(&s.pool, id).await.unwrap();

    // The stalled worker wakes, finishes its sleep and tries to write.
    first.signal("CONT");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = tasks::get(&s.pool, id).await.unwrap().unwrap();
    assert_eq!(after, done, "the late writes changed nothing");
    assert_eq!(tasks::history(&s.pool, id).await.unwrap(), history);
    keel_testing::assert_task_invariants(&s.pool, RECONCILE).await;
}
