//! The `soak` workload: a whole stack (api, worker, scheduler, started by
//! the bench on a fresh Redis prefix) under a steady open-loop stream of
//! `POST /tasks` for a long time, sampled every `--sample-secs`:
//!
//! - each process's RSS and Redis's `used_memory`, which must stay flat
//!   after the warm-up (growth is printed from the first sample at or after
//!   `--warmup-minutes` to the last);
//! - the queue's Redis depths, so a stack falling behind shows;
//! - the `tasks` table's live and dead rows, autovacuum runs, and bytes per
//!   live row: rows are kept for the retention period, so the table grows
//!   by design, but bytes per live row stay flat unless dead rows pile up
//!   (bloat).
//!
//! The rate is meant to be about half of what `e2e` saturates at.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use keel_shared::queue::Queue;
use serde_json::json;
use tokio::sync::Mutex;

use crate::{
    auth::sign_up,
    e2e::Setup,
    fleet::{Fleet, huge_pages_kib, rss_kib},
    load,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long the load runs.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// `POST /tasks` per second (open loop).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds between samples.
    #[arg(long, default_value_t = 30)]
    sample_secs: u64,
    /// Growth is measured from the first sample after this.
    #[arg(long, default_value_t = 5)]
    warmup_minutes: u64,
    #[arg(long, default_value = "target/release/keel-api")]
    api_bin: String,
    #[arg(long, default_value = "target/release/keel-scheduler")]
    scheduler_bin: String,
    #[command(flatten)]
    stack: crate::e2e::StackArgs,
    /// Print one JSON object as the last line too.
    #[arg(long)]
    json: bool,
}

/// One reading of the stack.
#[derive(Debug, Clone, serde::Serialize)]
struct Sample {
    seconds: u64,
    api_kib: u64,
    worker_kib: u64,
    scheduler_kib: u64,
    /// Of the three, the part in transparent huge pages.
    huge_pages_kib: u64,
    /// The load's TCP connections to the API open at the sample: a stall
    /// under open-loop load opens more, and each holds buffers in the API.
    api_connections: usize,
    redis_used_bytes: u64,
    /// Jobs Redis holds that are due or running: the stack keeping up or not.
    redis_backlog: u64,
    live_rows: i64,
    dead_rows: i64,
    autovacuums: i64,
    table_bytes: i64,
}

impl Sample {
    fn rss_kib(&self) -> u64 {
        self.api_kib + self.worker_kib + self.scheduler_kib
    }

    fn bytes_per_row(&self) -> f64 {
        self.table_bytes as f64 / self.live_rows.max(1) as f64
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let setup = Setup::connect(&args.stack.stores, None).await?;
    // Without autovacuum every task's two old row versions stay: the soak
    // would measure the server's settings, not Keel. A server that runs
    // without it (as this repository's CI machine does) has it on for the
    // run, and back as it was after.
    let autovacuum = Autovacuum::on(&setup.pool).await?;
    let soaked = soak(&args, &setup).await;
    autovacuum.restore(&setup.pool).await?;
    soaked
}

/// The server's autovacuum setting while a soak runs.
struct Autovacuum {
    was_on: bool,
}

impl Autovacuum {
    /// Turns autovacuum on (`ALTER SYSTEM`, then a reload) if it is off.
    async fn on(pool: &sqlx::PgPool) -> anyhow::Result<Self> {
        let was_on = show_autovacuum(pool).await? == "on";
        if !was_on {
            eprintln!("soak: autovacuum is off on this server; on for the run, off again after");
            Self::set(pool, "ALTER SYSTEM SET autovacuum = on").await?;
            if show_autovacuum(pool).await? != "on" {
                bail!("autovacuum stayed off after ALTER SYSTEM; turn it on by hand for a soak");
            }
        }
        Ok(Self { was_on })
    }

    /// Puts the setting back as it was: the server's own files decide again.
    async fn restore(self, pool: &sqlx::PgPool) -> anyhow::Result<()> {
        if !self.was_on {
            Self::set(pool, "ALTER SYSTEM RESET autovacuum").await?;
        }
        Ok(())
    }

    async fn set(pool: &sqlx::PgPool, statement: &'static str) -> anyhow::Result<()> {
        sqlx::query(statement)
            .execute(pool)
            .await
            .context("changing autovacuum needs a superuser")?;
        sqlx::query("SELECT pg_reload_conf()").execute(pool).await?;
        // The reload reaches other sessions at their next command; give the
        // launcher a moment to read it before the load starts.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(())
    }
}

async fn show_autovacuum(pool: &sqlx::PgPool) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(pool)
        .await?)
}

async fn soak(args: &Args, setup: &Setup) -> anyhow::Result<()> {
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let (db, redis) = (
        &args.stack.stores.database_url,
        &args.stack.stores.redis_url,
    );
    let concurrency = args.stack.concurrency_env();
    let mut fleet = Fleet::default();
    let api = fleet.start(
        &args.api_bin,
        db,
        redis,
        &setup.prefix,
        &[
            ("PORT", &port.to_string()),
            ("RATE_LIMIT_ENABLED", "false"),
            ("MAX_UNFINISHED_TASKS_PER_USER", "0"),
        ],
    )?;
    let worker = fleet.start(
        &args.stack.worker_bin,
        db,
        redis,
        &setup.prefix,
        &concurrency
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    )?;
    let scheduler = fleet.start(&args.scheduler_bin, db, redis, &setup.prefix, &[])?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    wait_ready(&client, &url).await?;
    let (_, _, token) = sign_up(&client, &url).await?;

    let started = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampler = {
        let (samples, every) = (samples.clone(), Duration::from_secs(args.sample_secs));
        let (pool, jobs) = (setup.pool.clone(), setup.jobs.clone());
        let mut redis = setup.redis.conn();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let sample = read(
                    &pool,
                    &jobs,
                    &mut redis,
                    started,
                    [api, worker, scheduler],
                    port,
                );
                match sample.await {
                    Ok(s) => {
                        eprintln!(
                            "soak: {:>4} s  rss {:.1} MiB (api {:.1}, huge pages {:.1})  api connections {}  redis {:.1} MiB  backlog {}  rows {} live / {} dead",
                            s.seconds,
                            s.rss_kib() as f64 / 1024.0,
                            s.api_kib as f64 / 1024.0,
                            s.huge_pages_kib as f64 / 1024.0,
                            s.api_connections,
                            s.redis_used_bytes as f64 / 1_048_576.0,
                            s.redis_backlog,
                            s.live_rows,
                            s.dead_rows
                        );
                        samples.lock().await.push(s);
                    }
                    Err(e) => eprintln!("soak: a sample failed: {e:#}"),
                }
            }
        })
    };

    let create = format!("{url}/api/v1/tasks");
    let report = load::run_open(args.rate, Duration::from_secs(args.minutes * 60), || {
        let request = client
            .post(&create)
            .bearer_auth(&token)
            .json(&json!({"kind": "noop", "name": "soak"}))
            .send();
        async move { matches!(request.await, Ok(r) if r.status().is_success()) }
    })
    .await;
    // The last sample is taken once the stack has caught up.
    let drained = Instant::now();
    while setup.jobs.due_depth(Queue::Tasks).await? > 0
        && drained.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sampler.abort();
    let last = read(
        &setup.pool,
        &setup.jobs,
        &mut setup.redis.conn(),
        started,
        [api, worker, scheduler],
        port,
    )
    .await?;
    fleet.stop();
    let mut samples = Arc::try_unwrap(samples)
        .map_err(|_| anyhow::anyhow!("the sampler still runs"))?
        .into_inner();
    samples.push(last);
    print(args, &report, &samples)
}

fn print(args: &Args, report: &load::Report, samples: &[Sample]) -> anyhow::Result<()> {
    let warm = samples
        .iter()
        .find(|s| s.seconds >= args.warmup_minutes * 60)
        .context("no sample after the warm-up: run longer")?;
    let last = samples.last().context("no samples")?;
    let growth = |from: f64, to: f64| 100.0 * (to - from) / from.max(1.0);
    let rss_growth = growth(warm.rss_kib() as f64, last.rss_kib() as f64);
    let [api_growth, worker_growth, scheduler_growth] = [
        (warm.api_kib, last.api_kib),
        (warm.worker_kib, last.worker_kib),
        (warm.scheduler_kib, last.scheduler_kib),
    ]
    .map(|(from, to)| growth(from as f64, to as f64));
    let redis_growth = growth(warm.redis_used_bytes as f64, last.redis_used_bytes as f64);
    let row_growth = growth(warm.bytes_per_row(), last.bytes_per_row());
    let dead_share = 100.0 * last.dead_rows as f64 / (last.live_rows.max(1) as f64);

    println!(
        "keel-bench soak: {} POST /tasks per s for {} min (api + 1 worker + scheduler), sampled every {} s\n",
        args.rate, args.minutes, args.sample_secs
    );
    println!(
        "| min | api MiB | api connections | worker MiB | scheduler MiB | in huge pages MiB | Redis used MiB | Redis backlog | live rows | dead rows | autovacuums | table bytes/row |"
    );
    println!(
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for s in samples {
        println!(
            "| {:.1} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {:.0} |",
            s.seconds as f64 / 60.0,
            s.api_kib as f64 / 1024.0,
            s.api_connections,
            s.worker_kib as f64 / 1024.0,
            s.scheduler_kib as f64 / 1024.0,
            s.huge_pages_kib as f64 / 1024.0,
            s.redis_used_bytes as f64 / 1_048_576.0,
            s.redis_backlog,
            s.live_rows,
            s.dead_rows,
            s.autovacuums,
            s.bytes_per_row()
        );
    }
    println!();
    println!(
        "answered {} creates ({:.0}/s succeeded): {} errors; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
        report.requests,
        report.per_second(),
        report.errors,
        report.p50_ms(),
        report.p99_ms(),
        report.p999_ms()
    );
    println!(
        "growth from minute {:.1} to {:.1}: RSS {rss_growth:+.1} %, Redis used_memory {redis_growth:+.1} %, tasks bytes per live row {row_growth:+.1} %; dead rows at the end {dead_share:.1} % of live, {} autovacuum runs",
        warm.seconds as f64 / 60.0,
        last.seconds as f64 / 60.0,
        last.autovacuums
    );
    println!(
        "RSS growth by process: api {api_growth:+.1} %, worker {worker_growth:+.1} %, scheduler {scheduler_growth:+.1} %"
    );
    if args.json {
        println!(
            "{}",
            json!({"rate": args.rate, "minutes": args.minutes, "creates": report.requests,
                   "errors": report.errors, "create_p99_ms": report.p99_ms(),
                   "rss_growth_pct": rss_growth, "api_rss_growth_pct": api_growth,
                   "worker_rss_growth_pct": worker_growth, "scheduler_rss_growth_pct": scheduler_growth,
                   "redis_growth_pct": redis_growth,
                   "bytes_per_row_growth_pct": row_growth, "dead_rows_pct": dead_share,
                   "autovacuums": last.autovacuums, "samples": samples})
        );
    }
    Ok(())
}

/// Takes one sample of the processes `pids` (api, worker, scheduler).
async fn read(
    pool: &sqlx::PgPool,
    jobs: &keel_shared::queue::JobQueue,
    redis: &mut impl redis::aio::ConnectionLike,
    started: Instant,
    pids: [u32; 3],
    api_port: u16,
) -> anyhow::Result<Sample> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(redis).await?;
    let redis_used_bytes = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")?;
    let redis_backlog = jobs.due_depth(Queue::Tasks).await?;
    let (live_rows, dead_rows, autovacuums, table_bytes): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT n_live_tup, n_dead_tup, autovacuum_count, pg_total_relation_size(relid)
         FROM pg_stat_user_tables WHERE relname = 'tasks'",
    )
    .fetch_one(pool)
    .await?;
    // A process that is gone reads 0.
    let [api_kib, worker_kib, scheduler_kib] = pids.map(|pid| rss_kib(pid).unwrap_or(0));
    let huge_pages_kib = pids
        .map(|pid| huge_pages_kib(pid).unwrap_or(0))
        .iter()
        .sum();
    Ok(Sample {
        seconds: started.elapsed().as_secs(),
        api_kib,
        worker_kib,
        scheduler_kib,
        huge_pages_kib,
        api_connections: established_to(api_port),
        redis_used_bytes,
        redis_backlog,
        live_rows,
        dead_rows,
        autovacuums,
        table_bytes,
    })
}

/// Established TCP connections whose local port is `port`, from
/// `/proc/net/tcp{,6}` (0 where that is not readable).
fn established_to(port: u16) -> usize {
    let local = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let mut fields = line.split_whitespace().skip(1);
                    let local_address = fields.next().unwrap_or_default();
                    let state = fields.nth(1).unwrap_or_default();
                    local_address.ends_with(&local) && state == "01"
                })
                .count()
        })
        .sum()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_ready(client: &reqwest::Client, url: &str) -> anyhow::Result<()> {
    for _ in 0..100 {
        if let Ok(r) = client.get(format!("{url}/ready")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the API at {url} did not become ready")
}
