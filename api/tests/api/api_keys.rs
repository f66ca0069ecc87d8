//! API keys: shown once, act as their owner and never above, die at once when regenerated.

use keel_shared::domain::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app};

async fn with_key(
    app: &TestApp,
    key: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> reqwest::Response {
    let mut request = app
        .client
        .request(method, app.url(path))
        .header("x-api-key", key);
    if let Some(body) = body {
        request = request.json(body);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn a_key_is_shown_once_and_acts_as_its_owner() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let created = app.create_api_key(&alice, "ci").await;
    let key = created["key"].as_str().unwrap();
    let prefix = created["prefix"].as_str().unwrap();
    assert!(
        key.starts_with(prefix) && prefix.starts_with("keel_"),
        "{created}"
    );

    let listed: Value = app
        .get_as("/api/v1/api-keys", &alice.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["id"], created["id"]);
    assert!(listed["items"][0].get("key").is_none(), "never shown again");
    assert!(listed["items"][0]["last_used_at"].is_null());

    let me: Value = with_key(&app, key, Method::GET, "/api/v1/users/me", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], alice.user.id.to_string());
    let listed: Value = app
        .get_as("/api/v1/api-keys/", &alice.token)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        listed["items"][0]["last_used_at"].is_string(),
        "use is recorded"
    );

    let stored: Vec<u8> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&stored).contains(&key[prefix.len()..]),
        "only a hash is stored"
    );
}

#[tokio::test]
async fn a_key_cannot_exceed_its_owner_mint_keys_or_change_the_password() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let key = app.create_api_key(&alice, "robot").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        with_key(&app, &key, Method::GET, "/api/v1/users", None)
            .await
            .status(),
        StatusCode::FORBIDDEN,
        "not an admin"
    );
    let mint = with_key(
        &app,
        &key,
        Method::POST,
        "/api/v1/api-keys",
        Some(&json!({"name": "child"})),
    )
    .await;
    assert_problem(mint, StatusCode::FORBIDDEN, "api_key_not_allowed").await;
    let change = with_key(
        &app,
        &key,
        Method::POST,
        "/api/v1/auth/change-password",
        Some(
            &json!({"current_password": alice.password, "new_password": "another long passphrase"}),
        ),
    )
    .await;
    assert_problem(change, StatusCode::FORBIDDEN, "api_key_not_allowed").await;

    // An admin's key acts as an admin, and follows the owner's role down.
    let admin = app.create_user(Role::Admin).await;
    let admin_key = app.create_api_key(&admin, "ops").await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        with_key(&app, &admin_key, Method::GET, "/api/v1/users", None)
            .await
            .status(),
        StatusCode::OK
    );
    sqlx::query("UPDATE users SET role = 'user' WHERE id = $1")
        .bind(admin.user.id)
        .execute(app.pool())
        .await
        .unwrap();
    keel_api::auth::user_cache::UserCache::new(app.redis(), std::time::Duration::ZERO)
        .invalidate(admin.user.id)
        .await;
    assert_eq!(
        with_key(&app, &admin_key, Method::GET, "/api/v1/users", None)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn regenerating_a_key_invalidates_the_old_secret_at_once() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let created = app.create_api_key(&alice, "ci").await;
    let old = created["key"].as_str().unwrap();
    let path = format!(
        "/api/v1/api-keys/{}/regenerate",
        created["id"].as_str().unwrap()
    );
    let regenerated: Value = app
        .send(Method::POST, &path, &alice.token, None)
        .await
        .json()
        .await
        .unwrap();
    let new = regenerated["key"].as_str().unwrap();
    assert_ne!(old, new);
    assert_eq!(regenerated["id"], created["id"]);
    assert_problem(
        with_key(&app, old, Method::GET, "/api/v1/users/me", None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    )
    .await;
    assert_eq!(
        with_key(&app, new, Method::GET, "/api/v1/users/me", None)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn deleted_expired_and_foreign_keys() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let bob = app.create_user(Role::User).await;
    let created = app.create_api_key(&alice, "ci").await;
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();

    assert_eq!(
        app.send(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            &bob.token,
            None
        )
        .await
        .status(),
        StatusCode::NOT_FOUND
    );
    let regenerate = app
        .send(
            Method::POST,
            &format!("/api/v1/api-keys/{id}/regenerate"),
            &bob.token,
            None,
        )
        .await;
    assert_eq!(
        regenerate.status(),
        StatusCode::NOT_FOUND,
        "another user's key does not exist for bob"
    );

    sqlx::query("UPDATE api_keys SET expires_at = now() - interval '1 second'")
        .execute(app.pool())
        .await
        .unwrap();
    assert_problem(
        with_key(&app, key, Method::GET, "/api/v1/users/me", None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    )
    .await;

    assert_eq!(
        app.send(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            &alice.token,
            None
        )
        .await
        .status(),
        StatusCode::NO_CONTENT
    );
    let listed: Value = app
        .get_as("/api/v1/api-keys", &alice.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]));
    assert_eq!(listed["total"], 0);
}

#[tokio::test]
async fn key_requests_are_validated() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(101)}), "name"),
        (
            json!({"name": "old", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
    ] {
        let response = app
            .send(Method::POST, "/api/v1/api-keys", &alice.token, Some(&body))
            .await;
        let problem = assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem.errors.unwrap()[0].field, field);
    }
    let future = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let response = app
        .send(
            Method::POST,
            "/api/v1/api-keys",
            &alice.token,
            Some(&json!({"name": "soon", "expires_at": future})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
}
