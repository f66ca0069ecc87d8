//! The ops dashboard: sign-in and its cookie, who may see it, CSRF and
//! origin checks on every action, the pages' contents — over HTTP — and
//! the whole admin's path in real headless Chromium (Playwright), with a
//! real worker running the retried task.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use keel_shared::domain::Role;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    helpers::{TestApp, TestUser, spawn_app},
    pipeline::stack_with,
};

/// A client that shows redirects instead of following them.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Posts the dashboard's sign-in form for `username`, with `next` (where
/// to go after) when there is one.
async fn submit_login(
    app: &TestApp,
    username: &str,
    password: &str,
    next: Option<&str>,
) -> reqwest::Response {
    let mut form = vec![("username_or_email", username), ("password", password)];
    form.extend(next.map(|next| ("next", next)));
    browser()
        .post(app.url("/dashboard/login"))
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// Signs `user` in through the dashboard's form; the session cookie (`name=value`).
async fn sign_in(app: &TestApp, user: &TestUser) -> String {
    let next = Some("/dashboard/tasks");
    let response = submit_login(app, &user.user.username, &user.password, next).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/dashboard/tasks");
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

/// Asserts `response` tells the browser to drop the session cookie.
fn assert_cookie_dropped(response: &reqwest::Response) {
    let cookie = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("Max-Age=0"), "{cookie}");
}

async fn page(app: &TestApp, cookie: &str, path: &str) -> (StatusCode, String) {
    let response = browser()
        .get(app.url(path))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

/// The CSRF token a page's forms carry.
fn csrf_of(html: &str) -> String {
    let marker = r#"name="csrf" value=""#;
    let start = html.find(marker).expect("the page has a form") + marker.len();
    html[start..start + 32].to_owned()
}

async fn post_form(
    app: &TestApp,
    cookie: &str,
    path: &str,
    csrf: &str,
    origin: Option<&str>,
) -> reqwest::Response {
    let mut request = browser()
        .post(app.url(path))
        .header(header::COOKIE, cookie)
        .form(&[("csrf", csrf)]);
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    request.send().await.unwrap()
}

async fn task_row(app: &TestApp, id: &str) -> (String, i32) {
    sqlx::query_as("SELECT status, attempts FROM tasks WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(app.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_admin_signs_in_with_a_strict_http_only_cookie_and_anonymous_visitors_are_sent_to_sign_in()
 {
    let app = spawn_app().await;
    let response = browser()
        .get(app.url("/dashboard/tasks?status=failed"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        response.headers()[header::LOCATION],
        "/dashboard/login?next=%2Fdashboard%2Ftasks%3Fstatus%3Dfailed"
    );
    // A visitor without the cookie (as on any link from another site, the
    // cookie being SameSite=Strict) is not told to drop one.
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    // A cookie that no longer works is dropped.
    let stale = browser()
        .get(app.url("/dashboard"))
        .header(header::COOKIE, "keel_dashboard=not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::SEE_OTHER);
    assert_cookie_dropped(&stale);

    let (status, login) = page(&app, "", "/dashboard/login").await;
    assert_eq!(status, StatusCode::OK);
    assert!(login.contains(r#"name="password""#));

    let admin = app.create_user(Role::Admin).await;
    let wrong = submit_login(&app, &admin.user.username, "not it at all", None).await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(header::SET_COOKIE).is_none());
    assert!(
        wrong
            .text()
            .await
            .unwrap()
            .contains("Wrong username, email or password.")
    );

    // Never sent off the dashboard after sign-in.
    let next = Some("https://evil.example/");
    let response = submit_login(&app, &admin.user.username, &admin.password, next).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/dashboard");
    let set_cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/dashboard"] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} in {set_cookie}"
        );
    }
    let cookie = set_cookie.split(';').next().unwrap();

    let (status, overview) = page(&app, cookie, "/dashboard").await;
    assert_eq!(status, StatusCode::OK);
    assert!(overview.contains(r#"<table id="queues">"#), "{overview}");
    assert!(overview.contains("<svg class=\"chart\""));
    assert!(!overview.contains("https://"), "no asset from a CDN");

    // A bearer token or an API key also opens it, for scripts.
    let (status, _) = page(&app, "", "/dashboard").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let by_token = app.get_as("/dashboard/workers", &admin.token).await;
    assert_eq!(by_token.status(), StatusCode::OK);
    let key = app.create_api_key(&admin, "ops").await;
    let by_key = app
        .client
        .get(app.url("/dashboard/schedules"))
        .header("x-api-key", key["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(by_key.status(), StatusCode::OK);

    // Signing out drops the cookie.
    let csrf = csrf_of(&overview);
    let out = post_form(&app, cookie, "/dashboard/logout", &csrf, None).await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_cookie_dropped(&out);
}

#[tokio::test]
async fn signing_out_ends_the_cookies_token_and_a_bad_credential_beside_a_good_cookie_is_refused() {
    let app = spawn_app().await;
    let admin = app.create_user(Role::Admin).await;
    let cookie = sign_in(&app, &admin).await;
    let token = cookie.trim_start_matches("keel_dashboard=").to_owned();
    keel_testing::record_secret(&token);

    // A credential that is presented and invalid is refused, whatever else comes.
    for (name, value) in [
        ("authorization", "Bearer not-a-token"),
        ("authorization", "Basic YWRtaW46YWRtaW4="),
        ("x-api-key", "keel_00000000_not-a-key"),
    ] {
        let response = browser()
            .get(app.url("/dashboard"))
            .header(header::COOKIE, &cookie)
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{name}: {value}"
        );
    }

    let (status, overview) = page(&app, &cookie, "/dashboard").await;
    assert_eq!(status, StatusCode::OK);
    // The cookie's token works as a bearer token while the session lasts…
    assert_eq!(app.me(&token).await.status(), StatusCode::OK);
    let out = post_form(
        &app,
        &cookie,
        "/dashboard/logout",
        &csrf_of(&overview),
        None,
    )
    .await;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    // …and not after signing out, as a copy of the cookie or as a bearer.
    assert_eq!(app.me(&token).await.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = page(&app, &cookie, "/dashboard").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "back to sign-in");
    // The admin's other sessions go on.
    assert_eq!(app.me(&admin.token).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn users_who_are_not_admins_are_refused_and_a_session_ends_with_its_token() {
    let app = spawn_app().await;
    let user = app.create_user(Role::User).await;
    let response = submit_login(&app, &user.user.username, &user.password, None).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("the dashboard is for admins")
    );
    let by_token = app.get_as("/dashboard", &user.token).await;
    assert_eq!(by_token.status(), StatusCode::FORBIDDEN);

    // A demoted admin's cookie stops working at once.
    let admin = app.create_user(Role::Admin).await;
    let cookie = sign_in(&app, &admin).await;
    assert_eq!(page(&app, &cookie, "/dashboard").await.0, StatusCode::OK);
    let superadmin = app.create_user(Role::Superadmin).await;
    let demoted = app
        .send(
            Method::PUT,
            &format!("/api/v1/users/{}/role", admin.user.id),
            &superadmin.token,
            Some(&json!({"role": "user"})),
        )
        .await;
    assert_eq!(demoted.status(), StatusCode::OK);
    let (status, _) = page(&app, &cookie, "/dashboard").await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "the old session signs in again"
    );
}

#[tokio::test]
async fn actions_need_the_sessions_csrf_token_and_our_origin() {
    let app = spawn_app().await;
    let admin = app.create_user(Role::Admin).await;
    let cookie = sign_in(&app, &admin).await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let task = app
        .created_task(
            &admin.token,
            &json!({"kind": "noop", "name": "later", "scheduled_at": later}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    let path = format!("/dashboard/tasks/{id}");
    let (status, html) = page(&app, &cookie, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Run now") && html.contains("Cancel") && !html.contains(">Retry<"));
    let csrf = csrf_of(&html);

    let cancel = format!("{path}/cancel");
    // Signed out meanwhile: after signing in, back to the task's page (not
    // to the POST-only action).
    let signed_out = browser()
        .post(app.url(&cancel))
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        signed_out.headers()[header::LOCATION].to_str().unwrap(),
        format!("/dashboard/login?next=%2Fdashboard%2Ftasks%2F{id}")
    );
    let forged = post_form(
        &app,
        &cookie,
        &cancel,
        "0123456789abcdef0123456789abcdef",
        None,
    )
    .await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(forged.text().await.unwrap().contains("csrf_failed"));
    let cross = post_form(&app, &cookie, &cancel, &csrf, Some("https://evil.example")).await;
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    assert!(cross.text().await.unwrap().contains("cross_origin"));
    assert_eq!(task_row(&app, id).await.0, "pending", "nothing happened");

    // Run now: the task waiting an hour is due at once.
    let own_origin = app.address.clone();
    let run = post_form(
        &app,
        &cookie,
        &format!("{path}/run-now"),
        &csrf,
        Some(&own_origin),
    )
    .await;
    assert_eq!(run.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        run.headers()[header::LOCATION].to_str().unwrap(),
        format!("{path}?done=due_now")
    );
    let due: bool =
        sqlx::query_scalar("SELECT next_attempt_at <= now() FROM tasks WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!(due);
    assert!(app.pushes_of(id).await >= 2, "pushed again to run now");

    let done = post_form(&app, &cookie, &cancel, &csrf, Some(&own_origin)).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(task_row(&app, id).await.0, "cancelled");
    let (_, html) = page(&app, &cookie, &format!("{path}?done=cancelled")).await;
    assert!(html.contains("Done: cancelled.") && html.contains(">Retry<"));

    let unknown = post_form(&app, &cookie, &format!("{path}/explode"), &csrf, None).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    // An action the task's state does not allow is the API's 409, as a page.
    let again = post_form(&app, &cookie, &cancel, &csrf, None).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert!(again.text().await.unwrap().contains("task_not_cancellable"));
    let (status, html) = page(
        &app,
        &cookie,
        &format!("/dashboard/tasks/{}", uuid::Uuid::now_v7()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("no such task"));
}

#[tokio::test]
async fn pages_list_filter_and_page_tasks_and_switch_schedules() {
    let app = spawn_app().await;
    let admin = app.create_user(Role::Admin).await;
    let other = app.create_user(Role::User).await;
    for i in 0..55 {
        app.created_task(
            &other.token,
            &json!({"kind": "noop", "name": format!("bulk {i}")}),
        )
        .await;
    }
    app.created_task(
        &admin.token,
        &json!({"kind": "echo", "name": "<b>shout</b>", "payload": {"message": "x"}}),
    )
    .await;
    let cookie = sign_in(&app, &admin).await;

    let (_, all) = page(&app, &cookie, "/dashboard/tasks").await;
    assert!(
        all.contains(r#"<span class="count">56</span>"#),
        "everybody's tasks"
    );
    assert!(all.contains("page 1 of 2"));
    assert!(
        all.contains("&lt;b&gt;shout") && !all.contains("<b>shout</b>"),
        "escaped"
    );
    let (_, second) = page(&app, &cookie, "/dashboard/tasks?page=2").await;
    assert_eq!(second.matches("data-task-id=").count(), 6);
    let (_, echo) = page(&app, &cookie, "/dashboard/tasks?status=&kind=echo").await;
    assert_eq!(echo.matches("data-task-id=").count(), 1);
    let (_, pending) = page(&app, &cookie, "/dashboard/tasks?status=pending").await;
    assert!(pending.contains(r#"<span class="count">56</span>"#));
    let (status, _) = page(&app, &cookie, "/dashboard/tasks?status=bogus").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let (_, overview) = page(&app, &cookie, "/dashboard").await;
    let tasks_row = overview.split("<td>tasks</td>").nth(1).unwrap();
    assert!(
        tasks_row.contains(r#"status=pending">56</a>"#),
        "{tasks_row}"
    );

    let nightly = json!({"name": "nightly", "cron": "0 3 * * *", "kind": "noop"});
    let created = app
        .post_as("/api/v1/schedules", &admin.token, &nightly)
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let schedule: Value = created.json().await.unwrap();
    // The scheduler makes the built-in ones at start; this test runs none.
    let system = crate::schedules::add_system_schedule(&app).await;
    let (_, html) = page(&app, &cookie, "/dashboard/schedules").await;
    assert!(
        html.contains("system.purge_expired"),
        "built-in schedules are listed"
    );
    let csrf = csrf_of(&html);
    let off = post_form(
        &app,
        &cookie,
        &format!(
            "/dashboard/schedules/{}/disable",
            schedule["id"].as_str().unwrap()
        ),
        &csrf,
        None,
    )
    .await;
    assert_eq!(off.status(), StatusCode::SEE_OTHER);
    let enabled: bool = sqlx::query_scalar("SELECT enabled FROM schedules WHERE name = 'nightly'")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert!(!enabled);
    let system = system["id"].as_str().unwrap();
    let refused = post_form(
        &app,
        &cookie,
        &format!("/dashboard/schedules/{system}/disable"),
        &csrf,
        None,
    )
    .await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert!(refused.text().await.unwrap().contains("schedule_read_only"));
}

#[tokio::test]
async fn assets_are_served_by_the_binary_under_a_strict_csp() {
    let app = spawn_app().await;
    for (path, content_type) in [
        ("/dashboard/assets/dashboard.css", "text/css"),
        ("/dashboard/assets/dashboard.js", "text/javascript"),
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(
            response.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(content_type)
        );
    }
    let login = app.get("/dashboard/login").await;
    let csp = login.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("form-action 'self'"),
        "{csp}"
    );
    assert_eq!(login.headers()[header::CACHE_CONTROL], "no-store");
}

/// A webhook that answers 500 until it is told to come up.
async fn flaky_webhook() -> (u16, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let up = Arc::new(AtomicBool::new(false));
    let flag = up.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = vec![0; 16384];
            let _ = socket.read(&mut buf).await;
            let reply = if flag.load(Ordering::SeqCst) {
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
            } else {
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown"
            };
            let _ = socket.write_all(reply.as_bytes()).await;
        }
    });
    (port, up)
}

/// Where test artifacts (screenshots) go: `target/test-artifacts/`.
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn in_chromium_an_admin_retries_a_failed_task_sees_a_live_worker_and_disables_a_schedule() {
    let (port, webhook_up) = flaky_webhook().await;
    let stack = stack_with(&[
        "--rate-limit-enabled",
        "false",
        "--task-http-allowed-hosts",
        "127.0.0.1",
    ])
    .await;
    let app = &stack.app;
    let admin = app.create_user(Role::Admin).await;
    let task = app
        .created_task(
            &admin.token,
            &json!({"kind": "http_request", "name": "webhook", "max_attempts": 1,
                    "payload": {"method": "POST", "url": format!("http://127.0.0.1:{port}/hook")}}),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    let mut status = String::new();
    for _ in 0..200 {
        status = task_row(app, &id).await.0;
        if status == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, "failed", "the webhook is down, so the task fails");
    webhook_up.store(true, Ordering::SeqCst);

    let hourly = json!({"name": "hourly digest", "cron": "0 * * * *", "kind": "noop"});
    let schedule = app
        .post_as("/api/v1/schedules", &admin.token, &hourly)
        .await;
    assert_eq!(schedule.status(), StatusCode::CREATED);
    let workers: Value = app
        .get_as("/api/v1/admin/workers", &admin.token)
        .await
        .json()
        .await
        .unwrap();
    let worker_id = workers[0]["id"]
        .as_str()
        .expect("the worker heartbeats")
        .to_owned();

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let artifacts = artifacts();
    let output = tokio::process::Command::new("node")
        .arg("dashboard.mjs")
        .current_dir(&dir)
        .env("KEEL_URL", &app.address)
        .env("KEEL_USERNAME", admin.user.username.as_str())
        .env("KEEL_PASSWORD", &admin.password)
        .env("KEEL_TASK_ID", &id)
        .env("KEEL_WORKER_ID", &worker_id)
        .env("KEEL_SCHEDULE", "hourly digest")
        .env("KEEL_ARTIFACTS", &artifacts)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .expect("the browser test finishes within two minutes")
        .expect("node runs (the test command installs it and playwright-core)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");

    // What the clicks did, by the database.
    let (status, attempts) = task_row(app, &id).await;
    assert_eq!(
        (status.as_str(), attempts),
        ("completed", 1),
        "retried from a fresh set of attempts"
    );
    let enabled: bool =
        sqlx::query_scalar("SELECT enabled FROM schedules WHERE name = 'hourly digest'")
            .fetch_one(app.pool())
            .await
            .unwrap();
    assert!(!enabled, "the schedule was disabled");
    for shot in ["dashboard-task.png", "dashboard-overview.png"] {
        let size = std::fs::metadata(artifacts.join(shot))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(size > 10_000, "{shot} was saved ({size} bytes)");
    }
}

#[tokio::test]
async fn the_workers_page_marks_a_worker_stale_after_missed_heartbeats() {
    use keel_shared::{queue::Queue, workers::WorkerCard};
    use redis::AsyncCommands as _;

    let app = spawn_app().await;
    let admin = app.create_user(Role::Admin).await;
    let redis = app.redis();
    let now = chrono::Utc::now();
    let card = |id: &str, seen: chrono::DateTime<chrono::Utc>| WorkerCard {
        id: id.into(),
        hostname: "box-1".into(),
        pid: 4242,
        queues: vec![Queue::Tasks],
        kinds: vec!["echo".into(), "sleep".into()],
        concurrency: 8,
        version: "0.1.0".into(),
        in_flight: 3,
        processed: 120,
        failed: 2,
        started_at: now - chrono::Duration::hours(1),
        last_seen: seen,
    };
    let mut live = card("live-worker", now);
    keel_shared::workers::heartbeat(&redis, &mut live)
        .await
        .unwrap();
    // A worker whose last heartbeat was 20 s ago, written as its card would be.
    let silent = card("silent-worker", now - chrono::Duration::seconds(20));
    let mut conn = redis.conn();
    let _: () = conn
        .set(
            redis.key("worker:silent-worker"),
            serde_json::to_string(&silent).unwrap(),
        )
        .await
        .unwrap();
    let _: () = conn
        .zadd(
            redis.key("workers"),
            "silent-worker",
            silent.last_seen.timestamp_millis(),
        )
        .await
        .unwrap();

    let html = app
        .get_as("/dashboard/workers", &admin.token)
        .await
        .text()
        .await
        .unwrap();
    assert!(html.contains("1 alive"), "{html}");
    assert!(html.contains("<td>echo, sleep</td>"), "the kinds each runs");
    let row = |id: &str| {
        let start = html.find(&format!(r#"data-worker-id="{id}""#)).unwrap();
        html[start..start + html[start..].find("</tr>").unwrap()].to_owned()
    };
    let live_row = row("live-worker");
    assert!(live_row.contains(">alive<") && live_row.contains("3/8") && live_row.contains("box-1"));
    assert!(row("silent-worker").contains(">stale<"));
}

/// Posts the tasks page's bulk form: `fields` beside the session's token.
async fn post_bulk(
    app: &TestApp,
    cookie: &str,
    csrf: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let mut form = vec![("csrf", csrf)];
    form.extend_from_slice(fields);
    browser()
        .post(app.url("/dashboard/tasks/bulk"))
        .header(header::COOKIE, cookie)
        .form(&form)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_bulk_action_shows_what_it_will_take_and_acts_only_once_confirmed() {
    let app = spawn_app().await;
    let admin = app.create_user(Role::Admin).await;
    let user = app.create_user(Role::User).await;
    for i in 0..3 {
        app.created_task(
            &user.token,
            &json!({"kind": "noop", "name": format!("n{i}")}),
        )
        .await;
    }
    app.created_task(&user.token, &json!({"kind": "echo", "name": "e"}))
        .await;
    let cookie = sign_in(&app, &admin).await;
    let (_, html) = page(&app, &cookie, "/dashboard/tasks?status=pending&kind=noop").await;
    assert!(
        html.contains(r#"action="/dashboard/tasks/bulk""#),
        "the bulk form"
    );
    let csrf = csrf_of(&html);

    let fields = [
        ("action", "cancel"),
        ("status", "pending"),
        ("kind", "noop"),
    ];
    let review = post_bulk(&app, &cookie, &csrf, &fields).await;
    assert_eq!(review.status(), StatusCode::OK);
    let review = review.text().await.unwrap();
    assert!(review.contains("Cancel 3 tasks?"), "{review}");
    assert!(review.contains(r#"name="confirm" value="yes""#));
    let pending: i64 = app
        .scalar("SELECT count(*) FROM tasks WHERE status = 'pending'")
        .await;
    assert_eq!(pending, 4, "nothing changes before the confirmation");

    // A noop created after the review is not taken: the page said three.
    app.created_task(&user.token, &json!({"kind": "noop", "name": "late"}))
        .await;
    let marker = r#"name="reviewed_at" value=""#;
    let at = review.find(marker).expect("the review's time") + marker.len();
    let reviewed_at = &review[at..at + review[at..].find('"').unwrap()];
    let unreviewed = [
        ("action", "cancel"),
        ("status", "pending"),
        ("kind", "noop"),
        ("confirm", "yes"),
    ];
    let refused = post_bulk(&app, &cookie, &csrf, &unreviewed).await;
    assert_eq!(
        refused.status(),
        StatusCode::NOT_FOUND,
        "no confirmation without its review"
    );
    let mut confirmed = unreviewed.to_vec();
    confirmed.push(("reviewed_at", reviewed_at));
    let done = post_bulk(&app, &cookie, &csrf, &confirmed).await;
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let location = done.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        location,
        "/dashboard/tasks?status=pending&kind=noop&done=cancelled:3"
    );
    let (_, after) = page(&app, &cookie, &location).await;
    assert!(
        after.contains("Done: cancelled:3."),
        "the page says what happened"
    );
    let cancelled: i64 = app
        .scalar("SELECT count(*) FROM tasks WHERE status = 'cancelled' AND kind = 'noop'")
        .await;
    assert_eq!(cancelled, 3, "the echo and the late noop are not taken");
    let late: String = app
        .scalar("SELECT status FROM tasks WHERE name = 'late'")
        .await;
    assert_eq!(late, "pending", "created after the review");

    let forged = post_bulk(&app, &cookie, "x", &confirmed).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let unknown = post_bulk(&app, &cookie, &csrf, &[("action", "explode")]).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}
