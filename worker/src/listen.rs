//! One Redis channel heard for the life of the process: subscribes,
//! hands every message to a callback, and on a lost connection subscribes
//! again with backoff. What a message means is the caller's business
//! (a wake-up, a stop request).

use std::time::Duration;

use futures_util::StreamExt as _;
use keel_shared::RedisClient;
use tokio_util::sync::CancellationToken;

/// Listens on `channel` in the background until `stop`, calling
/// `on_message` for each message. Messages published while the connection
/// is down are lost (pub/sub keeps nothing): callers keep a slower path
/// that does not need them.
pub fn listen(
    redis: RedisClient,
    channel: String,
    stop: CancellationToken,
    mut on_message: impl FnMut(redis::Msg) + Send + 'static,
) {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let session = async {
                let mut pubsub = redis.pubsub().await?;
                pubsub.subscribe(&channel).await?;
                tracing::debug!(%channel, "listening");
                let mut messages = pubsub.on_message();
                while let Some(message) = messages.next().await {
                    on_message(message);
                }
                Ok::<_, redis::RedisError>(())
            };
            tokio::select! {
                () = stop.cancelled() => return,
                result = session => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %channel, "channel lost; subscribing again");
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}
