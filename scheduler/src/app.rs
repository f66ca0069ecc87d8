//! `Scheduler`: one scheduler process — its connections, its ops server and
//! its stop. Any number may run: ticks are deduplicated in Postgres.

use keel_shared::{
    Config,
    process::{Backbone, Service},
};
use tokio_util::sync::CancellationToken;

use crate::schedules::{self, Ticker};

/// `METRICS_PORT` of a scheduler when unset.
pub const DEFAULT_METRICS_PORT: u16 = 9102;

/// A started scheduler process.
#[derive(Debug)]
pub struct Scheduler {
    backbone: Backbone,
    config: Config,
    shutdown: CancellationToken,
}

impl Service for Scheduler {
    const NAME: &'static str = "keel-scheduler";

    /// Connects to Postgres and Redis and binds the ops server.
    ///
    /// # Errors
    /// A dependency cannot be reached or the ops port cannot be bound.
    async fn build(config: &Config) -> anyhow::Result<Self> {
        let mut backbone = Backbone::connect(config, DEFAULT_METRICS_PORT).await?;
        // One scheduler always runs, so its scrape always has the queue gauges.
        backbone.ops.export_queue_gauges();
        Ok(Self {
            backbone,
            config: config.clone(),
            shutdown: CancellationToken::new(),
        })
    }

    /// Cancelling this token stops the scheduler as a stop signal would.
    fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Fires schedules (the reconciler among them) and serves its probes until stopped.
    ///
    /// # Errors
    /// Only if the process cannot go on.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            backbone,
            config,
            shutdown,
        } = self;
        let hostname = gethostname::gethostname().to_string_lossy().into_owned();
        let replica = keel_shared::process::unique_name(&hostname);
        tracing::info!(%replica, "keel-scheduler started");
        let ticker = Ticker::new(
            &config,
            backbone.db.clone(),
            backbone.redis.clone(),
            replica,
        );
        let ticks =
            tokio::spawn(ticker.run(schedules::system_schedules(&config), shutdown.clone()));
        backbone.ops.serve(shutdown).await;
        ticks.await?;
        tracing::info!("keel-scheduler stopped");
        Ok(())
    }
}
