//! `keel-worker`: takes jobs from the Redis queues and runs them, writing
//! their status to Postgres. This crate holds the process around the jobs:
//! configuration, connections, the heartbeat that makes the worker visible
//! to health and ops, and a clean stop. The job handlers join it with the
//! queues they serve.
//!
//! # Layout
//!
//! - [`cli`]: the command line.
//! - [`app`]: `Worker` — build, run until stopped.

pub mod app;
pub mod cli;
