//! `Worker`: one worker process — its connections, its card in the worker
//! registry (refreshed every few seconds), its ops server, and its stop.

use chrono::Utc;
use keel_shared::{
    Config, RedisClient,
    process::Backbone,
    workers::{self, HEARTBEAT_INTERVAL, WorkerCard},
};
use tokio_util::sync::CancellationToken;

/// `METRICS_PORT` of a worker when unset.
pub const DEFAULT_METRICS_PORT: u16 = 9101;

/// A started worker process.
#[derive(Debug)]
pub struct Worker {
    backbone: Backbone,
    card: WorkerCard,
    shutdown: CancellationToken,
}

impl Worker {
    /// Connects to Postgres and Redis and binds the ops server.
    ///
    /// # Errors
    /// A dependency cannot be reached or the ops port cannot be bound.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let backbone = Backbone::connect(config, DEFAULT_METRICS_PORT).await?;
        let now = Utc::now();
        let hostname = gethostname::gethostname().to_string_lossy().into_owned();
        let card = WorkerCard {
            id: config
                .worker_name
                .clone()
                .unwrap_or_else(|| unique_name(&hostname)),
            hostname,
            pid: std::process::id(),
            queues: config.worker_queues.clone(),
            concurrency: config.worker_concurrency(),
            started_at: now,
            last_seen: now,
        };
        Ok(Self {
            backbone,
            card,
            shutdown: CancellationToken::new(),
        })
    }

    pub fn name(&self) -> &str {
        &self.card.id
    }

    pub fn ops_port(&self) -> u16 {
        self.backbone
            .ops
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Cancelling this token stops the worker as a stop signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Heartbeats until stopped, then leaves the registry.
    ///
    /// # Errors
    /// Never for a Redis outage (heartbeats resume when it is back); only if
    /// the process cannot go on.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            backbone,
            mut card,
            shutdown,
        } = self;
        let Backbone { redis, ops, .. } = backbone;
        let ops = tokio::spawn(ops.serve(shutdown.clone()));
        tracing::info!(worker = %card.id, queues = ?card.queues, concurrency = card.concurrency, "keel-worker started");
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => beat(&redis, &mut card).await,
            }
        }
        if let Err(e) = workers::deregister(&redis, &card.id).await {
            tracing::warn!(error = %e, "could not leave the worker registry; the entry expires by itself");
        }
        ops.await?;
        tracing::info!(worker = %card.id, "keel-worker stopped");
        Ok(())
    }
}

async fn beat(redis: &RedisClient, card: &mut WorkerCard) {
    if let Err(e) = workers::heartbeat(redis, card).await {
        tracing::warn!(error = %e, "heartbeat failed; retrying at the next beat");
    }
}

/// `host-pid-suffix`: a restarted process never reuses a name, so its
/// predecessor's orphaned jobs are recognised as such.
fn unique_name(hostname: &str) -> String {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{hostname}-{}-{}", std::process::id(), &suffix[..8])
}
