-- DeleteJob: the job's outputs and inputs are removed from the blob store and its prompt
-- blanked; the row (and its usage record) stays, marked.
ALTER TABLE jobs ADD COLUMN deleted_at TIMESTAMPTZ;

-- Retention: an output's object is deleted by the janitor once `expires_at` has passed (NULL:
-- kept until the job is deleted); `deleted_at` says it is gone, so GetJob hands out no URL.
ALTER TABLE outputs ADD COLUMN expires_at TIMESTAMPTZ;
ALTER TABLE outputs ADD COLUMN deleted_at TIMESTAMPTZ;
CREATE INDEX outputs_to_expire ON outputs (expires_at)
    WHERE deleted_at IS NULL AND expires_at IS NOT NULL;

-- Per-tenant retention of outputs, in days (NULL: kept until deleted).
ALTER TABLE tenants ADD COLUMN retain_outputs_days INT CHECK (retain_outputs_days >= 1);

-- Per-tenant retention of inputs (a job's own init clip), in days after the job ended; when the
-- janitor deleted a job's inputs (a retry is then refused: it would start without them).
ALTER TABLE tenants ADD COLUMN retain_inputs_days INT CHECK (retain_inputs_days >= 1);
ALTER TABLE jobs ADD COLUMN inputs_cleared_at TIMESTAMPTZ;

-- Per-tenant retention of a batch's manifests (its results manifest, and the manifest uploaded
-- through the studio), in days after the batch finished; when the janitor deleted them.
ALTER TABLE tenants ADD COLUMN retain_manifests_days INT CHECK (retain_manifests_days >= 1);
ALTER TABLE batches ADD COLUMN manifests_cleared_at TIMESTAMPTZ;
