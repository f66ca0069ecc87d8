//! `keel-bench`: load against a running Keel stack, printed next to what
//! this machine allows, so each figure says how close to the ceiling Keel
//! is. Figures are printed, never asserted. See `bench/README.md`.
//!
//! # Layout
//!
//! - [`load`]: the closed-loop load generator and its latency histogram.
//! - [`auth`]: the `auth` workload — login throughput against the argon2
//!   ceiling, and `GET /users/me` against a bare axum handler.
//! - [`e2e`]: the task pipeline end to end, with real workers.
//! - [`ws`]: WebSockets held open, and a room broadcast.
//! - [`ticks`]: cron ticks through competing scheduler replicas.
//! - [`ceilings`]: pgbench and redis-benchmark for the same work.
//! - [`fleet`]: the processes and users a bench starts and makes.

pub mod auth;
pub mod ceilings;
pub mod e2e;
pub mod fleet;
pub mod load;
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
    /// Logins/s next to the single-core argon2 ceiling; `GET /users/me` next to a bare axum handler.
    Auth(auth::Args),
    /// The task pipeline: enqueue and end-to-end tasks/s, idle enqueue→start latency.
    E2e(e2e::Args),
    /// WebSockets: sockets held and memory per socket; broadcast latency to a room.
    Ws(ws::Args),
    /// Cron ticks under competing scheduler replicas: lateness, and one fire per tick.
    Ticks(ticks::Args),
    /// This machine's own limits for the pipeline's work: pgbench with the task SQL, redis-benchmark.
    Ceilings(ceilings::Args),
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
            Command::Auth(args) => auth::run(args).await,
            Command::E2e(args) => e2e::run(args).await,
            Command::Ceilings(args) => ceilings::run(args).await,
            Command::Ticks(args) => ticks::run(args).await,
            Command::Ws(args) => ws::run(args).await,
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
