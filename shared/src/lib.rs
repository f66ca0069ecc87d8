//! `keel-shared`: what Keel's three binaries — `keel-api`, `keel-worker` and
//! `keel-scheduler` — have in common. It never touches HTTP routing; each
//! binary builds on these parts.
//!
//! # Layout
//!
//! - [`config`]: the one typed configuration, in sections, from flags, environment and `.env`.
//! - [`db`]: the Postgres pool, embedded migrations, and each table's SQL.
//! - [`domain`]: values parsed at the edge (username, email, password, role, …).
//! - [`redis_client`]: the shared Redis connection and key prefix.
//! - [`queue`]: the producer side of the queues — queue names and job
//!   payloads, the push with its wake-up, and the two flows that push after
//!   a commit (task rows, emails).
//! - [`task_intake`]: group commit of task creates.
//! - [`mail`]: email templates and the SMTP / outbox transport.
//! - [`kinds`]: the task kinds, their payload checks and handlers.
//! - [`timetable`]: cron expressions in a timezone, DST included.
//! - [`whole_number`]: JSON integers written with a `.0`, as JSON Schema allows.
//! - [`task_events`]: live task status changes on Redis pub/sub.
//! - [`workers`]: the registry of live worker processes.
//! - [`health`]: the health report every binary serves.
//! - [`ops_server`]: `/health` and `/metrics` for the worker and scheduler.
//! - [`queue_metrics`]: the queue and worker gauges, sampled at scrape time.
//! - [`process`]: the connections and `main` frame of every binary.
//! - [`telemetry`]: logging and the Prometheus recorder.
//! - [`shutdown`]: stop signals.
//! - [`storage`]: file bytes, in a local directory or an S3-compatible store.
//! - [`outbound`]: the base of every outgoing HTTP client (bounded connect, rustls).

pub mod config;
pub mod db;
pub mod domain;
pub mod health;
pub mod kinds;
pub mod mail;
pub mod ops_server;
pub mod outbound;
pub mod process;
pub mod queue;
pub mod queue_metrics;
pub mod redis_client;
pub mod shutdown;
pub mod storage;
pub mod task_events;
pub mod task_intake;
pub mod telemetry;
pub mod timetable;
pub mod whole_number;
pub mod workers;

pub use config::Config;
pub use redis_client::RedisClient;
