//! The `oauth_identities` table: which account an OAuth / OpenID Connect
//! provider's account signs in to, and the account changes a sign-in
//! through a provider makes.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use crate::domain::{EmailAddress, Username};

/// A provider's account linked to a Keel account.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct OAuthIdentity {
    pub provider: String,
    /// The provider's stable id of its account (`sub`).
    pub subject: String,
    pub user_id: Uuid,
    /// The address the provider gave at the last sign-in, for reference only:
    /// sign-ins go by `subject`.
    pub email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The account `subject` of `provider` signs in to, if linked.
///
/// # Errors
/// The database fails.
pub async fn find_user_id(
    db: impl PgExecutor<'_>,
    provider: &str,
    subject: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar("SELECT user_id FROM oauth_identities WHERE provider = $1 AND subject = $2")
        .bind(provider)
        .bind(subject)
        .fetch_optional(db)
        .await
}

/// Every identity linked to `user_id`, oldest first.
///
/// # Errors
/// The database fails.
pub async fn list_for_user(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<Vec<OAuthIdentity>, sqlx::Error> {
    sqlx::query_as::<_, OAuthIdentity>(
        "SELECT provider, subject, user_id, email, created_at, updated_at \
         FROM oauth_identities WHERE user_id = $1 ORDER BY created_at",
    )
    .bind(user_id)
    .fetch_all(db)
    .await
}

/// Links `subject` of `provider` to `user_id`.
///
/// # Errors
/// `oauth_identities_pkey` when the identity is linked already (a
/// concurrent sign-in linked it first).
pub async fn link(
    db: impl PgExecutor<'_>,
    provider: &str,
    subject: &str,
    user_id: Uuid,
    email: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO oauth_identities (provider, subject, user_id, email) VALUES ($1, $2, $3, $4)",
    )
    .bind(provider)
    .bind(subject)
    .bind(user_id)
    .bind(email)
    .execute(db)
    .await
    .map(drop)
}

/// Notes the address the provider gave at this sign-in.
///
/// # Errors
/// The database fails.
pub async fn record_email(
    db: impl PgExecutor<'_>,
    provider: &str,
    subject: &str,
    email: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE oauth_identities SET email = $3 \
         WHERE provider = $1 AND subject = $2 AND email IS DISTINCT FROM $3",
    )
    .bind(provider)
    .bind(subject)
    .bind(email)
    .execute(db)
    .await
    .map(drop)
}

/// Inserts an account that signs in only through a provider: no password,
/// the `user` role, its address verified (the provider vouched for it).
/// Read it back with `users::find_by_id`.
///
/// # Errors
/// `users_username_key` or `users_email_key` when taken.
pub async fn insert_user(
    db: impl PgExecutor<'_>,
    username: &Username,
    email: &EmailAddress,
) -> Result<Uuid, sqlx::Error> {
    // Not `users::insert`: its `NewUser` always carries a password hash.
    sqlx::query_scalar(
        "INSERT INTO users (id, username, email, password_hash, role, email_verified) \
         VALUES ($1, $2, $3, NULL, 'user', true) RETURNING id",
    )
    .bind(Uuid::now_v7())
    .bind(username.as_str())
    .bind(email.as_str())
    .fetch_one(db)
    .await
}

/// Hands an account whose address was never verified to the address's
/// proven owner, who just signed in through a provider that vouches for it:
/// the password (set by whoever registered, who never proved the address)
/// is removed, the address marked verified, and every access token ended.
/// Whether it was unverified (and so changed); refresh tokens are the
/// caller's to revoke in the same transaction.
///
/// # Errors
/// The database fails.
pub async fn claim_unverified_account(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE users SET password_hash = NULL, email_verified = true, \
         token_version = token_version + 1 WHERE id = $1 AND NOT email_verified",
    )
    .bind(user_id)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
