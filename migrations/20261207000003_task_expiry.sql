-- Expiry: a task may carry a deadline to start by. One not started by then ends
-- `expired` (a final status) and never runs: the worker that would claim it ends it
-- instead, and the reconciler ends those no worker reaches (scheduled past their
-- deadline, a paused queue, no worker at all) through this index.
ALTER TABLE tasks ADD COLUMN expires_at timestamptz;
ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('pending', 'running', 'retrying', 'completed', 'failed', 'cancelled', 'expired'));
CREATE INDEX tasks_expiry_idx ON tasks (expires_at)
    WHERE status = 'pending' AND expires_at IS NOT NULL;
