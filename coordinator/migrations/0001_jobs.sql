-- Jobs, their stage tasks, outputs and history. Postgres is the source of truth: the
-- dispatcher publishes tasks only from committed rows of `tasks`.

CREATE TABLE jobs (
    id              UUID PRIMARY KEY,
    tenant          TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    stage           TEXT NOT NULL CHECK (stage IN ('queued', 'denoise', 'vocode', 'done')),
    priority        SMALLINT NOT NULL,
    spec            JSONB NOT NULL,      -- JobSpec: what workers run
    request         BYTEA NOT NULL,      -- the accepted SubmitGenerationRequest (protobuf), defaults filled
    request_hash    TEXT NOT NULL,       -- of the request as sent, for idempotency checks
    idempotency_key TEXT,
    labels          JSONB NOT NULL DEFAULT '{}'::jsonb,
    steps_total     INT NOT NULL,
    chunk_steps     INT NOT NULL,
    steps_done      INT NOT NULL DEFAULT 0,
    attempts        INT NOT NULL DEFAULT 0,
    error_code      TEXT,
    error_message   TEXT,
    timings         JSONB NOT NULL DEFAULT '{}'::jsonb,   -- stage -> milliseconds of work
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    UNIQUE (tenant, idempotency_key)
);

CREATE INDEX jobs_by_tenant ON jobs (tenant, created_at DESC, id DESC);
CREATE INDEX jobs_by_labels ON jobs USING GIN (labels);

CREATE TABLE tasks (
    job_id        UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    chunk         INT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('denoise', 'vocode')),
    from_step     INT NOT NULL,
    to_step       INT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'dispatched', 'done', 'failed', 'cancelled')),
    attempt       INT NOT NULL DEFAULT 1,
    priority      SMALLINT NOT NULL,
    not_before    TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    dispatched_at TIMESTAMPTZ,
    heartbeat_at  TIMESTAMPTZ,
    finished_at   TIMESTAMPTZ,
    worker        TEXT,
    millis        BIGINT,
    last_error    TEXT,
    PRIMARY KEY (job_id, chunk)
);

CREATE INDEX tasks_pending ON tasks (priority, not_before, created_at) WHERE state = 'pending';
CREATE INDEX tasks_dispatched ON tasks (kind, heartbeat_at) WHERE state = 'dispatched';

CREATE TABLE outputs (
    job_id      UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx         INT NOT NULL,
    key         TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    duration_s  REAL NOT NULL,
    sample_rate INT NOT NULL,
    format      TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
);

-- The story of each job: every dispatch, result, retry and state change.
CREATE TABLE job_events (
    id      BIGSERIAL PRIMARY KEY,
    job_id  UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind    TEXT NOT NULL,
    chunk   INT,
    attempt INT,
    detail  JSONB NOT NULL DEFAULT '{}'::jsonb,
    at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX job_events_by_job ON job_events (job_id, id);
