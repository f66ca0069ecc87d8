//! Email 2FA: `enable-2fa` (a verified address first), `disable-2fa` (the
//! password), `test-2fa` (mails a code that signs nothing in), and the
//! second step of a 2FA login, `verify-2fa`, for either factor. The API
//! opens challenges and checks typed codes; for email the worker alone
//! makes a code, stores its hash and mails it; TOTP codes are checked by
//! `totp`.

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use chrono::Utc;
use keel_shared::{
    db::{
        email_deliveries::{self, Delivery},
        second_factor::{self, Failure},
        two_factor::{self, Method, Purpose, Verdict},
        users::{self, User},
    },
    emails,
    jobs::EmailJob,
    mail::EmailTemplate,
};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    auth::{Tokens, check_password, issue},
    users::UserResponse,
    verification::Accepted,
};
use crate::{
    auth::{Principal, client_ip::ClientIp, rate_limit::LOGIN_PER_IP},
    error::{ApiError, Problem},
    extract::AppJson,
    openapi::{ApiKeyNotAllowed, JsonBodyErrors, ResourceErrors, Unauthorized},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(verify_2fa))
        .routes(routes!(enable_2fa))
        .routes(routes!(disable_2fa))
        .routes(routes!(test_2fa))
}

/// The answer to a correct password when 2FA is on.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "two_factor_required": true, "challenge_id": "01936f0e-9c3d-7f4e-8a5b-6c7d8e9fa0b1",
    "method": "email", "expires_in": 600
}))]
pub struct TwoFactorChallenge {
    pub two_factor_required: bool,
    pub challenge_id: Uuid,
    /// Where the code comes from: `email` (mailed now) or `totp` (the
    /// authenticator app; a recovery code also answers).
    #[schema(example = "email")]
    pub method: String,
    /// Seconds the challenge can be answered.
    pub expires_in: i64,
}

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
    let minutes = i64::from(state.config.two_fa_code_expire_minutes);
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
        method: method.as_str().into(),
        expires_in: minutes * 60,
    })
}

async fn open(
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

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"challenge_id": "01936f0e-9c3d-7f4e-8a5b-6c7d8e9fa0b1", "code": "123456"}))]
pub struct VerifyTwoFactor {
    pub challenge_id: Uuid,
    #[schema(example = "123456")]
    pub code: String,
}

/// The second step of a 2FA login: for `method: email` the mailed code;
/// for `totp` a code from the authenticator app (±30 s of drift, each code
/// once) or one of the recovery codes (each once). A challenge passes
/// once, within its time, after five wrong codes at most.
#[utoipa::path(post, path = "/api/v1/auth/verify-2fa", tag = "auth", request_body = VerifyTwoFactor,
    responses(
        JsonBodyErrors, ResourceErrors,
        (status = 200, description = "Signed in", body = Tokens),
        (status = 401, description = "`invalid_code` (tries left), or `challenge_closed` (used, expired or out of tries: sign in again)", body = Problem, content_type = "application/problem+json",
            examples(
                ("invalid_code" = (value = json!({"type": "urn:keel:problem:invalid_code", "title": "Unauthorized", "status": 401,
                    "detail": "wrong code; 4 tries left", "code": "invalid_code"}))),
                ("challenge_closed" = (value = json!({"type": "urn:keel:problem:challenge_closed", "title": "Unauthorized", "status": 401,
                    "detail": "this challenge is used, expired or out of tries; sign in again", "code": "challenge_closed"}))),
            )),
        (status = 429, description = "`second_factor_locked`: ten wrong codes for the account within an hour, through any challenges, pause its second step for an hour (its owner is mailed); or `rate_limited`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds until a retry may succeed")),
            example = json!({"type": "urn:keel:problem:second_factor_locked", "title": "Too Many Requests", "status": 429,
                "detail": "too many wrong codes for this account; the second step is paused until 14:05 UTC", "code": "second_factor_locked"})),
    ))]
async fn verify_2fa(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(request): AppJson<VerifyTwoFactor>,
) -> Result<AppJson<Tokens>, ApiError> {
    let user = pass_challenge(&state, ip, request.challenge_id, &request.code).await?;
    Ok(AppJson(issue(&state, &user).await?))
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
                Method::Totp => super::totp::check(state, &mut tx, challenge.user, code).await?,
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
            return Err(ApiError::unauthorized(
                "invalid_code",
                format!("wrong code; {left} tries left"),
            ));
        }
        Verdict::Wrong { .. } | Verdict::Dead => {
            return Err(ApiError::unauthorized(
                "challenge_closed",
                "this challenge is used, expired or out of tries; sign in again",
            ));
        }
    };
    let user = signing_in
        .filter(|u| u.is_active)
        .ok_or_else(|| ApiError::unauthorized("challenge_closed", "the account is not active"))?;
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
        code: "second_factor_locked",
        detail: format!(
            "too many wrong codes for this account; the second step is paused until {} UTC",
            until.format("%H:%M")
        ),
        retry_after_secs: u64::try_from((until - Utc::now()).num_seconds()).unwrap_or(0),
    }
}

/// Turns email 2FA on; the address must be verified first.
#[utoipa::path(post, path = "/api/v1/auth/enable-2fa", tag = "auth", security(("bearer" = [])),
    responses(
        ResourceErrors,
        (status = 200, description = "The caller, with `two_fa_enabled`", body = UserResponse),
        (status = 401, response = Unauthorized),
        (status = 403, response = ApiKeyNotAllowed),
        (status = 409, description = "`email_not_verified`", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:keel:problem:email_not_verified", "title": "Conflict", "status": 409,
                "detail": "verify your email address before turning on 2FA", "code": "email_not_verified"})),
    ))]
async fn enable_2fa(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<AppJson<UserResponse>, ApiError> {
    principal.require_session()?;
    if !principal.user.email_verified {
        return Err(ApiError::conflict(
            "email_not_verified",
            "verify your email address before turning on 2FA",
        ));
    }
    set(&state, &principal, true).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"password": "correct horse battery staple"}))]
pub struct DisableTwoFactor {
    pub password: String,
}

/// Turns email 2FA off; needs the password.
#[utoipa::path(post, path = "/api/v1/auth/disable-2fa", tag = "auth", security(("bearer" = [])),
    request_body = DisableTwoFactor,
    responses(
        JsonBodyErrors, ResourceErrors,
        (status = 200, description = "The caller, without 2FA", body = UserResponse),
        (status = 401, response = Unauthorized),
        (status = 403, response = ApiKeyNotAllowed),
        (status = 422, description = "A wrong `password`", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:keel:problem:validation_failed", "title": "Unprocessable Entity", "status": 422,
                "detail": "password: is incorrect", "code": "validation_failed",
                "errors": [{"field": "password", "message": "is incorrect"}]})),
    ))]
async fn disable_2fa(
    State(state): State<AppState>,
    principal: Principal,
    AppJson(request): AppJson<DisableTwoFactor>,
) -> Result<AppJson<UserResponse>, ApiError> {
    principal.require_session()?;
    check_password(&state, &principal, &request.password, "password").await?;
    set(&state, &principal, false).await
}

async fn set(
    state: &AppState,
    principal: &Principal,
    enabled: bool,
) -> Result<AppJson<UserResponse>, ApiError> {
    let mut tx = state.db.begin().await?;
    // Under the row lock, the caller's session must still stand: a factor
    // turned on beside a reset that ended it would outlive it.
    let user = &users::lock(&mut *tx, principal.id())
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    crate::auth::revocation::ensure_current(&mut tx, principal).await?;
    let changed = users::set_two_fa(&mut *tx, user.id, enabled)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    // Only a change is news: turning on what is on mails nothing.
    let notice = if user.two_fa_enabled == enabled {
        None
    } else {
        Some(record_notice(&mut tx, &changed, EMAIL_CODES, enabled).await?)
    };
    tx.commit().await?;
    state.users.invalidate(user.id).await;
    if let Some(notice) = notice {
        emails::push(&state.db, &state.jobs, &notice).await;
    }
    tracing::info!(user_id = %user.id, enabled, "2FA changed");
    Ok(AppJson(UserResponse::from(changed)))
}

/// How the notice of a change names email 2FA.
pub(crate) const EMAIL_CODES: &str = "a code sent by email";
/// How it names TOTP.
pub(crate) const AUTHENTICATOR_APP: &str = "a code from an authenticator app";

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
    method: &str,
    enabled: bool,
) -> Result<Delivery, sqlx::Error> {
    let data = serde_json::json!({"username": user.username, "method": method, "enabled": enabled});
    email_deliveries::insert(
        &mut *tx,
        &user.email,
        EmailTemplate::TwoFactorChanged.name(),
        &data,
    )
    .await
}

/// Mails a test code, to check that codes arrive; it signs nothing in.
#[utoipa::path(post, path = "/api/v1/auth/test-2fa", tag = "auth", security(("bearer" = [])),
    responses(
        ResourceErrors,
        (status = 202, description = "A test code is on its way", body = Accepted,
            example = json!({"message": "a test code is on its way"})),
        (status = 401, response = Unauthorized),
        (status = 403, response = ApiKeyNotAllowed),
    ))]
async fn test_2fa(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    principal.require_session()?;
    let minutes = i64::from(state.config.two_fa_code_expire_minutes);
    open(
        &state,
        principal.id(),
        Purpose::Test,
        Method::Email,
        minutes,
    )
    .await?;
    Ok((
        StatusCode::ACCEPTED,
        AppJson(Accepted {
            message: "a test code is on its way".into(),
        }),
    ))
}
