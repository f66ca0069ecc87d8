//! The dashboard's buttons: retry, cancel and run a task now; retry or
//! cancel every task a filter shows (after a confirmation page); enable and
//! disable a schedule. Each is a form POST with the session's CSRF token,
//! does what the API's own route does, and redirects back (303) to the page
//! it came from with what happened.

use axum::{
    Form,
    extract::State,
    http::HeaderMap,
    response::{Html, IntoResponse as _, Redirect, Response},
};
use keel_shared::db::tasks::{BulkFilter, TaskStatus, count_matching};
use minijinja::context;
use serde::Deserialize;
use uuid::Uuid;

use super::{
    PageError,
    session::{Admin, check_origin},
    views,
};
use crate::{error::ApiError, extract::AppPath, schedules, state::AppState, tasks};

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    csrf: String,
}

/// Every action's guard: same origin, and this session's token.
fn allowed(admin: &Admin, headers: &HeaderMap, form: &ActionForm) -> Result<(), PageError> {
    check_origin(headers)?;
    admin.check_csrf(&form.csrf)
}

/// A bulk action's form: the tasks page's filter, the action, and whether
/// the confirmation page was seen.
#[derive(Debug, Deserialize)]
pub struct BulkForm {
    csrf: String,
    action: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    kind: String,
    confirm: Option<String>,
    /// When the confirmation page counted the tasks: the action takes none
    /// created since, so it does no more than the page said.
    reviewed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `POST /dashboard/tasks/bulk`: first a page saying how many tasks the
/// filter matches, with a button that posts again with `confirm`; then the
/// action, and back to the tasks page with what it changed.
pub async fn bulk(
    State(state): State<AppState>,
    admin: Admin,
    headers: HeaderMap,
    Form(form): Form<BulkForm>,
) -> Result<Response, PageError> {
    check_origin(&headers)?;
    admin.check_csrf(&form.csrf)?;
    let action = match form.action.as_str() {
        "retry" => tasks::BulkAction::Retry,
        "cancel" => tasks::BulkAction::Cancel,
        _ => return Err(no_such_action()),
    };
    let status = match form.status.as_str() {
        "" => None,
        s => Some(TaskStatus::parse(s).ok_or_else(no_such_action)?),
    };
    let kind = Some(form.kind.clone()).filter(|k| !k.is_empty());
    let mut filter = BulkFilter {
        status,
        kind: kind.clone(),
        ..BulkFilter::default()
    };
    let filters = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("status", &form.status)
        .append_pair("kind", &form.kind)
        .finish();
    let back = format!("/dashboard/tasks?{filters}");
    if form.confirm.as_deref() != Some("yes") {
        let reviewed_at = chrono::Utc::now();
        filter.created_before = Some(reviewed_at);
        let matched = count_matching(&state.db, &filter).await?;
        let page: Html<String> = views::render(
            "bulk.html",
            context! {
                page => "tasks",
                csrf => admin.csrf,
                me => admin.principal.user.username,
                action => form.action,
                status => status.map(TaskStatus::as_str),
                kind,
                matched,
                back,
                reviewed_at => reviewed_at.to_rfc3339(),
            },
        );
        return Ok(page.into_response());
    }
    // A confirmation without its review's time is refused, not widened.
    let Some(reviewed_at) = form.reviewed_at else {
        return Err(no_such_action());
    };
    filter.created_before = Some(reviewed_at);
    let (_, changed) = tasks::bulk(&state, &admin.principal, action, &filter).await?;
    tracing::info!(
        action = form.action,
        changed,
        "bulk task action from the dashboard"
    );
    let done = format!(
        "{}:{changed}",
        if action == tasks::BulkAction::Retry {
            "retried"
        } else {
            "cancelled"
        }
    );
    Ok(Redirect::to(&format!("{back}&done={done}")).into_response())
}

fn no_such_action() -> PageError {
    ApiError::not_found("no such action").into()
}

/// `POST /dashboard/tasks/{id}/{retry|cancel|run-now}`.
pub async fn task(
    State(state): State<AppState>,
    admin: Admin,
    AppPath((id, action)): AppPath<(Uuid, String)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<Redirect, PageError> {
    allowed(&admin, &headers, &form)?;
    let principal = &admin.principal;
    let done = match action.as_str() {
        "retry" => tasks::retry(&state, principal, id).await.map(|_| "retried"),
        "cancel" => tasks::cancel(&state, principal, id)
            .await
            .map(|done| match done {
                tasks::Cancelled::Done(_) => "cancelled",
                tasks::Cancelled::Requested(_) => "cancel_requested",
            }),
        "run-now" => tasks::run_now(&state, principal, id)
            .await
            .map(|_| "due_now"),
        _ => return Err(no_such_action()),
    }?;
    tracing::info!(task_id = %id, done, "task action from the dashboard");
    Ok(Redirect::to(&format!("/dashboard/tasks/{id}?done={done}")))
}

/// `POST /dashboard/schedules/{id}/{enable|disable}`.
pub async fn schedule(
    State(state): State<AppState>,
    admin: Admin,
    AppPath((id, action)): AppPath<(Uuid, String)>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Result<Redirect, PageError> {
    allowed(&admin, &headers, &form)?;
    let enabled = match action.as_str() {
        "enable" => true,
        "disable" => false,
        _ => return Err(no_such_action()),
    };
    let schedule = schedules::set_enabled(&state, id, enabled).await?;
    tracing::info!(schedule_id = %id, enabled, "schedule switched from the dashboard");
    let name: String = url::form_urlencoded::byte_serialize(schedule.name.as_bytes()).collect();
    Ok(Redirect::to(&format!(
        "/dashboard/schedules?done={action}d:{name}"
    )))
}
