-- Indexes for pruning: the object looks up the oldest row of each retained table to know
-- when it next has something to delete (an idle tenant with nothing to expire sleeps), and
-- the hourly deletes go by time.
CREATE INDEX deliveries_by_finish ON deliveries (finished_at) WHERE status != 'pending';
CREATE INDEX github_deliveries_by_time ON github_deliveries (at);
