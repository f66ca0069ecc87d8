-- Email 2FA challenges. The API creates the row; the worker makes the code,
-- stores only its hash here and mails it: the plain code is never in the
-- database, in Redis or in the API.

CREATE TABLE two_factor_challenges (
    id              uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- `login` challenges sign in; `test` ones only show that codes arrive.
    purpose         text NOT NULL DEFAULT 'login',
    -- SHA-256 of the challenge id and the code; null until the worker made the code.
    code_hash       bytea,
    attempts        integer NOT NULL DEFAULT 0,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    -- Set by five wrong codes or by a newer login.
    invalidated_at  timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT two_factor_challenges_purpose_check CHECK (purpose IN ('login', 'test'))
);

CREATE INDEX two_factor_challenges_open_idx ON two_factor_challenges (user_id)
    WHERE used_at IS NULL AND invalidated_at IS NULL;
CREATE INDEX two_factor_challenges_expires_at_idx ON two_factor_challenges (expires_at);
