//! API keys: shown once, act as their owner and never above, die at once when regenerated.

use keel_shared::domain::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{TestApp, assert_invalid, assert_problem, spawn_app},
    refusals::{INVALID_API_KEY, assert_refused},
};

/// `GET path` with the API key `key`.
async fn get_with_key(app: &TestApp, key: &str, path: &str) -> reqwest::Response {
    app.send_with_key(Method::GET, path, key, None).await
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

    let listed = app.get_json("/api/v1/api-keys", &alice.token).await;
    assert_eq!(listed["items"][0]["id"], created["id"]);
    assert!(listed["items"][0].get("key").is_none(), "never shown again");
    assert!(listed["items"][0]["last_used_at"].is_null());

    let me: Value = get_with_key(&app, key, "/api/v1/users/me")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], alice.user.id.to_string());
    let listed = app.get_json("/api/v1/api-keys/", &alice.token).await;
    assert!(
        listed["items"][0]["last_used_at"].is_string(),
        "use is recorded"
    );

    let stored: Vec<u8> = app.scalar("SELECT key_hash FROM api_keys").await;
    assert!(
        !String::from_utf8_lossy(&stored).contains(&key[prefix.len()..]),
        "only a hash is stored"
    );
}

#[tokio::test]
async fn a_key_cannot_exceed_its_owner_mint_keys_or_change_the_password() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let key = app.api_key(&alice, "robot").await;
    let users = get_with_key(&app, &key, "/api/v1/users").await;
    assert_eq!(users.status(), StatusCode::FORBIDDEN, "not an admin");
    let change =
        json!({"current_password": alice.password, "new_password": "another long passphrase"});
    for (path, body) in [
        ("/api/v1/api-keys", json!({"name": "child"})),
        ("/api/v1/auth/change-password", change),
    ] {
        let response = app
            .send_with_key(Method::POST, path, &key, Some(&body))
            .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        assert_problem(response, StatusCode::FORBIDDEN, "api_key_not_allowed").await;
    }

    // An admin's key acts as an admin, and follows the owner's role down.
    let admin = app.create_user(Role::Admin).await;
    let admin_key = app.api_key(&admin, "ops").await;
    let users = get_with_key(&app, &admin_key, "/api/v1/users").await;
    assert_eq!(users.status(), StatusCode::OK);
    app.execute_with(
        "UPDATE users SET role = 'user' WHERE id = $1",
        admin.user.id,
    )
    .await;
    keel_api::auth::user_cache::UserCache::new(app.redis(), std::time::Duration::ZERO)
        .invalidate(admin.user.id)
        .await;
    let users = get_with_key(&app, &admin_key, "/api/v1/users").await;
    assert_eq!(users.status(), StatusCode::FORBIDDEN);
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
    let regenerated = app.post_as(&path, &alice.token, None).await;
    let regenerated: Value = regenerated.json().await.unwrap();
    let new = regenerated["key"].as_str().unwrap();
    assert_ne!(old, new);
    assert_eq!(regenerated["id"], created["id"]);
    assert_refused(
        get_with_key(&app, old, "/api/v1/users/me").await,
        INVALID_API_KEY,
    )
    .await;
    let me = get_with_key(&app, new, "/api/v1/users/me").await;
    assert_eq!(me.status(), StatusCode::OK);
}

#[tokio::test]
async fn deleted_expired_and_foreign_keys() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let bob = app.create_user(Role::User).await;
    let created = app.create_api_key(&alice, "ci").await;
    let key = created["key"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();

    let path = format!("/api/v1/api-keys/{id}");
    let deleted = app.delete_as(&path, &bob.token).await;
    assert_eq!(deleted.status(), StatusCode::NOT_FOUND);
    let regenerate = format!("{path}/regenerate");
    let regenerated = app.post_as(&regenerate, &bob.token, None).await;
    assert_eq!(
        regenerated.status(),
        StatusCode::NOT_FOUND,
        "another user's key does not exist for bob"
    );

    app.execute("UPDATE api_keys SET expires_at = now() - interval '1 second'")
        .await;
    assert_refused(
        get_with_key(&app, key, "/api/v1/users/me").await,
        INVALID_API_KEY,
    )
    .await;

    let deleted = app.delete_as(&path, &alice.token).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let listed = app.get_json("/api/v1/api-keys", &alice.token).await;
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
        let response = app.post_as("/api/v1/api-keys", &alice.token, &body).await;
        let problem = assert_invalid(response).await;
        assert_eq!(problem.errors.unwrap()[0].field, field, "{body}");
    }
    let future = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let body = json!({"name": "soon", "expires_at": future});
    let response = app.post_as("/api/v1/api-keys", &alice.token, &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
}
