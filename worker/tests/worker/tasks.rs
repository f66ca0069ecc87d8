//! The task pipeline end to end: rows created as the API creates them, real
//! `keel-worker` processes claiming, running, retrying and finishing them.

use std::time::Duration;

use chrono::Utc;
use futures_util::StreamExt as _;
use keel_shared::{
    db::tasks::{self, Task, TaskStatus},
    queue::{Queue, RunTask, dispatch},
    task_events, workers,
};
use serde_json::{Value, json};

use crate::pipeline::{Pipeline, assert_stops_cleanly, new_task, noop, transitions_to};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_task_runs_to_completed_with_its_result_and_history() {
    let p = Pipeline::new().await;
    let _worker = p.worker(&[]);
    let task = p.create("echo", json!({"hello": "world"})).await;
    assert_eq!(task.status, TaskStatus::Pending);

    let done = p.finished(task.id, LONG).await;
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.result, Some(json!({"hello": "world"})));
    assert_eq!(done.attempts, 1);
    assert_eq!(done.progress, 100);
    assert!(done.worker_id.is_some());
    assert!(done.started_at.unwrap() <= done.finished_at.unwrap());
    assert!(done.lease_owner.is_none(), "the lease is released");

    let history = p.history(task.id).await;
    let path: Vec<_> = history.iter().map(|e| e.to_status).collect();
    assert_eq!(
        path,
        [
            TaskStatus::Pending,
            TaskStatus::Running,
            TaskStatus::Completed
        ]
    );
    assert_eq!(history[1].actor, done.worker_id, "the worker is recorded");
}

#[tokio::test]
async fn a_failing_task_retries_with_backoff_then_fails_after_max_attempts() {
    let p = Pipeline::new().await;
    let _worker = p.worker(&[("TASK_RETRY_BASE_MS", "400")]);
    let task = p.create("fail", json!({"message": "boom"})).await;

    let done = p.finished(task.id, LONG).await;
    assert_eq!(done.status, TaskStatus::Failed);
    assert_eq!(done.attempts, 3, "max_attempts, never apalis's 25");
    assert_eq!(done.error.as_deref(), Some("boom"));

    let history = p.history(task.id).await;
    assert_eq!(transitions_to(&history, TaskStatus::Running), 3);
    assert_eq!(transitions_to(&history, TaskStatus::Retrying), 2);
    assert_eq!(transitions_to(&history, TaskStatus::Failed), 1);
    // Backoff: after failed attempt n the next starts no sooner than half of
    // 400 ms × 2^(n-1) (the jitter's floor), and not absurdly later.
    for n in 1..=2 {
        let retrying = history
            .iter()
            .find(|e| e.to_status == TaskStatus::Retrying && e.attempt == n)
            .unwrap();
        let next = history
            .iter()
            .find(|e| e.to_status == TaskStatus::Running && e.attempt == n + 1)
            .unwrap();
        let gap = (next.at - retrying.at).num_milliseconds();
        let floor = 200 * (1 << (n - 1));
        assert!(
            gap >= floor - 5 && gap < floor * 2 + 1500,
            "attempt {n}: waited {gap} ms, expected at least {floor}"
        );
    }
}

#[tokio::test]
async fn a_job_pushed_five_times_runs_once() {
    let p = Pipeline::new().await;
    let task = p.create("sleep", json!({"ms": 1000})).await;
    let duplicates = || {
        (0..5)
            .map(|_| {
                (
                    RunTask {
                        task_id: task.id,
                        run_at: None,
                    },
                    None,
                )
            })
            .collect::<Vec<_>>()
    };
    // Five copies fetched alongside the original, and five more arriving
    // while it runs (they wait out the runner's lease, see it renewed or
    // finished, and drop).
    p.jobs.push_many(duplicates()).await.unwrap();
    let _worker = p.worker(&[("WORKER_CONCURRENCY", "16")]);
    p.running(task.id, LONG).await;
    p.jobs.push_many(duplicates()).await.unwrap();

    let done = p.finished(task.id, LONG).await;
    assert_eq!(done.status, TaskStatus::Completed);
    // Every one of the eleven jobs is handled (acknowledged) before counting runs.
    let done_set = p.jobs.apalis_config(Queue::Tasks).done_jobs_set();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let acked: u64 = redis::cmd("SCARD")
            .arg(&done_set)
            .query_async(&mut p.redis.conn())
            .await
            .unwrap();
        if acked == 11 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {acked} of 11 jobs handled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let done = p.get(task.id).await;
    assert_eq!(done.attempts, 1);
    assert_eq!(
        transitions_to(&p.history(task.id).await, TaskStatus::Running),
        1
    );
}

#[tokio::test]
async fn cancel_racing_claims_never_runs_a_cancelled_task() {
    let p = Pipeline::new().await;
    let _worker = p.worker(&[("WORKER_CONCURRENCY", "8")]);
    let created = p
        .create_many(
            (0..100)
                .map(|_| new_task("sleep", json!({"ms": 20})))
                .collect(),
        )
        .await;
    let cancels = futures_util::future::join_all(
        created
            .iter()
            .map(|t| tasks::cancel(&p.pool, t.id, "tester")),
    )
    .await;

    let all = p.all_finished(LONG).await;
    let mut cancelled = 0;
    for (task, cancel) in created.iter().zip(cancels) {
        let row = all.iter().find(|t| t.id == task.id).unwrap();
        let ran = transitions_to(&p.history(task.id).await, TaskStatus::Running);
        match cancel.unwrap() {
            Some(_) => {
                cancelled += 1;
                assert_eq!(row.status, TaskStatus::Cancelled);
                assert_eq!((ran, row.attempts), (0, 0), "a cancelled task never ran");
            }
            None => {
                assert_eq!(row.status, TaskStatus::Completed);
                assert_eq!(ran, 1);
            }
        }
    }
    assert!(cancelled > 0, "some cancels should win the race");
}

#[tokio::test]
async fn a_killed_worker_s_tasks_complete_elsewhere_with_the_attempt_counted() {
    let p = Pipeline::new().await;
    let first = p.worker(&[("WORKER_CONCURRENCY", "8")]);
    let created = p.sleeping(6, 2500, LONG).await;
    first.signal("KILL");
    drop(first);
    let _second = p.worker(&[("WORKER_CONCURRENCY", "8")]);

    for task in &created {
        let done = p.finished(task.id, Duration::from_secs(60)).await;
        assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
        assert_eq!(done.attempts, 2, "the killed attempt counts");
        assert!(done.attempts <= done.max_attempts);
    }
}

#[tokio::test]
async fn sigterm_lets_running_tasks_finish_then_exits_0() {
    let p = Pipeline::new().await;
    let mut worker = p.worker(&[]);
    let created = p.sleeping(3, 1500, LONG).await;
    assert_stops_cleanly(&mut worker, "TERM", Duration::from_secs(15)).await;
    for task in &created {
        let row = p.get(task.id).await;
        assert_eq!(row.status, TaskStatus::Completed, "drained, not dropped");
        assert_eq!(row.attempts, 1);
    }
}

#[tokio::test]
async fn sigterm_past_the_grace_hands_running_tasks_back() {
    let p = Pipeline::new().await;
    let mut worker = p.worker(&[("SHUTDOWN_GRACE_SECONDS", "1")]);
    let task = p.create("sleep", json!({"ms": 4000})).await;
    p.running(task.id, LONG).await;
    assert_stops_cleanly(&mut worker, "TERM", Duration::from_secs(10)).await;

    let handed_back = p.get(task.id).await;
    assert_eq!(handed_back.status, TaskStatus::Pending);
    assert_eq!(
        handed_back.attempts, 0,
        "a handed-back attempt is not counted"
    );
    let _next = p.worker(&[]);
    let done = p.finished(task.id, LONG).await;
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.attempts, 1);
}

#[tokio::test]
async fn a_scheduled_task_never_starts_before_its_time() {
    let p = Pipeline::new().await;
    let _worker = p.worker(&[]);
    let now = p.db_now().await;
    let specs = (0..5)
        .map(|i| {
            let mut spec = new_task("noop", noop());
            spec.scheduled_at = Some(now + chrono::Duration::milliseconds(1200 + 350 * i));
            spec
        })
        .collect();
    let created = p.create_many(specs).await;
    for task in &created {
        let done = p.finished(task.id, LONG).await;
        let started = done.started_at.unwrap();
        assert!(
            started >= done.scheduled_at,
            "started {started} before {}",
            done.scheduled_at
        );
        let late = (started - done.scheduled_at).num_milliseconds();
        assert!(late < 1000, "started {late} ms late");
    }
}

#[tokio::test]
async fn a_task_that_kills_its_worker_fails_after_max_attempts() {
    let p = Pipeline::new().await;
    let mut poison = new_task("abort", json!({}));
    poison.max_attempts = 2;
    let mut created = p.create_many(vec![poison]).await;
    let poison = created.remove(0);
    let normal = p
        .create_many((0..20).map(|_| new_task("noop", noop())).collect())
        .await;

    // Like systemd: start the worker again whenever it dies.
    let env = [("ENABLE_TEST_KINDS", "true"), ("WORKER_CONCURRENCY", "4")];
    let mut worker = p.worker(&env);
    let mut crashes = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let row = p.get(poison.id).await;
        if row.status.is_finished() {
            break;
        }
        if worker.wait_exit(Duration::from_millis(100)).await.is_some() {
            crashes += 1;
            worker = p.worker(&env);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "poison task still {row:?}"
        );
    }
    let row = p.get(poison.id).await;
    assert_eq!(row.status, TaskStatus::Failed);
    assert_eq!(row.attempts, 2);
    assert_eq!(
        row.error.as_deref(),
        Some("the worker stopped during attempt 2 of 2")
    );
    assert_eq!(crashes, 2, "one crash per attempt, none after");
    for task in &normal {
        assert_eq!(
            p.finished(task.id, LONG).await.status,
            TaskStatus::Completed
        );
    }
}

#[tokio::test]
async fn progress_is_written_and_every_change_is_published() {
    let p = Pipeline::new().await;
    let mut pubsub = p.redis.pubsub().await.unwrap();
    pubsub
        .subscribe(task_events::channel(&p.redis, p.owner))
        .await
        .unwrap();
    let _worker = p.worker(&[]);
    let task = p.create("sleep", json!({"ms": 1200})).await;

    let mid = p
        .wait_for(task.id, LONG, |t| t.progress > 0 && t.progress < 100)
        .await;
    assert_eq!(mid.status, TaskStatus::Running);
    p.finished(task.id, LONG).await;

    let mut seen: Vec<Value> = Vec::new();
    let mut messages = pubsub.on_message();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), messages.next()).await
    {
        seen.push(serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap());
    }
    assert!(seen.iter().all(|m| m["id"] == json!(task.id)), "{seen:?}");
    let statuses: Vec<&str> = seen.iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(statuses.first(), Some(&"running"), "{seen:?}");
    assert_eq!(statuses.last(), Some(&"completed"), "{seen:?}");
    assert!(
        seen.iter()
            .any(|m| m["status"] == "running" && m["progress"].as_i64().unwrap() > 0),
        "progress is published: {seen:?}"
    );
}

#[tokio::test]
async fn a_task_over_its_timeout_fails_with_a_timeout_error() {
    let p = Pipeline::new().await;
    let _worker = p.worker(&[]);
    let mut spec = new_task("sleep", json!({"ms": 10_000}));
    spec.timeout_seconds = 1;
    spec.max_attempts = 1;
    let task = p.create_many(vec![spec]).await.remove(0);
    let done = p.finished(task.id, LONG).await;
    assert_eq!(done.status, TaskStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("timed out after 1s"));
    let ran = (done.finished_at.unwrap() - done.started_at.unwrap()).num_milliseconds();
    assert!((1000..3000).contains(&ran), "ran {ran} ms");
}

#[tokio::test]
async fn http_request_calls_an_allowed_host_and_keeps_status_and_body() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0; 65536];
            let n = socket.read(&mut buf).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let reply = if request.starts_with("GET /down") {
                "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown"
            } else {
                "HTTP/1.1 201 Created\r\ncontent-length: 7\r\nconnection: close\r\n\r\ncreated"
            };
            let _ = seen_tx.send(request);
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    });
    let p = Pipeline::new().await;
    let allowed = format!("127.0.0.1:{port}");
    let _worker = p.worker(&[("TASK_HTTP_ALLOWED_HOSTS", &allowed)]);

    let ok = p
        .create(
            "http_request",
            json!({"method": "POST", "url": format!("http://127.0.0.1:{port}/hook"),
                   "headers": {"x-token": "abc"}, "body": {"n": 1}}),
        )
        .await;
    let done = p.finished(ok.id, LONG).await;
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
    assert_eq!(
        done.result,
        Some(json!({"status": 201, "body": "created", "truncated": false}))
    );
    let request = seen_rx.recv().await.unwrap();
    assert!(request.starts_with("POST /hook"), "{request}");
    assert!(request.contains("x-token: abc"), "{request}");
    assert!(request.ends_with(r#"{"n":1}"#), "{request}");

    let mut down = new_task(
        "http_request",
        json!({"method": "GET", "url": format!("http://127.0.0.1:{port}/down")}),
    );
    down.max_attempts = 2;
    let down = p.create_many(vec![down]).await.remove(0);
    let done = p.finished(down.id, LONG).await;
    assert_eq!(done.status, TaskStatus::Failed);
    assert_eq!(done.attempts, 2, "a 503 is retried");
    assert!(done.error.unwrap().contains("503"));

    // A host outside the list fails for good, without a call.
    let elsewhere = p
        .create(
            "http_request",
            json!({"method": "GET", "url": "http://127.0.0.2:9/"}),
        )
        .await;
    let done = p.finished(elsewhere.id, LONG).await;
    assert_eq!(done.status, TaskStatus::Failed);
    assert_eq!(done.attempts, 1);
    assert!(done.error.unwrap().contains("TASK_HTTP_ALLOWED_HOSTS"));
}

#[tokio::test]
async fn the_worker_card_counts_in_flight_processed_and_failed() {
    let p = Pipeline::new().await;
    let worker = p.worker(&[]);
    let mut fail = new_task("fail", json!({}));
    fail.max_attempts = 1;
    let mut specs: Vec<_> = (0..5).map(|_| new_task("noop", noop())).collect();
    specs.push(fail);
    p.create_many(specs).await;
    p.all_finished(LONG).await;

    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let cards = workers::list_alive(&p.redis).await.unwrap();
        if let Some(card) = cards.iter().find(|c| c.pid == worker.pid())
            && card.processed == 6
        {
            assert_eq!(card.failed, 1);
            assert_eq!(card.in_flight, 0);
            assert_eq!(card.version, env!("CARGO_PKG_VERSION"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "card never counted: {cards:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_lost_redis_registration_restarts_the_queue_under_a_new_name() {
    let p = Pipeline::new().await;
    let _worker = p.worker(&[]);
    p.finished_noop(LONG).await;

    // apalis ends a worker whose registration is gone (as after a Redis
    // restart); the supervisor must bring the queue back under a new name.
    let workers_set = p.jobs.apalis_config(Queue::Tasks).workers_set();
    let _: () = redis::cmd("DEL")
        .arg(&workers_set)
        .query_async(&mut p.redis.conn())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let second = p.create("noop", noop()).await;
    let done = p.finished(second.id, LONG).await;
    assert_eq!(done.status, TaskStatus::Completed);
    let names: Vec<String> = redis::cmd("ZRANGE")
        .arg(&workers_set)
        .arg(0)
        .arg(-1)
        .query_async(&mut p.redis.conn())
        .await
        .unwrap();
    assert!(
        names.iter().any(|n| !n.ends_with("-tasks-0")),
        "restarted under a new name: {names:?}"
    );
    let _ = Utc::now();
}

#[tokio::test]
async fn deleting_a_user_deletes_their_tasks_and_history() {
    let p = Pipeline::new().await;
    let _worker = p.worker(&[]);
    let task = p.finished_noop(LONG).await;
    assert_eq!(p.history(task.id).await.len(), 3);

    assert!(
        keel_shared::db::users::delete(&p.pool, p.owner)
            .await
            .unwrap()
    );
    assert!(tasks::get(&p.pool, task.id).await.unwrap().is_none());
    assert!(
        p.history(task.id).await.is_empty(),
        "no history left behind"
    );
}

#[tokio::test]
async fn ten_thousand_jobs_pushed_at_once_to_a_running_worker_all_run() {
    // One push of more due jobs than apalis's fetch can promote (about
    // 8,000), straight at a worker that is already fetching: the fetch may
    // reach them before Keel's promoter does and end the apalis worker; the
    // supervisor drains the due set and starts a new one.
    let p = Pipeline::new().await;
    let _worker = p.worker(&[("WORKER_CONCURRENCY", "64")]);
    p.finished_noop(LONG).await;
    let mut rows = Vec::new();
    for _ in 0..5 {
        let specs: Vec<_> = (0..2000).map(|_| new_task("noop", noop())).collect();
        rows.extend(
            tasks::insert_many(&p.pool, p.owner, "test", &specs)
                .await
                .unwrap(),
        );
    }
    dispatch::push_tasks(&p.pool, &p.jobs, &rows).await.unwrap();
    let done = p.all_finished(Duration::from_secs(120)).await;
    assert_eq!(done.len(), 10_001);
    assert!(
        done.iter()
            .all(|t| t.status == TaskStatus::Completed && t.attempts == 1),
        "each ran once, to completion"
    );
}

/// Pauses the `tasks` queue, creates a `noop` task, checks that it is still
/// pending `held_for` later, and resumes the queue; returns the task.
async fn held_by_a_pause(p: &Pipeline, held_for: Duration) -> Task {
    p.jobs.set_paused(Queue::Tasks, true).await.unwrap();
    // The worker sees the flag within a second or so; give it the promised 5 s at most.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = p.create("noop", noop()).await;
    tokio::time::sleep(held_for).await;
    assert_eq!(p.get(held.id).await.status, TaskStatus::Pending, "paused");
    p.jobs.set_paused(Queue::Tasks, false).await.unwrap();
    held
}

#[tokio::test]
async fn a_paused_queue_takes_no_jobs_until_resumed() {
    let p = Pipeline::new().await;
    let _worker = p.worker(&[]);
    p.finished_noop(LONG).await;

    let held = held_by_a_pause(&p, Duration::from_secs(2)).await;
    let done = p.finished(held.id, LONG).await;
    assert_eq!(done.status, TaskStatus::Completed);
}

/// A pause lets the jobs in flight finish, but a resume must not wait for
/// them: a long task running through a pause and a resume does not hold
/// back the tasks created after.
#[tokio::test]
async fn a_resumed_queue_runs_new_tasks_while_a_long_one_from_before_the_pause_runs_on() {
    let p = Pipeline::new().await;
    let _worker = p.worker(&[]);
    let long = p.create("sleep", json!({"ms": 15_000})).await;
    p.running(long.id, LONG).await;

    let held = held_by_a_pause(&p, Duration::from_secs(1)).await;
    let done = p.finished(held.id, Duration::from_secs(5)).await;
    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(
        p.get(long.id).await.status,
        TaskStatus::Running,
        "the new task ran while the long one was still running"
    );
    let long = p.finished(long.id, LONG).await;
    assert_eq!(
        long.status,
        TaskStatus::Completed,
        "the paused worker finished its job"
    );
    assert_eq!(long.attempts, 1);
}

#[tokio::test]
async fn a_backlog_of_twelve_thousand_jobs_queued_before_any_worker_is_drained() {
    // apalis promotes every due job in one Lua `unpack`, which fails past
    // about 8,000 ids: without Keel's chunked promotion this backlog would
    // stall the queue for good.
    let p = Pipeline::new().await;
    let n = 12_000;
    for _ in 0..n / 2000 {
        p.create_many((0..2000).map(|_| new_task("noop", noop())).collect())
            .await;
    }
    let queued: u64 = redis::cmd("ZCARD")
        .arg(p.jobs.apalis_config(Queue::Tasks).scheduled_jobs_set())
        .query_async(&mut p.redis.conn())
        .await
        .unwrap();
    assert_eq!(queued, n, "every job waits in Redis before a worker starts");
    let _worker = p.worker(&[("WORKER_CONCURRENCY", "64")]);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let completed: i64 =
            sqlx::query_scalar("SELECT count(*) FROM tasks WHERE status = 'completed'")
                .fetch_one(&p.pool)
                .await
                .unwrap();
        if completed == i64::try_from(n).unwrap() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {completed} of {n} completed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let attempts: i64 = sqlx::query_scalar("SELECT max(attempts)::bigint FROM tasks")
        .fetch_one(&p.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 1, "each ran once");
}
