-- Periodic jobs: cron schedules edited over the API (and the built-in `system` ones the
-- scheduler keeps), and the ledger of their fires.

CREATE TABLE schedules (
    id            uuid PRIMARY KEY,
    name          text NOT NULL,
    -- 5 or 6 fields, read on `timezone`'s wall clock (see keel_shared::timetable).
    cron          text NOT NULL,
    timezone      text NOT NULL DEFAULT 'UTC',
    kind          text NOT NULL,
    payload       jsonb NOT NULL DEFAULT '{}',
    enabled       boolean NOT NULL DEFAULT true,
    -- The admin whose tasks the fires create; null for system schedules, which
    -- queue maintenance work instead of tasks.
    owner_id      uuid REFERENCES users (id) ON DELETE CASCADE,
    system        boolean NOT NULL DEFAULT false,
    -- Ticks before this are never caught up: set on create, and when the cron,
    -- timezone or enabled flag changes, so an edit does not fire for the past.
    fire_from     timestamptz NOT NULL DEFAULT now(),
    next_run_at   timestamptz,
    -- The latest tick claimed. Claims only move it forward, so a replica that
    -- stalled or runs behind on its clock can never fire an older tick again.
    last_tick_at  timestamptz,
    -- The latest fire, scheduled or run-now.
    last_run_at   timestamptz,
    -- The task of the last fire; its status is the schedule's `last_status`.
    last_task_id  uuid,
    -- For system schedules (no task): `queued`, then `completed` or `failed`.
    last_status   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT schedules_name_key UNIQUE (name),
    CONSTRAINT schedules_name_length CHECK (char_length(name) BETWEEN 1 AND 200),
    CONSTRAINT schedules_owner_check CHECK (system = (owner_id IS NULL))
);

CREATE TRIGGER schedules_set_updated_at
    BEFORE UPDATE ON schedules
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Every scheduler replica listens: a change to what or when a schedule fires
-- reaches them all at commit. Fires only touch the last_* columns, which wake no one.
CREATE FUNCTION notify_schedule_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keel_schedules', COALESCE(NEW.id, OLD.id)::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER schedules_notify
    AFTER INSERT OR DELETE OR UPDATE OF name, cron, timezone, kind, payload, enabled, fire_from
    ON schedules
    FOR EACH ROW EXECUTE FUNCTION notify_schedule_change();

-- One row per fired tick: the replica whose claim wins (it moves last_tick_at
-- forward and inserts here, in one statement) creates the task; the primary key
-- makes a second fire of one tick impossible. Kept a day (the hourly purge).
CREATE TABLE schedule_runs (
    schedule_id  uuid NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_at      timestamptz NOT NULL,
    task_id      uuid,
    -- The scheduler replica that won the tick.
    fired_by     text NOT NULL,
    -- fired_at - fire_at is the tick's lateness.
    fired_at     timestamptz NOT NULL DEFAULT clock_timestamp(),

    PRIMARY KEY (schedule_id, fire_at)
);

CREATE INDEX schedule_runs_fired_at_idx ON schedule_runs (fired_at);
