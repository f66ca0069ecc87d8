//! Per-test databases on the shared PostgreSQL: a fresh, migrated database
//! for each test, rows every test needs, and the invariants of `tasks`.

use anyhow::Context as _;
use keel_shared::db;
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::processes::free_port;

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
        // The name is ours (a prefix and a UUID), never input.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
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

/// A `postgres://` URL on a port where nothing listens: a database that is down.
pub fn unreachable_database_url() -> String {
    format!("postgres://postgres@127.0.0.1:{}/keel", free_port())
}

/// A verified `user` account named `{stem}_{random}` with no usable
/// password, for tests that need an owner for their rows.
///
/// # Panics
/// When the insert fails.
pub async fn insert_user(pool: &sqlx::PgPool, stem: &str) -> uuid::Uuid {
    use keel_shared::{
        db::users::{self, NewUser, ProfileChanges},
        domain::{EmailAddress, Role, Username},
    };
    let name = format!("{stem}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    users::insert(
        pool,
        &NewUser {
            username: Username::parse(&name).expect("a valid test username"),
            email: EmailAddress::parse(&format!("{name}@example.com")).expect("a valid address"),
            password_hash: "!".into(),
            role: Role::User,
            email_verified: true,
            profile: ProfileChanges::default(),
        },
    )
    .await
    .expect("a test user")
    .id
}

/// Asserts what must hold of the `tasks` table whatever failed: no
/// `running` row whose lease ran out more than twice the reconcile
/// period ago (the reconciler takes such rows back), and no row that
/// finished before it started.
///
/// # Panics
/// When either is broken, naming the rows.
pub async fn assert_task_invariants(pool: &PgPool, reconcile: std::time::Duration) {
    let stale: Vec<(uuid::Uuid, f64)> = sqlx::query_as(
        "SELECT id, extract(epoch FROM now() - lease_expires_at)::float8 FROM tasks \
         WHERE status = 'running' AND lease_expires_at < now() - $1 * interval '1 millisecond'",
    )
    .bind(i64::try_from(2 * reconcile.as_millis()).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .expect("the lease query");
    assert!(
        stale.is_empty(),
        "running rows with leases expired longer than 2 × {reconcile:?} (id, seconds): {stale:?}"
    );
    let backwards: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM tasks WHERE finished_at < started_at")
            .fetch_all(pool)
            .await
            .expect("the time query");
    assert!(
        backwards.is_empty(),
        "tasks finished before they started: {backwards:?}"
    );
}
