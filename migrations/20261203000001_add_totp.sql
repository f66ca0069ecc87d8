-- TOTP (RFC 6238) as a second factor, beside or instead of emailed codes.

-- Set in the same transaction that confirms or removes the secret below, so
-- sign-in reads one row (the user, often from the cache) to choose a factor.
ALTER TABLE users ADD COLUMN totp_enabled boolean NOT NULL DEFAULT false;

CREATE TABLE totp_secrets (
    user_id          uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    -- AES-256-GCM under a key derived from SECRET_KEY, the user id as
    -- associated data (a row copied to another user does not decrypt):
    -- the 12-byte nonce, then the ciphertext and its tag.
    secret_sealed    bytea NOT NULL,
    -- Null while set up but not yet confirmed with a code: it signs nothing in.
    confirmed_at     timestamptz,
    -- The newest time step a code was accepted for. Only later steps are
    -- accepted after it, so a code never works twice.
    last_step        bigint,
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- Single-use codes for when the authenticator is lost. SHA-256 of the user id
-- and the code: the codes are random (50 bits), so a slow hash adds nothing.
CREATE TABLE totp_recovery_codes (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  bytea NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

-- Which factor a login challenge asks for. A `totp` challenge never has a
-- code_hash: the code comes from the user's authenticator, not the worker.
ALTER TABLE two_factor_challenges
    ADD COLUMN method text NOT NULL DEFAULT 'email',
    ADD CONSTRAINT two_factor_challenges_method_check CHECK (method IN ('email', 'totp'));
