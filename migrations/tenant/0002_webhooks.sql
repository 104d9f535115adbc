-- Outbound webhooks and the GitHub integration.

-- The tenant's webhook endpoints. `secret` is sealed like provider credentials (bound to the
-- tenant and `webhook:<name>`); it is shown once, when berth generates it.
CREATE TABLE webhooks (
    name       TEXT PRIMARY KEY NOT NULL,
    url        TEXT NOT NULL,
    secret     BLOB NOT NULL,
    events     TEXT NOT NULL DEFAULT '[]',  -- JSON array of event types; empty: every type
    enabled    INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- The outbox: one row per (endpoint, event), written in the transaction of the state change
-- that made the event. Each endpoint's rows are delivered one at a time in `id` order, so a
-- receiver sees events in sequence order; a row is retried with backoff until it is
-- delivered or `dead_at` passes, then it is dead-lettered (status 'dead').
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint        TEXT NOT NULL,
    msg_id          TEXT NOT NULL,        -- webhook-id: the same on every attempt
    event_seq       INTEGER,              -- NULL for test deliveries
    event_type      TEXT NOT NULL,
    body            TEXT NOT NULL,        -- the exact bytes sent (signed)
    status          TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_status     INTEGER,              -- HTTP status of the last attempt, if any
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    dead_at         INTEGER NOT NULL,     -- created_at + 24 h
    finished_at     INTEGER
);
CREATE INDEX deliveries_pending ON deliveries (endpoint, id) WHERE status = 'pending';
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint, id);

-- GitHub deliveries already handled (X-GitHub-Delivery), kept 7 days.
CREATE TABLE github_deliveries (
    id         TEXT PRIMARY KEY NOT NULL,
    outcome    TEXT NOT NULL,
    at         INTEGER NOT NULL
) WITHOUT ROWID;
