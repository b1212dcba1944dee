-- Backfill batches (see migrations/0004_batches.sql); UUIDs TEXT, times INTEGER microseconds.

CREATE TABLE batches (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    name            TEXT NOT NULL,
    manifest_uri    TEXT,
    sealed          INTEGER NOT NULL DEFAULT 0,
    cancelled       INTEGER NOT NULL DEFAULT 0,
    results_key     TEXT,
    finishing_until INTEGER,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER,
    UNIQUE (tenant, name)
);

CREATE TABLE batch_items (
    batch_id TEXT NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    item_id  TEXT NOT NULL,
    line     INTEGER NOT NULL,
    job_id   TEXT REFERENCES jobs (id) ON DELETE CASCADE,
    error    TEXT,
    PRIMARY KEY (batch_id, item_id)
);

CREATE INDEX batch_items_by_line ON batch_items (batch_id, line, item_id);
