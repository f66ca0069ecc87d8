//! Cron ticks through real `keel-scheduler` processes: on time, once per
//! tick however many replicas run (and when one is killed), edits picked
//! up within seconds, one catch-up fire after downtime.

use std::time::Duration;

use chrono::Timelike as _;
use keel_shared::db::{
    schedules::{self, ScheduleSpec},
    tasks::{self, TaskStatus},
};
use keel_testing as testing;
use uuid::Uuid;

use crate::stack::{Run, Setup};

/// Waits until `schedule` has at least `n` fires; returns them.
async fn wait_runs(s: &Setup, schedule: Uuid, n: usize, within: Duration) -> Vec<Run> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let runs = s.runs(schedule).await;
        if runs.len() >= n {
            return runs;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} fires: {runs:?}",
            runs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spec_of(schedule: &schedules::Schedule) -> ScheduleSpec {
    ScheduleSpec {
        name: schedule.name.clone(),
        cron: schedule.cron.clone(),
        timezone: schedule.timezone.clone(),
        kind: schedule.kind.clone(),
        payload: schedule.payload.clone(),
        enabled: schedule.enabled,
        next_run_at: None,
    }
}

#[tokio::test]
async fn an_every_two_seconds_schedule_fires_every_two_seconds_follows_edits_and_stops_when_disabled()
 {
    let s = Setup::new().await;
    let _scheduler = s.scheduler();
    let _worker = s.worker().await;
    let schedule = s.schedule("every 2 s", "*/2 * * * * *").await;

    let runs = wait_runs(&s, schedule.id, 4, Duration::from_secs(30)).await;
    for pair in runs.windows(2) {
        assert_eq!(
            (pair[1].fire_at - pair[0].fire_at).num_seconds(),
            2,
            "{runs:?}"
        );
    }
    for run in &runs {
        assert_eq!(run.fire_at.second() % 2, 0, "on even seconds");
        assert_eq!(run.fire_at.nanosecond(), 0);
        let task = tasks::get(&s.pool, run.task_id.expect("a task per fire"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(task.schedule_id, Some(schedule.id));
        assert_eq!(task.owner_id, s.owner);
        assert_eq!(task.scheduled_at, run.fire_at);
    }
    // The tasks run.
    let first = runs[0].task_id.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tasks::get(&s.pool, first).await.unwrap().unwrap().status != TaskStatus::Completed {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fired task never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shown = schedules::get(&s.pool, schedule.id).await.unwrap().unwrap();
    assert!(shown.last_run_at.is_some() && shown.next_run_at > shown.last_run_at);
    // The built-in schedules are there, each showing its next fire.
    let (all, _) = schedules::list(&s.pool, 100, 0).await.unwrap();
    let system: Vec<_> = all.iter().filter(|s| s.system).collect();
    let names: Vec<&str> = system.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "system.purge_expired",
            "system.purge_finished",
            "system.reconcile",
            "system.sweep_orphans",
            "system.trim_redis"
        ]
    );
    assert!(system.iter().all(|s| s.next_run_at.is_some()), "{system:?}");
    let reconcile = system
        .iter()
        .find(|s| s.name == "system.reconcile")
        .unwrap();
    assert!(reconcile.last_run_at.is_some(), "{reconcile:?}");

    // An edit reaches the replica within 5 s: every 3 s from now on.
    let mut spec = spec_of(&schedule);
    spec.cron = "*/3 * * * * *".into();
    schedules::update(&s.pool, schedule.id, &spec, true)
        .await
        .unwrap()
        .unwrap();
    let edited_at = s.db_now().await;
    // The first fire on the new cron within 5 s, the next 3 s after it.
    let mut on_new = Vec::new();
    for (count, within) in [(1, 5), (2, 4)] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(within);
        while on_new.len() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the edit was not picked up: {on_new:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            on_new = s
                .runs(schedule.id)
                .await
                .into_iter()
                .filter(|r| r.fired_at > edited_at)
                .collect();
        }
    }
    for run in &on_new {
        assert_eq!(run.fire_at.second() % 3, 0, "on the new cron: {on_new:?}");
    }
    assert_eq!((on_new[1].fire_at - on_new[0].fire_at).num_seconds(), 3);

    // Disabled: no fire after the change commits.
    spec.enabled = false;
    schedules::update(&s.pool, schedule.id, &spec, true)
        .await
        .unwrap()
        .unwrap();
    let disabled_at = s.db_now().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let late: Vec<Run> = s
        .runs(schedule.id)
        .await
        .into_iter()
        .filter(|r| r.fired_at > disabled_at)
        .collect();
    assert!(late.is_empty(), "fired after being disabled: {late:?}");
}

#[tokio::test]
async fn two_replicas_fire_each_tick_once_even_when_one_is_killed() {
    let s = Setup::new().await;
    let ports = [testing::free_port(), testing::free_port()];
    let first = s.scheduler_on(ports[0]);
    let _second = s.scheduler_on(ports[1]);
    let _worker = s.worker().await;
    // Four every-second schedules, so 60 s give 200-odd ticks to time.
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(
            s.schedule(&format!("every second {i}"), "* * * * * *")
                .await
                .id,
        );
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    first.signal("KILL");
    let killed_at = s.db_now().await;
    tokio::time::sleep(Duration::from_secs(30)).await;

    let mut lateness = Vec::new();
    let mut replicas = std::collections::HashSet::new();
    for id in &ids {
        let runs = s.runs(*id).await;
        assert!(runs.len() >= 50, "{} fires in 60 s", runs.len());
        // Every second from the first fire to the last, each once.
        let span = (runs.last().unwrap().fire_at - runs[0].fire_at).num_seconds();
        assert_eq!(
            usize::try_from(span).unwrap() + 1,
            runs.len(),
            "a tick was missed or doubled"
        );
        assert!(
            runs.iter().any(|r| r.fire_at > killed_at),
            "fires went on after the kill"
        );
        let task_ids: std::collections::HashSet<Uuid> = runs
            .iter()
            .map(|r| r.task_id.expect("a task per fire"))
            .collect();
        assert_eq!(task_ids.len(), runs.len());
        let made: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks WHERE schedule_id = $1")
            .bind(id)
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(
            usize::try_from(made).unwrap(),
            runs.len(),
            "one task per tick"
        );
        for run in &runs {
            replicas.insert(run.fired_by.clone());
            lateness.push((run.fired_at - run.fire_at).num_microseconds().unwrap());
        }
    }
    assert_eq!(replicas.len(), 2, "both replicas won ticks: {replicas:?}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", ports[1]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("keel_scheduler_ticks_total{outcome=\"fired\"}")
            && metrics.contains("keel_scheduler_ticks_total{outcome=\"lost\"}")
            && metrics.contains("keel_scheduler_tick_lateness_seconds"),
        "{metrics}"
    );
    lateness.sort_unstable();
    let at = |q: f64| lateness[((lateness.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!(
        "tick lateness over {} ticks (fired_at - fire_at, database clock): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lateness.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

#[tokio::test]
async fn after_downtime_a_schedule_fires_once_for_the_missed_period() {
    let s = Setup::new().await;
    // Every minute, last fired five minutes ago, then no scheduler ran:
    // five ticks were missed. Keep clear of the next minute's own tick.
    let schedule = s.schedule("every minute", "0 * * * * *").await;
    if s.db_now().await.second() > 45 {
        tokio::time::sleep(Duration::from_secs(16)).await;
    }
    sqlx::query(
        "UPDATE schedules SET fire_from = now() - interval '1 hour', \
         last_run_at = date_trunc('minute', now()) - interval '5 minutes' WHERE id = $1",
    )
    .bind(schedule.id)
    .execute(&s.pool)
    .await
    .unwrap();
    let started = s.db_now().await;
    let _scheduler = s.scheduler();
    let runs = wait_runs(&s, schedule.id, 1, Duration::from_secs(10)).await;
    // Give a burst the time to show, if there were one.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs_after = s.runs(schedule.id).await;
    assert_eq!(runs_after.len(), 1, "one fire, not a burst: {runs_after:?}");
    let expected = started.with_second(0).unwrap().with_nanosecond(0).unwrap();
    assert_eq!(
        runs[0].fire_at, expected,
        "for the latest missed tick, at once"
    );
    let shown = schedules::get(&s.pool, schedule.id).await.unwrap().unwrap();
    assert_eq!(shown.last_run_at, Some(expected));
    assert_eq!(
        shown.next_run_at,
        Some(expected + chrono::Duration::minutes(1)),
        "then on the timetable"
    );
}

#[tokio::test]
async fn a_claim_wins_once_only_for_a_newer_tick_of_an_enabled_schedule_of_an_active_owner() {
    let s = Setup::new().await;
    let schedule = s.schedule("every second", "* * * * * *").await;
    let now = s.db_now().await.with_nanosecond(0).unwrap();
    let tick = |secs: i64| now + chrono::Duration::seconds(secs);
    let claim = |at, replica: &'static str| {
        let (pool, schedule) = (s.pool.clone(), schedule.clone());
        async move {
            schedules::claim_tick(&pool, &schedule, at, replica)
                .await
                .unwrap()
                .is_some()
        }
    };

    // Two replicas at once: one wins.
    let (a, b) = tokio::join!(claim(tick(2), "a"), claim(tick(2), "b"));
    assert!(a ^ b, "exactly one claim wins: {a} {b}");
    // A replica behind (a stall, a slow clock) cannot fire an older tick.
    assert!(!claim(tick(1), "late").await);
    assert!(claim(tick(3), "a").await);
    // Not before the schedule took effect.
    let before_start = schedule.fire_from - chrono::Duration::seconds(5);
    sqlx::query("UPDATE schedules SET last_tick_at = NULL WHERE id = $1")
        .bind(schedule.id)
        .execute(&s.pool)
        .await
        .unwrap();
    assert!(!claim(before_start, "a").await);
    // Not for a deactivated owner, nor on a stale cron.
    sqlx::query("UPDATE users SET is_active = false WHERE id = $1")
        .bind(s.owner)
        .execute(&s.pool)
        .await
        .unwrap();
    assert!(!claim(tick(4), "a").await);
    sqlx::query("UPDATE users SET is_active = true WHERE id = $1")
        .bind(s.owner)
        .execute(&s.pool)
        .await
        .unwrap();
    let mut stale = schedule.clone();
    stale.cron = "*/2 * * * * *".into();
    assert!(
        schedules::claim_tick(&s.pool, &stale, tick(4), "a")
            .await
            .unwrap()
            .is_none()
    );
    assert!(claim(tick(4), "a").await);
    let fired: Vec<_> = s
        .runs(schedule.id)
        .await
        .iter()
        .map(|r| r.fire_at)
        .collect();
    assert_eq!(fired, [tick(2), tick(3), tick(4)]);
}
