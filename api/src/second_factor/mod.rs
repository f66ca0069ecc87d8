//! A second factor at sign-in: opening a challenge (a code mailed by the
//! worker, or one from the authenticator app), passing it, and the count of
//! wrong codes that pauses an account's second step; and the notice mailed
//! when a factor is turned on or off. TOTP codes are checked by [`totp`].
//! The password step, the verify-2fa route, OAuth and the dashboard call these.

pub mod totp;

use chrono::Utc;
use keel_shared::{
    db::{
        email_deliveries::{self, Delivery},
        second_factor::{self, Failure},
        two_factor::{self, Method, Purpose, Verdict},
        users::{self, User},
    },
    mail::EmailTemplate,
    queue::{EmailJob, emails},
};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{
    auth::rate_limit::LOGIN_PER_IP, error::ApiError, problems::Code, responses::TwoFactorChallenge,
    state::AppState,
};

/// Opens a login challenge for `user` (voiding older ones): for TOTP when
/// it is on (the stronger factor wins), otherwise for a mailed code, which
/// the worker is asked to send.
///
/// # Errors
/// The database fails.
pub async fn challenge(state: &AppState, user: &User) -> Result<TwoFactorChallenge, ApiError> {
    // Paused: no challenge, and no code mailed for a step that would be refused.
    let mut conn = state.db.acquire().await?;
    if let Some(until) = second_factor::locked_until(&mut conn, user.id).await? {
        return Err(locked(until));
    }
    drop(conn);
    let minutes = i64::from(state.config.auth.two_fa_code_expire_minutes);
    let method = if user.totp_enabled {
        Method::Totp
    } else {
        Method::Email
    };
    let id = open(state, user.id, Purpose::Login, method, minutes).await?;
    tracing::info!(user_id = %user.id, challenge_id = %id, method = method.as_str(), "2FA challenge opened");
    Ok(TwoFactorChallenge {
        two_factor_required: true,
        challenge_id: id,
        method,
        expires_in: minutes * 60,
    })
}

/// Opens a challenge of `purpose` for `user`, answerable for `minutes`; for
/// an emailed code, asks the worker to make and mail it.
///
/// # Errors
/// The database fails, or the code cannot be queued (503).
pub(crate) async fn open(
    state: &AppState,
    user: Uuid,
    purpose: Purpose,
    method: Method,
    minutes: i64,
) -> Result<Uuid, ApiError> {
    let mut tx = state.db.begin().await?;
    let id = two_factor::open(
        &mut tx,
        user,
        purpose,
        method,
        Utc::now() + chrono::Duration::minutes(minutes),
    )
    .await?;
    tx.commit().await?;
    if method == Method::Totp {
        return Ok(id);
    }
    let job = EmailJob::TwoFactorCode { challenge_id: id };
    if let Err(e) = state.jobs.push(job, None).await {
        // No row to reconcile from (the code exists only in the worker): say so now.
        tracing::warn!(error = %e, "could not queue the 2FA code");
        return Err(ApiError::unavailable(anyhow::anyhow!(
            "the code could not be sent: {e}"
        )));
    }
    Ok(id)
}

/// Checks `code` against a login challenge and records the sign-in; the
/// user it signs in, still active. Shared by `verify-2fa` and the dashboard.
///
/// # Errors
/// A wrong code, a closed challenge, an inactive account, too many tries
/// from `ip`, or a dependency down.
pub(crate) async fn pass_challenge(
    state: &AppState,
    ip: std::net::IpAddr,
    challenge_id: Uuid,
    code: &str,
) -> Result<User, ApiError> {
    state
        .limiter
        .enforce(&format!("verify-2fa:ip:{ip}"), LOGIN_PER_IP)
        .await?;
    let mut tx = state.db.begin().await?;
    let mut notice = None;
    let verdict = match two_factor::lock(&mut tx, challenge_id).await? {
        None => Verdict::Dead,
        Some(challenge) => {
            // Paused after too many wrong codes: refused unchecked, and
            // uncounted, whichever challenge the guess comes through.
            if let Some(until) = second_factor::locked_until(&mut tx, challenge.user).await? {
                return Err(locked(until));
            }
            let right = match challenge.method {
                Method::Email => challenge.emailed_code_matches(code),
                Method::Totp => totp::check(state, &mut tx, challenge.user, code).await?,
            };
            notice = count_code(&mut tx, challenge.user, right).await?;
            two_factor::settle(&mut tx, &challenge, right).await?
        }
    };
    // The user as the code was checked, in the challenge's transaction: the
    // session is issued at this token version or not at all (`issue`).
    let signing_in = match verdict {
        Verdict::Passed { user } => users::find_by_id(&mut *tx, user).await?,
        _ => None,
    };
    tx.commit().await?;
    if let Some(notice) = notice {
        emails::push(&state.db, &state.jobs, &notice).await;
    }
    match verdict {
        Verdict::Passed { .. } => {}
        Verdict::Wrong { left } if left > 0 => {
            return Err(ApiError::new(
                Code::InvalidCode,
                format!("wrong code; {left} tries left"),
            ));
        }
        Verdict::Wrong { .. } | Verdict::Dead => {
            return Err(ApiError::new(
                Code::ChallengeClosed,
                "this challenge is used, expired or out of tries; sign in again",
            ));
        }
    };
    let user = signing_in
        .filter(|u| u.is_active)
        .ok_or_else(|| ApiError::new(Code::ChallengeClosed, "the account is not active"))?;
    users::record_login(&state.db, user.id).await?;
    tracing::info!(user_id = %user.id, "signed in with a second factor");
    Ok(user)
}

/// Counts a second-factor code against its account: a right one clears
/// the count, a wrong one adds to it, and the one that reaches the limit
/// pauses the second step and records (in `tx`) the mail that tells the
/// owner, which the caller pushes after the commit.
///
/// # Errors
/// The database fails.
pub(crate) async fn count_code(
    tx: &mut PgConnection,
    user: Uuid,
    right: bool,
) -> Result<Option<Delivery>, sqlx::Error> {
    if right {
        second_factor::clear(&mut *tx, user).await?;
        return Ok(None);
    }
    let Failure::Locked { until } = second_factor::record_failure(&mut *tx, user).await? else {
        return Ok(None);
    };
    let Some(owner) = users::find_by_id(&mut *tx, user).await? else {
        return Ok(None);
    };
    tracing::warn!(user_id = %user, %until, "too many wrong second-factor codes; the second step is paused");
    let data = serde_json::json!({
        "username": owner.username,
        "failures": second_factor::MAX_FAILURES,
        "until": until.format("%Y-%m-%d %H:%M").to_string(),
    });
    email_deliveries::insert(
        &mut *tx,
        &owner.email,
        EmailTemplate::SecondFactorLocked.name(),
        &data,
    )
    .await
    .map(Some)
}

/// 429 `second_factor_locked`, with `Retry-After` until the pause ends.
pub(crate) fn locked(until: chrono::DateTime<Utc>) -> ApiError {
    ApiError::Paused {
        code: Code::SecondFactorLocked,
        detail: format!(
            "too many wrong codes for this account; the second step is paused until {} UTC",
            until.format("%H:%M")
        ),
        retry_after_secs: u64::try_from((until - Utc::now()).num_seconds()).unwrap_or(0),
    }
}

/// How the notice of a change names `method`.
fn named(method: Method) -> &'static str {
    match method {
        Method::Email => "a code sent by email",
        Method::Totp => "a code from an authenticator app",
    }
}

/// Records in `tx` the email that tells `user` a second factor (`method`)
/// was turned on or off, so that someone who took over a session cannot
/// weaken the account unseen. In the transaction of the change, it is sent
/// exactly when the change stands; the caller pushes it with
/// [`emails::push`] once `tx` commits (a failed push leaves it to the
/// reconciler).
///
/// # Errors
/// The database fails.
pub(crate) async fn record_notice(
    tx: &mut PgConnection,
    user: &User,
    method: Method,
    enabled: bool,
) -> Result<Delivery, sqlx::Error> {
    let data =
        serde_json::json!({"username": user.username, "method": named(method), "enabled": enabled});
    email_deliveries::insert(
        &mut *tx,
        &user.email,
        EmailTemplate::TwoFactorChanged.name(),
        &data,
    )
    .await
}
