-- Unique tasks: a create may ask that no second task with the same key (kind, owner
-- and chosen payload fields, hashed) is unfinished, or was created within a period.
-- Creates of one key take a transaction-scoped advisory lock on it, look, and insert,
-- so concurrent creates on any number of API replicas make exactly one; the partial
-- unique index below is the database's own guarantee for the unfinished case.
ALTER TABLE tasks ADD COLUMN unique_key text;
CREATE UNIQUE INDEX tasks_unique_live_idx ON tasks (unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('pending', 'running', 'retrying');
CREATE INDEX tasks_unique_key_idx ON tasks (unique_key, created_at DESC)
    WHERE unique_key IS NOT NULL;
