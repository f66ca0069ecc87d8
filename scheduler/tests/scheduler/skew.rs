//! Clocks that disagree: processes under libfaketime (`LD_PRELOAD`, the
//! wall clock shifted, the monotonic clock left alone) beside normal ones.
//! PostgreSQL's clock is the one that decides: the scheduler measures its
//! own against it, and the claims compare with `now()` there.

use std::time::Duration;

use chrono::{DateTime, Utc};
use keel_shared::{db::tasks::TaskStatus, queue::dispatch};
use serde_json::json;

use crate::stack::Setup;

/// The environment that runs a process `offset` (`+3s`) off the real time.
fn skewed(offset: &str) -> Vec<(&'static str, String)> {
    let library = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists())
        .expect("libfaketime (Debian's faketime; the test command installs it)");
    vec![
        ("LD_PRELOAD", library.display().to_string()),
        ("FAKETIME", offset.to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ]
}

fn pairs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test]
async fn a_scheduler_3s_ahead_beside_a_normal_one_fires_no_tick_twice() {
    let s = Setup::new().await;
    let schedule = s.schedule("every-second", "* * * * * *").await;
    let mut ahead = skewed("+3s");
    // Its name, in its start line, tells its ticks from the other's.
    ahead.push(("RUST_LOG", "info".to_owned()));
    let mut skewed_scheduler = s.scheduler_with(keel_testing::free_port(), &pairs(&ahead));
    let _normal = s.scheduler();
    s.first_pass().await;
    let _worker = s.worker().await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        skewed_scheduler.wait_exit(Duration::ZERO).await.is_none(),
        "the skewed scheduler runs: {}",
        skewed_scheduler.stderr()
    );

    let runs = s.runs(schedule.id).await;
    assert!(runs.len() >= 6, "ticks fired: {runs:?}");
    for pair in runs.windows(2) {
        assert!(
            pair[0].fire_at < pair[1].fire_at,
            "a tick fired twice: {pair:?}"
        );
    }
    let tasks: Vec<(uuid::Uuid, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT id, scheduled_at, started_at FROM tasks WHERE schedule_id = $1 ORDER BY scheduled_at",
    )
    .bind(schedule.id)
    .fetch_all(&s.pool)
    .await
    .unwrap();
    assert_eq!(tasks.len(), runs.len(), "one task per tick");
    for pair in tasks.windows(2) {
        assert!(pair[0].1 < pair[1].1, "two tasks for one tick: {pair:?}");
    }
    // Due by the database clock: no tick fired before its time, and its task
    // did not start before it either.
    for run in &runs {
        assert!(run.fired_at >= run.fire_at, "a tick fired early: {run:?}");
    }
    for (id, due, started) in &tasks {
        if let Some(started) = started {
            assert!(
                started >= due,
                "task {id} started at {started}, due at {due}"
            );
        }
    }
    let log = skewed_scheduler.stdout();
    assert!(
        log.contains("this host's clock is off the database's"),
        "the skewed scheduler saw its clock 3 s ahead: {log}"
    );
    let by_skewed = runs.iter().filter(|r| log.contains(&r.fired_by)).count();
    // Both raced for every tick: "none early" holds for the skewed one too.
    assert!(
        by_skewed > 0,
        "the skewed scheduler fired no tick: {runs:?}"
    );
    let latest = runs
        .iter()
        .map(|r| (r.fired_at - r.fire_at).num_milliseconds())
        .max()
        .unwrap();
    println!(
        "{} ticks in 10 s, {by_skewed} fired by the scheduler 3 s ahead and the rest by the \
         other; none early by the database clock, the latest {latest} ms after its time",
        runs.len()
    );
}

#[tokio::test]
async fn a_worker_30s_ahead_never_starts_a_task_before_its_time() {
    let s = Setup::new().await;
    let _scheduler = s.scheduler_past_first_pass().await;
    let ahead = skewed("+30s");
    let _worker = s.worker_process("ahead", &pairs(&ahead));
    let mut created = Vec::new();
    for in_ms in [0, 1000, 2000, 3000, 4000, 5000] {
        created.extend(s.insert_kind(5, "noop", json!({}), Some(in_ms)).await);
    }
    dispatch::push_tasks(&s.pool, &s.jobs, &created)
        .await
        .unwrap();

    let all = s.all_finished_within(Duration::from_secs(60)).await;
    assert_eq!(all.len(), 30);
    for task in &all {
        assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
        let started = task.started_at.unwrap();
        assert!(
            started >= task.scheduled_at,
            "started at {started}, due at {} by the database clock",
            task.scheduled_at
        );
    }
    let latest = all
        .iter()
        .map(|t| (t.started_at.unwrap() - t.scheduled_at).num_milliseconds())
        .max()
        .unwrap();
    println!("30 tasks due over 5 s, none early, the latest started {latest} ms after its time");
    // Nor late: the skewed worker's early wake-ups wait for the database's time.
    assert!(latest < 3000, "a task started {latest} ms late");
}
