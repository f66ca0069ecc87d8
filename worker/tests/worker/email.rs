//! The `email` queue end to end: deliveries recorded and queued as the API
//! queues them, a real `keel-worker` process sending them to a real SMTP
//! server (aiosmtpd) or to the file outbox.

use std::time::Duration;

use keel_shared::{
    db::email_deliveries::{self, Delivery},
    mail::EmailTemplate,
    queue::{EmailJob, emails},
};
use keel_testing::{self as testing, ChildGuard, SmtpServer};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::pipeline::Pipeline;

const LONG: Duration = Duration::from_secs(30);

/// A worker serving only the `email` queue, sending through the SMTP
/// server on `port` (which need not be up yet).
fn smtp_worker(p: &Pipeline, port: u16) -> ChildGuard {
    let port = port.to_string();
    p.worker(&[
        ("WORKER_QUEUES", "email"),
        ("SMTP_HOST", "127.0.0.1"),
        ("SMTP_PORT", &port),
        ("SMTP_TLS", "none"),
        ("EMAILS_FROM_EMAIL", "keel@example.com"),
    ])
}

/// Records and queues `template` to `to`, as the API does.
async fn enqueue(p: &Pipeline, to: &str, template: EmailTemplate, data: Value) -> Delivery {
    emails::enqueue(&p.pool, &p.jobs, to, template, &data)
        .await
        .unwrap()
}

async fn wait_status(p: &Pipeline, id: Uuid, status: &str) -> Delivery {
    wait_delivery(p, id, "delivery still", |row| row.status == status).await
}

/// Waits until delivery `id` is as `done` says; `waiting` goes before the
/// row in the message if it never is.
async fn wait_delivery(
    p: &Pipeline,
    id: Uuid,
    waiting: &str,
    done: impl Fn(&Delivery) -> bool,
) -> Delivery {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let row = email_deliveries::get(&p.pool, id).await.unwrap().unwrap();
        if done(&row) {
            return row;
        }
        assert!(tokio::time::Instant::now() < deadline, "{waiting} {row:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_queued_email_is_sent_once_with_its_message_id_even_when_its_job_is_duplicated() {
    let smtp = SmtpServer::start().await;
    let p = Pipeline::new().await;
    let _worker = smtp_worker(&p, smtp.port);

    let data = json!({"username": "ann", "link": "http://localhost:8000/api/v1/auth/verify-email?token=t0k3n"});
    let delivery = enqueue(&p, "ann@example.com", EmailTemplate::Verification, data).await;
    // The same job four more times, as a reconciler re-push or a crash would.
    let again = (0..4)
        .map(|_| {
            (
                EmailJob::Send {
                    delivery_id: delivery.id,
                },
                None,
            )
        })
        .collect();
    p.jobs.push_many(again).await.unwrap();

    let sent = wait_status(&p, delivery.id, "sent").await;
    assert_eq!(sent.attempts, 1);
    let messages = smtp.wait_for(1, LONG).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.messages().len(), 1, "one message for five jobs");
    let message = &messages[0];
    assert!(
        message.contains("Subject: Confirm your email address"),
        "{message}"
    );
    assert!(
        message.contains(&format!("Message-ID: <{}@keel>", delivery.id)),
        "{message}"
    );
    assert!(message.contains("To: ann@example.com"), "{message}");
    assert!(
        message.contains("text/plain") && message.contains("text/html"),
        "{message}"
    );
    assert!(message.contains("verify-email?token=t0k3n"), "{message}");
}

#[tokio::test]
async fn an_smtp_server_that_is_down_at_first_still_gets_the_mail() {
    let port = testing::free_port();
    let p = Pipeline::new().await;
    let _worker = smtp_worker(&p, port);

    let welcome = json!({"username": "bob"});
    let delivery = enqueue(&p, "bob@example.com", EmailTemplate::Welcome, welcome).await;
    // Refused while nothing listens: the delivery goes back to `queued` with the error kept.
    let failed_once = wait_delivery(&p, delivery.id, "never retried:", |row| {
        row.attempts >= 1 && row.status == "queued" && row.last_error.is_some()
    })
    .await;
    assert!(failed_once.next_attempt_at > failed_once.created_at);

    let smtp = SmtpServer::start_on(port).await;
    let sent = wait_status(&p, delivery.id, "sent").await;
    assert!(sent.attempts >= 2, "{sent:?}");
    let messages = smtp.wait_for(1, LONG).await;
    assert!(messages[0].contains("Subject: Welcome to Keel"));
}

#[tokio::test]
async fn an_email_fails_for_good_after_its_last_attempt_with_the_error_kept() {
    let port = testing::free_port();
    let p = Pipeline::new().await;
    let _worker = smtp_worker(&p, port);
    let welcome = json!({"username": "carl"});
    let delivery = enqueue(&p, "carl@example.com", EmailTemplate::Welcome, welcome).await;
    sqlx::query("UPDATE email_deliveries SET max_attempts = 2 WHERE id = $1")
        .bind(delivery.id)
        .execute(&p.pool)
        .await
        .unwrap();
    let failed = wait_status(&p, delivery.id, "failed").await;
    assert_eq!(failed.attempts, 2);
    assert!(failed.last_error.is_some());
}

#[tokio::test]
async fn without_smtp_host_mail_goes_to_the_outbox_as_eml_files() {
    let outbox = std::env::temp_dir().join(format!("keel-outbox-{}", Uuid::new_v4()));
    let p = Pipeline::new().await;
    let dir = outbox.to_string_lossy().into_owned();
    let _worker = p.worker(&[("WORKER_QUEUES", "email"), ("EMAIL_OUTBOX_DIR", &dir)]);
    let changed = json!({"username": "dora"});
    let delivery = enqueue(
        &p,
        "dora@example.com",
        EmailTemplate::PasswordChanged,
        changed,
    )
    .await;
    wait_status(&p, delivery.id, "sent").await;
    let files: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .collect();
    assert_eq!(files.len(), 1);
    let message = std::fs::read_to_string(files[0].path()).unwrap();
    assert!(
        message.contains("Subject: Your password was changed"),
        "{message}"
    );
    let _ = std::fs::remove_dir_all(&outbox);
}
