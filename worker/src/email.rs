//! The `email` queue: sends recorded deliveries. The row decides, as for
//! tasks: a send is claimed with a lease (a sent or failed row, or one
//! another worker holds, is not sent again), rendered from its template,
//! handed to the mailer, and finished with one fenced write — `sent`, or
//! `queued` again after a backoff when the server is down or busy, or
//! `failed` after the last attempt with the error kept.

use std::{sync::Arc, time::Duration};

use apalis::prelude::BoxDynError;
use chrono::Utc;
use keel_shared::{
    Config,
    db::{
        email_deliveries::{self, SendOutcome},
        two_factor,
    },
    mail::{EmailTemplate, Mailer, SendError, templates},
    queue::{EmailJob, JobQueue},
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{supervisor, tasks::RetryPolicy};

/// How long a worker holds a send before another may take it over.
const SEND_LEASE: Duration = Duration::from_secs(60);
/// A job this early waits in its slot; one due later goes back to Redis.
const LONGEST_HOLD: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct EmailRunner {
    db: PgPool,
    jobs: JobQueue,
    mailer: Mailer,
    app_base_url: String,
    worker: String,
    retry: RetryPolicy,
    stopping: CancellationToken,
}

impl EmailRunner {
    /// # Errors
    /// The mail settings are wrong (see [`Mailer::from_config`]).
    pub fn new(
        config: &Config,
        db: PgPool,
        jobs: JobQueue,
        worker: &str,
        stopping: CancellationToken,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            mailer: Mailer::from_config(config)?,
            app_base_url: config.http.app_base_url.clone(),
            worker: worker.to_owned(),
            retry: RetryPolicy {
                base: Duration::from_millis(config.tasks.retry_base_ms),
                max: Duration::from_secs(config.tasks.retry_max_seconds),
            },
            db,
            jobs,
            stopping,
        })
    }

    pub fn lease(&self) -> Duration {
        SEND_LEASE
    }

    /// Sends delivery `id`, unless it is not this job's to send.
    async fn send(&self, id: Uuid) -> Result<(), BoxDynError> {
        let delivery = loop {
            if let Some(delivery) =
                email_deliveries::claim(&self.db, id, &self.worker, SEND_LEASE).await?
            {
                break delivery;
            }
            let Some(row) = email_deliveries::get(&self.db, id).await? else {
                return Ok(());
            };
            match row.status.as_str() {
                "queued" if row.next_attempt_at > Utc::now() => {
                    // Released early (Redis counts whole seconds): wait the rest.
                    let wait = (row.next_attempt_at - Utc::now())
                        .to_std()
                        .unwrap_or_default();
                    if wait > LONGEST_HOLD || !self.wait(wait).await {
                        self.push_later(id, row.next_attempt_at).await;
                        return Ok(());
                    }
                }
                "sending" => {
                    if email_deliveries::fail_exhausted(&self.db, id).await? {
                        return Ok(());
                    }
                    // Another worker holds it; if it died, try again after its lease.
                    self.push_later(id, Utc::now() + SEND_LEASE).await;
                    return Ok(());
                }
                // Sent, failed, or out of attempts: nothing to do.
                _ => return Ok(()),
            }
        };
        let token = delivery.lease_owner.clone().unwrap_or_default();
        let outcome = match self.render_and_send(&delivery).await {
            Ok(()) => SendOutcome::Sent,
            Err(SendError::Transient(error)) if delivery.attempts < delivery.max_attempts => {
                SendOutcome::Retry {
                    error,
                    delay: self.retry.delay(delivery.attempts),
                }
            }
            Err(SendError::Transient(error) | SendError::Permanent(error)) => {
                SendOutcome::Failed(error)
            }
        };
        if let SendOutcome::Retry { error, .. } | SendOutcome::Failed(error) = &outcome {
            tracing::warn!(delivery_id = %id, attempt = delivery.attempts, %error, "email not sent");
        }
        if !email_deliveries::finish(&self.db, id, &token, &outcome).await? {
            tracing::warn!(delivery_id = %id, "lease lost before the outcome was written");
            return Ok(());
        }
        if let SendOutcome::Retry { delay, .. } = outcome {
            self.push_later(id, Utc::now() + delay).await;
        }
        Ok(())
    }

    /// Makes the code of 2FA challenge `id`, stores its hash and mails it.
    /// The code lives only in this function and the message: never in a
    /// row, a job or a log line. A challenge that has a code already (a
    /// duplicate job) or is closed gets nothing; a failed send forgets the
    /// code, so apalis's retry makes a new one.
    async fn send_code(&self, id: Uuid) -> Result<(), BoxDynError> {
        use rand::Rng as _;
        // ThreadRng is a CSPRNG (ChaCha, reseeded from the OS).
        let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
        let Some(to) =
            two_factor::set_code(&self.db, id, &two_factor::code_hash(id, &code)).await?
        else {
            return Ok(());
        };
        let minutes = (to.expires_at - Utc::now()).num_minutes().max(1);
        let data = serde_json::json!({"username": to.username, "code": code, "minutes": minutes});
        let sent = match templates::render(EmailTemplate::TwoFactorCode, &data, &self.app_base_url)
        {
            Ok(rendered) => {
                self.mailer
                    .send(&to.email, &rendered, &format!("{id}@keel"))
                    .await
            }
            Err(e) => Err(SendError::Permanent(e.to_string())),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(SendError::Permanent(error)) => {
                tracing::warn!(challenge_id = %id, %error, "2FA code not sent");
                Ok(())
            }
            Err(SendError::Transient(error)) => {
                two_factor::clear_code(&self.db, id).await?;
                // apalis schedules the job again; the challenge's own expiry bounds the retries.
                Err(format!("2FA code not sent yet: {error}").into())
            }
        }
    }

    async fn render_and_send(
        &self,
        delivery: &email_deliveries::Delivery,
    ) -> Result<(), SendError> {
        let template = EmailTemplate::parse(&delivery.template)
            .ok_or_else(|| SendError::Permanent(format!("no template {:?}", delivery.template)))?;
        let rendered = templates::render(template, &delivery.data, &self.app_base_url)
            .map_err(|e| SendError::Permanent(e.to_string()))?;
        let message_id = delivery
            .message_id
            .clone()
            .unwrap_or_else(|| format!("{}@keel", delivery.id));
        self.mailer
            .send(&delivery.to_address, &rendered, &message_id)
            .await
    }

    /// Queues the job of `id` again for `at`.
    async fn push_later(&self, id: Uuid, at: chrono::DateTime<Utc>) {
        let job = EmailJob::Send { delivery_id: id };
        if let Err(e) = self.jobs.push(job, Some(at)).await {
            tracing::warn!(error = %e, delivery_id = %id, "could not queue the email again; the reconciler will");
            if let Err(e) = email_deliveries::mark_not_enqueued(&self.db, id).await {
                tracing::warn!(error = %e, "could not clear the enqueued mark");
            }
        }
    }

    /// Sleeps `duration` unless the worker starts stopping; `false` if it did.
    async fn wait(&self, duration: Duration) -> bool {
        tokio::select! {
            () = self.stopping.cancelled() => false,
            () = tokio::time::sleep(duration) => true,
        }
    }
}

impl supervisor::Handler<EmailJob> for EmailRunner {
    async fn handle(self: Arc<Self>, job: EmailJob) -> Result<(), BoxDynError> {
        match job {
            EmailJob::Send { delivery_id } => self.send(delivery_id).await,
            EmailJob::TwoFactorCode { challenge_id } => self.send_code(challenge_id).await,
        }
    }
}
