//! `export_tasks_csv {status?, limit?}`: the owner's tasks (newest first,
//! the export itself left out) as an RFC 4180 CSV file they can download.
//! Rows are read in pages by id and streamed to storage, so an export of
//! 100 000 tasks never sits in memory; the file counts against the owner's
//! storage quota. A retry of an export that already recorded its file
//! returns that file instead of writing another. Names and errors that a
//! spreadsheet would run as formulas are written as text (a leading `'`).

use std::borrow::Cow;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{PgExecutor, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::{Kind, KindSettings, PayloadError, TaskContext, TaskFailure};
use crate::{
    db::{
        files::{self, File, NewFile, Purpose, RecordError},
        tasks::TaskStatus,
    },
    storage::{Storage, Upload, WriteError},
};

/// Most rows one export writes, and how many it writes when `limit` is absent.
pub const MAX_ROWS: u64 = 100_000;
/// Rows read per query: small enough to hold, large enough that 100 000
/// rows take a hundred index range scans, not thousands.
const PAGE_ROWS: u64 = 1_000;
/// Bytes gathered before they go to the store in one write.
const FLUSH_BYTES: usize = 64 * 1024;
/// The header row, in the order [`push_task`] writes the fields.
const COLUMNS: [&str; 10] = [
    "id",
    "name",
    "kind",
    "status",
    "priority",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
    "error",
];

#[derive(Debug)]
pub struct ExportTasksCsv;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportTasksCsvPayload {
    /// Only tasks in this status; all of them when absent.
    #[serde(default)]
    pub status: Option<TaskStatus>,
    /// At most this many rows, the newest; [`MAX_ROWS`] when absent.
    #[serde(default, deserialize_with = "crate::whole_number::deserialize_option")]
    pub limit: Option<u64>,
}

impl Kind for ExportTasksCsv {
    const NAME: &'static str = "export_tasks_csv";
    const DESCRIPTION: &'static str = "Exports its owner's tasks as a CSV file; the result names \
         the file and its download URL.";
    const CATEGORY: &'static str = "data";
    type Payload = ExportTasksCsvPayload;

    fn payload_schema() -> Value {
        let statuses: Vec<Value> = TaskStatus::ALL
            .iter()
            .map(|s| Value::from(s.as_str()))
            .chain([Value::Null])
            .collect();
        json!({
            "type": "object",
            "properties": {
                "status": {"type": ["string", "null"], "enum": statuses,
                           "description": "Only tasks in this status; all when absent"},
                "limit": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_ROWS,
                          "description": format!("At most this many rows, newest first (default {MAX_ROWS})")},
            },
            "additionalProperties": false,
        })
    }

    fn check(payload: &ExportTasksCsvPayload, _settings: &KindSettings) -> Vec<PayloadError> {
        match payload.limit {
            Some(limit) if !(1..=MAX_ROWS).contains(&limit) => vec![PayloadError::new(
                "limit",
                format!("must be 1 to {MAX_ROWS}"),
            )],
            _ => Vec::new(),
        }
    }

    async fn run(payload: ExportTasksCsvPayload, ctx: TaskContext) -> Result<Value, TaskFailure> {
        // An earlier attempt recorded its file but not its outcome (its
        // worker died, or lost the lease, in between): that file is the export.
        if let Some(file) = recorded_output(&ctx.db, ctx.task_id)
            .await
            .map_err(database_failed)?
        {
            let result = existing_result(&ctx.storage, &file).await?;
            ctx.progress(99);
            return Ok(result);
        }
        let selection = Selection {
            owner: ctx.owner_id,
            export: ctx.task_id,
            status: payload.status,
            limit: payload.limit.unwrap_or(MAX_ROWS).min(MAX_ROWS),
        };
        let total = selection.count(&ctx.db).await.map_err(database_failed)?;
        let used = files::used_bytes(&ctx.db, ctx.owner_id)
            .await
            .map_err(database_failed)?;
        let room = ctx
            .storage_quota_bytes
            .saturating_sub(u64::try_from(used).unwrap_or(0));

        let id = Uuid::now_v7();
        let key = files::object_key(id);
        let mut upload = ctx.storage.writer(&key, room);
        let rows = match write_csv(&ctx, &selection, total, &mut upload).await {
            Ok(rows) => rows,
            Err(e) => {
                upload.abort().await;
                return Err(match e {
                    // Another attempt would find no more room than this one did.
                    ExportError::Write(WriteError::TooLarge) => TaskFailure::permanent(format!(
                        "the export does not fit in the {room} bytes left of the owner's storage quota"
                    )),
                    ExportError::Write(WriteError::Store(e)) => storage_failed(e),
                    ExportError::Database(e) => database_failed(e),
                });
            }
        };
        let written = upload.finish().await.map_err(storage_failed)?;

        let new = NewFile {
            id,
            owner_id: ctx.owner_id,
            purpose: Purpose::TaskOutput,
            name: format!("tasks-{}.csv", ctx.task_id),
            size: i64::try_from(written.size).unwrap_or(i64::MAX),
            content_type: "text/csv".into(),
            sha256: written.sha256,
            description: Some(match selection.status {
                Some(status) => format!("Export of {rows} {status} tasks"),
                None => format!("Export of {rows} tasks"),
            }),
            tags: Vec::new(),
            task_id: Some(ctx.task_id),
            object_key: key.clone(),
        };
        match record(&ctx.db, &new, ctx.storage_quota_bytes).await {
            Ok(Recorded::Inserted(file)) => {
                tracing::info!(task_id = %ctx.task_id, file_id = %file.id, rows, size = file.size, "tasks exported");
                Ok(result(&file, rows))
            }
            Ok(Recorded::Existing(file)) => {
                // An overlapping attempt got there first; its file stands.
                discard(&ctx.storage, &key).await;
                existing_result(&ctx.storage, &file).await
            }
            // Files recorded since this attempt began took the room it had.
            Err(RecordError::OverQuota { left }) => {
                discard(&ctx.storage, &key).await;
                Err(TaskFailure::permanent(format!(
                    "the export does not fit in the {left} bytes left of the owner's storage quota"
                )))
            }
            // Not discarded: the insert may have committed unheard, and a row
            // must never lose its object. Unrecorded, the orphan sweep takes it.
            Err(RecordError::Database(e)) => Err(database_failed(e)),
        }
    }
}

/// Which tasks an export holds.
#[derive(Debug)]
struct Selection {
    owner: Uuid,
    /// The export task, which is the owner's too but not part of its own file.
    export: Uuid,
    status: Option<TaskStatus>,
    limit: u64,
}

/// One task as the file shows it.
#[derive(Debug, sqlx::FromRow)]
struct TaskRow {
    id: Uuid,
    name: String,
    kind: String,
    status: TaskStatus,
    priority: i16,
    attempts: i32,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    error: Option<String>,
}

// The SQL of this kind stays here rather than in `db::tasks`/`db::files`:
// nothing else reads tasks for an export or looks files up by task.
impl Selection {
    fn push_where(&self, query: &mut QueryBuilder<Postgres>) {
        query
            .push(" FROM tasks WHERE owner_id = ")
            .push_bind(self.owner)
            .push(" AND id <> ")
            .push_bind(self.export);
        if let Some(status) = self.status {
            query.push(" AND status = ").push_bind(status.as_str());
        }
    }

    /// How many rows the export will have, near enough for progress.
    async fn count(&self, db: &PgPool) -> Result<u64, sqlx::Error> {
        let mut query = QueryBuilder::new("SELECT count(*) FROM (SELECT 1");
        self.push_where(&mut query);
        query
            .push(" LIMIT ")
            .push_bind(i64::try_from(self.limit).unwrap_or(i64::MAX))
            .push(") AS selected");
        let count: i64 = query.build_query_scalar().fetch_one(db).await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Up to `size` rows older than `before` (from the newest when `None`),
    /// newest first: a range scan of `tasks_owner_id_idx` (or
    /// `tasks_status_owner_idx`) however deep into the export.
    async fn page(
        &self,
        db: &PgPool,
        before: Option<Uuid>,
        size: u64,
    ) -> Result<Vec<TaskRow>, sqlx::Error> {
        let mut query = QueryBuilder::new(
            "SELECT id, name, kind, status, priority, attempts, created_at, started_at, \
             finished_at, error",
        );
        self.push_where(&mut query);
        if let Some(before) = before {
            query.push(" AND id < ").push_bind(before);
        }
        // Ids are UUID v7: their order is creation order.
        query
            .push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::try_from(size).unwrap_or(i64::MAX));
        query.build_query_as().fetch_all(db).await
    }
}

/// Why writing the file stopped.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Writes the header and the selected rows to `upload`; the rows written.
async fn write_csv(
    ctx: &TaskContext,
    selection: &Selection,
    total: u64,
    upload: &mut Upload,
) -> Result<u64, ExportError> {
    let mut buffer = Vec::with_capacity(FLUSH_BYTES * 2);
    push_record(&mut buffer, &COLUMNS);
    let mut rows = 0;
    let mut before = None;
    while rows < selection.limit {
        let size = PAGE_ROWS.min(selection.limit - rows);
        let page = selection.page(&ctx.db, before, size).await?;
        for task in &page {
            push_task(&mut buffer, task);
            if buffer.len() >= FLUSH_BYTES {
                flush(upload, &mut buffer).await?;
            }
        }
        rows += page.len() as u64;
        // Short of 100 until the file is recorded.
        let percent = (rows * 99).checked_div(total).unwrap_or(99).min(99);
        ctx.progress(u8::try_from(percent).unwrap_or(99));
        match page.last() {
            Some(last) if page.len() as u64 == size => before = Some(last.id),
            _ => break,
        }
    }
    flush(upload, &mut buffer).await?;
    Ok(rows)
}

/// Hands what `buffer` holds to the store.
async fn flush(upload: &mut Upload, buffer: &mut Vec<u8>) -> Result<(), WriteError> {
    if buffer.is_empty() {
        return Ok(());
    }
    let chunk = std::mem::replace(buffer, Vec::with_capacity(FLUSH_BYTES * 2));
    upload.write(Bytes::from(chunk)).await
}

/// Appends `task` as one record, in the order of [`COLUMNS`].
fn push_task(out: &mut Vec<u8>, task: &TaskRow) {
    push_record(
        out,
        &[
            task.id.to_string().as_str(),
            &as_text(&task.name),
            &task.kind,
            task.status.as_str(),
            &task.priority.to_string(),
            &task.attempts.to_string(),
            &timestamp(Some(task.created_at)),
            &timestamp(task.started_at),
            &timestamp(task.finished_at),
            &as_text(task.error.as_deref().unwrap_or_default()),
        ],
    );
}

/// `value`, which a user wrote, as a spreadsheet will show it rather than
/// run it: a cell that starts like a formula (`=`, `+`, `-`, `@`, or a tab
/// or carriage return, which some spreadsheets skip before one) gets a `'`
/// in front, which spreadsheets take as "this is text" (OWASP's advice on
/// CSV injection). A task named `=HYPERLINK(…)` stays a name.
fn as_text(value: &str) -> Cow<'_, str> {
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{value}"))
    } else {
        Cow::Borrowed(value)
    }
}

/// RFC 3339 in UTC to the microsecond (what `timestamptz` keeps); empty for none.
fn timestamp(at: Option<DateTime<Utc>>) -> String {
    at.map(|at| at.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_default()
}

/// Appends one record as RFC 4180 has it: fields joined by commas, CRLF after.
fn push_record(out: &mut Vec<u8>, fields: &[&str]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_field(out, field);
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `value` as one field: in double quotes, its own quotes doubled,
/// when it holds a comma, a quote or a line break (which would otherwise
/// end the field or the record); as it is otherwise.
fn push_field(out: &mut Vec<u8>, value: &str) {
    if value.contains([',', '"', '\r', '\n']) {
        out.push(b'"');
        out.extend_from_slice(value.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(value.as_bytes());
    }
}

/// Counts the records of a CSV [`push_record`] wrote, fed in chunks as they
/// stream from the store: line feeds outside quoted fields. A quoted
/// field's own quotes come in pairs, so flipping at every quote tracks
/// whether a line feed is inside one.
#[derive(Debug, Default)]
struct RecordCounter {
    records: u64,
    quoted: bool,
}

impl RecordCounter {
    fn feed(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            match byte {
                b'"' => self.quoted = !self.quoted,
                b'\n' if !self.quoted => self.records += 1,
                _ => {}
            }
        }
    }
}

/// The result for `file`, recorded by an earlier attempt: its rows counted
/// from the file itself, which is all that keeps them.
async fn existing_result(storage: &Storage, file: &File) -> Result<Value, TaskFailure> {
    let mut counter = RecordCounter::default();
    let mut bytes = storage
        .get(&file.object_key, None)
        .await
        .map_err(storage_failed)?;
    while let Some(chunk) = bytes.try_next().await.map_err(storage_failed)? {
        counter.feed(&chunk);
    }
    // Less the header.
    Ok(result(file, counter.records.saturating_sub(1)))
}

fn result(file: &File, rows: u64) -> Value {
    json!({
        "file_id": file.id,
        "rows": rows,
        "size": file.size,
        "download_url": format!("/api/v1/files/{}/content", file.id),
    })
}

/// The output an attempt of task `task_id` recorded, if one did.
async fn recorded_output(
    db: impl PgExecutor<'_>,
    task_id: Uuid,
) -> Result<Option<File>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, owner_id, purpose, name, size, content_type, sha256, description, tags, \
         task_id, object_key, created_at \
         FROM files WHERE task_id = $1 AND purpose = 'task_output' \
         ORDER BY created_at, id LIMIT 1",
    )
    .bind(task_id)
    .fetch_optional(db)
    .await
}

/// What [`record`] found.
#[derive(Debug)]
enum Recorded {
    Inserted(File),
    /// The task already had its output; `file` was not recorded.
    Existing(File),
}

/// Records `file` unless its task already has an output, and if it fits in
/// its owner's `quota`.
async fn record(db: &PgPool, file: &NewFile, quota: u64) -> Result<Recorded, RecordError> {
    let task_id = file.task_id.unwrap_or_default();
    let mut tx = db.begin().await?;
    // Attempts of a task overlap only when one has lost its lease without
    // noticing yet; the lock makes "none recorded? then insert" one step,
    // so even then a task never ends up with two files.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1::text, 0))")
        .bind(task_id)
        .execute(&mut *tx)
        .await?;
    if let Some(existing) = recorded_output(&mut *tx, task_id).await? {
        return Ok(Recorded::Existing(existing));
    }
    let mut inserted =
        files::insert_within_quota(&mut tx, file.owner_id, std::slice::from_ref(file), quota)
            .await?;
    tx.commit().await?;
    // One file in, one row out.
    Ok(Recorded::Inserted(inserted.swap_remove(0)))
}

/// Deletes the object `key`, written but not recorded; if the store refuses,
/// the orphan sweep takes it later.
async fn discard(storage: &Storage, key: &str) {
    if let Err(e) = storage.delete(key).await {
        tracing::warn!(error = %e, key, "could not delete an unrecorded export; the sweep will");
    }
}

fn database_failed(e: sqlx::Error) -> TaskFailure {
    TaskFailure::retryable(format!("the database failed: {e}"))
}

fn storage_failed(e: object_store::Error) -> TaskFailure {
    TaskFailure::retryable(format!("file storage failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[&str]) -> String {
        let mut out = Vec::new();
        push_record(&mut out, fields);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn fields_are_quoted_only_when_they_must_be() {
        for (field, expected, why) in [
            ("plain", "plain", "nothing to escape"),
            ("", "", "an empty field stays empty"),
            (
                " padded ",
                " padded ",
                "spaces are part of a field, not a reason to quote",
            ),
            ("a,b", "\"a,b\"", "a comma would split the field"),
            (
                "say \"hi\"",
                "\"say \"\"hi\"\"\"",
                "quotes are doubled inside quotes",
            ),
            ("\"", "\"\"\"\"", "a lone quote"),
            (
                "two\nlines",
                "\"two\nlines\"",
                "a line feed would end the record",
            ),
            ("cr\rhere", "\"cr\rhere\"", "so would a carriage return"),
            ("crlf\r\n", "\"crlf\r\n\"", "and a CRLF"),
            ("é, ü", "\"é, ü\"", "UTF-8 passes through"),
        ] {
            assert_eq!(record(&[field]), format!("{expected}\r\n"), "{why}");
        }
    }

    #[test]
    fn cells_a_spreadsheet_would_run_are_kept_as_text() {
        for (value, shown) in [
            ("=1+1", "'=1+1"),
            ("+1", "'+1"),
            ("-2", "'-2"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "'\r=1"),
            ("nightly = 1+1", "nightly = 1+1"),
            ("a-b", "a-b"),
            ("", ""),
        ] {
            assert_eq!(as_text(value), shown, "{value:?}");
        }
    }

    #[test]
    fn a_record_joins_its_fields_with_commas_and_ends_with_crlf() {
        assert_eq!(record(&["a", "", "c,d", ""]), "a,,\"c,d\",\r\n");
        assert_eq!(record(&COLUMNS), format!("{}\r\n", COLUMNS.join(",")));
    }

    #[test]
    fn records_are_counted_however_the_bytes_are_chunked() {
        let mut csv = Vec::new();
        push_record(&mut csv, &COLUMNS);
        push_record(&mut csv, &["1", "a \"quoted\",\nmulti-line\r\nname", "x"]);
        push_record(&mut csv, &["2", "\"", "\n"]);
        push_record(&mut csv, &["3", "plain", ""]);
        for size in [1, 2, 3, 7, csv.len()] {
            let mut counter = RecordCounter::default();
            for chunk in csv.chunks(size) {
                counter.feed(chunk);
            }
            assert_eq!(counter.records, 4, "chunks of {size}");
            assert!(!counter.quoted, "chunks of {size}");
        }
    }

    #[test]
    fn the_payload_takes_a_status_and_a_limit_in_range() {
        let kind = super::super::find(ExportTasksCsv::NAME).unwrap();
        let settings = KindSettings::default();
        for payload in [
            json!({}),
            json!({"status": "failed"}),
            json!({"status": null, "limit": null}),
            json!({"limit": 1}),
            json!({"limit": 100_000.0}),
        ] {
            assert!(kind.check(&payload, &settings).is_ok(), "{payload}");
        }
        for (payload, field) in [
            (json!({"status": "done"}), "status"),
            (json!({"limit": 0}), "limit"),
            (json!({"limit": 100_001}), "limit"),
            (json!({"limit": 1.5}), "limit"),
            (json!({"owner": "someone else"}), "owner"),
        ] {
            let errors = kind.check(&payload, &settings).unwrap_err();
            assert_eq!(errors[0].field, field, "{payload}: {errors:?}");
        }
    }
}
