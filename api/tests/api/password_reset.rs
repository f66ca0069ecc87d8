//! Password reset end to end, through a real worker and SMTP server.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    helpers::{TestApp, assert_invalid},
    mail::{assert_subject, reset_token_in},
    pipeline::{Stack, unlimited_mail_stack},
    refusals::{INVALID_EMAIL_TOKEN, assert_refused},
};

const LONG: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse battery staple";

/// Registers `name` at `name@example.com` with [`PASSWORD`].
async fn register(app: &TestApp, name: &str) -> reqwest::Response {
    let email = format!("{name}@example.com");
    app.register(&json!({"username": name, "email": email, "password": PASSWORD}))
        .await
}

#[tokio::test]
async fn a_reset_token_sets_the_password_once_and_ends_every_session() {
    let (Stack { app, worker: _w }, smtp) = &unlimited_mail_stack().await;
    assert_eq!(register(app, "rita").await.status(), StatusCode::CREATED);
    smtp.wait_for(1, LONG).await; // the verification mail
    let session = app.login_json("rita", PASSWORD).await;

    // Known and unknown addresses get the same answer.
    let known = app.request_password_reset("RITA@example.com").await;
    let unknown = app.request_password_reset("nobody@example.com").await;
    assert_eq!(known.status(), StatusCode::ACCEPTED);
    assert_eq!(unknown.status(), StatusCode::ACCEPTED);
    assert_eq!(
        known.json::<Value>().await.unwrap(),
        unknown.json::<Value>().await.unwrap()
    );

    let messages = smtp.wait_for(2, LONG).await;
    let reset = &messages[1];
    assert_subject(reset, "Reset your password");
    let token = reset_token_in(reset);

    assert_invalid(app.confirm_password_reset(&token, "short").await).await;
    let new_password = "a brand new passphrase 42";
    let confirmed = app.confirm_password_reset(&token, new_password).await;
    assert_eq!(confirmed.status(), StatusCode::OK);

    assert_refused(
        app.confirm_password_reset(&token, "yet another passphrase")
            .await,
        INVALID_EMAIL_TOKEN,
    )
    .await;
    let refreshed = app
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": session["refresh_token"]}),
        )
        .await;
    assert_eq!(refreshed.status(), StatusCode::UNAUTHORIZED, "sessions end");
    assert_eq!(
        app.login("rita", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("rita", new_password).await.status(),
        StatusCode::OK
    );

    let messages = smtp.wait_for(3, LONG).await;
    assert_subject(&messages[2], "Your password was changed");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.messages().len(), 3, "nothing for the unknown address");
}

#[tokio::test]
async fn an_expired_reset_token_is_refused() {
    let (Stack { app, worker: _w }, smtp) = &unlimited_mail_stack().await;
    register(app, "otto").await;
    app.request_password_reset("otto@example.com").await;
    let messages = smtp.wait_for(2, LONG).await;
    let reset = messages
        .iter()
        .find(|m| m.contains("Subject: Reset your password"))
        .unwrap();
    app.execute("UPDATE email_tokens SET expires_at = now() - interval '1 second'")
        .await;
    let token = reset_token_in(reset);
    assert_refused(
        app.confirm_password_reset(&token, "a brand new passphrase 42")
            .await,
        INVALID_EMAIL_TOKEN,
    )
    .await;
}

#[tokio::test]
async fn known_and_unknown_addresses_take_the_same_time() {
    let (Stack { app, worker: _w }, _smtp) = &unlimited_mail_stack().await;
    register(app, "tess").await;
    // Medians of a few requests each: the answer comes before any lookup.
    let median = |email: &'static str| {
        let app = &app;
        async move {
            let mut times = Vec::new();
            for _ in 0..7 {
                let started = Instant::now();
                let response = app.request_password_reset(email).await;
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                times.push(started.elapsed());
            }
            times.sort();
            times[3]
        }
    };
    let known = median("tess@example.com").await;
    let unknown = median("ghost@example.com").await;
    let (fast, slow) = if known < unknown {
        (known, unknown)
    } else {
        (unknown, known)
    };
    assert!(
        slow < fast * 3 + Duration::from_millis(20),
        "known {known:?} vs unknown {unknown:?}"
    );
}
