-- Scheduling: worker capacity from heartbeats, fair-share clocks between tenants, chunk
-- affinity and preemption marks on tasks.

-- Each worker's latest heartbeat. While the table is empty (no worker ever sent one), the
-- coordinator bounds dispatched work by its static max_in_flight instead.
CREATE TABLE workers (
    worker        TEXT PRIMARY KEY,
    denoise_slots INT NOT NULL,
    vocode_slots  INT NOT NULL,
    holds         JSONB NOT NULL DEFAULT '[]'::jsonb,   -- job ids whose latent it holds
    draining      BOOLEAN NOT NULL DEFAULT FALSE,
    last_seen     TIMESTAMPTZ NOT NULL
);

-- Start-time fair queueing: the virtual time of each (kind, class) ...
CREATE TABLE share_clocks (
    kind     TEXT NOT NULL,
    priority SMALLINT NOT NULL,
    vtime    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, priority)
);

-- ... and each tenant's tag within it.
CREATE TABLE tenant_shares (
    kind     TEXT NOT NULL,
    priority SMALLINT NOT NULL,
    tenant   TEXT NOT NULL,
    vtime    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, priority, tenant)
);

-- The worker a task was routed to (chunk affinity), and whether it yielded to higher classes.
ALTER TABLE tasks ADD COLUMN routed_to TEXT;
ALTER TABLE tasks ADD COLUMN preempted BOOLEAN NOT NULL DEFAULT FALSE;
