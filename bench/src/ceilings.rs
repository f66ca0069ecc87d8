//! The `ceilings` workload: what this machine allows for the work the task
//! pipeline does, measured with the databases' own tools so Keel's figures
//! can be read as a fraction of them.
//!
//! - pgbench running the pipeline's SQL on the real `tasks` table (with its
//!   indexes and history trigger): the create INSERT, the claim UPDATE and
//!   the finish UPDATE, each its own transaction — one script run is one
//!   task, unbatched. Also the INSERT alone.
//! - redis-benchmark LPUSH, unpipelined and with `-P 16`.
//! - argon2id's single-core hash time with Keel's parameters.

use std::process::Command;

use anyhow::{Context as _, bail};
use keel_shared::{
    Config,
    db::{
        self,
        users::{self, NewUser, ProfileChanges},
    },
    domain::{EmailAddress, Role, Username},
};
use serde_json::json;
use uuid::Uuid;

const TASK_SQL: &str = r"INSERT INTO tasks (id, owner_id, name, kind, payload, timeout_seconds, changed_by, enqueued_at)
  VALUES (gen_random_uuid(), :owner, 'ceiling', 'noop', '{}', 60, 'bench', now()) RETURNING id \gset
UPDATE tasks SET status = 'running', lease_owner = 'w', lease_expires_at = now() + interval '30 seconds',
  attempts = attempts + 1, started_at = now(), worker_id = 'w', changed_by = 'w'
  WHERE id = :id AND status IN ('pending', 'retrying');
UPDATE tasks SET status = 'completed', result = 'null', progress = 100, finished_at = now(),
  lease_owner = NULL, lease_expires_at = NULL, changed_by = 'w'
  WHERE id = :id AND lease_owner = 'w' AND status = 'running';
";

pub(crate) const INSERT_SQL: &str = r"INSERT INTO tasks (id, owner_id, name, kind, payload, timeout_seconds, changed_by, enqueued_at)
  VALUES (gen_random_uuid(), :owner, 'ceiling', 'noop', '{}', 60, 'bench', now());
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
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/keel_bench"
    )]
    database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Print one JSON object as the last line too.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::from_flags(["--database-url", &args.database_url])?;
    db::create_database_if_missing(&config).await?;
    let pool = db::connect(&config).await?;
    db::migrate(&pool).await?;
    let name = format!("ceiling_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let owner = users::insert(
        &pool,
        &NewUser {
            username: Username::parse(&name)?,
            email: EmailAddress::parse(&format!("{name}@bench.invalid"))?,
            password_hash: "!".into(),
            role: Role::User,
            email_verified: true,
            profile: ProfileChanges::default(),
        },
    )
    .await?
    .id;

    let task_tps = pgbench(
        &args.database_url,
        args.clients,
        args.duration,
        TASK_SQL,
        owner,
    )?;
    let insert_tps = pgbench(
        &args.database_url,
        args.clients,
        args.duration,
        INSERT_SQL,
        owner,
    )?;
    let hash_ms = tokio::task::spawn_blocking(crate::auth::argon2_single_core_ms).await?;
    // The rows were only for measuring.
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(owner)
        .execute(&pool)
        .await?;

    let url = url::Url::parse(&args.redis_url).context("REDIS_URL")?;
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

/// Runs `script` with pgbench, `clients` at once for `seconds`, `:owner`
/// bound to `owner`; returns its tps.
pub(crate) fn pgbench(
    database_url: &str,
    clients: usize,
    seconds: u64,
    script: &str,
    owner: Uuid,
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
        .args(["-D", &format!("owner={owner}")])
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
