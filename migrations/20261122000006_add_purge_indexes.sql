-- The daily purge deletes finished tasks and deliveries by age, in slices: these
-- let each slice find its rows without walking the recent ones.

CREATE INDEX tasks_finished_at_idx ON tasks (status, finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX email_deliveries_finished_idx ON email_deliveries (updated_at)
    WHERE status IN ('sent', 'failed');
