//! PostgreSQL: the pool every binary shares, the migrations embedded from
//! `migrations/`, and the checks health and readiness ask for. One module
//! per table holds that table's SQL as free functions taking any executor
//! (a pool or a transaction).
//!
//! Statements are runtime-checked (`sqlx::query_as` over a literal, built
//! with `concat!` and literal column macros), not `query!`: the checked
//! macros need a database or the `.sqlx/` offline data at every build, and
//! regenerating that data on each schema change is a step a contributor on a
//! machine without PostgreSQL cannot take. What they would catch — a table,
//! column or type that does not exist — `shared/tests/statements.rs` catches
//! instead: it reads every statement out of the sources and has PostgreSQL
//! prepare it against the migrated schema. Only literals go in, so nothing a
//! client sends can become SQL.

pub mod api_keys;
pub mod email_deliveries;
pub mod email_tokens;
pub mod files;
pub mod idempotency;
pub mod oauth;
pub mod refresh_tokens;
pub mod schedules;
pub mod second_factor;
pub mod task_stats;
pub mod tasks;
pub mod totp;
pub mod two_factor;
pub mod users;

use std::{
    sync::{
        LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use sqlx::{
    ConnectOptions as _, Connection as _, PgPool,
    migrate::{MigrateDatabase as _, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::Config;

/// Every migration in `migrations/`, compiled into the binaries.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Connection options from `DATABASE_URL`, with statement logging kept at
/// debug so a production log never carries query text by default.
///
/// # Errors
/// `DATABASE_URL` is not a valid Postgres URL.
pub fn connect_options(config: &Config) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = config
        .database
        .url
        .expose_secret()
        .parse()
        .context("DATABASE_URL is not a valid postgres:// URL")?;
    Ok(options
        .application_name("keel")
        .log_statements(tracing::log::LevelFilter::Debug)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500)))
}

/// A pool that connects on first use, so a process can start (and answer
/// 503) while Postgres is down; acquiring waits at most `DATABASE_TIMEOUT_SECONDS`.
///
/// A connection idle for longer than [`PING_AFTER_IDLE`] is pinged before
/// it is handed out (one that fails is dropped, and another taken), so the
/// first statement after a PostgreSQL restart finds a live connection. One
/// back from a statement a moment ago is not: sqlx's default pings on every
/// acquire, a round trip (and a wake-up of the server process) added to
/// every statement: without it `keel-bench e2e` went from 5,500–6,500 to
/// 7,000–7,400 tasks/s on 2 cores. Once a statement has found its
/// connection dead ([`connection_lost`]: a restart, a failover, an admin's
/// `pg_terminate_backend`), every connection that was idle at that moment
/// is pinged too, so one request fails, not one per pooled connection.
///
/// # Errors
/// `DATABASE_URL` is not a valid Postgres URL.
pub fn lazy_pool(config: &Config) -> anyhow::Result<PgPool> {
    lazy_pool_with(config, Plans::Cached)
}

/// How PostgreSQL plans a pooled connection's prepared statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plans {
    /// PostgreSQL's default: after five executions a statement may keep one
    /// generic plan for good. Right for the API's statements, planned once
    /// and run thousands of times a second.
    Cached,
    /// A plan for each execution's arguments (`plan_cache_mode =
    /// force_custom_plan`), at `random_page_cost` 1.1 (the rows a batch
    /// touches are cached: an index probe is not a disk seek), for the
    /// background processes, whose statements claim, finish and sweep
    /// batches of tasks by id.
    ///
    /// A generic plan made while `tasks` was small (a fresh install under
    /// load, or a table just emptied) is a sequential scan, and it stays
    /// one as the table grows until the next ANALYZE (autovacuum's comes
    /// within a minute or so; this machine's CI server runs without it).
    /// On a freshly emptied table the worker's claims took 8–10 ms each and
    /// `keel-bench e2e` fell from 8,500 to 4,600–5,200 tasks/s. Planned per
    /// call at the default `random_page_cost` (4, a disk seek), a batch of a
    /// hundred finishes on a table of some thousands of rows still
    /// hash-joined a sequential scan; at 1.1 it probes the key. Planning a
    /// batch costs far less than either. Behind PgBouncer in transaction
    /// mode these session settings may land on a server connection another
    /// client uses next; they change plans there, never results.
    PerCall,
}

/// [`lazy_pool`], with statements planned as `plans` says.
///
/// # Errors
/// `DATABASE_URL` is not a valid Postgres URL.
pub fn lazy_pool_with(config: &Config, plans: Plans) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(config.database.max_connections)
        .acquire_timeout(config.database_timeout())
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if plans == Plans::PerCall {
                    per_call_plans(conn).await?;
                }
                Ok(())
            })
        })
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > PING_AFTER_IDLE || idle_since_a_loss(meta.idle_for) {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_lazy_with(connect_options(config)?))
}

/// Sets [`Plans::PerCall`]'s settings on a new connection, each only where
/// the server still has its built-in default: what an operator chose (in
/// `postgresql.conf`, `ALTER ROLE … SET`, or `options=` in `DATABASE_URL`)
/// stands, and a server without a setting skips it. A statement after
/// connecting, not startup options: PgBouncer refuses startup options for
/// settings it does not track (or, told to ignore them, drops them).
async fn per_call_plans(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT set_config(name, value, false) \
         FROM (VALUES ('plan_cache_mode', 'force_custom_plan'), ('random_page_cost', '1.1')) \
              AS wanted(name, value) \
         JOIN pg_settings USING (name) \
         WHERE source = 'default'",
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// How long a pooled connection may sit unused before it is checked.
pub const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

/// When this process last found a connection dead, in milliseconds after
/// [`EPOCH`] (0: never).
static LAST_LOSS_MS: AtomicU64 = AtomicU64::new(0);
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Notes that a statement found its connection gone (the server closed it,
/// or said it is shutting down): connections idle since before now are
/// pinged before their next use.
pub fn connection_lost() {
    let now = u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX);
    LAST_LOSS_MS.store(now.max(1), Ordering::Relaxed);
}

/// Whether a connection idle for `idle_for` was already idle when the last
/// dead connection was found.
fn idle_since_a_loss(idle_for: Duration) -> bool {
    let loss = LAST_LOSS_MS.load(Ordering::Relaxed);
    loss != 0 && {
        let since = EPOCH.elapsed().saturating_sub(Duration::from_millis(loss));
        idle_for >= since
    }
}

/// A pool proven to reach the database, for start-up, where an unreachable
/// Postgres must stop the process with a clear message.
///
/// # Errors
/// The database cannot be reached within the timeout.
pub async fn connect(config: &Config) -> anyhow::Result<PgPool> {
    connect_with(config, Plans::Cached).await
}

/// [`connect`], with statements planned as `plans` says.
///
/// # Errors
/// As [`connect`].
pub async fn connect_with(config: &Config, plans: Plans) -> anyhow::Result<PgPool> {
    let pool = lazy_pool_with(config, plans)?;
    ping(&pool).await.with_context(|| {
        // Host, port and database only: the URL may carry a password.
        format!(
            "cannot reach PostgreSQL at {}",
            connect_options(config).map(describe).unwrap_or_default()
        )
    })?;
    Ok(pool)
}

/// Creates the database named in `DATABASE_URL` if it does not exist yet.
///
/// # Errors
/// The server cannot be reached or refuses.
pub async fn create_database_if_missing(config: &Config) -> anyhow::Result<bool> {
    let url = config.database.url.expose_secret();
    let exists = sqlx::Postgres::database_exists(url)
        .await
        .context("checking whether the database exists")?;
    if !exists {
        sqlx::Postgres::create_database(url)
            .await
            .context("creating the database")?;
    }
    Ok(!exists)
}

/// Applies pending migrations; concurrent callers are serialised by sqlx's advisory lock.
///
/// # Errors
/// A migration fails, or one already applied was changed.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying migrations")
}

/// One round trip to the database.
///
/// # Errors
/// No connection within the timeout, or the query fails.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(pool).await.map(drop)
}

/// Whether the newest embedded migration has been applied.
///
/// # Errors
/// The database cannot be queried.
pub async fn migrations_current(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let Some(latest) = MIGRATOR.iter().map(|m| m.version).max() else {
        return Ok(true);
    };
    let applied: Option<bool> =
        sqlx::query_scalar("SELECT success FROM _sqlx_migrations WHERE version = $1")
            .bind(latest)
            .fetch_optional(pool)
            .await
            .or_else(|e| match e {
                // No migrations table yet: nothing has been applied.
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(None),
                e => Err(e),
            })?;
    Ok(applied == Some(true))
}

fn describe(options: PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("?")
    )
}

/// What a maintenance purge deletes from one table: the rows where
/// `condition` holds, `$2` in it being the cut-off. Each table's module
/// declares its own (`email_tokens::EXPIRED`), so the table keeps its rules
/// while one statement, here, does the deleting.
#[derive(Debug, Clone, Copy)]
pub struct Purge {
    table: &'static str,
    condition: &'static str,
}

impl Purge {
    /// `table` and `condition` go into SQL as written: literals of this
    /// crate only, never input.
    pub(crate) const fn new(table: &'static str, condition: &'static str) -> Self {
        Self { table, condition }
    }

    /// Deletes up to `limit` of the rows whose cut-off falls before
    /// `before`; returns how many. Purges go in such slices so no statement
    /// holds locks on a large table for long.
    ///
    /// # Errors
    /// The database fails.
    pub async fn delete_some(
        self,
        db: impl sqlx::PgExecutor<'_>,
        before: chrono::DateTime<chrono::Utc>,
        limit: i64,
    ) -> Result<u64, sqlx::Error> {
        let Self { table, condition } = self;
        let sql = format!(
            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} WHERE {condition} LIMIT $1))"
        );
        // Safe: `table` and `condition` are literals of this crate, never input.
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(limit)
            .bind(before)
            .execute(db)
            .await?;
        Ok(done.rows_affected())
    }
}
