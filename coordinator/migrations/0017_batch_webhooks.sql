-- A batch's own webhook (issue 26): where it calls back once its results manifest is written,
-- and its items for the job events it lists.
CREATE TABLE batch_webhooks (
    batch_id UUID PRIMARY KEY REFERENCES batches (id) ON DELETE CASCADE,
    url      TEXT NOT NULL,
    events   TEXT NOT NULL
);
