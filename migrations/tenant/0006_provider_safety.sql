-- Providers on real money: capacity fallback, lost runners, stuck destroys, accounts that
-- hold still under live leases. Every new column has a default that reads old rows as they
-- were: no alternatives, no attempts recorded, never lost, never stuck.

-- A pool's ordered fallbacks after its own machine type and region: a JSON array of
-- {machine_type, region, hourly_price_micros}. A create that fails for capacity moves on to
-- the next.
ALTER TABLE pools ADD COLUMN alternatives TEXT NOT NULL DEFAULT '[]';

-- Every create attempt of the lease's runner: a JSON array of
-- {machine_type, region, error_class, message, at} (at: Unix ms), oldest first, bounded.
ALTER TABLE leases ADD COLUMN provisioning_attempts TEXT NOT NULL DEFAULT '[]';
-- Which of the pool's choices (0: its own, 1…: its alternatives, as copied into `spec`)
-- the next create tries.
ALTER TABLE leases ADD COLUMN alternative INTEGER NOT NULL DEFAULT 0;
-- For a lease ended `runner_lost`: when a listing last showed its runner (its charge ends
-- there).
ALTER TABLE leases ADD COLUMN runner_last_seen_at INTEGER;
-- When `runner.destroy_stuck` was announced for the lease (once per lease).
ALTER TABLE leases ADD COLUMN stuck_at INTEGER;

-- An account's identity (kind, config, credentials) as it was before a forced change while
-- it still had live runners: the destroys still owed to those runners go there, not to the
-- new identity. `credentials` is the same sealed blob (bound to tenant and account name).
-- `leases` is a JSON array of the lease ids still owed a destroy; the row goes with the last.
CREATE TABLE retired_providers (
    id          TEXT PRIMARY KEY NOT NULL,   -- <name>@<retired_at>
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    config      TEXT NOT NULL,
    credentials BLOB,
    retired_at  INTEGER NOT NULL,
    leases      TEXT NOT NULL DEFAULT '[]'
) WITHOUT ROWID;
