//! The `keel-worker` command line: the shared configuration, of which
//! `--queues`, `--concurrency` and `--name` are the worker's own.

use std::process::ExitCode;

use clap::Parser;
use keel_shared::{Config, config, process};

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
    process::serve::<Worker>(&config)
}

/// `keel-worker` running `kinds` instead of the built-in ones: the `main`
/// of a team's own worker binary (`worker/example/` shows one). Build the
/// API with the same registry.
pub fn main_with_kinds(kinds: keel_shared::kinds::Registry) -> ExitCode {
    if keel_shared::kinds::registry::install(kinds).is_err() {
        eprintln!("keel-worker: the task kinds were installed twice");
        return ExitCode::from(2);
    }
    main()
}
