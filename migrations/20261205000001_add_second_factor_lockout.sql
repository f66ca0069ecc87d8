-- Wrong second-factor codes count against the account across challenges.
-- Each challenge allows five tries and a correct password opens a new one,
-- so per-challenge counting alone gives a holder of the password endless
-- guesses. Ten wrong codes within an hour pause the second step for an hour
-- (and mail the owner); a right code starts the count again.
ALTER TABLE users
    ADD COLUMN second_factor_failures integer NOT NULL DEFAULT 0,
    -- When the current hour of counting began.
    ADD COLUMN second_factor_window_start timestamptz,
    -- Until when every second-factor code is refused unchecked.
    ADD COLUMN second_factor_locked_until timestamptz;

-- Sent and failed mails keep no usable secret (reset and verification links)
-- for their retention period: the worker strips them when a send ends; here
-- the rows that ended before it did.
UPDATE email_deliveries SET data = data - '{link,token}'::text[]
    WHERE status IN ('sent', 'failed') AND (data ? 'link' OR data ? 'token');
