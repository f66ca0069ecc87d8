//! The dashboard's pages: overview, tasks (list and detail), workers and
//! schedules. Each reads what it shows straight from Postgres and Redis.

use axum::{
    extract::{Query, State},
    response::Html,
};
use chrono::Utc;
use keel_shared::{
    db::{
        schedules,
        task_stats::{self, Minute},
        tasks::{self, TaskFilter, TaskStatus},
    },
    kinds, workers,
};
use minijinja::{Value, context};
use serde::Deserialize;
use uuid::Uuid;

use super::{PageError, chart, session::Admin, views};
use crate::{
    error::{ApiError, FieldError},
    extract::AppPath,
    queues::queue_stats,
    state::AppState,
};

/// Rows on a page of tasks or schedules.
const PAGE_SIZE: i64 = 50;
/// The throughput chart's span.
const CHART_MINUTES: i32 = 60;

/// The ops dashboard: queues, workers, the oldest waiting task and the last
/// hour's throughput, for admins in a browser. Its other pages (tasks,
/// workers, schedules) and buttons are HTML forms under `/dashboard/`.
#[utoipa::path(get, path = "/dashboard", tag = "dashboard", operation_id = "dashboard",
    security(("dashboard_session" = []), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "the overview page", content_type = "text/html", body = String),
        (status = 303, description = "not signed in: to `/dashboard/login?next=…`",
            headers(("location" = String, description = "the sign-in page"))),
        (status = 401, description = "an `Authorization` or `X-API-Key` header that is malformed, invalid or expired (an HTML page)", content_type = "text/html", body = String),
        (status = 403, description = "signed in, but not an admin (an HTML page)", content_type = "text/html", body = String),
    ))]
pub async fn overview(
    State(state): State<AppState>,
    admin: Admin,
) -> Result<Html<String>, PageError> {
    let queues = queue_stats(&state).await?;
    let backlog = tasks::backlog(&state.db).await?;
    let minutes = task_stats::throughput(&state.db, CHART_MINUTES).await?;
    // The overview still renders when Redis is down; the worker count says so.
    let workers_alive = workers::count_alive(&state.redis).await.ok();
    let oldest_age = (backlog.due > 0).then(|| {
        // Whole seconds are all a person reads here.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let seconds = backlog.oldest_due_seconds as u64;
        views::describe(seconds)
    });
    let (completed, failed) = minutes
        .iter()
        .fold((0, 0), |(c, f), m: &Minute| (c + m.completed, f + m.failed));
    Ok(views::render(
        "overview.html",
        context! {
            page => "overview",
            refresh => 5,
            csrf => admin.csrf,
            me => admin.principal.user.username,
            queues => data(&queues),
            oldest_age,
            workers_alive,
            chart => chart::throughput_svg(&minutes),
            completed,
            failed,
        },
    ))
}

#[derive(Debug, Deserialize)]
pub struct TaskQuery {
    status: Option<String>,
    kind: Option<String>,
    page: Option<u32>,
    /// What a bulk action just did (`retried:12`).
    done: Option<String>,
}

pub async fn tasks(
    State(state): State<AppState>,
    admin: Admin,
    Query(query): Query<TaskQuery>,
) -> Result<Html<String>, PageError> {
    // Forms send empty fields for "any".
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(TaskStatus::parse(s).ok_or_else(|| {
            ApiError::validation(vec![FieldError {
                field: "status".into(),
                message: format!("unknown status {s:?}"),
            }])
        })?),
    };
    let kind = query.kind.filter(|k| !k.is_empty());
    let page = i64::from(query.page.unwrap_or(1).max(1));
    let filter = TaskFilter {
        owner: None,
        status,
        kind: kind.clone(),
    };
    let (rows, total) = tasks::list(&state.db, &filter, PAGE_SIZE, (page - 1) * PAGE_SIZE).await?;
    // The pager's links keep the filters, encoded (a kind may hold `&`).
    let filters = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("status", status.map_or("", TaskStatus::as_str))
        .append_pair("kind", kind.as_deref().unwrap_or(""))
        .finish();
    Ok(views::render(
        "tasks.html",
        context! {
            page => "tasks",
            refresh => 5,
            csrf => admin.csrf,
            me => admin.principal.user.username,
            tasks => data(&rows),
            total,
            number => page,
            pages => pages(total),
            status => status.map(TaskStatus::as_str),
            pager_base => format!("/dashboard/tasks?{filters}&"),
            kind,
            statuses => TaskStatus::ALL.map(TaskStatus::as_str),
            done => query.done,
        },
    ))
}

#[derive(Debug, Deserialize)]
pub struct Flash {
    done: Option<String>,
}

pub async fn task(
    State(state): State<AppState>,
    admin: Admin,
    AppPath(id): AppPath<Uuid>,
    Query(flash): Query<Flash>,
) -> Result<Html<String>, PageError> {
    let task = tasks::get(&state.db, id)
        .await?
        .ok_or_else(|| ApiError::not_found("no such task"))?;
    let history = tasks::history(&state.db, id).await?;
    let waiting = matches!(task.status, TaskStatus::Pending | TaskStatus::Retrying);
    Ok(views::render(
        "task.html",
        context! {
            page => "tasks",
            // A task that may still change is watched closely.
            refresh => (!task.status.is_finished()).then_some(2),
            csrf => admin.csrf,
            me => admin.principal.user.username,
            payload => pretty(&task.payload),
            result => task.result.as_ref().map(pretty),
            can_retry => matches!(
                task.status,
                TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::Expired
            ),
            can_cancel => waiting
                || (task.status == TaskStatus::Running
                    && kinds::find(&task.kind).is_none_or(|k| k.interruptible)),
            can_run_now => waiting && task.next_attempt_at > Utc::now(),
            task => data(&task),
            history => data(&history),
            done => flash.done,
        },
    ))
}

pub async fn workers(
    State(state): State<AppState>,
    admin: Admin,
) -> Result<Html<String>, PageError> {
    let now = Utc::now();
    let cards = workers::list_recent(&state.redis).await?;
    let rows: Vec<_> = cards
        .iter()
        .map(|card| context! { card => data(card), stale => card.is_stale(now) })
        .collect();
    let alive = cards.iter().filter(|c| !c.is_stale(now)).count();
    Ok(views::render(
        "workers.html",
        context! {
            page => "workers",
            refresh => 5,
            csrf => admin.csrf,
            me => admin.principal.user.username,
            workers => rows,
            alive,
        },
    ))
}

#[derive(Debug, Deserialize)]
pub struct PageNumber {
    page: Option<u32>,
    done: Option<String>,
}

pub async fn schedules(
    State(state): State<AppState>,
    admin: Admin,
    Query(query): Query<PageNumber>,
) -> Result<Html<String>, PageError> {
    let page = i64::from(query.page.unwrap_or(1).max(1));
    let (rows, total) = schedules::list(&state.db, PAGE_SIZE, (page - 1) * PAGE_SIZE).await?;
    Ok(views::render(
        "schedules.html",
        context! {
            page => "schedules",
            csrf => admin.csrf,
            me => admin.principal.user.username,
            schedules => data(&rows),
            total,
            number => page,
            pages => pages(total),
            done => query.done,
        },
    ))
}

/// Rows and records as template values.
fn data<T: serde::Serialize>(value: &T) -> Value {
    Value::from(minijinja::value::Serde(value))
}

fn pages(total: i64) -> i64 {
    ((total + PAGE_SIZE - 1) / PAGE_SIZE).max(1)
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}
