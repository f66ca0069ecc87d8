//! Test support for every crate's tests (`keel-testing`, a dev-dependency
//! only, so none of it is in the shipped binaries): each test gets its own freshly
//! migrated database on the local PostgreSQL and its own Redis key prefix,
//! so tests run in parallel against the real services.
//!
//! One module per concern, all re-exported at the top:
//!
//! - [`databases`]: a migrated database per test, a user row, the `tasks` invariants.
//! - [`accounts`]: an account signed in over HTTP on a running API.
//! - [`redis_server`]: a key prefix per test, or a Redis server of the test's own.
//! - [`postgres_server`]: a PostgreSQL server of the test's own.
//! - [`processes`]: Keel's binaries as guarded child processes.
//! - [`config`]: a development `Config` for one test.
//! - [`smtp_server`]: a real SMTP server writing into a Maildir.
//! - [`s3_server`]: an S3-compatible server (moto).
//! - [`metrics`]: Prometheus text, parsed.
//! - [`logs`]: the suite's logs and the secrets its tests used.

pub mod accounts;
pub mod config;
pub mod databases;
pub mod logs;
pub mod metrics;
pub mod postgres_server;
pub mod processes;
pub mod redis_server;
pub mod s3_server;
pub mod smtp_server;

pub use accounts::*;
pub use config::*;
pub use databases::*;
pub use logs::*;
pub use metrics::*;
pub use postgres_server::*;
pub use processes::*;
pub use redis_server::*;
pub use s3_server::*;
pub use smtp_server::*;
