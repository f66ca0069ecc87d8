//! `keel-worker`: takes jobs from the Redis queues and runs them, writing
//! their status to Postgres. Postgres is the truth: a job only says which
//! row to look at, and every write is fenced by the worker's lease.
//!
//! # Layout
//!
//! - [`cli`]: the command line.
//! - [`app`]: `Worker` — build, run the queues, heartbeat, drain.
//! - [`tasks`]: the `tasks` queue — claim, run, retry, finish.
//! - [`email`]: the `email` queue — claim, render, send, retry.
//! - [`maintenance`]: the `maintenance` queue — purges, the Redis trim and the orphan sweep.
//! - [`wake`]: wake-ups that let idle workers fetch as soon as a job is pushed.
//! - [`listen`]: a Redis channel heard for the life of the process (wake-ups,
//!   stop requests for running tasks).
//! - [`pause`]: queue pauses set by ops.
//! - [`stats`]: this worker's counters for its registry card.
//! - [`supervisor`]: each queue's apalis worker, restarted and paused.

pub mod app;
pub mod cli;
pub mod email;
pub mod listen;
pub mod maintenance;
pub mod pause;
pub mod stats;
pub mod supervisor;
pub mod tasks;
pub mod wake;
