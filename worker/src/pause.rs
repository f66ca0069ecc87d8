//! Queue pauses set by ops (`POST /admin/queues/{queue}/pause`): a flag in
//! Redis, read every second, so a paused queue's worker stops taking jobs
//! within the 5 s the API promises and starts again on resume.

use std::time::Duration;

use keel_shared::queue::{JobQueue, Queue};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the flag is read.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Whether `queue` is paused, kept current until `stop`. While Redis is
/// unreachable the last known answer stands (the queue's worker cannot
/// fetch then anyway).
pub fn watch(jobs: JobQueue, queue: Queue, stop: CancellationToken) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Ok(paused) = jobs.is_paused(queue).await {
                tx.send_if_modified(|now| {
                    let changed = *now != paused;
                    *now = paused;
                    changed
                });
            }
        }
    });
    rx
}

/// Waits until the flag reads `paused` (at once if it already does).
pub async fn until(flag: &mut watch::Receiver<bool>, paused: bool) {
    // An error means the watcher stopped with the process: wait for the stop instead.
    if flag.wait_for(|now| *now == paused).await.is_err() {
        std::future::pending::<()>().await;
    }
}
