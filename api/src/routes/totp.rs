//! TOTP for authenticator apps: `totp/setup` (a pending secret, its URI and
//! QR code), `totp/confirm` (a first code turns it on and hands out the
//! recovery codes, once) and `totp/disable` (the password and a code). Codes
//! are checked by [`crate::second_factor::totp`], as `verify-2fa` checks them.

use axum::extract::State;
use keel_shared::{
    db::{refresh_tokens, second_factor, totp as store, two_factor::Method, users},
    queue::emails,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    accounts::sessions::check_password,
    auth::{Principal, rate_limit::LOGIN_PER_ACCOUNT, revocation, totp},
    error::{ApiError, FieldError},
    extract::AppJson,
    openapi::{JsonBodyErrors, SessionOnly},
    problems::{Code, problem_response},
    responses::UserResponse,
    second_factor::{
        count_code, locked, record_notice,
        totp::{check, check_code},
    },
    state::AppState,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(setup))
        .routes(routes!(confirm))
        .routes(routes!(disable))
}

/// A new authenticator secret, three ways to hand it to an app.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "secret": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
    "otpauth_uri": "otpauth://totp/Keel:alice%40example.com?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=Keel",
    "qr_svg": "<?xml version=\"1.0\" standalone=\"yes\"?><svg xmlns=\"http://www.w3.org/2000/svg\" …></svg>"
}))]
pub struct TotpSetup {
    /// Base32 (RFC 4648), for typing into the app by hand.
    pub secret: String,
    /// `otpauth://totp/…`: SHA-1, 6 digits, 30-second steps.
    pub otpauth_uri: String,
    /// The URI as a QR code: an SVG document.
    pub qr_svg: String,
}

/// Starts TOTP setup: a new secret, pending until `totp/confirm` gets a
/// code from it (a second setup before then replaces it). Nothing changes
/// at sign-in until it is confirmed.
#[utoipa::path(post, path = "/api/v1/auth/totp/setup", tag = "auth", security(("bearer" = [])),
    responses(
        SessionOnly,
        (status = 200, description = "The pending secret, its URI and QR code", body = TotpSetup),
        (status = 409, response = inline(SetupRefused)),
    ))]
async fn setup(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<AppJson<TotpSetup>, ApiError> {
    principal.require_session()?;
    let user = &principal.user;
    // A second factor set by someone who never proved the address would
    // stand between its owner and the account after a reset.
    if !user.email_verified {
        return Err(ApiError::new(
            Code::EmailNotVerified,
            "verify your email address before setting up an authenticator app",
        ));
    }
    let secret = totp::new_secret();
    let sealed = state.tokens.totp.seal(user.id, &secret);
    if !store::set_pending(&state.db, user.id, &sealed).await? {
        return Err(already_enabled());
    }
    let enrolment = totp::enrolment(&secret, &user.email);
    tracing::info!(user_id = %user.id, "TOTP setup started");
    Ok(AppJson(TotpSetup {
        secret: enrolment.secret,
        otpauth_uri: enrolment.otpauth_uri,
        qr_svg: enrolment.qr_svg,
    }))
}

fn already_enabled() -> ApiError {
    ApiError::new(
        Code::TotpAlreadyEnabled,
        "TOTP is already on; disable it first to set up a new secret",
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"code": "492039"}))]
pub struct ConfirmTotp {
    /// The 6-digit code the app shows now.
    #[schema(example = "492039")]
    pub code: String,
}

/// The recovery codes: each signs in once instead of a TOTP code.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"recovery_codes": [
    "k7d2-mq4x-np3h-v6aw-z2ro-pe5t", "jub7-ycn2-gq4x-k6me-r6wz-ta3d", "huy4-cfb7-mq2s-d5jn-xtg3-kewq",
    "7ru2-bp6f-h3mz-av5k-tns2-xe6l", "c4gy-k7d2-mq4x-np3h-v6aw-z2ro", "pe5t-jub7-ycn2-gq4x-k6me-r6wz",
    "ta3d-huy4-cfb7-mq2s-d5jn-xtg3", "kewq-7ru2-bp6f-h3mz-av5k-tns2", "xe6l-c4gy-k7d2-mq4x-np3h-v6aw",
    "z2ro-pe5t-jub7-ycn2-gq4x-k6me"]}))]
pub struct RecoveryCodes {
    /// Shown this once; only their hashes are kept.
    pub recovery_codes: Vec<String>,
}

/// Turns TOTP on with a code from the pending secret, and answers the ten
/// recovery codes, shown this once. From now on sign-in asks for a TOTP
/// code (`method: totp`), even if email 2FA is on too.
#[utoipa::path(post, path = "/api/v1/auth/totp/confirm", tag = "auth", security(("bearer" = [])),
    request_body = ConfirmTotp,
    responses(
        JsonBodyErrors, SessionOnly,
        (status = 200, description = "TOTP is on; the recovery codes", body = RecoveryCodes),
        (status = 409, response = inline(ConfirmRefused)),
        (status = 422, response = inline(WrongCode)),
    ))]
async fn confirm(
    State(state): State<AppState>,
    principal: Principal,
    AppJson(request): AppJson<ConfirmTotp>,
) -> Result<AppJson<RecoveryCodes>, ApiError> {
    principal.require_session()?;
    let user = principal.id();
    limit_guesses(&state, user).await?;
    let mut tx = state.db.begin().await?;
    // A factor set beside a reset or claim that just ended this session
    // would outlive it: checked under the user's row lock.
    refresh_tokens::lock_user(&mut *tx, user).await?;
    revocation::ensure_current(&mut tx, &principal).await?;
    let stored = store::lock(&mut tx, user).await?.ok_or_else(|| {
        ApiError::new(
            Code::TotpNotSetUp,
            "no TOTP setup is pending; POST /api/v1/auth/totp/setup first",
        )
    })?;
    if stored.confirmed {
        return Err(already_enabled());
    }
    if !check_code(&state, &mut tx, user, &stored, &request.code).await? {
        return Err(wrong_code());
    }
    let codes = totp::new_recovery_codes();
    let hashes: Vec<[u8; 32]> = codes
        .iter()
        .map(|c| store::recovery_code_hash(user, c))
        .collect();
    store::confirm(&mut tx, user, &hashes).await?;
    let notice = record_notice(&mut tx, &principal.user, Method::Totp, true).await?;
    tx.commit().await?;
    state.users.invalidate(user).await;
    emails::push(&state.db, &state.jobs, &notice).await;
    tracing::info!(user_id = %user, "TOTP turned on");
    Ok(AppJson(RecoveryCodes {
        recovery_codes: codes,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"password": "correct horse battery staple", "code": "492039"}))]
pub struct DisableTotp {
    pub password: String,
    /// A current TOTP code, or an unused recovery code (for a lost app).
    #[schema(example = "492039")]
    pub code: String,
}

/// Turns TOTP off; needs the password and a current code (or a recovery
/// code). The secret and the recovery codes are deleted; email 2FA, if on,
/// stays on.
#[utoipa::path(post, path = "/api/v1/auth/totp/disable", tag = "auth", security(("bearer" = [])),
    request_body = DisableTotp,
    responses(
        JsonBodyErrors, SessionOnly,
        (status = 200, description = "The caller, without TOTP", body = UserResponse),
        (status = 409, response = inline(TotpOff)),
        (status = 422, response = inline(WrongPasswordOrCode)),
    ))]
async fn disable(
    State(state): State<AppState>,
    principal: Principal,
    AppJson(request): AppJson<DisableTotp>,
) -> Result<AppJson<UserResponse>, ApiError> {
    principal.require_session()?;
    let user = principal.id();
    limit_guesses(&state, user).await?;
    check_password(&state, &principal, &request.password, "password").await?;
    let mut tx = state.db.begin().await?;
    if !store::lock(&mut tx, user)
        .await?
        .is_some_and(|s| s.confirmed)
    {
        return Err(ApiError::new(Code::TotpNotEnabled, "TOTP is not on"));
    }
    // Codes typed here count with the sign-in ones: a stolen session and
    // password must not buy guesses the sign-in would refuse.
    if let Some(until) = second_factor::locked_until(&mut tx, user).await? {
        return Err(locked(until));
    }
    let right = check(&state, &mut tx, user, &request.code).await?;
    let lock_notice = count_code(&mut tx, user, right).await?;
    if !right {
        tx.commit().await?;
        if let Some(notice) = lock_notice {
            emails::push(&state.db, &state.jobs, &notice).await;
        }
        return Err(wrong_code());
    }
    store::remove(&mut tx, user).await?;
    let notice = record_notice(&mut tx, &principal.user, Method::Totp, false).await?;
    tx.commit().await?;
    state.users.invalidate(user).await;
    emails::push(&state.db, &state.jobs, &notice).await;
    tracing::info!(user_id = %user, "TOTP turned off");
    let user = users::find_by_id(&state.db, user)
        .await?
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    Ok(AppJson(UserResponse::from(user)))
}

/// Code guesses outside a login challenge (confirm, disable) count against
/// the account like sign-in attempts: a stolen session must not buy
/// unlimited guesses at the six digits.
async fn limit_guesses(state: &AppState, user: Uuid) -> Result<(), ApiError> {
    state
        .limiter
        .enforce(&format!("totp:user:{user}"), LOGIN_PER_ACCOUNT)
        .await
        .map(drop)
}

fn wrong_code() -> ApiError {
    ApiError::validation(vec![FieldError {
        field: "code".into(),
        message: "is incorrect".into(),
    }])
}

problem_response!(
    /// `totp_already_enabled` (disable it first to change the secret), or
    /// `email_not_verified`.
    SetupRefused = [TotpAlreadyEnabled, EmailNotVerified]
);
problem_response!(
    /// `totp_not_set_up` (call `totp/setup` first) or `totp_already_enabled`.
    ConfirmRefused = [TotpNotSetUp, TotpAlreadyEnabled]
);
problem_response!(
    /// `totp_not_enabled`.
    TotpOff = [TotpNotEnabled]
);

problem_response!(
    /// A wrong `code`.
    WrongCode = [ValidationFailed]
);
problem_response!(
    /// A wrong `password` or `code`.
    WrongPasswordOrCode = [ValidationFailed]
);
