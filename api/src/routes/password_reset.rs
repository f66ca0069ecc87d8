//! Password reset: `request` answers 202 with the same body for every
//! address, at once (the lookup and the mail happen after the answer, so
//! known and unknown addresses take the same time); a known, active
//! account gets a single-use token valid 30 minutes. `confirm` sets the new
//! password (the registration policy), ends every credential of the account
//! (sessions, access tokens, API keys, sockets) and mails a "password
//! changed" notice.

use std::time::Duration;

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use keel_shared::{
    db::{
        email_deliveries,
        email_tokens::{self, Purpose},
        users,
    },
    domain::{Invalid, Password},
    mail::EmailTemplate,
    queue::emails,
};
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    accounts::links::{self, Link},
    auth::{
        client_ip::ClientIp,
        rate_limit::Quota,
        revocation::{self, Scope},
        tokens,
    },
    error::{ApiError, FieldError},
    extract::AppJson,
    openapi::{JsonBodyErrors, ResourceErrors},
    problems::{Code, problem_response},
    responses::{Accepted, Detail},
    state::AppState,
};

/// The reset link: 30 minutes, on the web app's page, the token also in
/// the mail for apps.
const RESET: Link = Link {
    purpose: Purpose::ResetPassword,
    path: "/reset-password",
    lifetime: chrono::Duration::minutes(30),
    template: EmailTemplate::PasswordReset,
    token_in_mail: true,
};
/// Reset requests from one IP.
const REQUESTS_PER_IP: Quota = Quota::per_minute(10);
/// Reset requests for one address.
const REQUESTS_PER_ADDRESS: Quota = Quota {
    limit: 5,
    period: Duration::from_secs(3600),
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request_reset))
        .routes(routes!(confirm_reset))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"email": "alice@example.com"}))]
pub struct ResetRequest {
    #[schema(example = "ann@example.com")]
    pub email: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"token": "Zk3v9QmT2xL7pR1wN8cY4hB6jF0dG5sA3eU2iO7nK9q", "new_password": "tr0ubadour-and-3-more-words"}))]
pub struct ResetConfirm {
    pub token: String,
    pub new_password: String,
}

/// Mails a reset link if the address belongs to an active account. The
/// answer is the same either way.
#[utoipa::path(post, path = "/api/v1/auth/password-reset/request", tag = "auth", request_body = ResetRequest,
    responses(
        JsonBodyErrors, ResourceErrors,
        (status = 202, description = "The same answer for every address", body = Accepted,
            example = json!({"message": "if the address belongs to an account, a reset link is on its way"})),
    ))]
async fn request_reset(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    AppJson(request): AppJson<ResetRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let address = request.email.trim().to_lowercase();
    state
        .limiter
        .enforce(&format!("reset:ip:{ip}"), REQUESTS_PER_IP)
        .await?;
    // Keyed by a hash: the limiter's keys never hold an address.
    let key = hex(&tokens::hash_secret(&address));
    state
        .limiter
        .enforce(&format!("reset:address:{key}"), REQUESTS_PER_ADDRESS)
        .await?;
    // After the answer: whether the address is known must not show in the time taken.
    tokio::spawn(async move {
        if let Err(e) = mail_link(&state, &address).await {
            tracing::warn!(error = %e, "could not queue a password reset email");
        }
    });
    Ok((
        StatusCode::ACCEPTED,
        AppJson(Accepted {
            message: "if the address belongs to an account, a reset link is on its way".into(),
        }),
    ))
}

async fn mail_link(state: &AppState, address: &str) -> Result<(), ApiError> {
    let Some(user) = users::find_by_login(&state.db, address)
        .await?
        .filter(|u| u.is_active && u.email == address)
    else {
        return Ok(());
    };
    links::mail(state, &user, &RESET).await?;
    tracing::info!(user_id = %user.id, "password reset mailed");
    Ok(())
}

/// Sets a new password with a token from a reset mail; every session ends.
#[utoipa::path(post, path = "/api/v1/auth/password-reset/confirm", tag = "auth", request_body = ResetConfirm,
    responses(
        JsonBodyErrors, ResourceErrors,
        (status = 200, description = "Changed; every session has ended", body = Detail),
        (status = 400, response = inline(BadLink)),
        (status = 422, response = inline(WeakPassword)),
    ))]
async fn confirm_reset(
    State(state): State<AppState>,
    AppJson(request): AppJson<ResetConfirm>,
) -> Result<AppJson<Detail>, ApiError> {
    let password = Password::parse(&request.new_password).map_err(|Invalid(message)| {
        ApiError::validation(vec![FieldError {
            field: "new_password".into(),
            message,
        }])
    })?;
    // Hashed before the token is spent, so a slow hash cannot strand a spent token.
    let hash = state.hasher.hash(&password).await?;
    let mut tx = state.db.begin().await?;
    let user_id = email_tokens::consume(
        &mut *tx,
        Purpose::ResetPassword,
        &tokens::hash_secret(&request.token),
    )
    .await?
    .ok_or_else(|| {
        ApiError::new(
            Code::InvalidLink,
            "this reset link is unknown, used or expired; ask for a new one",
        )
    })?;
    let user = users::set_password(&mut *tx, user_id, &hash)
        .await?
        .ok_or_else(|| ApiError::new(Code::InvalidLink, "the account is gone"))?;
    // Whoever held the account before the reset keeps nothing: no session,
    // no access token, no API key, no open socket.
    let ended = revocation::end_all(&mut tx, user_id, Scope::Sessions).await?;
    let notice = email_deliveries::insert(
        &mut *tx,
        &user.email,
        EmailTemplate::PasswordChanged.name(),
        &json!({"username": user.username, "api_keys_deleted": ended.api_keys}),
    )
    .await?;
    tx.commit().await?;
    revocation::announce(&state, user_id).await;
    emails::push(&state.db, &state.jobs, &notice).await;
    tracing::info!(%user_id, api_keys_deleted = ended.api_keys, "password reset");
    Ok(AppJson(Detail {
        detail: "password changed; sign in again".into(),
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

problem_response!(
    /// `invalid_token`: unknown, used or expired; or `malformed_json`.
    BadLink = [InvalidLink, MalformedJson]
);

problem_response!(
    /// A weak `new_password`.
    WeakPassword = [ValidationFailed]
);
