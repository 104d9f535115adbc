-- GitHub just-in-time runners. Old rows read as they were: no pool registers runners, no
-- lease has a registration.

-- Whether each lease of the pool gets a just-in-time registration (`BERTH_GITHUB_JITCONFIG`).
ALTER TABLE pools ADD COLUMN github INTEGER NOT NULL DEFAULT 0;

-- One row per lease berth registered with GitHub, or whose job GitHub named a runner for.
-- `config` is the encoded JIT config sealed with the tenant's keys (bound to the lease id),
-- kept while the lease is open so a create retried after a crash reuses it; emptied when the
-- lease ends. `state`: `job` (no registration, only what `in_progress` said), `registered`,
-- `removing` (the lease ended; the registration is deleted at `next_attempt_at`), `removed`
-- (deleted, or gone already), `abandoned` (removal gave up; reconciliation may still find it).
CREATE TABLE github_runners (
    lease_id        TEXT PRIMARY KEY NOT NULL,
    state           TEXT NOT NULL,
    registration_id INTEGER,     -- GitHub's runner id of the registration
    config          BLOB,        -- sealed encoded_jit_config
    job_id          INTEGER,     -- workflow_job.id (from in_progress)
    runner_name     TEXT,        -- workflow_job.runner_name (from in_progress)
    runner_id       INTEGER,     -- workflow_job.runner_id (from in_progress)
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error      TEXT,
    updated_at      INTEGER NOT NULL
) WITHOUT ROWID;
