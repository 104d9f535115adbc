-- The schema of one tenant's database (the TenantBroker object).
-- Times are Unix milliseconds; money is integer micro-units of the tenant's currency.
-- Limits and the creation time live in the runtime's key-value table (`u:limits`,
-- `u:created_at`).

-- Provider accounts. `credentials` is sealed (XChaCha20-Poly1305 under a key derived from
-- the master key, bound to tenant and account name); it is never returned by the API.
CREATE TABLE providers (
    name        TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,
    config      TEXT NOT NULL,     -- JSON object
    credentials BLOB,              -- sealed JSON, NULL when none were given
    updated_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE pools (
    name                TEXT PRIMARY KEY NOT NULL,
    provider            TEXT NOT NULL,
    machine_type        TEXT NOT NULL,
    hourly_price_micros INTEGER NOT NULL CHECK (hourly_price_micros >= 0),
    price_source        TEXT NOT NULL CHECK (price_source IN ('pool', 'provider')),
    max_active          INTEGER,
    image               TEXT,
    region              TEXT,
    command             TEXT NOT NULL DEFAULT '[]',   -- JSON array of strings
    labels              TEXT NOT NULL DEFAULT '[]',   -- JSON array of strings
    updated_at          INTEGER NOT NULL
) WITHOUT ROWID;

-- Every lease ever requested. Non-terminal ones are also held in memory by the object.
CREATE TABLE leases (
    id                  TEXT PRIMARY KEY NOT NULL,   -- lease_<ms hex><seq><random>: sorts by creation
    pool                TEXT NOT NULL,
    state               TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    granted_at          INTEGER,
    ready_at            INTEGER,
    ended_at            INTEGER,                     -- when the end was decided
    expires_at          INTEGER,                     -- granted_at + ttl_s
    ttl_s               INTEGER NOT NULL,
    idle_timeout_s      INTEGER,
    last_heartbeat_at   INTEGER,
    wait_until          INTEGER,                     -- deadline of the queue wait
    labels              TEXT NOT NULL DEFAULT '{}',  -- JSON object of strings
    end_reason          TEXT,
    provider            TEXT NOT NULL,               -- provider account at request time
    spec                TEXT NOT NULL,               -- JSON: the pool's runner spec at request time
    runner_id           TEXT,
    runner_address      TEXT,
    runner_metadata     TEXT NOT NULL DEFAULT '{}',
    runner_destroyed_at INTEGER,
    hourly_price_micros INTEGER NOT NULL,
    reserved_micros     INTEGER NOT NULL DEFAULT 0,  -- open reservation
    charged_micros      INTEGER NOT NULL DEFAULT 0,
    provider_attempts   INTEGER NOT NULL DEFAULT 0,
    last_error          TEXT,
    next_attempt_at     INTEGER                      -- next provider retry
) WITHOUT ROWID;
CREATE INDEX leases_by_state ON leases (state, id);

-- Append-only: a reservation at grant (and at each TTL extension), then at the end one
-- charge and one release of everything reserved. Usage reports are sums over these rows.
CREATE TABLE ledger (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,
    lease_id      TEXT NOT NULL,
    pool          TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('reserve', 'release', 'charge')),
    amount_micros INTEGER NOT NULL CHECK (amount_micros >= 0)
);
CREATE INDEX ledger_by_time ON ledger (at);

-- Idempotency keys of lease requests, kept 24 h.
CREATE TABLE idempotency (
    key          TEXT PRIMARY KEY NOT NULL,
    request_hash TEXT NOT NULL,   -- SHA-256 of the canonical request body
    lease_id     TEXT NOT NULL,
    queued       INTEGER NOT NULL, -- 1 if the first answer was 202 (queued)
    created_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_by_time ON idempotency (created_at);

-- Lease and budget events, numbered per tenant. The source of SSE streams (resumable by
-- `seq`) and of webhook deliveries.
CREATE TABLE events (
    seq  INTEGER PRIMARY KEY,
    at   INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL            -- JSON
);
CREATE INDEX events_by_time ON events (at);
