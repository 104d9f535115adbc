-- Schema of the test `Counter` object.
CREATE TABLE counters (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL) WITHOUT ROWID;
-- Rows written by events, to check atomicity: a `Pair` event writes two rows for one key.
CREATE TABLE rows (key TEXT NOT NULL, part TEXT NOT NULL, PRIMARY KEY (key, part)) WITHOUT ROWID;
-- When alarms ran (the clock's time at the handler's start) and for which alarm time.
CREATE TABLE alarms_fired (seq INTEGER PRIMARY KEY AUTOINCREMENT, due_at INTEGER NOT NULL, ran_at INTEGER NOT NULL);
