//! `Worker`: one worker process — its connections, the apalis worker of
//! each queue it serves, its card in the worker registry (refreshed every
//! few seconds), its ops server, and its drain on a stop signal.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use keel_shared::{
    Config, RedisClient,
    kinds::{self, KindSettings},
    process::{self, Backbone, Service},
    queue::{JobQueue, Queue},
    storage::Storage,
    task_events,
    workers::{self, HEARTBEAT_INTERVAL, WorkerCard},
};
use tokio_util::sync::CancellationToken;

use crate::{
    email::EmailRunner,
    maintenance::MaintenanceRunner,
    stats::Stats,
    supervisor,
    tasks::{self, TaskRunner},
    wake::WakeSignal,
};

/// Mails one worker sends at once, whatever `WORKER_CONCURRENCY` says:
/// its SMTP connections are pooled (ten), and a mail server is not to be
/// opened a hundred connections to.
const MAX_EMAIL_SENDS: usize = 16;

/// `METRICS_PORT` of a worker when unset.
pub const DEFAULT_METRICS_PORT: u16 = 9101;

/// A started worker process.
#[derive(Debug)]
pub struct Worker {
    backbone: Backbone,
    config: Config,
    /// Where task kinds write their output files.
    storage: Storage,
    card: WorkerCard,
    shutdown: CancellationToken,
}

impl Worker {
    pub fn name(&self) -> &str {
        &self.card.id
    }
}

impl Service for Worker {
    const NAME: &'static str = "keel-worker";

    /// Connects to Postgres and Redis, opens file storage and binds the ops server.
    ///
    /// # Errors
    /// A dependency cannot be reached, the storage settings are unusable, or
    /// the ops port cannot be bound.
    async fn build(config: &Config) -> anyhow::Result<Self> {
        let backbone = Backbone::connect(config, DEFAULT_METRICS_PORT).await?;
        let storage = Storage::from_config(config)?;
        let now = Utc::now();
        let hostname = gethostname::gethostname().to_string_lossy().into_owned();
        let card = WorkerCard {
            id: config
                .worker
                .name
                .clone()
                .unwrap_or_else(|| process::unique_name(&hostname)),
            hostname,
            pid: std::process::id(),
            queues: config.worker.queues.clone(),
            kinds: if config.worker.queues.contains(&Queue::Tasks) {
                let settings = KindSettings::from_config(config);
                kinds::enabled(&settings)
                    .map(|k| k.name.to_owned())
                    .collect()
            } else {
                Vec::new()
            },
            concurrency: config.worker_concurrency(),
            version: env!("CARGO_PKG_VERSION").into(),
            in_flight: 0,
            processed: 0,
            failed: 0,
            started_at: now,
            last_seen: now,
        };
        Ok(Self {
            backbone,
            config: config.clone(),
            storage,
            card,
            shutdown: CancellationToken::new(),
        })
    }

    /// Cancelling this token stops the worker as a stop signal would.
    fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs the queues and heartbeats until stopped; then drains: no new
    /// jobs are taken, running attempts get `SHUTDOWN_GRACE_SECONDS` to
    /// finish and are handed back after that, and the worker leaves the
    /// registry.
    ///
    /// # Errors
    /// Never for a Redis or Postgres outage (the loops recover when it is
    /// back); only if a queue cannot be set up.
    async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            backbone,
            config,
            storage,
            mut card,
            shutdown,
        } = self;
        let Backbone { db, redis, ops } = backbone;
        let ops = tokio::spawn(ops.serve(shutdown.clone()));
        let stats = Arc::new(Stats::default());
        let grace_over = CancellationToken::new();
        let finished = CancellationToken::new();
        let jobs = JobQueue::new(redis.clone());

        // Each queue's wake-ups, heard until the worker has finished.
        let wake =
            |queue| WakeSignal::listen(redis.clone(), jobs.wake_channel(queue), finished.clone());
        // The apalis worker of a queue run by `supervisor`.
        let supervised = |lease, concurrency| supervisor::QueueSetup {
            jobs: jobs.clone(),
            redis: redis.clone(),
            lease,
            base_name: card.id.clone(),
            concurrency,
        };
        let mut queues = Vec::new();
        let mut runners = Vec::new();
        for queue in &card.queues {
            match queue {
                Queue::Tasks => {
                    let runner = Arc::new(TaskRunner::start(
                        &config,
                        db.clone(),
                        redis.clone(),
                        storage.clone(),
                        &card.id,
                        stats.clone(),
                        shutdown.clone(),
                        grace_over.clone(),
                        finished.clone(),
                    ));
                    runners.push(runner.clone());
                    listen_for_stops(&redis, &runner, finished.clone());
                    queues.push(tokio::spawn(tasks::run_queue(
                        runner,
                        wake(Queue::Tasks),
                        card.id.clone(),
                        card.concurrency,
                        shutdown.clone(),
                    )));
                }
                Queue::Email => {
                    let runner = Arc::new(EmailRunner::new(
                        &config,
                        db.clone(),
                        jobs.clone(),
                        &card.id,
                        shutdown.clone(),
                    )?);
                    let setup = supervised(runner.lease(), card.concurrency.min(MAX_EMAIL_SENDS));
                    let run = supervisor::run(setup, runner, wake(Queue::Email), shutdown.clone());
                    queues.push(tokio::spawn(run));
                }
                Queue::Maintenance => {
                    let runner =
                        Arc::new(MaintenanceRunner::new(&config, db.clone(), storage.clone()));
                    // One at a time: purges of the same tables would only contend.
                    let setup = supervised(runner.lease(), 1);
                    let run =
                        supervisor::run(setup, runner, wake(Queue::Maintenance), shutdown.clone());
                    queues.push(tokio::spawn(run));
                }
            }
        }

        tracing::info!(worker = %card.id, queues = ?card.queues, concurrency = card.concurrency, "keel-worker started");
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => beat(&redis, &mut card, &stats).await,
            }
        }

        let grace = Duration::from_secs(config.process.shutdown_grace_seconds);
        tracing::info!(worker = %card.id, grace_seconds = grace.as_secs(), "draining");
        let timer = {
            let grace_over = grace_over.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                grace_over.cancel();
            })
        };
        // Keep the card fresh while draining, so the fleet view shows the drain.
        let drained = async {
            for queue in queues {
                match queue.await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "a queue stopped with an error"),
                    Err(e) => tracing::warn!(error = %e, "a queue task failed"),
                    Ok(Ok(())) => {}
                }
            }
            // Attempts whose apalis worker died under them finish (or are handed back) too.
            for runner in &runners {
                runner.drained().await;
            }
        };
        tokio::pin!(drained);
        let hard_stop = tokio::time::sleep(grace + Duration::from_secs(10));
        tokio::pin!(hard_stop);
        loop {
            tokio::select! {
                () = &mut drained => break,
                () = &mut hard_stop => {
                    tracing::warn!("queues did not stop in time; leaving anyway");
                    break;
                }
                _ = tick.tick() => beat(&redis, &mut card, &stats).await,
            }
        }
        timer.abort();
        finished.cancel();
        if let Err(e) = workers::deregister(&redis, &card.id).await {
            tracing::warn!(error = %e, "could not leave the worker registry; the entry expires by itself");
        }
        ops.await?;
        tracing::info!(worker = %card.id, "keel-worker stopped");
        Ok(())
    }
}

async fn beat(redis: &RedisClient, card: &mut WorkerCard, stats: &Stats) {
    (card.in_flight, card.processed, card.failed) = stats.snapshot();
    if let Err(e) = workers::heartbeat(redis, card).await {
        tracing::warn!(error = %e, "heartbeat failed; retrying at the next beat");
    }
}

/// Stops this worker's attempts of the tasks someone cancels, as the API
/// announces them (a message names one task and its attempt's lease token;
/// every worker hears it, the one running that attempt acts).
fn listen_for_stops(redis: &RedisClient, runner: &Arc<TaskRunner>, stop: CancellationToken) {
    let runner = runner.clone();
    let channel = task_events::stop_channel(redis);
    crate::listen::listen(redis.clone(), channel, stop, move |message| {
        let Ok(text) = message.get_payload::<String>() else {
            return;
        };
        let Some((id, token)) = text.split_once(' ') else {
            return;
        };
        if let Ok(id) = uuid::Uuid::parse_str(id)
            && runner.stop_attempt(id, token)
        {
            tracing::info!(task_id = %id, "cancelled while running; stopping the attempt");
        }
    });
}
