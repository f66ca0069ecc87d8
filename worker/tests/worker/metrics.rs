//! `/metrics` of a `keel-worker` process after tasks of known outcomes:
//! attempts started, completed, retried and failed by kind, and one run
//! time and one start delay per attempt.

use std::time::Duration;

use keel_shared::db::tasks::{NewTask, TaskStatus};
use keel_testing::{self as testing, ChildGuard, Scrape};
use serde_json::json;

use crate::pipeline::{Pipeline, WORKER_BIN, new_task, noop};

#[tokio::test]
async fn worker_metrics_count_each_attempt_by_kind_and_outcome() {
    let p = Pipeline::new().await;
    let port = testing::free_port();
    let mut command = testing::service_command(WORKER_BIN, &p.db.url, &p.prefix, port);
    command
        .env("RUST_LOG", "warn")
        .env("WORKER_QUEUES", "tasks")
        .env("TASK_RETRY_BASE_MS", "100");
    let _worker = ChildGuard::spawn(command);

    // echo ×3 and noop ×1 complete; fail (two attempts) is retried, then fails.
    let specs = vec![
        new_task("echo", json!({"n": 1})),
        new_task("echo", json!({"n": 2})),
        new_task("echo", json!({"n": 3})),
        new_task("noop", noop()),
        NewTask {
            max_attempts: 2,
            ..new_task("fail", json!({"message": "boom"}))
        },
    ];
    p.create_many(specs).await;
    let done = p.all_finished(Duration::from_secs(30)).await;
    let failed = done
        .iter()
        .filter(|t| t.status == TaskStatus::Failed)
        .count();
    assert_eq!((done.len(), failed), (5, 1), "{done:?}");

    let by_kind = |m: &Scrape, name: &str, kind: &str| m.value(name, &[("kind", kind)]);
    let expected = [
        ("keel_tasks_started_total", "echo", Some(3.0)),
        ("keel_tasks_completed_total", "echo", Some(3.0)),
        ("keel_task_run_seconds_count", "echo", Some(3.0)),
        ("keel_tasks_started_total", "noop", Some(1.0)),
        ("keel_tasks_completed_total", "noop", Some(1.0)),
        ("keel_task_run_seconds_count", "noop", Some(1.0)),
        ("keel_tasks_started_total", "fail", Some(2.0)),
        ("keel_tasks_retried_total", "fail", Some(1.0)),
        ("keel_tasks_failed_total", "fail", Some(1.0)),
        ("keel_task_run_seconds_count", "fail", Some(2.0)),
        ("keel_tasks_completed_total", "fail", None),
        ("keel_tasks_failed_total", "echo", None),
    ];
    let url = format!("http://127.0.0.1:{port}/metrics");
    // The row is written after the counters, so they are normally there already.
    let m = Scrape::fetch_until(&url, Duration::from_secs(10), |m| {
        expected
            .iter()
            .all(|(name, kind, value)| by_kind(m, name, kind) == *value)
    })
    .await;
    let text = m.text();
    for (name, kind, value) in expected {
        assert_eq!(
            by_kind(&m, name, kind),
            value,
            "{name}{{kind={kind:?}}}: {text}"
        );
    }
    assert_eq!(
        m.value("keel_task_start_delay_seconds_count", &[]),
        Some(6.0),
        "one start delay per attempt: {text}"
    );
    assert!(
        !m.has("keel_queue_depth") && !m.has("keel_tasks_created_total"),
        "workers neither sample the queues nor create tasks: {text}"
    );
    assert_eq!(
        m.undescribed(),
        Vec::<&str>::new(),
        "every series has help text: {text}"
    );
}
