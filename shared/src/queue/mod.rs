//! The producer side of Keel's queues, in one place: what a job is and
//! which queue it goes to ([`jobs`]), pushing it to Redis with its wake-up
//! ([`job_queue`]), and the two flows that end in a push after a commit —
//! task rows ([`dispatch`]) and emails ([`emails`]). The API, the scheduler
//! and the worker all push through here.

pub mod dispatch;
pub mod emails;
pub mod job_queue;
pub mod jobs;

pub use job_queue::*;
pub use jobs::*;
