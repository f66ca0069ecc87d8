//! The `e2e` workload: the task pipeline end to end, through the code the
//! API uses to create tasks (row committed, then pushed) and real
//! `keel-worker` processes writing every status to Postgres.
//!
//! 1. Enqueue: `--tasks` `noop` tasks from `--connections` concurrent
//!    creators, one task per create (or `--batch B` per create, the bulk path).
//! 2. End to end: from the first create to the last `completed` row, by the
//!    database clock.
//! 3. Trickle: `--trickle` tasks at `--trickle-rate`/s on the idle queue;
//!    enqueue→start is the row's `started_at - created_at`.
//!
//! With `--workers W` the bench starts W worker processes itself (from
//! `--worker-bin`, on its own Redis prefix) and stops them after; without,
//! it expects a fleet already running on `--redis-prefix` and `--database-url`.
//! `--workers 1,2,4` repeats the throughput run with each fleet size, for
//! the scaling curve; the latency runs use the first.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use hdrhistogram::Histogram;
use keel_shared::{
    Config, RedisClient,
    db::tasks::{self, NewTask},
    queue::{JobQueue, dispatch},
    task_intake::{Create, Created, TaskIntake},
    workers,
};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    fleet::{Fleet, bench_user},
    stores::{self, Stores},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tasks in the throughput run.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Tasks per create (1: the single `POST /tasks` path; more: the bulk path).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Concurrent creators.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Start this many worker processes (else use a running fleet); a list
    /// (`1,2,4`) runs the throughput part once per fleet size.
    #[arg(long, value_delimiter = ',')]
    workers: Vec<usize>,
    /// Tasks in the trickle run.
    #[arg(long, default_value_t = 200)]
    trickle: usize,
    /// Tasks per second in the trickle run.
    #[arg(long, default_value_t = 50)]
    trickle_rate: u32,
    /// Tasks in the scheduled-start run.
    #[arg(long, default_value_t = 200)]
    scheduled: usize,
    /// Redis prefix of the fleet (with `--workers`, a fresh one is used when unset).
    #[arg(long, env = "REDIS_PREFIX")]
    redis_prefix: Option<String>,
    #[command(flatten)]
    stack: StackArgs,
    /// Print one JSON object as the last line too.
    #[arg(long)]
    json: bool,
}

/// Where the benches that start workers find the stack.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// `WORKER_CONCURRENCY` of the workers the bench starts; unset, the
    /// worker's own default, as a user who sets nothing runs it.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// The worker binary the bench starts.
    #[arg(long, default_value = "target/release/keel-worker")]
    pub worker_bin: String,
    #[command(flatten)]
    pub stores: Stores,
}

impl StackArgs {
    /// The worker's `WORKER_CONCURRENCY`, if the bench sets one.
    pub fn concurrency_env(&self) -> Vec<(&'static str, String)> {
        self.concurrency
            .map(|c| vec![("WORKER_CONCURRENCY", c.to_string())])
            .unwrap_or_default()
    }

    /// The concurrency the workers run at, for the printed figures.
    pub fn concurrency_label(&self) -> String {
        self.concurrency.map_or_else(
            || {
                format!(
                    "the default ({})",
                    keel_shared::config::default_worker_concurrency()
                )
            },
            |c| c.to_string(),
        )
    }
}

/// The bench's database, Redis prefix and the clients on them.
pub(crate) struct Setup {
    pub pool: PgPool,
    pub redis: RedisClient,
    pub jobs: JobQueue,
    pub prefix: String,
}

impl Setup {
    /// Connects (creating and migrating the database when missing) on
    /// `prefix`, or a fresh one.
    pub(crate) async fn connect(on: &Stores, prefix: Option<String>) -> anyhow::Result<Self> {
        let prefix = prefix.unwrap_or_else(stores::fresh_prefix);
        let config = Config::from_flags([
            "--database-url",
            &on.database_url,
            "--redis-url",
            &on.redis_url,
            "--redis-prefix",
            &prefix,
            "--database-max-connections",
            "32",
        ])?;
        let pool = stores::migrated_pool(&config).await?;
        let redis = RedisClient::connect(&config).await?;
        let jobs = JobQueue::new(redis.clone());
        Ok(Self {
            pool,
            redis,
            jobs,
            prefix,
        })
    }

    /// Deletes every Redis key under this setup's prefix: a run on a fresh
    /// prefix has no scheduler to trim its finished jobs, and without this
    /// each run would leave its jobs' records in Redis for good.
    pub(crate) async fn forget_prefix(&self) -> anyhow::Result<()> {
        let mut conn = self.redis.conn();
        let pattern = format!("{}:*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .exec_async(&mut conn)
                    .await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Starts `count` workers on the `tasks` queue and waits until they heartbeat.
    pub(crate) async fn workers(&self, count: usize, stack: &StackArgs) -> anyhow::Result<Fleet> {
        let mut fleet = Fleet::default();
        let concurrency = stack.concurrency_env();
        for _ in 0..count {
            let mut env = vec![("WORKER_QUEUES", "tasks")];
            env.extend(concurrency.iter().map(|(k, v)| (*k, v.as_str())));
            fleet.start(
                &stack.worker_bin,
                &stack.stores.database_url,
                &stack.stores.redis_url,
                &self.prefix,
                &env,
            )?;
        }
        wait_for_workers(&self.redis, count).await?;
        Ok(fleet)
    }
}

/// One throughput run's figures.
pub(crate) struct Throughput {
    pub workers: usize,
    pub enqueue_tps: f64,
    pub e2e_tps: f64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let setup = Setup::connect(&args.stack.stores, args.redis_prefix.clone()).await?;
    // No list: a fleet is already running on the prefix.
    let sizes: Vec<Option<usize>> = if args.workers.is_empty() {
        vec![None]
    } else {
        args.workers.iter().copied().map(Some).collect()
    };
    let mut runs = Vec::new();
    let mut latencies = None;
    for size in sizes {
        let mut fleet = match size {
            Some(count) => setup.workers(count, &args.stack).await?,
            None => Fleet::default(),
        };
        let alive = wait_for_workers(&setup.redis, size.unwrap_or(1)).await?;
        runs.push(throughput(&setup, args.tasks, args.batch, args.connections, alive).await?);
        if latencies.is_none() {
            latencies = Some(idle_latencies(&setup, &args).await?);
        }
        fleet.stop();
    }
    if args.redis_prefix.is_none() {
        setup.forget_prefix().await?;
    }
    let (latency, lateness, early) = latencies.context("at least one run")?;

    let p50 = latency.value_at_quantile(0.50) as f64 / 1000.0;
    let p99 = latency.value_at_quantile(0.99) as f64 / 1000.0;
    let max = latency.max() as f64 / 1000.0;
    let late_p50 = lateness.value_at_quantile(0.50) as f64 / 1000.0;
    let late_p99 = lateness.value_at_quantile(0.99) as f64 / 1000.0;
    let late_max = lateness.max() as f64 / 1000.0;
    println!(
        "e2e: {} noop tasks per run, batch {}, {} creators, worker concurrency {}\n",
        args.tasks,
        args.batch,
        args.connections,
        args.stack.concurrency_label()
    );
    println!(
        "| workers | enqueue (creates answered) | end to end (first create → last completed row) | vs the first |"
    );
    println!("| ---: | ---: | ---: | ---: |");
    let base = runs[0].e2e_tps;
    for run in &runs {
        println!(
            "| {} | {:.0} tasks/s | {:.0} tasks/s | {:.2}× |",
            run.workers,
            run.enqueue_tps,
            run.e2e_tps,
            run.e2e_tps / base
        );
    }
    println!();
    println!("| latency, {} worker(s) | value |", runs[0].workers);
    println!("| --- | ---: |");
    println!(
        "| idle enqueue→start, {} tasks at {}/s | p50 {p50:.2} ms · p99 {p99:.2} ms · max {max:.2} ms |",
        args.trickle, args.trickle_rate
    );
    println!(
        "| scheduled start lateness, {} tasks over 2–4 s | p50 {late_p50:.2} ms · p99 {late_p99:.2} ms · max {late_max:.2} ms · {early} early |",
        args.scheduled
    );
    if args.json {
        let runs: Vec<_> = runs
            .iter()
            .map(|r| {
                json!({"workers": r.workers, "enqueue_tps": r.enqueue_tps.round(),
                       "e2e_tps": r.e2e_tps.round()})
            })
            .collect();
        println!(
            "{}",
            json!({
                "tasks": args.tasks, "batch": args.batch, "runs": runs,
                "enqueue_tps": runs[0]["enqueue_tps"], "e2e_tps": runs[0]["e2e_tps"],
                "start_p50_ms": p50, "start_p99_ms": p99, "start_max_ms": max,
                "late_p50_ms": late_p50, "late_p99_ms": late_p99, "late_max_ms": late_max,
                "early": early,
            })
        );
    }
    Ok(())
}

/// `tasks` creates (`batch` per create, from `connections` creators) while
/// `workers` workers complete them.
pub(crate) async fn throughput(
    setup: &Setup,
    tasks: usize,
    batch: usize,
    connections: usize,
    workers: usize,
) -> anyhow::Result<Throughput> {
    // From a fresh install's tables, not from the rows of every earlier run
    // (their users are the bench's, so only the bench's rows go), and in the
    // state autovacuum keeps a server near: this machine's CI PostgreSQL runs
    // without it.
    forget_earlier_runs(&setup.pool).await?;
    sqlx::query("VACUUM (ANALYZE) tasks, task_events")
        .execute(&setup.pool)
        .await?;
    let owner = bench_user(&setup.pool).await?;
    let start_db: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&setup.pool)
        .await?;
    let started = Instant::now();
    enqueue(&setup.pool, &setup.jobs, owner, tasks, batch, connections).await?;
    let enqueue_secs = started.elapsed().as_secs_f64();
    let last_finish = wait_completed(&setup.pool, owner, tasks).await?;
    let e2e_secs = (last_finish - start_db).num_microseconds().unwrap_or(1) as f64 / 1e6;
    Ok(Throughput {
        workers,
        enqueue_tps: tasks as f64 / enqueue_secs,
        e2e_tps: tasks as f64 / e2e_secs,
    })
}

/// Deletes the users earlier `e2e` and `compare-celery` runs made (by
/// [`bench_user`]: a `bench_` name, an `@bench.invalid` address and no
/// password) and, by cascade, their tasks.
pub(crate) async fn forget_earlier_runs(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "DELETE FROM users WHERE starts_with(username, 'bench_') \
             AND email LIKE '%@bench.invalid' AND password_hash = '!'",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The idle-queue latencies: trickled creates, then tasks scheduled ahead.
async fn idle_latencies(
    setup: &Setup,
    args: &Args,
) -> anyhow::Result<(Histogram<u64>, Histogram<u64>, u64)> {
    let owner = bench_user(&setup.pool).await?;
    let latency = trickle(
        &setup.pool,
        &setup.jobs,
        owner,
        args.trickle,
        args.trickle_rate,
    )
    .await?;
    let owner = bench_user(&setup.pool).await?;
    let (lateness, early) =
        scheduled(&setup.pool, &setup.jobs, owner, args.scheduled, 2000).await?;
    Ok((latency, lateness, early))
}

/// Creates `n` noop tasks, `batch` per create, from `connections` creators,
/// through the API's own create path ([`TaskIntake`]: group commit, one
/// push per group) and the default per-user cap of unfinished tasks while
/// `n` fits under it.
pub(crate) async fn enqueue(
    pool: &PgPool,
    jobs: &JobQueue,
    owner: Uuid,
    n: usize,
    batch: usize,
    connections: usize,
) -> anyhow::Result<()> {
    let batch = batch.max(1);
    let creates = n.div_ceil(batch);
    let intake = TaskIntake::start(pool.clone(), jobs.clone());
    let cap = default_cap().filter(|cap| n <= *cap as usize);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut creators = Vec::new();
    for _ in 0..connections.max(1) {
        let (intake, next) = (intake.clone(), next.clone());
        creators.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= creates {
                    return Ok::<_, anyhow::Error>(());
                }
                let size = batch.min(n - i * batch);
                let create = Create {
                    owner,
                    actor: "bench".into(),
                    tasks: (0..size).map(|_| noop()).collect(),
                    cap,
                };
                match intake.create(create).await? {
                    Created::Tasks(_) => {}
                    Created::OverCap => bail!("the bench user is over the cap"),
                }
            }
        }));
    }
    for creator in creators {
        creator.await??;
    }
    Ok(())
}

/// Waits until `n` of `owner`'s tasks are completed; returns the last `finished_at`.
///
/// While tasks run it asks only whether any is unfinished: a probe of the
/// status index, where a count of the completed rows every 20 ms would read
/// them all each time and take the cores the pipeline is measured on.
pub(crate) async fn wait_completed(
    pool: &PgPool,
    owner: Uuid,
    n: usize,
) -> anyhow::Result<DateTime<Utc>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tasks \
                 WHERE owner_id = $1 AND status IN ('pending', 'running', 'retrying'))",
        )
        .bind(owner)
        .fetch_one(pool)
        .await?;
        if !waiting {
            let (done, last): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
                "SELECT count(*), max(finished_at) FROM tasks \
                 WHERE owner_id = $1 AND status = 'completed'",
            )
            .bind(owner)
            .fetch_one(pool)
            .await?;
            if usize::try_from(done).unwrap_or(0) >= n {
                return last.context("completed rows have a finish time");
            }
            bail!("{done} of {n} tasks completed; the others failed or were cancelled");
        }
        if Instant::now() > deadline {
            bail!("not all {n} tasks completed within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `n` single creates at `rate`/s; the histogram holds each task's
/// `started_at - created_at` in microseconds.
pub(crate) async fn trickle(
    pool: &PgPool,
    jobs: &JobQueue,
    owner: Uuid,
    n: usize,
    rate: u32,
) -> anyhow::Result<Histogram<u64>> {
    if n == 0 {
        // `--trickle 0`: no latency run (there is no completed row to wait for).
        return Ok(Histogram::<u64>::new(3)?);
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    let intake = TaskIntake::start(pool.clone(), jobs.clone());
    for _ in 0..n {
        tick.tick().await;
        let create = Create {
            owner,
            actor: "bench".into(),
            tasks: vec![noop()],
            cap: default_cap(),
        };
        intake.create(create).await?;
    }
    let delays = start_delays_us(pool, owner, n, Since::Created).await?;
    let mut histogram = Histogram::<u64>::new(3)?;
    for us in delays {
        histogram.record(u64::try_from(us.max(0)).unwrap_or(0))?;
    }
    Ok(histogram)
}

/// What a task's wait to start is counted from.
#[derive(Debug, Clone, Copy)]
enum Since {
    Created,
    Scheduled,
}

/// Waits until all `n` tasks of `owner` have completed; then how long each
/// waited to start after `since`, in µs (below 0: it started early).
async fn start_delays_us(
    pool: &PgPool,
    owner: Uuid,
    n: usize,
    since: Since,
) -> anyhow::Result<Vec<i64>> {
    wait_completed(pool, owner, n).await?;
    let sql = match since {
        Since::Created => {
            "SELECT (extract(epoch FROM started_at - created_at) * 1000000)::bigint \
             FROM tasks WHERE owner_id = $1"
        }
        Since::Scheduled => {
            "SELECT (extract(epoch FROM started_at - scheduled_at) * 1000000)::bigint \
             FROM tasks WHERE owner_id = $1"
        }
    };
    Ok(sqlx::query_scalar(sql).bind(owner).fetch_all(pool).await?)
}

/// `n` tasks scheduled 2 s ahead (by the database clock) and spread over
/// the next `spread_ms`, created at once; returns the lateness histogram
/// (µs) and how many started early. A spread of 0 puts them all on one
/// instant.
pub(crate) async fn scheduled(
    pool: &PgPool,
    jobs: &JobQueue,
    owner: Uuid,
    n: usize,
    spread_ms: i64,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut histogram = Histogram::<u64>::new(3)?;
    if n == 0 {
        return Ok((histogram, 0));
    }
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()").fetch_one(pool).await?;
    let at = now + chrono::Duration::milliseconds(2000);
    let specs: Vec<NewTask> = (0..n)
        .map(|i| {
            let offset = if spread_ms == 0 {
                chrono::Duration::zero()
            } else {
                chrono::Duration::milliseconds(spread_ms * i as i64 / n as i64)
                    + chrono::Duration::microseconds(137 * i as i64)
            };
            NewTask {
                scheduled_at: Some(at + offset),
                ..noop()
            }
        })
        .collect();
    let rows = tasks::insert_many(pool, owner, "bench", &specs).await?;
    dispatch::push_tasks(pool, jobs, &rows).await?;
    let lateness = start_delays_us(pool, owner, n, Since::Scheduled).await?;
    let mut early = 0;
    for us in lateness {
        if us < 0 {
            early += 1;
        }
        histogram.record(u64::try_from(us.max(0)).unwrap_or(0))?;
    }
    Ok((histogram, early))
}

/// `MAX_UNFINISHED_TASKS_PER_USER` as a deployment that sets nothing has it.
fn default_cap() -> Option<u32> {
    Config::from_flags(Vec::<String>::new())
        .ok()
        .map(|c| c.tasks.max_unfinished_per_user)
        .filter(|c| *c > 0)
}

pub(crate) fn noop() -> NewTask {
    NewTask {
        name: "bench".into(),
        kind: "noop".into(),
        payload: json!({}),
        max_attempts: 3,
        timeout_seconds: 60,
        priority: 0,
        scheduled_at: None,
        schedule_id: None,
        expires_at: None,
        unique_key: None,
    }
}

pub(crate) async fn wait_for_workers(redis: &RedisClient, n: usize) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let alive = workers::list_alive(redis).await?.len();
        if alive >= n {
            return Ok(alive);
        }
        if Instant::now() > deadline {
            bail!("{alive} of {n} workers alive on this prefix after 30 s; is a fleet running?");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
