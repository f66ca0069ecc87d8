//! `keel-bench`: load against a running Keel stack, printed next to what
//! this machine allows, so each figure says how close to the ceiling Keel
//! is. Figures are printed, never asserted. See `bench/README.md`.
//!
//! # Layout
//!
//! - [`load`]: the closed-loop load generator and its latency histogram.
//! - [`auth`]: the `auth` workload — login throughput against the argon2
//!   ceiling, and `GET /users/me` against a bare axum handler.
//! - [`e2e`]: the task pipeline end to end, with real workers (and the
//!   scaling curve over fleet sizes).
//! - [`burn_down`]: a queued backlog drained by workers started after it.
//! - [`schedule`]: many tasks due at one instant: start lateness.
//! - [`soak`]: a whole stack under steady load for half an hour: memory
//!   and table bloat over time.
//! - [`ws`]: WebSockets held open, and a room broadcast.
//! - [`ticks`]: cron ticks through competing scheduler replicas.
//! - [`http`]: the hot endpoints, closed and open loop, beside a bare
//!   handler and pgbench.
//! - [`ceilings`]: pgbench and redis-benchmark for the same work.
//! - [`compare_celery`]: Keel at its defaults beside Celery 5, same machine.
//! - [`files`]: a 100 MB file uploaded and downloaded, beside a plain
//!   file write and read, with the API's memory.
//! - [`fleet`]: the processes and users a bench starts and makes.
//! - [`stores`]: where a bench finds PostgreSQL and Redis, and its
//!   database there.

pub mod auth;
pub mod burn_down;
pub mod ceilings;
pub mod compare_celery;
pub mod e2e;
pub mod files;
pub mod fleet;
pub mod http;
pub mod load;
pub mod schedule;
pub mod soak;
pub mod stores;
pub mod ticks;
pub mod ws;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "keel-bench",
    version,
    about = "Benchmarks against a running Keel stack"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Logins/s next to the argon2 ceiling; `GET /users/me` next to a bare handler; both under a login overload.
    #[command(alias = "auth")]
    Login(auth::Args),
    /// The task pipeline: enqueue and end-to-end tasks/s per fleet size, idle enqueue→start latency.
    E2e(e2e::Args),
    /// A backlog of noop tasks queued first, then drained by workers: tasks/s.
    BurnDown(burn_down::Args),
    /// Many tasks scheduled for one instant: start lateness p50/p99/max, none early.
    Schedule(schedule::Args),
    /// WebSockets: sockets held and memory per socket; broadcast latency to a room.
    Ws(ws::Args),
    /// GET /users/me, POST /tasks, GET /tasks/{id}/status: closed and open loop, beside a bare handler and pgbench.
    Http(http::Args),
    /// A whole stack under a steady stream of creates for a long time: RSS, Redis memory and table bloat over time.
    Soak(soak::Args),
    /// Cron ticks under competing scheduler replicas: lateness, and one fire per tick.
    Ticks(ticks::Args),
    /// This machine's own limits for the pipeline's work: pgbench with the task SQL, redis-benchmark.
    Ceilings(ceilings::Args),
    /// One large file uploaded and downloaded: MB/s beside a plain file write and read, and the API's RSS.
    Files(files::Args),
    /// Keel at its defaults beside Celery 5 + Redis (from PyPI), same machine, same work: medians and the ratio.
    CompareCelery(compare_celery::Args),
}

/// Runs the chosen benchmark; 1 and a message on failure.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Login(args) => auth::run(args).await,
            Command::E2e(args) => e2e::run(args).await,
            Command::BurnDown(args) => burn_down::run(args).await,
            Command::Schedule(args) => schedule::run(args).await,
            Command::Ceilings(args) => ceilings::run(args).await,
            Command::Ticks(args) => ticks::run(args).await,
            Command::Soak(args) => soak::run(args).await,
            Command::Http(args) => http::run(args).await,
            Command::Ws(args) => ws::run(args).await,
            Command::Files(args) => files::run(args).await,
            Command::CompareCelery(args) => compare_celery::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
