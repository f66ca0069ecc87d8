//! The response bodies that more than one caller answers with: a user (the
//! routes and `keel-api admin … --json`), a sign-in's tokens or challenge
//! (the auth routes, OAuth and the dashboard), the queue counts (the admin
//! routes and the dashboard), and the small `Accepted` and `Detail` bodies.
//! A body only one route file answers with stays in that file.

use chrono::{DateTime, Utc};
use keel_shared::{
    db::{two_factor::Method, users::User},
    domain::Role,
    queue::{Queue, QueueDepths},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A user as the API shows it: never a password hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = UserResponse::example)]
pub struct UserResponse {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone_number: Option<String>,
    pub phone_verified: bool,
    pub avatar_url: Option<String>,
    pub bio: Option<String>,
    pub timezone: String,
    pub language: String,
    pub role: Role,
    pub is_active: bool,
    /// Email codes as a second factor.
    pub two_fa_enabled: bool,
    /// An authenticator app (TOTP) as a second factor; asked for instead of
    /// email codes when both are on.
    pub totp_enabled: bool,
    pub email_verified: bool,
    pub last_login_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl UserResponse {
    /// The user the API's documentation shows.
    pub(crate) fn example() -> serde_json::Value {
        serde_json::json!({
            "id": "01936f0e-5c4d-7a1b-9e2f-3a4b5c6d7e8f", "username": "alice", "email": "alice@example.com",
            "first_name": "Alice", "last_name": "Liddell", "phone_number": null, "phone_verified": false,
            "avatar_url": null, "bio": null, "timezone": "Europe/Berlin", "language": "en", "role": "user",
            "is_active": true, "two_fa_enabled": false, "totp_enabled": false, "email_verified": true,
            "last_login_at": "2026-01-15T09:30:00Z", "created_at": "2026-01-10T08:00:00Z",
            "updated_at": "2026-01-15T09:30:00Z"
        })
    }
}

impl From<User> for UserResponse {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            username: u.username,
            email: u.email,
            first_name: u.first_name,
            last_name: u.last_name,
            phone_number: u.phone_number,
            phone_verified: u.phone_verified,
            avatar_url: u.avatar_url,
            bio: u.bio,
            timezone: u.timezone,
            language: u.language,
            role: u.role,
            is_active: u.is_active,
            two_fa_enabled: u.two_fa_enabled,
            totp_enabled: u.totp_enabled,
            email_verified: u.email_verified,
            last_login_at: u.last_login_at,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// An access and refresh token pair.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "access_token": "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIwMTkzNmYwZS01YzRkLTdhMWItOWUyZi0zYTRiNWM2ZDdlOGYifQ.c2lnbmF0dXJl",
    "refresh_token": "r7Vq2xN4b9TzK1mPwE3sYhL8uJ5cA0dG6fQ2iR4oX7k", "token_type": "bearer", "expires_in": 1800
}))]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    #[schema(example = "bearer")]
    pub token_type: String,
    /// Seconds the access token lives.
    pub expires_in: i64,
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
    pub method: Method,
    /// Seconds the challenge can be answered.
    pub expires_in: i64,
}

/// What a correct password gets: tokens, or, with 2FA on, a challenge
/// for a code from the authenticator app (`totp`) or one on its way by
/// email (`email`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum SignIn {
    Tokens(Tokens),
    Challenge(TwoFactorChallenge),
}

// A request taken on, whose mail is on its way (a verification link, a reset
// link, a test code).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"message": "a verification link is on its way"}))]
pub struct Accepted {
    #[schema(example = "a verification link is on its way")]
    pub message: String,
}

// What a change did, in words.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"detail": "password changed; sign in again"}))]
pub struct Detail {
    pub detail: String,
}

/// One queue's counts. The task counts come from Postgres; other queues
/// report zeros there until their jobs have tables of their own.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "name": "tasks", "pending": 12, "scheduled": 3, "running": 2, "done": 1337, "failed": 4,
    "paused": false, "redis": {"scheduled": 3, "active": 12, "in_flight": 2, "done": 1000, "dead": 0}
}))]
pub struct QueueStats {
    pub name: Queue,
    /// Waiting and due.
    pub pending: i64,
    /// Waiting for a later time (`scheduled_at`, or a retry's backoff).
    pub scheduled: i64,
    pub running: i64,
    /// Completed.
    pub done: i64,
    pub failed: i64,
    /// Whether ops paused the queue (workers take none of its jobs);
    /// `null` when Redis is unreachable.
    pub paused: Option<bool>,
    /// What Redis holds for the queue; `null` when Redis is unreachable.
    pub redis: Option<QueueDepths>,
    /// For `tasks`: unfinished tasks waiting (`pending`, `retrying`) of
    /// kinds no live worker runs, by kind — they wait for a worker built
    /// with them. `null` when it cannot be told: Redis is unreachable, or a
    /// live worker does not say which kinds it runs (an older release).
    #[schema(value_type = Option<Object>, example = json!({"resize_image": 12}))]
    pub unrunnable: Option<std::collections::BTreeMap<String, i64>>,
}
