//! The job queues, by stable name. Payload types join them as the worker
//! learns each kind of job; a queue's name never follows a Rust type path,
//! so moving a struct cannot strand jobs already queued.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// A queue the worker can take jobs from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
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
}

impl std::fmt::Display for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
