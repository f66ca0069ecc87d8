//! The dashboard's buttons: retry, cancel and run a task now; enable and
//! disable a schedule. Each is a form POST with the session's CSRF token,
//! does what the API's own route does, and redirects back (303) to the page
//! it came from with what happened.

use axum::{Form, extract::State, http::HeaderMap, response::Redirect};
use serde::Deserialize;
use uuid::Uuid;

use super::{
    PageError,
    session::{Admin, check_origin},
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
