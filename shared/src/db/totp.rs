//! The `totp_secrets` and `totp_recovery_codes` tables: a user's sealed
//! authenticator secret, the newest time step it accepted, and the hashes of
//! the single-use recovery codes. Sealing and checking codes is the API's;
//! this module only stores.

use sha2::{Digest as _, Sha256};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// A user's secret as stored: sealed, confirmed or pending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredSecret {
    pub secret_sealed: Vec<u8>,
    pub confirmed: bool,
    pub last_step: Option<i64>,
}

/// The stored form of a recovery code of `user` (the id salts the hash).
/// Case, spaces and dashes are ignored, as people copy codes loosely.
pub fn recovery_code_hash(user: Uuid, code: &str) -> [u8; 32] {
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let mut hash = Sha256::new();
    hash.update(user.as_bytes());
    hash.update(normal.as_bytes());
    hash.finalize().into()
}

/// The user's secret, locked until the transaction ends (so two codes
/// checked at once cannot both pass for one step).
///
/// # Errors
/// The database fails.
pub async fn lock(tx: &mut PgConnection, user: Uuid) -> Result<Option<StoredSecret>, sqlx::Error> {
    sqlx::query_as(
        "SELECT secret_sealed, confirmed_at IS NOT NULL AS confirmed, last_step \
         FROM totp_secrets WHERE user_id = $1 FOR UPDATE",
    )
    .bind(user)
    .fetch_optional(&mut *tx)
    .await
}

/// Stores a new pending secret for `user`, replacing a pending one; `false`
/// when the user already has a confirmed one (it is left alone).
///
/// # Errors
/// The database fails.
pub async fn set_pending(
    db: impl PgExecutor<'_>,
    user: Uuid,
    sealed: &[u8],
) -> Result<bool, sqlx::Error> {
    let stored = sqlx::query(
        "INSERT INTO totp_secrets (user_id, secret_sealed) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE \
             SET secret_sealed = EXCLUDED.secret_sealed, last_step = NULL, created_at = now() \
             WHERE totp_secrets.confirmed_at IS NULL",
    )
    .bind(user)
    .bind(sealed)
    .execute(db)
    .await?;
    Ok(stored.rows_affected() == 1)
}

/// Records `step` as used if it is later than every step used before;
/// `false` when it is not (a replay, or an older code after a newer one).
///
/// # Errors
/// The database fails.
pub async fn accept_step(
    tx: &mut PgConnection,
    user: Uuid,
    step: i64,
) -> Result<bool, sqlx::Error> {
    let accepted = sqlx::query(
        "UPDATE totp_secrets SET last_step = $2 \
         WHERE user_id = $1 AND (last_step IS NULL OR last_step < $2)",
    )
    .bind(user)
    .bind(step)
    .execute(&mut *tx)
    .await?;
    Ok(accepted.rows_affected() == 1)
}

/// Turns TOTP on: the pending secret confirmed, the user flagged, and
/// `recovery_hashes` replacing any older recovery codes.
///
/// # Errors
/// The database fails.
pub async fn confirm(
    tx: &mut PgConnection,
    user: Uuid,
    recovery_hashes: &[[u8; 32]],
) -> Result<(), sqlx::Error> {
    each_for(
        tx,
        user,
        &[
            "UPDATE totp_secrets SET confirmed_at = now() WHERE user_id = $1",
            "UPDATE users SET totp_enabled = true WHERE id = $1",
            "DELETE FROM totp_recovery_codes WHERE user_id = $1",
        ],
    )
    .await?;
    let hashes: Vec<Vec<u8>> = recovery_hashes.iter().map(|h| h.to_vec()).collect();
    sqlx::query(
        "INSERT INTO totp_recovery_codes (user_id, code_hash) SELECT $1, unnest($2::bytea[])",
    )
    .bind(user)
    .bind(hashes)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Spends recovery code `code` of `user`; `false` when it is not one, or
/// was used before.
///
/// # Errors
/// The database fails.
pub async fn use_recovery_code(
    tx: &mut PgConnection,
    user: Uuid,
    code: &str,
) -> Result<bool, sqlx::Error> {
    let used = sqlx::query(
        "UPDATE totp_recovery_codes SET used_at = now() \
         WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
    )
    .bind(user)
    .bind(recovery_code_hash(user, code).as_slice())
    .execute(&mut *tx)
    .await?;
    Ok(used.rows_affected() == 1)
}

/// How many unused recovery codes `user` has left.
///
/// # Errors
/// The database fails.
pub async fn recovery_codes_left(db: impl PgExecutor<'_>, user: Uuid) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM totp_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
    )
    .bind(user)
    .fetch_one(db)
    .await
}

/// Turns TOTP off: the secret (confirmed or pending) and the recovery codes
/// deleted, the user unflagged. Whether there was a secret.
///
/// # Errors
/// The database fails.
pub async fn remove(tx: &mut PgConnection, user: Uuid) -> Result<bool, sqlx::Error> {
    let had = sqlx::query("DELETE FROM totp_secrets WHERE user_id = $1")
        .bind(user)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        > 0;
    each_for(
        tx,
        user,
        &[
            "DELETE FROM totp_recovery_codes WHERE user_id = $1",
            "UPDATE users SET totp_enabled = false WHERE id = $1",
        ],
    )
    .await?;
    Ok(had)
}

/// Up to `limit` sealed secrets (pending or confirmed) of users after
/// `after`, by user id: a page of a walk over them all.
///
/// # Errors
/// The database fails.
pub async fn sealed_page(
    db: impl PgExecutor<'_>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<(Uuid, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT user_id, secret_sealed FROM totp_secrets \
         WHERE $1::uuid IS NULL OR user_id > $1 ORDER BY user_id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Replaces `user`'s sealed secret with `new` if it is still `old` (a new
/// setup in between wins); whether it did.
///
/// # Errors
/// The database fails.
pub async fn replace_sealed(
    db: impl PgExecutor<'_>,
    user: Uuid,
    old: &[u8],
    new: &[u8],
) -> Result<bool, sqlx::Error> {
    let replaced = sqlx::query(
        "UPDATE totp_secrets SET secret_sealed = $3 WHERE user_id = $1 AND secret_sealed = $2",
    )
    .bind(user)
    .bind(old)
    .bind(new)
    .execute(db)
    .await?;
    Ok(replaced.rows_affected() == 1)
}

/// Runs `statements` in order in `tx`, each with `user` as `$1`.
async fn each_for(
    tx: &mut PgConnection,
    user: Uuid,
    statements: &[&'static str],
) -> Result<(), sqlx::Error> {
    for statement in statements {
        sqlx::query(*statement).bind(user).execute(&mut *tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_read_loosely_and_salted_by_the_user() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(
            recovery_code_hash(a, "abcde-fghij"),
            recovery_code_hash(a, " ABCDE FGHIJ ")
        );
        assert_ne!(
            recovery_code_hash(a, "abcde-fghij"),
            recovery_code_hash(b, "abcde-fghij")
        );
        assert_ne!(
            recovery_code_hash(a, "abcde-fghij"),
            recovery_code_hash(a, "abcde-fghik")
        );
    }
}
