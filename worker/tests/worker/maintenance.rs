//! The `maintenance` queue through a real `keel-worker`: the purges delete
//! what expired or aged out and keep the rest, and the system schedule
//! that asked shows how it went.

use std::time::Duration;

use keel_shared::{
    db::{
        schedules::{self, SystemSchedule},
        tasks::TaskStatus,
    },
    jobs::{Maintenance, MaintenanceJob},
};
use serde_json::json;
use uuid::Uuid;

use crate::pipeline::Pipeline;

/// Pushes `work` for the system schedule `name` and waits for its status.
async fn run(p: &Pipeline, name: &'static str, work: Maintenance) {
    schedules::ensure_system(
        &p.pool,
        &[SystemSchedule {
            name,
            cron: "0 0 * * * *".into(),
            kind: "test",
        }],
    )
    .await
    .unwrap();
    let id: Uuid = sqlx::query_scalar("SELECT id FROM schedules WHERE name = $1")
        .bind(name)
        .fetch_one(&p.pool)
        .await
        .unwrap();
    p.jobs
        .push(
            MaintenanceJob {
                work,
                schedule_id: Some(id),
            },
            None,
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let shown = schedules::get(&p.pool, id).await.unwrap().unwrap();
        if shown.last_status.as_deref() == Some("completed") {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{shown:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn count(p: &Pipeline, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&p.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_hourly_purge_deletes_what_expired_and_keeps_the_rest() {
    let p = Pipeline::new().await;
    let _worker = p.worker(&[("WORKER_QUEUES", "maintenance")]);
    // One expired and one live row in each table.
    for expires in ["now() - interval '1 minute'", "now() + interval '1 hour'"] {
        for sql in [
            "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at) \
             VALUES (gen_random_uuid(), $1, gen_random_uuid(), sha256(random()::text::bytea), {e})",
            "INSERT INTO two_factor_challenges (id, user_id, expires_at) \
             VALUES (gen_random_uuid(), $1, {e})",
            "INSERT INTO email_tokens (id, user_id, purpose, token_hash, expires_at) \
             VALUES (gen_random_uuid(), $1, 'verify_email', sha256(random()::text::bytea), {e})",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql.replace("{e}", expires)))
                .bind(p.owner)
                .execute(&p.pool)
                .await
                .unwrap();
        }
    }
    for (key, age) in [("old", "25 hours"), ("new", "1 hour")] {
        sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, created_at) \
             VALUES ($1, $2, '\\x00', now() - $3::interval)",
        )
        .bind(p.owner)
        .bind(key)
        .bind(age)
        .execute(&p.pool)
        .await
        .unwrap();
    }

    run(&p, "system.test_purge_expired", Maintenance::PurgeExpired).await;
    for table in [
        "refresh_tokens",
        "two_factor_challenges",
        "email_tokens",
        "idempotency_keys",
    ] {
        assert_eq!(count(&p, table).await, 1, "{table}: the live row stays");
    }
}

#[tokio::test]
async fn the_daily_purge_deletes_finished_work_past_retention_only() {
    let p = Pipeline::new().await;
    let _worker = p.worker(&[
        ("WORKER_QUEUES", "maintenance"),
        ("TASK_RETENTION_DAYS", "7"),
    ]);
    let tasks = [
        p.create("noop", json!({})).await, // finished 8 days ago: goes
        p.create("noop", json!({})).await, // finished 6 days ago: stays
        p.create("noop", json!({})).await, // still pending: stays
    ];
    for (task, days) in tasks.iter().zip([8, 6]) {
        sqlx::query(
            "UPDATE tasks SET status = 'completed', \
             started_at = now() - make_interval(days => $2), \
             finished_at = now() - make_interval(days => $2) WHERE id = $1",
        )
        .bind(task.id)
        .bind(days)
        .execute(&p.pool)
        .await
        .unwrap();
    }
    for (status, days) in [("sent", 8), ("failed", 8), ("sent", 6), ("queued", 8)] {
        sqlx::query(
            "INSERT INTO email_deliveries (id, to_address, template, status, updated_at) \
             VALUES (gen_random_uuid(), 'a@example.com', 'notice', $1, now() - make_interval(days => $2))",
        )
        .bind(status)
        .bind(days)
        .execute(&p.pool)
        .await
        .unwrap();
    }

    // A schedule whose last task is purged keeps showing that task's status.
    schedules::ensure_system(
        &p.pool,
        &[SystemSchedule {
            name: "system.test_last_task",
            cron: "0 0 * * * *".into(),
            kind: "test",
        }],
    )
    .await
    .unwrap();
    sqlx::query("UPDATE schedules SET last_task_id = $1, last_status = 'pending' WHERE name = 'system.test_last_task'")
        .bind(tasks[0].id)
        .execute(&p.pool)
        .await
        .unwrap();

    run(&p, "system.test_purge_finished", Maintenance::PurgeFinished).await;
    let last: Option<String> = sqlx::query_scalar(
        "SELECT last_status FROM schedules WHERE name = 'system.test_last_task'",
    )
    .fetch_one(&p.pool)
    .await
    .unwrap();
    assert_eq!(last.as_deref(), Some("completed"));
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM tasks ORDER BY id")
        .fetch_all(&p.pool)
        .await
        .unwrap();
    assert_eq!(left, [tasks[1].id, tasks[2].id]);
    assert!(
        p.history(tasks[0].id).await.is_empty(),
        "its history went too"
    );
    assert_eq!(p.get(tasks[1].id).await.status, TaskStatus::Completed);
    let deliveries: Vec<String> =
        sqlx::query_scalar("SELECT status FROM email_deliveries ORDER BY status")
            .fetch_all(&p.pool)
            .await
            .unwrap();
    assert_eq!(deliveries, ["queued", "sent"]);
}
