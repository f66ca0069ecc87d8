//! The `two_factor_challenges` table: one row per 2FA challenge. The API
//! opens it; for an emailed code the worker alone makes the code and stores
//! its hash; for TOTP the code comes from the user's authenticator. The API
//! checks a typed code — once, five tries at most.

use chrono::{DateTime, Utc};
use sha2::{Digest as _, Sha256};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use super::Purge;

/// Wrong codes that kill a challenge.
pub const MAX_ATTEMPTS: i32 = 5;

/// What a challenge is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Login,
    Test,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Test => "test",
        }
    }
}

/// Which second factor a challenge asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// A code the worker mails.
    Email,
    /// A code from an authenticator app, or a recovery code.
    Totp,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Totp => "totp",
        }
    }
}

/// The stored form of `code` for challenge `id` (the id salts the hash, so
/// equal codes of two challenges differ).
pub fn code_hash(id: Uuid, code: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(id.as_bytes());
    hash.update(code.trim().as_bytes());
    hash.finalize().into()
}

/// Voids every open login challenge of `user`: one opened with a password
/// that has since been reset or changed must not still sign in.
///
/// # Errors
/// The database fails.
pub async fn void_open(db: impl PgExecutor<'_>, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE two_factor_challenges SET invalidated_at = now() \
         WHERE user_id = $1 AND used_at IS NULL AND invalidated_at IS NULL",
    )
    .bind(user)
    .execute(db)
    .await
    .map(drop)
}

/// Opens a challenge for `user`, valid until `expires_at`. A login
/// challenge voids the user's open login challenges: only the newest works.
///
/// # Errors
/// The database fails.
pub async fn open(
    tx: &mut PgConnection,
    user: Uuid,
    purpose: Purpose,
    method: Method,
    expires_at: DateTime<Utc>,
) -> Result<Uuid, sqlx::Error> {
    if purpose == Purpose::Login {
        sqlx::query(
            "UPDATE two_factor_challenges SET invalidated_at = now() \
             WHERE user_id = $1 AND purpose = 'login' AND used_at IS NULL AND invalidated_at IS NULL",
        )
        .bind(user)
        .execute(&mut *tx)
        .await?;
    }
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO two_factor_challenges (id, user_id, purpose, method, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(user)
    .bind(purpose.as_str())
    .bind(method.as_str())
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    Ok(id)
}

/// Who to mail a new code to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Recipient {
    pub email: String,
    pub username: String,
    pub expires_at: DateTime<Utc>,
}

/// Stores the hash of the code the worker made, if the challenge is open
/// and has no code yet (a duplicate job finds one and mails nothing).
///
/// # Errors
/// The database fails.
pub async fn set_code(
    db: impl PgExecutor<'_>,
    id: Uuid,
    hash: &[u8],
) -> Result<Option<Recipient>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE two_factor_challenges c SET code_hash = $2 FROM users u \
         WHERE c.id = $1 AND u.id = c.user_id AND c.code_hash IS NULL AND c.used_at IS NULL \
           AND c.invalidated_at IS NULL AND c.expires_at > now() \
         RETURNING u.email, u.username, c.expires_at",
    )
    .bind(id)
    .bind(hash)
    .fetch_optional(db)
    .await
}

/// Forgets a code that could not be mailed, so a retry makes a new one.
///
/// # Errors
/// The database fails.
pub async fn clear_code(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE two_factor_challenges SET code_hash = NULL WHERE id = $1 AND used_at IS NULL",
    )
    .bind(id)
    .execute(db)
    .await
    .map(drop)
}

/// What a typed code did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Right: the challenge is spent; sign this user in.
    Passed { user: Uuid },
    /// Wrong: `left` tries remain (0: the challenge is dead now).
    Wrong { left: i32 },
    /// Unknown, used, expired, voided, out of tries, or not a login challenge.
    Dead,
}

/// An open login challenge, locked until the transaction ends so that
/// concurrent guesses are counted one by one.
#[derive(Debug, Clone)]
pub struct Open {
    pub id: Uuid,
    pub user: Uuid,
    pub method: Method,
    /// The emailed code's hash; `None` for TOTP, or before the worker made it.
    code_hash: Option<Vec<u8>>,
    attempts: i32,
}

impl Open {
    /// Whether `code` is the emailed code (always false for TOTP, whose
    /// codes the caller checks against the authenticator's secret).
    pub fn emailed_code_matches(&self, code: &str) -> bool {
        let Some(stored) = &self.code_hash else {
            return false;
        };
        let typed = code_hash(self.id, code);
        // Constant time: the comparison must not tell how much of a guess was right.
        typed.len() == stored.len()
            && typed
                .iter()
                .zip(stored)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Locks login challenge `id` if it can still be answered.
///
/// # Errors
/// The database fails.
pub async fn lock(tx: &mut PgConnection, id: Uuid) -> Result<Option<Open>, sqlx::Error> {
    let row: Option<(Uuid, String, Option<Vec<u8>>, i32)> = sqlx::query_as(
        "SELECT user_id, method, code_hash, attempts FROM two_factor_challenges \
         WHERE id = $1 AND purpose = 'login' AND used_at IS NULL AND invalidated_at IS NULL \
           AND expires_at > now() AND attempts < $2 \
         FOR UPDATE",
    )
    .bind(id)
    .bind(MAX_ATTEMPTS)
    .fetch_optional(&mut *tx)
    .await?;
    Ok(row.and_then(|(user, method, code_hash, attempts)| {
        let method = match method.as_str() {
            "totp" => Method::Totp,
            // An emailed challenge whose code is not made yet cannot be answered.
            _ if code_hash.is_none() => return None,
            _ => Method::Email,
        };
        Some(Open {
            id,
            user,
            method,
            code_hash,
            attempts,
        })
    }))
}

/// Settles a locked challenge: spent when `passed`, otherwise one try
/// counted (and dead at the fifth).
///
/// # Errors
/// The database fails.
pub async fn settle(
    tx: &mut PgConnection,
    challenge: &Open,
    passed: bool,
) -> Result<Verdict, sqlx::Error> {
    if passed {
        sqlx::query("UPDATE two_factor_challenges SET used_at = now() WHERE id = $1")
            .bind(challenge.id)
            .execute(&mut *tx)
            .await?;
        return Ok(Verdict::Passed {
            user: challenge.user,
        });
    }
    let attempts = challenge.attempts + 1;
    sqlx::query(
        "UPDATE two_factor_challenges SET attempts = $2, \
             invalidated_at = CASE WHEN $2 >= $3 THEN now() END \
         WHERE id = $1",
    )
    .bind(challenge.id)
    .bind(attempts)
    .bind(MAX_ATTEMPTS)
    .execute(&mut *tx)
    .await?;
    Ok(Verdict::Wrong {
        left: MAX_ATTEMPTS - attempts,
    })
}

/// Open challenges still without a code `older_than` after they were
/// opened (their job was lost): the caller pushes them again.
///
/// # Errors
/// The database fails.
pub async fn codeless(
    db: impl PgExecutor<'_>,
    older_than: std::time::Duration,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM two_factor_challenges \
         WHERE method = 'email' AND code_hash IS NULL AND used_at IS NULL \
           AND invalidated_at IS NULL AND expires_at > now() AND created_at < now() - $1 * interval '1 millisecond' \
         LIMIT 1000",
    )
    .bind(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX))
    .fetch_all(db)
    .await
}

/// 2FA challenges expired before the cut-off (now): the hourly purge's.
pub const EXPIRED: Purge = Purge::new("two_factor_challenges", "expires_at < $2");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_salted_by_the_challenge() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(code_hash(a, "123456"), code_hash(a, " 123456 "));
        assert_ne!(code_hash(a, "123456"), code_hash(b, "123456"));
        assert_ne!(code_hash(a, "123456"), code_hash(a, "123457"));
    }
}
