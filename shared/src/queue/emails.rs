//! Queueing an email: the delivery row first, then `EmailJob::Send` on the
//! `email` queue. As for tasks, a failed push leaves the row for the
//! reconciler, so a mail the API promised is never lost to a Redis outage.

use serde_json::Value;
use sqlx::PgPool;

use crate::{
    db::email_deliveries::{self, Delivery},
    mail::EmailTemplate,
    queue::{EmailJob, JobQueue},
};

/// Pushes the job of a delivery recorded in a transaction that has committed.
pub async fn push(db: &PgPool, jobs: &JobQueue, delivery: &Delivery) {
    let job = EmailJob::Send {
        delivery_id: delivery.id,
    };
    if let Err(e) = jobs.push(job, None).await {
        tracing::warn!(error = %e, delivery_id = %delivery.id, "email not queued; the reconciler will queue it");
        if let Err(e) = email_deliveries::mark_not_enqueued(db, delivery.id).await {
            tracing::warn!(error = %e, "could not clear the enqueued mark");
        }
    }
}

/// Records and queues `template` for `to`, rendered with `data`.
///
/// # Errors
/// The database failed (a Redis failure is logged, not returned).
pub async fn enqueue(
    db: &PgPool,
    jobs: &JobQueue,
    to: &str,
    template: EmailTemplate,
    data: &Value,
) -> Result<Delivery, sqlx::Error> {
    let delivery = email_deliveries::insert(db, to, template.name(), data).await?;
    push(db, jobs, &delivery).await;
    Ok(delivery)
}
