-- Sign-in state: refresh tokens (rotated, in families) and API keys.
-- Both are stored only as SHA-256 hashes of random secrets of at least 128 bits:
-- the database alone never lets anyone sign in.

-- Bumped on password change, role change, deactivation and "log out everywhere";
-- an access token carries the version it was issued under and dies with it.
ALTER TABLE users ADD COLUMN token_version integer NOT NULL DEFAULT 0;

CREATE TABLE refresh_tokens (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- Every token descended from one sign-in shares a family; presenting a spent
    -- token revokes the whole family (the thief's copy and the owner's alike).
    family_id     uuid NOT NULL,
    token_hash    bytea NOT NULL,
    expires_at    timestamptz NOT NULL,
    -- Set when the token is exchanged for a new pair; a token is spent once.
    used_at       timestamptz,
    revoked_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT refresh_tokens_token_hash_key UNIQUE (token_hash)
);

CREATE INDEX refresh_tokens_user_id_idx ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_family_id_idx ON refresh_tokens (family_id);
-- The hourly purge deletes by expiry.
CREATE INDEX refresh_tokens_expires_at_idx ON refresh_tokens (expires_at);

CREATE TRIGGER refresh_tokens_set_updated_at
    BEFORE UPDATE ON refresh_tokens
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          text NOT NULL,
    -- The visible start of the key (`keel_ab12cd34`), so owners can tell keys apart.
    prefix        text NOT NULL,
    key_hash      bytea NOT NULL,
    expires_at    timestamptz,
    last_used_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash),
    CONSTRAINT api_keys_name_length CHECK (char_length(name) BETWEEN 1 AND 100)
);

CREATE INDEX api_keys_user_id_idx ON api_keys (user_id, created_at DESC);

CREATE TRIGGER api_keys_set_updated_at
    BEFORE UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
