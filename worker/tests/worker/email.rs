//! The `email` queue end to end: deliveries recorded and queued as the API
//! queues them, a real `keel-worker` process sending them to a real SMTP
//! server (aiosmtpd) or to the file outbox.

use std::time::Duration;

use keel_shared::{
    db::email_deliveries,
    mail::EmailTemplate,
    queue::{EmailJob, emails},
};
use keel_testing::{self as testing, SmtpServer};
use serde_json::json;
use uuid::Uuid;

use crate::pipeline::Pipeline;

const LONG: Duration = Duration::from_secs(30);

fn smtp_env(port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("WORKER_QUEUES", "email".to_owned()),
        ("SMTP_HOST", "127.0.0.1".to_owned()),
        ("SMTP_PORT", port.to_string()),
        ("SMTP_TLS", "none".to_owned()),
        ("EMAILS_FROM_EMAIL", "keel@example.com".to_owned()),
    ]
}

async fn wait_status(p: &Pipeline, id: Uuid, status: &str) -> email_deliveries::Delivery {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let row = email_deliveries::get(&p.pool, id).await.unwrap().unwrap();
        if row.status == status {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery still {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_queued_email_is_sent_once_with_its_message_id_even_when_its_job_is_duplicated() {
    let smtp = SmtpServer::start().await;
    let p = Pipeline::new().await;
    let env = smtp_env(smtp.port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _worker = p.worker(&env);

    let data = json!({"username": "ann", "link": "http://localhost:8000/api/v1/auth/verify-email?token=t0k3n"});
    let delivery = emails::enqueue(
        &p.pool,
        &p.jobs,
        "ann@example.com",
        EmailTemplate::Verification,
        &data,
    )
    .await
    .unwrap();
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
    let env = smtp_env(port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _worker = p.worker(&env);

    let delivery = emails::enqueue(
        &p.pool,
        &p.jobs,
        "bob@example.com",
        EmailTemplate::Welcome,
        &json!({"username": "bob"}),
    )
    .await
    .unwrap();
    // Refused while nothing listens: the delivery goes back to `queued` with the error kept.
    let deadline = tokio::time::Instant::now() + LONG;
    let failed_once = loop {
        let row = email_deliveries::get(&p.pool, delivery.id)
            .await
            .unwrap()
            .unwrap();
        if row.attempts >= 1 && row.status == "queued" && row.last_error.is_some() {
            break row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never retried: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
    let env = smtp_env(port);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let _worker = p.worker(&env);
    let delivery = emails::enqueue(
        &p.pool,
        &p.jobs,
        "carl@example.com",
        EmailTemplate::Welcome,
        &json!({"username": "carl"}),
    )
    .await
    .unwrap();
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
    let delivery = emails::enqueue(
        &p.pool,
        &p.jobs,
        "dora@example.com",
        EmailTemplate::PasswordChanged,
        &json!({"username": "dora"}),
    )
    .await
    .unwrap();
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
