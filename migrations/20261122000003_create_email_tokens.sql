-- Single-use tokens sent by email: address verification and password reset.
-- Only the SHA-256 of a token is stored; the token itself lives in the email.

CREATE TABLE email_tokens (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose     text NOT NULL,
    token_hash  bytea NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT email_tokens_purpose_check CHECK (purpose IN ('verify_email', 'reset_password'))
);

CREATE UNIQUE INDEX email_tokens_token_hash_key ON email_tokens (token_hash);
CREATE INDEX email_tokens_user_id_idx ON email_tokens (user_id, purpose);
-- The hourly purge of expired and used tokens.
CREATE INDEX email_tokens_expires_at_idx ON email_tokens (expires_at);
