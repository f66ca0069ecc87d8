//! Email 2FA end to end: the login challenge, the code the worker mails to
//! a real SMTP server, and `verify-2fa`; the notice mailed when 2FA is
//! turned on or off.

use std::time::Duration;

use keel_shared::domain::Role;
use keel_testing::SmtpServer;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{TestApp, TestUser, assert_problem},
    pipeline::{Stack, mail_stack},
};

const LONG: Duration = Duration::from_secs(30);
/// The subject of a sign-in code's mail (turning 2FA on mails a notice too).
const CODE: &str = "Your sign-in code";

/// A verified user with 2FA on.
async fn two_factor_user(app: &TestApp) -> TestUser {
    let user = app.create_user(Role::User).await;
    let enabled = app
        .send(Method::POST, "/api/v1/auth/enable-2fa", &user.token, None)
        .await;
    assert_eq!(enabled.status(), StatusCode::OK);
    assert_eq!(
        enabled.json::<Value>().await.unwrap()["two_fa_enabled"],
        true
    );
    user
}

async fn login_challenge(app: &TestApp, user: &TestUser) -> String {
    let answer: Value = app
        .login(&user.user.username, &user.password)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["two_factor_required"], true, "{answer}");
    assert_eq!(answer["method"], "email");
    assert!(answer.get("access_token").is_none());
    answer["challenge_id"].as_str().unwrap().to_owned()
}

/// The six-digit code in the plain-text part of a 2FA mail.
fn code_in(message: &str) -> String {
    let start = message.find("code is ").expect("a code") + "code is ".len();
    let code = message[start..start + 6].to_owned();
    keel_testing::record_secret(&code);
    code
}

async fn verify(app: &TestApp, challenge: &str, code: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/verify-2fa",
        &json!({"challenge_id": challenge, "code": code}),
    )
    .await
}

/// The `two_factor_changed` notices recorded for `user`, oldest first:
/// whether each says the factor was turned on.
pub async fn change_notices(app: &TestApp, user: &TestUser) -> Vec<bool> {
    sqlx::query_scalar(
        "SELECT (data->>'enabled')::boolean FROM email_deliveries \
         WHERE template = 'two_factor_changed' AND to_address = $1 ORDER BY id",
    )
    .bind(&user.user.email)
    .fetch_all(app.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn turning_email_2fa_on_and_off_mails_the_owner_once_per_change() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &["--rate-limit-enabled", "false"]).await;
    let user = two_factor_user(app).await;
    // On again: no change, no mail.
    let again = app
        .send(Method::POST, "/api/v1/auth/enable-2fa", &user.token, None)
        .await;
    assert_eq!(again.status(), StatusCode::OK);
    let off = app
        .send(
            Method::POST,
            "/api/v1/auth/disable-2fa",
            &user.token,
            Some(&json!({"password": user.password})),
        )
        .await;
    assert_eq!(off.status(), StatusCode::OK);

    for subject in [
        "Two-step sign-in was turned on",
        "Two-step sign-in was turned off",
    ] {
        let message = &smtp.wait_for_subject(subject, 1, LONG).await[0];
        assert!(message.contains(&user.user.email), "{message}");
    }
    assert_eq!(change_notices(app, &user).await, [true, false]);
}

#[tokio::test]
async fn a_2fa_login_takes_the_mailed_code_once() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &["--rate-limit-enabled", "false"]).await;
    let user = two_factor_user(app).await;
    let challenge = login_challenge(app, &user).await;

    let messages = smtp.wait_for_subject(CODE, 1, LONG).await;
    let code = code_in(&messages[0]);
    assert!(code.chars().all(|c| c.is_ascii_digit()), "{code}");
    let stored: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT code_hash FROM two_factor_challenges WHERE id = $1::uuid")
            .bind(&challenge)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!(
        stored.is_some_and(|h| h != code.as_bytes()),
        "only a hash is stored"
    );

    let signed_in = verify(app, &challenge, &code).await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let tokens: Value = signed_in.json().await.unwrap();
    assert!(tokens["access_token"].is_string());
    assert_problem(
        verify(app, &challenge, &code).await,
        StatusCode::UNAUTHORIZED,
        "challenge_closed",
    )
    .await;

    // The OAuth2 password grant cannot do 2FA: it says so.
    let grant = app
        .post_json(
            "/api/v1/auth/token",
            &json!({"grant_type": "password", "username": user.user.username, "password": user.password}),
        )
        .await;
    assert_problem(grant, StatusCode::FORBIDDEN, "two_factor_required").await;
}

#[tokio::test]
async fn five_wrong_codes_close_the_challenge_and_a_new_login_voids_the_old_one() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &["--rate-limit-enabled", "false"]).await;
    let user = two_factor_user(app).await;

    let challenge = login_challenge(app, &user).await;
    let code = code_in(&smtp.wait_for_subject(CODE, 1, LONG).await[0]);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in (1..5).rev() {
        let response = verify(app, &challenge, wrong).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "invalid_code");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("{left} tries left"))
        );
    }
    assert_problem(
        verify(app, &challenge, wrong).await,
        StatusCode::UNAUTHORIZED,
        "challenge_closed",
    )
    .await;
    assert_problem(
        verify(app, &challenge, &code).await,
        StatusCode::UNAUTHORIZED,
        "challenge_closed",
    )
    .await;

    let first = login_challenge(app, &user).await;
    let first_code = code_in(&smtp.wait_for_subject(CODE, 2, LONG).await[1]);
    let second = login_challenge(app, &user).await;
    let second_code = code_in(&smtp.wait_for_subject(CODE, 3, LONG).await[2]);
    assert_problem(
        verify(app, &first, &first_code).await,
        StatusCode::UNAUTHORIZED,
        "challenge_closed",
    )
    .await;
    assert_eq!(
        verify(app, &second, &second_code).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &["--rate-limit-enabled", "false"]).await;
    let user = two_factor_user(app).await;
    let challenge = login_challenge(app, &user).await;
    let code = code_in(&smtp.wait_for_subject(CODE, 1, LONG).await[0]);
    sqlx::query("UPDATE two_factor_challenges SET expires_at = now() - interval '1 second'")
        .execute(app.pool())
        .await
        .unwrap();
    assert_problem(
        verify(app, &challenge, &code).await,
        StatusCode::UNAUTHORIZED,
        "challenge_closed",
    )
    .await;
}

#[tokio::test]
async fn enabling_needs_a_verified_address_and_disabling_the_password() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &["--rate-limit-enabled", "false"]).await;
    let unverified = app
        .register(&json!({"username": "uma", "email": "uma@example.com", "password": "correct horse battery staple"}))
        .await;
    assert_eq!(unverified.status(), StatusCode::CREATED);
    let login: Value = app
        .login("uma", "correct horse battery staple")
        .await
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap();
    assert_problem(
        app.send(Method::POST, "/api/v1/auth/enable-2fa", token, None)
            .await,
        StatusCode::CONFLICT,
        "email_not_verified",
    )
    .await;

    let user = two_factor_user(app).await;
    assert_problem(
        app.send(
            Method::POST,
            "/api/v1/auth/disable-2fa",
            &user.token,
            Some(&json!({"password": "nope"})),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    )
    .await;
    let disabled = app
        .send(
            Method::POST,
            "/api/v1/auth/disable-2fa",
            &user.token,
            Some(&json!({"password": user.password})),
        )
        .await;
    assert_eq!(disabled.status(), StatusCode::OK);
    let tokens: Value = app
        .login(&user.user.username, &user.password)
        .await
        .json()
        .await
        .unwrap();
    assert!(tokens["access_token"].is_string(), "no challenge once off");

    let test = app
        .send(Method::POST, "/api/v1/auth/test-2fa", &user.token, None)
        .await;
    assert_eq!(test.status(), StatusCode::ACCEPTED);
    let mail = &smtp.wait_for_subject(CODE, 1, LONG).await[0];
    assert_eq!(code_in(mail).len(), 6);
}

#[tokio::test]
async fn a_password_reset_does_not_bypass_2fa() {
    let smtp = SmtpServer::start().await;
    let Stack { app, worker: _w } = &mail_stack(&smtp, &["--rate-limit-enabled", "false"]).await;
    let user = two_factor_user(app).await;
    let requested = app
        .post_json(
            "/api/v1/auth/password-reset/request",
            &json!({"email": user.user.email}),
        )
        .await;
    assert_eq!(requested.status(), StatusCode::ACCEPTED);
    let mail = smtp
        .wait_for_subject("Reset your password", 1, LONG)
        .await
        .remove(0);
    let unfolded = mail
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    let start = unfolded.find("reset-password?token=").unwrap() + "reset-password?token=".len();
    let token: String = unfolded[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let new_password = "a brand new passphrase 42";
    let confirmed = app
        .post_json(
            "/api/v1/auth/password-reset/confirm",
            &json!({"token": token, "new_password": new_password}),
        )
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    let answer: Value = app
        .login(&user.user.username, new_password)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["two_factor_required"], true, "{answer}");
}

/// A six-digit code other than `code`.
fn other_than(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 500_000) % 1_000_000)
}

#[tokio::test]
async fn ten_wrong_mailed_codes_across_challenges_pause_the_second_step_and_mail_the_owner() {
    let smtp = SmtpServer::start().await;
    // Rate limits off: the pause is the account's, kept in PostgreSQL.
    let Stack { app, worker: _w } = &mail_stack(&smtp, &["--rate-limit-enabled", "false"]).await;
    let user = two_factor_user(app).await;
    // Ten wrong codes across three challenges (5, 4, 1): each new challenge
    // voids the one before, so only the last stays open.
    let (mut challenge, mut right) = (String::new(), String::new());
    for (round, wrong_here) in [(1, 5), (2, 4), (3, 1)] {
        challenge = login_challenge(app, &user).await;
        let messages = smtp.wait_for_subject(CODE, round, LONG).await;
        right = code_in(&messages[round - 1]);
        let wrong = other_than(&right);
        for _ in 0..wrong_here {
            let response = verify(app, &challenge, &wrong).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "round {round}");
        }
    }
    let refused = verify(app, &challenge, &right).await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&retry_after), "{retry_after}");
    assert_problem(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "second_factor_locked",
    )
    .await;
    let notice = smtp
        .wait_for_subject(
            "Two-step sign-in is paused after too many wrong codes",
            1,
            LONG,
        )
        .await;
    assert!(notice[0].contains(&user.user.email), "{}", notice[0]);
    // Meanwhile a right password opens no challenge and mails no code.
    assert_problem(
        app.login(&user.user.username, &user.password).await,
        StatusCode::TOO_MANY_REQUESTS,
        "second_factor_locked",
    )
    .await;
    assert_eq!(smtp.wait_for_subject(CODE, 3, LONG).await.len(), 3);

    // An hour later (moved here by hand), the right code signs in.
    sqlx::query(
        "UPDATE users SET second_factor_locked_until = now() - interval '1 second' WHERE id = $1",
    )
    .bind(user.user.id)
    .execute(app.pool())
    .await
    .unwrap();
    assert_eq!(
        verify(app, &challenge, &right).await.status(),
        StatusCode::OK
    );
}
