//! `/api/v1/auth`: register, login, the OAuth2 token endpoint, refresh with
//! rotation, logout, me, change-password, and the seed aliases
//! `/auth/token/refresh` and `/auth/token/verify`.

use axum::{
    extract::State,
    http::{Method, StatusCode},
    response::IntoResponse,
};
use keel_shared::{
    db::{
        refresh_tokens,
        users::{self, NewUser},
    },
    domain::{EmailAddress, Invalid, Password, Role, Username},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    accounts::{self, ProfileInput, sessions},
    aliases::Alias,
    auth::{
        Principal,
        client_ip::ClientIp,
        rate_limit::{Quota, REGISTER_PER_IP, hashed},
        revocation::{self, Scope},
        tokens,
    },
    error::{ApiError, FieldError, constraint_of},
    extract::{AppJson, JsonOrForm},
    openapi::{JsonBodyErrors, ResourceErrors, SessionOnly, SignedIn},
    problems::{Code, RETRY_AFTER, problem_response},
    responses::{Detail, SignIn, Tokens, UserResponse},
    state::AppState,
};

/// The seed's path for a refresh.
pub const ALIASES: [Alias; 1] = [Alias {
    method: Method::POST,
    path: "/api/v1/auth/token/refresh",
    of: (Method::POST, "/api/v1/auth/refresh"),
}];

pub fn router() -> OpenApiRouter<AppState> {
    let [refresh_alias] = ALIASES;
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(token))
        .routes(routes!(refresh))
        .routes(routes!(verify_token))
        .routes(routes!(logout))
        .routes(routes!(me))
        .routes(routes!(change_password))
        .route(refresh_alias.path, refresh_alias.to(refresh))
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "username": "alice", "email": "alice@example.com", "password": "correct horse battery staple",
    "first_name": "Alice", "last_name": "Liddell", "timezone": "Europe/Berlin", "language": "en"
}))]
pub struct RegisterRequest {
    #[schema(example = "alice")]
    pub username: String,
    #[schema(example = "alice@example.com")]
    pub email: String,
    /// 8 to 128 characters, not a common password.
    pub password: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone_number: Option<String>,
    pub bio: Option<String>,
    /// An IANA time zone; `UTC` when absent.
    pub timezone: Option<String>,
    /// `en` when absent.
    pub language: Option<String>,
    pub avatar_url: Option<String>,
    /// Only `user` is accepted; anything else is 403.
    pub role: Option<String>,
}

/// Creates an account with the `user` role. A taken email answers 201 as
/// a new account would (nothing is created; the address's owner is mailed),
/// so registration never tells whether an address has an account.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        JsonBodyErrors, ResourceErrors,
        (status = 201, description = "The new account, its email not verified yet — or, for a taken email, the same answer with nothing created", body = UserResponse),
        (status = 403, response = inline(RoleRefused)),
        (status = 409, response = inline(UsernameTaken)),
    ))]
async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(request): AppJson<RegisterRequest>,
) -> Result<impl IntoResponse, ApiError> {
    state
        .limiter
        .enforce(&format!("register:ip:{ip}"), REGISTER_PER_IP)
        .await?;
    if request
        .role
        .as_deref()
        .is_some_and(|r| r != Role::User.as_str())
    {
        return Err(ApiError::new(
            Code::RoleNotAllowed,
            "registration creates `user` accounts only",
        ));
    }
    let mut errors = Vec::new();
    let username = collect(&mut errors, "username", Username::parse(&request.username));
    let email = collect(&mut errors, "email", EmailAddress::parse(&request.email));
    let password = collect(&mut errors, "password", Password::parse(&request.password));
    let profile = ProfileInput {
        first_name: Some(request.first_name),
        last_name: Some(request.last_name),
        phone_number: Some(request.phone_number),
        avatar_url: Some(request.avatar_url),
        bio: Some(request.bio),
        timezone: request.timezone.map(Some),
        language: request.language.map(Some),
    }
    .parse(&mut errors);
    let (Some(username), Some(email), Some(password), true) =
        (username, email, password, errors.is_empty())
    else {
        return Err(ApiError::validation(errors));
    };
    // Hashed whether or not the address is taken: the two answers take the same time.
    let password_hash = state.hasher.hash(&password).await?;
    let new = NewUser {
        username,
        email,
        password_hash,
        role: Role::User,
        email_verified: false,
        profile,
    };
    let user = match users::insert(&state.db, &new).await {
        Ok(user) => {
            tracing::info!(user_id = %user.id, "account registered");
            // Queued before the answer, so a 201 never loses its mail; the
            // taken-email path below queues its notice alike, so the two
            // take the same time. The account exists either way; without
            // the mail the user asks for another.
            if let Err(e) = accounts::verification::send_link(&state, &user).await {
                tracing::warn!(error = %e, user_id = %user.id, "could not queue the verification email");
            }
            user
        }
        Err(e) if constraint_of(&e) == Some("users_email_key") => {
            // A username is a public handle, so a taken one may say so (and
            // does first, as when both are taken); an address is not: a taken
            // one answers as a fresh account would, creates nothing, and its
            // owner hears of the attempt by mail.
            if users::username_taken(&state.db, &new.username).await? {
                return Err(accounts::username_taken());
            }
            tracing::info!("registration with a taken email; answered as if new");
            tell_owner_of_attempt(&state, &new.email).await;
            users::as_inserted(&new, Uuid::now_v7(), chrono::Utc::now())
        }
        Err(e) => return Err(ApiError::on_constraint(e, accounts::TAKEN)),
    };
    Ok((StatusCode::CREATED, AppJson(UserResponse::from(user))))
}

/// Notices of a registration attempt one address may get: enough to hear
/// of it, too few to make registration a way to flood someone's inbox.
const ATTEMPT_NOTICES_PER_ADDRESS: Quota = Quota {
    limit: 3,
    period: std::time::Duration::from_secs(3600),
};

/// Mails the owner of `email` that someone tried to register with it.
async fn tell_owner_of_attempt(state: &AppState, email: &EmailAddress) {
    let bucket = format!("register-notice:address:{}", hashed(email.as_str()));
    match state
        .limiter
        .check(&bucket, ATTEMPT_NOTICES_PER_ADDRESS)
        .await
    {
        Ok(decision) if decision.allowed => {}
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "rate limiter unavailable; no registration-attempt notice");
            return;
        }
    }
    let owner = match users::find_by_login(&state.db, email.as_str()).await {
        Ok(Some(owner)) if owner.is_active && owner.email == email.as_str() => owner,
        Ok(_) => return,
        Err(e) => {
            tracing::warn!(error = %e, "could not look up the owner of a taken email");
            return;
        }
    };
    if let Err(e) = keel_shared::queue::emails::enqueue(
        &state.db,
        &state.jobs,
        &owner.email,
        keel_shared::mail::EmailTemplate::RegistrationAttempt,
        &serde_json::json!({"username": owner.username}),
    )
    .await
    {
        tracing::warn!(error = %e, user_id = %owner.id, "could not queue the registration-attempt notice");
    }
}

/// The value, or its reason pushed onto `errors`.
fn collect<T>(errors: &mut Vec<FieldError>, field: &str, result: Result<T, Invalid>) -> Option<T> {
    result
        .map_err(|Invalid(message)| {
            errors.push(FieldError {
                field: field.into(),
                message,
            })
        })
        .ok()
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"username_or_email": "alice", "password": "correct horse battery staple"}))]
pub struct LoginRequest {
    /// A username (any case) or an email address.
    #[schema(example = "alice")]
    pub username_or_email: String,
    pub password: String,
}

/// Signs in with a username or email and a password. With 2FA on, the
/// answer is a challenge that `verify-2fa` finishes: `method: totp` when
/// the user has an authenticator app (it wins over email), otherwise
/// `method: email` and the code is mailed.
///
/// Attempts are limited per IP and per account (429), and refused while
/// the rate limiter is unavailable (503): sign-in fails closed. While more
/// passwords wait to be checked than the cores can take within about
/// 100 ms, more are refused at once: 503 `server_busy`, `Retry-After: 1`.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        JsonBodyErrors, ResourceErrors,
        (status = 200, description = "Tokens; or, with 2FA on, a challenge for `verify-2fa` (`email`: the code is mailed; `totp`: from the authenticator app)", body = SignIn,
            examples(
                ("tokens" = (summary = "signed in", value = json!({
                    "access_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIwMTkzNmYwZS01YzRkLTdhMWItOWUyZi0zYTRiNWM2ZDdlOGYifQ.c2lnbmF0dXJl",
                    "refresh_token": "r7Vq2xN4b9TzK1mPwE3sYhL8uJ5cA0dG6fQ2iR4oX7k", "token_type": "bearer", "expires_in": 1800}))),
                ("challenge" = (summary = "2FA on: a code was mailed", value = json!({
                    "two_factor_required": true, "challenge_id": "01936f0e-9c3d-7f4e-8a5b-6c7d8e9fa0b1",
                    "method": "email", "expires_in": 600}))),
                ("totp_challenge" = (summary = "TOTP on: a code from the authenticator app", value = json!({
                    "two_factor_required": true, "challenge_id": "01936f0e-9c3d-7f4e-8a5b-6c7d8e9fa0b1",
                    "method": "totp", "expires_in": 600}))),
            )),
        (status = 401, response = inline(InvalidCredentials)),
        (status = 429, response = inline(LoginThrottled)),
    ))]
async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(request): AppJson<LoginRequest>,
) -> Result<AppJson<SignIn>, ApiError> {
    sessions::sign_in(&state, ip, &request.username_or_email, &request.password)
        .await
        .map(AppJson)
}

/// An OAuth2 token request, as form fields or JSON.
#[derive(Debug, Deserialize, ToSchema)]
pub struct TokenRequest {
    /// `password` or `refresh_token`.
    pub grant_type: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub refresh_token: Option<String>,
}

/// OAuth2 token endpoint: `grant_type=password` or `grant_type=refresh_token`,
/// form-encoded or JSON (anything else is 415). An unknown grant, or a
/// missing field of one, is 422.
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "auth",
    request_body(content(
        (TokenRequest = "application/x-www-form-urlencoded",
            example = json!({"grant_type": "password", "username": "alice", "password": "correct horse battery staple"})),
        (TokenRequest = "application/json",
            example = json!({"grant_type": "refresh_token", "refresh_token": "r7Vq2xN4b9TzK1mPwE3sYhL8uJ5cA0dG6fQ2iR4oX7k"})),
    )),
    responses(
        JsonBodyErrors, ResourceErrors,
        (status = 200, description = "A new token pair", body = Tokens),
        (status = 401, response = inline(BadCredentialsOrToken)),
        (status = 403, response = inline(TwoFactorNeeded)),
    ))]
async fn token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    JsonOrForm(request): JsonOrForm<TokenRequest>,
) -> Result<AppJson<Tokens>, ApiError> {
    let missing = |field: &str| {
        ApiError::validation(vec![FieldError {
            field: field.into(),
            message: "is required for this grant".into(),
        }])
    };
    match request.grant_type.as_str() {
        "password" => {
            let username = request.username.ok_or_else(|| missing("username"))?;
            let password = request.password.ok_or_else(|| missing("password"))?;
            match sessions::sign_in(&state, ip, &username, &password).await? {
                SignIn::Tokens(tokens) => Ok(AppJson(tokens)),
                // An OAuth2 client cannot answer a challenge: send it to the two-step flow.
                SignIn::Challenge(_) => Err(ApiError::new(
                    Code::TwoFactorRequired,
                    "this account signs in with a second factor: POST /api/v1/auth/login, then /api/v1/auth/verify-2fa",
                )),
            }
        }
        "refresh_token" => {
            let token = request
                .refresh_token
                .ok_or_else(|| missing("refresh_token"))?;
            sessions::rotate(&state, ip, &token).await.map(AppJson)
        }
        _ => Err(ApiError::validation(vec![FieldError {
            field: "grant_type".into(),
            message: "must be password or refresh_token".into(),
        }])),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"refresh_token": "r7Vq2xN4b9TzK1mPwE3sYhL8uJ5cA0dG6fQ2iR4oX7k"}))]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Exchanges a refresh token for a new pair; the old one is spent.
/// Presenting a spent token revokes its whole family.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        JsonBodyErrors, ResourceErrors,
        (status = 200, description = "A new token pair; the presented refresh token is spent", body = Tokens),
        (status = 401, response = inline(InvalidRefreshToken)),
    ))]
async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(request): AppJson<RefreshRequest>,
) -> Result<AppJson<Tokens>, ApiError> {
    sessions::rotate(&state, ip, &request.refresh_token)
        .await
        .map(AppJson)
}

/// Signs out the refresh token's sign-in: its family (every device it was
/// refreshed on) and every access token issued to it, which stop working
/// at once on every replica.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses(
        JsonBodyErrors, ResourceErrors,
        (status = 204, description = "Signed out (also for an unknown token)"),
    ))]
async fn logout(
    State(state): State<AppState>,
    AppJson(request): AppJson<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    let ended =
        refresh_tokens::revoke_family_of(&state.db, &tokens::hash_secret(&request.refresh_token))
            .await?;
    if let Some((user_id, _)) = ended {
        revocation::announce(&state, user_id).await;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The current user (same as `GET /users/me`).
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", security(("bearer" = []), ("api_key" = [])),
    responses(
        SignedIn,
        (status = 200, description = "The caller", body = UserResponse),
    ))]
async fn me(principal: Principal) -> AppJson<UserResponse> {
    AppJson(principal.user.into())
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIwMTkzNmYwZS01YzRkLTdhMWItOWUyZi0zYTRiNWM2ZDdlOGYifQ.c2lnbmF0dXJl"
}))]
pub struct VerifyRequest {
    pub token: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"valid": true, "exp": 1768471200}))]
pub struct VerifyResponse {
    pub valid: bool,
    /// Expiry, in seconds since the epoch.
    pub exp: i64,
}

/// Whether an access token is valid (as djangorestframework-simplejwt's verify).
#[utoipa::path(post, path = "/api/v1/auth/token/verify", tag = "auth", request_body = VerifyRequest,
    responses(
        JsonBodyErrors, ResourceErrors,
        (status = 200, description = "The access token is valid", body = VerifyResponse),
        (status = 401, response = inline(BadAccessToken)),
    ))]
async fn verify_token(
    State(state): State<AppState>,
    AppJson(request): AppJson<VerifyRequest>,
) -> Result<AppJson<VerifyResponse>, ApiError> {
    let (_, claims) = crate::auth::principal::bearer(&state, &request.token).await?;
    Ok(AppJson(VerifyResponse {
        valid: true,
        exp: claims.exp,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({
    "current_password": "correct horse battery staple", "new_password": "tr0ubadour-and-3-more-words"
}))]
pub struct ChangePasswordRequest {
    pub current_password: String,
    pub new_password: String,
}

/// Changes the password and ends every session, this one included. Wrong
/// passwords count against the account, as sign-in attempts do (429).
#[utoipa::path(post, path = "/api/v1/auth/change-password", tag = "auth", security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        JsonBodyErrors, SessionOnly,
        (status = 200, description = "Changed; every session has ended, this one too", body = Detail),
        (status = 422, response = inline(WrongPassword)),
    ))]
async fn change_password(
    State(state): State<AppState>,
    principal: Principal,
    AppJson(request): AppJson<ChangePasswordRequest>,
) -> Result<AppJson<Detail>, ApiError> {
    principal.require_session()?;
    let user = sessions::check_password(
        &state,
        &principal,
        &request.current_password,
        "current_password",
    )
    .await?;
    let new_password = Password::parse(&request.new_password).map_err(|Invalid(message)| {
        ApiError::validation(vec![FieldError {
            field: "new_password".into(),
            message,
        }])
    })?;
    let hash = state.hasher.hash(&new_password).await?;
    let mut tx = state.db.begin().await?;
    users::set_password(&mut *tx, user.id, &hash).await?;
    let ended = revocation::end_all(&mut tx, user.id, Scope::Sessions).await?;
    let notice = keel_shared::db::email_deliveries::insert(
        &mut *tx,
        &user.email,
        keel_shared::mail::EmailTemplate::PasswordChanged.name(),
        &serde_json::json!({"username": user.username, "api_keys_deleted": ended.api_keys}),
    )
    .await?;
    tx.commit().await?;
    revocation::announce(&state, user.id).await;
    keel_shared::queue::emails::push(&state.db, &state.jobs, &notice).await;
    Ok(AppJson(Detail {
        detail: "password changed; sign in again".into(),
    }))
}

problem_response!(
    /// `role_not_allowed`: a `role` other than `user`.
    RoleRefused = [RoleNotAllowed]
);
problem_response!(
    /// `username_taken` (a taken email is not told).
    UsernameTaken = [UsernameTaken]
);
problem_response!(
    /// `invalid_credentials`, alike for a wrong password, an unknown or a disabled
    /// user.
    InvalidCredentials = [InvalidCredentials]
);
problem_response!(
    /// `rate_limited`; or `second_factor_locked`: the account's second step is
    /// paused after ten wrong codes within an hour, so no challenge is opened.
    LoginThrottled = [RateLimited, SecondFactorLocked],
    headers = [RETRY_AFTER]
);
problem_response!(
    /// `invalid_credentials` or `invalid_refresh_token`.
    BadCredentialsOrToken = [InvalidCredentials, InvalidRefreshToken]
);
problem_response!(
    /// `two_factor_required`: the account uses 2FA; sign in with `login` and
    /// `verify-2fa`.
    TwoFactorNeeded = [TwoFactorRequired]
);
problem_response!(
    /// `invalid_refresh_token`: unknown, expired, revoked, or spent (which revokes
    /// its family).
    InvalidRefreshToken = [InvalidRefreshToken]
);
problem_response!(
    /// `invalid_token` or `token_expired`.
    BadAccessToken = [TokenExpired, InvalidToken]
);

problem_response!(
    /// A wrong `current_password`, or a weak `new_password`.
    WrongPassword = [ValidationFailed]
);
