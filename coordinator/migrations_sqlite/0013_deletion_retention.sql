-- DeleteJob and retention: the same columns as Postgres (migrations/0014_deletion_retention.sql).
ALTER TABLE jobs ADD COLUMN deleted_at INTEGER;
ALTER TABLE outputs ADD COLUMN expires_at INTEGER;
ALTER TABLE outputs ADD COLUMN deleted_at INTEGER;
CREATE INDEX outputs_to_expire ON outputs (expires_at)
    WHERE deleted_at IS NULL AND expires_at IS NOT NULL;
ALTER TABLE tenants ADD COLUMN retain_outputs_days INTEGER CHECK (retain_outputs_days >= 1);
ALTER TABLE tenants ADD COLUMN retain_inputs_days INTEGER CHECK (retain_inputs_days >= 1);
ALTER TABLE jobs ADD COLUMN inputs_cleared_at INTEGER;
ALTER TABLE tenants ADD COLUMN retain_manifests_days INTEGER CHECK (retain_manifests_days >= 1);
ALTER TABLE batches ADD COLUMN manifests_cleared_at INTEGER;
