//! `keel-api admin …`, run as an operator would.

use std::{
    io::Write as _,
    process::{Output, Stdio},
};

use keel_shared::domain::Role;
use keel_testing as testing;
use serde_json::Value;

use crate::helpers::{API_BIN, TestApp, spawn_app};

fn admin(app: &TestApp, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = testing::command(API_BIN);
    command
        .env("DATABASE_URL", &app.db.as_ref().unwrap().url)
        .env("REDIS_URL", testing::redis_url())
        .env("REDIS_PREFIX", &app.config.redis.prefix)
        .arg("admin")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `create-superuser` for `username` at `email`, the password read from stdin.
fn create_superuser(app: &TestApp, username: &str, email: &str, password: &str) -> Output {
    let args = [
        "create-superuser",
        "--username",
        username,
        "--email",
        email,
        "--password-stdin",
    ];
    admin(app, &args, Some(&format!("{password}\n")))
}

/// The exit code of `admin …` with `args` and no stdin.
fn exit_code(app: &TestApp, args: &[&str]) -> Option<i32> {
    admin(app, args, None).status.code()
}

#[tokio::test]
async fn create_superuser_from_a_script_then_sign_in() {
    let app = spawn_app().await;
    let out = create_superuser(&app, "root", "root@example.com", "a root passphrase");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("created superadmin root"));

    let tokens = app.login_json("root", "a root passphrase").await;
    let access = tokens["access_token"].as_str().unwrap();
    let me = app.get_json("/api/v1/users/me", access).await;
    assert_eq!(
        (me["role"].as_str(), me["email_verified"].as_bool()),
        (Some("superadmin"), Some(true))
    );

    let again = create_superuser(&app, "ROOT", "r2@example.com", "a root passphrase");
    assert_eq!(
        again.status.code(),
        Some(1),
        "the username is taken: {}",
        text(&again.stderr)
    );
}

#[tokio::test]
async fn create_superuser_refuses_bad_input_and_missing_flags_with_exit_2() {
    let app = spawn_app().await;
    let weak = create_superuser(&app, "root", "root@example.com", "password");
    assert_eq!(weak.status.code(), Some(2), "{}", text(&weak.stderr));
    assert!(text(&weak.stderr).contains("password"));
    let no_tty = admin(&app, &["create-superuser"], None);
    assert_eq!(no_tty.status.code(), Some(2), "{}", text(&no_tty.stderr));
    let no_password_flag = [
        "create-superuser",
        "--username",
        "root",
        "--email",
        "root@example.com",
    ];
    assert_eq!(exit_code(&app, &no_password_flag), Some(2));
    let password_in_argv = ["create-superuser", "--password", "x"];
    assert_eq!(
        exit_code(&app, &password_in_argv),
        Some(2),
        "there is no --password flag"
    );
}

#[tokio::test]
async fn list_users_and_stats_as_text_and_json() {
    let app = spawn_app().await;
    let admin_user = app.create_user(Role::Admin).await;
    app.create_user(Role::User).await;

    let listed = admin(&app, &["list-users", "--json"], None);
    assert_eq!(listed.status.code(), Some(0));
    let users: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(users.len(), 2);
    assert!(!text(&listed.stdout).contains("argon2"));
    let table = admin(&app, &["list-users"], None);
    assert!(text(&table.stdout).contains(&admin_user.user.username));
    assert!(text(&table.stdout).contains("2 users"));

    let stats = admin(&app, &["stats", "--json"], None);
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["users"]["total"], 2);
    assert_eq!(stats["users"]["by_role"]["admin"], 1);
    assert_eq!(stats["users"]["by_role"]["superadmin"], 0);
}

#[tokio::test]
async fn verify_set_role_and_delete_by_username_or_id() {
    let app = spawn_app().await;
    let alice = app.create_user(Role::User).await;
    app.execute("UPDATE users SET email_verified = false").await;

    let name = alice.user.username.as_str();
    assert_eq!(exit_code(&app, &["verify-user", name]), Some(0));
    let out = admin(
        &app,
        &["set-role", &alice.user.id.to_string(), "admin"],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (role, verified): (String, bool) =
        sqlx::query_as("SELECT role, email_verified FROM users WHERE id = $1")
            .bind(alice.user.id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert_eq!((role.as_str(), verified), ("admin", true));
    let emperor = exit_code(&app, &["set-role", "alice", "emperor"]);
    assert_eq!(emperor, Some(2), "not a role");

    let unconfirmed = admin(&app, &["delete-user", name], None);
    assert_eq!(
        unconfirmed.status.code(),
        Some(2),
        "no terminal, no --yes: {}",
        text(&unconfirmed.stderr)
    );
    let delete = ["delete-user", name, "--yes"];
    assert_eq!(exit_code(&app, &delete), Some(0));
    assert_eq!(exit_code(&app, &delete), Some(1), "gone");
}

#[tokio::test]
async fn the_last_superadmin_survives_the_command_line_too() {
    let app = spawn_app().await;
    let root = app.create_user(Role::Superadmin).await;
    let out = admin(&app, &["delete-user", &root.user.username, "--yes"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("last active superadmin"),
        "{}",
        text(&out.stderr)
    );
    let out = admin(&app, &["set-role", &root.user.username, "user"], None);
    assert_eq!(out.status.code(), Some(1));
}
