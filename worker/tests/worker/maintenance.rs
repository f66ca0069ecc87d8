//! The `maintenance` queue through a real `keel-worker`: the purges delete
//! what expired or aged out and keep the rest, the orphan sweep deletes
//! only old objects no file row points at (on the local store and on S3),
//! and the system schedule that asked shows how it went.

use std::time::Duration;

use chrono::Utc;
use futures_util::TryStreamExt as _;
use keel_shared::{
    db::{
        files::{self, NewFile, Purpose},
        schedules::{self, SystemKind, SystemSchedule},
        tasks::TaskStatus,
    },
    queue::{Maintenance, MaintenanceJob},
    storage::Storage,
};
use keel_testing::{self as testing, MotoServer, TestDatabase};
use keel_worker::maintenance::{MaintenanceRunner, ORPHAN_AGE};
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
            kind: SystemKind::PurgeExpired,
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
            kind: SystemKind::PurgeExpired,
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

/// Writes an object under `files/` and, if `with_row`, the file row that
/// points at it; returns its key.
async fn object(storage: &Storage, pool: &sqlx::PgPool, owner: Uuid, with_row: bool) -> String {
    let id = Uuid::now_v7();
    let key = files::object_key(id);
    let written = storage
        .put(&key, b"some bytes".to_vec().into())
        .await
        .unwrap();
    if with_row {
        files::insert(
            pool,
            &NewFile {
                id,
                owner_id: owner,
                purpose: Purpose::Upload,
                name: "kept.txt".into(),
                size: 10,
                content_type: "text/plain".into(),
                sha256: written.sha256,
                description: None,
                tags: Vec::new(),
                task_id: None,
                object_key: key.clone(),
            },
        )
        .await
        .unwrap();
    }
    key
}

/// The keys left under `files/`, sorted.
async fn keys_left(storage: &Storage) -> Vec<String> {
    let far = Utc::now() + chrono::Duration::days(1);
    let mut keys = storage
        .keys_older_than("files", far)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    keys.sort_unstable();
    keys
}

/// The sweep called directly on `flags`' store, with its cutoff between
/// the old objects and the young one. `gap` is more than the store's
/// timestamp resolution (moto's listing gives whole seconds).
async fn sweep_case(flags: &[&str], gap: Duration) {
    let db = TestDatabase::create().await.unwrap();
    let config = testing::config(&db.url, &testing::unique_redis_prefix(), flags);
    let storage = Storage::from_config(&config).unwrap();
    let owner = testing::insert_user(&db.pool, "owner").await;
    let runner = MaintenanceRunner::new(&config, db.pool.clone(), storage.clone());

    let kept = object(&storage, &db.pool, owner, true).await;
    let orphan = object(&storage, &db.pool, owner, false).await;
    // Outside `files/`: not the sweep's to judge.
    storage
        .put("elsewhere/old", b"not a file".to_vec().into())
        .await
        .unwrap();
    tokio::time::sleep(gap).await;
    let cutoff = Utc::now();
    tokio::time::sleep(gap).await;
    let young = object(&storage, &db.pool, owner, false).await;

    assert_eq!(runner.sweep_orphans(cutoff).await.unwrap(), 1);
    let mut expected = vec![kept, young];
    expected.sort_unstable();
    assert_eq!(
        keys_left(&storage).await,
        expected,
        "only the old orphan ({orphan}) goes"
    );
    let far = Utc::now() + chrono::Duration::days(1);
    assert_eq!(
        storage
            .keys_older_than("elsewhere", far)
            .try_collect::<Vec<_>>()
            .await
            .unwrap(),
        ["elsewhere/old"]
    );
    assert_eq!(
        runner.sweep_orphans(cutoff).await.unwrap(),
        0,
        "a second sweep finds nothing"
    );
}

#[tokio::test]
async fn the_sweep_deletes_only_old_orphans_in_a_local_directory() {
    sweep_case(&[], Duration::from_millis(100)).await;
}

#[tokio::test]
async fn the_sweep_deletes_only_old_orphans_on_s3() {
    let moto = MotoServer::start().await;
    let flags = moto.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    sweep_case(&flags, Duration::from_millis(1100)).await;
}

#[tokio::test]
async fn the_hourly_sweep_through_a_worker_keeps_objects_younger_than_the_orphan_age() {
    let p = Pipeline::new().await;
    let dir = testing::test_files_dir();
    let _worker = p.worker(&[("WORKER_QUEUES", "maintenance"), ("FILES_DIR", &dir)]);
    let storage = Storage::local(std::path::Path::new(&dir)).unwrap();
    let kept = object(&storage, &p.pool, p.owner, true).await;
    let orphan = object(&storage, &p.pool, p.owner, false).await;
    let young = object(&storage, &p.pool, p.owner, false).await;
    // Older than the worker's cutoff, as the clock of the store sees it.
    let aged = Utc::now() - chrono::Duration::from_std(ORPHAN_AGE * 2).unwrap();
    for key in [&kept, &orphan] {
        let status = std::process::Command::new("touch")
            .arg("-d")
            .arg(format!("@{}", aged.timestamp()))
            .arg(format!("{dir}/{key}"))
            .status()
            .unwrap();
        assert!(status.success(), "touch {key}");
    }

    run(&p, "system.test_sweep_orphans", Maintenance::SweepOrphans).await;
    let mut expected = vec![kept, young];
    expected.sort_unstable();
    assert_eq!(keys_left(&storage).await, expected, "{orphan} went");
}
