//! Wake-ups for idle apalis workers. apalis-redis fetches only when polled,
//! and nothing polls an idle worker when a job is pushed; a tight poll would
//! burn Redis time. So producers publish on the queue's wake channel
//! ([`keel_shared::queue::JobQueue::wake_channel`]) and this stream
//! turns each message into a fetch, with a slow interval as the safety net
//! (for scheduled jobs coming due, and for a lost pub/sub connection).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{Stream, StreamExt as _};
use keel_shared::RedisClient;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often an idle worker looks for due work without being woken.
pub const FALLBACK_POLL: Duration = Duration::from_millis(100);

/// A fetch that was already running when a wake-up came may have missed the
/// new job; a second tap this much later covers it.
const SECOND_TAP: Duration = Duration::from_millis(3);

/// Listens on one wake channel for the life of the process, reconnecting
/// with backoff; every [`Wake`] stream made from it fires on each message.
#[derive(Debug, Clone)]
pub struct WakeSignal {
    // A counter rather than a notification: a receiver that was busy when a
    // message came still sees that the counter moved, so no wake-up is lost.
    wakes: Arc<watch::Sender<u64>>,
}

impl WakeSignal {
    /// Subscribes to `channel` in the background until `stop` (a lost
    /// connection costs nothing but latency: the interval still polls).
    pub fn listen(redis: RedisClient, channel: String, stop: CancellationToken) -> Self {
        let wakes = Arc::new(watch::Sender::new(0));
        let signal = Self {
            wakes: wakes.clone(),
        };
        crate::listen::listen(redis, channel, stop, move |_| {
            wakes.send_modify(|n| *n = n.wrapping_add(1));
        });
        signal
    }

    /// A stream for one apalis worker's poll strategy: it yields on every
    /// wake-up (and again a moment later), or after [`FALLBACK_POLL`] of quiet.
    pub fn stream(&self) -> Wake {
        let wakes = self.wakes.subscribe();
        let taps = futures_util::stream::unfold(wakes, |mut wakes| async move {
            tokio::select! {
                changed = wakes.changed() => {
                    if changed.is_err() {
                        // The listener is gone (process stopping): poll on the interval.
                        tokio::time::sleep(FALLBACK_POLL).await;
                    }
                }
                () = tokio::time::sleep(FALLBACK_POLL) => {}
            }
            Some(((), wakes))
        })
        .flat_map(|()| {
            futures_util::stream::once(async {})
                .chain(futures_util::stream::once(tokio::time::sleep(SECOND_TAP)))
        });
        Wake {
            inner: Box::pin(taps),
        }
    }
}

/// Yields whenever the worker should fetch.
pub struct Wake {
    inner: Pin<Box<dyn Stream<Item = ()> + Send>>,
}

impl std::fmt::Debug for Wake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Wake")
    }
}

impl Stream for Wake {
    type Item = ();

    /// Drains every tap that is ready and answers once for them all. apalis
    /// polls its strategy once per poll and ignores the answer, so a stream
    /// left Ready would hold no waker, and the next wake-up would go unheard
    /// until the worker's heartbeat; drained to Pending, it always holds one.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let mut fired = false;
        while let Poll::Ready(Some(())) = self.inner.as_mut().poll_next(cx) {
            fired = true;
        }
        if fired {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}
