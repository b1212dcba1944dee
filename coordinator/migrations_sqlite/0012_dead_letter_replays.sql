-- Dead letters put back on their queues: the same table as Postgres
-- (migrations/0013_dead_letter_replays.sql).
CREATE TABLE dead_letter_replays (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    replayed_by TEXT NOT NULL,
    queue       TEXT NOT NULL,
    messages    INTEGER NOT NULL,
    size_bytes  INTEGER NOT NULL,
    at          INTEGER NOT NULL
);
