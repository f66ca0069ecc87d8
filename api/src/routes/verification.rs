//! Email verification: registration mails a link with a single-use token
//! (256 random bits, stored as its SHA-256, valid 24 hours);
//! `POST`/`GET /auth/verify-email` spends it and mails the welcome;
//! `POST /auth/resend-verification` mails a fresh link (and voids the old
//! ones), a few times an hour per account: to the caller with a bearer
//! token, or, without one, to the unverified account of `{email}` — an
//! answer (202) that is the same for every address and comes before the
//! lookup, as a password reset's does.

use std::time::Duration;

use axum::{
    extract::{FromRequest as _, Request, State},
    http::{StatusCode, header},
    response::IntoResponse,
};
use keel_shared::{
    db::{
        email_tokens::{self, Purpose},
        users,
    },
    mail::EmailTemplate,
    queue::emails,
};
use serde::Deserialize;
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    accounts::verification::send_link,
    auth::{
        Principal,
        client_ip::ClientIp,
        rate_limit::{Quota, hashed},
        tokens,
    },
    error::ApiError,
    extract::{AppJson, AppQuery},
    openapi::{JsonBodyErrors, ResourceErrors, SignedIn, ValidationFailed},
    problems::{Code, problem_response},
    responses::{Accepted, UserResponse},
    state::AppState,
};

/// Verification mails one account may ask for.
const RESEND_PER_ACCOUNT: Quota = Quota {
    limit: 3,
    period: Duration::from_secs(3600),
};

/// Resend requests without a bearer token from one IP.
const RESEND_PER_IP: Quota = Quota::per_minute(10);
/// Resend requests without a bearer token naming one address.
const RESEND_PER_ADDRESS: Quota = Quota {
    limit: 5,
    period: Duration::from_secs(3600),
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(verify_email_post, verify_email_get))
        .routes(routes!(resend_verification))
}

/// A token from a verification mail.
#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"token": "Zk3v9QmT2xL7pR1wN8cY4hB6jF0dG5sA3eU2iO7nK9q"}))]
pub struct VerifyEmail {
    pub token: String,
}

/// Verifies the address a token was mailed to.
#[utoipa::path(post, path = "/api/v1/auth/verify-email", tag = "auth", request_body = VerifyEmail,
    responses(
        JsonBodyErrors, ResourceErrors,
        (status = 200, description = "Verified; a welcome mail is on its way", body = UserResponse),
        (status = 400, response = inline(BadLink)),
    ))]
async fn verify_email_post(
    State(state): State<AppState>,
    AppJson(request): AppJson<VerifyEmail>,
) -> Result<AppJson<UserResponse>, ApiError> {
    verify(&state, &request.token).await
}

/// Verifies the address a token was mailed to: the link in the mail.
#[utoipa::path(get, path = "/api/v1/auth/verify-email", tag = "auth", params(VerifyEmail),
    responses(
        ResourceErrors,
        (status = 200, description = "Verified; a welcome mail is on its way", body = UserResponse),
        (status = 400, response = inline(UnknownLink)),
        (status = 422, response = ValidationFailed),
    ))]
async fn verify_email_get(
    State(state): State<AppState>,
    AppQuery(request): AppQuery<VerifyEmail>,
) -> Result<AppJson<UserResponse>, ApiError> {
    verify(&state, &request.token).await
}

async fn verify(state: &AppState, token: &str) -> Result<AppJson<UserResponse>, ApiError> {
    let hash = tokens::hash_secret(token);
    let invalid = || {
        ApiError::new(
            Code::InvalidLink,
            "this verification link is unknown, used or expired; ask for a new one",
        )
    };
    let user_id = email_tokens::consume(&state.db, Purpose::VerifyEmail, &hash)
        .await?
        .ok_or_else(invalid)?;
    let user = users::set_email_verified(&state.db, user_id)
        .await?
        .ok_or_else(invalid)?;
    state.users.invalidate(user.id).await;
    tracing::info!(user_id = %user.id, "email verified");
    emails::enqueue(
        &state.db,
        &state.jobs,
        &user.email,
        EmailTemplate::Welcome,
        &json!({"username": user.username}),
    )
    .await?;
    Ok(AppJson(UserResponse::from(user)))
}

/// Mails a fresh verification link: to the caller, or, signed out, to the
/// unverified account of `{email}` (the same 202 for every address).
#[utoipa::path(post, path = "/api/v1/auth/resend-verification", tag = "auth", security((), ("bearer" = []), ("api_key" = [])),
    request_body(content = Option<ResendRequest>, description = "Signed out only: the address to send a fresh link to",
        example = json!({"email": "alice@example.com"})),
    responses(
        JsonBodyErrors, SignedIn,
        (status = 202, description = "A fresh link is on its way; older ones stop working. Signed out, the same answer whether or not the address has an unverified account", body = Accepted),
        (status = 409, response = inline(AlreadyVerified)),
    ))]
async fn resend_verification(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    principal: Option<Principal>,
    request: Request,
) -> Result<impl IntoResponse, ApiError> {
    let Some(principal) = principal else {
        // Neither a credential nor a body: the bearer form without its token.
        if !has_body(&request) {
            return Err(ApiError::new(
                Code::NotAuthenticated,
                "sign in: send a bearer token or an API key (or, signed out, a body {\"email\"})",
            ));
        }
        let AppJson(body) = AppJson::<ResendRequest>::from_request(request, &state).await?;
        return resend_to_address(state, ip, &body.email).await;
    };
    let user = &principal.user;
    if user.email_verified {
        return Err(ApiError::new(
            Code::EmailAlreadyVerified,
            "this address is verified already",
        ));
    }
    state
        .limiter
        .enforce(
            &format!("resend-verification:{}", user.id),
            RESEND_PER_ACCOUNT,
        )
        .await?;
    send_link(&state, user).await?;
    Ok((
        StatusCode::ACCEPTED,
        AppJson(Accepted {
            message: "a verification link is on its way".into(),
        }),
    ))
}

/// The signed-out form of `resend-verification`: an address instead of a token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "alice@example.com"}))]
pub struct ResendRequest {
    #[schema(example = "alice@example.com")]
    pub email: String,
}

/// Whether a request carries a body (a content type, a length above zero,
/// or a chunked transfer).
fn has_body(request: &Request) -> bool {
    let headers = request.headers();
    headers.contains_key(header::CONTENT_TYPE)
        || headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// 202 for every address, limited per IP and per address alike; the lookup
/// and the mail come after the answer, so whether the address has an
/// unverified account shows neither in the answer nor in its time.
async fn resend_to_address(
    state: AppState,
    ip: std::net::IpAddr,
    email: &str,
) -> Result<(StatusCode, AppJson<Accepted>), ApiError> {
    let address = email.trim().to_lowercase();
    state
        .limiter
        .enforce(&format!("resend-verification:ip:{ip}"), RESEND_PER_IP)
        .await?;
    state
        .limiter
        .enforce(
            &format!("resend-verification:address:{}", hashed(&address)),
            RESEND_PER_ADDRESS,
        )
        .await?;
    tokio::spawn(async move {
        if let Err(e) = mail_link_to(&state, &address).await {
            tracing::warn!(error = %e, "could not queue a verification email");
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        AppJson(Accepted {
            message:
                "if the address belongs to an unverified account, a verification link is on its way"
                    .into(),
        }),
    ))
}

/// Mails a fresh link if `address` is an active, unverified account's,
/// within the same per-account budget as the signed-in form.
async fn mail_link_to(state: &AppState, address: &str) -> Result<(), ApiError> {
    let Some(user) = users::find_by_login(&state.db, address)
        .await?
        .filter(|u| u.is_active && !u.email_verified && u.email == address)
    else {
        return Ok(());
    };
    let budget = state
        .limiter
        .check(
            &format!("resend-verification:{}", user.id),
            RESEND_PER_ACCOUNT,
        )
        .await
        .map_err(ApiError::from)?;
    if !budget.allowed {
        tracing::info!(user_id = %user.id, "verification link not resent: the account's budget is spent");
        return Ok(());
    }
    send_link(state, &user).await?;
    tracing::info!(user_id = %user.id, "verification link resent by address");
    Ok(())
}

problem_response!(
    /// `invalid_token`: unknown, used or expired; or `malformed_json`.
    BadLink = [InvalidLink, MalformedJson]
);
problem_response!(
    /// `invalid_token`: unknown, used or expired.
    UnknownLink = [InvalidLink]
);
problem_response!(
    /// `email_already_verified`.
    AlreadyVerified = [EmailAlreadyVerified]
);
