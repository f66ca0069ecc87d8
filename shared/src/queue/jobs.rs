//! The jobs Keel queues and the queues they go to. A payload carries ids,
//! never data: the row in Postgres is the truth, the job only says which row
//! to look at. Each job type names its queue explicitly — never a Rust type
//! path — so moving a struct cannot strand jobs already queued.

use chrono::{DateTime, Utc};
use clap::ValueEnum;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use uuid::Uuid;

/// A queue the worker can take jobs from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Queue {
    /// Emails and 2FA codes.
    Email,
    /// User-submitted and scheduled tasks.
    Tasks,
    /// Housekeeping: purges, trims.
    Maintenance,
}

impl Queue {
    pub const ALL: [Queue; 3] = [Queue::Email, Queue::Tasks, Queue::Maintenance];

    /// The queue's name in Redis (under the deployment's key prefix).
    pub fn name(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Tasks => "tasks",
            Self::Maintenance => "maintenance",
        }
    }

    /// The queue called `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|q| q.name() == name)
    }
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A job payload: serialisable, and bound to one queue.
pub trait Job: Serialize + DeserializeOwned + Send + Sync + Unpin + 'static {
    const QUEUE: Queue;
}

/// Run one attempt of the task `task_id`. `run_at` is when that attempt may
/// start: the job may reach a worker earlier (Redis schedules in whole
/// seconds), and the worker waits out the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTask {
    pub task_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<DateTime<Utc>>,
}

impl Job for RunTask {
    const QUEUE: Queue = Queue::Tasks;
}

/// A job on the `email` queue. One queue carries one payload type, so the
/// email jobs are the variants of one enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EmailJob {
    /// Render and send the email recorded as `email_deliveries.id = delivery_id`.
    Send { delivery_id: Uuid },
    /// Generate, store (hashed) and mail the code of the 2FA challenge
    /// `challenge_id`: the plain code exists only inside the worker.
    TwoFactorCode { challenge_id: Uuid },
}

impl Job for EmailJob {
    const QUEUE: Queue = Queue::Email;
}

/// Housekeeping a system schedule asks for, on the `maintenance` queue. A
/// lost one is harmless: the next tick asks again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceJob {
    pub work: Maintenance,
    /// The system schedule that fired it, which shows how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<Uuid>,
}

/// What a [`MaintenanceJob`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Maintenance {
    /// Delete expired refresh tokens, 2FA challenges, email tokens,
    /// idempotency keys and old schedule fire records.
    PurgeExpired,
    /// Delete finished tasks and email deliveries older than `TASK_RETENTION_DAYS`.
    PurgeFinished,
    /// Delete stored objects under `files/` that no file row points at and
    /// that are older than any upload still in flight (two hours).
    SweepOrphans,
}

impl Job for MaintenanceJob {
    const QUEUE: Queue = Queue::Maintenance;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_stable_and_parse_back() {
        assert_eq!(
            Queue::ALL.map(Queue::name),
            ["email", "tasks", "maintenance"]
        );
        for q in Queue::ALL {
            assert_eq!(Queue::parse(q.name()), Some(q));
        }
        assert_eq!(Queue::parse("default"), None);
        assert_eq!(RunTask::QUEUE, Queue::Tasks);
        assert_eq!(EmailJob::QUEUE, Queue::Email);
    }

    #[test]
    fn run_task_wire_format_is_just_ids() {
        let id = Uuid::nil();
        let json = serde_json::to_string(&RunTask {
            task_id: id,
            run_at: None,
        })
        .unwrap();
        assert_eq!(json, format!(r#"{{"task_id":"{id}"}}"#));
    }
}
