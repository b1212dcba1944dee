-- A batch's own webhook (issue 26), as in the Postgres migration 0017.
CREATE TABLE batch_webhooks (
    batch_id TEXT PRIMARY KEY REFERENCES batches (id) ON DELETE CASCADE,
    url      TEXT NOT NULL,
    events   TEXT NOT NULL
);
