-- Scheduling (see migrations/0003_scheduling.sql): worker heartbeats, fair-share clocks,
-- chunk affinity and preemption marks. Times are INTEGER microseconds, holds a JSON array.

CREATE TABLE workers (
    worker        TEXT PRIMARY KEY,
    denoise_slots INTEGER NOT NULL,
    vocode_slots  INTEGER NOT NULL,
    holds         TEXT NOT NULL DEFAULT '[]',
    draining      INTEGER NOT NULL DEFAULT 0,
    last_seen     INTEGER NOT NULL
);

CREATE TABLE share_clocks (
    kind     TEXT NOT NULL,
    priority INTEGER NOT NULL,
    vtime    REAL NOT NULL,
    PRIMARY KEY (kind, priority)
);

CREATE TABLE tenant_shares (
    kind     TEXT NOT NULL,
    priority INTEGER NOT NULL,
    tenant   TEXT NOT NULL,
    vtime    REAL NOT NULL,
    PRIMARY KEY (kind, priority, tenant)
);

ALTER TABLE tasks ADD COLUMN routed_to TEXT;
ALTER TABLE tasks ADD COLUMN preempted INTEGER NOT NULL DEFAULT 0;
