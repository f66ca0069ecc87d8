//! One queue's apalis worker, kept running: restarted under a new name
//! (with backoff) when its backend fails — apalis ends a worker on any
//! Redis error and never reconnects by itself, and a reused name would keep
//! a dead worker's orphaned jobs looking alive — and stopped while ops
//! pause the queue (running jobs finish), started again on resume.

use std::{future::Future, sync::Arc, time::Duration};

use apalis::prelude::{BackendExt as _, BoxDynError, Data, WorkerBuilder, WorkerBuilderExt as _};
use keel_shared::{
    RedisClient,
    queue::{Job, JobQueue},
};
use tokio_util::sync::CancellationToken;

use crate::{pause, wake::WakeSignal};

/// What handles one queue's jobs.
pub trait Handler<J>: Send + Sync + 'static {
    /// Handles one job. `Err` makes apalis schedule the job again, so it is
    /// only for failures before anything was claimed.
    fn handle(self: Arc<Self>, job: J) -> impl Future<Output = Result<(), BoxDynError>> + Send;
}

/// How a queue's worker is set up.
#[derive(Debug, Clone)]
pub struct QueueSetup {
    pub jobs: JobQueue,
    pub redis: RedisClient,
    /// The lease of what the jobs claim: apalis's orphan detection is kept near it.
    pub lease: Duration,
    /// The worker process's unique name; each apalis worker adds the queue and a generation.
    pub base_name: String,
    pub concurrency: usize,
}

/// Runs `J`'s queue with `handler` until `stop`.
///
/// # Errors
/// Never for a Redis outage.
pub async fn run<J, H>(
    setup: QueueSetup,
    handler: Arc<H>,
    wake: WakeSignal,
    stop: CancellationToken,
) -> anyhow::Result<()>
where
    J: Job,
    H: Handler<J>,
{
    let queue = J::QUEUE;
    let mut paused = pause::watch(setup.jobs.clone(), queue, stop.clone());
    tokio::spawn(promote(setup.jobs.clone(), queue, stop.clone()));
    let mut generation = 0u32;
    let mut backoff = Backoff::default();
    // Workers stopped by a pause whose jobs are still running.
    let mut draining = tokio::task::JoinSet::new();
    loop {
        // Let go of the workers that have finished draining.
        while draining.try_join_next().is_some() {}
        if *paused.borrow() {
            tracing::info!(%queue, "queue paused; taking no jobs until it is resumed");
            tokio::select! {
                () = stop.cancelled() => break,
                () = pause::until(&mut paused, false) => {}
            }
            tracing::info!(%queue, "queue resumed");
        }
        let name = format!("{}-{queue}-{generation}", setup.base_name);
        // apalis recovers a dead worker's fetched jobs after its heartbeat is
        // this stale; keep it near the lease so takeovers line up.
        let heartbeat = (setup.lease / 3).max(Duration::from_secs(1));
        let config = setup
            .jobs
            .apalis_config(queue)
            .heartbeat_interval(heartbeat)
            .missed_heartbeats(3)
            .batch_size(setup.concurrency.max(1));
        let storage = apalis_redis::RedisStorage::<J>::new(setup.redis.conn())
            .with_config(config)
            .poll_with_stream(wake.stream());
        let worker = WorkerBuilder::new(name.clone())
            .backend(storage)
            .data(handler.clone())
            // No `catch_panic`: handlers run their work in their own tokio
            // tasks, where a panic is a failed attempt (and apalis would park a
            // panicked job in `dead` with its Redis status stuck at Running).
            .concurrency(setup.concurrency)
            .build(handle::<J, H>);
        let (signal, mut pause_flag) = (stop.clone(), paused.clone());
        tracing::debug!(worker = %name, "queue worker starting");
        let started = std::time::Instant::now();
        let mut run = tokio::spawn(worker.run_until(async move {
            tokio::select! {
                () = signal.cancelled() => {}
                () = pause::until(&mut pause_flag, true) => {}
            }
            Ok::<(), std::io::Error>(())
        }));
        // A pause stops the fetching at once; the jobs in flight finish in
        // the background, so a resume starts the next worker without waiting
        // for the longest of them.
        let result = tokio::select! {
            result = &mut run => result,
            () = pause::until(&mut paused, true), if !stop.is_cancelled() => {
                draining.spawn(async move {
                    let _ = run.await;
                });
                generation += 1;
                continue;
            }
        };
        let result = match result {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(format!("the queue worker's task ended: {e}")),
        };
        if *paused.borrow() && !stop.is_cancelled() {
            generation += 1;
            continue;
        }
        if stop.is_cancelled() {
            if let Err(e) = result {
                tracing::warn!(error = %e, worker = %name, "queue worker stopped with an error");
            }
            break;
        }
        match result {
            Ok(()) => tracing::warn!(worker = %name, "queue worker ended; restarting"),
            Err(e) => tracing::warn!(error = %e, worker = %name, "queue worker failed; restarting"),
        }
        generation += 1;
        let wait = backoff.after(started.elapsed());
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        // apalis's fetch promotes every due job in one Lua call, which fails
        // past about 8,000 ids: a burst that came due between two rounds of
        // the promoter can end a worker that way. Drain it before the next
        // worker's first fetch, so the restart cannot fail the same way.
        promote_all_due(&setup.jobs, queue).await;
    }
    // A shutdown waits for every worker still finishing its jobs.
    while draining.join_next().await.is_some() {}
    Ok(())
}

/// The wait before restarting a failed queue worker: doubling from half a
/// second to 30 s while restarts keep failing, and back to the start once
/// a worker has run for a while, so an outage last week does not slow the
/// recovery from today's.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);
    /// A worker that ran this long was healthy.
    const HEALTHY_RUN: Duration = Duration::from_secs(60);

    /// How long to wait after a worker that ran for `ran` ended.
    fn after(&mut self, ran: Duration) -> Duration {
        if ran >= Self::HEALTHY_RUN {
            self.next = Self::FIRST;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

async fn handle<J: Job, H: Handler<J>>(job: J, handler: Data<Arc<H>>) -> Result<(), BoxDynError> {
    Arc::clone(&handler).handle(job).await
}

/// Due jobs moved to the ready list per call: far below the ~8,000 ids at
/// which apalis's own promotion fails (see `JobQueue::promote_due`).
const PROMOTE_CHUNK: usize = 1000;
/// How often the promoter looks.
const PROMOTE_EVERY: Duration = Duration::from_millis(250);

/// Keeps `queue`'s due jobs moving from the scheduled set to the ready list
/// in chunks, until `stop`, so no backlog grows past what apalis's fetch
/// can promote.
async fn promote(jobs: JobQueue, queue: keel_shared::queue::Queue, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PROMOTE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        promote_all_due(&jobs, queue).await;
    }
}

/// Moves every due job of `queue` to the ready list, a chunk per round
/// trip, so a backlog of any size drains.
async fn promote_all_due(jobs: &JobQueue, queue: keel_shared::queue::Queue) {
    loop {
        match jobs.promote_due(queue, PROMOTE_CHUNK).await {
            Ok(moved) if moved == PROMOTE_CHUNK => {}
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(error = %e, %queue, "could not promote due jobs");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_while_they_fail_and_start_over_after_a_healthy_run() {
        let mut backoff = Backoff::default();
        let quick = Duration::from_secs(1);
        let waits: Vec<_> = (0..9).map(|_| backoff.after(quick).as_millis()).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(backoff.after(Backoff::HEALTHY_RUN), Backoff::FIRST);
        assert_eq!(backoff.after(quick), Duration::from_secs(1));
    }
}
