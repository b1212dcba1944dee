-- Deadlines (issue 26): a job not finished by then is cancelled at its next chunk boundary.
ALTER TABLE jobs ADD COLUMN deadline TIMESTAMPTZ;

CREATE INDEX jobs_by_deadline ON jobs (deadline)
    WHERE deadline IS NOT NULL AND state IN ('queued', 'running');
