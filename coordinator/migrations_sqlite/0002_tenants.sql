-- Tenants, their limits and their API keys (migrations/0002_tenants.sql). Times are INTEGER
-- microseconds since the epoch; booleans are 0/1.

CREATE TABLE tenants (
    name               TEXT PRIMARY KEY,
    max_jobs_in_flight INTEGER CHECK (max_jobs_in_flight >= 0),
    submits_per_second REAL CHECK (submits_per_second > 0),
    submit_burst       INTEGER CHECK (submit_burst >= 1),
    max_batch_items    INTEGER CHECK (max_batch_items >= 0),
    priorities         TEXT,
    max_duration_s     REAL CHECK (max_duration_s > 0),
    max_steps          INTEGER CHECK (max_steps >= 1),
    created_at         INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL REFERENCES tenants (name),
    admin      INTEGER NOT NULL DEFAULT 0,
    key_sha256 TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant);
