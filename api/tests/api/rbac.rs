//! Every protected route × every kind of caller, against one table of
//! expected statuses.

use keel_api::auth::password::PasswordHasher;
use keel_shared::{
    db::users::{self, NewUser, ProfileChanges},
    domain::{EmailAddress, Password, Role, Username},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app_with};

const PASSWORD: &str = "the rbac table password";

/// Who calls: anonymous, a user, an admin, a superadmin, a user's API key.
const CALLERS: [&str; 5] = ["anonymous", "user", "admin", "superadmin", "user api key"];

/// (method, path, body, expected status per caller). `{victim}` is another
/// user; `{key}` is another API key of the caller. One row a line.
#[rustfmt::skip]
fn table() -> Vec<(Method, &'static str, Option<Value>, [u16; 5])> {
    // The answers per caller the rows share, named for who gets through.
    const SIGNED_IN: [u16; 5] = [401, 200, 200, 200, 200];
    const ADMINS: [u16; 5] = [401, 403, 200, 200, 403];
    const ADMINS_SEE_OTHERS: [u16; 5] = [401, 404, 200, 200, 404];
    const SUPERADMINS: [u16; 5] = [401, 403, 403, 200, 403];
    const ADMINS_DELETE: [u16; 5] = [401, 403, 204, 204, 403];
    const NOT_BY_KEY: [u16; 5] = [401, 200, 200, 200, 403];
    let bio = Some(json!({"bio": "hello"}));
    let role = Some(json!({"role": "admin"}));
    let new_password =
        json!({"current_password": PASSWORD, "new_password": "a new rbac table password"});
    vec![
        (Method::GET, "/api/v1/users/me", None, SIGNED_IN),
        (Method::PATCH, "/api/v1/users/me", bio.clone(), SIGNED_IN),
        (Method::GET, "/api/v1/auth/me", None, SIGNED_IN),
        (Method::GET, "/api/v1/users", None, ADMINS),
        (Method::GET, "/api/v1/users/role/user", None, ADMINS),
        (Method::GET, "/api/v1/users/{victim}", None, ADMINS_SEE_OTHERS),
        (Method::GET, "/api/v1/users/get/{victim}", None, ADMINS_SEE_OTHERS),
        (Method::PATCH, "/api/v1/users/{victim}", bio.clone(), ADMINS_SEE_OTHERS),
        (Method::PUT, "/api/v1/users/update/{victim}", bio, ADMINS_SEE_OTHERS),
        (Method::PUT, "/api/v1/users/{victim}/role", role.clone(), SUPERADMINS),
        (Method::PUT, "/api/v1/users/update/{victim}/role", role, SUPERADMINS),
        (Method::DELETE, "/api/v1/users/{victim}", None, ADMINS_DELETE),
        (Method::DELETE, "/api/v1/users/delete/{victim}", None, ADMINS_DELETE),
        (Method::GET, "/api/v1/api-keys", None, SIGNED_IN),
        (Method::POST, "/api/v1/api-keys", Some(json!({"name": "k"})), [401, 201, 201, 201, 403]),
        (Method::POST, "/api/v1/api-keys/{key}/regenerate", None, NOT_BY_KEY),
        (Method::DELETE, "/api/v1/api-keys/{key}", None, [401, 204, 204, 204, 204]),
        (Method::POST, "/api/v1/tasks", Some(json!({"name": "t"})), [401, 201, 201, 201, 201]),
        (Method::GET, "/api/v1/tasks", None, SIGNED_IN),
        (Method::GET, "/api/v1/tasks/kinds", None, SIGNED_IN),
        (Method::GET, "/api/v1/tasks?user_id={victim}", None, ADMINS),
        (Method::GET, "/api/v1/admin/workers", None, ADMINS),
        (Method::GET, "/api/v1/admin/queues", None, ADMINS),
        (Method::GET, "/api/v1/admin/stats", None, ADMINS),
        (Method::POST, "/api/v1/auth/change-password", Some(new_password), NOT_BY_KEY),
    ]
}

/// A user inserted with a hash made once for the whole table.
async fn user(app: &TestApp, role: Role, hash: &str) -> (uuid::Uuid, String) {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let name = format!("rbac_{suffix}");
    let new = NewUser {
        username: Username::parse(&name).unwrap(),
        email: EmailAddress::parse(&format!("{name}@example.com")).unwrap(),
        password_hash: hash.to_owned(),
        role,
        email_verified: true,
        profile: ProfileChanges::default(),
    };
    let user = users::insert(app.pool(), &new).await.unwrap();
    (user.id, app.token_keys().issue_access(&user))
}

#[tokio::test]
async fn every_route_answers_every_caller_as_the_table_says() {
    let app = spawn_app_with(&["--rate-limit-enabled", "false"]).await;
    let hash = PasswordHasher::new()
        .hash(&Password::parse(PASSWORD).unwrap())
        .await
        .unwrap();
    // Keeps one superadmin besides the callers, so none is ever the last.
    user(&app, Role::Superadmin, &hash).await;
    let mut failures = Vec::new();
    for (method, template, body, expected) in table() {
        for (caller, expected) in CALLERS.iter().zip(expected) {
            // Fresh parties per cell: a cell may delete, demote or end a session.
            let (victim, _) = user(&app, Role::User, &hash).await;
            let role = match *caller {
                "admin" => Role::Admin,
                "superadmin" => Role::Superadmin,
                _ => Role::User,
            };
            let (caller_id, token) = user(&app, role, &hash).await;
            let caller_user = crate::helpers::TestUser {
                user: users::find_by_id(app.pool(), caller_id)
                    .await
                    .unwrap()
                    .unwrap(),
                password: PASSWORD.into(),
                token: token.clone(),
            };
            let key = app.create_api_key(&caller_user, "other").await["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let path = template
                .replace("{victim}", &victim.to_string())
                .replace("{key}", &key);
            let mut request = app.client.request(method.clone(), app.url(&path));
            request = match *caller {
                "anonymous" => request,
                "user api key" => {
                    let api_key = app.create_api_key(&caller_user, "caller").await["key"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    request.header("x-api-key", api_key)
                }
                _ => request.bearer_auth(&token),
            };
            if let Some(body) = &body {
                request = request.json(body);
            }
            let status = request.send().await.unwrap().status();
            if status != StatusCode::from_u16(expected).unwrap() {
                failures.push(format!(
                    "{method} {template} as {caller}: expected {expected}, got {status}"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cells differ from the table:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
