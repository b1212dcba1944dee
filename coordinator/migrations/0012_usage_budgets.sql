-- Usage records: one per job, written (or rewritten, after a retry) in the transaction that
-- ends it, and kept when the job is deleted: what a platform bills on. Device time is the
-- workers' own timing of each finished chunk, split by stage and device kind.
ALTER TABLE jobs ADD COLUMN api_key_id TEXT;   -- the key that submitted it (NULL: auth off)

CREATE TABLE usage_records (
    job_id         UUID PRIMARY KEY,           -- no foreign key: the record outlives the job row
    tenant         TEXT NOT NULL,
    api_key_id     TEXT,
    model          TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    batch_id       UUID,
    outcome        TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'cancelled')),
    steps          INT NOT NULL,               -- denoising steps run
    audio_seconds  DOUBLE PRECISION NOT NULL,  -- delivered (every variation), 0 unless succeeded
    device_seconds DOUBLE PRECISION NOT NULL,  -- the sum of usage_stages
    ended_at       TIMESTAMPTZ NOT NULL
);

CREATE INDEX usage_by_tenant ON usage_records (tenant, ended_at);
CREATE INDEX usage_by_time ON usage_records (ended_at);

CREATE TABLE usage_stages (
    job_id  UUID NOT NULL REFERENCES usage_records (job_id) ON DELETE CASCADE,
    stage   TEXT NOT NULL,                     -- denoise, vocode
    device  TEXT NOT NULL,                     -- device kind: cpu, cuda, ... ('unknown': no worker row)
    seconds DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, stage, device)
);

-- Budgets per period (UTC day and calendar month), checked at submit against the usage
-- records (and, for audio, the jobs still in flight). NULL: no budget.
ALTER TABLE tenants ADD COLUMN audio_seconds_per_day DOUBLE PRECISION CHECK (audio_seconds_per_day >= 0);
ALTER TABLE tenants ADD COLUMN audio_seconds_per_month DOUBLE PRECISION CHECK (audio_seconds_per_month >= 0);
ALTER TABLE tenants ADD COLUMN device_seconds_per_day DOUBLE PRECISION CHECK (device_seconds_per_day >= 0);
ALTER TABLE tenants ADD COLUMN device_seconds_per_month DOUBLE PRECISION CHECK (device_seconds_per_month >= 0);
