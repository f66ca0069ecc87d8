//! Rate limits in Redis: headers, 429s, brute force, proxies, and Redis down.

use keel_shared::domain::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    helpers::{TestApp, registration, retry_after, spawn_app_with, spawn_app_without_redis},
    refusals::{RATE_LIMITED, SERVICE_UNAVAILABLE, assert_refused},
};

/// A registration as if from `ip`, by a proxy's `X-Forwarded-For`.
async fn register_from(app: &TestApp, ip: &str) -> StatusCode {
    let response = app
        .client
        .post(app.url("/api/v1/auth/register"))
        .header("x-forwarded-for", ip)
        .json(&registration())
        .send()
        .await
        .unwrap();
    response.status()
}

/// Asserts twelve registrations from one client were ten in, then refused.
fn assert_ten_got_in(statuses: &[StatusCode], what: &str) {
    let created = statuses.iter().filter(|s| **s == StatusCode::CREATED);
    assert_eq!(created.count(), 10, "{what}: {statuses:?}");
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{what}"
    );
}

#[tokio::test]
async fn responses_carry_rate_limit_headers_and_429_comes_with_retry_after() {
    let app = spawn_app_with(&["--rate-limit-per-minute", "3"]).await;
    let alice = app.create_user(Role::User).await;
    let first = app.me(&alice.token).await;
    assert_eq!(first.headers()["ratelimit-limit"], "3");
    assert_eq!(first.headers()["ratelimit-remaining"], "2");
    assert!(first.headers().get("ratelimit-reset").is_some());
    app.me(&alice.token).await;
    app.me(&alice.token).await;
    let limited = app.me(&alice.token).await;
    let retry_after = retry_after(&limited);
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_refused(limited, RATE_LIMITED).await;

    // Per user: another user has a budget of their own.
    let bob = app.create_user(Role::User).await;
    assert_eq!(app.me(&bob.token).await.status(), StatusCode::OK);
    // Probes are never limited.
    assert_eq!(app.health().await.status(), StatusCode::OK);
    assert!(
        app.health()
            .await
            .headers()
            .get("ratelimit-limit")
            .is_none()
    );
}

#[tokio::test]
async fn ten_failed_logins_lock_the_account_for_the_window() {
    let app = spawn_app_with(&[]).await;
    let alice = app.create_user(Role::User).await;
    for attempt in 1..=10 {
        let response = app.login(&alice.user.username, "not the password").await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}"
        );
    }
    let locked = app.login(&alice.user.email, &alice.password).await;
    let retry_after = retry_after(&locked);
    assert!(
        retry_after > 800 && retry_after <= 900,
        "until the 15-minute window passes: {retry_after}"
    );
    assert_refused(locked, RATE_LIMITED).await;
    // Another account is not locked.
    let bob = app.create_user(Role::User).await;
    assert_eq!(
        app.login(&bob.user.username, &bob.password).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn registrations_per_ip_are_limited() {
    let app = spawn_app_with(&[]).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(app.register(&registration()).await.status());
    }
    assert_ten_got_in(&statuses, "one client");
}

#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    // Untrusted: the header is ignored, so rotating it does not escape the limit.
    let direct = spawn_app_with(&[]).await;
    let mut limited = false;
    for i in 0..12 {
        limited |= register_from(&direct, &format!("198.51.100.{i}")).await
            == StatusCode::TOO_MANY_REQUESTS;
    }
    assert!(
        limited,
        "a spoofed X-Forwarded-For must not buy fresh budgets"
    );

    // Behind a trusted proxy (loopback here), each client has its own budget.
    let proxied = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    for i in 0..12 {
        let status = register_from(&proxied, &format!("198.51.100.{i}")).await;
        assert_eq!(status, StatusCode::CREATED, "client {i}");
    }
}

#[tokio::test]
async fn ipv6_clients_share_a_budget_per_64() {
    let app = spawn_app_with(&["--trusted-proxies", "127.0.0.1/32"]).await;
    // Twelve addresses of one /64, as a host with privacy extensions picks them.
    let mut statuses = Vec::new();
    for i in 0..12 {
        let ip = format!("2001:db8:7:1:{i:x}:{:x}::{:x}", i * 7 + 1, i + 3);
        statuses.push(register_from(&app, &ip).await);
    }
    assert_ten_got_in(&statuses, "one /64 is one client");
    // The next /64 is another client.
    let status = register_from(&app, "2001:db8:7:2::1").await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn with_rate_limits_off_nothing_is_counted() {
    let app = spawn_app_with(&[
        "--rate-limit-enabled",
        "false",
        "--rate-limit-per-minute",
        "1",
    ])
    .await;
    let alice = app.create_user(Role::User).await;
    for _ in 0..5 {
        let response = app.me(&alice.token).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("ratelimit-limit").is_none());
    }
}

#[tokio::test]
async fn with_redis_down_sign_in_fails_closed_and_the_rest_stays_open() {
    let app = spawn_app_without_redis().await;
    let alice = app.create_user(Role::User).await;
    let login = app.login(&alice.user.username, &alice.password).await;
    assert_refused(login, SERVICE_UNAVAILABLE).await;
    let register = app.register(&registration()).await;
    assert_refused(register, SERVICE_UNAVAILABLE).await;
    let refresh = app
        .post_json("/api/v1/auth/refresh", &json!({"refresh_token": "x"}))
        .await;
    assert_eq!(refresh.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Authenticated reads fall back to Postgres for the user and skip the limiter.
    let me = app.me(&alice.token).await;
    assert_eq!(me.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_burst_of_concurrent_guesses_gets_no_more_than_ten_tries() {
    let app = spawn_app_with(&[]).await;
    let alice = app.create_user(Role::User).await;
    let guesses = (0..18).map(|i| {
        let app = &app;
        let name = alice.user.username.clone();
        async move {
            app.login(&name, &format!("guess number {i}"))
                .await
                .status()
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    // Beyond what the password hasher admits at once (5 per core), a guess
    // is refused as busy (503) before it counts; the rest are checked (401)
    // until the account's ten tries are spent (429).
    assert!(
        statuses.iter().all(|s| [
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::SERVICE_UNAVAILABLE
        ]
        .contains(s)),
        "{statuses:?}"
    );
    let mut checked = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert!(
        checked <= 10,
        "at most ten guesses reach the password check: {statuses:?}"
    );
    // One at a time, the remaining tries are checked, and then no more.
    while checked < 10 {
        let status = app
            .login(&alice.user.username, "one more guess")
            .await
            .status();
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "after {checked} checked guesses"
        );
        checked += 1;
    }
    let locked = app.login(&alice.user.username, &alice.password).await;
    assert_eq!(
        locked.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
}

#[tokio::test]
async fn a_login_429_carries_the_login_limit_not_the_general_one() {
    let app = spawn_app_with(&[]).await;
    let alice = app.create_user(Role::User).await;
    for _ in 0..10 {
        app.login(&alice.user.username, "not the password").await;
    }
    let locked = app.login(&alice.user.username, "not the password").await;
    assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(locked.headers()["ratelimit-limit"], "10");
    assert_eq!(locked.headers()["ratelimit-remaining"], "0");
}

#[tokio::test]
async fn change_password_guesses_lock_too() {
    let app = spawn_app_with(&[]).await;
    let alice = app.create_user(Role::User).await;
    let new = "another long passphrase";
    for _ in 0..10 {
        let response = app
            .change_password(&alice.token, "a wrong guess", new)
            .await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let locked = app
        .change_password(&alice.token, &alice.password, new)
        .await;
    assert_refused(locked, RATE_LIMITED).await;
}

#[tokio::test]
async fn random_api_keys_spend_the_callers_ip_budget() {
    let app = spawn_app_with(&["--rate-limit-per-minute", "5"]).await;
    let mut statuses = Vec::new();
    for i in 0..7 {
        let response = app
            .client
            .get(app.url("/api/v1/users/me"))
            .header("x-api-key", format!("keel_made_up_{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status());
    }
    assert_eq!(statuses[..5], [StatusCode::UNAUTHORIZED; 5], "{statuses:?}");
    assert_eq!(
        statuses[5..],
        [StatusCode::TOO_MANY_REQUESTS; 2],
        "a fresh key is no fresh budget: {statuses:?}"
    );
}
