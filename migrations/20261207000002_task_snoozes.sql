-- Snoozes: a handler may answer "not now, try again in D" without spending an
-- attempt (Oban's snooze, River's JobSnooze). Counted per task, so a kind can cap
-- how often one task may put itself off before it fails.
ALTER TABLE tasks ADD COLUMN snoozes integer NOT NULL DEFAULT 0;
