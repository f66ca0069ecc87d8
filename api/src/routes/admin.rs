//! `/api/v1/admin`: the operations view for admins — live workers, per-queue
//! counts (Postgres, the truth, beside what Redis holds) and user and task
//! statistics.

use std::{collections::BTreeMap, time::Duration};

use axum::extract::State;
use keel_shared::{
    db::{
        tasks::{self, TaskStatus},
        users::{self, UserStats},
    },
    domain::Role,
    job_queue::QueueDepths,
    jobs::Queue,
    workers::{self, WorkerCard},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::Principal,
    error::{ApiError, Problem},
    extract::AppJson,
    state::AppState,
};

/// How long the queues view waits on Redis before showing Postgres alone.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_workers))
        .routes(routes!(list_queues))
        .routes(routes!(stats))
}

/// Live workers: those that heartbeated within the last 15 s.
#[utoipa::path(get, path = "/api/v1/admin/workers", tag = "admin", security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, body = [WorkerCard]),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_workers(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<AppJson<Vec<WorkerCard>>, ApiError> {
    principal.require(Role::Admin)?;
    Ok(AppJson(workers::list_alive(&state.redis).await?))
}

/// One queue's counts. The task counts come from Postgres; other queues
/// report zeros there until their jobs have tables of their own.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct QueueStats {
    pub name: Queue,
    /// Waiting and due.
    pub pending: i64,
    /// Waiting for a later time (`scheduled_at`, or a retry's backoff).
    pub scheduled: i64,
    pub running: i64,
    /// Completed.
    pub done: i64,
    pub failed: i64,
    /// What Redis holds for the queue; `null` when Redis is unreachable.
    pub redis: Option<QueueDepths>,
}

/// Per queue: pending, scheduled, running, done and failed, and what Redis holds.
#[utoipa::path(get, path = "/api/v1/admin/queues", tag = "admin", security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, body = [QueueStats]),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "PostgreSQL is unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
async fn list_queues(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<AppJson<Vec<QueueStats>>, ApiError> {
    principal.require(Role::Admin)?;
    let (due, later) = tasks::count_waiting(&state.db).await?;
    let by_status = tasks::count_by_status(&state.db).await?;
    let count = |status| {
        by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    };
    let redis = match tokio::time::timeout(REDIS_TIMEOUT, state.jobs.depths()).await {
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
    let queues = Queue::ALL
        .into_iter()
        .enumerate()
        .map(|(i, queue)| {
            let redis = redis.as_ref().and_then(|r| r.get(i).map(|(_, d)| *d));
            if queue == Queue::Tasks {
                QueueStats {
                    name: queue,
                    pending: due,
                    scheduled: later,
                    running: count(TaskStatus::Running),
                    done: count(TaskStatus::Completed),
                    failed: count(TaskStatus::Failed),
                    redis,
                }
            } else {
                QueueStats {
                    name: queue,
                    pending: 0,
                    scheduled: 0,
                    running: 0,
                    done: 0,
                    failed: 0,
                    redis,
                }
            }
        })
        .collect();
    Ok(AppJson(queues))
}

/// Tasks by status.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TaskStats {
    pub total: i64,
    /// Every status, zeros included.
    pub by_status: BTreeMap<String, i64>,
}

/// Users by role, active and verified; tasks by status.
#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub users: UserStats,
    pub tasks: TaskStats,
}

/// Counts across the deployment.
#[utoipa::path(get, path = "/api/v1/admin/stats", tag = "admin", security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, body = Stats),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ))]
async fn stats(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<AppJson<Stats>, ApiError> {
    principal.require(Role::Admin)?;
    let users = users::stats(&state.db).await?;
    let mut by_status: BTreeMap<String, i64> = TaskStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_owned(), 0))
        .collect();
    for (status, n) in tasks::count_by_status(&state.db).await? {
        by_status.insert(status.as_str().to_owned(), n);
    }
    Ok(AppJson(Stats {
        users,
        tasks: TaskStats {
            total: by_status.values().sum(),
            by_status,
        },
    }))
}
