//! Live task updates: every status or progress change is published on a
//! Redis channel per owner, `{prefix}:task-events:{owner_id}`, as the JSON of
//! [`TaskState`]. The WebSocket hub subscribes (per user, or to the pattern
//! for admins). Publishing is best effort: the row is the truth, a missed
//! message only delays a live view until its next poll or update.
//!
//! The other way, `{prefix}:task-stops` carries `"{task id} {lease token}"`
//! of a running attempt someone cancelled, to whichever worker holds it.
//! Best effort too: the request is on the row, and the worker's lease
//! renewal reads it.

use uuid::Uuid;

use crate::{db::tasks::TaskState, redis_client::RedisClient};

/// The channel of `owner`'s task updates.
pub fn channel(redis: &RedisClient, owner: Uuid) -> String {
    redis.key(&format!("task-events:{owner}"))
}

/// The pattern matching every owner's channel, for admins.
pub fn all_channels(redis: &RedisClient) -> String {
    redis.key("task-events:*")
}

/// Publishes `states` in one round trip.
pub async fn publish(redis: &RedisClient, states: &[TaskState]) {
    if states.is_empty() {
        return;
    }
    let mut pipe = redis::pipe();
    for state in states {
        let json = serde_json::to_string(state).expect("a task state serialises");
        pipe.cmd("PUBLISH")
            .arg(channel(redis, state.owner_id))
            .arg(json)
            .ignore();
    }
    if let Err(e) = pipe.exec_async(&mut redis.conn()).await {
        tracing::debug!(error = %e, count = states.len(), "could not publish task updates");
    }
}

/// The channel on which workers hear which running tasks to stop.
pub fn stop_channel(redis: &RedisClient) -> String {
    redis.key("task-stops")
}

/// Tells the workers running the attempts `(task id, lease token)` to stop
/// them, in one round trip.
///
/// # Errors
/// Redis fails (the workers' next lease renewals still see the requests).
pub async fn request_stops(
    redis: &RedisClient,
    attempts: &[(Uuid, String)],
) -> Result<(), redis::RedisError> {
    let channel = stop_channel(redis);
    let mut pipe = redis::pipe();
    for (id, token) in attempts {
        pipe.cmd("PUBLISH")
            .arg(&channel)
            .arg(format!("{id} {token}"))
            .ignore();
    }
    pipe.exec_async(&mut redis.conn()).await
}
