//! SQL text the Postgres and SQLite schedulers share (the dialects differ in types and in
//! how "now" is spelled, not in these statements).

/// Pending, due tasks of active jobs, at most `$1` per (kind, class, tenant), each group
/// oldest job first, with the worker that finished the job's previous chunk; SQLite's form
/// (a window over every pending task: fine at embedded scale). Postgres has its own
/// index-driven form in `pg_dispatch.rs`. `{now}` is the dialect's current time.
pub(super) fn candidates(now: &str) -> String {
    format!(
        "SELECT c.job_id, c.chunk, c.kind, c.priority, c.from_step, c.to_step, c.attempt, \
                c.tenant, j.spec, p.worker \
         FROM (SELECT t.job_id, t.chunk, t.kind, t.priority, t.from_step, t.to_step, t.attempt, \
                      j.tenant, j.created_at, \
                      row_number() OVER (PARTITION BY t.kind, t.priority, j.tenant \
                                         ORDER BY j.created_at, t.job_id) AS n \
               FROM tasks t JOIN jobs j ON j.id = t.job_id \
               WHERE t.state = 'pending' AND t.not_before <= {now} \
                 AND j.state IN ('queued', 'running')) c \
         JOIN jobs j ON j.id = c.job_id \
         LEFT JOIN tasks p ON p.job_id = c.job_id AND p.chunk = c.chunk - 1 \
         WHERE c.n <= $1 \
         ORDER BY c.kind, c.priority, c.tenant, c.created_at, c.job_id"
    )
}

/// Dispatched tasks by (worker, kind, class); the worker is the one that reported progress,
/// else the one it was routed to.
pub(super) const BUSY: &str = "SELECT COALESCE(worker, routed_to), kind, priority, count(*) \
     FROM tasks WHERE state = 'dispatched' GROUP BY COALESCE(worker, routed_to), kind, priority";

pub(super) const CLASS_CLOCKS: &str = "SELECT kind, priority, vtime FROM share_clocks";
pub(super) const TENANT_CLOCKS: &str = "SELECT kind, priority, tenant, vtime FROM tenant_shares";
pub(super) const SAVE_CLASS_CLOCK: &str = "INSERT INTO share_clocks (kind, priority, vtime) \
     VALUES ($1, $2, $3) ON CONFLICT (kind, priority) DO UPDATE SET vtime = excluded.vtime";
pub(super) const SAVE_TENANT_CLOCK: &str =
    "INSERT INTO tenant_shares (kind, priority, tenant, vtime) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (kind, priority, tenant) DO UPDATE SET vtime = excluded.vtime";

/// Marks a batch chunk preempted, once.
pub(super) const MARK_PREEMPTED: &str = "UPDATE tasks SET preempted = TRUE \
     WHERE job_id = $1 AND chunk = $2 AND state = 'pending' AND NOT preempted";

/// Counts for the metrics gauges.
pub(super) const STATS_JOBS_SQL: &str =
    "SELECT state, priority, count(*) FROM jobs GROUP BY state, priority";
pub(super) const STATS_BACKLOG_SQL: &str =
    "SELECT priority, kind, count(*) FROM tasks WHERE state = 'pending' GROUP BY priority, kind";
pub(super) const STATS_IN_FLIGHT_SQL: &str =
    "SELECT kind, count(*) FROM tasks WHERE state = 'dispatched' GROUP BY kind";
