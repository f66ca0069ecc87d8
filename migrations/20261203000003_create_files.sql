-- Files: uploads, avatars and task outputs. The bytes live in object storage
-- (a local directory or an S3-compatible store) under `object_key`; this row
-- is the metadata. The object is written before the row and deleted after
-- it, so a crash leaves at worst an object without a row, which the
-- scheduler's maintenance sweeps away; never a row without its object.

CREATE TABLE files (
    id            uuid PRIMARY KEY,
    owner_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- `upload` (POST /files), `avatar` (PUT /users/me/avatar), `task_output`.
    purpose       text NOT NULL DEFAULT 'upload',
    -- The sanitised name: no directories, no control characters.
    name          text NOT NULL,
    size          bigint NOT NULL,
    -- Detected from the bytes, never taken from the client.
    content_type  text NOT NULL,
    sha256        bytea NOT NULL,
    description   text,
    tags          text[] NOT NULL DEFAULT '{}',
    -- The task that produced a `task_output` file.
    task_id       uuid REFERENCES tasks (id) ON DELETE SET NULL,
    object_key    text NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),

    CONSTRAINT files_purpose_check CHECK (purpose IN ('upload', 'avatar', 'task_output')),
    CONSTRAINT files_size_check CHECK (size >= 0),
    CONSTRAINT files_sha256_length CHECK (octet_length(sha256) = 32),
    CONSTRAINT files_name_length CHECK (char_length(name) BETWEEN 1 AND 255)
);

-- Listing one owner's files newest first, and summing them for the quota.
CREATE INDEX files_owner_created_at_idx ON files (owner_id, created_at DESC);
CREATE INDEX files_created_at_idx ON files (created_at DESC);
CREATE INDEX files_task_id_idx ON files (task_id) WHERE task_id IS NOT NULL;
