//! The link that proves an address: a single-use token (256 random bits,
//! stored as its SHA-256, valid 24 hours) mailed to the account, which
//! registration and `resend-verification` both send.

use keel_shared::{
    db::{email_tokens::Purpose, users::User},
    mail::EmailTemplate,
};

use super::links::{self, Link};
use crate::{error::ApiError, state::AppState};

/// The verification link: 24 hours, on the API's own route.
const VERIFY: Link = Link {
    purpose: Purpose::VerifyEmail,
    path: "/api/v1/auth/verify-email",
    lifetime: chrono::Duration::hours(24),
    template: EmailTemplate::Verification,
    token_in_mail: false,
};

/// Mails `user` a fresh verification link; older links stop working.
///
/// # Errors
/// The database fails (a Redis failure leaves the mail to the reconciler).
pub async fn send_link(state: &AppState, user: &User) -> Result<(), ApiError> {
    links::mail(state, user, &VERIFY).await
}
