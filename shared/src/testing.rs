//! Test support (feature `testing`): each test gets its own freshly
//! migrated database on the local PostgreSQL and its own Redis key prefix,
//! so tests run in parallel against the real services.

use std::net::TcpListener;

use anyhow::Context as _;
use clap::Parser;
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::{Config, db};

/// The server tests create their databases on: `KEEL_TEST_DATABASE_URL`,
/// else `DATABASE_URL`, else the local default. Its database part is ignored.
pub fn server_url() -> String {
    std::env::var("KEEL_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// Name prefix of every test database, so the test command can sweep leftovers.
pub const DATABASE_PREFIX: &str = "keel_test_";

/// A database of one test's own, migrated.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDatabase {
    /// Creates and migrates a database with a unique name.
    ///
    /// # Errors
    /// PostgreSQL is unreachable or refuses.
    pub async fn create() -> anyhow::Result<Self> {
        let name = format!("{DATABASE_PREFIX}{}", uuid::Uuid::new_v4().simple());
        let url = database_url(&name)?;
        let mut admin = PgConnection::connect(&database_url("postgres")?)
            .await
            .context("connecting to PostgreSQL to create a test database")?;
        sqlx::raw_sql(&format!(r#"CREATE DATABASE "{name}""#))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect(&url)
            .await?;
        db::migrate(&pool).await?;
        Ok(Self { name, url, pool })
    }
}

/// The server's URL with `database` in place of its database.
///
/// # Errors
/// The server URL does not parse.
pub fn database_url(database: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(&server_url()).context("the test database URL does not parse")?;
    url.set_path(&format!("/{database}"));
    Ok(url.into())
}

/// A Redis key prefix no other test uses.
pub fn unique_redis_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// A TCP port free at the time of asking, for processes that cannot report theirs.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[derive(Parser)]
struct ConfigOnly {
    #[command(flatten)]
    config: Config,
}

/// A development configuration on `database_url` and `redis_prefix`,
/// listening on a free loopback port, with `extra` flags
/// (`["--rate-limit-enabled", "false"]`) on top.
///
/// # Panics
/// When a flag is wrong: a bug in the test.
pub fn config(database_url: &str, redis_prefix: &str, extra: &[&str]) -> Config {
    let mut args = vec![
        "keel-test",
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
    args.extend_from_slice(extra);
    ConfigOnly::try_parse_from(args)
        .expect("test configuration parses")
        .config
}
