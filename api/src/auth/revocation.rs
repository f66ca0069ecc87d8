//! Ending every credential of an account at once: what a password reset, a
//! change of password and the claim of an unproven account by its proven
//! owner all do. One place, so no credential is forgotten by one of them.
//!
//! In the caller's transaction: the token version bumped (access tokens,
//! dashboard cookies, token WebSockets), every refresh family revoked, every
//! API key deleted, open 2FA challenges and reset links voided; for a claim,
//! also the second factors whoever held the account before the address was
//! proven had set. What adds a credential checks, under the same row lock,
//! that the caller's own still stands ([`ensure_current`]), so a request
//! racing the change cannot mint one past it. After the commit,
//! [`announce`] drops the cached user on every replica, which makes each
//! replica recheck (and close) the user's open WebSockets of every kind.

use keel_shared::db::{api_keys, email_tokens, refresh_tokens, totp, two_factor, users};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    auth::{AuthMethod, Principal},
    error::ApiError,
    problems::Code,
    state::AppState,
};

/// What [`end_all`] removed, for the owner's notice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ended {
    pub api_keys: u64,
    /// TOTP (with its recovery codes) or email 2FA was on and is now off.
    pub second_factors: bool,
}

/// Whose credentials end, and why: a claim also removes second factors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The owner proved themselves (a reset link, the current password):
    /// their own second factors stay.
    Sessions,
    /// The address's proven owner takes over an account someone registered
    /// with it: nothing the earlier holder set up survives.
    Claim,
}

/// Ends every credential of `user_id` in `tx`, which must hold the user's
/// row lock (it has just changed the row), ordering this against a
/// concurrent refresh ([`refresh_tokens::rotate`]).
///
/// # Errors
/// The database fails.
pub async fn end_all(
    tx: &mut PgConnection,
    user_id: Uuid,
    scope: Scope,
) -> Result<Ended, sqlx::Error> {
    users::bump_token_version(&mut *tx, user_id).await?;
    refresh_tokens::revoke_all_for_user(&mut *tx, user_id).await?;
    let api_keys = api_keys::delete_all_for_user(&mut *tx, user_id).await?;
    // Half-finished sign-ins and older reset links end too: a challenge
    // opened with the old password, a link mailed before the change.
    two_factor::void_open(&mut *tx, user_id).await?;
    email_tokens::revoke_all(&mut *tx, user_id, email_tokens::Purpose::ResetPassword).await?;
    let second_factors = match scope {
        Scope::Sessions => false,
        Scope::Claim => {
            let totp = totp::remove(&mut *tx, user_id).await?;
            let email = users::disable_email_two_fa(&mut *tx, user_id).await?;
            totp || email
        }
    };
    Ok(Ended {
        api_keys,
        second_factors,
    })
}

/// After the transaction of [`end_all`] (or any change that ends a
/// credential) commits: every replica forgets the cached user and rechecks
/// the user's sockets, closing those whose credential no longer holds.
pub async fn announce(state: &AppState, user_id: Uuid) {
    state.users.invalidate(user_id).await;
}

/// In `tx`, which holds the user's row lock: 401 unless `principal`'s
/// credential still stands. A request authenticated just before a reset
/// committed must not add a key (or a second factor) after it.
///
/// # Errors
/// The credential ended (401), or the database fails.
pub async fn ensure_current(tx: &mut PgConnection, principal: &Principal) -> Result<(), ApiError> {
    let ended = || ApiError::new(Code::InvalidToken, "the access token is no longer valid");
    let user = users::find_by_id(&mut *tx, principal.id())
        .await?
        .filter(|u| u.is_active)
        .ok_or_else(ended)?;
    match principal.method {
        AuthMethod::AccessToken { session, .. } => {
            if user.token_version != principal.user.token_version {
                return Err(ended());
            }
            if let Some(session) = session
                && refresh_tokens::session_ended(&mut *tx, session).await?
            {
                return Err(ended());
            }
            Ok(())
        }
        // Keys act for their owner but never add credentials (`require_session`).
        AuthMethod::ApiKey { .. } => Err(ended()),
    }
}
