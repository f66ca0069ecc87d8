//! Email 2FA end to end: the login challenge, the code the worker mails to
//! a real SMTP server, and `verify-2fa`; the notice mailed when 2FA is
//! turned on or off.

use std::time::Duration;

use keel_shared::domain::Role;
use keel_testing::SmtpServer;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    helpers::{TestApp, TestUser, assert_invalid, retry_after},
    mail::{code_in, reset_token_in},
    pipeline::{Stack, unlimited_mail_stack},
    refusals::{
        CHALLENGE_CLOSED, EMAIL_NOT_VERIFIED, SECOND_FACTOR_LOCKED, TWO_FACTOR_REQUIRED,
        assert_refused,
    },
};

const LONG: Duration = Duration::from_secs(30);
/// The subject of a sign-in code's mail (turning 2FA on mails a notice too).
const CODE: &str = "Your sign-in code";

/// A verified user with 2FA on.
async fn two_factor_user(app: &TestApp) -> TestUser {
    let user = app.create_user(Role::User).await;
    let enabled = enable(app, &user).await;
    assert_eq!(enabled.status(), StatusCode::OK);
    assert_eq!(
        enabled.json::<Value>().await.unwrap()["two_fa_enabled"],
        true
    );
    user
}

/// `POST /api/v1/auth/enable-2fa` as `user`.
async fn enable(app: &TestApp, user: &TestUser) -> reqwest::Response {
    app.post_as("/api/v1/auth/enable-2fa", &user.token, None)
        .await
}

/// `POST /api/v1/auth/disable-2fa` as `user`, confirmed with `password`.
async fn disable(app: &TestApp, user: &TestUser, password: &str) -> reqwest::Response {
    let body = json!({"password": password});
    app.post_as("/api/v1/auth/disable-2fa", &user.token, &body)
        .await
}

/// Signs in with the password: the email challenge's id.
async fn login_challenge(app: &TestApp, user: &TestUser) -> String {
    let answer = app.sign_in(user).await;
    assert_eq!(answer["two_factor_required"], true, "{answer}");
    assert_eq!(answer["method"], "email");
    assert!(answer.get("access_token").is_none());
    answer["challenge_id"].as_str().unwrap().to_owned()
}

/// Signs `user` in with the password: the challenge, and the code of the
/// `n`th sign-in code mailed (1 the first).
async fn challenge_and_code(
    app: &TestApp,
    smtp: &SmtpServer,
    user: &TestUser,
    n: usize,
) -> (String, String) {
    let challenge = login_challenge(app, user).await;
    let code = code_in(&smtp.wait_for_subject(CODE, n, LONG).await[n - 1]);
    (challenge, code)
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
    let (Stack { app, worker: _w }, smtp) = &unlimited_mail_stack().await;
    let user = two_factor_user(app).await;
    // On again: no change, no mail.
    assert_eq!(enable(app, &user).await.status(), StatusCode::OK);
    let off = disable(app, &user, &user.password).await;
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
    let (Stack { app, worker: _w }, smtp) = &unlimited_mail_stack().await;
    let user = two_factor_user(app).await;
    let challenge = login_challenge(app, &user).await;

    let messages = smtp.wait_for_subject(CODE, 1, LONG).await;
    let code = code_in(&messages[0]);
    assert!(code.chars().all(|c| c.is_ascii_digit()), "{code}");
    let stored: Option<Vec<u8>> = app
        .scalar_with(
            "SELECT code_hash FROM two_factor_challenges WHERE id = $1::uuid",
            &challenge,
        )
        .await;
    assert!(
        stored.is_some_and(|h| h != code.as_bytes()),
        "only a hash is stored"
    );

    let signed_in = app.verify_2fa(&challenge, &code).await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let tokens: Value = signed_in.json().await.unwrap();
    assert!(tokens["access_token"].is_string());
    assert_refused(app.verify_2fa(&challenge, &code).await, CHALLENGE_CLOSED).await;

    // The OAuth2 password grant cannot do 2FA: it says so.
    let grant = app
        .post_json(
            "/api/v1/auth/token",
            &json!({"grant_type": "password", "username": user.user.username, "password": user.password}),
        )
        .await;
    assert_refused(grant, TWO_FACTOR_REQUIRED).await;
}

#[tokio::test]
async fn five_wrong_codes_close_the_challenge_and_a_new_login_voids_the_old_one() {
    let (Stack { app, worker: _w }, smtp) = &unlimited_mail_stack().await;
    let user = two_factor_user(app).await;

    let (challenge, code) = challenge_and_code(app, smtp, &user, 1).await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in (1..5).rev() {
        let response = app.verify_2fa(&challenge, wrong).await;
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
    assert_refused(app.verify_2fa(&challenge, wrong).await, CHALLENGE_CLOSED).await;
    assert_refused(app.verify_2fa(&challenge, &code).await, CHALLENGE_CLOSED).await;

    let (first, first_code) = challenge_and_code(app, smtp, &user, 2).await;
    let (second, second_code) = challenge_and_code(app, smtp, &user, 3).await;
    assert_refused(app.verify_2fa(&first, &first_code).await, CHALLENGE_CLOSED).await;
    assert_eq!(
        app.verify_2fa(&second, &second_code).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_expired_code_is_refused() {
    let (Stack { app, worker: _w }, smtp) = &unlimited_mail_stack().await;
    let user = two_factor_user(app).await;
    let (challenge, code) = challenge_and_code(app, smtp, &user, 1).await;
    app.execute("UPDATE two_factor_challenges SET expires_at = now() - interval '1 second'")
        .await;
    assert_refused(app.verify_2fa(&challenge, &code).await, CHALLENGE_CLOSED).await;
}

#[tokio::test]
async fn enabling_needs_a_verified_address_and_disabling_the_password() {
    let (Stack { app, worker: _w }, smtp) = &unlimited_mail_stack().await;
    let unverified = app
        .register(&json!({"username": "uma", "email": "uma@example.com", "password": "correct horse battery staple"}))
        .await;
    assert_eq!(unverified.status(), StatusCode::CREATED);
    let login = app.login_json("uma", "correct horse battery staple").await;
    let token = login["access_token"].as_str().unwrap();
    let refused = app.post_as("/api/v1/auth/enable-2fa", token, None).await;
    assert_refused(refused, EMAIL_NOT_VERIFIED).await;

    let user = two_factor_user(app).await;
    assert_invalid(disable(app, &user, "nope").await).await;
    let disabled = disable(app, &user, &user.password).await;
    assert_eq!(disabled.status(), StatusCode::OK);
    let tokens = app.sign_in(&user).await;
    assert!(tokens["access_token"].is_string(), "no challenge once off");

    let test = app
        .post_as("/api/v1/auth/test-2fa", &user.token, None)
        .await;
    assert_eq!(test.status(), StatusCode::ACCEPTED);
    let mail = &smtp.wait_for_subject(CODE, 1, LONG).await[0];
    assert_eq!(code_in(mail).len(), 6);
}

#[tokio::test]
async fn a_password_reset_does_not_bypass_2fa() {
    let (Stack { app, worker: _w }, smtp) = &unlimited_mail_stack().await;
    let user = two_factor_user(app).await;
    let requested = app.request_password_reset(&user.user.email).await;
    assert_eq!(requested.status(), StatusCode::ACCEPTED);
    let mail = smtp
        .wait_for_subject("Reset your password", 1, LONG)
        .await
        .remove(0);
    let new_password = "a brand new passphrase 42";
    let confirmed = app
        .confirm_password_reset(&reset_token_in(&mail), new_password)
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    let answer = app.login_json(&user.user.username, new_password).await;
    assert_eq!(answer["two_factor_required"], true, "{answer}");
}

/// A six-digit code other than `code`.
fn other_than(code: &str) -> String {
    let n: u32 = code.parse().unwrap();
    format!("{:06}", (n + 500_000) % 1_000_000)
}

#[tokio::test]
async fn ten_wrong_mailed_codes_across_challenges_pause_the_second_step_and_mail_the_owner() {
    // Rate limits off: the pause is the account's, kept in PostgreSQL.
    let (Stack { app, worker: _w }, smtp) = &unlimited_mail_stack().await;
    let user = two_factor_user(app).await;
    // Ten wrong codes across three challenges (5, 4, 1): each new challenge
    // voids the one before, so only the last stays open.
    let (mut challenge, mut right) = (String::new(), String::new());
    for (round, wrong_here) in [(1, 5), (2, 4), (3, 1)] {
        (challenge, right) = challenge_and_code(app, smtp, &user, round).await;
        let wrong = other_than(&right);
        for _ in 0..wrong_here {
            let response = app.verify_2fa(&challenge, &wrong).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "round {round}");
        }
    }
    let refused = app.verify_2fa(&challenge, &right).await;
    let retry_after = retry_after(&refused);
    assert!((3500..=3600).contains(&retry_after), "{retry_after}");
    assert_refused(refused, SECOND_FACTOR_LOCKED).await;
    let notice = smtp
        .wait_for_subject(
            "Two-step sign-in is paused after too many wrong codes",
            1,
            LONG,
        )
        .await;
    assert!(notice[0].contains(&user.user.email), "{}", notice[0]);
    // Meanwhile a right password opens no challenge and mails no code.
    assert_refused(
        app.login(&user.user.username, &user.password).await,
        SECOND_FACTOR_LOCKED,
    )
    .await;
    assert_eq!(smtp.wait_for_subject(CODE, 3, LONG).await.len(), 3);

    // An hour later (moved here by hand), the right code signs in.
    app.execute_with(
        "UPDATE users SET second_factor_locked_until = now() - interval '1 second' WHERE id = $1",
        user.user.id,
    )
    .await;
    assert_eq!(
        app.verify_2fa(&challenge, &right).await.status(),
        StatusCode::OK
    );
}
