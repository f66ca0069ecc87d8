//! A test's settings: a development `Config`, the environment of a Keel
//! binary it starts, and a directory for its files.

use keel_shared::Config;

use crate::{processes::command, redis_server::redis_url};

/// A development configuration on `database_url` and `redis_prefix`,
/// listening on a free loopback port, with `extra` flags
/// (`["--rate-limit-enabled", "false"]`) on top.
///
/// # Panics
/// When a flag is wrong: a bug in the test.
pub fn config(database_url: &str, redis_prefix: &str, extra: &[&str]) -> Config {
    let mut args = vec![
        "--environment",
        "development",
        "--database-url",
        database_url,
        "--redis-prefix",
        redis_prefix,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--database-timeout-seconds",
        "2",
    ];
    // A free port for `/metrics`, unless the test names one.
    if !extra.contains(&"--metrics-port") {
        args.extend_from_slice(&["--metrics-port", "0"]);
    }
    // Each test's files in a directory of its own (under target/, swept
    // with it), so an orphan sweep in one test never sees another's objects.
    let files_dir = test_files_dir();
    if !extra.contains(&"--files-dir") {
        args.extend_from_slice(&["--files-dir", &files_dir]);
    }
    args.extend_from_slice(extra);
    Config::from_flags(args).expect("test configuration parses")
}

/// A fresh directory for one test's files: `target/test-files/<uuid>`.
pub fn test_files_dir() -> String {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target").to_owned());
    format!("{target}/test-files/{}", uuid::Uuid::new_v4().simple())
}

/// A background binary (worker, scheduler) on `database_url` and
/// `redis_prefix`, serving `/health` and `/metrics` on loopback `metrics_port`.
pub fn service_command(
    binary: &str,
    database_url: &str,
    redis_prefix: &str,
    metrics_port: u16,
) -> std::process::Command {
    let mut command = command(binary);
    command
        .env("DATABASE_URL", database_url)
        .env("REDIS_URL", redis_url())
        .env("REDIS_PREFIX", redis_prefix)
        .env("HOST", "127.0.0.1")
        .env("METRICS_PORT", metrics_port.to_string());
    command
}
