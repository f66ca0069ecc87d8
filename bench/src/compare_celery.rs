//! The `compare-celery` workload: Keel as a user starts it (one worker at
//! its default concurrency) and Celery 5 as its users start it (Redis
//! broker, the default prefork worker), one after the other on this
//! machine, on the same PostgreSQL and Redis, each task one PostgreSQL
//! write; the same creates from the same number of creators. Each is run
//! `--repeat` times; the medians and their ratio are printed.
//!
//! Celery comes from PyPI into a virtualenv (`target/celery-venv`, made on
//! the first run, `bench/celery/requirements.txt`); its side is
//! `bench/celery/peer.py`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::json;

use crate::{
    e2e::{self, Setup, StackArgs},
    fleet::bench_user,
};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Tasks in each throughput run.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Concurrent creators, on both sides.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Runs of each side; the medians are compared.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Tasks in the idle-latency trickle, at 50 a second.
    #[arg(long, default_value_t = 200)]
    trickle: usize,
    /// Where the Celery virtualenv is (made when missing).
    #[arg(long, default_value = "target/celery-venv")]
    venv: PathBuf,
    #[command(flatten)]
    stack: StackArgs,
    /// Print one JSON object as the last line too.
    #[arg(long)]
    json: bool,
}

/// One side's figures of one run.
#[derive(Debug, Clone, Copy, Deserialize)]
struct Figures {
    enqueue_tps: f64,
    e2e_tps: f64,
    start_p99_ms: f64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let python = celery_venv(&args.venv)?;
    let mut keel = Vec::new();
    let mut celery = Vec::new();
    for round in 1..=args.repeat {
        let figures = keel_run(&args).await?;
        println!(
            "run {round}: Keel {:.0} tasks/s end to end, enqueue {:.0}/s, idle start p99 {:.2} ms",
            figures.e2e_tps, figures.enqueue_tps, figures.start_p99_ms
        );
        keel.push(figures);
        let figures = celery_run(&args, &python)?;
        println!(
            "run {round}: Celery {:.0} tasks/s end to end, enqueue {:.0}/s, idle start p99 {:.2} ms",
            figures.e2e_tps, figures.enqueue_tps, figures.start_p99_ms
        );
        celery.push(figures);
    }
    let (k, c) = (median(&keel), median(&celery));
    println!(
        "\ncompare-celery: {} noop tasks, {} creators, median of {} runs each; each task one PostgreSQL write\n",
        args.tasks, args.connections, args.repeat
    );
    println!("| | end to end | enqueue | idle enqueue→start p99 |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| Keel, defaults (1 worker, concurrency {}) | {:.0} tasks/s | {:.0}/s | {:.2} ms |",
        args.stack.concurrency_label(),
        k.e2e_tps,
        k.enqueue_tps,
        k.start_p99_ms
    );
    println!(
        "| Celery 5 + Redis, prefork (concurrency = cores) | {:.0} tasks/s | {:.0}/s | {:.2} ms |",
        c.e2e_tps, c.enqueue_tps, c.start_p99_ms
    );
    println!(
        "| Keel ÷ Celery | {:.1}× | {:.1}× | {:.2}× |",
        k.e2e_tps / c.e2e_tps,
        k.enqueue_tps / c.enqueue_tps,
        k.start_p99_ms / c.start_p99_ms
    );
    if args.json {
        println!(
            "{}",
            json!({
                "keel": {"e2e_tps": k.e2e_tps.round(), "enqueue_tps": k.enqueue_tps.round(), "start_p99_ms": k.start_p99_ms},
                "celery": {"e2e_tps": c.e2e_tps.round(), "enqueue_tps": c.enqueue_tps.round(), "start_p99_ms": c.start_p99_ms},
                "e2e_ratio": k.e2e_tps / c.e2e_tps,
            })
        );
    }
    Ok(())
}

/// The median of each figure apart.
fn median(runs: &[Figures]) -> Figures {
    let pick = |f: fn(&Figures) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    Figures {
        enqueue_tps: pick(|f| f.enqueue_tps),
        e2e_tps: pick(|f| f.e2e_tps),
        start_p99_ms: pick(|f| f.start_p99_ms),
    }
}

/// One Keel run: a fresh prefix, one worker as `keel-worker` starts
/// without settings, the throughput run, then the idle trickle.
async fn keel_run(args: &Args) -> anyhow::Result<Figures> {
    let setup = Setup::connect(&args.stack.stores, None).await?;
    let mut fleet = setup.workers(1, &args.stack).await?;
    let run = e2e::throughput(&setup, args.tasks, 1, args.connections, 1).await;
    let latency = match &run {
        Ok(_) => {
            let owner = bench_user(&setup.pool).await?;
            Some(e2e::trickle(&setup.pool, &setup.jobs, owner, args.trickle, 50).await?)
        }
        Err(_) => None,
    };
    fleet.stop();
    if let Err(e) = setup.forget_prefix().await {
        eprintln!(
            "keel-bench: the run's Redis keys were left under {}: {e:#}",
            setup.prefix
        );
    }
    let run = run?;
    let latency = latency.context("a latency run")?;
    Ok(Figures {
        enqueue_tps: run.enqueue_tps,
        e2e_tps: run.e2e_tps,
        start_p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
    })
}

/// One Celery run, by `bench/celery/peer.py`.
fn celery_run(args: &Args, python: &std::path::Path) -> anyhow::Result<Figures> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("celery/peer.py");
    let redis_db = format!("{}/15", args.stack.stores.redis_url.trim_end_matches('/'));
    let output = Command::new(python)
        .arg(&script)
        .args(["run", "--tasks", &args.tasks.to_string()])
        .args(["--connections", &args.connections.to_string()])
        .args(["--trickle", &args.trickle.to_string()])
        .env("KEEL_CELERY_DATABASE_URL", &args.stack.stores.database_url)
        .env("KEEL_CELERY_BROKER", redis_db)
        .output()
        .context("running the Celery peer")?;
    if !output.status.success() {
        bail!(
            "the Celery peer failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().context("the peer printed nothing")?;
    serde_json::from_str(last).with_context(|| format!("the peer's figures: {last}"))
}

/// The virtualenv's Python, with Celery installed (made when missing).
fn celery_venv(venv: &std::path::Path) -> anyhow::Result<PathBuf> {
    let python = venv.join("bin/python");
    let ready = python.exists()
        && Command::new(&python)
            .args(["-c", "import celery, psycopg, redis"])
            .status()
            .is_ok_and(|s| s.success());
    if ready {
        return Ok(python);
    }
    println!("making {} with Celery from PyPI (once)", venv.display());
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .status()
        .context("python3 -m venv")?;
    if !made.success() {
        bail!("python3 -m venv failed (Debian: apt install python3-venv)");
    }
    let requirements =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("celery/requirements.txt");
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(requirements)
        .status()
        .context("pip install")?;
    if !installed.success() {
        bail!("pip could not install the Celery peer's packages");
    }
    Ok(python)
}
