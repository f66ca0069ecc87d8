//! Workers and Redis dying under load — SIGKILLed workers, Redis shut down
//! without saving — lose no accepted task, run none past `max_attempts`,
//! and repeat no effect: each test checks every task, and `http_request`
//! probes whose deliveries an [`EffectSink`] counts by key.

use std::{collections::HashMap, time::Duration};

use keel_shared::{
    db::tasks::{Task, TaskStatus},
    queue::dispatch,
};
use keel_testing::{ChildGuard, RedisServer};
use serde_json::json;
use uuid::Uuid;

use crate::stack::{EffectSink, Setup};

/// Attempts a task may take here: more than the kills can cost it, so
/// every task can complete, and a bound the tests check.
const MAX_ATTEMPTS: i32 = 5;

/// `sleeps` short `sleep` tasks and `probes` probes, shuffled together;
/// returns the tasks and each probe's key with its task id.
async fn mixed_load(
    s: &Setup,
    sink: &EffectSink,
    sleeps: usize,
    probes: usize,
) -> (Vec<Task>, Vec<(String, Uuid)>) {
    let keys: Vec<String> = (0..probes).map(|_| Uuid::new_v4().to_string()).collect();
    let mut specs: Vec<(&str, serde_json::Value)> = (0..sleeps)
        .map(|i| ("sleep", json!({"ms": 10 + i % 50})))
        .collect();
    // One probe every `sleeps / probes` sleeps, so kills catch some mid-flight.
    let every = (sleeps / probes.max(1)).max(1);
    for (i, key) in keys.iter().enumerate() {
        specs.insert(
            (i * (every + 1)).min(specs.len()),
            ("http_request", sink.probe(key)),
        );
    }
    let created = s.insert_each(&specs, MAX_ATTEMPTS).await;
    let probe_ids = created
        .iter()
        .filter(|t| t.kind == "http_request")
        .map(|t| {
            let url = t.payload["url"].as_str().unwrap();
            (url.rsplit('/').next().unwrap().to_owned(), t.id)
        })
        .collect();
    for chunk in created.chunks(1000) {
        dispatch::push_tasks(&s.pool, &s.jobs, chunk).await.unwrap();
    }
    (created, probe_ids)
}

/// Every task completed within `max_attempts`; every probe's effect
/// happened, delivered once per attempt at most — so exactly once for a
/// probe that ran once. Returns how many tasks needed more than one attempt.
fn assert_all_done_each_effect_once(
    all: &[Task],
    expected: usize,
    sink: &EffectSink,
    probes: &[(String, Uuid)],
) -> usize {
    assert_eq!(all.len(), expected);
    for task in all {
        assert_eq!(task.status, TaskStatus::Completed, "{task:?}");
        assert!(task.attempts <= task.max_attempts, "{task:?}");
    }
    let by_id: HashMap<Uuid, &Task> = all.iter().map(|t| (t.id, t)).collect();
    let deliveries = sink.deliveries();
    assert_eq!(deliveries.len(), probes.len(), "every effect, no other");
    for (key, id) in probes {
        let attempts = u32::try_from(by_id[id].attempts).unwrap();
        let times = deliveries.get(key).copied().unwrap_or(0);
        assert!(times >= 1, "probe {key} never delivered");
        assert!(
            times <= attempts,
            "probe {key}: {times} deliveries in {attempts} attempts"
        );
        if attempts == 1 {
            assert_eq!(
                times, 1,
                "probe {key} ran once but was delivered {times} times"
            );
        }
    }
    all.iter().filter(|t| t.attempts > 1).count()
}

fn worker_env(concurrency: &str) -> [(&'static str, String); 4] {
    [
        ("WORKER_CONCURRENCY", concurrency.to_owned()),
        ("TASK_LEASE_SECONDS", "2".to_owned()),
        ("TASK_HTTP_ALLOWED_HOSTS", "127.0.0.1".to_owned()),
        ("RUST_LOG", "error".to_owned()),
    ]
}

/// Waits until `percent` % of the `total` tasks are finished, by `deadline`.
async fn wait_finished_share(s: &Setup, total: i64, percent: i64, deadline: tokio::time::Instant) {
    while s.finished_count().await * 100 < total * percent {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck before {percent} %"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn spawn_worker(s: &Setup, name: &str) -> ChildGuard {
    let env = worker_env("16");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s.worker_process(name, &env)
}

#[tokio::test]
async fn three_workers_one_killed_three_times_lose_and_repeat_nothing() {
    let s = Setup::new().await;
    let _scheduler = s.scheduler_past_first_pass().await;
    let sink = EffectSink::start().await;
    let (created, probes) = mixed_load(&s, &sink, 10_000, 500).await;
    let total = i64::try_from(created.len()).unwrap();

    let _steady = [spawn_worker(&s, "steady-1"), spawn_worker(&s, "steady-2")];
    let mut victim = spawn_worker(&s, "victim-0");
    let started = tokio::time::Instant::now();
    for (kill, percent) in [15, 40, 65].into_iter().enumerate() {
        wait_finished_share(&s, total, percent, started + Duration::from_secs(180)).await;
        victim.signal("KILL");
        let status = victim
            .wait_exit(Duration::from_secs(5))
            .await
            .expect("killed");
        assert!(!status.success(), "SIGKILL ends the worker");
        println!("killed the victim at {percent} % ({:?})", started.elapsed());
        // A new process has a new name, as `WORKER_NAME` must be unique.
        victim = spawn_worker(&s, &format!("victim-{}", kill + 1));
    }

    let all = s.all_finished_within(Duration::from_secs(180)).await;
    let retried = assert_all_done_each_effect_once(&all, created.len(), &sink, &probes);
    println!(
        "{} tasks done in {:?}; {retried} needed another attempt after the kills",
        all.len(),
        started.elapsed()
    );
    assert!(retried > 0, "the kills interrupted running tasks");
}

#[tokio::test]
async fn redis_shut_down_at_30_percent_and_back_empty_loses_and_repeats_nothing() {
    let mut server = RedisServer::start().await;
    let s = Setup::with_own_redis(&server).await;
    let _scheduler = s.scheduler_past_first_pass().await;
    let sink = EffectSink::start().await;
    let (created, probes) = mixed_load(&s, &sink, 3_000, 300).await;
    let total = i64::try_from(created.len()).unwrap();

    let mut workers = [spawn_worker(&s, "w1"), spawn_worker(&s, "w2")];
    let pids: Vec<u32> = workers.iter().map(ChildGuard::pid).collect();
    let started = tokio::time::Instant::now();
    wait_finished_share(&s, total, 30, started + Duration::from_secs(120)).await;
    // The connection drops as the server goes: no answer to wait for.
    let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN")
        .arg("NOSAVE")
        .query_async(&mut server.conn().await)
        .await;
    let at = s.finished_count().await;
    println!("Redis shut down at {at} of {total} finished");
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().await;

    let all = s.all_finished_within(Duration::from_secs(120)).await;
    let retried = assert_all_done_each_effect_once(&all, created.len(), &sink, &probes);
    println!(
        "{} tasks done in {:?}, {retried} with more than one attempt",
        all.len(),
        started.elapsed()
    );
    for (worker, pid) in workers.iter_mut().zip(pids) {
        assert!(
            worker.wait_exit(Duration::ZERO).await.is_none(),
            "worker {pid} recovered in its own process"
        );
        assert_eq!(worker.pid(), pid);
    }
}

#[tokio::test]
async fn a_kind_that_aborts_its_worker_fails_after_exactly_max_attempts_and_the_rest_complete() {
    let s = Setup::new().await;
    let _scheduler = s.scheduler_past_first_pass().await;
    let poison = s.insert_each(&[("abort", json!({}))], 3).await.remove(0);
    let normal = s.insert(1000, None).await;
    dispatch::push_tasks(&s.pool, &s.jobs, std::slice::from_ref(&poison))
        .await
        .unwrap();
    dispatch::push_tasks(&s.pool, &s.jobs, &normal)
        .await
        .unwrap();

    // Like systemd: start the worker again whenever it dies.
    let env = [
        ("ENABLE_TEST_KINDS", "true"),
        ("WORKER_CONCURRENCY", "8"),
        ("TASK_LEASE_SECONDS", "2"),
        ("RUST_LOG", "error"),
    ];
    let mut worker = s.worker_process("crashy-0", &env);
    let mut crashes = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !keel_shared::db::tasks::get(&s.pool, poison.id)
        .await
        .unwrap()
        .unwrap()
        .status
        .is_finished()
    {
        if worker.wait_exit(Duration::from_millis(100)).await.is_some() {
            crashes += 1;
            worker = s.worker_process(&format!("crashy-{crashes}"), &env);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poison task never ended"
        );
    }
    let all = s.all_finished_within(Duration::from_secs(120)).await;
    let poison = all.iter().find(|t| t.id == poison.id).unwrap();
    assert_eq!(poison.status, TaskStatus::Failed, "{poison:?}");
    assert_eq!(poison.attempts, 3, "{poison:?}");
    assert_eq!(crashes, 3, "one crash per attempt, none after");
    let completed = all
        .iter()
        .filter(|t| t.status == TaskStatus::Completed)
        .count();
    assert_eq!(completed, 1000, "the normal tasks beside it");
    println!("poison: {:?}; 1,000 normal tasks completed", poison.error);
}
