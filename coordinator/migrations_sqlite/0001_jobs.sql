-- The embedded job store: the same tables as Postgres (migrations/0001_jobs.sql). UUIDs are
-- TEXT, times are INTEGER microseconds since the epoch (so comparisons are numeric), JSON is
-- TEXT read with SQLite's json functions.

CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    stage           TEXT NOT NULL CHECK (stage IN ('queued', 'denoise', 'vocode', 'done')),
    priority        INTEGER NOT NULL,
    spec            TEXT NOT NULL,
    request         BLOB NOT NULL,
    request_hash    TEXT NOT NULL,
    idempotency_key TEXT,
    labels          TEXT NOT NULL DEFAULT '{}',
    steps_total     INTEGER NOT NULL,
    chunk_steps     INTEGER NOT NULL,
    steps_done      INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    error_code      TEXT,
    error_message   TEXT,
    timings         TEXT NOT NULL DEFAULT '{}',
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    UNIQUE (tenant, idempotency_key)
);

CREATE INDEX jobs_by_tenant ON jobs (tenant, created_at DESC, id DESC);

CREATE TABLE tasks (
    job_id        TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    chunk         INTEGER NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('denoise', 'vocode')),
    from_step     INTEGER NOT NULL,
    to_step       INTEGER NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'dispatched', 'done', 'failed', 'cancelled')),
    attempt       INTEGER NOT NULL DEFAULT 1,
    priority      INTEGER NOT NULL,
    not_before    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    dispatched_at INTEGER,
    heartbeat_at  INTEGER,
    finished_at   INTEGER,
    worker        TEXT,
    millis        INTEGER,
    last_error    TEXT,
    PRIMARY KEY (job_id, chunk)
);

CREATE INDEX tasks_by_state ON tasks (state, priority, not_before, created_at);

CREATE TABLE outputs (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx         INTEGER NOT NULL,
    key         TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size_bytes  INTEGER NOT NULL,
    duration_s  REAL NOT NULL,
    sample_rate INTEGER NOT NULL,
    format      TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
);

CREATE TABLE job_events (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind    TEXT NOT NULL,
    chunk   INTEGER,
    attempt INTEGER,
    detail  TEXT NOT NULL DEFAULT '{}',
    at      INTEGER NOT NULL
);

CREATE INDEX job_events_by_job ON job_events (job_id, id);
