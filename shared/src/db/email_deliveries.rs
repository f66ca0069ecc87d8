//! The `email_deliveries` table: one row per message, claimed by the
//! sending worker with a lease like a task, so a duplicate job for a sent
//! message sends nothing and a crash mid-send is retried.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

use super::Purge;

#[derive(Debug, Clone, FromRow, Serialize, Deserialize, PartialEq)]
pub struct Delivery {
    pub id: Uuid,
    pub to_address: String,
    pub template: String,
    pub data: serde_json::Value,
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub message_id: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Fields of a delivery's data that carry a usable secret (the link of a
/// verification or reset mail, and its token). Removed from the row once
/// the mail is sent or has failed for good, so the retained history holds
/// no way into an account.
pub const SECRET_FIELDS: [&str; 2] = ["link", "token"];

macro_rules! delivery_columns {
    () => {
        "id, to_address, template, data, status, attempts, max_attempts, last_error, \
         message_id, next_attempt_at, lease_owner, sent_at, created_at"
    };
}

/// Records a message to send, marked enqueued (the caller pushes it next).
///
/// # Errors
/// The database fails.
pub async fn insert(
    db: impl PgExecutor<'_>,
    to: &str,
    template: &str,
    data: &serde_json::Value,
) -> Result<Delivery, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO email_deliveries (id, to_address, template, data, enqueued_at) \
         VALUES ($1, $2, $3, $4, now()) RETURNING ",
        delivery_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(to)
    .bind(template)
    .bind(data)
    .fetch_one(db)
    .await
}

/// # Errors
/// The database fails.
pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Delivery>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        delivery_columns!(),
        " FROM email_deliveries WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Claims `id` for sending: `queued` and due, or `sending` under an expired
/// lease with attempts left. `None`: sent, failed, not due, or held.
///
/// # Errors
/// The database fails.
pub async fn claim(
    db: impl PgExecutor<'_>,
    id: Uuid,
    worker: &str,
    lease: Duration,
) -> Result<Option<Delivery>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE email_deliveries SET status = 'sending', attempts = attempts + 1, \
             lease_owner = $2 || '/' || gen_random_uuid(), \
             lease_expires_at = now() + $3 * interval '1 millisecond', \
             message_id = coalesce(message_id, id::text || '@keel') \
         WHERE id = $1 AND attempts < max_attempts \
           AND ((status = 'queued' AND next_attempt_at <= now()) \
                OR (status = 'sending' AND lease_expires_at < now())) \
         RETURNING ",
        delivery_columns!()
    ))
    .bind(id)
    .bind(worker)
    .bind(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX))
    .fetch_optional(db)
    .await
}

/// How a send ended.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    Sent,
    /// Try again after `delay`.
    Retry {
        error: String,
        delay: Duration,
    },
    Failed(String),
}

/// Writes the outcome of the send holding `token`; `false` if the lease
/// was lost meanwhile.
///
/// # Errors
/// The database fails.
pub async fn finish(
    db: impl PgExecutor<'_>,
    id: Uuid,
    token: &str,
    outcome: &SendOutcome,
) -> Result<bool, sqlx::Error> {
    let (status, error, delay) = match outcome {
        SendOutcome::Sent => ("sent", None, 0),
        SendOutcome::Retry { error, delay } => (
            "queued",
            Some(error.as_str()),
            i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
        ),
        SendOutcome::Failed(error) => ("failed", Some(error.as_str()), 0),
    };
    let done = sqlx::query(
        "UPDATE email_deliveries SET status = $3, \
             data = CASE WHEN $3 = 'queued' THEN data ELSE data - $6::text[] END, \
             last_error = coalesce($4, last_error), \
             sent_at = CASE WHEN $3 = 'sent' THEN now() END, \
             next_attempt_at = now() + $5 * interval '1 millisecond', \
             enqueued_at = CASE WHEN $3 = 'queued' THEN now() ELSE enqueued_at END, \
             lease_owner = NULL, lease_expires_at = NULL \
         WHERE id = $1 AND lease_owner = $2 AND status = 'sending'",
    )
    .bind(id)
    .bind(token)
    .bind(status)
    .bind(error)
    .bind(delay)
    .bind(SECRET_FIELDS.as_slice())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Clears the enqueued mark after a failed push (the reconciler pushes it).
///
/// # Errors
/// The database fails.
pub async fn mark_not_enqueued(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE email_deliveries SET enqueued_at = NULL WHERE id = $1")
        .bind(id)
        .execute(db)
        .await
        .map(drop)
}

/// Fails `id` if its worker died during its last allowed attempt (sending,
/// lease expired, attempts used up); `true` if it did.
///
/// # Errors
/// The database fails.
pub async fn fail_exhausted(db: impl PgExecutor<'_>, id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE email_deliveries SET status = 'failed', lease_owner = NULL, lease_expires_at = NULL, \
             data = data - $2::text[], \
             last_error = coalesce(last_error, 'the worker stopped during the last attempt') \
         WHERE id = $1 AND status = 'sending' AND lease_expires_at < now() \
           AND attempts >= max_attempts",
    )
    .bind(id)
    .bind(SECRET_FIELDS.as_slice())
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deliveries to (re)push, marked enqueued now: queued ones never handed to
/// Redis (or, with `lost_before`, handed over before then), and sends whose
/// lease ran out. Returns `(id, next_attempt_at)`.
///
/// # Errors
/// The database fails.
pub async fn take_for_push(
    db: impl PgExecutor<'_>,
    lost_before: Option<DateTime<Utc>>,
    limit: i64,
) -> Result<Vec<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE email_deliveries SET enqueued_at = now() WHERE id IN ( \
             SELECT id FROM email_deliveries \
             WHERE (status = 'queued' AND (enqueued_at IS NULL OR enqueued_at < $1)) \
                OR (status = 'sending' AND lease_expires_at < now() \
                    AND (enqueued_at IS NULL OR enqueued_at < now() - interval '1 minute')) \
             ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING id, next_attempt_at",
    )
    .bind(lost_before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Sent or failed deliveries last changed before the cut-off: the daily
/// purge's, past the retention.
pub const FINISHED: Purge = Purge::new(
    "email_deliveries",
    "status IN ('sent', 'failed') AND updated_at < $2",
);
