-- Cancelling a running task. The API cannot stop another process's attempt, so it
-- records the request here and tells the lease holder over Redis; the attempt then
-- ends `cancelled` with its own fenced write. The request is kept on the row so a
-- worker that missed the message sees it at its next lease renewal, and a worker
-- that died leaves a row the reconciler ends `cancelled`, not `retrying`.
ALTER TABLE tasks ADD COLUMN cancel_requested_at timestamptz;
