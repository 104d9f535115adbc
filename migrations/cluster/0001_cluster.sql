-- Cluster mode: what the nodes of one berth cluster share in PostgreSQL (DESIGN.md §10).
-- A node's local SQLite files are a cache it can lose; everything durable is here.

-- Membership: one row per running node process (an incarnation: a restarted node is a new
-- row, so a paused old process never shares an identity with its successor). A node renews
-- `deadline` (PostgreSQL's clock) while it lives; once it has passed, the node's objects may
-- be claimed by others.
CREATE TABLE berth_nodes (
    incarnation TEXT        PRIMARY KEY,
    name        TEXT        NOT NULL,  -- --node-id, for people
    url         TEXT        NOT NULL,  -- --advertise-url: where other nodes forward requests
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    deadline    TIMESTAMPTZ NOT NULL
);

-- The directory's objects, with their owner and history positions. `owner` is the
-- incarnation that claimed the object with `epoch`; a claim increments `epoch`, and every
-- commit checks (under this row's lock) that owner and epoch are still the committer's.
-- `seq` is the last committed batch; `snapshot_seq` what the stored snapshot covers.
CREATE TABLE berth_objects (
    namespace    TEXT    NOT NULL,
    id           TEXT    NOT NULL,  -- 64 hex digits
    name         TEXT,
    created_at   BIGINT  NOT NULL,  -- Unix ms
    alarm_at     BIGINT,            -- Unix ms, NULL when the object has no alarm
    owner        TEXT,              -- berth_nodes.incarnation, NULL when unowned
    epoch        BIGINT  NOT NULL DEFAULT 0,
    seq          BIGINT  NOT NULL DEFAULT 0,
    snapshot_seq BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (namespace, id)
);
CREATE INDEX berth_objects_alarm ON berth_objects (alarm_at) WHERE alarm_at IS NOT NULL;
CREATE INDEX berth_objects_owner ON berth_objects (owner) WHERE owner IS NOT NULL;

-- Each object's commit log: one row per committed batch, its logical writes encoded by
-- `objects::record` (postcard). Rows up to the object's `snapshot_seq` are deleted when a
-- snapshot is stored.
CREATE TABLE berth_log (
    namespace TEXT   NOT NULL,
    id        TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    epoch     BIGINT NOT NULL,
    record    BYTEA  NOT NULL,
    PRIMARY KEY (namespace, id, seq)
);

-- The latest snapshot of each object: its SQLite file (`VACUUM INTO`), covering the log up to
-- and including `seq`.
CREATE TABLE berth_snapshots (
    namespace TEXT   NOT NULL,
    id        TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    data      BYTEA  NOT NULL,
    PRIMARY KEY (namespace, id)
);

-- The batched writer statements of each build, by fingerprint: a log record names the set it
-- was written with, so a node of a newer build replays an older record with the statements
-- that wrote it.
CREATE TABLE berth_writer_sets (
    fingerprint TEXT   PRIMARY KEY,  -- hex SHA-256 of the statements
    statements  TEXT[] NOT NULL
);

-- The directory's key index (token hashes, tenant names), as in the embedded directory.
CREATE TABLE berth_keys (
    kind  TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
