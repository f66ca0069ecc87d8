-- Email deliveries: one row per message. The API inserts the row and pushes
-- `EmailJob::Send { delivery_id }`; the worker renders, sends and marks it.
-- The row is the truth: a duplicate job for a sent row sends nothing.

CREATE TABLE email_deliveries (
    -- UUID v7; the message's Message-ID is derived from it.
    id               uuid PRIMARY KEY,
    to_address       text NOT NULL,
    template         text NOT NULL,
    -- What the template needs (names, links). Never a 2FA code: the worker makes those.
    data             jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL DEFAULT 'queued',
    attempts         integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 8,
    last_error       text,
    message_id       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- The sending worker's claim, as for tasks: a crash mid-send is retried after it.
    lease_owner      text,
    lease_expires_at timestamptz,
    enqueued_at      timestamptz,
    sent_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT email_deliveries_status_check CHECK (status IN ('queued', 'sending', 'sent', 'failed')),
    CONSTRAINT email_deliveries_attempts_check CHECK (attempts >= 0 AND max_attempts BETWEEN 1 AND 50)
);

-- The reconciler's scan and the queue counts.
CREATE INDEX email_deliveries_due_idx ON email_deliveries (next_attempt_at) WHERE status IN ('queued', 'sending');
CREATE INDEX email_deliveries_status_idx ON email_deliveries (status, created_at);

CREATE TRIGGER email_deliveries_set_updated_at
    BEFORE UPDATE ON email_deliveries
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
