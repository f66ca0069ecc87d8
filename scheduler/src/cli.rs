//! The `keel-scheduler` command line: the shared configuration.

use std::process::ExitCode;

use clap::Parser;
use keel_shared::{Config, config, process};

use crate::app::Scheduler;

/// Keel's scheduler: fires periodic jobs and re-pushes jobs Redis lost.
#[derive(Debug, Parser)]
#[command(name = "keel-scheduler", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    config: Config,
}

/// Runs `keel-scheduler`: 0 after a clean stop, 1 on failure, 2 on bad configuration.
pub fn main() -> ExitCode {
    let Cli { config } = config::parse_cli();
    process::serve::<Scheduler>(&config)
}
