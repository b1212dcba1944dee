-- Tenants, their limits and their API keys. A NULL limit means "no limit".

CREATE TABLE tenants (
    name               TEXT PRIMARY KEY,
    max_jobs_in_flight INT CHECK (max_jobs_in_flight >= 0),
    submits_per_second DOUBLE PRECISION CHECK (submits_per_second > 0),
    submit_burst       INT CHECK (submit_burst >= 1),
    max_batch_items    INT CHECK (max_batch_items >= 0),
    priorities         TEXT,             -- allowed classes, comma-separated; NULL: all
    max_duration_s     REAL CHECK (max_duration_s > 0),
    max_steps          INT CHECK (max_steps >= 1),
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A key is shown once as `tt_<id>_<secret>`; only the SHA-256 of the whole key is kept.
-- `id` is not secret: it names the key in logs and in `tutti key revoke`.
CREATE TABLE api_keys (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL REFERENCES tenants (name),
    admin      BOOLEAN NOT NULL DEFAULT false,
    key_sha256 TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant);
