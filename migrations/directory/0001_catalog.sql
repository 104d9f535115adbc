-- The directory: the one catalog database of a data directory (`<data>/directory.sqlite`).
-- It holds what must be found without opening every object.

-- Every object that was ever activated, with the name it is addressed by (NULL for objects
-- made with a unique id) and its next alarm. Rule: `alarm_at` is never later than the alarm
-- stored in the object's own database, so a hibernated object is woken on time, also after a
-- restart. An earlier value only causes a harmless spurious wake.
CREATE TABLE objects (
    namespace  TEXT    NOT NULL,
    id         TEXT    NOT NULL,  -- 64 hex digits
    name       TEXT,
    created_at INTEGER NOT NULL,  -- Unix ms
    alarm_at   INTEGER,           -- Unix ms, NULL when the object has no alarm
    PRIMARY KEY (namespace, id)
) WITHOUT ROWID;

-- A small secondary index for the layers above the runtime: `kind` names what is indexed
-- (for example token hashes, or tenant names), `key` is unique within a kind, and `value` is
-- an opaque JSON document owned by that layer.
CREATE TABLE keys (
    kind  TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
