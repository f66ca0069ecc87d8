-- Accounts of OAuth 2.0 / OpenID Connect providers, each linked to the Keel
-- account it signs in to. A sign-in finds its account by (provider, subject)
-- only, never by email: an address can change hands at a provider, its
-- account id cannot. Accounts that only sign in this way have a null
-- `users.password_hash`.

CREATE TABLE oauth_identities (
    -- Keel's name of the provider (`google`, `github`, or one of OAUTH_OIDC_PROVIDERS).
    provider    text NOT NULL,
    -- The provider's stable id of its account: `sub`, or GitHub's numeric id.
    subject     text NOT NULL,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The address the provider gave at the last sign-in; for people reading
    -- the table (support, audits), not for matching.
    email       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT oauth_identities_pkey PRIMARY KEY (provider, subject)
);

-- A user's identities, and the cascade when a user is deleted.
CREATE INDEX oauth_identities_user_id_idx ON oauth_identities (user_id);

CREATE TRIGGER oauth_identities_set_updated_at
    BEFORE UPDATE ON oauth_identities
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
