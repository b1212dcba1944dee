-- Webhooks (issue 26), as in the Postgres migration 0015; times are microseconds since the
-- epoch, ids text.

CREATE TABLE job_webhooks (
    job_id TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    url    TEXT NOT NULL,
    events TEXT NOT NULL
);

CREATE TABLE tenant_webhooks (
    tenant     TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    events     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE webhook_secrets (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant     TEXT NOT NULL,
    secret     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);

CREATE INDEX webhook_secrets_by_tenant ON webhook_secrets (tenant, id);

CREATE TABLE webhook_deliveries (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    job_id       TEXT,
    batch_id     TEXT,
    event        TEXT NOT NULL,
    url          TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      INTEGER NOT NULL,
    lease_until  INTEGER,
    window_start INTEGER NOT NULL,
    last_status  INTEGER,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    finished_at  INTEGER
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_tenant ON webhook_deliveries (tenant, created_at DESC, id DESC);

CREATE INDEX batch_items_by_job ON batch_items (job_id);
