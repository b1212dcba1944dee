-- Backfill batches: a named set of items, each item one batch-class job whose id derives from
-- (batch, item), so a resubmission finds what it already holds and adds only what is missing.

CREATE TABLE batches (
    id              UUID PRIMARY KEY,          -- derived from (tenant, name)
    tenant          TEXT NOT NULL,
    name            TEXT NOT NULL,
    manifest_uri    TEXT,
    sealed          BOOLEAN NOT NULL DEFAULT false,  -- every item received
    cancelled       BOOLEAN NOT NULL DEFAULT false,
    results_key     TEXT,                      -- set once, when the results manifest is written
    finishing_until TIMESTAMPTZ,               -- a coordinator is writing the results until then
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    UNIQUE (tenant, name)
);

CREATE INDEX batches_to_finish ON batches (id) WHERE sealed AND results_key IS NULL;

CREATE TABLE batch_items (
    batch_id UUID NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    item_id  TEXT NOT NULL,
    line     BIGINT NOT NULL,
    job_id   UUID REFERENCES jobs (id) ON DELETE CASCADE,  -- NULL: rejected at submission
    error    TEXT,                                         -- why it was rejected
    PRIMARY KEY (batch_id, item_id)
);

CREATE INDEX batch_items_by_line ON batch_items (batch_id, line, item_id);
