//! `/api/v1/schedules` (admins only): cron schedules that create tasks,
//! their edits, and running one now. The built-in `system` schedules are
//! listed beside them but never edited, deleted or run from here.
//!
//! A bad cron expression is a 422 naming the part at fault: `cron` for the
//! expression as a whole (the wrong number of fields, or one that never
//! fires, such as 30 February), `cron.<field>` for one field (`cron.second`,
//! `cron.minute`, `cron.hour`, `cron.day_of_month`, `cron.month`,
//! `cron.day_of_week`).

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use keel_shared::{
    db::{
        self,
        schedules::Schedule,
        tasks::{NewTask, Task},
    },
    domain::Role,
};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Principal,
    error::{ApiError, OnConstraint as _},
    extract::{AppJson, AppPath, AppQuery, JsonBytes},
    openapi::{AdminOnly, JsonBodyErrors, SignedIn, ValidationFailed},
    pagination::{Page, PageQuery, PageRequest},
    problems::problem_response,
    schedules::{self, Draft, NAME_TAKEN, editable, no_such_schedule},
    state::AppState,
    tasks,
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_schedules, create_schedule))
        .routes(routes!(get_schedule, update_schedule, delete_schedule))
        .routes(routes!(run_now))
}

/// A schedule to create. `name`, `cron` and `kind` are required.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "nightly report", "cron": "30 2 * * *", "timezone": "Europe/Berlin", "kind": "echo",
    "payload": {"message": "hello"}, "enabled": true
}))]
pub struct NewScheduleRequest {
    /// 1 to 200 characters, not all white space, unique; not starting with `system.`.
    #[schema(required = true, value_type = String, example = "nightly report", min_length = 1,
        max_length = 200, pattern = r"[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")]
    pub name: Option<String>,
    /// 5 fields (`minute hour day month weekday`, as crontab) or 6 (a leading `second`).
    #[schema(required = true, value_type = String, example = "30 2 * * *")]
    pub cron: Option<String>,
    /// The IANA timezone the cron is read in; `UTC` when absent.
    #[schema(value_type = Option<crate::openapi::Timezone>, default = "UTC")]
    pub timezone: Option<String>,
    /// One of `GET /api/v1/tasks/kinds`.
    #[schema(required = true, value_type = String, example = "echo")]
    pub kind: Option<String>,
    /// Checked against the kind's `payload_schema`; `{}` when absent.
    #[schema(value_type = Option<Object>, example = json!({"message": "hello"}))]
    pub payload: Option<Value>,
    /// `true` when absent.
    #[schema(default = true)]
    pub enabled: Option<bool>,
}

/// Changes to a schedule: any subset of the fields; absent or `null` ones
/// stay as they are.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"cron": "0 3 * * 1-5", "enabled": false}))]
pub struct SchedulePatch {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: Option<String>,
    pub cron: Option<String>,
    #[schema(value_type = Option<crate::openapi::Timezone>)]
    pub timezone: Option<String>,
    pub kind: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Value>,
    pub enabled: Option<bool>,
}

impl SchedulePatch {
    /// The fields this patch sets, over `draft`.
    fn apply(self, draft: &mut Draft) {
        if let Some(name) = self.name {
            draft.name = Some(name);
        }
        if let Some(cron) = self.cron {
            draft.cron = Some(cron);
        }
        if let Some(timezone) = self.timezone {
            draft.timezone = timezone;
        }
        if let Some(kind) = self.kind {
            draft.kind = Some(kind);
        }
        if let Some(payload) = self.payload {
            draft.payload = payload;
        }
        if let Some(enabled) = self.enabled {
            draft.enabled = enabled;
        }
    }
}

impl From<NewScheduleRequest> for Draft {
    fn from(request: NewScheduleRequest) -> Self {
        Self {
            name: request.name,
            cron: request.cron,
            timezone: request.timezone.unwrap_or_else(|| "UTC".to_owned()),
            kind: request.kind,
            payload: request
                .payload
                .unwrap_or_else(|| Value::Object(serde_json::Map::new())),
            enabled: request.enabled.unwrap_or(true),
        }
    }
}

fn with_location(mut response: Response, path: String) -> Response {
    if let Ok(value) = HeaderValue::from_str(&path) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

problem_response!(
    /// 404 `schedule_not_found` (`not_found` for an id that is not a UUID).
    pub ScheduleNotFound = [ScheduleNotFound, NotFound]
);

problem_response!(
    /// 403: not an admin (`forbidden`), or a built-in schedule (`schedule_read_only`).
    pub ScheduleForbidden = [ScheduleReadOnly, Forbidden]
);

/// Every schedule, built-in ones first, then by name.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules", security(("bearer" = []), ("api_key" = [])),
    params(PageQuery),
    responses(
        AdminOnly,
        (status = 200, description = "A page of schedules, built-in ones first, then by name", body = Page<Schedule>,
            example = json!({"items": [Schedule::example()], "total": 1, "page": 1, "size": 20, "pages": 1})),
        (status = 422, response = ValidationFailed),
    ))]
#[tracing::instrument(skip_all)]
async fn list_schedules(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(query): AppQuery<PageQuery>,
) -> Result<AppJson<Page<Schedule>>, ApiError> {
    principal.require(Role::Admin)?;
    let page = PageRequest::parse(query)?;
    let (items, total) = db::schedules::list(&state.db, page.limit(), page.offset()).await?;
    Ok(AppJson(Page::new(items, total, page)))
}

/// Creates a schedule owned by the caller: its fires create the caller's
/// tasks. `next_run_at` is the first fire after now; `null` when disabled.
#[utoipa::path(post, path = "/api/v1/schedules", tag = "schedules", security(("bearer" = []), ("api_key" = [])),
    request_body = NewScheduleRequest,
    responses(
        JsonBodyErrors, AdminOnly,
        (status = 201, description = "The schedule, with its first `next_run_at`", body = Schedule,
            headers(("Location" = String, description = "The schedule's URL"))),
        (status = 409, response = inline(NameTaken)),
        (status = 422, response = ValidationFailed),
    ))]
#[tracing::instrument(skip_all)]
async fn create_schedule(
    State(state): State<AppState>,
    principal: Principal,
    body: JsonBytes,
) -> Result<Response, ApiError> {
    principal.require(Role::Admin)?;
    let request: NewScheduleRequest = body.parse()?;
    let spec = schedules::validate(request.into(), &state, Utc::now())?;
    let schedule = db::schedules::insert(&state.db, principal.id(), &spec)
        .await
        .on_constraint(NAME_TAKEN)?;
    tracing::info!(schedule_id = %schedule.id, name = %schedule.name, "schedule created");
    let path = format!("/api/v1/schedules/{}", schedule.id);
    Ok(with_location(
        (StatusCode::CREATED, AppJson(schedule)).into_response(),
        path,
    ))
}

/// One schedule.
#[utoipa::path(get, path = "/api/v1/schedules/{id}", tag = "schedules", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The schedule's id")),
    responses(
        AdminOnly,
        (status = 200, description = "The schedule", body = Schedule),
        (status = 404, response = inline(ScheduleNotFound)),
    ))]
#[tracing::instrument(skip_all, fields(schedule_id = %id))]
async fn get_schedule(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
) -> Result<AppJson<Schedule>, ApiError> {
    principal.require(Role::Admin)?;
    db::schedules::get(&state.db, id)
        .await?
        .map(AppJson)
        .ok_or_else(no_such_schedule)
}

/// Changes any of a schedule's fields, checked as on create. A new cron,
/// timezone or a re-enable starts the timetable afresh from now: fires
/// missed before the change are not caught up.
#[utoipa::path(patch, path = "/api/v1/schedules/{id}", tag = "schedules", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The schedule's id")),
    request_body = SchedulePatch,
    responses(
        JsonBodyErrors, SignedIn,
        (status = 200, description = "The schedule, changed", body = Schedule),
        (status = 403, response = inline(ScheduleForbidden)),
        (status = 404, response = inline(ScheduleNotFound)),
        (status = 409, response = inline(NameTaken)),
    ))]
#[tracing::instrument(skip_all, fields(schedule_id = %id))]
async fn update_schedule(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
    body: JsonBytes,
) -> Result<AppJson<Schedule>, ApiError> {
    principal.require(Role::Admin)?;
    let patch: SchedulePatch = body.parse()?;
    schedules::update(&state, id, |draft| patch.apply(draft))
        .await
        .map(AppJson)
}

/// Deletes a schedule. The tasks it created stay.
#[utoipa::path(delete, path = "/api/v1/schedules/{id}", tag = "schedules", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The schedule's id")),
    responses(
        SignedIn,
        (status = 204, description = "Deleted; the tasks it created stay"),
        (status = 403, response = inline(ScheduleForbidden)),
        (status = 404, response = inline(ScheduleNotFound)),
    ))]
#[tracing::instrument(skip_all, fields(schedule_id = %id))]
async fn delete_schedule(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
) -> Result<StatusCode, ApiError> {
    principal.require(Role::Admin)?;
    let mut tx = state.db.begin().await?;
    editable(&mut tx, id).await?;
    if db::schedules::delete(&mut *tx, id).await? {
        tx.commit().await?;
        tracing::info!("schedule deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such_schedule())
    }
}

/// Fires a schedule once, now, whether or not it is enabled: creates its
/// task (for the schedule's owner) and records it as the last run. The
/// timetable is untouched.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/run-now", tag = "schedules", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The schedule's id")),
    responses(
        SignedIn,
        (status = 201, description = "The task it created, owned by the schedule's owner", body = Task,
            headers(("Location" = String, description = "The task's URL"))),
        (status = 403, response = inline(ScheduleForbidden)),
        (status = 404, response = inline(ScheduleNotFound)),
    ))]
#[tracing::instrument(skip_all, fields(schedule_id = %id))]
async fn run_now(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
) -> Result<Response, ApiError> {
    principal.require(Role::Admin)?;
    let mut tx = state.db.begin().await?;
    let schedule = editable(&mut tx, id).await?;
    let owner = schedule
        .owner_id
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("user schedule {id} has no owner")))?;
    // A run asked for over HTTP is a create like any other: the owner's
    // cap refuses it (a cron fire is not refused, but counts).
    tasks::require_room_for_one(&mut tx, owner, state.config.tasks.max_unfinished_per_user).await?;
    let timeout = i32::try_from(state.config.tasks.default_timeout_seconds).unwrap_or(i32::MAX);
    let new = NewTask {
        // Now by the database clock, as any task created without a time.
        scheduled_at: None,
        ..schedule.task(Utc::now(), timeout)
    };
    let actor = principal.id().to_string();
    let task = db::tasks::insert_many(&mut *tx, owner, &actor, &[new])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("an insert created no task")))?;
    db::schedules::record_run_now(&mut *tx, id, task.id, task.status.as_str()).await?;
    tx.commit().await?;
    tracing::info!(task_id = %task.id, "schedule run now");
    tasks::enqueue(&state, std::slice::from_ref(&task)).await;
    let path = format!("/api/v1/tasks/{}", task.id);
    Ok(with_location(
        (StatusCode::CREATED, AppJson(task)).into_response(),
        path,
    ))
}

problem_response!(
    /// `schedule_name_taken`.
    NameTaken = [ScheduleNameTaken]
);
