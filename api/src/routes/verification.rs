//! Email verification: registration mails a link with a single-use token
//! (256 random bits, stored as its SHA-256, valid 24 hours);
//! `POST`/`GET /auth/verify-email` spends it and mails the welcome;
//! `POST /auth/resend-verification` mails a fresh link (and voids the old
//! ones), a few times an hour per account.

use std::time::Duration;

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use chrono::Utc;
use keel_shared::{
    db::{
        email_deliveries,
        email_tokens::{self, Purpose},
        users::{self, User},
    },
    emails,
    mail::EmailTemplate,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use super::users::UserResponse;
use crate::{
    auth::{Principal, rate_limit::Quota, tokens},
    error::{ApiError, Problem},
    extract::{AppJson, AppQuery},
    openapi::{JsonBodyErrors, ResourceErrors, Unauthorized, ValidationFailed},
    state::AppState,
};

/// How long a verification link works.
const TOKEN_TTL_HOURS: i64 = 24;
/// Verification mails one account may ask for.
const RESEND_PER_ACCOUNT: Quota = Quota {
    limit: 3,
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

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"message": "a verification link is on its way"}))]
pub struct Accepted {
    #[schema(example = "a verification link is on its way")]
    pub message: String,
}

/// Mails `user` a fresh verification link; older links stop working.
///
/// # Errors
/// The database fails (a Redis failure leaves the mail to the reconciler).
pub async fn send_link(state: &AppState, user: &User) -> Result<(), ApiError> {
    let (token, hash) = tokens::new_refresh_token();
    let link = format!(
        "{}/api/v1/auth/verify-email?token={token}",
        state.config.app_base_url.trim_end_matches('/')
    );
    let mut tx = state.db.begin().await?;
    email_tokens::revoke_all(&mut *tx, user.id, Purpose::VerifyEmail).await?;
    email_tokens::insert(
        &mut *tx,
        user.id,
        Purpose::VerifyEmail,
        &hash,
        Utc::now() + chrono::Duration::hours(TOKEN_TTL_HOURS),
    )
    .await?;
    let data = json!({"username": user.username, "link": link});
    let delivery = email_deliveries::insert(
        &mut *tx,
        &user.email,
        EmailTemplate::Verification.name(),
        &data,
    )
    .await?;
    tx.commit().await?;
    emails::push(&state.db, &state.jobs, &delivery).await;
    Ok(())
}

/// Verifies the address a token was mailed to.
#[utoipa::path(post, path = "/api/v1/auth/verify-email", tag = "auth", request_body = VerifyEmail,
    responses(
        JsonBodyErrors, ResourceErrors,
        (status = 200, description = "Verified; a welcome mail is on its way", body = UserResponse),
        (status = 400, description = "`invalid_token`: unknown, used or expired; or `malformed_json`", body = Problem, content_type = "application/problem+json",
            examples(
                ("invalid_token" = (value = json!({"type": "urn:keel:problem:invalid_token", "title": "Bad Request", "status": 400,
                    "detail": "this verification link is unknown, used or expired; ask for a new one", "code": "invalid_token"}))),
                ("malformed_json" = (value = json!({"type": "urn:keel:problem:malformed_json", "title": "Bad Request", "status": 400,
                    "detail": "EOF while parsing an object at line 1 column 15", "code": "malformed_json"}))),
            )),
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
        (status = 400, description = "`invalid_token`: unknown, used or expired", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:keel:problem:invalid_token", "title": "Bad Request", "status": 400,
                "detail": "this verification link is unknown, used or expired; ask for a new one", "code": "invalid_token"})),
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
        ApiError::bad_request(
            "invalid_token",
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

/// Mails the caller a fresh verification link.
#[utoipa::path(post, path = "/api/v1/auth/resend-verification", tag = "auth", security(("bearer" = []), ("api_key" = [])),
    responses(
        ResourceErrors,
        (status = 202, description = "A fresh link is on its way; older ones stop working", body = Accepted),
        (status = 401, response = Unauthorized),
        (status = 409, description = "`email_already_verified`", body = Problem, content_type = "application/problem+json",
            example = json!({"type": "urn:keel:problem:email_already_verified", "title": "Conflict", "status": 409,
                "detail": "this address is verified already", "code": "email_already_verified"})),
    ))]
async fn resend_verification(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<impl IntoResponse, ApiError> {
    let user = &principal.user;
    if user.email_verified {
        return Err(ApiError::conflict(
            "email_already_verified",
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
