//! `keel-scheduler`: decides *when* — periodic jobs from cron schedules and
//! the reconciler that re-pushes what Redis lost; the worker does the work.
//! This crate holds the process around them: configuration, connections,
//! ops server and a clean stop.
//!
//! # Layout
//!
//! - [`cli`]: the command line.
//! - [`app`]: `Scheduler` — build, run until stopped.
//! - [`reconciler`]: makes Redis match Postgres again (lost and unpushed
//!   jobs, expired leases).

pub mod app;
pub mod cli;
pub mod reconciler;
