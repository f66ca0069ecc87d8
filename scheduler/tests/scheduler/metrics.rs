//! `/metrics` of a `keel-scheduler` process: ticks fired, the reconciler's
//! repairs, the task a schedule's fire created, and the queue and worker
//! gauges it samples at scrape time — each at its exact value.

use std::time::Duration;

use chrono::{Datelike as _, Timelike as _};
use keel_shared::db::tasks;
use keel_testing::{self as testing, Scrape};

use crate::stack::Setup;

/// A series, its labels, its value, and why that value.
type Expected = (
    &'static str,
    &'static [(&'static str, &'static str)],
    f64,
    &'static str,
);

#[tokio::test]
async fn scheduler_metrics_count_ticks_repairs_and_fires_and_sample_the_queues() {
    let s = Setup::new().await;
    // Before the scheduler starts, so its first reconcile pass finds them
    // all. That pass also finds no sentinel — Redis looks wiped — and pushes
    // every waiting task again.
    s.insert(2, Some(-60_000)).await; // pending, due a minute ago
    s.insert(1, Some(3_600_000)).await; // scheduled an hour ahead
    let running = s.insert(2, None).await;
    let ids: Vec<_> = running.iter().map(|t| t.id).collect();
    let lease = Duration::from_secs(3600);
    assert_eq!(
        tasks::claim(&s.pool, &ids, "gone", lease)
            .await
            .unwrap()
            .len(),
        2
    );
    // The second one's worker died a minute ago: the pass makes it `retrying`.
    sqlx::query("UPDATE tasks SET lease_expires_at = now() - interval '1 minute' WHERE id = $1")
        .bind(ids[1])
        .execute(&s.pool)
        .await
        .unwrap();

    let port = testing::free_port();
    let _scheduler = s.scheduler_on(port);
    // Alive, and takes no task.
    let _worker = s.worker_process("mail-only", &[("WORKER_QUEUES", "email")]);
    s.first_pass().await;

    // A schedule that fires once, three seconds from now (the next is a year away).
    let at = s.db_now().await + chrono::Duration::seconds(3);
    let cron = format!(
        "{} {} {} {} {} *",
        at.second(),
        at.minute(),
        at.hour(),
        at.day(),
        at.month()
    );
    let once = s.schedule_of("once", &cron, "echo").await;

    let expected: &[Expected] = &[
        (
            "keel_tasks_created_total",
            &[("kind", "echo")],
            1.0,
            "the fire's task",
        ),
        (
            "keel_reconciler_repairs_total",
            &[("what", "task_pushed")],
            3.0,
            "the waiting tasks, pushed again",
        ),
        (
            "keel_reconciler_repairs_total",
            &[("what", "lease_expired")],
            1.0,
            "the dead worker's task",
        ),
        (
            "keel_reconciler_repairs_total",
            &[("what", "email_pushed")],
            0.0,
            "no email",
        ),
        (
            "keel_reconciler_redis_losses_total",
            &[],
            1.0,
            "the first pass found no sentinel",
        ),
        (
            "keel_scheduler_schedules",
            &[],
            6.0,
            "five built-in and `once`",
        ),
        (
            "keel_queue_depth",
            &[("queue", "tasks"), ("state", "pending")],
            4.0,
            "two overdue, the retrying one, the fire's",
        ),
        (
            "keel_queue_depth",
            &[("queue", "tasks"), ("state", "scheduled")],
            1.0,
            "the one an hour ahead",
        ),
        (
            "keel_queue_depth",
            &[("queue", "tasks"), ("state", "running")],
            1.0,
            "the one under a live lease",
        ),
        (
            "keel_queue_redis_jobs",
            &[("queue", "tasks"), ("state", "scheduled")],
            5.0,
            "three re-pushed, the retry, the fire's",
        ),
        ("keel_workers_alive", &[], 1.0, "the mail-only worker"),
    ];
    // Ticks fired is exact when no fire committed while the scrape was taken.
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (m, fires) = loop {
        let before = fire_count(&s).await;
        let m = Scrape::fetch(&url).await;
        let fires = fire_count(&s).await;
        let settled = before == fires
            && m.value("keel_scheduler_ticks_total", &[("outcome", "fired")]) == Some(fires)
            && expected
                .iter()
                .all(|(name, labels, value, _)| m.value(name, labels) == Some(*value));
        if settled || tokio::time::Instant::now() >= deadline {
            break (m, fires);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = m.text();

    assert_eq!(s.runs(once.id).await.len(), 1, "`once` fired once");
    assert_eq!(
        m.value("keel_scheduler_ticks_total", &[("outcome", "fired")]),
        Some(fires),
        "one per schedule_runs row: {text}"
    );
    for (name, labels, value, why) in expected {
        assert_eq!(
            m.value(name, labels),
            Some(*value),
            "{name}{labels:?}: {why}: {text}"
        );
    }
    assert_eq!(
        m.value("keel_tasks_created_total", &[("kind", "noop")]),
        None,
        "the reconciler's pushes create nothing: {text}"
    );
    let oldest = m
        .value("keel_queue_oldest_pending_seconds", &[("queue", "tasks")])
        .expect("the oldest pending task's age");
    assert!(
        (60.0..90.0).contains(&oldest),
        "due a minute before the test: {oldest}"
    );
    assert!(
        m.value("keel_scheduler_tick_lateness_seconds_count", &[]) >= Some(fires),
        "one lateness per fire: {text}"
    );
    assert_eq!(
        m.undescribed(),
        Vec::<&str>::new(),
        "every series has help text: {text}"
    );
}

/// Ticks claimed so far, by every schedule.
async fn fire_count(s: &Setup) -> f64 {
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM schedule_runs")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    n as f64
}
