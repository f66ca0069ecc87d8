//! `/api/v1/tasks`: creating tasks (one, or a batch of up to 1000, under the
//! owner's cap and an optional `Idempotency-Key`), reading and listing them,
//! cancel and retry, the kind registry, and the Celery-era aliases. A user
//! asking for another user's task gets 404, as if it did not exist.

use axum::{
    extract::{FromRequestParts, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header, request::Parts},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use keel_shared::{
    db::{
        self,
        tasks::{NewTask, Task, TaskEvent, TaskFilter, TaskState, TaskStatus},
    },
    domain::Role,
    kinds, whole_number,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::{
    auth::Principal,
    error::{ApiError, FieldError},
    extract::{AppJson, AppPath, AppQuery, JsonBytes},
    openapi::{AdminOnly, JsonBodyErrors, OwnObject, SignedIn, ValidationFailed},
    pagination::{Page, PageQuery, PageRequest},
    problems::problem_response,
    state::AppState,
    tasks::{self, Created, Shape},
};

/// Most tasks one batch may create.
pub const MAX_BATCH: usize = 1000;
/// Longest task name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest `Idempotency-Key`, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;
/// Set on a response replayed for a reused `Idempotency-Key`.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
#[allow(deprecated)] // the aliases are deprecated for clients, not for us
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tasks, create_task))
        .routes(routes!(create_batch))
        .routes(routes!(list_kinds))
        .routes(routes!(get_task))
        .routes(routes!(get_status))
        .routes(routes!(cancel_task))
        .routes(routes!(retry_task))
        .routes(routes!(celery_test_task))
        .routes(routes!(celery_task_status))
}

/// A task to create. Only `name` is required.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "nightly report", "kind": "sleep", "payload": {"ms": 500},
    "scheduled_at": "2026-01-15T02:30:00Z", "max_attempts": 3, "timeout_seconds": 300, "priority": 0
}))]
pub struct NewTaskRequest {
    /// 1 to 200 characters, not all white space.
    #[schema(
        example = "nightly report",
        min_length = 1,
        max_length = 200,
        pattern = r"[^\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
    )]
    pub name: String,
    /// One of `GET /api/v1/tasks/kinds`; `noop` when absent.
    #[schema(example = "sleep")]
    pub kind: Option<String>,
    /// Checked against the kind's `payload_schema`; `{}` when absent.
    #[schema(value_type = Option<Object>, example = json!({"ms": 500}))]
    pub payload: Option<Value>,
    /// When the task may first run; absent or in the past means now.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// 1 to 100; 3 when absent.
    #[schema(minimum = 1, maximum = 100, default = 3)]
    #[serde(default, deserialize_with = "whole_number::deserialize_option")]
    pub max_attempts: Option<i64>,
    /// 1 to 86400; the deployment's `TASK_DEFAULT_TIMEOUT_SECONDS` when absent.
    #[schema(minimum = 1, maximum = 86400)]
    #[serde(default, deserialize_with = "whole_number::deserialize_option")]
    pub timeout_seconds: Option<i64>,
    /// -100 to 100; 0 when absent.
    #[schema(minimum = -100, maximum = 100, default = 0)]
    #[serde(default, deserialize_with = "whole_number::deserialize_option")]
    pub priority: Option<i64>,
    /// A deadline to start by: if no attempt has started by then, the task
    /// ends `expired` and never runs. In the future, and after `scheduled_at`.
    pub expires_at: Option<DateTime<Utc>>,
    /// No second task with the same key: single creates only.
    pub unique: Option<UniqueRequest>,
}

/// What makes a task a duplicate: the same kind, owner and values of
/// `fields` as a task that is unfinished (`pending`, `retrying`,
/// `running`), or created within `period_seconds`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"fields": ["url"], "period_seconds": 3600, "on_conflict": "existing"}))]
pub struct UniqueRequest {
    /// Top-level payload fields whose values join the key (each must be in
    /// the payload); none: kind and owner alone.
    #[schema(max_items = 10)]
    pub fields: Option<Vec<String>>,
    /// Also a duplicate: any task of the key created this recently.
    #[schema(minimum = 1, maximum = 31_536_000)]
    #[serde(default, deserialize_with = "whole_number::deserialize_option")]
    pub period_seconds: Option<i64>,
    /// `reject` (409 `task_not_unique` with `existing_task_id`, the default)
    /// or `existing` (200 and the existing task).
    pub on_conflict: Option<OnConflict>,
}

/// What a duplicate create answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    #[default]
    Reject,
    Existing,
}

/// Most payload fields a unique key names.
const MAX_UNIQUE_FIELDS: usize = 10;
/// Longest uniqueness period: a year.
const MAX_UNIQUE_PERIOD_SECONDS: i64 = 31_536_000;

/// Up to 1000 tasks, created all or none.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"tasks": [
    {"name": "resize 1", "kind": "sleep", "payload": {"ms": 200}},
    {"name": "resize 2", "kind": "sleep", "payload": {"ms": 200}, "priority": 10}
]}))]
pub struct NewTaskBatch {
    #[schema(min_items = 1, max_items = 1000)]
    pub tasks: Vec<NewTaskRequest>,
}

/// The tasks a batch created, in the order given.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"items": [Task::example()]}))]
pub struct TaskBatch {
    pub items: Vec<Task>,
}

/// A task with its status changes, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = TaskDetail::example)]
pub struct TaskDetail {
    #[serde(flatten)]
    pub task: Task,
    pub history: Vec<TaskEvent>,
}

impl TaskDetail {
    fn example() -> Value {
        let mut task = Task::example();
        task["history"] = serde_json::json!([
            {"from_status": null, "to_status": "pending", "actor": "01936f0e-5c4d-7a1b-9e2f-3a4b5c6d7e8f",
             "attempt": 0, "at": "2026-01-15T02:30:00Z"},
            {"from_status": "pending", "to_status": "running", "actor": "worker-7f3c", "attempt": 1,
             "at": "2026-01-15T02:30:01Z"},
            {"from_status": "running", "to_status": "completed", "actor": "worker-7f3c", "attempt": 1,
             "at": "2026-01-15T02:30:02Z"},
        ]);
        task
    }
}

/// A kind's policy: defaults a create may narrow but never widen.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KindPolicy {
    /// The queue its tasks run on.
    #[schema(example = "tasks")]
    pub queue: String,
    /// The queues a create may choose from.
    pub queues: Vec<String>,
    /// Its tasks' priority when a create names none.
    pub priority: i16,
    /// The roles that may create its tasks (others: 403 `kind_forbidden`).
    pub roles: Vec<Role>,
    /// `max_attempts` when a create names none, and the most it may name.
    pub max_attempts: DefaultAndMax,
    /// `timeout_seconds` likewise.
    pub timeout_seconds: DefaultAndMax,
    /// Whether a cancel stops a running task of this kind (`false`: 409
    /// once the task runs).
    pub interruptible: bool,
    /// How often one task may snooze before it fails.
    pub max_snoozes: i32,
}

/// A setting's default, and the most a create may ask for.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DefaultAndMax {
    pub default: i64,
    pub max: i64,
}

/// A registered kind, as clients see it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KindInfo {
    #[schema(example = "sleep")]
    pub name: String,
    pub description: String,
    #[schema(example = "testing")]
    pub category: String,
    /// What a task of this kind may be, and who may create one.
    pub policy: KindPolicy,
    /// JSON Schema (2020-12) of the payload.
    #[schema(value_type = Object)]
    pub payload_schema: Value,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TaskListQuery {
    /// `pending`, `running`, `retrying`, `completed`, `failed`, `cancelled` or `expired`.
    #[param(value_type = Option<TaskStatus>)]
    status: Option<String>,
    kind: Option<String>,
    /// Admins only (others may name only themselves): this owner's tasks.
    user_id: Option<Uuid>,
    #[param(minimum = 1, maximum = 2_147_483_647, default = 1)]
    page: Option<u32>,
    #[param(minimum = 1, maximum = 100, default = 20)]
    size: Option<u32>,
}

/// The caller's tasks (an admin's: everybody's), newest first.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", security(("bearer" = []), ("api_key" = [])),
    params(TaskListQuery),
    responses(
        AdminOnly,
        (status = 200, description = "A page of tasks", body = Page<Task>,
            example = json!({"items": [Task::example()], "total": 1, "page": 1, "size": 20, "pages": 1})),
        (status = 422, response = ValidationFailed),
    ))]
async fn list_tasks(
    State(state): State<AppState>,
    principal: Principal,
    AppQuery(query): AppQuery<TaskListQuery>,
) -> Result<AppJson<Page<Task>>, ApiError> {
    let page = PageRequest::parse(PageQuery {
        page: query.page,
        size: query.size,
    })?;
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(TaskStatus::parse(s).ok_or_else(|| {
            ApiError::validation(vec![field(
                "status",
                format!("must be one of {}", status_names()),
            )])
        })?),
    };
    let owner = match query.user_id {
        Some(id) if id != principal.id() && !principal.is_admin() => {
            return Err(ApiError::forbidden(
                "only admins may list other users' tasks",
            ));
        }
        Some(id) => Some(id),
        None if principal.is_admin() => None,
        None => Some(principal.id()),
    };
    let filter = TaskFilter {
        owner,
        status,
        kind: query.kind,
    };
    let (items, total) = db::tasks::list(&state.db, &filter, page.limit(), page.offset()).await?;
    Ok(AppJson(Page::new(items, total, page)))
}

/// Creates a task (`pending`) and queues it for `scheduled_at`.
///
/// With an `Idempotency-Key`, the same key and body from the same user
/// within 24 h answer the first response (with `Idempotent-Replayed: true`)
/// instead of creating another task.
#[utoipa::path(post, path = "/api/v1/tasks", tag = "tasks", security(("bearer" = []), ("api_key" = [])),
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "Visible ASCII; the same key and body from the same user within 24 h answer the first response", example = "report-2026-01-15")),
    request_body = NewTaskRequest,
    responses(
        JsonBodyErrors, SignedIn,
        (status = 201, description = "The task, `pending`", body = Task, headers(
            ("Location" = String, description = "The task's URL"),
            ("Idempotent-Replayed" = String, description = "`true` on the first response to a reused `Idempotency-Key`"),
        )),
        (status = 422, response = inline(CreateInvalid)),
        (status = 429, response = inline(OverTaskCap)),
    ))]
async fn create_task(
    State(state): State<AppState>,
    principal: Principal,
    idempotency: Idempotency,
    body: JsonBytes,
) -> Result<Response, ApiError> {
    let mut request: NewTaskRequest = body.parse()?;
    let unique = request.unique.take();
    let mut errors = Vec::new();
    let new = validate(request, "", &state, &mut errors);
    let uniqueness = unique.and_then(|unique| match &new {
        Some(new) => unique_key(&unique, new, principal.id(), &mut errors),
        None => None,
    });
    let mut new = match new {
        Some(new) if errors.is_empty() => new,
        _ => return Err(ApiError::validation(errors)),
    };
    tasks::require_kind_role(&principal, std::slice::from_ref(&new))?;
    let uniqueness = uniqueness.map(|(key, uniqueness)| {
        new.unique_key = Some(key);
        uniqueness
    });
    let idempotency = idempotency.bind(&body)?;
    create(
        &state,
        &principal,
        idempotency,
        vec![new],
        Shape::One,
        uniqueness,
    )
    .await
}

/// The unique key of `new` for `owner` as `unique` asks, and what a
/// duplicate does; or the reasons in `errors`.
fn unique_key(
    unique: &UniqueRequest,
    new: &NewTask,
    owner: Uuid,
    errors: &mut Vec<FieldError>,
) -> Option<(String, tasks::Uniqueness)> {
    let before = errors.len();
    let mut fields = unique.fields.clone().unwrap_or_default();
    if fields.len() > MAX_UNIQUE_FIELDS {
        errors.push(field(
            "unique.fields",
            format!("at most {MAX_UNIQUE_FIELDS} fields"),
        ));
    }
    for (i, name) in fields.iter().enumerate().take(MAX_UNIQUE_FIELDS) {
        if new.payload.get(name).is_none() {
            errors.push(field(
                &format!("unique.fields[{i}]"),
                "the payload has no such field",
            ));
        }
    }
    let period = match unique.period_seconds {
        None => None,
        Some(s) if (1..=MAX_UNIQUE_PERIOD_SECONDS).contains(&s) => {
            Some(std::time::Duration::from_secs(s.unsigned_abs()))
        }
        Some(_) => {
            errors.push(field(
                "unique.period_seconds",
                format!("must be 1 to {MAX_UNIQUE_PERIOD_SECONDS}"),
            ));
            None
        }
    };
    if errors.len() > before {
        return None;
    }
    fields.sort_unstable();
    fields.dedup();
    let values: serde_json::Map<String, Value> = fields
        .iter()
        .map(|name| (name.clone(), new.payload[name].clone()))
        .collect();
    let key = tasks::unique_key(&new.kind, owner, &Value::Object(values));
    let uniqueness = tasks::Uniqueness {
        period,
        existing: unique.on_conflict.unwrap_or_default() == OnConflict::Existing,
    };
    Some((key, uniqueness))
}

/// Creates up to 1000 tasks in one transaction: every task is checked
/// first, and one invalid task creates none (its errors name it,
/// `tasks[3].payload.ms`). Honours `Idempotency-Key` as `POST /tasks` does.
#[utoipa::path(post, path = "/api/v1/tasks/batch", tag = "tasks", security(("bearer" = []), ("api_key" = [])),
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "Visible ASCII; the same key and body from the same user within 24 h answer the first response", example = "report-2026-01-15")),
    request_body = NewTaskBatch,
    responses(
        JsonBodyErrors, SignedIn,
        (status = 201, description = "The tasks, in the order given", body = TaskBatch,
            headers(("Idempotent-Replayed" = String, description = "`true` on the first response to a reused `Idempotency-Key`"))),
        (status = 422, response = inline(CreateInvalid)),
        (status = 429, response = inline(OverTaskCap)),
    ))]
async fn create_batch(
    State(state): State<AppState>,
    principal: Principal,
    idempotency: Idempotency,
    body: JsonBytes,
) -> Result<Response, ApiError> {
    let batch: NewTaskBatch = body.parse()?;
    if batch.tasks.is_empty() || batch.tasks.len() > MAX_BATCH {
        return Err(ApiError::validation(vec![field(
            "tasks",
            format!("must hold 1 to {MAX_BATCH} tasks"),
        )]));
    }
    let mut errors = Vec::new();
    let new: Vec<NewTask> = batch
        .tasks
        .into_iter()
        .enumerate()
        .filter_map(|(i, request)| validate(request, &format!("tasks[{i}]."), &state, &mut errors))
        .collect();
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    tasks::require_kind_role(&principal, &new)?;
    let idempotency = idempotency.bind(&body)?;
    create(&state, &principal, idempotency, new, Shape::Batch, None).await
}

/// Creates `new` and answers 201 with the task (`Shape::One`) or `{items}`.
async fn create(
    state: &AppState,
    principal: &Principal,
    idempotency: Option<(String, Vec<u8>)>,
    new: Vec<NewTask>,
    shape: Shape,
    uniqueness: Option<tasks::Uniqueness>,
) -> Result<Response, ApiError> {
    match tasks::create(state, principal, idempotency, new, shape, uniqueness).await? {
        Created::Replay { status, body } => Ok(replay(status, body)),
        Created::Existing(task) => Ok((StatusCode::OK, AppJson(*task)).into_response()),
        Created::Fresh(created) => {
            let response = match shape {
                Shape::One => {
                    let mut response = (StatusCode::CREATED, AppJson(&created[0])).into_response();
                    set_location(&mut response, created[0].id);
                    response
                }
                Shape::Batch => {
                    (StatusCode::CREATED, AppJson(TaskBatch { items: created })).into_response()
                }
            };
            Ok(response)
        }
    }
}

/// The first response to a reused key, as it was.
fn replay(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
    let id = body
        .get("id")
        .and_then(Value::as_str)
        .and_then(|id| Uuid::parse_str(id).ok());
    let mut response = (status, AppJson(body)).into_response();
    response
        .headers_mut()
        .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    if let Some(id) = id {
        set_location(&mut response, id);
    }
    response
}

fn set_location(response: &mut Response, id: Uuid) {
    if let Ok(value) = HeaderValue::from_str(&format!("/api/v1/tasks/{id}")) {
        response.headers_mut().insert(header::LOCATION, value);
    }
}

/// The `Idempotency-Key` header, if sent: 1 to 255 visible characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    // Two keys would leave it unclear which one the request is bound to.
    if headers.get_all("idempotency-key").iter().nth(1).is_some() {
        return Err(ApiError::validation(vec![field(
            "Idempotency-Key",
            "send it once".to_owned(),
        )]));
    }
    // Visible ASCII only (0x21–0x7E): `to_str` alone lets a tab or a space through.
    let key = value.as_bytes();
    match value.to_str() {
        Ok(text)
            if (1..=MAX_IDEMPOTENCY_KEY).contains(&key.len())
                && key.iter().all(u8::is_ascii_graphic) =>
        {
            Ok(Some(text.to_owned()))
        }
        _ => Err(ApiError::validation(vec![field(
            "Idempotency-Key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        )])),
    }
}

/// The request's `Idempotency-Key`, if it sent one, with what the key is
/// bound to but the body: its method and path.
#[derive(Debug)]
pub struct Idempotency {
    key: Option<String>,
    method: Method,
    uri: Uri,
}

impl<S: Send + Sync> FromRequestParts<S> for Idempotency {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(Self {
            key: idempotency_key(&parts.headers)?,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
        })
    }
}

impl Idempotency {
    /// The key and the hash of the request it is bound to, `body` included.
    fn bind(self, body: &JsonBytes) -> Result<Option<(String, Vec<u8>)>, ApiError> {
        let Some(key) = self.key else {
            return Ok(None);
        };
        let value: Value = body.parse()?;
        Ok(Some((key, request_hash(&self.method, &self.uri, &value))))
    }
}

/// What a key is bound to: the method, the path (a trailing slash is the
/// same route) and the body as a JSON value — the same object with its
/// keys in another order, or other white space, is the same request.
fn request_hash(method: &Method, uri: &Uri, body: &Value) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(method.as_str().as_bytes());
    hash.update(b" ");
    hash.update(uri.path().trim_end_matches('/').as_bytes());
    hash.update(b"\n");
    write_canonical(&mut hash, body);
    hash.finalize().to_vec()
}

/// `value` as JSON with every object's keys sorted, into `hash`. Sorted
/// here, not by `serde_json`'s map: a dependency turning on its
/// `preserve_order` feature would silently keep the client's order.
fn write_canonical(hash: &mut Sha256, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by_key(|(k, _)| k.as_str());
            hash.update(b"{");
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    hash.update(b",");
                }
                hash.update(Value::from(key.as_str()).to_string().as_bytes());
                hash.update(b":");
                write_canonical(hash, value);
            }
            hash.update(b"}");
        }
        Value::Array(items) => {
            hash.update(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    hash.update(b",");
                }
                write_canonical(hash, item);
            }
            hash.update(b"]");
        }
        scalar => hash.update(scalar.to_string().as_bytes()),
    }
}

/// `request` as a task to insert, or its reasons in `errors` (each field
/// under `prefix`, `tasks[3].`, for batches).
fn validate(
    request: NewTaskRequest,
    prefix: &str,
    state: &AppState,
    errors: &mut Vec<FieldError>,
) -> Option<NewTask> {
    let before = errors.len();
    let mut invalid =
        |name: &str, message: String| errors.push(field(&format!("{prefix}{name}"), message));
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        invalid("name", format!("must be 1 to {MAX_NAME_CHARS} characters"));
    }
    let kind_name = request.kind.as_deref().unwrap_or("noop");
    // The kind's policy narrows what a request may ask (an unknown kind is
    // refused below; its fields are checked against the widest policy).
    let ((attempts_default, attempts_max), timeout_max) =
        kinds::find_enabled(kind_name, &state.kinds).map_or(((3, 100), 86_400), |k| {
            (k.max_attempts, k.max_timeout_seconds)
        });
    let max_attempts = in_range(
        request.max_attempts,
        i64::from(attempts_default),
        1,
        i64::from(attempts_max),
        "max_attempts",
        &mut invalid,
    );
    let timeout_seconds = in_range(
        request.timeout_seconds,
        i64::from(
            state
                .config
                .tasks
                .default_timeout_seconds
                .min(timeout_max.unsigned_abs()),
        ),
        1,
        i64::from(timeout_max),
        "timeout_seconds",
        &mut invalid,
    );
    let priority = in_range(request.priority, 0, -100, 100, "priority", &mut invalid);
    if request.unique.is_some() {
        // `create_task` takes it out first: here it came in a batch.
        invalid(
            "unique",
            "unique tasks are created one at a time, not in a batch".into(),
        );
    }
    if let Some(deadline) = request.expires_at {
        if deadline <= Utc::now() {
            invalid("expires_at", "must be in the future".into());
        } else if request.scheduled_at.is_some_and(|at| deadline <= at) {
            invalid("expires_at", "must be after scheduled_at".into());
        }
    }
    let payload = match request.payload {
        None | Some(Value::Null) => Value::Object(serde_json::Map::new()),
        Some(payload) => payload,
    };
    tasks::check_kind(state, kind_name, &payload, &mut invalid);
    if errors.len() > before {
        return None;
    }
    Some(NewTask {
        name: name.to_owned(),
        kind: kind_name.to_owned(),
        payload,
        max_attempts: i32::try_from(max_attempts).ok()?,
        timeout_seconds: i32::try_from(timeout_seconds).ok()?,
        priority: i16::try_from(priority).ok()?,
        // The past is now: the database clock decides.
        scheduled_at: request.scheduled_at.filter(|at| *at > Utc::now()),
        schedule_id: None,
        expires_at: request.expires_at,
        unique_key: None,
    })
}

/// `value` (or `default`) when within `min..=max`; else a reason for `name`.
fn in_range(
    value: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
    name: &str,
    invalid: &mut impl FnMut(&str, String),
) -> i64 {
    let value = value.unwrap_or(default);
    if !(min..=max).contains(&value) {
        invalid(name, format!("must be {min} to {max}"));
    }
    value
}

fn field(name: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: name.to_owned(),
        message: message.into(),
    }
}

fn status_names() -> String {
    TaskStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The registered task kinds and their payload schemas.
#[utoipa::path(get, path = "/api/v1/tasks/kinds", tag = "tasks", security(("bearer" = []), ("api_key" = [])),
    responses(
        SignedIn,
        (status = 200, description = "The kinds this deployment runs", body = [KindInfo],
            example = json!([{"name": "sleep", "description": "Sleeps for `ms` milliseconds, reporting progress.",
                "category": "testing", "policy": {"queue": "tasks", "queues": ["tasks"], "priority": 0,
                    "roles": ["user", "admin", "superadmin"], "max_attempts": {"default": 3, "max": 100},
                    "timeout_seconds": {"default": 300, "max": 86400}, "interruptible": true, "max_snoozes": 25},
                "payload_schema": {"type": "object",
                "properties": {"ms": {"type": "integer", "minimum": 0, "maximum": 86_400_000}},
                "required": ["ms"], "additionalProperties": false}}])),
    ))]
async fn list_kinds(
    State(state): State<AppState>,
    _principal: Principal,
) -> AppJson<Vec<KindInfo>> {
    AppJson(
        kinds::enabled(&state.kinds)
            .map(|k| KindInfo {
                name: k.name.to_owned(),
                description: k.description.to_owned(),
                category: k.category.to_owned(),
                policy: policy(k, state.config.tasks.default_timeout_seconds),
                payload_schema: (k.payload_schema)(),
            })
            .collect(),
    )
}

/// `kind`'s policy as `GET /tasks/kinds` shows it, with the deployment's
/// default timeout.
fn policy(kind: &kinds::KindSpec, default_timeout: u32) -> KindPolicy {
    let queue = keel_shared::queue::Queue::Tasks.name().to_owned();
    KindPolicy {
        queues: vec![queue.clone()],
        queue,
        priority: 0,
        roles: Role::ALL
            .into_iter()
            .filter(|r| *r >= kind.min_role)
            .collect(),
        max_attempts: DefaultAndMax {
            default: kind.max_attempts.0.into(),
            max: kind.max_attempts.1.into(),
        },
        timeout_seconds: DefaultAndMax {
            default: i64::from(default_timeout).min(kind.max_timeout_seconds.into()),
            max: kind.max_timeout_seconds.into(),
        },
        interruptible: kind.interruptible,
        max_snoozes: kind.max_snoozes,
    }
}

/// One task, with its status history.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        OwnObject,
        (status = 200, description = "The task and its history", body = TaskDetail),
    ))]
async fn get_task(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
) -> Result<AppJson<TaskDetail>, ApiError> {
    let task = tasks::visible_task(&state, &principal, id).await?;
    let history = db::tasks::history(&state.db, id).await?;
    Ok(AppJson(TaskDetail { task, history }))
}

/// A task's status in short, for polling.
#[utoipa::path(get, path = "/api/v1/tasks/{id}/status", tag = "tasks", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        OwnObject,
        (status = 200, description = "The task's status", body = TaskState),
    ))]
async fn get_status(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
) -> Result<AppJson<TaskState>, ApiError> {
    db::tasks::get_state(&state.db, id)
        .await?
        .filter(|t| t.owner_id == principal.id() || principal.is_admin())
        .map(AppJson)
        .ok_or_else(tasks::no_such_task)
}

/// Cancels an unfinished task. A `pending` or `retrying` one is cancelled
/// at once (a worker that later pops its job finds nothing to run). A
/// `running` one is stopped: its worker is told, drops the attempt and
/// writes `cancelled`; the answer waits for that, up to 5 s.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        OwnObject,
        (status = 200, description = "The task, `cancelled`", body = Task),
        (status = 202, description = "The task still runs: its worker was told and has not let go within 5 s; it ends `cancelled` by its next lease renewal", body = Task),
        (status = 409, response = inline(TaskNotCancellable)),
    ))]
async fn cancel_task(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
) -> Result<(StatusCode, AppJson<Task>), ApiError> {
    Ok(match tasks::cancel(&state, &principal, id).await? {
        tasks::Cancelled::Done(task) => (StatusCode::OK, AppJson(task)),
        tasks::Cancelled::Requested(task) => (StatusCode::ACCEPTED, AppJson(task)),
    })
}

/// Runs a `failed`, `cancelled` or `expired` task again, from a fresh set of attempts,
/// now. It is unfinished again, so it counts against its owner's
/// `MAX_UNFINISHED_TASKS_PER_USER` like a new task.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/retry", tag = "tasks", security(("bearer" = []), ("api_key" = [])),
    params(("id" = Uuid, Path, description = "The task's id")),
    responses(
        OwnObject,
        (status = 200, description = "The task, `pending` again with fresh attempts", body = Task),
        (status = 409, response = inline(TaskNotRetryable)),
        (status = 429, response = inline(RetryOverTaskCap)),
    ))]
async fn retry_task(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(id): AppPath<Uuid>,
) -> Result<AppJson<Task>, ApiError> {
    tasks::retry(&state, &principal, id).await.map(AppJson)
}

/// The Celery-era test task.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"message": "hello"}))]
pub struct CeleryTestTask {
    #[schema(example = "hello")]
    pub message: String,
}

/// What the Celery-era API answered on creating a task.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"task_id": "01936f0e-7d2a-7c3e-8f41-5b6c7d8e9f01"}))]
pub struct CeleryTaskCreated {
    pub task_id: Uuid,
}

/// A task's status in the Celery-era shape.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "task_id": "01936f0e-7d2a-7c3e-8f41-5b6c7d8e9f01", "status": "completed", "result": {"message": "hello"}
}))]
pub struct CeleryTaskStatus {
    pub task_id: Uuid,
    /// Keel's status names (`pending`, `running`, `completed`, …), not Celery's.
    pub status: TaskStatus,
    /// The result once `completed`; the error message (a string) once
    /// `failed`; else `null`.
    pub result: Option<Value>,
}

/// Alias from the Celery-based API: creates an `echo` task whose payload
/// (and so result) is `{"message": …}`. Use `POST /api/v1/tasks` instead.
#[utoipa::path(post, path = "/api/v1/celery/test-task", tag = "tasks", security(("bearer" = []), ("api_key" = [])),
    request_body = CeleryTestTask,
    responses(
        JsonBodyErrors, SignedIn,
        (status = 201, description = "The `echo` task's id", body = CeleryTaskCreated,
            headers(("Location" = String, description = "The task's URL"))),
        (status = 429, response = inline(OverTaskCap)),
    ))]
#[deprecated = "use POST /api/v1/tasks with kind `echo`"]
async fn celery_test_task(
    State(state): State<AppState>,
    principal: Principal,
    AppJson(request): AppJson<CeleryTestTask>,
) -> Result<Response, ApiError> {
    let request = NewTaskRequest {
        name: "celery test-task".to_owned(),
        kind: Some("echo".to_owned()),
        payload: Some(serde_json::json!({ "message": request.message })),
        scheduled_at: None,
        max_attempts: None,
        timeout_seconds: None,
        priority: None,
        expires_at: None,
        unique: None,
    };
    let mut errors = Vec::new();
    let new = match validate(request, "", &state, &mut errors) {
        Some(new) if errors.is_empty() => new,
        _ => return Err(ApiError::validation(errors)),
    };
    let Created::Fresh(created) =
        tasks::create(&state, &principal, None, vec![new], Shape::One, None).await?
    else {
        return Err(ApiError::Internal(anyhow::anyhow!(
            "a create without an idempotency key replayed"
        )));
    };
    let task_id = created[0].id;
    let mut response =
        (StatusCode::CREATED, AppJson(CeleryTaskCreated { task_id })).into_response();
    set_location(&mut response, task_id);
    Ok(response)
}

/// Alias from the Celery-based API: a task's status and result. Statuses
/// keep Keel's names; `result` carries the error message of a failed task,
/// as Celery's did the exception. Use `GET /api/v1/tasks/{id}` instead.
#[utoipa::path(get, path = "/api/v1/celery/task-status/{task_id}", tag = "tasks", security(("bearer" = []), ("api_key" = [])),
    params(("task_id" = Uuid, Path, description = "The task's id")),
    responses(
        OwnObject,
        (status = 200, description = "The task's status and result", body = CeleryTaskStatus),
    ))]
#[deprecated = "use GET /api/v1/tasks/{id}"]
async fn celery_task_status(
    State(state): State<AppState>,
    principal: Principal,
    AppPath(task_id): AppPath<Uuid>,
) -> Result<AppJson<CeleryTaskStatus>, ApiError> {
    let task = tasks::visible_task(&state, &principal, task_id).await?;
    let result = match task.status {
        TaskStatus::Completed => task.result,
        TaskStatus::Failed => task.error.map(Value::String),
        _ => None,
    };
    Ok(AppJson(CeleryTaskStatus {
        task_id,
        status: task.status,
        result,
    }))
}

problem_response!(
    /// An invalid field (`validation_failed`), or an `Idempotency-Key` used with
    /// another request (`idempotency_key_mismatch`).
    CreateInvalid = [ValidationFailed, IdempotencyKeyMismatch]
);
problem_response!(
    /// `too_many_unfinished_tasks` (wait for some to finish), or `rate_limited`.
    OverTaskCap = [TooManyUnfinishedTasks, RateLimited],
    headers = [("Retry-After", "With `rate_limited`: seconds until a retry may succeed")]
);
problem_response!(
    /// `task_not_cancellable`: finished, or running as a kind that may not
    /// be interrupted.
    TaskNotCancellable = [TaskNotCancellable]
);
problem_response!(
    /// `task_not_retryable`: not failed, cancelled or expired.
    TaskNotRetryable = [TaskNotRetryable]
);
problem_response!(
    /// `too_many_unfinished_tasks`: the owner is at the cap; or `rate_limited`.
    RetryOverTaskCap = [TooManyUnfinishedTasks, RateLimited],
    headers = [("Retry-After", "With `rate_limited`: seconds until a retry may succeed")]
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_binds_method_path_and_body() {
        let body = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        let uri: Uri = "/api/v1/tasks".parse().unwrap();
        let batch: Uri = "/api/v1/tasks/batch".parse().unwrap();
        let a = request_hash(&Method::POST, &uri, &body(r#"{"name":"a"}"#));
        assert_eq!(
            a,
            request_hash(&Method::POST, &uri, &body(r#"{"name": "a"}"#)),
            "white space is not part of the request"
        );
        assert_ne!(
            a,
            request_hash(&Method::POST, &batch, &body(r#"{"name":"a"}"#))
        );
        let slash: Uri = "/api/v1/tasks/".parse().unwrap();
        assert_eq!(
            a,
            request_hash(&Method::POST, &slash, &body(r#"{"name":"a"}"#)),
            "a trailing slash is the same route"
        );
    }

    #[test]
    fn idempotency_keys_are_1_to_255_characters() {
        let mut headers = HeaderMap::new();
        assert!(matches!(idempotency_key(&headers), Ok(None)));
        headers.insert("idempotency-key", HeaderValue::from_static("k-1"));
        assert_eq!(idempotency_key(&headers).unwrap().as_deref(), Some("k-1"));
        headers.insert("idempotency-key", HeaderValue::from_static(""));
        assert!(idempotency_key(&headers).is_err());
        let long = "k".repeat(256);
        headers.insert("idempotency-key", HeaderValue::from_str(&long).unwrap());
        assert!(idempotency_key(&headers).is_err());
        for bad in ["a\tb", "a b", " k"] {
            headers.insert("idempotency-key", HeaderValue::from_str(bad).unwrap());
            assert!(
                idempotency_key(&headers).is_err(),
                "{bad:?} is not visible ASCII"
            );
        }
        headers.insert("idempotency-key", HeaderValue::from_static("k-1"));
        headers.append("idempotency-key", HeaderValue::from_static("k-2"));
        assert!(idempotency_key(&headers).is_err(), "two keys");
    }

    #[test]
    fn a_body_is_the_same_request_whatever_its_key_order_and_spacing() {
        let (method, uri) = (Method::POST, Uri::from_static("/api/v1/tasks"));
        let hash = |text: &str| request_hash(&method, &uri, &serde_json::from_str(text).unwrap());
        let a = hash(r#"{"name":"a","kind":"sleep","payload":{"ms":1,"x":[1,{"b":2,"a":1}]}}"#);
        let b = hash(
            r#"{ "payload": {"x": [1, {"a": 1, "b": 2}], "ms": 1}, "kind": "sleep", "name": "a" }"#,
        );
        assert_eq!(a, b);
        assert_ne!(a, hash(r#"{"name":"a","kind":"sleep","payload":{"ms":2}}"#));
        assert_ne!(
            hash(r#"{"a":[1,2]}"#),
            hash(r#"{"a":[2,1]}"#),
            "arrays keep their order"
        );
        let other_path = request_hash(
            &method,
            &Uri::from_static("/api/v1/tasks/batch"),
            &serde_json::from_str(r#"{"name":"a"}"#).unwrap(),
        );
        assert_ne!(other_path, hash(r#"{"name":"a"}"#));
    }
}
