-- Checkpoints (one object per denoise chunk) serve only a running job: once a job has ended,
-- the coordinator's janitor deletes them and marks the job here.
ALTER TABLE jobs ADD COLUMN checkpoints_cleared INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_checkpoints_to_clear ON jobs (finished_at)
    WHERE NOT checkpoints_cleared AND finished_at IS NOT NULL;
