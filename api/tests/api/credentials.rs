//! Credentials end together: a password reset or change leaves no API key,
//! session, access token or open WebSocket of whoever held the account
//! before; signing one session out ends its access tokens too; keys and
//! second factors need a proven address; and the owner hears of each key.

use std::time::Duration;

use futures_util::StreamExt as _;
use keel_shared::domain::Role;
use keel_testing::SmtpServer;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{
    Message, client::IntoClientRequest as _, protocol::frame::coding::CloseCode,
};

use crate::{
    helpers::{TestApp, TestUser, spawn_app},
    mail::{code_in, reset_token_in},
    pipeline::{Stack, unlimited_mail_stack},
    refusals::{
        CHALLENGE_CLOSED, EMAIL_NOT_VERIFIED, INVALID_API_KEY, INVALID_EMAIL_TOKEN, INVALID_TOKEN,
        assert_refused,
    },
    ws::{self, Socket, WAIT},
};

const LONG: Duration = Duration::from_secs(30);

/// A socket opened with `X-API-Key: key` instead of a token.
async fn key_socket(app: &TestApp, key: &str) -> Socket {
    let url = app.address.replacen("http://", "ws://", 1) + "/ws";
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-api-key", key.parse().unwrap());
    let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("upgraded in time")
        .expect("upgraded");
    socket
}

/// The close code the server ends `socket` with, within [`WAIT`].
async fn closed_with(socket: &mut Socket, what: &str) -> CloseCode {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, socket.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: the socket stays open"));
        match message {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code,
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                panic!("{what}: closed without a code")
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Signs `user` in with the password: a fresh pair of a new sign-in.
async fn login(app: &TestApp, user: &TestUser) -> Value {
    let response = app.login(&user.user.username, &user.password).await;
    assert_eq!(response.status(), StatusCode::OK);
    let tokens: Value = response.json().await.unwrap();
    for token in ["access_token", "refresh_token"] {
        keel_testing::record_secret(tokens[token].as_str().unwrap_or_default());
    }
    tokens
}

fn access(tokens: &Value) -> &str {
    tokens["access_token"].as_str().unwrap()
}

/// The socket URL signed in with `tokens`' access token.
fn token_socket_url(app: &TestApp, tokens: &Value) -> String {
    let base = app.address.replacen("http://", "ws://", 1);
    format!("{base}/ws?token={}", access(tokens))
}

/// `GET /api/v1/users/me` with the API key `key`.
async fn me_with_key(app: &TestApp, key: &str) -> reqwest::Response {
    app.send_with_key(reqwest::Method::GET, "/api/v1/users/me", key, None)
        .await
}

/// The token of the newest reset mail's link.
fn reset_token(smtp: &SmtpServer) -> String {
    let messages = smtp.messages();
    let mail = messages
        .iter()
        .rev()
        .find(|m| m.contains("Subject: Reset your password"))
        .expect("a reset mail");
    reset_token_in(mail)
}

/// Asks for a reset of `user`'s password and waits for its mail.
async fn request_reset(app: &TestApp, smtp: &SmtpServer, user: &TestUser) {
    let requested = app.request_password_reset(&user.user.email).await;
    assert_eq!(requested.status(), StatusCode::ACCEPTED);
    smtp.wait_for_subject("Reset your password", 1, LONG).await;
}

/// `user` changes their password through the API.
async fn change_password(app: &TestApp, user: &TestUser) {
    let changed = app
        .change_password(&user.token, &user.password, "another long passphrase")
        .await;
    assert_eq!(changed.status(), StatusCode::OK);
}

/// How many API keys `user` has.
async fn keys_of(app: &TestApp, user: &TestUser) -> i64 {
    app.scalar_with(
        "SELECT count(*) FROM api_keys WHERE user_id = $1",
        user.user.id,
    )
    .await
}

#[tokio::test]
async fn a_password_reset_ends_every_key_session_token_and_socket_of_the_account() {
    let (Stack { app, worker: _w }, smtp) = &unlimited_mail_stack().await;
    let user = app.create_user(Role::User).await;
    let session = login(app, &user).await;
    let key = &app.api_key(&user, "kept by whoever held it").await;
    let added = smtp
        .wait_for_subject("A new API key was added to your account", 1, LONG)
        .await;
    assert!(added[0].contains("kept by whoever held it"), "{}", added[0]);
    assert_eq!(me_with_key(app, key).await.status(), StatusCode::OK);
    let mut token_socket = ws::connect(&token_socket_url(app, &session)).await;
    ws::round_trip(&mut token_socket).await;
    let mut key_socket = key_socket(app, key).await;
    ws::round_trip(&mut key_socket).await;

    request_reset(app, smtp, &user).await;
    let confirmed = app
        .confirm_password_reset(&reset_token(smtp), "a brand new passphrase 42")
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);

    assert_refused(me_with_key(app, key).await, INVALID_API_KEY).await;
    assert_eq!(
        app.me(access(&session)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.refresh(session["refresh_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        closed_with(&mut token_socket, "the token's socket").await,
        CloseCode::Policy
    );
    assert_eq!(
        closed_with(&mut key_socket, "the key's socket").await,
        CloseCode::Policy
    );
    assert_eq!(
        keys_of(app, &user).await,
        0,
        "the key is deleted, not just refused"
    );

    let changed = smtp
        .wait_for_subject("Your password was changed", 1, LONG)
        .await;
    assert!(
        changed[0].contains("1 API key was deleted"),
        "{}",
        changed[0]
    );

    // The reset mail is sent: its row keeps no usable link for the
    // retention period.
    let data: Value = app
        .scalar(
            "SELECT data FROM email_deliveries \
             WHERE template = 'password_reset' AND status = 'sent'",
        )
        .await;
    assert!(
        data.get("link").is_none() && data.get("token").is_none(),
        "{data}"
    );
    assert_eq!(data["username"], user.user.username.as_str());
}

#[tokio::test]
async fn a_change_of_password_deletes_every_api_key_too() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let key = &app.api_key(&user, "ci").await;
    change_password(&app, &user).await;
    assert_refused(me_with_key(&app, key).await, INVALID_API_KEY).await;
}

#[tokio::test]
async fn keys_and_second_factors_need_a_verified_address() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    app.execute_with(
        "UPDATE users SET email_verified = false WHERE id = $1",
        user.user.id,
    )
    .await;
    for (path, body) in [
        ("/api/v1/api-keys", Some(json!({"name": "squatter's key"}))),
        ("/api/v1/auth/totp/setup", None),
        ("/api/v1/auth/enable-2fa", None),
    ] {
        let response = app.post_as(path, &user.token, body.as_ref()).await;
        let problem = assert_refused(response, EMAIL_NOT_VERIFIED).await;
        assert!(
            problem.detail.contains("verify your email"),
            "{path}: {problem:?}"
        );
    }
    let keys: i64 = app.scalar("SELECT count(*) FROM api_keys").await;
    assert_eq!(keys, 0);
}

#[tokio::test]
async fn logout_ends_the_sessions_access_tokens_and_sockets_but_no_other_session() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let ended = login(&app, &user).await;
    let other = login(&app, &user).await;
    assert_eq!(app.me(access(&ended)).await.status(), StatusCode::OK);
    let mut socket = ws::connect(&token_socket_url(&app, &ended)).await;
    ws::round_trip(&mut socket).await;
    // A replica beside this one hears of it too.
    let replica = app.spawn_replica().await;
    assert_eq!(replica.me(access(&ended)).await.status(), StatusCode::OK);

    let out = app
        .post_json(
            "/api/v1/auth/logout",
            &json!({"refresh_token": ended["refresh_token"]}),
        )
        .await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    for (which, app) in [("this replica", &app), ("the other replica", &replica)] {
        assert_refused(app.me(access(&ended)).await, INVALID_TOKEN).await;
        assert_eq!(
            app.me(access(&other)).await.status(),
            StatusCode::OK,
            "{which}: another sign-in goes on"
        );
    }
    assert_eq!(
        closed_with(&mut socket, "the signed-out socket").await,
        CloseCode::Policy
    );
    let verify = app
        .post_json(
            "/api/v1/auth/token/verify",
            &json!({"token": access(&ended)}),
        )
        .await;
    assert_eq!(verify.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_key_socket_closes_when_its_key_is_deleted_or_regenerated() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    for action in ["delete", "regenerate"] {
        let key = app.create_api_key(&user, action).await;
        let id = key["id"].as_str().unwrap();
        let mut socket = key_socket(&app, key["key"].as_str().unwrap()).await;
        ws::round_trip(&mut socket).await;
        let path = format!("/api/v1/api-keys/{id}");
        let response = match action {
            "delete" => app.delete_as(&path, &user.token).await,
            _ => {
                let regenerate = format!("{path}/regenerate");
                app.post_as(&regenerate, &user.token, None).await
            }
        };
        assert!(
            response.status().is_success(),
            "{action}: {}",
            response.status()
        );
        assert_eq!(
            closed_with(&mut socket, action).await,
            CloseCode::Policy,
            "{action}"
        );
    }
}

#[tokio::test]
async fn a_demoted_admins_key_socket_stops_following_every_task() {
    let app = spawn_app().await;
    let admin = app.create_user(Role::Admin).await;
    let superadmin = app.create_user(Role::Superadmin).await;
    let key = app.api_key(&admin, "ops").await;
    let mut socket = key_socket(&app, &key).await;
    ws::send(
        &mut socket,
        &json!({"type": "subscribe_tasks", "all": true}),
    )
    .await;
    ws::round_trip(&mut socket).await;
    let path = format!("/api/v1/users/{}/role", admin.user.id);
    let demoted = app
        .put_as(&path, &superadmin.token, &json!({"role": "user"}))
        .await;
    assert_eq!(demoted.status(), StatusCode::OK);
    assert_eq!(
        closed_with(&mut socket, "the demoted admin's socket").await,
        CloseCode::Policy
    );
}

#[tokio::test]
async fn a_key_requested_while_the_password_changes_is_not_minted_past_it() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    // The change, as `revocation::end_all` makes it, held open on the
    // user's row while key requests arrive: they were authenticated before
    // it, and must not insert their key after it commits.
    let mut change = app.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user.user.id)
        .execute(&mut *change)
        .await
        .unwrap();
    let creates: Vec<_> = (0..5)
        .map(|i| {
            let (client, url, token) = (
                app.client.clone(),
                app.url("/api/v1/api-keys"),
                user.token.clone(),
            );
            tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({"name": format!("racer {i}")}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("UPDATE users SET token_version = token_version + 1 WHERE id = $1")
        .bind(user.user.id)
        .execute(&mut *change)
        .await
        .unwrap();
    sqlx::query("DELETE FROM api_keys WHERE user_id = $1")
        .bind(user.user.id)
        .execute(&mut *change)
        .await
        .unwrap();
    change.commit().await.unwrap();
    for create in creates {
        assert_eq!(create.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        keys_of(&app, &user).await,
        0,
        "no key was minted past the change"
    );
}

#[tokio::test]
async fn a_challenge_or_reset_link_from_before_a_change_of_password_no_longer_works() {
    let (Stack { app, worker: _w }, smtp) = &unlimited_mail_stack().await;
    let user = app.create_user(Role::User).await;
    request_reset(app, smtp, &user).await;
    let link = reset_token(smtp);
    app.execute_with(
        "UPDATE users SET two_fa_enabled = true WHERE id = $1",
        user.user.id,
    )
    .await;
    let challenge = app.sign_in(&user).await;
    assert_eq!(challenge["two_factor_required"], true, "{challenge}");
    let code_mail = smtp.wait_for_subject("Your sign-in code", 1, LONG).await;
    let code = code_in(&code_mail[0]);

    change_password(app, &user).await;

    let challenge = challenge["challenge_id"].as_str().unwrap();
    let answered = app.verify_2fa(challenge, &code).await;
    assert_refused(answered, CHALLENGE_CLOSED).await;
    let reset = app
        .confirm_password_reset(&link, "the squatter's passphrase")
        .await;
    assert_refused(reset, INVALID_EMAIL_TOKEN).await;
}
