//! Dispatch and worker liveness on Postgres. One dispatch round runs at a time across all
//! coordinators (a transaction-scoped advisory lock), so capacity counts and fair-share
//! clocks are read and written by one round; tasks are marked dispatched only while still
//! pending, so a cancel that commits meanwhile wins.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, Transaction};
use tutti_shared::job::JobSpec;
use uuid::Uuid;

use super::rows::{event, notify, notify_job, TASKS_CHANNEL};
use crate::error::Result;
use crate::lifecycle::events::JobEvent;
use crate::sched::fair::ShareRow;
use crate::sched::fleet::{Busy, WorkerState};
use crate::sched::{PendingTask, RoundTx};
use crate::store::rows::{class, kind, share_rows};
use crate::store::{sql, Heartbeat};

/// Key of the advisory lock that serialises dispatch rounds ("tutti" + "sched").
const DISPATCH_LOCK: i64 = 0x7475_7474_6973_6368;

pub(super) async fn begin_round(pool: &PgPool) -> Result<Box<dyn RoundTx + '_>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(DISPATCH_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(Box::new(PgRound { tx }))
}

struct PgRound<'c> {
    tx: Transaction<'c, Postgres>,
}

/// The same rows as `store::sql::candidates`, read through `tasks_pending_by_group`
/// (migration 0006): a recursive skip scan finds the (kind, class, tenant) groups that have
/// pending tasks, then each group reads its first `$1` tasks from the index. A round costs
/// about a millisecond whether 100 or 100,000 tasks wait (a window over all of them took
/// 370 ms at 100,000 on an idle machine, and seconds under load, holding the round's lock).
const CANDIDATES: &str = "WITH RECURSIVE g (kind, priority, tenant) AS ( \
       (SELECT kind, priority, tenant FROM tasks WHERE state = 'pending' \
        ORDER BY kind, priority, tenant LIMIT 1) \
       UNION ALL \
       SELECT n.kind, n.priority, n.tenant FROM g CROSS JOIN LATERAL \
         (SELECT kind, priority, tenant FROM tasks \
          WHERE state = 'pending' AND (kind, priority, tenant) > (g.kind, g.priority, g.tenant) \
          ORDER BY kind, priority, tenant LIMIT 1) n) \
     SELECT c.job_id, c.chunk, c.kind, c.priority, c.from_step, c.to_step, c.attempt, \
            c.tenant, c.spec, p.worker \
     FROM g CROSS JOIN LATERAL \
       (SELECT t.job_id, t.chunk, t.kind, t.priority, t.from_step, t.to_step, t.attempt, \
               t.tenant, t.job_created_at, j.spec \
        FROM tasks t JOIN jobs j ON j.id = t.job_id \
        WHERE t.state = 'pending' AND t.kind = g.kind AND t.priority = g.priority \
          AND t.tenant = g.tenant AND t.not_before <= now() \
          AND j.state IN ('queued', 'running') \
        ORDER BY t.job_created_at, t.job_id LIMIT $1) c \
     LEFT JOIN tasks p ON p.job_id = c.job_id AND p.chunk = c.chunk - 1 \
     ORDER BY c.kind, c.priority, c.tenant, c.job_created_at, c.job_id";

type CandidateRow = (
    Uuid,
    i32,
    String,
    i16,
    i32,
    i32,
    i32,
    String,
    Json<JobSpec>,
    Option<String>,
);

#[async_trait]
impl RoundTx for PgRound<'_> {
    async fn workers(&mut self, timeout: Duration) -> Result<Vec<WorkerState>> {
        let rows: Vec<(String, i32, i32, i32, Json<Vec<Uuid>>, bool, bool)> = sqlx::query_as(
            "SELECT worker, denoise_slots, vocode_slots, express_slots, holds, draining, \
                    last_seen >= now() - make_interval(secs => $1) FROM workers",
        )
        .bind(timeout.as_secs_f64())
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(worker, d, v, e, holds, draining, live)| WorkerState {
                worker,
                denoise_slots: d.max(0) as u32,
                vocode_slots: v.max(0) as u32,
                express_slots: e.max(0) as u32,
                holds: holds.0,
                draining,
                live,
            })
            .collect())
    }

    async fn busy(&mut self) -> Result<Vec<Busy>> {
        let rows: Vec<(Option<String>, String, i16, i64)> =
            sqlx::query_as(sql::BUSY).fetch_all(&mut *self.tx).await?;
        rows.into_iter()
            .map(|(worker, k, rank, n)| {
                Ok(Busy {
                    worker,
                    kind: kind(&k)?,
                    class: class(rank)?,
                    tasks: n as u32,
                })
            })
            .collect()
    }

    async fn candidates(&mut self, per_group: u32) -> Result<Vec<PendingTask>> {
        let rows: Vec<CandidateRow> = sqlx::query_as(CANDIDATES)
            .bind(i64::from(per_group))
            .fetch_all(&mut *self.tx)
            .await?;
        rows.into_iter()
            .map(
                |(job_id, chunk, k, rank, from, to, attempt, tenant, spec, prev)| {
                    Ok(PendingTask {
                        job_id,
                        chunk: chunk as u32,
                        kind: kind(&k)?,
                        class: class(rank)?,
                        from_step: from as u32,
                        to_step: to as u32,
                        attempt: attempt as u32,
                        tenant,
                        spec: spec.0,
                        previous_worker: prev,
                    })
                },
            )
            .collect()
    }

    async fn clocks(&mut self) -> Result<Vec<ShareRow>> {
        let classes: Vec<(String, i16, f64)> = sqlx::query_as(sql::CLASS_CLOCKS)
            .fetch_all(&mut *self.tx)
            .await?;
        let tenants: Vec<(String, i16, String, f64)> = sqlx::query_as(sql::TENANT_CLOCKS)
            .fetch_all(&mut *self.tx)
            .await?;
        share_rows(classes, tenants)
    }

    async fn save_clocks(&mut self, rows: &[ShareRow]) -> Result<()> {
        for r in rows {
            let q = match &r.tenant {
                None => sqlx::query(sql::SAVE_CLASS_CLOCK)
                    .bind(r.kind.as_str())
                    .bind(r.class.rank())
                    .bind(r.vtime),
                Some(t) => sqlx::query(sql::SAVE_TENANT_CLOCK)
                    .bind(r.kind.as_str())
                    .bind(r.class.rank())
                    .bind(t)
                    .bind(r.vtime),
            };
            q.execute(&mut *self.tx).await?;
        }
        Ok(())
    }

    async fn mark_dispatched(
        &mut self,
        task: &PendingTask,
        routed_to: Option<&str>,
    ) -> Result<bool> {
        // The wait since the task came due comes back with the update, for the metric.
        let waited: Option<(f64,)> = sqlx::query_as(
            "UPDATE tasks SET state = 'dispatched', dispatched_at = now(), heartbeat_at = now(), \
               worker = NULL, routed_to = $4 \
             WHERE job_id = $1 AND chunk = $2 AND attempt = $3 AND state = 'pending' \
             RETURNING EXTRACT(EPOCH FROM now() - GREATEST(not_before, created_at))::float8",
        )
        .bind(task.job_id)
        .bind(task.chunk as i32)
        .bind(task.attempt as i32)
        .bind(routed_to)
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some((waited,)) = waited else {
            return Ok(false);
        };
        sqlx::query(
            "UPDATE jobs SET attempts = attempts + 1, stage = $2, \
               state = CASE WHEN state = 'queued' THEN 'running' ELSE state END, \
               started_at = COALESCE(started_at, now()) \
             WHERE id = $1",
        )
        .bind(task.job_id)
        .bind(task.kind.as_str())
        .execute(&mut *self.tx)
        .await?;
        let ev = JobEvent::Dispatched {
            task,
            routed_to,
            waited,
        };
        let (chunk, attempt) = (Some(task.chunk), Some(task.attempt));
        event(&mut self.tx, task.job_id, chunk, attempt, &ev).await?;
        if let Some(change) = ev.notice() {
            notify_job(&mut self.tx, task.job_id, change).await?;
        }
        Ok(true)
    }

    async fn mark_preempted(&mut self, task: &PendingTask) -> Result<()> {
        let marked = sqlx::query(sql::MARK_PREEMPTED)
            .bind(task.job_id)
            .bind(task.chunk as i32)
            .execute(&mut *self.tx)
            .await?
            .rows_affected()
            == 1;
        if marked {
            let ev = JobEvent::Preempted { stage: task.kind };
            let (chunk, attempt) = (Some(task.chunk), Some(task.attempt));
            event(&mut self.tx, task.job_id, chunk, attempt, &ev).await?;
        }
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

pub(super) async fn heartbeat(pool: &PgPool, hb: &Heartbeat<'_>) -> Result<()> {
    let mut tx = pool.begin().await?;
    let before: Option<(i32, i32, i32, bool)> = sqlx::query_as(
        "SELECT denoise_slots, vocode_slots, express_slots, draining FROM workers \
         WHERE worker = $1 FOR UPDATE",
    )
    .bind(hb.worker)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO workers (worker, denoise_slots, vocode_slots, holds, draining, last_seen, \
                              express_slots, device, chunks_per_forward, models) \
         VALUES ($1, $2, $3, $4, $5, now(), $6, $7, $8, $9) \
         ON CONFLICT (worker) DO UPDATE SET denoise_slots = EXCLUDED.denoise_slots, \
           vocode_slots = EXCLUDED.vocode_slots, holds = EXCLUDED.holds, \
           draining = EXCLUDED.draining, last_seen = EXCLUDED.last_seen, \
           express_slots = EXCLUDED.express_slots, device = EXCLUDED.device, \
           chunks_per_forward = EXCLUDED.chunks_per_forward, models = EXCLUDED.models",
    )
    .bind(hb.worker)
    .bind(hb.denoise_slots as i32)
    .bind(hb.vocode_slots as i32)
    .bind(Json(hb.holds))
    .bind(hb.draining)
    .bind(hb.express_slots as i32)
    .bind(hb.device)
    .bind(hb.chunks_per_forward)
    .bind(Json(hb.models))
    .execute(&mut *tx)
    .await?;
    // Capacity changed: wake the dispatchers (a steady heartbeat changes nothing).
    let now = (
        hb.denoise_slots as i32,
        hb.vocode_slots as i32,
        hb.express_slots as i32,
        hb.draining,
    );
    if before != Some(now) {
        notify(&mut tx, TASKS_CHANNEL, "").await?;
    }
    tx.commit().await?;
    Ok(())
}
