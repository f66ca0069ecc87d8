//! The link that proves an address: a single-use token (256 random bits,
//! stored as its SHA-256, valid 24 hours) mailed to the account, which
//! registration and `resend-verification` both send.

use chrono::Utc;
use keel_shared::{
    db::{
        email_deliveries,
        email_tokens::{self, Purpose},
        users::User,
    },
    mail::EmailTemplate,
    queue::emails,
};
use serde_json::json;

use crate::{auth::tokens, error::ApiError, state::AppState};

/// How long a verification link works.
const TOKEN_TTL_HOURS: i64 = 24;
/// Mails `user` a fresh verification link; older links stop working.
///
/// # Errors
/// The database fails (a Redis failure leaves the mail to the reconciler).
pub async fn send_link(state: &AppState, user: &User) -> Result<(), ApiError> {
    let (token, hash) = tokens::new_refresh_token();
    let link = format!(
        "{}/api/v1/auth/verify-email?token={token}",
        state.config.http.app_base_url.trim_end_matches('/')
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
