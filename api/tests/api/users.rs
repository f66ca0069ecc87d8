//! Profiles, the user list, roles, deletion and their protections.

use keel_shared::domain::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn a_user_edits_their_profile_and_clears_fields_with_null() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let patch = json!({"first_name": "Ada", "bio": "hello", "timezone": "America/New_York", "language": "pt-BR"});
    let response = app
        .send(
            Method::PATCH,
            "/api/v1/users/me",
            &alice.token,
            Some(&patch),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let user: Value = response.json().await.unwrap();
    assert_eq!(
        (user["first_name"].as_str(), user["timezone"].as_str()),
        (Some("Ada"), Some("America/New_York"))
    );

    let cleared: Value = app
        .send(
            Method::PATCH,
            "/api/v1/users/me",
            &alice.token,
            Some(&json!({"bio": null})),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(cleared["bio"].is_null());
    assert_eq!(cleared["first_name"], "Ada", "absent fields stay");
    let fetched: Value = app.me(&alice.token).await.json().await.unwrap();
    assert_eq!(fetched, cleared, "the cached user was refreshed");

    // A time zone or language cleared with null is back at its default,
    // through either route: never a 200 that changed nothing.
    for path in [
        "/api/v1/users/me".to_owned(),
        format!("/api/v1/users/{}", alice.user.id),
    ] {
        let set = app
            .send(Method::PATCH, &path, &alice.token, Some(&patch))
            .await;
        assert_eq!(set.status(), StatusCode::OK);
        let reset: Value = app
            .send(
                Method::PATCH,
                &path,
                &alice.token,
                Some(&json!({"timezone": null, "language": null})),
            )
            .await
            .json()
            .await
            .unwrap();
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
        let response = app
            .send(
                Method::PATCH,
                "/api/v1/users/me",
                &alice.token,
                Some(&json!({field: value})),
            )
            .await;
        let problem = assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
        assert_eq!(problem.errors.unwrap()[0].field, field, "{value}");
    }
    let accepted = app
        .send(
            Method::PATCH,
            "/api/v1/users/me",
            &alice.token,
            Some(&json!({"bio": "two\nlines", "avatar_url": "https://cdn.example.com/a.png"})),
        )
        .await;
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
        let response = app
            .send(Method::PATCH, path, &alice.token, Some(&body))
            .await;
        assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    }
    let response = app
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{alice_id}"),
            &alice.token,
            Some(&json!({"is_active": false})),
        )
        .await;
    assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    let me: Value = app.me(&alice.token).await.json().await.unwrap();
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
        assert_problem(response, StatusCode::NOT_FOUND, "not_found").await;
    }
    for (method, path) in [
        (Method::DELETE, format!("/api/v1/users/{a_id}")),
        (Method::DELETE, format!("/api/v1/users/delete/{a_id}")),
    ] {
        assert_eq!(
            app.send(method, &path, &b.token, None).await.status(),
            StatusCode::FORBIDDEN
        );
    }
    let me: Value = app.me(&a.token).await.json().await.unwrap();
    assert!(me["first_name"].is_null());
}

#[tokio::test]
async fn admins_list_filter_and_page_users() {
    let app = spawn_app().await;
    let admin = app.create_user(Role::Admin).await;
    for _ in 0..3 {
        app.create_user(Role::User).await;
    }
    let page: Value = app
        .get_as("/api/v1/users?size=2&page=1", &admin.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            page["total"].as_i64(),
            page["size"].as_i64(),
            page["pages"].as_i64()
        ),
        (Some(4), Some(2), Some(2))
    );
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let second: Value = app
        .get_as("/api/v1/users/?size=2&page=2", &admin.token)
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(page["items"][0]["id"], second["items"][0]["id"]);

    let users: Value = app
        .get_as("/api/v1/users?role=user", &admin.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(users["total"], 3);
    let by_role: Value = app
        .get_as("/api/v1/users/role/admin", &admin.token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(by_role["items"][0]["id"], admin.user.id.to_string());
    let search: Value = app
        .get_as(
            &format!("/api/v1/users?q={}", &admin.user.username[3..]),
            &admin.token,
        )
        .await
        .json()
        .await
        .unwrap();
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
        assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
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
            .send(
                method,
                &path,
                &admin.token,
                Some(&json!({"is_active": false})),
            )
            .await;
        assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    }
    assert_eq!(
        app.me(&admin.token).await.status(),
        StatusCode::OK,
        "still signed in"
    );
    let active: bool = sqlx::query_scalar("SELECT is_active FROM users WHERE id = $1")
        .bind(admin.user.id)
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert!(active);
}

#[tokio::test]
async fn deactivating_a_user_stops_their_tokens_at_once() {
    let app = spawn_app().await;
    let admin = app.create_user(Role::Admin).await;
    let alice = app.create_user(Role::User).await;
    let tokens: Value = app
        .login(&alice.user.username, &alice.password)
        .await
        .json()
        .await
        .unwrap();
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(app.me(access).await.status(), StatusCode::OK, "cached now");

    let path = format!("/api/v1/users/{}", alice.user.id);
    let response = app
        .send(
            Method::PATCH,
            &path,
            &admin.token,
            Some(&json!({"is_active": false})),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    assert_problem(
        app.me(access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(
        app.refresh(tokens["refresh_token"].as_str().unwrap())
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login(&alice.user.username, &alice.password)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn only_a_superadmin_changes_roles_and_nobody_promotes_themself() {
    let app = spawn_app().await;
    let superadmin = app.create_user(Role::Superadmin).await;
    let admin = app.create_user(Role::Admin).await;
    let alice = app.create_user(Role::User).await;
    let role_path = |id: uuid::Uuid| format!("/api/v1/users/{id}/role");

    let self_promotion = app
        .send(
            Method::PUT,
            &role_path(admin.user.id),
            &admin.token,
            Some(&json!({"role": "superadmin"})),
        )
        .await;
    assert_problem(self_promotion, StatusCode::FORBIDDEN, "forbidden").await;
    let by_admin = app
        .send(
            Method::PUT,
            &role_path(alice.user.id),
            &admin.token,
            Some(&json!({"role": "admin"})),
        )
        .await;
    assert_problem(by_admin, StatusCode::FORBIDDEN, "forbidden").await;
    let by_user = app
        .send(
            Method::PUT,
            &role_path(alice.user.id),
            &alice.token,
            Some(&json!({"role": "admin"})),
        )
        .await;
    assert_problem(by_user, StatusCode::FORBIDDEN, "forbidden").await;

    let promoted = app
        .send(
            Method::PUT,
            &role_path(alice.user.id),
            &superadmin.token,
            Some(&json!({"role": "admin"})),
        )
        .await;
    assert_eq!(promoted.status(), StatusCode::OK);
    assert_eq!(promoted.json::<Value>().await.unwrap()["role"], "admin");
    assert_eq!(
        app.me(&alice.token).await.status(),
        StatusCode::UNAUTHORIZED,
        "a role change ends the sessions"
    );

    let alias = format!("/api/v1/users/update/{}/role", alice.user.id);
    let demoted = app
        .send(
            Method::PUT,
            &alias,
            &superadmin.token,
            Some(&json!({"role": "user"})),
        )
        .await;
    assert_eq!(demoted.json::<Value>().await.unwrap()["role"], "user");
}

#[tokio::test]
async fn the_last_superadmin_cannot_be_demoted_deactivated_or_deleted() {
    let app = spawn_app().await;
    let root = app.create_user(Role::Superadmin).await;
    let id = root.user.id;
    let demote = app
        .send(
            Method::PUT,
            &format!("/api/v1/users/{id}/role"),
            &root.token,
            Some(&json!({"role": "admin"})),
        )
        .await;
    assert_problem(demote, StatusCode::CONFLICT, "last_superadmin").await;
    let deactivate = app
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{id}"),
            &root.token,
            Some(&json!({"is_active": false})),
        )
        .await;
    // Nobody deactivates their own account (and no one else may deactivate
    // a superadmin): the last one stays active.
    assert_problem(deactivate, StatusCode::FORBIDDEN, "forbidden").await;
    let delete = app
        .send(
            Method::DELETE,
            &format!("/api/v1/users/{id}"),
            &root.token,
            None,
        )
        .await;
    assert_problem(delete, StatusCode::CONFLICT, "last_superadmin").await;

    // With a second one, the first may step down.
    app.create_user(Role::Superadmin).await;
    let demote = app
        .send(
            Method::PUT,
            &format!("/api/v1/users/{id}/role"),
            &root.token,
            Some(&json!({"role": "admin"})),
        )
        .await;
    assert_eq!(demote.status(), StatusCode::OK);
}

#[tokio::test]
async fn two_superadmins_demoting_each_other_at_once_leave_one() {
    let app = spawn_app().await;
    let a = app.create_user(Role::Superadmin).await;
    let b = app.create_user(Role::Superadmin).await;
    let body = json!({"role": "user"});
    let (path_a, path_b) = (
        format!("/api/v1/users/{}/role", a.user.id),
        format!("/api/v1/users/{}/role", b.user.id),
    );
    let (ra, rb) = tokio::join!(
        app.send(Method::PUT, &path_b, &a.token, Some(&body)),
        app.send(Method::PUT, &path_a, &b.token, Some(&body)),
    );
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'superadmin' AND is_active")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!(left, 1, "{} / {}", ra.status(), rb.status());
}

#[tokio::test]
async fn admins_cannot_manage_a_superadmin_but_can_delete_a_user() {
    let app = spawn_app().await;
    let root = app.create_user(Role::Superadmin).await;
    let admin = app.create_user(Role::Admin).await;
    let alice = app.create_user(Role::User).await;
    let path = format!("/api/v1/users/{}", root.user.id);
    assert_problem(
        app.send(
            Method::PATCH,
            &path,
            &admin.token,
            Some(&json!({"is_active": false})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_problem(
        app.send(Method::DELETE, &path, &admin.token, None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let alice_path = format!("/api/v1/users/delete/{}", alice.user.id);
    assert_eq!(
        app.send(Method::DELETE, &alice_path, &admin.token, None)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
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
    assert_problem(
        app.get_as("/api/v1/users/not-a-uuid", &admin.token).await,
        StatusCode::NOT_FOUND,
        "not_found",
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
    let response = replica
        .send(
            Method::PATCH,
            &path,
            &admin.token,
            Some(&json!({"is_active": false})),
        )
        .await;
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
