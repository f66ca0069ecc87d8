//! The per-account count of wrong second-factor codes (`users.second_factor_*`):
//! across every challenge, so a holder of the password cannot guess for ever
//! by opening new ones. Ten wrong in an hour pause the second step for an hour.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// Wrong codes in one window that pause the second step.
pub const MAX_FAILURES: i32 = 10;
/// How long failures count together, and how long a pause lasts, in minutes.
pub const WINDOW_MINUTES: i32 = 60;

/// Until when `user`'s second step is paused, if it is.
///
/// # Errors
/// The database fails.
pub async fn locked_until(
    tx: &mut PgConnection,
    user: Uuid,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT second_factor_locked_until FROM users \
         WHERE id = $1 AND second_factor_locked_until > now()",
    )
    .bind(user)
    .fetch_optional(&mut *tx)
    .await
    .map(Option::flatten)
}

/// What counting a wrong code did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Counted; `left` more wrong codes pause the second step.
    Counted { left: i32 },
    /// This one reached the limit: paused until `until` (the owner is to be told).
    Locked { until: DateTime<Utc> },
}

/// Counts one wrong code against `user`, in one statement (the row lock
/// orders concurrent guesses from parallel challenges).
///
/// # Errors
/// The database fails.
pub async fn record_failure(tx: &mut PgConnection, user: Uuid) -> Result<Failure, sqlx::Error> {
    let (failures, locked): (i32, Option<DateTime<Utc>>) = sqlx::query_as(
        "WITH counted AS ( \
             SELECT CASE WHEN second_factor_window_start > now() - make_interval(mins => $2) \
                         THEN second_factor_failures + 1 ELSE 1 END AS failures, \
                    CASE WHEN second_factor_window_start > now() - make_interval(mins => $2) \
                         THEN second_factor_window_start ELSE now() END AS window_start \
             FROM users WHERE id = $1 FOR UPDATE) \
         UPDATE users SET second_factor_failures = CASE WHEN counted.failures >= $3 THEN 0 \
                                                        ELSE counted.failures END, \
                second_factor_window_start = CASE WHEN counted.failures >= $3 THEN NULL \
                                                  ELSE counted.window_start END, \
                second_factor_locked_until = CASE WHEN counted.failures >= $3 \
                                                  THEN now() + make_interval(mins => $2) \
                                                  ELSE second_factor_locked_until END \
         FROM counted WHERE users.id = $1 \
         RETURNING counted.failures, \
                   CASE WHEN counted.failures >= $3 THEN users.second_factor_locked_until END",
    )
    .bind(user)
    .bind(WINDOW_MINUTES)
    .bind(MAX_FAILURES)
    .fetch_one(&mut *tx)
    .await?;
    Ok(match locked {
        Some(until) => Failure::Locked { until },
        None => Failure::Counted {
            left: MAX_FAILURES - failures,
        },
    })
}

/// A right code: the count starts again.
///
/// # Errors
/// The database fails.
pub async fn clear(tx: &mut PgConnection, user: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE users SET second_factor_failures = 0, second_factor_window_start = NULL \
         WHERE id = $1 AND second_factor_failures > 0",
    )
    .bind(user)
    .execute(&mut *tx)
    .await
    .map(drop)
}
