//! The `users` table: accounts, their profile, role and sign-in state.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::domain::{DEFAULT_LANGUAGE, DEFAULT_TIMEZONE, EmailAddress, Role, Username};

/// The columns every query returns, as a literal for `concat!` (sqlx takes
/// only literal SQL, so nothing dynamic can slip into a statement).
macro_rules! user_columns {
    () => {
        "id, username, email, password_hash, first_name, last_name, phone_number, \
     phone_verified, avatar_url, bio, timezone, language, role, is_active, two_fa_enabled, \
     totp_enabled, email_verified, last_login_at, token_version, created_at, updated_at"
    };
}

/// A stored account. The password hash never leaves the process: it is
/// skipped when the user is cached or serialised.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, FromRow)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone_number: Option<String>,
    pub phone_verified: bool,
    pub avatar_url: Option<String>,
    pub bio: Option<String>,
    pub timezone: String,
    pub language: String,
    pub role: Role,
    pub is_active: bool,
    /// Email codes as a second factor.
    pub two_fa_enabled: bool,
    /// An authenticator app as a second factor (it wins over email codes).
    /// Defaulted so users cached before the column existed still read.
    #[serde(default)]
    pub totp_enabled: bool,
    pub email_verified: bool,
    pub last_login_at: Option<DateTime<Utc>>,
    /// Access tokens carry the version they were issued under; bumping it
    /// ends every session of the user at once.
    pub token_version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An account about to be inserted.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub username: Username,
    pub email: EmailAddress,
    pub password_hash: String,
    pub role: Role,
    pub email_verified: bool,
    pub profile: ProfileChanges,
}

/// Profile fields to change: `None` leaves a field as it is; `Some(None)`
/// clears a nullable one.
#[derive(Debug, Clone, Default)]
pub struct ProfileChanges {
    pub first_name: Option<Option<String>>,
    pub last_name: Option<Option<String>>,
    pub phone_number: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub bio: Option<Option<String>>,
    pub timezone: Option<String>,
    pub language: Option<String>,
    /// Only admins may set it; the handler decides.
    pub is_active: Option<bool>,
}

/// Filters of the admin user list.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    pub role: Option<Role>,
    pub is_active: Option<bool>,
    /// Matches username, email, first or last name, without regard to case.
    pub q: Option<String>,
}

/// Inserts `new`.
///
/// # Errors
/// `users_username_key` or `users_email_key` when taken.
pub async fn insert(db: impl PgExecutor<'_>, new: &NewUser) -> Result<User, sqlx::Error> {
    let p = &new.profile;
    let flat = |f: &Option<Option<String>>| f.clone().flatten();
    sqlx::query_as::<_, User>(concat!(
        "INSERT INTO users (id, username, email, password_hash, role, email_verified, first_name, \
         last_name, phone_number, avatar_url, bio, timezone, language) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING ",
        user_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(new.username.as_str())
    .bind(new.email.as_str())
    .bind(&new.password_hash)
    .bind(new.role.as_str())
    .bind(new.email_verified)
    .bind(flat(&p.first_name))
    .bind(flat(&p.last_name))
    .bind(flat(&p.phone_number))
    .bind(flat(&p.avatar_url))
    .bind(flat(&p.bio))
    .bind(p.timezone.as_deref().unwrap_or(DEFAULT_TIMEZONE))
    .bind(p.language.as_deref().unwrap_or(DEFAULT_LANGUAGE))
    .fetch_one(db)
    .await
}

/// The row [`insert`] would store for `new` under `id` at `now`, made up
/// without storing anything: what registering with a taken email answers,
/// so that answer looks like a fresh account's.
pub fn as_inserted(new: &NewUser, id: Uuid, now: DateTime<Utc>) -> User {
    let p = &new.profile;
    let flat = |f: &Option<Option<String>>| f.clone().flatten();
    // Postgres keeps microseconds; a finer timestamp would give the fake away.
    let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
    User {
        id,
        username: new.username.as_str().to_owned(),
        email: new.email.as_str().to_owned(),
        password_hash: Some(new.password_hash.clone()),
        first_name: flat(&p.first_name),
        last_name: flat(&p.last_name),
        phone_number: flat(&p.phone_number),
        phone_verified: false,
        avatar_url: flat(&p.avatar_url),
        bio: flat(&p.bio),
        timezone: p
            .timezone
            .clone()
            .unwrap_or_else(|| DEFAULT_TIMEZONE.to_owned()),
        language: p
            .language
            .clone()
            .unwrap_or_else(|| DEFAULT_LANGUAGE.to_owned()),
        role: new.role,
        is_active: true,
        two_fa_enabled: false,
        totp_enabled: false,
        email_verified: new.email_verified,
        last_login_at: None,
        token_version: 0,
        created_at: now,
        updated_at: now,
    }
}

/// Whether an account has `username`, without regard to case.
///
/// # Errors
/// The database fails.
pub async fn username_taken(
    db: impl PgExecutor<'_>,
    username: &Username,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($1))")
        .bind(username.as_str())
        .fetch_one(db)
        .await
}

/// # Errors
/// The database fails.
pub async fn find_by_id(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, User>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The user `id`, its row locked until the transaction ends (changes that
/// must not interleave with a credential change take it).
///
/// # Errors
/// The database fails.
pub async fn lock(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, User>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// By username (without regard to case) or email.
///
/// # Errors
/// The database fails.
pub async fn find_by_login(
    db: impl PgExecutor<'_>,
    username_or_email: &str,
) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, User>(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE lower(username) = lower($1) OR email = lower($1) LIMIT 1"
    ))
    .bind(username_or_email.trim())
    .fetch_optional(db)
    .await
}

/// A page of users, newest first, and the total matching `filter`.
///
/// # Errors
/// The database fails.
pub async fn list(
    db: impl PgExecutor<'_> + Copy,
    filter: &UserFilter,
    limit: i64,
    offset: i64,
) -> Result<(Vec<User>, i64), sqlx::Error> {
    let where_clause = |qb: &mut QueryBuilder<Postgres>| {
        qb.push(" WHERE true");
        if let Some(role) = filter.role {
            qb.push(" AND role = ").push_bind(role.as_str());
        }
        if let Some(active) = filter.is_active {
            qb.push(" AND is_active = ").push_bind(active);
        }
        if let Some(q) = filter.q.as_deref().filter(|q| !q.is_empty()) {
            let pattern = format!(
                "%{}%",
                q.replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            );
            qb.push(" AND (username ILIKE ")
                .push_bind(pattern.clone())
                .push(" OR email ILIKE ")
                .push_bind(pattern.clone())
                .push(" OR first_name ILIKE ")
                .push_bind(pattern.clone())
                .push(" OR last_name ILIKE ")
                .push_bind(pattern)
                .push(")");
        }
    };
    let mut count = QueryBuilder::new("SELECT count(*) FROM users");
    where_clause(&mut count);
    let total: i64 = count.build_query_scalar().fetch_one(db).await?;
    let mut page = QueryBuilder::new(concat!("SELECT ", user_columns!(), " FROM users"));
    where_clause(&mut page);
    page.push(" ORDER BY created_at DESC, id DESC LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    let users = page.build_query_as::<User>().fetch_all(db).await?;
    Ok((users.into_iter().collect(), total))
}

/// Applies `changes`; deactivation also ends every session.
///
/// # Errors
/// The database fails.
pub async fn update_profile(
    db: impl PgExecutor<'_>,
    id: Uuid,
    changes: &ProfileChanges,
) -> Result<Option<User>, sqlx::Error> {
    let mut qb = QueryBuilder::<Postgres>::new("UPDATE users SET updated_at = now()");
    let mut set_text = |column: &str, value: &Option<Option<String>>| {
        if let Some(value) = value {
            qb.push(format!(", {column} = ")).push_bind(value.clone());
        }
    };
    set_text("first_name", &changes.first_name);
    set_text("last_name", &changes.last_name);
    set_text("phone_number", &changes.phone_number);
    set_text("avatar_url", &changes.avatar_url);
    set_text("bio", &changes.bio);
    if let Some(tz) = &changes.timezone {
        qb.push(", timezone = ").push_bind(tz.clone());
    }
    if let Some(language) = &changes.language {
        qb.push(", language = ").push_bind(language.clone());
    }
    if let Some(active) = changes.is_active {
        qb.push(", is_active = ").push_bind(active);
        if !active {
            qb.push(", token_version = token_version + 1");
        }
    }
    qb.push(" WHERE id = ")
        .push_bind(id)
        .push(concat!(" RETURNING ", user_columns!()));
    qb.build_query_as::<User>().fetch_optional(db).await
}

/// Sets the role and ends the user's sessions (their tokens carried the old one).
///
/// # Errors
/// The database fails.
pub async fn set_role(
    db: impl PgExecutor<'_>,
    id: Uuid,
    role: Role,
) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, User>(concat!(
        "UPDATE users SET role = $2, token_version = token_version + 1 WHERE id = $1 RETURNING ",
        user_columns!()
    ))
    .bind(id)
    .bind(role.as_str())
    .fetch_optional(db)
    .await
}

/// Sets a new password hash and ends every session.
///
/// # Errors
/// The database fails.
pub async fn set_password(
    db: impl PgExecutor<'_>,
    id: Uuid,
    hash: &str,
) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, User>(concat!("UPDATE users SET password_hash = $2, token_version = token_version + 1 WHERE id = $1 RETURNING ", user_columns!()))
    .bind(id)
    .bind(hash)
    .fetch_optional(db)
    .await
}

/// Turns email 2FA on or off.
///
/// # Errors
/// The database fails.
pub async fn set_two_fa(
    db: impl PgExecutor<'_>,
    id: Uuid,
    enabled: bool,
) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, User>(concat!(
        "UPDATE users SET two_fa_enabled = $2 WHERE id = $1 RETURNING ",
        user_columns!()
    ))
    .bind(id)
    .bind(enabled)
    .fetch_optional(db)
    .await
}

/// Turns email 2FA off; whether it was on.
///
/// # Errors
/// The database fails.
pub async fn disable_email_two_fa(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE users SET two_fa_enabled = false WHERE id = $1 AND two_fa_enabled")
            .bind(id)
            .execute(db)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends every access token of `id`: they carry the version they were issued under.
///
/// # Errors
/// The database fails.
pub async fn bump_token_version(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET token_version = token_version + 1 WHERE id = $1")
        .bind(id)
        .execute(db)
        .await
        .map(drop)
}

/// # Errors
/// The database fails.
pub async fn set_email_verified(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as::<_, User>(concat!(
        "UPDATE users SET email_verified = true WHERE id = $1 RETURNING ",
        user_columns!()
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// # Errors
/// The database fails.
pub async fn record_login(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE users SET last_login_at = now() WHERE id = $1")
        .bind(id)
        .execute(db)
        .await
        .map(drop)
}

/// Whether a row was deleted. The user's tasks go with it (a cascade), and
/// their history in the same statement (it has no foreign key to cascade).
///
/// # Errors
/// The database fails.
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "WITH history AS ( \
             DELETE FROM task_events WHERE task_id IN (SELECT id FROM tasks WHERE owner_id = $1) \
         ) \
         DELETE FROM users WHERE id = $1",
    )
    .bind(id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Locks every active superadmin row for the rest of the transaction and
/// counts them, so two concurrent demotions cannot both see "another one is left".
///
/// # Errors
/// The database fails.
pub async fn lock_active_superadmins(db: impl PgExecutor<'_>) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM users WHERE role = 'superadmin' AND is_active FOR UPDATE")
        .fetch_all(db)
        .await
}

/// Counts for `GET /admin/stats` and `keel-api admin stats`.
#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserStats {
    pub total: i64,
    pub active: i64,
    pub verified: i64,
    pub by_role: std::collections::BTreeMap<String, i64>,
}

/// # Errors
/// The database fails.
pub async fn stats(db: impl PgExecutor<'_>) -> Result<UserStats, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT role, count(*), count(*) FILTER (WHERE is_active), count(*) FILTER (WHERE email_verified) \
         FROM users GROUP BY role",
    )
    .fetch_all(db)
    .await?;
    let mut stats = UserStats::default();
    for role in Role::ALL {
        stats.by_role.insert(role.as_str().to_owned(), 0);
    }
    for (role, total, active, verified) in rows {
        stats.total += total;
        stats.active += active;
        stats.verified += verified;
        stats.by_role.insert(role, total);
    }
    Ok(stats)
}
