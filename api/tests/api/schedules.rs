//! `/api/v1/schedules`: admins only; create, read, list, patch, delete;
//! validation (cron fields, timezone, kind, payload, reserved names);
//! `next_run_at`; the read-only built-in schedules; run-now. No scheduler or
//! worker runs: a task "queued" is one found in Redis.

use chrono::{DateTime, LocalResult, NaiveTime, TimeZone as _, Timelike as _, Utc};
use keel_shared::{
    db::schedules::{self, SystemKind, SystemSchedule},
    domain::Role,
    timetable::Timetable,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    helpers::{
        TestApp, TestUser, assert_invalid, assert_names, assert_problem, fields, spawn_app_with,
    },
    refusals::{FORBIDDEN, NOT_AUTHENTICATED, assert_refused},
};

/// Many requests per test: the general rate limit would get in the way.
async fn spawn() -> TestApp {
    spawn_app_with(&["--rate-limit-enabled", "false"]).await
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    user: &TestUser,
    body: Option<&Value>,
) -> reqwest::Response {
    app.send(method, path, &user.token, body).await
}

async fn create(app: &TestApp, admin: &TestUser, body: &Value) -> reqwest::Response {
    send(app, Method::POST, "/api/v1/schedules", admin, Some(body)).await
}

/// Creates a schedule through the API and returns its JSON.
async fn created(app: &TestApp, admin: &TestUser, body: &Value) -> Value {
    let response = create(app, admin, body).await;
    assert_eq!(response.status(), StatusCode::CREATED, "create {body}");
    response.json().await.unwrap()
}

/// A valid body named `name`, firing daily.
fn schedule(name: &str) -> Value {
    json!({"name": name, "cron": "0 3 * * *", "kind": "echo", "payload": {"message": "hi"}})
}

fn path(schedule: &Value) -> String {
    format!("/api/v1/schedules/{}", schedule["id"].as_str().unwrap())
}

fn at(value: &Value) -> DateTime<Utc> {
    value
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp, not {value}"))
        .parse()
        .unwrap()
}

async fn count(app: &TestApp, table: &str) -> i64 {
    let query = match table {
        "schedules" => "SELECT count(*) FROM schedules",
        "tasks" => "SELECT count(*) FROM tasks",
        other => panic!("no count of {other}"),
    };
    app.scalar(query).await
}

/// `PATCH`es the schedule `made` with `body` as `admin`.
async fn patch(app: &TestApp, made: &Value, admin: &TestUser, body: &Value) -> reqwest::Response {
    app.patch_as(&path(made), &admin.token, body).await
}

pub async fn add_system_schedule(app: &TestApp) -> Value {
    schedules::ensure_system(
        app.pool(),
        &[SystemSchedule {
            name: "system.purge_expired",
            cron: "0 * * * *".to_owned(),
            kind: SystemKind::PurgeExpired,
        }],
    )
    .await
    .unwrap();
    let id: Uuid = app.scalar("SELECT id FROM schedules WHERE system").await;
    json!({"id": id})
}

#[tokio::test]
async fn a_schedule_is_created_read_listed_patched_and_deleted() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;

    let body = json!({
        "name": "  nightly report  ", "cron": "0 3 * * *", "timezone": "Europe/Berlin",
        "kind": "echo", "payload": {"message": "hi"},
    });
    let response = create(&app, &admin, &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let made: Value = response.json().await.unwrap();
    assert_eq!(location, path(&made));
    assert_eq!(made["name"], "nightly report", "the name is trimmed");
    assert_eq!(made["cron"], "0 3 * * *");
    assert_eq!(made["timezone"], "Europe/Berlin");
    assert_eq!(made["kind"], "echo");
    assert_eq!(made["payload"], json!({"message": "hi"}));
    assert_eq!(made["enabled"], true);
    assert_eq!(made["system"], false);
    assert!(at(&made["next_run_at"]) > Utc::now());
    assert!(made["last_run_at"].is_null() && made["last_status"].is_null());
    assert!(made.get("owner_id").is_none() && made.get("fire_from").is_none());
    let owner: Option<Uuid> = app.scalar("SELECT owner_id FROM schedules").await;
    assert_eq!(owner, Some(admin.user.id), "the creating admin owns it");

    let read = app.get_as(&path(&made), &admin.token).await;
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(read.json::<Value>().await.unwrap(), made);

    let list = app.get_as("/api/v1/schedules", &admin.token).await;
    assert_eq!(list.status(), StatusCode::OK);
    let page: Value = list.json().await.unwrap();
    assert_eq!(page["total"], 1);
    assert_eq!(
        (page["page"].clone(), page["size"].clone()),
        (json!(1), json!(20))
    );
    assert_eq!(page["pages"], 1);
    assert_eq!(page["items"][0]["id"], made["id"]);

    let weekly = json!({"name": "weekly report", "cron": "0 4 * * 1"});
    let patched = patch(&app, &made, &admin, &weekly).await;
    assert_eq!(patched.status(), StatusCode::OK);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["name"], "weekly report");
    assert_eq!(patched["cron"], "0 4 * * 1");
    assert_eq!(
        patched["timezone"], "Europe/Berlin",
        "untouched fields stay"
    );
    assert_eq!(patched["payload"], json!({"message": "hi"}));
    let expected = Timetable::parse("0 4 * * 1", "Europe/Berlin")
        .unwrap()
        .next_after(Utc::now())
        .unwrap();
    assert_eq!(
        at(&patched["next_run_at"]),
        expected,
        "next_run_at follows the new cron"
    );

    let deleted = app.delete_as(&path(&made), &admin.token).await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.get_as(&path(&made), &admin.token).await,
        StatusCode::NOT_FOUND,
        "schedule_not_found",
    )
    .await;
    assert_eq!(count(&app, "schedules").await, 0);
}

#[tokio::test]
async fn next_run_at_is_the_next_0230_on_the_berlin_wall_clock() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    let before = Utc::now();
    let made = created(
        &app,
        &admin,
        &json!({"name": "berlin", "cron": "30 2 * * *", "timezone": "Europe/Berlin", "kind": "noop"}),
    )
    .await;
    let after = Utc::now();
    let next = at(&made["next_run_at"]);
    assert!(next > after, "{next} is in the future");
    assert!(
        next <= before + chrono::Duration::hours(25),
        "{next} is within a day"
    );

    let table = Timetable::parse("30 2 * * *", "Europe/Berlin").unwrap();
    let berlin = table.timezone();
    let wall = next.with_timezone(&berlin);
    let half_past_two = NaiveTime::from_hms_opt(2, 30, 0).unwrap();
    let skipped = matches!(
        berlin.from_local_datetime(&wall.date_naive().and_time(half_past_two)),
        LocalResult::None
    );
    if skipped {
        // Spring forward: 02:30 does not exist, so it fires at the jump.
        assert_eq!((wall.hour(), wall.minute()), (3, 0), "{wall}");
    } else {
        assert_eq!(
            (wall.hour(), wall.minute(), wall.second()),
            (2, 30, 0),
            "{wall}"
        );
    }
    assert!(
        table.next_after(before) == Some(next) || table.next_after(after) == Some(next),
        "{next} is the timetable's next fire"
    );
}

#[tokio::test]
async fn five_and_six_field_crons_are_accepted() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    for (i, cron) in ["*/5 * * * *", "*/10 * * * * *", "0 9 * * 1-5", "@daily"]
        .into_iter()
        .enumerate()
    {
        let made = created(
            &app,
            &admin,
            &json!({"name": format!("cron {i}"), "cron": cron, "kind": "noop"}),
        )
        .await;
        assert_eq!(made["cron"], cron);
        assert_eq!(made["timezone"], "UTC", "the default timezone");
        assert_eq!(made["payload"], json!({}), "the default payload");
        let expected = Timetable::parse(cron, "UTC").unwrap();
        let next = at(&made["next_run_at"]);
        assert!(
            next > Utc::now() - chrono::Duration::seconds(10),
            "{cron}: {next}"
        );
        assert!(
            expected.next_after(next - chrono::Duration::seconds(1)) == Some(next),
            "{cron}: {next} is a fire time"
        );
    }
}

#[tokio::test]
async fn invalid_schedules_are_422_naming_the_field() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    let with = |change: Value| {
        let mut body = schedule("x");
        for (k, v) in change.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    // One case a line: (body, the field named, why it is refused).
    #[rustfmt::skip]
    let cases = [
        (with(json!({"cron": "0 25 * * *"})), "cron.hour", "hour 25"),
        (with(json!({"cron": "61 * * * *"})), "cron.minute", "minute 61"),
        (with(json!({"cron": "0 0 * * 8"})), "cron.day_of_week", "weekday 8"),
        (with(json!({"cron": "61 * * * * *"})), "cron.second", "second 61"),
        (with(json!({"cron": "* * * *"})), "cron", "4 fields"),
        (with(json!({"cron": "* * * * * * *"})), "cron", "7 fields"),
        (with(json!({"cron": "0 0 30 2 *"})), "cron", "30 February never comes"),
        (with(json!({"timezone": "Mars/Olympus"})), "timezone", "no such timezone"),
        (with(json!({"timezone": ""})), "timezone", "a blank timezone"),
        (with(json!({"kind": "nope"})), "kind", "unknown kind"),
        (with(json!({"kind": "abort"})), "kind", "a test-only kind is not offered"),
        (with(json!({"kind": "sleep", "payload": {"ms": "soon"}})), "payload.ms", "a payload field has the wrong type"),
        (with(json!({"payload": [1]})), "payload", "a payload that is no object"),
        (with(json!({"kind": "sleep", "payload": {}})), "payload", "the payload lacks a field"),
        (with(json!({"name": "system.x"})), "name", "a reserved name"),
        (with(json!({"name": "System.X"})), "name", "a reserved name in capitals"),
        (with(json!({"name": " "})), "name", "a blank name"),
        (with(json!({"name": "x".repeat(201)})), "name", "over 200 characters"),
        (json!({"cron": "* * * * *", "kind": "noop"}), "name", "no name"),
        (json!({"name": "x", "kind": "noop"}), "cron", "no cron"),
        (json!({"name": "x", "cron": "* * * * *"}), "kind", "no kind"),
        (with(json!({"owner_id": Uuid::new_v4()})), "owner_id", "an unknown field"),
        (with(json!({"enabled": "yes"})), "enabled", "a mistyped field"),
    ];
    for (body, field, reason) in cases {
        let problem = assert_invalid(create(&app, &admin, &body).await).await;
        assert_names(&problem, field, reason);
    }
    assert_eq!(count(&app, "schedules").await, 0, "nothing was created");
}

#[tokio::test]
async fn every_invalid_field_is_named_in_one_422() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    let body = json!({"name": "system.all", "cron": "0 25 * * *", "timezone": "Nowhere/Town", "kind": "nope"});
    let problem = assert_invalid(create(&app, &admin, &body).await).await;
    let mut names = fields(&problem);
    names.sort();
    assert_eq!(names, ["cron.hour", "kind", "name", "timezone"]);
}

#[tokio::test]
async fn a_taken_name_is_409_on_create_and_patch() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    created(&app, &admin, &schedule("daily")).await;
    let again = create(&app, &admin, &schedule("daily")).await;
    let other = created(&app, &admin, &schedule("other")).await;
    let renamed = patch(&app, &other, &admin, &json!({"name": " daily "})).await;
    for (case, response) in [("create", again), ("patch", renamed)] {
        assert_eq!(response.status(), StatusCode::CONFLICT, "{case}");
        assert_problem(response, StatusCode::CONFLICT, "schedule_name_taken").await;
    }
    assert_eq!(count(&app, "schedules").await, 2);
}

#[tokio::test]
async fn a_patch_is_checked_as_a_create_is() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    let made = created(&app, &admin, &schedule("checked")).await;
    let cases = [
        (json!({"cron": "0 25 * * *"}), "cron.hour"),
        (json!({"cron": "* *"}), "cron"),
        (json!({"timezone": "Mars/Olympus"}), "timezone"),
        (json!({"kind": "nope"}), "kind"),
        // The kept payload is checked against the new kind.
        (json!({"kind": "sleep"}), "payload"),
        (json!({"name": "system.mine"}), "name"),
        (json!({"system": false}), "system"),
    ];
    for (body, field) in cases {
        let problem = assert_invalid(patch(&app, &made, &admin, &body).await).await;
        assert_names(&problem, field, &body.to_string());
    }
    let now = app.get_json(&path(&made), &admin.token).await;
    assert_eq!(now, made, "nothing changed");

    // A kind and a payload that fit each other change together.
    let fitting = json!({"kind": "sleep", "payload": {"ms": 5}});
    let response = patch(&app, &made, &admin, &fitting).await;
    assert_eq!(response.status(), StatusCode::OK);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(
        (patched["kind"].clone(), patched["payload"].clone()),
        (json!("sleep"), json!({"ms": 5}))
    );
}

#[tokio::test]
async fn only_admins_may_use_schedules() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    let superadmin = app.create_user(Role::Superadmin).await;
    let user = app.create_user(Role::User).await;
    let made = created(&app, &admin, &schedule("guarded")).await;
    let one = path(&made);
    let run = format!("{one}/run-now");
    let routes = [
        (Method::GET, "/api/v1/schedules", None),
        (Method::POST, "/api/v1/schedules", Some(schedule("mine"))),
        (
            Method::POST,
            "/api/v1/schedules",
            Some(json!({"bad": true})),
        ),
        (Method::GET, one.as_str(), None),
        (Method::PATCH, one.as_str(), Some(json!({"enabled": false}))),
        (Method::DELETE, one.as_str(), None),
        (Method::POST, run.as_str(), None),
    ];
    for (method, route, body) in &routes {
        let response = send(&app, method.clone(), route, &user, body.as_ref()).await;
        assert_refused(response, FORBIDDEN).await;
        let mut anonymous = app.client.request(method.clone(), app.url(route));
        if let Some(body) = body {
            anonymous = anonymous.json(body);
        }
        let response = anonymous.send().await.unwrap();
        assert_refused(response, NOT_AUTHENTICATED).await;
    }
    assert_eq!(count(&app, "schedules").await, 1, "nothing was created");
    assert_eq!(count(&app, "tasks").await, 0, "nothing was run");
    let list = app.get_as("/api/v1/schedules", &superadmin.token).await;
    assert_eq!(list.status(), StatusCode::OK, "a superadmin is an admin");
}

#[tokio::test]
async fn unknown_schedules_are_404() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    let one = format!("/api/v1/schedules/{}", Uuid::new_v4());
    let run = format!("{one}/run-now");
    let routes = [
        (Method::GET, one.as_str(), None),
        (Method::PATCH, one.as_str(), Some(json!({"enabled": false}))),
        (Method::DELETE, one.as_str(), None),
        (Method::POST, run.as_str(), None),
    ];
    for (method, route, body) in routes {
        let response = send(&app, method, route, &admin, body.as_ref()).await;
        assert_problem(response, StatusCode::NOT_FOUND, "schedule_not_found").await;
    }
    let response = app
        .get_as("/api/v1/schedules/not-a-uuid", &admin.token)
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_disabled_schedule_has_no_next_run_and_re_enabling_computes_it() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    let mut body = schedule("sleepy");
    body["enabled"] = json!(false);
    let made = created(&app, &admin, &body).await;
    assert_eq!(made["enabled"], false);
    assert!(made["next_run_at"].is_null(), "{made}");

    let fire_from = || app.scalar::<DateTime<Utc>>("SELECT fire_from FROM schedules");
    let created_from = fire_from().await;
    // A rename is not a reschedule: the timetable keeps its start.
    let renamed = patch(&app, &made, &admin, &json!({"name": "still sleepy"})).await;
    assert_eq!(renamed.status(), StatusCode::OK);
    assert!(renamed.json::<Value>().await.unwrap()["next_run_at"].is_null());
    assert_eq!(fire_from().await, created_from, "a rename keeps fire_from");

    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let response = patch(&app, &made, &admin, &json!({"enabled": true})).await;
    assert_eq!(response.status(), StatusCode::OK);
    let enabled: Value = response.json().await.unwrap();
    assert_eq!(enabled["enabled"], true);
    let expected = Timetable::parse("0 3 * * *", "UTC")
        .unwrap()
        .next_after(Utc::now());
    assert_eq!(Some(at(&enabled["next_run_at"])), expected);
    assert!(
        fire_from().await > created_from,
        "re-enabling starts the timetable afresh"
    );

    let response = patch(&app, &made, &admin, &json!({"enabled": false})).await;
    let disabled: Value = response.json().await.unwrap();
    assert!(disabled["next_run_at"].is_null(), "{disabled}");
}

#[tokio::test]
async fn system_schedules_are_listed_but_read_only() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    let system = add_system_schedule(&app).await;
    created(&app, &admin, &schedule("a user schedule")).await;

    let page = app.get_json("/api/v1/schedules", &admin.token).await;
    assert_eq!(page["total"], 2);
    assert_eq!(
        page["items"][0]["name"], "system.purge_expired",
        "system first"
    );
    assert_eq!(page["items"][0]["system"], true);
    assert_eq!(page["items"][1]["system"], false);
    let read = app.get_json(&path(&system), &admin.token).await;
    assert_eq!(read["system"], true);

    let run = format!("{}/run-now", path(&system));
    let routes = [
        (
            Method::PATCH,
            path(&system),
            Some(json!({"enabled": false})),
        ),
        (Method::PATCH, path(&system), Some(json!({}))),
        (Method::DELETE, path(&system), None),
        (Method::POST, run, None),
    ];
    for (method, route, body) in routes {
        let response = send(&app, method, &route, &admin, body.as_ref()).await;
        assert_problem(response, StatusCode::FORBIDDEN, "schedule_read_only").await;
    }
    let after = app.get_json(&path(&system), &admin.token).await;
    assert_eq!(after, read, "untouched");
    assert_eq!(count(&app, "tasks").await, 0);
}

#[tokio::test]
async fn run_now_creates_the_schedules_task_and_records_the_run() {
    let app = spawn().await;
    let owner = app.create_user(Role::Admin).await;
    let other_admin = app.create_user(Role::Admin).await;
    let mut body = schedule("on demand");
    body["enabled"] = json!(false);
    let made = created(&app, &owner, &body).await;

    let before = Utc::now();
    let run = format!("{}/run-now", path(&made));
    let response = app.post_as(&run, &other_admin.token, None).await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "a disabled schedule runs too"
    );
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let task: Value = response.json().await.unwrap();
    let task_id = task["id"].as_str().unwrap();
    assert_eq!(location, format!("/api/v1/tasks/{task_id}"));
    assert_eq!(task["schedule_id"], made["id"]);
    assert_eq!(
        task["owner_id"],
        owner.user.id.to_string(),
        "the schedule's owner"
    );
    assert_eq!(
        (task["name"].clone(), task["kind"].clone()),
        (json!("on demand"), json!("echo"))
    );
    assert_eq!(task["payload"], json!({"message": "hi"}));
    assert_eq!(task["status"], "pending");
    assert_eq!(task["timeout_seconds"], 300, "the configured default");
    assert!(
        (at(&task["scheduled_at"]) - before).num_seconds().abs() < 60,
        "due now: {}",
        task["scheduled_at"]
    );
    assert_eq!(
        app.pushes_of_reaching(task_id, 1).await,
        1,
        "the job was pushed"
    );

    let read = app.get_as(&location, &owner.token).await;
    assert_eq!(read.status(), StatusCode::OK);
    let read: Value = read.json().await.unwrap();
    assert_eq!(read["schedule_id"], made["id"]);

    let after = app.get_json(&path(&made), &owner.token).await;
    assert_eq!(at(&after["last_run_at"]), at(&task["created_at"]));
    assert_eq!(after["last_status"], read["status"]);
    assert!(
        after["next_run_at"].is_null(),
        "still disabled, still no timetable"
    );
    assert_eq!(after["enabled"], false);

    // The last status is the task's, as it moves on.
    app.execute_with(
        "UPDATE tasks SET status = 'completed' WHERE id = $1::uuid",
        task_id,
    )
    .await;
    let later = app.get_json(&path(&made), &owner.token).await;
    assert_eq!(later["last_status"], "completed");
}

#[tokio::test]
async fn openapi_documents_every_schedule_route_as_secured() {
    let app = spawn().await;
    let doc = app.openapi().await;
    for (method, path) in [
        ("get", "/api/v1/schedules"),
        ("post", "/api/v1/schedules"),
        ("get", "/api/v1/schedules/{id}"),
        ("patch", "/api/v1/schedules/{id}"),
        ("delete", "/api/v1/schedules/{id}"),
        ("post", "/api/v1/schedules/{id}/run-now"),
    ] {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        assert_eq!(operation["tags"], json!(["schedules"]), "{method} {path}");
        assert!(operation["security"].is_array(), "{method} {path} security");
        for status in ["401", "403"] {
            assert!(
                operation["responses"][status].is_object(),
                "{method} {path} documents {status}"
            );
        }
    }
    let schemas = &doc["components"]["schemas"];
    assert!(schemas["Schedule"].is_object());
    let required = schemas["NewScheduleRequest"]["required"]
        .as_array()
        .unwrap();
    for name in ["name", "cron", "kind"] {
        assert!(required.contains(&json!(name)), "{name} is required");
    }
}
