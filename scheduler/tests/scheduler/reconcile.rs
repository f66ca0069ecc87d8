//! The reconciler against real Postgres and Redis: a `keel-scheduler`
//! process repairing what a push failure, a Redis wipe or a dead worker
//! left, and a worker (in this process, the same code as `keel-worker`)
//! running what it repaired.

use std::time::Duration;

use keel_shared::{
    db::tasks::{self, TaskStatus},
    queue::dispatch,
};
use uuid::Uuid;

use crate::stack::{LONG, Setup};

#[tokio::test]
async fn tasks_whose_push_failed_run_once_the_reconciler_pushes_them() {
    let s = Setup::new().await;
    let _scheduler = s.scheduler_past_first_pass().await;
    let _worker = s.worker().await;
    // Committed rows whose push never happened (Redis was down, or the API died).
    let created = s.insert(20, None).await;
    let ids: Vec<Uuid> = created.iter().map(|t| t.id).collect();
    tasks::mark_not_enqueued(&s.pool, &ids).await.unwrap();

    for task in s.all_finished().await {
        assert_eq!(task.status, TaskStatus::Completed);
        assert_eq!(task.attempts, 1);
        assert!(task.enqueued_at.is_some(), "marked when pushed");
    }
}

#[tokio::test]
async fn after_redis_loses_everything_every_waiting_task_runs_once() {
    let s = Setup::new().await;
    let _scheduler = s.scheduler_past_first_pass().await;
    // 200 due now and 200 due in 3 s, pushed as the API pushes them, then
    // the prefix's keys wiped (what FLUSHDB does to this deployment).
    let mut created = s.insert(200, None).await;
    created.extend(s.insert(200, Some(3000)).await);
    dispatch::push_tasks(&s.pool, &s.jobs, &created)
        .await
        .unwrap();
    let wiped_at = tokio::time::Instant::now();
    let mut conn = s.redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", s.prefix))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();

    let _worker = s.worker().await;
    let all = s.all_finished().await;
    assert_eq!(all.len(), 400);
    for task in &all {
        assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
        assert_eq!(task.attempts, 1);
        assert_eq!(s.runs_of(task.id).await, 1, "each once");
        assert!(task.started_at.unwrap() >= task.scheduled_at, "never early");
    }
    println!("all 400 done {:?} after the wipe", wiped_at.elapsed());
}

#[tokio::test]
async fn a_task_whose_worker_died_goes_back_to_retrying_and_runs() {
    let s = Setup::new().await;
    let created = s.insert(2, None).await;
    // Both claimed by a worker that is gone (no job left in Redis); the second
    // was on its last attempt.
    for (task, attempts) in created.iter().zip([1, 3]) {
        sqlx::query(
            "UPDATE tasks SET status = 'running', attempts = $2, lease_owner = 'ghost/1', \
             started_at = now() - interval '1 minute', lease_expires_at = now() - interval '10 seconds' \
             WHERE id = $1",
        )
        .bind(task.id)
        .bind(attempts)
        .execute(&s.pool)
        .await
        .unwrap();
    }
    let _scheduler = s.scheduler();
    let _worker = s.worker().await;
    let all = s.all_finished().await;
    let retried = all.iter().find(|t| t.id == created[0].id).unwrap();
    assert_eq!(retried.status, TaskStatus::Completed);
    assert_eq!(retried.attempts, 2);
    let history = tasks::history(&s.pool, retried.id).await.unwrap();
    assert!(
        history.iter().any(
            |e| e.to_status == TaskStatus::Retrying && e.actor.as_deref() == Some("reconciler")
        ),
        "{history:?}"
    );
    let exhausted = all.iter().find(|t| t.id == created[1].id).unwrap();
    assert_eq!(exhausted.status, TaskStatus::Failed);
    assert_eq!(
        exhausted.error.as_deref(),
        Some("the worker stopped during attempt 3 of 3")
    );
}

#[tokio::test]
async fn a_job_lost_after_its_row_was_marked_enqueued_is_found_and_run() {
    let s = Setup::new().await;
    let _scheduler = s.scheduler_past_first_pass().await;
    let _worker = s.worker().await;
    // Marked enqueued at insert, but the pushing process died before the push.
    let lost = s.insert(3, None).await;
    let all = s.all_finished().await;
    assert_eq!(all.len(), 3);
    for task in &all {
        assert_eq!(task.status, TaskStatus::Completed);
        assert_eq!(task.attempts, 1);
        let waited = task.started_at.unwrap() - task.created_at;
        assert!(
            waited.num_seconds() >= 10,
            "found as overdue, not before: {waited}"
        );
    }
    assert!(lost.iter().all(|t| all.iter().any(|a| a.id == t.id)));
}

#[tokio::test]
async fn finished_jobs_are_trimmed_from_redis() {
    let s = Setup::new().await;
    let _worker = s.worker().await;
    let created = s.insert(100, None).await;
    dispatch::push_tasks(&s.pool, &s.jobs, &created)
        .await
        .unwrap();
    s.all_finished().await;
    // The worker acknowledges a job in Redis after its row is finished, so
    // the done set fills a moment after the rows say finished.
    s.wait_kept_jobs(100, "apalis keeps finished jobs").await;

    let config = s.jobs.apalis_config(keel_shared::queue::Queue::Tasks);
    let mut conn = s.redis.conn();
    let _scheduler = s.scheduler();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let (done, data, meta): (u64, u64, Vec<String>) = redis::pipe()
            .scard(config.done_jobs_set())
            .hlen(config.job_data_hash())
            .keys(format!("{}:*", config.job_meta_hash()))
            .query_async(&mut conn)
            .await
            .unwrap();
        if done == 0 && data == 0 && meta.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{done} done, {data} data, {} meta left",
            meta.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_task_past_its_deadline_that_no_worker_reached_ends_expired() {
    let s = Setup::new().await;
    // No worker runs: nothing would ever claim these.
    let created = s.insert(3, None).await;
    let deadline: Vec<Uuid> = created.iter().take(2).map(|t| t.id).collect();
    sqlx::query(
        "UPDATE tasks SET expires_at = now() + interval '300 milliseconds' WHERE id = ANY($1)",
    )
    .bind(&deadline)
    .execute(&s.pool)
    .await
    .unwrap();
    let _scheduler = s.scheduler();
    let deadline_ok = tokio::time::Instant::now() + LONG;
    loop {
        let expired: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'expired'")
                .fetch_one(&s.pool)
                .await
                .unwrap();
        if expired == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline_ok,
            "not expired in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &deadline {
        let task = tasks::get(&s.pool, *id).await.unwrap().unwrap();
        assert_eq!(task.status, TaskStatus::Expired);
        assert_eq!(task.attempts, 0, "it never ran");
        assert!(task.started_at.is_none() && task.finished_at.is_some());
        assert_eq!(task.error.as_deref(), Some("expired before it started"));
    }
    let untouched = tasks::get(&s.pool, created[2].id).await.unwrap().unwrap();
    assert_eq!(
        untouched.status,
        TaskStatus::Pending,
        "no deadline, no expiry"
    );
}

#[tokio::test]
async fn a_cancel_the_reconciler_finishes_reaches_live_views() {
    let s = Setup::new().await;
    let created = s.insert(1, None).await;
    // Cancelled while running on a worker that then died: the API answered 202.
    sqlx::query(
        "UPDATE tasks SET status = 'running', attempts = 1, lease_owner = 'ghost/1', \
         started_at = now() - interval '1 minute', lease_expires_at = now() - interval '10 seconds', \
         cancel_requested_at = now() WHERE id = $1",
    )
    .bind(created[0].id)
    .execute(&s.pool)
    .await
    .unwrap();
    let mut live = s.redis.pubsub().await.unwrap();
    live.subscribe(keel_shared::task_events::channel(&s.redis, s.owner))
        .await
        .unwrap();
    let _scheduler = s.scheduler();
    let mut messages = live.on_message();
    let heard = tokio::time::timeout(LONG, async {
        while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
            let state: serde_json::Value =
                serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
            if state["status"] == "cancelled" {
                return state;
            }
        }
        panic!("the channel closed");
    })
    .await
    .expect("a live update of the cancel");
    assert_eq!(heard["id"], created[0].id.to_string());
}
