-- Webhooks (issue 26): a request's own callback, a tenant's default endpoint, its signing
-- secrets (several active during a rotation's overlap), and the outbox of deliveries, written
-- in the transaction of the state change each reports and sent by any replica.

CREATE TABLE job_webhooks (
    job_id UUID PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    url    TEXT NOT NULL,
    events TEXT NOT NULL  -- space-separated event names
);

CREATE TABLE tenant_webhooks (
    tenant     TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    events     TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE webhook_secrets (
    id         BIGSERIAL PRIMARY KEY,
    tenant     TEXT NOT NULL,
    secret     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ  -- NULL: the current secret
);

CREATE INDEX webhook_secrets_by_tenant ON webhook_secrets (tenant, id);

CREATE TABLE webhook_deliveries (
    id           UUID PRIMARY KEY,  -- the webhook-id header, the same on every attempt
    tenant       TEXT NOT NULL,
    job_id       UUID,
    batch_id     UUID,
    event        TEXT NOT NULL,
    url          TEXT NOT NULL,
    payload      TEXT NOT NULL,     -- the body, byte for byte as signed
    state        TEXT NOT NULL DEFAULT 'pending',  -- pending, delivered, failed
    attempts     INT NOT NULL DEFAULT 0,
    next_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_until  TIMESTAMPTZ,       -- claimed by a sender until then
    window_start TIMESTAMPTZ NOT NULL DEFAULT now(),  -- retries stop retry_for after this
    last_status  INT,
    last_error   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_tenant ON webhook_deliveries (tenant, created_at DESC, id DESC);

-- A batch item's job calls back only through its batch: found by job.
CREATE INDEX batch_items_by_job ON batch_items (job_id);
