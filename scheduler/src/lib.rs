//! `keel-scheduler`: decides *when* — periodic jobs from cron schedules and
//! the reconciler that re-pushes what Redis lost; the worker does the work.
//! This crate holds the process around them: configuration, connections,
//! ops server and a clean stop.
//!
//! # Layout
//!
//! - [`cli`]: the command line.
//! - [`app`]: `Scheduler` — build, run until stopped.
//! - [`schedules`]: the tick loop — cron schedules fired once per tick
//!   across replicas, and the built-in ones.
//! - [`reconciler`]: makes Redis match Postgres again (lost and unpushed
//!   jobs, expired leases).

pub mod app;
pub mod cli;
pub mod reconciler;
pub mod schedules;
