//! The `ticks` workload: cron ticks through real `keel-scheduler` replicas.
//! `--schedules` every-second schedules run for `--seconds` under
//! `--replicas` schedulers; each tick's lateness is its claim's commit
//! (`schedule_runs.fired_at`, database clock) minus the tick's instant, and
//! every second of the run must show exactly one fire per schedule.

use std::time::Duration;

use hdrhistogram::Histogram;
use keel_shared::{
    Config,
    db::schedules::{self, ScheduleSpec},
};
use serde_json::json;
use uuid::Uuid;

use crate::fleet::{Fleet, bench_user};
use crate::stores::{self, Stores};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Every-second schedules.
    #[arg(long, default_value_t = 4)]
    schedules: usize,
    /// How long they run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Scheduler processes competing for each tick.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// The scheduler binary.
    #[arg(long, default_value = "target/release/keel-scheduler")]
    scheduler_bin: String,
    #[command(flatten)]
    stores: Stores,
    /// Print one JSON object as the last line too.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let Stores {
        database_url,
        redis_url,
    } = &args.stores;
    let prefix = stores::fresh_prefix();
    let config = Config::from_flags([
        "--database-url",
        database_url,
        "--redis-url",
        redis_url,
        "--redis-prefix",
        &prefix,
    ])?;
    let pool = stores::migrated_pool(&config).await?;
    let owner = bench_user(&pool).await?;

    let mut fleet = Fleet::default();
    for _ in 0..args.replicas {
        fleet.start(&args.scheduler_bin, database_url, redis_url, &prefix, &[])?;
    }
    // The replicas load schedules at start and on every change.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut ids = Vec::new();
    for i in 0..args.schedules {
        let schedule = schedules::insert(
            &pool,
            owner,
            &ScheduleSpec {
                name: format!("bench {prefix} {i}"),
                cron: "* * * * * *".into(),
                timezone: "UTC".into(),
                kind: "noop".into(),
                payload: json!({}),
                enabled: true,
                next_run_at: None,
            },
        )
        .await?;
        ids.push(schedule.id);
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    fleet.stop();

    let runs: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT schedule_id, (extract(epoch FROM fired_at - fire_at) * 1e6)::bigint \
         FROM schedule_runs WHERE schedule_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await?;
    let mut lateness = Histogram::<u64>::new(3)?;
    let mut early = 0;
    for (_, micros) in &runs {
        match u64::try_from(*micros) {
            Ok(m) => lateness.record(m)?,
            Err(_) => early += 1,
        }
    }
    // Each schedule: one fire per second from its first to its last.
    let spans: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM max(fire_at) - min(fire_at))::bigint + 1 \
         FROM schedule_runs WHERE schedule_id = ANY($1) GROUP BY schedule_id",
    )
    .bind(&ids)
    .fetch_all(&pool)
    .await?;
    let missed: i64 = spans.iter().map(|(n, span)| span - n).sum();
    sqlx::query("DELETE FROM schedules WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&pool)
        .await?;

    let ms = |q: f64| lateness.value_at_quantile(q) as f64 / 1000.0;
    let max = lateness.max() as f64 / 1000.0;
    println!(
        "ticks: {} every-second schedules for {} s, {} scheduler replicas\n",
        args.schedules, args.seconds, args.replicas
    );
    println!("| measure | value |");
    println!("| --- | ---: |");
    println!(
        "| ticks fired | {} ({missed} missed, {early} early) |",
        runs.len()
    );
    println!(
        "| tick lateness (claim committed − tick) | p50 {:.2} ms · p99 {:.2} ms · max {max:.2} ms |",
        ms(0.5),
        ms(0.99)
    );
    if args.json {
        println!(
            "{}",
            json!({
                "schedules": args.schedules, "seconds": args.seconds, "replicas": args.replicas,
                "ticks": runs.len(), "missed": missed, "early": early,
                "late_p50_ms": ms(0.5), "late_p99_ms": ms(0.99), "late_max_ms": max,
            })
        );
    }
    Ok(())
}
