-- Counts how often this migration ran: it must be exactly once per object.
CREATE TABLE migration_runs (n INTEGER NOT NULL);
INSERT INTO migration_runs (n) VALUES (1);
