-- Usage records and budgets: the same tables as Postgres (migrations/0012_usage_budgets.sql).
ALTER TABLE jobs ADD COLUMN api_key_id TEXT;

CREATE TABLE usage_records (
    job_id         TEXT PRIMARY KEY,
    tenant         TEXT NOT NULL,
    api_key_id     TEXT,
    model          TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    batch_id       TEXT,
    outcome        TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'cancelled')),
    steps          INTEGER NOT NULL,
    audio_seconds  REAL NOT NULL,
    device_seconds REAL NOT NULL,
    ended_at       INTEGER NOT NULL
);

CREATE INDEX usage_by_tenant ON usage_records (tenant, ended_at);
CREATE INDEX usage_by_time ON usage_records (ended_at);

CREATE TABLE usage_stages (
    job_id  TEXT NOT NULL REFERENCES usage_records (job_id) ON DELETE CASCADE,
    stage   TEXT NOT NULL,
    device  TEXT NOT NULL,
    seconds REAL NOT NULL,
    PRIMARY KEY (job_id, stage, device)
);

ALTER TABLE tenants ADD COLUMN audio_seconds_per_day REAL CHECK (audio_seconds_per_day >= 0);
ALTER TABLE tenants ADD COLUMN audio_seconds_per_month REAL CHECK (audio_seconds_per_month >= 0);
ALTER TABLE tenants ADD COLUMN device_seconds_per_day REAL CHECK (device_seconds_per_day >= 0);
ALTER TABLE tenants ADD COLUMN device_seconds_per_month REAL CHECK (device_seconds_per_month >= 0);
