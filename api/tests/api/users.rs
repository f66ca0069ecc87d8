//! Profiles, the user list, roles, deletion and their protections.

use keel_shared::domain::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{TestUser, assert_invalid, assert_problem, spawn_app},
    refusals::{FORBIDDEN, INVALID_TOKEN, NOT_FOUND, assert_refused},
};

/// `PUT` here sets `user`'s role.
fn role_path(user: &TestUser) -> String {
    format!("/api/v1/users/{}/role", user.user.id)
}

/// The body that deactivates an account.
fn deactivate() -> Value {
    json!({"is_active": false})
}

#[tokio::test]
async fn a_user_edits_their_profile_and_clears_fields_with_null() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let patch = json!({"first_name": "Ada", "bio": "hello", "timezone": "America/New_York", "language": "pt-BR"});
    let response = app.patch_as("/api/v1/users/me", &alice.token, &patch).await;
    assert_eq!(response.status(), StatusCode::OK);
    let user: Value = response.json().await.unwrap();
    assert_eq!(
        (user["first_name"].as_str(), user["timezone"].as_str()),
        (Some("Ada"), Some("America/New_York"))
    );

    let cleared: Value = app
        .patch_as("/api/v1/users/me", &alice.token, &json!({"bio": null}))
        .await
        .json()
        .await
        .unwrap();
    assert!(cleared["bio"].is_null());
    assert_eq!(cleared["first_name"], "Ada", "absent fields stay");
    let fetched = app.get_json("/api/v1/users/me", &alice.token).await;
    assert_eq!(fetched, cleared, "the cached user was refreshed");

    // A time zone or language cleared with null is back at its default,
    // through either route: never a 200 that changed nothing.
    for path in [
        "/api/v1/users/me".to_owned(),
        format!("/api/v1/users/{}", alice.user.id),
    ] {
        let set = app.patch_as(&path, &alice.token, &patch).await;
        assert_eq!(set.status(), StatusCode::OK);
        let defaults = json!({"timezone": null, "language": null});
        let reset = app.patch_as(&path, &alice.token, &defaults).await;
        let reset: Value = reset.json().await.unwrap();
        assert_eq!(
            (reset["timezone"].as_str(), reset["language"].as_str()),
            (Some("UTC"), Some("en")),
            "{path}"
        );
    }
}

#[tokio::test]
async fn names_are_one_line_and_avatar_urls_name_a_host_as_the_schema_says() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let refused = [
        ("first_name", json!("Ann\nSmith")),
        ("last_name", json!("Smith\r\nJones")),
        ("avatar_url", json!("https://127.0.0.1/x.png")),
        ("avatar_url", json!("https://[::1]/x.png")),
        ("avatar_url", json!("https://a_b.com/x.png")),
    ];
    for (field, value) in refused {
        let body = json!({field: value});
        let response = app.patch_as("/api/v1/users/me", &alice.token, &body).await;
        let problem = assert_invalid(response).await;
        assert_eq!(problem.errors.unwrap()[0].field, field, "{value}");
    }
    let body = json!({"bio": "two\nlines", "avatar_url": "https://cdn.example.com/a.png"});
    let accepted = app.patch_as("/api/v1/users/me", &alice.token, &body).await;
    assert_eq!(accepted.status(), StatusCode::OK, "a bio keeps its lines");
}

#[tokio::test]
async fn mass_assignment_of_role_email_verified_or_is_active_is_refused() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let alice_id = alice.user.id.to_string();
    for (path, body) in [
        ("/api/v1/users/me", json!({"role": "superadmin"})),
        ("/api/v1/users/me", json!({"email_verified": true})),
        ("/api/v1/users/me", json!({"is_active": false})),
        (
            "/api/v1/users/me",
            json!({"first_name": "x", "role": "admin"}),
        ),
        (
            &*format!("/api/v1/users/{alice_id}"),
            json!({"role": "admin"}),
        ),
    ] {
        let response = app.patch_as(path, &alice.token, &body).await;
        assert_invalid(response).await;
    }
    let path = format!("/api/v1/users/{alice_id}");
    let response = app.patch_as(&path, &alice.token, &deactivate()).await;
    assert_refused(response, FORBIDDEN).await;
    let me = app.get_json("/api/v1/users/me", &alice.token).await;
    assert_eq!(
        (
            me["role"].as_str(),
            me["is_active"].as_bool(),
            me["first_name"].as_str()
        ),
        (Some("user"), Some(true), None)
    );
}

#[tokio::test]
async fn user_b_cannot_see_or_touch_user_a() {
    let app = spawn_app().await;
    let a = app.create_user(Role::User).await;
    let b = app.create_user(Role::User).await;
    let a_id = a.user.id;
    for (method, path, body) in [
        (Method::GET, format!("/api/v1/users/{a_id}"), None),
        (Method::GET, format!("/api/v1/users/get/{a_id}"), None),
        (
            Method::PATCH,
            format!("/api/v1/users/{a_id}"),
            Some(json!({"first_name": "pwned"})),
        ),
        (
            Method::PUT,
            format!("/api/v1/users/update/{a_id}"),
            Some(json!({"first_name": "pwned"})),
        ),
    ] {
        let response = app
            .send(method.clone(), &path, &b.token, body.as_ref())
            .await;
        assert_refused(response, NOT_FOUND).await;
    }
    for path in [
        format!("/api/v1/users/{a_id}"),
        format!("/api/v1/users/delete/{a_id}"),
    ] {
        let response = app.delete_as(&path, &b.token).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    let me = app.get_json("/api/v1/users/me", &a.token).await;
    assert!(me["first_name"].is_null());
}

#[tokio::test]
async fn admins_list_filter_and_page_users() {
    let app = spawn_app().await;
    let admin = app.create_user(Role::Admin).await;
    for _ in 0..3 {
        app.create_user(Role::User).await;
    }
    let page = app
        .get_json("/api/v1/users?size=2&page=1", &admin.token)
        .await;
    assert_eq!(
        (
            page["total"].as_i64(),
            page["size"].as_i64(),
            page["pages"].as_i64()
        ),
        (Some(4), Some(2), Some(2))
    );
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let second = app
        .get_json("/api/v1/users/?size=2&page=2", &admin.token)
        .await;
    assert_ne!(page["items"][0]["id"], second["items"][0]["id"]);

    let users = app.get_json("/api/v1/users?role=user", &admin.token).await;
    assert_eq!(users["total"], 3);
    let by_role = app.get_json("/api/v1/users/role/admin", &admin.token).await;
    assert_eq!(by_role["items"][0]["id"], admin.user.id.to_string());
    let query = format!("/api/v1/users?q={}", &admin.user.username[3..]);
    let search = app.get_json(&query, &admin.token).await;
    assert_eq!(search["total"], 1);

    for bad in [
        "size=101",
        "page=0",
        "size=abc",
        "role=root",
        "is_active=maybe",
    ] {
        let response = app
            .get_as(&format!("/api/v1/users?{bad}"), &admin.token)
            .await;
        assert_invalid(response).await;
    }
}

#[tokio::test]
async fn an_admin_cannot_deactivate_their_own_account() {
    let app = spawn_app().await;
    let admin = app.create_user(Role::Admin).await;
    for path in [
        format!("/api/v1/users/{}", admin.user.id),
        format!("/api/v1/users/update/{}", admin.user.id),
    ] {
        let method = if path.contains("update") {
            Method::PUT
        } else {
            Method::PATCH
        };
        let response = app
            .send(method, &path, &admin.token, Some(&deactivate()))
            .await;
        assert_refused(response, FORBIDDEN).await;
    }
    assert_eq!(
        app.me(&admin.token).await.status(),
        StatusCode::OK,
        "still signed in"
    );
    let active: bool = app
        .scalar_with("SELECT is_active FROM users WHERE id = $1", admin.user.id)
        .await;
    assert!(active);
}

#[tokio::test]
async fn deactivating_a_user_stops_their_tokens_at_once() {
    let app = spawn_app().await;
    let admin = app.create_user(Role::Admin).await;
    let alice = app.create_user(Role::User).await;
    let tokens = app.sign_in(&alice).await;
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(app.me(access).await.status(), StatusCode::OK, "cached now");

    let path = format!("/api/v1/users/{}", alice.user.id);
    let response = app.patch_as(&path, &admin.token, &deactivate()).await;
    assert_eq!(response.status(), StatusCode::OK);

    let response = app.me(access).await;
    assert_refused(response, INVALID_TOKEN).await;
    let refresh = app.refresh(tokens["refresh_token"].as_str().unwrap()).await;
    assert_eq!(refresh.status(), StatusCode::UNAUTHORIZED);
    let login = app.login(&alice.user.username, &alice.password).await;
    assert_eq!(login.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn only_a_superadmin_changes_roles_and_nobody_promotes_themself() {
    let app = spawn_app().await;
    let superadmin = app.create_user(Role::Superadmin).await;
    let admin = app.create_user(Role::Admin).await;
    let alice = app.create_user(Role::User).await;
    let set_role = |target: &TestUser, caller: &TestUser, role: &str| {
        let (path, body) = (role_path(target), json!({"role": role}));
        let token = caller.token.clone();
        let app = &app;
        async move { app.put_as(&path, &token, &body).await }
    };

    for (case, target, caller, role) in [
        ("self-promotion", &admin, &admin, "superadmin"),
        ("by an admin", &alice, &admin, "admin"),
        ("by a user", &alice, &alice, "admin"),
    ] {
        let response = set_role(target, caller, role).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{case}");
        assert_refused(response, FORBIDDEN).await;
    }

    let promoted = set_role(&alice, &superadmin, "admin").await;
    assert_eq!(promoted.status(), StatusCode::OK);
    assert_eq!(promoted.json::<Value>().await.unwrap()["role"], "admin");
    assert_eq!(
        app.me(&alice.token).await.status(),
        StatusCode::UNAUTHORIZED,
        "a role change ends the sessions"
    );

    let alias = format!("/api/v1/users/update/{}/role", alice.user.id);
    let demoted = app
        .put_as(&alias, &superadmin.token, &json!({"role": "user"}))
        .await;
    assert_eq!(demoted.json::<Value>().await.unwrap()["role"], "user");
}

#[tokio::test]
async fn the_last_superadmin_cannot_be_demoted_deactivated_or_deleted() {
    let app = spawn_app().await;
    let root = app.create_user(Role::Superadmin).await;
    let (path, demotion) = (
        format!("/api/v1/users/{}", root.user.id),
        json!({"role": "admin"}),
    );
    let root_role = role_path(&root);
    let demote = || app.put_as(&root_role, &root.token, &demotion);
    assert_problem(demote().await, StatusCode::CONFLICT, "last_superadmin").await;
    let deactivated = app.patch_as(&path, &root.token, &deactivate()).await;
    // Nobody deactivates their own account (and no one else may deactivate
    // a superadmin): the last one stays active.
    assert_refused(deactivated, FORBIDDEN).await;
    let delete = app.delete_as(&path, &root.token).await;
    assert_problem(delete, StatusCode::CONFLICT, "last_superadmin").await;

    // With a second one, the first may step down.
    app.create_user(Role::Superadmin).await;
    assert_eq!(demote().await.status(), StatusCode::OK);
}

#[tokio::test]
async fn two_superadmins_demoting_each_other_at_once_leave_one() {
    let app = spawn_app().await;
    let a = app.create_user(Role::Superadmin).await;
    let b = app.create_user(Role::Superadmin).await;
    let body = json!({"role": "user"});
    let (path_a, path_b) = (role_path(&a), role_path(&b));
    let (ra, rb) = tokio::join!(
        app.put_as(&path_b, &a.token, &body),
        app.put_as(&path_a, &b.token, &body),
    );
    let left: i64 = app
        .scalar("SELECT count(*) FROM users WHERE role = 'superadmin' AND is_active")
        .await;
    assert_eq!(left, 1, "{} / {}", ra.status(), rb.status());
}

#[tokio::test]
async fn admins_cannot_manage_a_superadmin_but_can_delete_a_user() {
    let app = spawn_app().await;
    let root = app.create_user(Role::Superadmin).await;
    let admin = app.create_user(Role::Admin).await;
    let alice = app.create_user(Role::User).await;
    let path = format!("/api/v1/users/{}", root.user.id);
    for response in [
        app.patch_as(&path, &admin.token, &deactivate()).await,
        app.delete_as(&path, &admin.token).await,
    ] {
        assert_refused(response, FORBIDDEN).await;
    }

    let alice_path = format!("/api/v1/users/delete/{}", alice.user.id);
    let deleted = app.delete_as(&alice_path, &admin.token).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.me(&alice.token).await.status(),
        StatusCode::UNAUTHORIZED,
        "a deleted user's token is dead"
    );
    assert_eq!(
        app.get_as(&format!("/api/v1/users/{}", alice.user.id), &admin.token)
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn an_id_that_is_not_a_uuid_is_404() {
    let app = spawn_app().await;
    let admin = app.create_user(Role::Admin).await;
    assert_refused(
        app.get_as("/api/v1/users/not-a-uuid", &admin.token).await,
        NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn a_deactivation_on_one_replica_ends_the_token_on_every_replica() {
    let app = spawn_app().await;
    let replica = app.spawn_replica().await;
    let admin = app.create_user(Role::Admin).await;
    let alice = app.create_user(Role::User).await;
    // Both replicas have alice cached now (in process and in Redis).
    for _ in 0..3 {
        assert_eq!(app.me(&alice.token).await.status(), StatusCode::OK);
        assert_eq!(replica.me(&alice.token).await.status(), StatusCode::OK);
    }

    let path = format!("/api/v1/users/{}", alice.user.id);
    let response = replica.patch_as(&path, &admin.token, &deactivate()).await;
    assert_eq!(response.status(), StatusCode::OK);

    // The other replica hears of it through Redis within moments.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let status = app.me(&alice.token).await.status();
        if status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {status} on the other replica"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
