-- Tasks: user-submitted and scheduled work. The row is the status of record;
-- Redis only carries `RunTask { task_id }` to a worker.

CREATE TABLE tasks (
    -- UUID v7, made by the application: time-ordered, so "newest first" is an index scan.
    id                uuid PRIMARY KEY,
    owner_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name              text NOT NULL,
    kind              text NOT NULL,
    payload           jsonb NOT NULL DEFAULT '{}',
    status            text NOT NULL DEFAULT 'pending',
    -- 0 to 100, reported by the running kind.
    progress          smallint NOT NULL DEFAULT 0,
    result            jsonb,
    error             text,
    -- Counted when a worker claims the row, so a task that kills its worker still uses up attempts.
    attempts          integer NOT NULL DEFAULT 0,
    max_attempts      integer NOT NULL DEFAULT 3,
    timeout_seconds   integer NOT NULL,
    priority          smallint NOT NULL DEFAULT 0,
    -- When the first attempt may start; next_attempt_at is when the next one may.
    scheduled_at      timestamptz NOT NULL DEFAULT now(),
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    -- The claim: which worker runs the task and until when. Every worker write says
    -- `AND lease_owner = $me`, so a worker that lost its lease changes nothing.
    lease_owner       text,
    lease_expires_at  timestamptz,
    -- When the job was last handed to Redis; the reconciler re-pushes rows Redis lost.
    enqueued_at       timestamptz,
    schedule_id       uuid,
    -- The worker that ran the last attempt (kept after the lease is released).
    worker_id         text,
    -- Who made the last status change: a user id, a worker name, or `system`. The
    -- history trigger copies it, so no code path can change a status unrecorded.
    changed_by        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT tasks_status_check CHECK (status IN ('pending', 'running', 'retrying', 'completed', 'failed', 'cancelled')),
    CONSTRAINT tasks_progress_check CHECK (progress BETWEEN 0 AND 100),
    CONSTRAINT tasks_attempts_check CHECK (attempts >= 0 AND max_attempts BETWEEN 1 AND 100),
    CONSTRAINT tasks_timeout_check CHECK (timeout_seconds BETWEEN 1 AND 86400),
    CONSTRAINT tasks_name_length CHECK (char_length(name) BETWEEN 1 AND 200),
    CONSTRAINT tasks_finished_after_started CHECK (finished_at IS NULL OR started_at IS NULL OR finished_at >= started_at)
);

-- The list filters: own tasks newest first, optionally by status or kind; admins the same over all.
CREATE INDEX tasks_owner_id_idx ON tasks (owner_id, id DESC);
CREATE INDEX tasks_owner_status_idx ON tasks (owner_id, status, id DESC);
CREATE INDEX tasks_owner_kind_idx ON tasks (owner_id, kind, id DESC);
CREATE INDEX tasks_status_idx ON tasks (status, id DESC);
CREATE INDEX tasks_kind_idx ON tasks (kind, id DESC);
-- The reconciler's scan: unfinished rows that are due, or running past their lease.
CREATE INDEX tasks_due_idx ON tasks (next_attempt_at) WHERE status IN ('pending', 'retrying');
CREATE INDEX tasks_lease_idx ON tasks (lease_expires_at) WHERE status = 'running';
CREATE INDEX tasks_schedule_id_idx ON tasks (schedule_id) WHERE schedule_id IS NOT NULL;

CREATE TRIGGER tasks_set_updated_at
    BEFORE UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Every status change, for the task detail and the dashboard. No foreign key: three
-- history rows per task would pay three key checks on the hottest path; whoever
-- deletes tasks deletes their history (and the purge sweeps any left behind).
CREATE TABLE task_events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id      uuid NOT NULL,
    from_status  text,
    to_status    text NOT NULL,
    actor        text,
    attempt      integer NOT NULL,
    at           timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX task_events_task_id_idx ON task_events (task_id, id);

CREATE FUNCTION record_task_status() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO task_events (task_id, from_status, to_status, actor, attempt)
        VALUES (NEW.id, NULL, NEW.status, NEW.changed_by, NEW.attempts);
    ELSIF NEW.status IS DISTINCT FROM OLD.status OR NEW.attempts IS DISTINCT FROM OLD.attempts THEN
        INSERT INTO task_events (task_id, from_status, to_status, actor, attempt)
        VALUES (NEW.id, OLD.status, NEW.status, NEW.changed_by, NEW.attempts);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER tasks_record_status
    AFTER INSERT OR UPDATE OF status, attempts ON tasks
    FOR EACH ROW EXECUTE FUNCTION record_task_status();

-- `Idempotency-Key`: the first response to a key, replayed for 24 hours. The row is
-- inserted in the same transaction as the task, so concurrent duplicates wait on the
-- key and then replay, and a rolled-back create leaves no key behind.
CREATE TABLE idempotency_keys (
    user_id          uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key              text NOT NULL,
    -- The request's method, path and SHA-256 of its body: the same key with another body is refused.
    request_hash     bytea NOT NULL,
    response_status  smallint,
    response_body    jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);

CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
