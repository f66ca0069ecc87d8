//! Email verification end to end: the API records the mail, a real worker
//! sends it to a real SMTP server (aiosmtpd), and the link in it verifies.

use std::time::Duration;

use keel_testing::SmtpServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    helpers::{TestApp, assert_problem},
    pipeline::{Stack, mail_stack},
};

const LONG: Duration = Duration::from_secs(30);

/// The verification link in a raw message (quoted-printable may wrap it).
fn link_in(message: &str) -> String {
    let unfolded = message
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    let start = unfolded
        .find("http://keel.test/api/v1/auth/verify-email?token=")
        .unwrap_or_else(|| panic!("no link in {message}"));
    let found = unfolded[start..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<')
        .next()
        .unwrap()
        .to_owned();
    keel_testing::record_secret(found.rsplit('=').next().unwrap_or_default());
    found
}

async fn register(app: &TestApp, name: &str) -> (Value, String) {
    let password = "correct horse battery staple";
    let response = app
        .register(&json!({"username": name, "email": format!("{name}@example.com"), "password": password}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email_verified"], false);
    let login: Value = app.login(name, password).await.json().await.unwrap();
    (user, login["access_token"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn the_link_in_the_verification_mail_verifies_once_and_brings_the_welcome() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &[]).await;
    let (_, token) = register(app, "vera").await;

    let messages = smtp.wait_for(1, LONG).await;
    assert!(
        messages[0].contains("Subject: Confirm your email address"),
        "{}",
        messages[0]
    );
    assert!(messages[0].contains("To: vera@example.com"));
    let link = link_in(&messages[0]);
    let path = link.trim_start_matches("http://keel.test");

    let verified = app.get(path).await;
    assert_eq!(verified.status(), StatusCode::OK);
    let user: Value = verified.json().await.unwrap();
    assert_eq!(user["email_verified"], true);
    let me: Value = app
        .get_as("/api/v1/users/me", &token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email_verified"], true, "no stale cached copy");

    let messages = smtp.wait_for(2, LONG).await;
    assert!(
        messages[1].contains("Subject: Welcome to Keel"),
        "{}",
        messages[1]
    );

    assert_problem(
        app.get(path).await,
        StatusCode::BAD_REQUEST,
        "invalid_token",
    )
    .await;
    let token_only = path.split("token=").nth(1).unwrap();
    assert_problem(
        app.post_json("/api/v1/auth/verify-email", &json!({"token": token_only}))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_token",
    )
    .await;
    assert_problem(
        app.send(
            reqwest::Method::POST,
            "/api/v1/auth/resend-verification",
            &token,
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "email_already_verified",
    )
    .await;
}

#[tokio::test]
async fn an_expired_link_is_refused_and_a_resent_one_replaces_the_old() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &[]).await;
    let (_, token) = register(app, "walt").await;
    let first = link_in(&smtp.wait_for(1, LONG).await[0]);

    let resent = app
        .send(
            reqwest::Method::POST,
            "/api/v1/auth/resend-verification",
            &token,
            None,
        )
        .await;
    assert_eq!(resent.status(), StatusCode::ACCEPTED);
    let second = link_in(&smtp.wait_for(2, LONG).await[1]);
    assert_ne!(first, second);
    assert_problem(
        app.get(first.trim_start_matches("http://keel.test")).await,
        StatusCode::BAD_REQUEST,
        "invalid_token",
    )
    .await;

    sqlx::query("UPDATE email_tokens SET expires_at = now() - interval '1 second'")
        .execute(app.pool())
        .await
        .unwrap();
    assert_problem(
        app.get(second.trim_start_matches("http://keel.test")).await,
        StatusCode::BAD_REQUEST,
        "invalid_token",
    )
    .await;

    // Three mails an hour per account: two more pass, the next is refused.
    for _ in 0..2 {
        let response = app
            .send(
                reqwest::Method::POST,
                "/api/v1/auth/resend-verification",
                &token,
                None,
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    assert_problem(
        app.send(
            reqwest::Method::POST,
            "/api/v1/auth/resend-verification",
            &token,
            None,
        )
        .await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
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
    let refused = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/users/{}", superadmin.user.id),
            &admin.token,
            None,
        )
        .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let deleted = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/users/{}", user["id"].as_str().unwrap()),
            &admin.token,
            None,
        )
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let messages = smtp.wait_for(2, LONG).await;
    assert!(
        messages[1].contains("Subject: Your account was deleted"),
        "{}",
        messages[1]
    );
    assert!(messages[1].contains("To: gina@example.com"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        smtp.messages().len(),
        2,
        "one notice, none for the refused delete"
    );
}
