//! `TaskIntake`: group commit for task creates. Creates that arrive while
//! earlier ones are being written go to PostgreSQL together — one
//! multi-row INSERT, committed on its own (their history rows and the
//! owners' cap bounds written by the table's triggers in the same
//! statement) — and to Redis in one pipelined push. Each caller is
//! answered once its rows are committed; the push follows the answer, and
//! a row it never reaches (the process died, Redis refused) is pushed by
//! the reconciler, exactly as a create on its own.
//!
//! A commit waits on the WAL flush; one create per commit bounds creates at
//! the flushes a disk does, however many clients wait. A group pays one
//! flush for all of them. Nothing waits on a clock to fill a group: a
//! create that finds a writer free is written at once, alone; groups form
//! from what queues while [`MAX_WRITERS`] groups are being written, and a
//! group much smaller than the last first lets the callers just answered
//! send their next creates (a yield, not a delay).
//!
//! Per-owner caps hold across the group. The statement locks each capped
//! owner's bound of unfinished tasks (in id order, so groups never
//! deadlock) and inserts the group only if every owner has room for all it
//! asks there; if one has not, the group is written again in a
//! transaction that finds each owner's room ([`tasks::room_under_cap`],
//! counting where the bound leaves none) and admits that owner's creates
//! in arrival order while they fit. A group whose write fails is written
//! again one create at a time, so one bad create (text PostgreSQL cannot
//! store) fails alone.

use std::{collections::BTreeMap, sync::Arc};

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::{
    db::tasks::{self, GroupRow, NewTask, Task, Wanted},
    queue::{JobQueue, dispatch},
};

/// Groups being written at once. One: the next group forms while a group
/// commits (and the one before is pushed); more writers measured slower
/// (`keel-bench e2e` on 2 cores: 1 writer 4,143 tasks/s, 2 3,928, 4 2,659;
/// again with the one-statement write, 1 writer 6,200–7,300, 2 5,500–6,100),
/// as they split the queue into smaller groups, and one owner's groups
/// wait on its bound's lock anyway.
pub const MAX_WRITERS: usize = 1;
/// Tasks in one group at most (a batch create brings up to 1,000 alone).
pub const MAX_GROUP_TASKS: usize = 2_000;

/// One create: `tasks` of `owner`, asked for by `actor`, held to `cap`
/// unfinished tasks of the owner (`None` or `Some(0)`: no cap).
#[derive(Debug, Clone)]
pub struct Create {
    pub owner: Uuid,
    pub actor: String,
    pub tasks: Vec<NewTask>,
    pub cap: Option<u32>,
}

/// What a create came to.
#[derive(Debug)]
pub enum Created {
    /// The rows, committed, in the order asked; pushed to Redis, or marked
    /// for the reconciler if Redis refused.
    Tasks(Vec<Task>),
    /// The owner is at the cap: nothing was created.
    OverCap,
}

/// A create the database refused (the message of its own write, when the
/// group's transaction failed and it was written alone).
pub type IntakeError = sqlx::Error;

struct Request {
    create: Create,
    reply: oneshot::Sender<Result<Created, IntakeError>>,
}

/// The sending side; clones share one writer loop.
#[derive(Debug, Clone)]
pub struct TaskIntake {
    sender: mpsc::UnboundedSender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("owner", &self.create.owner)
            .field("tasks", &self.create.tasks.len())
            .finish_non_exhaustive()
    }
}

impl TaskIntake {
    /// Starts the writer loop on the current runtime; it ends when every
    /// clone is dropped, after writing what it was given.
    pub fn start(db: PgPool, jobs: JobQueue) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(db, jobs, receiver));
        Self { sender }
    }

    /// Creates `create`'s tasks, with whatever other creates arrive beside it.
    ///
    /// # Errors
    /// The database refused the create or is down; nothing was created.
    pub async fn create(&self, create: Create) -> Result<Created, IntakeError> {
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Request { create, reply })
            .map_err(|_| sqlx::Error::PoolClosed)?;
        answer.await.map_err(|_| sqlx::Error::PoolClosed)?
    }
}

async fn write_loop(db: PgPool, jobs: JobQueue, mut receiver: mpsc::UnboundedReceiver<Request>) {
    let writers = Arc::new(Semaphore::new(MAX_WRITERS));
    let mut last = 0;
    loop {
        // A writer first, then the group: what queued meanwhile joins it.
        let Ok(permit) = writers.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = receiver.recv().await else {
            return;
        };
        let mut group = vec![first];
        take_queued(&mut receiver, &mut group);
        // The last group's callers were answered just before the writer
        // came free, and their next creates are on their way. Written
        // without them, the few already here would cost a commit of their
        // own that the many then wait behind (on 2 cores one create took
        // 1.7 ms against 3.0 ms for 31, and groups alternated 31, 1, 31, 1).
        // So let the answered callers run, and take what they send.
        if group.len() < last / 2 {
            loop {
                tokio::task::yield_now().await;
                if !take_queued(&mut receiver, &mut group) {
                    break;
                }
            }
        }
        last = group.len();
        let (db, jobs) = (db.clone(), jobs.clone());
        tokio::spawn(write_group(db, jobs, group, permit));
    }
}

/// Moves what is queued into `group`, up to [`MAX_GROUP_TASKS`]; whether
/// it took any.
fn take_queued(receiver: &mut mpsc::UnboundedReceiver<Request>, group: &mut Vec<Request>) -> bool {
    let mut size: usize = group.iter().map(|r| r.create.tasks.len()).sum();
    let before = group.len();
    while size < MAX_GROUP_TASKS {
        match receiver.try_recv() {
            Ok(request) => {
                size += request.create.tasks.len();
                group.push(request);
            }
            Err(_) => break,
        }
    }
    group.len() > before
}

/// Writes `group` in one transaction (or, if that fails, each alone),
/// answers every request, frees the writer for the next group, and pushes.
///
/// The answer does not wait for the push: a committed row is the promise
/// (its job in Redis is not), and a row whose push never happens (this
/// process died, or Redis refused) is found and pushed by the reconciler,
/// exactly as a job Redis lost. Waiting would hold every caller of the
/// group, and the next group they form, for a Redis round trip.
async fn write_group(
    db: PgPool,
    jobs: JobQueue,
    group: Vec<Request>,
    writer: tokio::sync::OwnedSemaphorePermit,
) {
    let db = &db;
    let creates: Vec<&Create> = group.iter().map(|r| &r.create).collect();
    let outcomes = match write(db, &creates).await {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) if group.len() == 1 => vec![Err(e)],
        Err(e) => {
            tracing::debug!(error = %e, creates = group.len(), "a group write failed; writing each alone");
            let mut alone = Vec::with_capacity(creates.len());
            for create in &creates {
                alone.push(write(db, &[create]).await.map(|mut o| o.remove(0)));
            }
            alone
        }
    };
    // One push for every row the group created.
    let rows: Vec<Task> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(Created::Tasks(rows)) => Some(rows.iter().cloned()),
            _ => None,
        })
        .flatten()
        .collect();
    // Counted before anyone hears of them.
    dispatch::count_created(&rows);
    for (request, outcome) in group.into_iter().zip(outcomes) {
        // The caller may have gone; its rows stand.
        let _ = request.reply.send(outcome);
    }
    drop(writer);
    // A refused push has marked the rows for the reconciler.
    let _ = dispatch::push_counted(db, &jobs, &rows).await;
}

/// Writes a group: in the common case one statement, committed alone —
/// every capped owner's bound leaves room for all it asks, so every create
/// is admitted; otherwise one transaction that finds each capped owner's
/// room (counting where the bound leaves none) and admits creates while
/// they fit.
async fn write(db: &PgPool, creates: &[&Create]) -> Result<Vec<Created>, sqlx::Error> {
    // What each capped owner asks in this group, owners in id order.
    let mut asked: BTreeMap<Uuid, Wanted> = BTreeMap::new();
    for create in creates {
        if let Some(cap) = create.cap.filter(|c| *c > 0) {
            let n = i64::try_from(create.tasks.len()).unwrap_or(i64::MAX);
            let entry = asked.entry(create.owner).or_insert(Wanted {
                owner: create.owner,
                wanted: 0,
                cap: i64::from(cap),
            });
            entry.wanted = entry.wanted.saturating_add(n);
        }
    }
    let within: Vec<Wanted> = asked.values().copied().collect();
    let all = vec![true; creates.len()];
    let rows = admitted_rows(creates, &all);
    let inserted = tasks::insert_group(db, &rows, &within).await?;
    if inserted.len() == rows.len() {
        return Ok(answers(creates, all, inserted));
    }
    let mut tx = db.begin().await?;
    let mut room: BTreeMap<Uuid, i64> = BTreeMap::new();
    for wanted in &within {
        let left = tasks::room_under_cap(&mut tx, wanted.owner, wanted.cap, wanted.wanted).await?;
        room.insert(wanted.owner, left);
    }
    let mut admitted = Vec::with_capacity(creates.len());
    for create in creates {
        let fits = match room.get_mut(&create.owner) {
            Some(left) if create.cap.is_some_and(|c| c > 0) => {
                let n = i64::try_from(create.tasks.len()).unwrap_or(i64::MAX);
                let fits = *left >= n;
                if fits {
                    *left -= n;
                }
                fits
            }
            _ => true,
        };
        admitted.push(fits);
    }
    let rows = admitted_rows(creates, &admitted);
    let inserted = tasks::insert_group(&mut *tx, &rows, &[]).await?;
    tx.commit().await?;
    Ok(answers(creates, admitted, inserted))
}

/// The rows of the admitted creates, in order.
fn admitted_rows<'a>(creates: &[&'a Create], admitted: &[bool]) -> Vec<GroupRow<'a>> {
    creates
        .iter()
        .zip(admitted)
        .filter(|(_, fits)| **fits)
        .flat_map(|(create, _)| {
            create.tasks.iter().map(|task| GroupRow {
                owner: create.owner,
                actor: &create.actor,
                task,
            })
        })
        .collect()
}

/// Each create's answer: its rows, taken in order from `inserted`, or
/// over the cap.
fn answers(creates: &[&Create], admitted: Vec<bool>, inserted: Vec<Task>) -> Vec<Created> {
    let mut inserted = inserted.into_iter();
    creates
        .iter()
        .zip(admitted)
        .map(|(create, fits)| {
            if fits {
                Created::Tasks(inserted.by_ref().take(create.tasks.len()).collect())
            } else {
                Created::OverCap
            }
        })
        .collect()
}
