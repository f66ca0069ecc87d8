//! Email verification end to end: the API records the mail, a real worker
//! sends it to a real SMTP server (aiosmtpd), and the link in it verifies.

use std::time::Duration;

use keel_testing::SmtpServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    helpers::{TestApp, assert_problem},
    mail,
    pipeline::{Stack, mail_stack},
    refusals::{INVALID_EMAIL_TOKEN, RATE_LIMITED, assert_refused},
};

const LONG: Duration = Duration::from_secs(30);

/// The path of the verification link in a raw message (quoted-printable may wrap it).
fn link_in(message: &str) -> String {
    let link = mail::link_in(message, "http://keel.test/api/v1/auth/verify-email?token=");
    link.trim_start_matches("http://keel.test").to_owned()
}

/// `POST /api/v1/auth/resend-verification` as `token`'s bearer.
async fn resend(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_as("/api/v1/auth/resend-verification", token, None)
        .await
}

/// Asserts the link `path` is refused as a spent or expired token.
async fn assert_link_refused(app: &TestApp, path: &str) {
    assert_refused(app.get(path).await, INVALID_EMAIL_TOKEN).await;
}

async fn register(app: &TestApp, name: &str) -> (Value, String) {
    let password = "correct horse battery staple";
    let response = app
        .register(&json!({"username": name, "email": format!("{name}@example.com"), "password": password}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email_verified"], false);
    let login = app.login_json(name, password).await;
    (user, login["access_token"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn the_link_in_the_verification_mail_verifies_once_and_brings_the_welcome() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &[]).await;
    let (_, token) = register(app, "vera").await;

    let messages = smtp.wait_for(1, LONG).await;
    mail::assert_subject(&messages[0], "Confirm your email address");
    assert!(messages[0].contains("To: vera@example.com"));
    let path = &link_in(&messages[0]);

    let verified = app.get(path).await;
    assert_eq!(verified.status(), StatusCode::OK);
    let user: Value = verified.json().await.unwrap();
    assert_eq!(user["email_verified"], true);
    let me = app.get_json("/api/v1/users/me", &token).await;
    assert_eq!(me["email_verified"], true, "no stale cached copy");

    let messages = smtp.wait_for(2, LONG).await;
    mail::assert_subject(&messages[1], "Welcome to Keel");

    assert_link_refused(app, path).await;
    let token_only = path.split("token=").nth(1).unwrap();
    assert_refused(
        app.post_json("/api/v1/auth/verify-email", &json!({"token": token_only}))
            .await,
        INVALID_EMAIL_TOKEN,
    )
    .await;
    let resent = resend(app, &token).await;
    assert_problem(resent, StatusCode::CONFLICT, "email_already_verified").await;
}

#[tokio::test]
async fn an_expired_link_is_refused_and_a_resent_one_replaces_the_old() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &[]).await;
    let (_, token) = register(app, "walt").await;
    let first = link_in(&smtp.wait_for(1, LONG).await[0]);

    assert_eq!(resend(app, &token).await.status(), StatusCode::ACCEPTED);
    let second = link_in(&smtp.wait_for(2, LONG).await[1]);
    assert_ne!(first, second);
    assert_link_refused(app, &first).await;

    app.execute("UPDATE email_tokens SET expires_at = now() - interval '1 second'")
        .await;
    assert_link_refused(app, &second).await;

    // Three mails an hour per account: two more pass, the next is refused.
    for _ in 0..2 {
        assert_eq!(resend(app, &token).await.status(), StatusCode::ACCEPTED);
    }
    let limited = resend(app, &token).await;
    assert_refused(limited, RATE_LIMITED).await;
}

#[tokio::test]
async fn deleting_an_account_mails_the_notice_after_the_delete_and_only_then() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &[]).await;
    let (user, _) = register(app, "gina").await;
    smtp.wait_for(1, LONG).await; // the verification mail
    let admin = app.create_user(keel_shared::domain::Role::Admin).await;
    let superadmin = app.create_user(keel_shared::domain::Role::Superadmin).await;

    // A refused delete mails nothing.
    let root = format!("/api/v1/users/{}", superadmin.user.id);
    let refused = app.delete_as(&root, &admin.token).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let path = format!("/api/v1/users/{}", user["id"].as_str().unwrap());
    let deleted = app.delete_as(&path, &admin.token).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let messages = smtp.wait_for(2, LONG).await;
    mail::assert_subject(&messages[1], "Your account was deleted");
    assert!(messages[1].contains("To: gina@example.com"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        smtp.messages().len(),
        2,
        "one notice, none for the refused delete"
    );
}
