-- GitHub `workflow_job` deliveries handled, by job and action, kept 7 days. They replace
-- `github_deliveries` (by `X-GitHub-Delivery`), which GitHub does not sign: a captured
-- `queued` payload resent under a new delivery id must not make a second lease, also after
-- the lease request's 24 h idempotency key expired. `github_deliveries` is no longer written;
-- pruning empties it.
CREATE TABLE github_jobs (
    job_id   INTEGER NOT NULL,   -- workflow_job.id
    action   TEXT NOT NULL,      -- queued, completed, in_progress, …
    delivery TEXT NOT NULL,      -- X-GitHub-Delivery of the delivery handled (for people)
    outcome  TEXT NOT NULL,      -- leased, queued, released, ignored
    at       INTEGER NOT NULL,
    PRIMARY KEY (job_id, action)
) WITHOUT ROWID;
CREATE INDEX github_jobs_by_time ON github_jobs (at);

-- Jobs leased before this table existed are remembered from their leases' label, so a
-- replay of their `queued` is a duplicate after the upgrade too (rows past 7 days are
-- pruned at the next prune).
INSERT OR IGNORE INTO github_jobs (job_id, action, delivery, outcome, at)
SELECT CAST(json_extract(labels, '$."github-job-id"') AS INTEGER), 'queued', '', 'leased',
       created_at
FROM leases
WHERE json_extract(labels, '$."github-job-id"') IS NOT NULL;
