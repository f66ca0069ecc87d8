//! The `keel-worker` command line: the shared configuration, of which
//! `--queues`, `--concurrency` and `--name` are the worker's own.

use std::process::ExitCode;

use clap::Parser;
use keel_shared::{Config, config, process, shutdown};

use crate::app::Worker;

/// Keel's worker: runs queued jobs (emails, 2FA codes, tasks, maintenance).
#[derive(Debug, Parser)]
#[command(name = "keel-worker", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    config: Config,
}

/// Runs `keel-worker`: 0 after a clean stop, 1 on failure, 2 on bad configuration.
pub fn main() -> ExitCode {
    let Cli { config } = config::parse_cli();
    if let Err(e) = config.validate() {
        config::exit_config(&e.0);
    }
    process::run_main("keel-worker", &config, async {
        let worker = Worker::build(&config).await?;
        shutdown::cancel_on_signal(worker.shutdown_token());
        worker.run_until_stopped().await
    })
}
