//! Registration, sign-in, tokens and their attacks.

use std::collections::HashSet;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keel_api::auth::tokens::{AUDIENCE, AccessClaims, ISSUER};
use keel_shared::domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    helpers::{TEST_SECRET, assert_invalid, assert_problem, fields, registration, spawn_app},
    refusals::{
        INVALID_CREDENTIALS, INVALID_REFRESH_TOKEN, INVALID_TOKEN, NOT_AUTHENTICATED,
        assert_refused,
    },
};

#[tokio::test]
async fn register_creates_a_user_with_defaults_and_no_password_hash() {
    let app = spawn_app().await;
    let mut body = registration();
    body["email"] = json!(body["email"].as_str().unwrap().to_uppercase());
    body["first_name"] = json!("Ada");
    body["timezone"] = json!("Europe/Paris");

    let response = app.register(&body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["username"], body["username"]);
    assert_eq!(
        user["email"],
        body["email"].as_str().unwrap().to_lowercase(),
        "stored lower-case"
    );
    assert_eq!(user["role"], "user");
    assert_eq!(user["timezone"], "Europe/Paris");
    assert_eq!(user["language"], "en", "default language");
    assert_eq!(user["first_name"], "Ada");
    assert_eq!(user["is_active"], true);
    assert_eq!(user["email_verified"], false);
    assert_eq!(user["two_fa_enabled"], false);
    for field in [
        "id",
        "phone_verified",
        "avatar_url",
        "bio",
        "last_login_at",
        "created_at",
        "updated_at",
    ] {
        assert!(user.get(field).is_some(), "{field} is part of the user");
    }
    let text = user.to_string();
    assert!(
        !text.contains("password") && !text.contains("argon2"),
        "never a hash: {text}"
    );
}

#[tokio::test]
async fn register_returns_409_when_the_username_is_taken_in_any_case_but_not_for_a_taken_email() {
    let app = spawn_app().await;
    let first = registration();
    assert_eq!(app.register(&first).await.status(), StatusCode::CREATED);

    let mut same_name = registration();
    same_name["username"] = json!(first["username"].as_str().unwrap().to_uppercase());
    let taken = app.register(&same_name).await;
    assert_problem(taken, StatusCode::CONFLICT, "username_taken").await;

    // Usernames are public handles; whether an address has an account is
    // not told: a taken email answers as a new account would (the owner is
    // mailed instead; see `enumeration`).
    let mut same_email = registration();
    same_email["email"] = first["email"].clone();
    let response = app.register(&same_email).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let answered: Value = response.json().await.unwrap();
    assert_eq!(answered["username"], same_email["username"]);
    assert_eq!(answered["email"], first["email"]);
}

#[tokio::test]
async fn register_returns_422_naming_each_invalid_field() {
    let app = spawn_app().await;
    let cases = [
        ("username", json!("ab"), "too short"),
        ("username", json!("has space"), "bad character"),
        ("email", json!("not-an-email"), "not an address"),
        ("password", json!("short"), "under 8 characters"),
        ("password", json!("password1"), "a common password"),
        ("password", json!("x".repeat(129)), "over 128 characters"),
        ("timezone", json!("Mars/Olympus"), "not an IANA zone"),
        ("language", json!("not a language"), "not a tag"),
        (
            "avatar_url",
            json!("javascript:alert(1)"),
            "not an http URL",
        ),
    ];
    for (field, value, why) in cases {
        let mut body = registration();
        body[field] = value;
        let problem = assert_invalid(app.register(&body).await).await;
        assert_eq!(fields(&problem), [field], "{why}");
    }
    let problem = assert_invalid(app.register(&json!({"username": "x"})).await).await;
    assert!(
        problem.detail.contains("email") || problem.errors.unwrap()[0].field == "email",
        "a missing field is named"
    );
}

#[tokio::test]
async fn register_with_a_role_other_than_user_is_403() {
    let app = spawn_app().await;
    for role in ["admin", "superadmin"] {
        let mut body = registration();
        body["role"] = json!(role);
        let response = app.register(&body).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{role}");
        assert_problem(response, StatusCode::FORBIDDEN, "role_not_allowed").await;
    }
    let mut body = registration();
    body["role"] = json!("user");
    assert_eq!(app.register(&body).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn login_by_username_or_email_returns_a_token_pair() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;

    for login in [alice.user.username.to_uppercase(), alice.user.email.clone()] {
        let response = app.login(&login, &alice.password).await;
        assert_eq!(response.status(), StatusCode::OK, "{login}");
        let tokens: Value = response.json().await.unwrap();
        assert_eq!(tokens["token_type"], "bearer");
        assert_eq!(tokens["expires_in"], 30 * 60);
        let access = tokens["access_token"].as_str().unwrap();
        assert!(
            tokens["refresh_token"].as_str().unwrap().len() >= 43,
            "≥ 128 bits"
        );
        let me = app.get_json("/api/v1/users/me", access).await;
        assert_eq!(me["id"], alice.user.id.to_string());
        assert!(me["last_login_at"].is_string(), "the login is recorded");
    }
}

#[tokio::test]
async fn login_fails_alike_for_a_wrong_password_an_unknown_user_and_a_disabled_user() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let bob = app.create_user(Role::User).await;
    app.execute_with(
        "UPDATE users SET is_active = false WHERE id = $1",
        bob.user.id,
    )
    .await;

    let mut bodies = HashSet::new();
    for (login, password) in [
        (alice.user.username.as_str(), "wrong password here"),
        ("nobody_at_all", "wrong password here"),
        (bob.user.username.as_str(), bob.password.as_str()),
    ] {
        let response = app.login(login, password).await;
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let mut problem = assert_refused(response, INVALID_CREDENTIALS).await;
        problem.request_id = None;
        bodies.insert(serde_json::to_string(&problem).unwrap());
    }
    assert_eq!(bodies.len(), 1, "one body for all three: {bodies:?}");
}

#[tokio::test]
async fn the_token_endpoint_takes_form_and_json_for_both_grants() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;

    let form = app
        .client
        .post(app.url("/api/v1/auth/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", &alice.user.username),
            ("password", &alice.password),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::OK);
    let tokens: Value = form.json().await.unwrap();

    let json_refresh = app
        .post_json(
            "/api/v1/auth/token",
            &json!({"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(json_refresh.status(), StatusCode::OK);
    let refreshed: Value = json_refresh.json().await.unwrap();
    assert_ne!(refreshed["refresh_token"], tokens["refresh_token"]);

    let unknown = json!({"grant_type": "client_credentials"});
    assert_invalid(app.post_json("/api/v1/auth/token", &unknown).await).await;
    let missing = json!({"grant_type": "password", "username": "x"});
    let problem = assert_invalid(app.post_json("/api/v1/auth/token", &missing).await).await;
    assert_eq!(problem.errors.unwrap()[0].field, "password");
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_its_whole_family() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let first = app.sign_in(&alice).await;
    let first_refresh = first["refresh_token"].as_str().unwrap();

    let second: Value = app.refresh(first_refresh).await.json().await.unwrap();
    let second_refresh = second["refresh_token"].as_str().unwrap();
    let me = app.me(second["access_token"].as_str().unwrap()).await;
    assert_eq!(me.status(), StatusCode::OK);

    // The first token is spent: presenting it again is theft, and the family dies.
    assert_refused(app.refresh(first_refresh).await, INVALID_REFRESH_TOKEN).await;
    assert_refused(app.refresh(second_refresh).await, INVALID_REFRESH_TOKEN).await;

    // Another sign-in is another family, untouched.
    let other = app.sign_in(&alice).await;
    let refreshed = app.refresh(other["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refreshed.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_refresh_alias_rotates_too() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let tokens = app.sign_in(&alice).await;
    let response = app
        .post_json(
            "/api/v1/auth/token/refresh",
            &json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn of_two_concurrent_refreshes_with_one_token_at_most_one_succeeds() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    for _ in 0..5 {
        let tokens = app.sign_in(&alice).await;
        let token = tokens["refresh_token"].as_str().unwrap();
        let (a, b) = tokio::join!(app.refresh(token), app.refresh(token));
        let successes = [a.status(), b.status()]
            .iter()
            .filter(|s| **s == StatusCode::OK)
            .count();
        assert!(successes <= 1, "{} and {}", a.status(), b.status());
    }
}

#[tokio::test]
async fn logout_revokes_the_refresh_family() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let tokens = app.sign_in(&alice).await;
    let refreshed: Value = app
        .refresh(tokens["refresh_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();

    let refresh_token = refreshed["refresh_token"].as_str().unwrap();
    let logout = |token: &str| {
        let body = json!({"refresh_token": token});
        let app = &app;
        async move { app.post_json("/api/v1/auth/logout", &body).await }
    };
    assert_eq!(logout(refresh_token).await.status(), StatusCode::NO_CONTENT);
    assert_refused(app.refresh(refresh_token).await, INVALID_REFRESH_TOKEN).await;
    let unknown = logout("never-issued").await;
    assert_eq!(
        unknown.status(),
        StatusCode::NO_CONTENT,
        "logout is idempotent"
    );
}

#[tokio::test]
async fn auth_me_and_users_me_agree() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let a = app.get_json("/api/v1/auth/me", &alice.token).await;
    let b = app.get_json("/api/v1/users/me", &alice.token).await;
    assert_eq!(a, b);
    let anonymous = app.get("/api/v1/auth/me").await;
    assert_refused(anonymous, NOT_AUTHENTICATED).await;
}

#[tokio::test]
async fn change_password_needs_the_current_one_and_ends_every_session() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let tokens = app.sign_in(&alice).await;
    let access = tokens["access_token"].as_str().unwrap();
    for (current, new, field) in [
        (
            "not my password",
            "a brand new passphrase",
            "current_password",
        ),
        (&alice.password, "password", "new_password"),
    ] {
        let problem = assert_invalid(app.change_password(access, current, new).await).await;
        assert_eq!(problem.errors.unwrap()[0].field, field, "{field}");
    }

    let changed = app
        .change_password(access, &alice.password, "a brand new passphrase")
        .await;
    assert_eq!(changed.status(), StatusCode::OK);
    let me = app.me(access).await;
    assert_refused(me, INVALID_TOKEN).await;
    assert_refused(
        app.refresh(tokens["refresh_token"].as_str().unwrap()).await,
        INVALID_REFRESH_TOKEN,
    )
    .await;
    let old = app.login(&alice.user.username, &alice.password).await;
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    let new = app
        .login(&alice.user.username, "a brand new passphrase")
        .await;
    assert_eq!(new.status(), StatusCode::OK);
}

#[tokio::test]
async fn token_verify_answers_valid_with_exp_or_401() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let response = app
        .post_json("/api/v1/auth/token/verify", &json!({"token": alice.token}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["valid"], true);
    assert!(body["exp"].as_i64().unwrap() > chrono::Utc::now().timestamp());
    let bad = app
        .post_json("/api/v1/auth/token/verify", &json!({"token": "nope"}))
        .await;
    assert_refused(bad, INVALID_TOKEN).await;
}

fn claims_for(id: uuid::Uuid, typ: &str, offset_secs: i64) -> AccessClaims {
    let now = chrono::Utc::now().timestamp() + offset_secs;
    AccessClaims {
        sub: id,
        exp: now + 600,
        iat: now,
        nbf: now,
        jti: uuid::Uuid::new_v4(),
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        typ: typ.into(),
        ver: 0,
        sid: None,
    }
}

fn sign(claims: &AccessClaims, algorithm: Algorithm, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(algorithm),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test]
async fn forged_expired_mistyped_misaddressed_and_unsigned_tokens_are_refused() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let id = alice.user.id;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&serde_json::to_value(claims_for(id, "access", 0)).unwrap())
    );
    let tampered = {
        let parts: Vec<&str> = alice.token.split('.').collect();
        let mut claims = claims_for(id, "access", 0);
        claims.sub = uuid::Uuid::new_v4();
        format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_value(claims).unwrap()),
            parts[2]
        )
    };
    let mut expired = claims_for(id, "access", -7200);
    expired.exp = chrono::Utc::now().timestamp() - 3600;
    let mut wrong_audience = claims_for(id, "access", 0);
    wrong_audience.aud = "someone-else".into();
    let mut wrong_issuer = claims_for(id, "access", 0);
    wrong_issuer.iss = "https://issuer.invalid".into();
    // A real refresh token, as login hands it out, is no access token.
    let refresh_token = app.sign_in(&alice).await["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let forged_secret = "a different secret of 32 bytes or more";
    // One case a line: (token, the problem's code, what is wrong with it).
    #[rustfmt::skip]
    let cases = [
        (unsigned, "invalid_token", "alg=none"),
        (sign(&claims_for(id, "access", 0), Algorithm::HS256, forged_secret), "invalid_token", "forged signature"),
        (tampered, "invalid_token", "claims changed under a valid signature"),
        (sign(&claims_for(id, "access", 0), Algorithm::HS512, TEST_SECRET), "invalid_token", "another algorithm than the pinned one"),
        (sign(&expired, Algorithm::HS256, TEST_SECRET), "token_expired", "expired"),
        (sign(&claims_for(id, "refresh", 0), Algorithm::HS256, TEST_SECRET), "invalid_token", "a token of the wrong type"),
        (sign(&claims_for(id, "access", 3600), Algorithm::HS256, TEST_SECRET), "invalid_token", "not valid before an hour from now"),
        (sign(&wrong_audience, Algorithm::HS256, TEST_SECRET), "invalid_token", "another audience"),
        (sign(&wrong_issuer, Algorithm::HS256, TEST_SECRET), "invalid_token", "another issuer"),
        (refresh_token, "invalid_token", "a refresh token from login"),
        ("garbage".to_owned(), "invalid_token", "not a JWT"),
    ];
    for (token, code, why) in cases {
        let response = app.me(&token).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{why}");
        let problem = assert_problem(response, StatusCode::UNAUTHORIZED, code).await;
        assert!(!problem.detail.is_empty(), "{why}");
    }
    // The genuine article still works.
    let genuine = sign(&claims_for(id, "access", 0), Algorithm::HS256, TEST_SECRET);
    assert_eq!(app.me(&genuine).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_malformed_authorization_header_is_401() {
    let app = spawn_app().await;
    for header in ["Basic dXNlcjpwYXNz", "Bearer", "Token abc"] {
        let response = app
            .get_with("/api/v1/users/me", "authorization", header)
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{header}");
    }
}

#[tokio::test]
async fn a_nul_byte_in_text_is_a_422_not_a_500() {
    let app = spawn_app().await;
    let login = app.login("alice\u{0}", "whatever password").await;
    assert_ne!(login.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(login.status().is_client_error(), "{}", login.status());
    let alice = app.create_user(Role::User).await;
    let key = app
        .post_as(
            "/api/v1/api-keys",
            &alice.token,
            &json!({"name": "bad\u{0}name"}),
        )
        .await;
    assert_invalid(key).await;
    let admin = app.create_user(Role::Admin).await;
    let search = app.get_as("/api/v1/users?q=a%00b", &admin.token).await;
    assert_invalid(search).await;
}

#[tokio::test]
async fn a_flood_of_logins_is_refused_quickly_with_server_busy_instead_of_queueing() {
    let app = crate::helpers::spawn_app_with(&["--rate-limit-enabled", "false"]).await;
    let user = app.create_user(keel_shared::domain::Role::User).await;
    // More logins at once than the hasher runs and queues (5 per core).
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let flood = cores * 5 + 30;
    let logins = (0..flood).map(|_| {
        let (app, user) = (&app, &user);
        async move {
            let response = app.login(user.user.username.as_str(), &user.password).await;
            let retry_after = response.headers().get("retry-after").cloned();
            let status = response.status();
            let body: serde_json::Value = response.json().await.unwrap();
            (status, retry_after, body)
        }
    });
    let answers = futures_util::future::join_all(logins).await;
    let busy: Vec<_> = answers
        .iter()
        .filter(|(status, ..)| *status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    let signed_in = answers
        .iter()
        .filter(|(status, ..)| *status == StatusCode::OK)
        .count();
    assert_eq!(
        busy.len() + signed_in,
        flood,
        "each login either works or is refused as busy"
    );
    assert!(
        signed_in >= cores,
        "the hasher's capacity is used: {signed_in} of {flood}"
    );
    assert!(!busy.is_empty(), "the excess is refused, not queued");
    for (_, retry_after, body) in busy {
        assert_eq!(body["code"], "server_busy");
        assert_eq!(retry_after.as_ref().unwrap(), "1");
    }
    // The hasher recovers as soon as the flood is over.
    let after = app.login(user.user.username.as_str(), &user.password).await;
    assert_eq!(after.status(), StatusCode::OK);
}
