//! Single-use links mailed to an account (verifying its address, resetting
//! its password): 256 random bits, stored as their SHA-256; a new link of
//! a kind revokes the older ones, and the mail is queued with the token in
//! one transaction.

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

/// A kind of link.
#[derive(Debug)]
pub struct Link {
    pub purpose: Purpose,
    /// The path on `APP_BASE_URL` the link opens, before `?token=`.
    pub path: &'static str,
    /// How long it works.
    pub lifetime: chrono::Duration,
    pub template: EmailTemplate,
    /// The mail also shows the token on its own, to paste into an app.
    pub token_in_mail: bool,
}

/// Mails `user` a fresh `link`; older links of its kind stop working.
///
/// # Errors
/// The database fails (a Redis failure leaves the mail to the reconciler).
pub async fn mail(state: &AppState, user: &User, link: &Link) -> Result<(), ApiError> {
    let (token, hash) = tokens::new_refresh_token();
    let url = format!(
        "{}{}?token={token}",
        state.config.http.app_base_url.trim_end_matches('/'),
        link.path
    );
    let mut tx = state.db.begin().await?;
    email_tokens::revoke_all(&mut *tx, user.id, link.purpose).await?;
    email_tokens::insert(
        &mut *tx,
        user.id,
        link.purpose,
        &hash,
        Utc::now() + link.lifetime,
    )
    .await?;
    let mut data = json!({"username": user.username, "link": url});
    if link.token_in_mail {
        data["token"] = token.into();
    }
    let delivery =
        email_deliveries::insert(&mut *tx, &user.email, link.template.name(), &data).await?;
    tx.commit().await?;
    emails::push(&state.db, &state.jobs, &delivery).await;
    Ok(())
}
