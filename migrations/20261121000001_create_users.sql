-- Accounts: the first table every later one refers to.

-- Keeps updated_at true without trusting every UPDATE to set it; later tables reuse it.
CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END;
$$;

CREATE TABLE users (
    -- UUID v7, made by the application: time-ordered, so the primary key index stays compact.
    id              uuid PRIMARY KEY,
    username        text NOT NULL,
    -- Stored lower-case (the domain type lowers it); the check catches any path that forgets.
    email           text NOT NULL,
    -- argon2id PHC string. Null for accounts that only sign in through an OAuth provider.
    password_hash   text,
    first_name      text,
    last_name       text,
    phone_number    text,
    phone_verified  boolean NOT NULL DEFAULT false,
    avatar_url      text,
    bio             text,
    -- An IANA zone name, validated by the application.
    timezone        text NOT NULL DEFAULT 'UTC',
    language        text NOT NULL DEFAULT 'en',
    role            text NOT NULL DEFAULT 'user',
    is_active       boolean NOT NULL DEFAULT true,
    two_fa_enabled  boolean NOT NULL DEFAULT false,
    email_verified  boolean NOT NULL DEFAULT false,
    last_login_at   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT users_role_check CHECK (role IN ('user', 'admin', 'superadmin')),
    CONSTRAINT users_username_format CHECK (username ~ '^[A-Za-z0-9_.-]{3,50}$'),
    CONSTRAINT users_email_lowercase CHECK (email = lower(email)),
    CONSTRAINT users_email_length CHECK (char_length(email) BETWEEN 3 AND 254)
);

-- Usernames are unique without regard to case: "Alice" and "alice" are one account.
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_key ON users (email);
-- The admin list filters by role and pages newest first.
CREATE INDEX users_role_created_at_idx ON users (role, created_at DESC);
CREATE INDEX users_created_at_idx ON users (created_at DESC);

CREATE TRIGGER users_set_updated_at
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
