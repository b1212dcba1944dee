-- The dispatch round reads a few due tasks per (kind, class, tenant) group. With the tenant
-- and the job's creation time on the task, a partial index serves each group directly
-- (a skip scan finds the groups), so a round costs the same with 100 or 100,000 pending.
ALTER TABLE tasks ADD COLUMN tenant TEXT;
ALTER TABLE tasks ADD COLUMN job_created_at TIMESTAMPTZ;
UPDATE tasks t SET tenant = j.tenant, job_created_at = j.created_at FROM jobs j WHERE j.id = t.job_id;
ALTER TABLE tasks ALTER COLUMN tenant SET NOT NULL;
ALTER TABLE tasks ALTER COLUMN job_created_at SET NOT NULL;
CREATE INDEX tasks_pending_by_group ON tasks (kind, priority, tenant, job_created_at, job_id)
    WHERE state = 'pending';
