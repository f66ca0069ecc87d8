//! The `burn-down` workload: a backlog of `--tasks` `noop` tasks created
//! first (rows committed and jobs pushed, 1,000 per create), then
//! `--workers` worker processes started on it: how fast they drain it, from
//! the first attempt's start to the last completed row (database clock).

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::{
    e2e::{Setup, StackArgs, enqueue, wait_completed},
    fleet::bench_user,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tasks in the backlog.
    #[arg(long, default_value_t = 50_000)]
    tasks: usize,
    /// Worker processes started on the backlog.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    stack: StackArgs,
    /// Print one JSON object as the last line too.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let setup = Setup::connect(&args.stack.stores, None).await?;
    let owner = bench_user(&setup.pool).await?;
    let started = std::time::Instant::now();
    enqueue(&setup.pool, &setup.jobs, owner, args.tasks, 1000, 4).await?;
    let backlog_secs = started.elapsed().as_secs_f64();

    let mut fleet = setup.workers(args.workers, &args.stack).await?;
    let last = wait_completed(&setup.pool, owner, args.tasks).await?;
    fleet.stop();
    let first: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT min(started_at) FROM tasks WHERE owner_id = $1")
            .bind(owner)
            .fetch_one(&setup.pool)
            .await?;
    let first = first.context("the tasks started")?;
    let secs = (last - first).num_microseconds().unwrap_or(1) as f64 / 1e6;
    let rate = args.tasks as f64 / secs;
    let backlog_rate = args.tasks as f64 / backlog_secs;

    println!(
        "burn-down: {} noop tasks queued first, then {} worker(s) at concurrency {}\n",
        args.tasks,
        args.workers,
        args.stack.concurrency_label()
    );
    println!("| measure | value |");
    println!("| --- | ---: |");
    println!("| backlog created (bulk, 1,000 per create) | {backlog_rate:.0} tasks/s |");
    println!("| drained (first start → last completed row) | {rate:.0} tasks/s over {secs:.2} s |");
    if args.json {
        println!(
            "{}",
            json!({"tasks": args.tasks, "workers": args.workers,
                   "backlog_tps": backlog_rate.round(), "burn_down_tps": rate.round(),
                   "seconds": secs})
        );
    }
    Ok(())
}
