//! Signing in and the tokens a sign-in gets: the password check behind
//! `login`, the token endpoint and the dashboard; the first pair of a new
//! refresh family for any sign-in (password, second factor, OAuth);
//! rotation; and the password asked again before a sensitive change.

use keel_shared::db::{
    refresh_tokens::{self, Rotation},
    users::{self, User},
};
use uuid::Uuid;

use crate::{
    auth::{
        Principal,
        rate_limit::{LOGIN_PER_ACCOUNT, LOGIN_PER_IP, REFRESH_PER_IP},
        revocation, tokens,
    },
    error::{ApiError, FieldError},
    problems::Code,
    responses::{SignIn, Tokens},
    second_factor,
    state::AppState,
};

/// The pair a client receives: a fresh access token of the sign-in
/// `session` beside `refresh_token`.
fn pair(state: &AppState, user: &User, session: Uuid, refresh_token: String) -> Tokens {
    Tokens {
        access_token: state.tokens.issue_session_access(user, session),
        refresh_token,
        token_type: "bearer".into(),
        expires_in: state.tokens.access_ttl_secs(),
    }
}

/// A sign-in: the first pair of a new refresh family.
///
/// `user` is the row the password or code was checked against: if the
/// account's credentials ended since (a reset racing this sign-in), no
/// session is made (401).
pub(crate) async fn issue(state: &AppState, user: &User) -> Result<Tokens, ApiError> {
    let (refresh_token, hash) = tokens::new_refresh_token();
    let session = Uuid::now_v7();
    let stored = refresh_tokens::insert_for_version(
        &state.db,
        user.id,
        session,
        &hash,
        state.tokens.refresh_expiry(),
        user.token_version,
    )
    .await?;
    if !stored {
        return Err(ApiError::new(
            Code::InvalidCredentials,
            "the account's credentials changed during sign-in; sign in again",
        ));
    }
    Ok(pair(state, user, session, refresh_token))
}

/// The password check behind `login`, the token endpoint and the dashboard's
/// sign-in: rate limits per IP and per account, lockout after repeated
/// failures, and one answer for every kind of failure, in the same time.
pub(crate) async fn sign_in(
    state: &AppState,
    ip: std::net::IpAddr,
    account: &str,
    password: &str,
) -> Result<SignIn, ApiError> {
    state
        .limiter
        .enforce(&format!("login:ip:{ip}"), LOGIN_PER_IP)
        .await?;
    let user = if account.len() > 254 {
        None
    } else {
        users::find_by_login(&state.db, account).await?
    };
    // Attempts count against the account, whichever name (username or email)
    // the guesses use; for an unknown name, against a hash of the name typed.
    let account_key = user.as_ref().map_or_else(
        || hex(&tokens::hash_secret(&account.trim().to_lowercase())[..16]),
        |u| u.id.to_string(),
    );
    state
        .limiter
        .enforce(&format!("login:account:{account_key}"), LOGIN_PER_ACCOUNT)
        .await?;
    busy_unless_room(state)?;
    state.limiter.reserve_attempt(&account_key).await?;
    let matches = state
        .hasher
        .verify(
            password,
            user.as_ref().and_then(|u| u.password_hash.as_deref()),
        )
        .await?;
    let Some(user) = user.filter(|u| matches && u.is_active) else {
        return Err(ApiError::new(
            Code::InvalidCredentials,
            "wrong username, email or password",
        ));
    };
    state.limiter.clear_attempts(&account_key).await;
    if user.two_fa_enabled || user.totp_enabled {
        return second_factor::challenge(state, &user)
            .await
            .map(SignIn::Challenge);
    }
    users::record_login(&state.db, user.id).await?;
    // No cache invalidation: only last_login_at changed, and cached copies
    // may show an older one for a while rather than cost a reload per login.
    tracing::info!(user_id = %user.id, "signed in");
    issue(state, &user).await.map(SignIn::Tokens)
}

/// 503 `server_busy` before an attempt is counted, when the hasher has no
/// room: a refusal while busy must not count against the account. (A check
/// that finds room here may still be refused a moment later; that rare
/// attempt is counted.)
fn busy_unless_room(state: &AppState) -> Result<(), ApiError> {
    if state.hasher.has_room() {
        Ok(())
    } else {
        Err(ApiError::busy(
            "too many sign-ins are being checked right now; retry in a second",
        ))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A refresh: `token` is spent for a new pair of its family. A spent token
/// presented again revokes the family (a stolen copy is in use).
pub(crate) async fn rotate(
    state: &AppState,
    ip: std::net::IpAddr,
    token: &str,
) -> Result<Tokens, ApiError> {
    state
        .limiter
        .enforce(&format!("refresh:ip:{ip}"), REFRESH_PER_IP)
        .await?;
    let invalid = || {
        ApiError::new(
            Code::InvalidRefreshToken,
            "the refresh token is invalid, expired or revoked",
        )
    };
    let (next, next_hash) = tokens::new_refresh_token();
    let rotation = refresh_tokens::rotate(
        &state.db,
        &tokens::hash_secret(token),
        &next_hash,
        state.tokens.refresh_expiry(),
    )
    .await?;
    match rotation {
        Rotation::Rotated { user_id, family_id } => {
            let user = users::find_by_id(&state.db, user_id)
                .await?
                .ok_or_else(invalid)?;
            Ok(pair(state, &user, family_id, next))
        }
        Rotation::Reused { user_id } => {
            tracing::warn!(%user_id, "a spent refresh token was presented; its family is revoked");
            // Its access tokens end too, on every replica.
            revocation::announce(state, user_id).await;
            Err(invalid())
        }
        Rotation::Invalid => Err(invalid()),
    }
}

/// Checks the caller's password before a sensitive change, reading the hash
/// fresh (the cached user has none). Guesses count against the account's
/// password attempts: a stolen access token must not buy unlimited guesses.
/// A wrong password is a 422 on `field`.
///
/// # Errors
/// Too many attempts, a wrong password, or a dependency down.
pub(crate) async fn check_password(
    state: &AppState,
    principal: &Principal,
    password: &str,
    field: &str,
) -> Result<User, ApiError> {
    let attempts_key = format!("change-password:{}", principal.id());
    busy_unless_room(state)?;
    state.limiter.reserve_attempt(&attempts_key).await?;
    let user = users::find_by_id(&state.db, principal.id())
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    if !state
        .hasher
        .verify(password, user.password_hash.as_deref())
        .await?
    {
        return Err(ApiError::validation(vec![FieldError {
            field: field.into(),
            message: "is incorrect".into(),
        }]));
    }
    state.limiter.clear_attempts(&attempts_key).await;
    Ok(user)
}
