//! The `ceilings` workload: what this machine allows for the work the task
//! pipeline does, measured with the databases' own tools so Keel's figures
//! can be read as a fraction of them.
//!
//! - pgbench running the pipeline's SQL on the real `tasks` table (with its
//!   indexes and history trigger): the create INSERT, the claim UPDATE and
//!   the finish UPDATE, each its own transaction — one script run is one
//!   task, unbatched. Also the INSERT alone. Each pgbench client inserts
//!   for an owner of its own ([`PgbenchOwners`]), as many users would: one
//!   owner's inserts wait on each other (the row of its bound of unfinished
//!   tasks), which would measure that lock, not what PostgreSQL can write.
//! - redis-benchmark LPUSH, unpipelined and with `-P 16`.
//! - argon2id's single-core hash time with Keel's parameters.

use std::process::Command;

use anyhow::{Context as _, bail};
use keel_shared::Config;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::stores::{self, Stores};

const TASK_SQL: &str = r"INSERT INTO tasks (id, owner_id, name, kind, payload, timeout_seconds, changed_by, enqueued_at)
  VALUES (gen_random_uuid(), (:owners || lpad(:client_id::text, 12, '0'))::uuid, 'ceiling', 'noop', '{}', 60, 'bench', now()) RETURNING id \gset
UPDATE tasks SET status = 'running', lease_owner = 'w', lease_expires_at = now() + interval '30 seconds',
  attempts = attempts + 1, started_at = now(), worker_id = 'w', changed_by = 'w'
  WHERE id = :id AND status IN ('pending', 'retrying');
UPDATE tasks SET status = 'completed', result = 'null', progress = 100, finished_at = now(),
  lease_owner = NULL, lease_expires_at = NULL, changed_by = 'w'
  WHERE id = :id AND lease_owner = 'w' AND status = 'running';
";

pub(crate) const INSERT_SQL: &str = r"INSERT INTO tasks (id, owner_id, name, kind, payload, timeout_seconds, changed_by, enqueued_at)
  VALUES (gen_random_uuid(), (:owners || lpad(:client_id::text, 12, '0'))::uuid, 'ceiling', 'noop', '{}', 60, 'bench', now());
";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// pgbench clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests per redis-benchmark run.
    #[arg(long, default_value_t = 200_000)]
    redis_requests: u64,
    #[command(flatten)]
    stores: Stores,
    /// Print one JSON object as the last line too.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::from_flags(["--database-url", &args.stores.database_url])?;
    let pool = stores::migrated_pool(&config).await?;
    let owners = PgbenchOwners::insert(&pool, args.clients).await?;
    let task_tps = pgbench(
        &args.stores.database_url,
        args.clients,
        args.duration,
        TASK_SQL,
        &owners,
    )?;
    let insert_tps = pgbench(
        &args.stores.database_url,
        args.clients,
        args.duration,
        INSERT_SQL,
        &owners,
    )?;
    let hash_ms = tokio::task::spawn_blocking(crate::auth::argon2_single_core_ms).await?;
    // The rows were only for measuring.
    owners.delete(&pool).await?;

    let url = url::Url::parse(&args.stores.redis_url).context("REDIS_URL")?;
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = url.port().unwrap_or(6379);
    let lpush = redis_benchmark(&host, port, args.redis_requests, 1)?;
    let lpush_p16 = redis_benchmark(&host, port, args.redis_requests, 16)?;

    println!("ceilings on this machine\n");
    println!("| measure | value |");
    println!("| --- | ---: |");
    println!(
        "| pgbench, task SQL (INSERT + claim UPDATE + finish UPDATE, 3 commits), {} clients | {task_tps:.0} tasks/s |",
        args.clients
    );
    println!(
        "| pgbench, task INSERT alone, {} clients | {insert_tps:.0} rows/s |",
        args.clients
    );
    println!("| redis-benchmark LPUSH, 50 clients | {lpush:.0} ops/s |");
    println!("| redis-benchmark LPUSH, 50 clients, -P 16 | {lpush_p16:.0} ops/s |");
    println!("| argon2id hash, Keel's parameters, one core | {hash_ms:.1} ms |");
    if args.json {
        println!(
            "{}",
            json!({
                "pgbench_task_sql_tps": task_tps.round(), "pgbench_insert_tps": insert_tps.round(),
                "redis_lpush_ops": lpush.round(), "redis_lpush_p16_ops": lpush_p16.round(),
                "argon2_hash_ms": hash_ms,
            })
        );
    }
    Ok(())
}

/// One user per pgbench client, with ids pgbench can make from its
/// `:client_id`: the run's `prefix` (a UUID's first 24 characters) and the
/// client's number in 12 digits.
pub(crate) struct PgbenchOwners {
    prefix: String,
}

impl PgbenchOwners {
    /// Inserts `clients` users (no password; they only own rows).
    pub(crate) async fn insert(pool: &PgPool, clients: usize) -> anyhow::Result<Self> {
        let prefix = Uuid::new_v4().to_string()[..24].to_owned();
        sqlx::query(
            "INSERT INTO users (id, username, email, password_hash, email_verified) \
             SELECT ($1 || lpad(n::text, 12, '0'))::uuid, $2 || n, $2 || n || '@bench.invalid', '!', true \
             FROM generate_series(0, $3 - 1) AS n",
        )
        .bind(&prefix)
        .bind(format!("pgbench_{}_", &prefix[..8]))
        .bind(i64::try_from(clients).unwrap_or(i64::MAX))
        .execute(pool)
        .await?;
        Ok(Self { prefix })
    }

    /// Deletes the users and, by cascade, the rows they own.
    pub(crate) async fn delete(&self, pool: &PgPool) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM users WHERE id::text LIKE $1 || '%'")
            .bind(&self.prefix)
            .execute(pool)
            .await?;
        Ok(())
    }
}

/// Runs `script` with pgbench, `clients` at once for `seconds`, `:owners`
/// bound to the prefix of `owners`' ids; returns its tps.
pub(crate) fn pgbench(
    database_url: &str,
    clients: usize,
    seconds: u64,
    script: &str,
    owners: &PgbenchOwners,
) -> anyhow::Result<f64> {
    let path = std::env::temp_dir().join(format!("keel-ceiling-{}.sql", Uuid::new_v4()));
    std::fs::write(&path, script)?;
    let output = Command::new("pgbench")
        // Prepared statements, as sqlx runs them.
        .args([
            "-n",
            "-M",
            "prepared",
            "-j",
            "2",
            "-c",
            &clients.to_string(),
        ])
        .args(["-T", &seconds.to_string()])
        .arg("-f")
        .arg(&path)
        .args(["-D", &format!("owners={}", owners.prefix)])
        .arg(database_url)
        .output()
        .context("running pgbench (apt-get install postgresql-client)")?;
    let _ = std::fs::remove_file(&path);
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    text.lines()
        .find_map(|l| l.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no tps in pgbench's output: {text}"))
}

/// Runs redis-benchmark LPUSH; returns requests per second.
fn redis_benchmark(host: &str, port: u16, requests: u64, pipeline: u32) -> anyhow::Result<f64> {
    let output = Command::new("redis-benchmark")
        .args(["-h", host, "-p", &port.to_string(), "-t", "lpush", "-q"])
        .args(["-n", &requests.to_string(), "-P", &pipeline.to_string()])
        .output()
        .context("running redis-benchmark (apt-get install redis-tools)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // Progress lines end in \r; the result is the last "LPUSH: N requests per second".
    text.split(['\r', '\n'])
        .filter_map(|l| l.trim().strip_prefix("LPUSH: "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
        .with_context(|| format!("no LPUSH figure in redis-benchmark's output: {text}"))
}
