//! The API through outages — Redis stopped, the API itself SIGKILLed in a
//! burst, PostgreSQL down for 20 s: a `2xx` always means the task runs, an
//! outage is a quick 503 problem, and every process recovers by itself.

use std::{collections::HashSet, time::Duration};

use keel_shared::{
    db::tasks::{self, TaskStatus},
    queue::Queue,
};
use keel_testing::{self as testing, PostgresServer, RedisServer};
use serde_json::Value;
use uuid::Uuid;

use crate::stack::{ApiProcess, Setup, create_noop};

/// How long one `POST /tasks` may take while Redis is down.
const CREATE_WITH_REDIS_DOWN: Duration = Duration::from_secs(2);

#[tokio::test]
async fn with_redis_stopped_200_creates_answer_201_within_2s_and_all_run_after() {
    let mut server = RedisServer::start().await;
    let s = Setup::with_own_redis(&server).await;
    let api = s.api_process(&[]).await;
    let token = api.token().await;
    let _scheduler = s.scheduler_past_first_pass().await;
    let _worker = s.worker_process("w", &[("RUST_LOG", "error")]);
    // A first task run end to end: the worker is up before Redis goes.
    assert_eq!(api.create_task(&token).await.unwrap().status(), 201);
    s.all_finished_within(Duration::from_secs(30)).await;

    server.stop();
    // Ten clients, twenty creates each.
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (client, base, token) = (api.client.clone(), api.base.clone(), token.clone());
        clients.spawn(async move {
            let mut answers = Vec::new();
            for _ in 0..20 {
                let started = tokio::time::Instant::now();
                let response = create_noop(&client, &base, &token)
                    .await
                    .expect("an answer");
                let took = started.elapsed();
                let status = response.status();
                let body: Value = response.json().await.unwrap();
                answers.push((status, took, body));
            }
            answers
        });
    }
    let mut slowest = Duration::ZERO;
    let mut ids = Vec::new();
    while let Some(answers) = clients.join_next().await {
        for (status, took, body) in answers.unwrap() {
            assert_eq!(status, 201, "{body}");
            assert!(took < CREATE_WITH_REDIS_DOWN, "a create took {took:?}");
            slowest = slowest.max(took);
            ids.push(body["id"].as_str().unwrap().parse::<Uuid>().unwrap());
        }
    }
    assert_eq!(ids.len(), 200);
    println!("200 creates with Redis down, the slowest in {slowest:?}");
    let waiting = tasks::get(&s.pool, ids[0]).await.unwrap().unwrap();
    assert_eq!(waiting.status, TaskStatus::Pending);

    server.restart().await;
    let all = s.all_finished_within(Duration::from_secs(60)).await;
    assert_eq!(all.len(), 201);
    assert!(
        all.iter()
            .all(|t| t.status == TaskStatus::Completed && t.attempts == 1)
    );
}

/// The task ids in the jobs Redis holds for the `tasks` queue.
async fn task_ids_in_redis(s: &Setup) -> Vec<Uuid> {
    let config = s.jobs.apalis_config(Queue::Tasks);
    let data: Vec<String> = redis::cmd("HVALS")
        .arg(config.job_data_hash())
        .query_async(&mut s.redis.conn())
        .await
        .unwrap();
    data.iter()
        .map(|job| {
            let at = job.find("task_id").expect("a RunTask job") + "task_id".len();
            let start = at + job[at..].find(|c: char| c.is_ascii_hexdigit()).unwrap();
            job[start..start + 36].parse().expect("a task id")
        })
        .collect()
}

#[tokio::test]
async fn an_api_killed_mid_burst_loses_no_acknowledged_task() {
    let s = Setup::new().await;
    let api = s.api_process(&[]).await;
    let token = api.token().await;

    // Eight clients create as fast as they can until the API dies under them.
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (client, base, token) = (api.client.clone(), api.base.clone(), token.clone());
        clients.spawn(async move {
            let mut acknowledged = Vec::new();
            while let Ok(response) = create_noop(&client, &base, &token).await {
                if !response.status().is_success() {
                    continue;
                }
                match response.json::<Value>().await {
                    Ok(body) => {
                        acknowledged.push(body["id"].as_str().unwrap().parse::<Uuid>().unwrap())
                    }
                    Err(_) => break,
                }
            }
            acknowledged
        });
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    api.process.signal("KILL");
    let mut acknowledged = Vec::new();
    while let Some(ids) = clients.join_next().await {
        acknowledged.extend(ids.unwrap());
    }
    println!(
        "{} creates acknowledged before the SIGKILL",
        acknowledged.len()
    );
    assert!(acknowledged.len() > 10, "the burst got going");

    // Before anything runs: every job in Redis is for a row that exists.
    let rows: HashSet<Uuid> = sqlx::query_scalar("SELECT id FROM tasks")
        .fetch_all(&s.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let queued = task_ids_in_redis(&s).await;
    assert!(!queued.is_empty());
    for id in &queued {
        assert!(
            rows.contains(id),
            "a job in Redis for task {id}, which has no row"
        );
    }
    for id in &acknowledged {
        assert!(rows.contains(id), "acknowledged task {id} has no row");
    }

    let _scheduler = s.scheduler();
    let _worker = s.worker_process("w", &[("RUST_LOG", "error")]);
    let all = s.all_finished_within(Duration::from_secs(60)).await;
    let done: HashSet<Uuid> = all
        .iter()
        .filter(|t| t.status == TaskStatus::Completed)
        .map(|t| t.id)
        .collect();
    for id in &acknowledged {
        assert!(done.contains(id), "acknowledged task {id} did not complete");
    }
    println!(
        "{} rows ({} acknowledged), {} jobs were in Redis; all completed",
        rows.len(),
        acknowledged.len(),
        queued.len()
    );
}

/// Answers of the API while PostgreSQL is down: each is quick, never a
/// 500, and a 5xx is a 503 problem. Returns how many were 503.
async fn probe_during_outage(api: &ApiProcess, token: &str, until: tokio::time::Instant) -> usize {
    let mut unavailable = 0;
    let mut answered = 0;
    while tokio::time::Instant::now() < until {
        for (method, path) in [
            ("POST", "/api/v1/tasks"),
            ("GET", "/api/v1/tasks"),
            ("GET", "/api/v1/auth/me"),
            ("GET", "/ready"),
        ] {
            let started = tokio::time::Instant::now();
            let request = if method == "POST" {
                api.client
                    .post(format!("{}{path}", api.base))
                    .json(&serde_json::json!({"name": "x"}))
            } else {
                api.client.get(format!("{}{path}", api.base))
            };
            let response = request
                .bearer_auth(token)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: no answer within 10 s: {e}"));
            let took = started.elapsed();
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let body = response.text().await.unwrap();
            answered += 1;
            assert_ne!(status, 500, "{method} {path}: {body}");
            if status >= 500 {
                assert_eq!(status, 503, "{method} {path}: {body}");
                assert_eq!(content_type, "application/problem+json", "{method} {path}");
                let problem: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(problem["status"], 503, "{body}");
                assert!(problem["code"].is_string(), "{body}");
                unavailable += 1;
            }
            assert!(
                took < Duration::from_secs(10),
                "{method} {path} took {took:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("{answered} requests during the outage, {unavailable} answered 503");
    unavailable
}

#[tokio::test]
async fn postgres_down_for_20s_gives_quick_503s_and_every_process_recovers_alone() {
    let mut postgres = PostgresServer::start().await;
    let s = Setup::with_own_postgres(&postgres).await;
    let api = s.api_process(&[]).await;
    let token = api.token().await;
    let scheduler_port = testing::free_port();
    let mut scheduler = s.scheduler_on(scheduler_port);
    s.first_pass().await;
    let mut worker = s.worker_process("w", &[("RUST_LOG", "error")]);
    let before = api.create_task(&token).await.unwrap();
    assert_eq!(before.status(), 201);
    s.all_finished_within(Duration::from_secs(30)).await;

    postgres.stop();
    let down = tokio::time::Instant::now();
    let unavailable = probe_during_outage(&api, &token, down + Duration::from_secs(20)).await;
    assert!(unavailable > 0, "the outage was noticed");
    postgres.restart().await;
    let back = tokio::time::Instant::now();

    // The API recovers alone: creates succeed again.
    let recovered = loop {
        let response = api.create_task(&token).await.expect("an answer");
        if response.status() == 201 {
            break back.elapsed();
        }
        assert_eq!(response.status(), 503);
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "the API never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("PostgreSQL back; the API created again after {recovered:?}");
    // Workers and the scheduler too, in the processes they were.
    for _ in 0..20 {
        assert_eq!(api.create_task(&token).await.unwrap().status(), 201);
    }
    let all = s.all_finished_within(Duration::from_secs(60)).await;
    assert_eq!(all.len(), 22);
    assert!(
        all.iter().all(|t| t.status == TaskStatus::Completed),
        "{all:?}"
    );
    testing::wait_for_status(
        &format!("http://127.0.0.1:{scheduler_port}/ready"),
        200,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        scheduler.wait_exit(Duration::ZERO).await.is_none(),
        "the scheduler kept running"
    );
    assert!(
        worker.wait_exit(Duration::ZERO).await.is_none(),
        "the worker kept running"
    );
}
