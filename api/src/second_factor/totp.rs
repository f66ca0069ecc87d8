//! Checking a typed code against an account's authenticator app: a TOTP
//! code, once per time step, or an unused recovery code. The secret itself
//! (made, sealed, enrolled) is [`crate::auth::totp`]'s.

use keel_shared::db::totp as store;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{auth::totp, error::ApiError, state::AppState};

/// Whether `code` answers for `user`'s confirmed TOTP: a code of a time
/// step later than any used before (the step is then used up), or an
/// unused recovery code (then spent). Runs in the caller's transaction,
/// which commits the spending with the rest.
///
/// # Errors
/// The database fails, or the secret does not open (`SECRET_KEY` changed).
pub(crate) async fn check(
    state: &AppState,
    tx: &mut PgConnection,
    user: Uuid,
    code: &str,
) -> Result<bool, ApiError> {
    let Some(stored) = store::lock(tx, user).await?.filter(|s| s.confirmed) else {
        return Ok(false);
    };
    if totp::is_totp_code(code) {
        check_code(state, tx, user, &stored, code).await
    } else {
        Ok(store::use_recovery_code(tx, user, code).await?)
    }
}

/// Whether `code` is a TOTP code of `stored` for a time step later than any
/// used before; the step is then used up (in `tx`). `totp/confirm` checks
/// the pending secret with it.
///
/// # Errors
/// The database fails, or the secret does not open (`SECRET_KEY` changed).
pub(crate) async fn check_code(
    state: &AppState,
    tx: &mut PgConnection,
    user: Uuid,
    stored: &store::StoredSecret,
    code: &str,
) -> Result<bool, ApiError> {
    let secret = state
        .tokens
        .totp
        .open(user, &stored.secret_sealed)
        .map_err(|e| ApiError::Internal(anyhow::Error::new(e)))?;
    let Some(step) = totp::matching_step(&secret, code, totp::now_unix()) else {
        return Ok(false);
    };
    // A step at or before the last one used is a replay (or an older code
    // after a newer one): refused, as RFC 6238 §5.2 asks.
    if stored.last_step.is_some_and(|last| step <= last) {
        return Ok(false);
    }
    Ok(store::accept_step(tx, user, step).await?)
}
