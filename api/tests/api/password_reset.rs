//! Password reset end to end, through a real worker and SMTP server.

use std::time::{Duration, Instant};

use keel_testing::SmtpServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    helpers::assert_problem,
    pipeline::{Stack, mail_stack},
};

const LONG: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse battery staple";

pub(crate) fn token_in(message: &str) -> String {
    let unfolded = message
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    let start = unfolded
        .find("reset-password?token=")
        .unwrap_or_else(|| panic!("no link in {message}"))
        + "reset-password?token=".len();
    let found = unfolded[start..]
        .split(|c: char| c.is_whitespace() || c == '"' || c == '<')
        .next()
        .unwrap()
        .to_owned();
    keel_testing::record_secret(found.rsplit('=').next().unwrap_or_default());
    found
}

#[tokio::test]
async fn a_reset_token_sets_the_password_once_and_ends_every_session() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &["--rate-limit-enabled", "false"]).await;
    let response = app
        .register(&json!({"username": "rita", "email": "rita@example.com", "password": PASSWORD}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    smtp.wait_for(1, LONG).await; // the verification mail
    let session: Value = app.login("rita", PASSWORD).await.json().await.unwrap();

    // Known and unknown addresses get the same answer.
    let known = app
        .post_json(
            "/api/v1/auth/password-reset/request",
            &json!({"email": "RITA@example.com"}),
        )
        .await;
    let unknown = app
        .post_json(
            "/api/v1/auth/password-reset/request",
            &json!({"email": "nobody@example.com"}),
        )
        .await;
    assert_eq!(known.status(), StatusCode::ACCEPTED);
    assert_eq!(unknown.status(), StatusCode::ACCEPTED);
    assert_eq!(
        known.json::<Value>().await.unwrap(),
        unknown.json::<Value>().await.unwrap()
    );

    let messages = smtp.wait_for(2, LONG).await;
    let reset = &messages[1];
    assert!(reset.contains("Subject: Reset your password"), "{reset}");
    let token = token_in(reset);

    assert_problem(
        app.post_json(
            "/api/v1/auth/password-reset/confirm",
            &json!({"token": token, "new_password": "short"}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let new_password = "a brand new passphrase 42";
    let confirmed = app
        .post_json(
            "/api/v1/auth/password-reset/confirm",
            &json!({"token": token, "new_password": new_password}),
        )
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);

    assert_problem(
        app.post_json(
            "/api/v1/auth/password-reset/confirm",
            &json!({"token": token, "new_password": "yet another passphrase"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_token",
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
    assert!(
        messages[2].contains("Subject: Your password was changed"),
        "{}",
        messages[2]
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(smtp.messages().len(), 3, "nothing for the unknown address");
}

#[tokio::test]
async fn an_expired_reset_token_is_refused() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &["--rate-limit-enabled", "false"]).await;
    app.register(&json!({"username": "otto", "email": "otto@example.com", "password": PASSWORD}))
        .await;
    app.post_json(
        "/api/v1/auth/password-reset/request",
        &json!({"email": "otto@example.com"}),
    )
    .await;
    let messages = smtp.wait_for(2, LONG).await;
    let reset = messages
        .iter()
        .find(|m| m.contains("Subject: Reset your password"))
        .unwrap();
    sqlx::query("UPDATE email_tokens SET expires_at = now() - interval '1 second'")
        .execute(app.pool())
        .await
        .unwrap();
    assert_problem(
        app.post_json(
            "/api/v1/auth/password-reset/confirm",
            &json!({"token": token_in(reset), "new_password": "a brand new passphrase 42"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_token",
    )
    .await;
}

#[tokio::test]
async fn known_and_unknown_addresses_take_the_same_time() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &["--rate-limit-enabled", "false"]).await;
    app.register(&json!({"username": "tess", "email": "tess@example.com", "password": PASSWORD}))
        .await;
    // Medians of a few requests each: the answer comes before any lookup.
    let median = |email: &'static str| {
        let app = &app;
        async move {
            let mut times = Vec::new();
            for _ in 0..7 {
                let started = Instant::now();
                let response = app
                    .post_json(
                        "/api/v1/auth/password-reset/request",
                        &json!({"email": email}),
                    )
                    .await;
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
