-- Ready pools (issue 16): a pool may keep warm runners ahead of demand. A warm runner is a
-- lease of state `warm` owned by its pool; a lease request takes it (same lease id).

ALTER TABLE pools ADD COLUMN min_ready INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pools ADD COLUMN max_ready INTEGER NOT NULL DEFAULT 0;
ALTER TABLE pools ADD COLUMN warm_ttl_s INTEGER NOT NULL DEFAULT 3600;

-- When the warm runner was made (NULL: the lease never was warm), and when a request took
-- it (NULL while it is warm, or when it never was).
ALTER TABLE leases ADD COLUMN warm_since INTEGER;
ALTER TABLE leases ADD COLUMN taken_at INTEGER;

-- Warm runners have ledger kinds of their own. SQLite cannot change a CHECK constraint, so
-- the ledger is rebuilt with the same rows and sequence numbers.
CREATE TABLE ledger_new (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,
    lease_id      TEXT NOT NULL,
    pool          TEXT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('reserve', 'release', 'charge',
                                                'warm_reserve', 'warm_release', 'warm_charge')),
    amount_micros INTEGER NOT NULL CHECK (amount_micros >= 0)
);
INSERT INTO ledger_new (seq, at, lease_id, pool, kind, amount_micros)
    SELECT seq, at, lease_id, pool, kind, amount_micros FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_new RENAME TO ledger;
CREATE INDEX ledger_by_time ON ledger (at);
-- Every charge (a lease's and a warm runner's) counts against the spend caps.
CREATE INDEX ledger_charges ON ledger (at, amount_micros) WHERE kind IN ('charge', 'warm_charge');
