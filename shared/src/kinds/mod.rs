//! Task kinds: what a task can do. Each built-in kind is one file here —
//! its payload type, the JSON Schema clients see, its checks and its
//! handler — and one line in [`KINDS`]. The API validates payloads against
//! the same definitions the worker runs, which is why they live in
//! `keel-shared` (the binaries never depend on each other).
//!
//! A team's own kinds live in its own crate: implement [`Kind`], and build
//! the API and the worker with [`Registry::builtin`]`().with::<YourKind>()`
//! (see [`registry`], and `worker/example/`). The lookups below read the
//! process's installed registry.

mod abort;
mod echo;
mod export_tasks_csv;
mod fail;
mod http_client;
mod http_request;
mod noop;
pub mod registry;
mod sleep;
mod snooze;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::{config::Config, domain::Role, storage::Storage};

pub use http_client::{HttpClient, http_client};
pub use http_request::HttpRequest;
pub use registry::Registry;

/// Keel's built-in kinds, the default [`Registry`].
pub static KINDS: &[KindSpec] = &[
    spec::<noop::Noop>(),
    spec::<echo::Echo>(),
    spec::<sleep::Sleep>(),
    spec::<sleep::SteadySleep>(),
    spec::<snooze::Snooze>(),
    spec::<fail::Fail>(),
    spec::<HttpRequest>(),
    spec::<abort::Abort>(),
    spec::<export_tasks_csv::ExportTasksCsv>(),
];

/// The kind called `name`, enabled or not, of this process's registry.
pub fn find(name: &str) -> Option<&'static KindSpec> {
    registry::installed().find(name)
}

/// The kind called `name` if this deployment offers it (test-only kinds
/// exist only with `ENABLE_TEST_KINDS`).
pub fn find_enabled(name: &str, settings: &KindSettings) -> Option<&'static KindSpec> {
    find(name).filter(|k| settings.offers(k))
}

/// The kinds this deployment offers.
pub fn enabled(settings: &KindSettings) -> impl Iterator<Item = &'static KindSpec> + '_ {
    registry::installed()
        .kinds()
        .iter()
        .filter(|k| settings.offers(k))
}

/// The JSON Schema of `T`, derived from the type (with `schemars`), as a
/// kind's [`Kind::payload_schema`] returns it: the payload's fields, types,
/// ranges and doc comments in one place.
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T))
        .unwrap_or_else(|_| serde_json::json!({"type": "object"}))
}

/// What a kind is: its description for clients, and its payload checks and
/// handler behind type-erased function pointers.
pub trait Kind {
    const NAME: &'static str;
    const DESCRIPTION: &'static str;
    /// A grouping for clients: `demo`, `integration`, `testing`, …
    const CATEGORY: &'static str;
    /// Offered only with `ENABLE_TEST_KINDS` (never in production): kinds that
    /// break things on purpose, for fault tests.
    const TEST_ONLY: bool = false;
    /// Whether a cancel may stop an attempt that is running: the worker
    /// then drops the handler's future wherever it is waiting. A kind whose
    /// work must not be cut off half-way says `false`, and a cancel of its
    /// running task answers 409 (it may still be cancelled before it starts).
    const INTERRUPTIBLE: bool = true;
    /// How often one task may snooze ([`TaskFailure::snooze`]) before the
    /// next snooze fails it: a handler that puts itself off forever would
    /// never end.
    const MAX_SNOOZES: i32 = 25;
    /// Who may create tasks of this kind: this role and those above it
    /// (others are refused with 403 `kind_forbidden`).
    const MIN_ROLE: Role = Role::User;
    /// `max_attempts` of a create that names none, and the most one may name.
    const MAX_ATTEMPTS: (i32, i32) = (3, 100);
    /// The longest `timeout_seconds` a create may name; one that names none
    /// gets the deployment's `TASK_DEFAULT_TIMEOUT_SECONDS`, held to this.
    const MAX_TIMEOUT_SECONDS: i32 = 86_400;
    type Payload: DeserializeOwned + Serialize + Send + 'static;

    /// JSON Schema (2020-12) of the payload, as `GET /tasks/kinds` shows it.
    fn payload_schema() -> Value;

    /// Checks beyond the payload's shape (ranges, allow-lists).
    fn check(_payload: &Self::Payload, _settings: &KindSettings) -> Vec<PayloadError> {
        Vec::new()
    }

    /// Runs one attempt. `Ok` is the task's result.
    fn run(
        payload: Self::Payload,
        ctx: TaskContext,
    ) -> impl Future<Output = Result<Value, TaskFailure>> + Send;
}

type RunFuture = Pin<Box<dyn Future<Output = Result<Value, TaskFailure>> + Send>>;

/// A kind with its types erased, for the registry.
#[derive(Clone, Copy)]
pub struct KindSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub category: &'static str,
    pub test_only: bool,
    /// See [`Kind::INTERRUPTIBLE`].
    pub interruptible: bool,
    /// See [`Kind::MAX_SNOOZES`].
    pub max_snoozes: i32,
    /// See [`Kind::MIN_ROLE`].
    pub min_role: Role,
    /// See [`Kind::MAX_ATTEMPTS`]: the default and the most.
    pub max_attempts: (i32, i32),
    /// See [`Kind::MAX_TIMEOUT_SECONDS`].
    pub max_timeout_seconds: i32,
    pub payload_schema: fn() -> Value,
    check: fn(&Value, &KindSettings) -> Result<(), Vec<PayloadError>>,
    run: fn(Value, TaskContext) -> RunFuture,
}

impl std::fmt::Debug for KindSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindSpec")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl KindSpec {
    /// Whether `payload` is acceptable for this kind; field errors otherwise,
    /// each naming its path inside the payload (`url`, `headers.X`).
    ///
    /// # Errors
    /// The payload does not fit the kind.
    pub fn check(&self, payload: &Value, settings: &KindSettings) -> Result<(), Vec<PayloadError>> {
        (self.check)(payload, settings)
    }

    /// Runs one attempt of a task of this kind.
    pub fn run(&self, payload: Value, ctx: TaskContext) -> RunFuture {
        (self.run)(payload, ctx)
    }
}

/// The registry entry of `K`.
pub const fn spec<K: Kind>() -> KindSpec {
    KindSpec {
        name: K::NAME,
        description: K::DESCRIPTION,
        category: K::CATEGORY,
        test_only: K::TEST_ONLY,
        interruptible: K::INTERRUPTIBLE,
        max_snoozes: K::MAX_SNOOZES,
        min_role: K::MIN_ROLE,
        max_attempts: K::MAX_ATTEMPTS,
        max_timeout_seconds: K::MAX_TIMEOUT_SECONDS,
        payload_schema: K::payload_schema,
        check: check_json::<K>,
        run: run_json::<K>,
    }
}

fn parse<K: Kind>(payload: &Value) -> Result<K::Payload, PayloadError> {
    serde_path_to_error::deserialize(payload).map_err(|e| {
        let path = e.path().to_string();
        PayloadError {
            field: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

fn check_json<K: Kind>(payload: &Value, settings: &KindSettings) -> Result<(), Vec<PayloadError>> {
    let parsed = parse::<K>(payload).map_err(|e| vec![e])?;
    let errors = K::check(&parsed, settings);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn run_json<K: Kind>(payload: Value, ctx: TaskContext) -> RunFuture {
    Box::pin(async move {
        // Checked at creation, but the code may have changed since: a payload
        // that no longer parses fails for good rather than retrying forever.
        let parsed = parse::<K>(&payload).map_err(|e| {
            TaskFailure::permanent(format!("invalid payload: {}: {}", e.field, e.message))
        })?;
        K::run(parsed, ctx).await
    })
}

/// One problem with a payload: `field` is its path inside the payload
/// (empty for the payload as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadError {
    pub field: String,
    pub message: String,
}

impl PayloadError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The longest a handler may snooze: the longest timeout, one day.
pub const MAX_SNOOZE: Duration = Duration::from_secs(86_400);

/// An attempt that did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    pub message: String,
    /// Whether another attempt may succeed (a timeout, a 503); a bad request
    /// fails for good at once.
    pub retryable: bool,
    /// Not a failure at all: run again after this long, without spending an
    /// attempt (see [`TaskFailure::snooze`]).
    pub snooze: Option<Duration>,
}

impl TaskFailure {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
            snooze: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
            snooze: None,
        }
    }

    /// "Not now": the task runs again after `delay` (at most [`MAX_SNOOZE`])
    /// and the attempt does not count against `max_attempts` — for work
    /// that waits on something outside (a rate limit upstream, a file not
    /// there yet). A task that snoozes more than its kind's
    /// [`Kind::MAX_SNOOZES`] fails.
    pub fn snooze(delay: Duration) -> Self {
        Self {
            message: format!("snoozed for {} ms", delay.as_millis()),
            retryable: true,
            snooze: Some(delay.min(MAX_SNOOZE)),
        }
    }
}

/// The deployment's settings kinds consult, from `Config`.
#[derive(Debug, Clone, Default)]
pub struct KindSettings {
    /// `TASK_HTTP_ALLOWED_HOSTS`, lower-cased.
    pub http_allowed_hosts: Vec<String>,
    /// `ENABLE_TEST_KINDS`.
    pub test_kinds: bool,
}

impl KindSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            http_allowed_hosts: config
                .tasks
                .http_allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            test_kinds: config.tasks.enable_test_kinds,
        }
    }

    /// Whether `kind` may be used here.
    pub fn offers(&self, kind: &KindSpec) -> bool {
        !kind.test_only || self.test_kinds
    }
}

/// What the worker lends every attempt, made once at its start and cloned
/// (cheaply: handles and `Arc`s) into each [`TaskContext`].
#[derive(Debug, Clone)]
pub struct TaskServices {
    pub settings: Arc<KindSettings>,
    pub http: HttpClient,
    pub db: PgPool,
    pub storage: Storage,
    /// `USER_STORAGE_QUOTA_BYTES`: what one owner's files may total, task
    /// outputs included, so an export cannot get round the upload quota.
    pub storage_quota_bytes: u64,
}

impl TaskServices {
    /// The services of a worker with `config`, its pool and its store.
    pub fn new(config: &Config, db: PgPool, storage: Storage) -> Self {
        Self {
            settings: Arc::new(KindSettings::from_config(config)),
            http: http_client(),
            db,
            storage,
            storage_quota_bytes: config.storage.user_storage_quota_bytes,
        }
    }
}

/// What a running attempt can reach: its identity and owner, a progress
/// reporter, and the worker's shared HTTP client, database pool and file
/// storage.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub task_id: Uuid,
    pub attempt: i32,
    /// How often this task has snoozed so far.
    pub snoozes: i32,
    /// The user the task belongs to: whatever the kind reads or writes on
    /// someone's behalf is theirs.
    pub owner_id: Uuid,
    pub settings: Arc<KindSettings>,
    pub http: HttpClient,
    pub db: PgPool,
    pub storage: Storage,
    /// See [`TaskServices::storage_quota_bytes`].
    pub storage_quota_bytes: u64,
    progress: watch::Sender<i16>,
}

impl TaskContext {
    /// A context for attempt `attempt` of task `task_id` owned by
    /// `owner_id` (not snoozed yet), whose progress reports land in the
    /// returned receiver.
    pub fn new(
        task_id: Uuid,
        attempt: i32,
        owner_id: Uuid,
        services: &TaskServices,
    ) -> (Self, watch::Receiver<i16>) {
        let (progress, rx) = watch::channel(0);
        let TaskServices {
            settings,
            http,
            db,
            storage,
            storage_quota_bytes,
        } = services.clone();
        (
            Self {
                task_id,
                attempt,
                snoozes: 0,
                owner_id,
                settings,
                http,
                db,
                storage,
                storage_quota_bytes,
                progress,
            },
            rx,
        )
    }

    /// Reports `percent` done (clamped to 0–100). Cheap: the worker writes
    /// only the latest value, a few times a second at most.
    pub fn progress(&self, percent: u8) {
        self.progress.send_replace(i16::from(percent.min(100)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_are_unique_and_schemas_are_objects() {
        let mut names: Vec<_> = KINDS.iter().map(|k| k.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KINDS.len());
        for kind in KINDS {
            let schema = (kind.payload_schema)();
            assert_eq!(schema["type"], "object", "{}", kind.name);
        }
    }

    #[test]
    fn test_only_kinds_are_hidden_unless_enabled() {
        let off = KindSettings::default();
        let on = KindSettings {
            test_kinds: true,
            ..KindSettings::default()
        };
        assert!(find_enabled("abort", &off).is_none());
        assert!(find_enabled("abort", &on).is_some());
        assert!(find_enabled("noop", &off).is_some());
        assert!(enabled(&off).all(|k| !k.test_only));
    }

    #[test]
    fn a_bad_payload_names_the_field() {
        let sleep = find("sleep").unwrap();
        let settings = KindSettings::default();
        let errors = sleep.check(&json!({"ms": "soon"}), &settings).unwrap_err();
        assert_eq!(errors[0].field, "ms");
        let errors = sleep
            .check(&json!({"ms": 10, "extra": 1}), &settings)
            .unwrap_err();
        assert!(errors[0].message.contains("unknown field"), "{errors:?}");
        assert!(sleep.check(&json!({"ms": 10}), &settings).is_ok());
    }
}
