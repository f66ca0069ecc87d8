//! The `schedule` workload: `--tasks` tasks all scheduled for one instant
//! 2 s ahead, on idle workers: how late each starts after that instant
//! (`started_at − scheduled_at`, database clock), and whether any started
//! early.

use serde_json::json;

use crate::{
    e2e::{Setup, StackArgs, scheduled},
    fleet::bench_user,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tasks scheduled for the same instant.
    #[arg(long, default_value_t = 1000)]
    tasks: usize,
    /// Worker processes.
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
    let mut fleet = setup.workers(args.workers, &args.stack).await?;
    let owner = bench_user(&setup.pool).await?;
    let (lateness, early) = scheduled(&setup.pool, &setup.jobs, owner, args.tasks, 0).await?;
    fleet.stop();
    let ms = |q: f64| lateness.value_at_quantile(q) as f64 / 1000.0;
    let (p50, p99, max) = (ms(0.5), ms(0.99), lateness.max() as f64 / 1000.0);
    println!(
        "schedule: {} tasks due at one instant, {} worker(s) at concurrency {}\n",
        args.tasks,
        args.workers,
        args.stack.concurrency_label()
    );
    println!("| measure | value |");
    println!("| --- | ---: |");
    println!("| start lateness | p50 {p50:.2} ms · p99 {p99:.2} ms · max {max:.2} ms |");
    println!("| started early | {early} |");
    if args.json {
        println!(
            "{}",
            json!({"tasks": args.tasks, "workers": args.workers, "late_p50_ms": p50,
                   "late_p99_ms": p99, "late_max_ms": max, "early": early})
        );
    }
    Ok(())
}
