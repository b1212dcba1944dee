-- Deadlines (issue 26), as in the Postgres migration 0016 (microseconds since the epoch).
ALTER TABLE jobs ADD COLUMN deadline INTEGER;

CREATE INDEX jobs_by_deadline ON jobs (deadline)
    WHERE deadline IS NOT NULL AND state IN ('queued', 'running');
