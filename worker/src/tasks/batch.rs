//! Group commit for the two writes every task makes: the claim and the
//! final status. Handlers queue their request and wait; one loop per kind
//! of write takes everything queued, runs one statement for the lot, and
//! answers each. At one task at a time this costs one channel hop; under
//! load it turns hundreds of round trips into one.

use std::collections::HashSet;

use keel_shared::{
    RedisClient,
    db::tasks::{self, Finish, Task, TaskState, Unclaimed},
    task_events,
};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Most requests one statement serves.
const MAX_BATCH: usize = 512;

/// A write that failed for the whole batch (the database is down).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BatchError(String);

/// The answer to a claim.
#[derive(Debug)]
pub enum Claim {
    Claimed(Box<Task>),
    Unclaimed(Unclaimed),
}

type Reply<T> = oneshot::Sender<Result<T, BatchError>>;
/// An outcome to write, and where to send the task's new state.
type FinishRequest = (Finish, Reply<Option<TaskState>>);

/// Claims tasks for one worker, in batches.
#[derive(Debug, Clone)]
pub struct Claims {
    tx: mpsc::UnboundedSender<(Uuid, Reply<Claim>)>,
}

impl Claims {
    pub fn start(
        db: PgPool,
        redis: RedisClient,
        worker: String,
        lease: std::time::Duration,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Uuid, Reply<Claim>)>();
        tokio::spawn(async move {
            while let Some(batch) = next_batch(&mut rx).await {
                // A job pushed twice may be fetched twice at once: only the
                // first request for an id can win; the rest are duplicates.
                let mut seen = HashSet::new();
                let ids: Vec<Uuid> = batch
                    .iter()
                    .map(|(id, _)| *id)
                    .filter(|id| seen.insert(*id))
                    .collect();
                let result = claim_batch(&db, &ids, &worker, lease).await;
                let claimed_states: Vec<TaskState> = match &result {
                    Ok((claimed, _, exhausted)) => claimed
                        .iter()
                        .map(TaskState::from)
                        .chain(exhausted.iter().cloned())
                        .collect(),
                    Err(_) => Vec::new(),
                };
                publish(&redis, claimed_states);
                let mut answered = HashSet::new();
                for (id, reply) in batch {
                    let answer = match &result {
                        Err(e) => Err(e.clone()),
                        Ok(_) if !answered.insert(id) => Ok(Claim::Unclaimed(Unclaimed::Drop)),
                        Ok((claimed, reasons, _)) => {
                            Ok(match claimed.iter().find(|t| t.id == id) {
                                Some(task) => Claim::Claimed(Box::new(task.clone())),
                                None => Claim::Unclaimed(
                                    reasons
                                        .iter()
                                        .find(|(r, _)| *r == id)
                                        .map_or(Unclaimed::Drop, |(_, why)| *why),
                                ),
                            })
                        }
                    };
                    let _ = reply.send(answer);
                }
            }
        });
        Self { tx }
    }

    /// Claims `id`.
    ///
    /// # Errors
    /// The database failed.
    pub async fn claim(&self, id: Uuid) -> Result<Claim, BatchError> {
        ask(&self.tx, id, "the claim loop has stopped").await
    }
}

/// Claims what it can of `ids`; of the rest, ends those that will never run
/// (see [`tasks::end_unrunnable`]) and says why each other one was not claimed.
async fn claim_batch(
    db: &PgPool,
    ids: &[Uuid],
    worker: &str,
    lease: std::time::Duration,
) -> Result<(Vec<Task>, Vec<(Uuid, Unclaimed)>, Vec<TaskState>), BatchError> {
    let claimed = tasks::claim(db, ids, worker, lease)
        .await
        .map_err(|e| BatchError(e.to_string()))?;
    let missing: Vec<Uuid> = ids
        .iter()
        .filter(|id| !claimed.iter().any(|t| t.id == **id))
        .copied()
        .collect();
    if missing.is_empty() {
        return Ok((claimed, Vec::new(), Vec::new()));
    }
    let exhausted = tasks::end_unrunnable(db, &missing, worker)
        .await
        .map_err(|e| BatchError(e.to_string()))?;
    let expired = exhausted
        .iter()
        .filter(|t| t.status == tasks::TaskStatus::Expired)
        .count();
    metrics::counter!("keel_tasks_expired_total").increment(expired as u64);
    let reasons = tasks::unclaimed_reasons(db, &missing)
        .await
        .map_err(|e| BatchError(e.to_string()))?;
    Ok((claimed, reasons, exhausted))
}

/// Writes final statuses for one worker, in batches.
#[derive(Debug, Clone)]
pub struct Finishes {
    tx: mpsc::UnboundedSender<FinishRequest>,
}

impl Finishes {
    pub fn start(db: PgPool, redis: RedisClient, worker: String) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<FinishRequest>();
        tokio::spawn(async move {
            while let Some(batch) = next_batch(&mut rx).await {
                // One outcome per id per statement (an UPDATE … FROM touches a
                // row once); a second outcome for the same id waits a round.
                let mut seen = HashSet::new();
                let (now, later): (Vec<_>, Vec<_>) =
                    batch.into_iter().partition(|(f, _)| seen.insert(f.id));
                for part in [now, later] {
                    if part.is_empty() {
                        continue;
                    }
                    let finishes: Vec<Finish> = part.iter().map(|(f, _)| f.clone()).collect();
                    let result = tasks::finish(&db, &worker, &finishes)
                        .await
                        .map_err(|e| BatchError(e.to_string()));
                    for (finish, reply) in part {
                        let answer = result
                            .as_ref()
                            .map(|states| states.iter().find(|s| s.id == finish.id).cloned())
                            .map_err(Clone::clone);
                        let _ = reply.send(answer);
                    }
                    if let Ok(states) = result {
                        publish(&redis, states);
                    }
                }
            }
        });
        Self { tx }
    }

    /// Records an attempt's outcome; `None` when its lease was lost meanwhile.
    ///
    /// # Errors
    /// The database failed.
    pub async fn finish(&self, finish: Finish) -> Result<Option<TaskState>, BatchError> {
        ask(&self.tx, finish, "the finish loop has stopped").await
    }
}

/// Publishes live updates off the write loop: a slow Redis must not hold
/// up the next batch.
fn publish(redis: &RedisClient, states: Vec<TaskState>) {
    if states.is_empty() {
        return;
    }
    let redis = redis.clone();
    tokio::spawn(async move { task_events::publish(&redis, &states).await });
}

/// Queues `request` for its loop and waits for the answer; `stopped` is the
/// error when the loop is gone.
async fn ask<R, T>(
    loop_tx: &mpsc::UnboundedSender<(R, Reply<T>)>,
    request: R,
    stopped: &'static str,
) -> Result<T, BatchError> {
    let (reply, answer) = oneshot::channel();
    loop_tx
        .send((request, reply))
        .map_err(|_| BatchError(stopped.into()))?;
    answer.await.map_err(|_| BatchError(stopped.into()))?
}

/// Waits for one request, then takes whatever else is already queued.
async fn next_batch<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}
