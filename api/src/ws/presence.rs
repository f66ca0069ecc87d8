//! Who is in a room, across every API replica: a Redis sorted set per room,
//! one member per socket (`{user_id}|{socket_id}|{username}`) scored by the
//! time its replica last vouched for it. A replica that dies stops
//! vouching, so its sockets drop out of the list after [`STALE`].

use std::{collections::BTreeSet, time::Duration};

use chrono::Utc;
use keel_shared::RedisClient;
use uuid::Uuid;

use super::protocol::Member;

/// A member not vouched for this long is gone (its replica died).
pub const STALE: Duration = Duration::from_secs(90);

fn key(redis: &RedisClient, room: &str) -> String {
    redis.key(&format!("ws:presence:{room}"))
}

fn entry(user: &Member, socket: Uuid) -> String {
    format!("{}|{socket}|{}", user.id, user.username)
}

/// Adds (or vouches again for) `socket` of `user` in `rooms`.
///
/// # Errors
/// Redis is unreachable.
pub async fn enter(
    redis: &RedisClient,
    rooms: impl IntoIterator<Item = &str>,
    user: &Member,
    socket: Uuid,
) -> redis::RedisResult<()> {
    let now = Utc::now().timestamp();
    let mut pipe = redis::pipe();
    for room in rooms {
        pipe.zadd(key(redis, room), entry(user, socket), now)
            .ignore()
            .expire(
                key(redis, room),
                i64::try_from(STALE.as_secs() * 2).unwrap_or(180),
            )
            .ignore();
    }
    pipe.exec_async(&mut redis.conn()).await
}

/// Removes `socket` of `user` from `room`.
///
/// # Errors
/// Redis is unreachable.
pub async fn leave(
    redis: &RedisClient,
    room: &str,
    user: &Member,
    socket: Uuid,
) -> redis::RedisResult<()> {
    redis::cmd("ZREM")
        .arg(key(redis, room))
        .arg(entry(user, socket))
        .exec_async(&mut redis.conn())
        .await
}

/// The users in `room` now, by username, each once.
///
/// # Errors
/// Redis is unreachable.
pub async fn list(redis: &RedisClient, room: &str) -> redis::RedisResult<Vec<Member>> {
    let since = Utc::now().timestamp() - i64::try_from(STALE.as_secs()).unwrap_or(90);
    let (_, entries): ((), Vec<String>) = redis::pipe()
        .cmd("ZREMRANGEBYSCORE")
        .arg(key(redis, room))
        .arg("-inf")
        .arg(format!("({since}"))
        .cmd("ZRANGE")
        .arg(key(redis, room))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis.conn())
        .await?;
    let members: BTreeSet<Member> = entries
        .iter()
        .filter_map(|e| {
            let mut parts = e.splitn(3, '|');
            let id = parts.next()?.parse().ok()?;
            let _socket = parts.next()?;
            Some(Member {
                id,
                username: parts.next()?.to_owned(),
            })
        })
        .collect();
    Ok(members.into_iter().collect())
}
