//! Email 2FA: `enable-2fa` (a verified address first), `disable-2fa` (the
//! password), `test-2fa` (mails a code that signs nothing in), and the
//! second step of a 2FA login, `verify-2fa`, for either factor. The API
//! opens challenges and checks typed codes ([`crate::second_factor`]); for
//! email the worker alone makes a code, stores its hash and mails it.

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use keel_shared::{
    db::{
        two_factor::{Method, Purpose},
        users,
    },
    queue::emails,
};
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    accounts::sessions::{check_password, issue},
    auth::{Principal, client_ip::ClientIp},
    error::ApiError,
    extract::AppJson,
    openapi::{JsonBodyErrors, ResourceErrors, SessionOnly},
    problems::{Code, RETRY_AFTER, problem_response},
    responses::{Accepted, Tokens, UserResponse},
    second_factor::{self, record_notice},
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(verify_2fa))
        .routes(routes!(enable_2fa))
        .routes(routes!(disable_2fa))
        .routes(routes!(test_2fa))
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
        (status = 401, response = inline(CodeRefused)),
        (status = 429, response = inline(SecondStepPaused)),
    ))]
async fn verify_2fa(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(request): AppJson<VerifyTwoFactor>,
) -> Result<AppJson<Tokens>, ApiError> {
    let user =
        second_factor::pass_challenge(&state, ip, request.challenge_id, &request.code).await?;
    Ok(AppJson(issue(&state, &user).await?))
}

/// Turns email 2FA on; the address must be verified first.
#[utoipa::path(post, path = "/api/v1/auth/enable-2fa", tag = "auth", security(("bearer" = [])),
    responses(
        SessionOnly,
        (status = 200, description = "The caller, with `two_fa_enabled`", body = UserResponse),
        (status = 409, response = inline(Unverified)),
    ))]
async fn enable_2fa(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<AppJson<UserResponse>, ApiError> {
    principal.require_session()?;
    if !principal.user.email_verified {
        return Err(ApiError::new(
            Code::EmailNotVerified,
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
        JsonBodyErrors, SessionOnly,
        (status = 200, description = "The caller, without 2FA", body = UserResponse),
        (status = 422, response = inline(WrongPassword)),
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
        Some(record_notice(&mut tx, &changed, Method::Email, enabled).await?)
    };
    tx.commit().await?;
    state.users.invalidate(user.id).await;
    if let Some(notice) = notice {
        emails::push(&state.db, &state.jobs, &notice).await;
    }
    tracing::info!(user_id = %user.id, enabled, "2FA changed");
    Ok(AppJson(UserResponse::from(changed)))
}

/// Mails a test code, to check that codes arrive; it signs nothing in.
#[utoipa::path(post, path = "/api/v1/auth/test-2fa", tag = "auth", security(("bearer" = [])),
    responses(
        SessionOnly,
        (status = 202, description = "A test code is on its way", body = Accepted,
            example = json!({"message": "a test code is on its way"})),
    ))]
async fn test_2fa(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    principal.require_session()?;
    let minutes = i64::from(state.config.auth.two_fa_code_expire_minutes);
    second_factor::open(
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

problem_response!(
    /// `invalid_code` (tries left), or `challenge_closed` (used, expired or out of
    /// tries: sign in again).
    CodeRefused = [InvalidCode, ChallengeClosed]
);
problem_response!(
    /// `second_factor_locked`: ten wrong codes for the account within an hour,
    /// through any challenges, pause its second step for an hour (its owner is
    /// mailed); or `rate_limited`.
    SecondStepPaused = [SecondFactorLocked, RateLimited],
    headers = [RETRY_AFTER]
);
problem_response!(
    /// `email_not_verified`.
    Unverified = [EmailNotVerified]
);

problem_response!(
    /// A wrong `password`.
    WrongPassword = [ValidationFailed]
);
