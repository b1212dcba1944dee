-- See migrations/0008_operator_view.sql; times INTEGER microseconds.
ALTER TABLE workers ADD COLUMN device TEXT NOT NULL DEFAULT '';
ALTER TABLE workers ADD COLUMN chunks_per_forward REAL NOT NULL DEFAULT 0;

CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    refused_by  TEXT NOT NULL,
    queue       TEXT NOT NULL,
    error       TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL,
    at          INTEGER NOT NULL
);
