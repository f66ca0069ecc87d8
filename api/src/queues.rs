//! What the job queues hold: each queue's counts from Postgres (the truth)
//! beside what Redis holds, for the admin routes and the dashboard.

use std::time::Duration;

use std::collections::{BTreeMap, HashSet};

use keel_shared::{
    db::tasks::{self, TaskStatus},
    queue::Queue,
    workers,
};

use crate::{error::ApiError, responses::QueueStats, state::AppState};

/// How long the queues view waits on Redis before showing Postgres alone.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Every queue's counts: Postgres's for tasks, and what Redis holds when it
/// answers within a second.
///
/// # Errors
/// PostgreSQL is unreachable.
pub(crate) async fn queue_stats(state: &AppState) -> Result<Vec<QueueStats>, ApiError> {
    let backlog = tasks::backlog(&state.db).await?;
    let by_status = tasks::count_by_status(&state.db).await?;
    let count = |status| {
        by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    };
    let from_redis = async {
        Ok::<_, redis::RedisError>((
            state.jobs.depths().await?,
            state.jobs.paused().await?,
            workers::list_alive(&state.redis).await?,
        ))
    };
    let redis = match tokio::time::timeout(REDIS_TIMEOUT, from_redis).await {
        Ok(Ok(counts)) => Some(counts),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "queue counts without Redis");
            None
        }
        Err(_) => {
            tracing::debug!("queue counts without Redis: it timed out");
            None
        }
    };
    let unrunnable = match redis.as_ref().map(|(.., cards)| runnable_kinds(cards)) {
        Some(Some(runnable)) => Some(
            tasks::waiting_by_kind(&state.db)
                .await?
                .into_iter()
                .filter(|(kind, _)| !runnable.contains(kind.as_str()))
                .collect::<BTreeMap<_, _>>(),
        ),
        _ => None,
    };
    let queues = Queue::ALL
        .into_iter()
        .enumerate()
        .map(|(i, queue)| {
            let paused = redis.as_ref().and_then(|(_, p, _)| p.get(i).copied());
            let redis = redis.as_ref().and_then(|(r, ..)| r.get(i).map(|(_, d)| *d));
            if queue == Queue::Tasks {
                QueueStats {
                    name: queue,
                    pending: backlog.due,
                    scheduled: backlog.scheduled,
                    running: count(TaskStatus::Running),
                    done: count(TaskStatus::Completed),
                    failed: count(TaskStatus::Failed),
                    paused,
                    redis,
                    unrunnable: unrunnable.clone(),
                }
            } else {
                QueueStats {
                    name: queue,
                    pending: 0,
                    scheduled: 0,
                    running: 0,
                    done: 0,
                    failed: 0,
                    paused,
                    redis,
                    unrunnable: None,
                }
            }
        })
        .collect();
    Ok(queues)
}

/// The kinds the live `tasks` workers run between them; `None` if one of
/// them does not say (an older release), when nothing can be told.
fn runnable_kinds(cards: &[workers::WorkerCard]) -> Option<HashSet<&str>> {
    let mut runnable = HashSet::new();
    for card in cards.iter().filter(|c| c.queues.contains(&Queue::Tasks)) {
        if card.kinds.is_empty() {
            return None;
        }
        runnable.extend(card.kinds.iter().map(String::as_str));
    }
    Some(runnable)
}
