//! Where a bench finds PostgreSQL and Redis (`--database-url`,
//! `--redis-url`), and its database there, made ready to use.

use keel_shared::{Config, db};
use sqlx::PgPool;
use uuid::Uuid;

/// The PostgreSQL and Redis a bench runs against.
#[derive(Debug, Clone, clap::Args)]
pub struct Stores {
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/keel_bench"
    )]
    pub database_url: String,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
}

/// A Redis prefix of its own for one run, so it never sees another run's jobs.
pub fn fresh_prefix() -> String {
    format!("bench-{}", &Uuid::new_v4().simple().to_string()[..8])
}

/// A pool on `config`'s database, created when missing and migrated: a
/// bench may be the first thing to run against a fresh server.
///
/// # Errors
/// PostgreSQL cannot be reached, or a migration fails.
pub async fn migrated_pool(config: &Config) -> anyhow::Result<PgPool> {
    db::create_database_if_missing(config).await?;
    let pool = db::connect(config).await?;
    db::migrate(&pool).await?;
    Ok(pool)
}
