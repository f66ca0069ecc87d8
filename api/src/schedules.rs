//! What a schedule does at the API: its fields checked (the cron, the
//! timezone, the kind and payload) before it is stored, its edits, and
//! switching it on or off. Built-in `system` schedules are never edited from
//! here. The schedule routes and the dashboard call these.

use chrono::{DateTime, Utc};
use keel_shared::{
    db::schedules::{self, Schedule, ScheduleSpec},
    timetable::{self, Timetable, TimetableError},
};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    error::{ApiError, FieldError, OnConstraint as _},
    problems::Code,
    state::AppState,
    tasks,
};

/// Longest schedule name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Names the built-in schedules take; users may not.
pub const SYSTEM_PREFIX: &str = "system.";

/// A schedule's fields before validation: a create's, or a patch merged over
/// the stored row. `None` means missing.
#[derive(Debug)]
pub(crate) struct Draft {
    pub(crate) name: Option<String>,
    pub(crate) cron: Option<String>,
    pub(crate) timezone: String,
    pub(crate) kind: Option<String>,
    pub(crate) payload: Value,
    pub(crate) enabled: bool,
}

impl From<&Schedule> for Draft {
    /// The stored row, for a patch to change.
    fn from(current: &Schedule) -> Self {
        Self {
            name: Some(current.name.clone()),
            cron: Some(current.cron.clone()),
            timezone: current.timezone.clone(),
            kind: Some(current.kind.clone()),
            payload: current.payload.clone(),
            enabled: current.enabled,
        }
    }
}

/// `draft` as a schedule to store, its next fire counted from `now`; or a
/// 422 with every invalid field.
pub(crate) fn validate(
    draft: Draft,
    state: &AppState,
    now: DateTime<Utc>,
) -> Result<ScheduleSpec, ApiError> {
    let mut errors = Vec::new();
    let mut invalid = |name: &str, message: String| errors.push(field(name, message));

    let name = draft.name.as_deref().map(str::trim).unwrap_or_default();
    if draft.name.is_none() {
        invalid("name", "is required".to_owned());
    } else if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        invalid("name", format!("must be 1 to {MAX_NAME_CHARS} characters"));
    } else if name
        .get(..SYSTEM_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(SYSTEM_PREFIX))
    {
        invalid(
            "name",
            format!("names starting with `{SYSTEM_PREFIX}` are kept for built-in schedules"),
        );
    }

    let timezone = draft.timezone.trim();
    let timezone_ok = match timetable::parse_timezone(timezone) {
        Ok(_) => true,
        Err(e) => {
            invalid("timezone", e.to_string());
            false
        }
    };
    let cron = draft.cron.as_deref().map(str::trim).unwrap_or_default();
    let mut next_run_at = None;
    if draft.cron.is_none() {
        invalid("cron", "is required".to_owned());
    } else {
        // With a bad timezone the expression is still checked, on UTC.
        match Timetable::parse(cron, if timezone_ok { timezone } else { "UTC" }) {
            Ok(table) => match table.next_after(now) {
                Some(next) => next_run_at = Some(next),
                None => invalid("cron", "never fires (no such date)".to_owned()),
            },
            Err(TimetableError::Cron { field, message }) => {
                let name = if field == "cron" {
                    "cron".to_owned()
                } else {
                    format!("cron.{field}")
                };
                invalid(&name, message);
            }
            Err(TimetableError::Timezone(_)) => {} // reported above
        }
    }

    let kind = draft.kind.as_deref().unwrap_or_default();
    let payload = match draft.payload {
        Value::Null => Value::Object(serde_json::Map::new()),
        payload => payload,
    };
    if draft.kind.is_none() {
        invalid("kind", "is required".to_owned());
    } else {
        tasks::check_kind(state, kind, &payload, &mut invalid);
    }

    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    Ok(ScheduleSpec {
        name: name.to_owned(),
        cron: cron.to_owned(),
        timezone: timezone.to_owned(),
        kind: kind.to_owned(),
        payload,
        enabled: draft.enabled,
        next_run_at: next_run_at.filter(|_| draft.enabled),
    })
}

fn field(name: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: name.to_owned(),
        message: message.into(),
    }
}

/// 404 `schedule_not_found`.
pub(crate) fn no_such_schedule() -> ApiError {
    ApiError::new(Code::ScheduleNotFound, "no such schedule")
}

fn read_only() -> ApiError {
    ApiError::new(
        Code::ScheduleReadOnly,
        "built-in schedules cannot be changed, deleted or run by hand",
    )
}

/// A taken name is the client's conflict.
pub(crate) const NAME_TAKEN: &[(&str, Code)] = &[("schedules_name_key", Code::ScheduleNameTaken)];

/// The schedule `id`, if it exists and is not built in.
///
/// # Errors
/// 404 for no such schedule, 403 for a built-in one.
pub(crate) async fn editable(db: &mut sqlx::PgConnection, id: Uuid) -> Result<Schedule, ApiError> {
    // Locked: concurrent edits (and ticks) queue up instead of undoing each other.
    let schedule = schedules::get_locked(db, id)
        .await?
        .ok_or_else(no_such_schedule)?;
    if schedule.system {
        return Err(read_only());
    }
    Ok(schedule)
}

/// Turns the user schedule `id` on or off (the dashboard's switch).
///
/// # Errors
/// As `PATCH /schedules/{id}` with only `enabled`.
pub(crate) async fn set_enabled(
    state: &AppState,
    id: Uuid,
    enabled: bool,
) -> Result<Schedule, ApiError> {
    update(state, id, |draft| draft.enabled = enabled).await
}

/// Changes the user schedule `id` as `change` edits its fields, checked as
/// a create's are; a new timetable (or turning it on) counts its next fire
/// from now.
///
/// # Errors
/// 404 or 403 as [`editable`]; 422 for an invalid field; 409 for a taken name.
pub(crate) async fn update(
    state: &AppState,
    id: Uuid,
    change: impl FnOnce(&mut Draft),
) -> Result<Schedule, ApiError> {
    let mut tx = state.db.begin().await?;
    let current = editable(&mut tx, id).await?;
    let mut draft = Draft::from(&current);
    change(&mut draft);
    let spec = validate(draft, state, Utc::now())?;
    let rescheduled = spec.cron != current.cron
        || spec.timezone != current.timezone
        || (spec.enabled && !current.enabled);
    let schedule = schedules::update(&mut *tx, id, &spec, rescheduled)
        .await
        .on_constraint(NAME_TAKEN)?
        .ok_or_else(no_such_schedule)?;
    tx.commit().await?;
    tracing::info!(rescheduled, "schedule updated");
    Ok(schedule)
}
