//! Dispatch and worker liveness on SQLite, one to one with `pg_dispatch.rs`; the single
//! writer serialises rounds in place of the advisory lock.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::MutexGuard;

use super::rows::{event, now_us, uuid, Tx};
use super::SqliteStore;
use crate::error::{Error, Result};
use crate::lifecycle::events::JobEvent;
use crate::notify::{Notifier, Pending};
use crate::sched::fair::ShareRow;
use crate::sched::fleet::{Busy, WorkerState};
use crate::sched::{PendingTask, RoundTx};
use crate::store::rows::{class, kind, share_rows};
use crate::store::{sql, Heartbeat};

pub(super) async fn begin_round(store: &SqliteStore) -> Result<Box<dyn RoundTx + '_>> {
    let (writer, tx) = store.begin_write().await?;
    Ok(Box::new(SqliteRound {
        writer,
        tx,
        notes: Pending::default(),
        notifier: &store.notifier,
        now: now_us(),
    }))
}

struct SqliteRound<'c> {
    writer: MutexGuard<'c, ()>,
    tx: Tx<'c>,
    notes: Pending,
    notifier: &'c Notifier,
    now: i64,
}

type CandidateRow = (
    String,
    i64,
    String,
    i64,
    i64,
    i64,
    i64,
    String,
    String,
    Option<String>,
);

#[async_trait]
impl RoundTx for SqliteRound<'_> {
    async fn workers(&mut self, timeout: Duration) -> Result<Vec<WorkerState>> {
        let cutoff = self.now - timeout.as_micros() as i64;
        let rows: Vec<(String, i64, i64, i64, String, bool, bool)> = sqlx::query_as(
            "SELECT worker, denoise_slots, vocode_slots, express_slots, holds, draining, \
                    last_seen >= $1 \
             FROM workers",
        )
        .bind(cutoff)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(worker, d, v, e, holds, draining, live)| {
                Ok(WorkerState {
                    worker,
                    denoise_slots: d.max(0) as u32,
                    vocode_slots: v.max(0) as u32,
                    express_slots: e.max(0) as u32,
                    holds: serde_json::from_str(&holds)
                        .map_err(|e| Error::Internal(format!("stored holds: {e}")))?,
                    draining,
                    live,
                })
            })
            .collect()
    }

    async fn busy(&mut self) -> Result<Vec<Busy>> {
        let rows: Vec<(Option<String>, String, i64, i64)> =
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
        let rows: Vec<CandidateRow> = sqlx::query_as(&sql::candidates("$2"))
            .bind(i64::from(per_group))
            .bind(self.now)
            .fetch_all(&mut *self.tx)
            .await?;
        rows.into_iter()
            .map(
                |(job, chunk, k, rank, from, to, attempt, tenant, spec, prev)| {
                    Ok(PendingTask {
                        job_id: uuid(&job)?,
                        chunk: chunk as u32,
                        kind: kind(&k)?,
                        class: class(rank)?,
                        from_step: from as u32,
                        to_step: to as u32,
                        attempt: attempt as u32,
                        tenant,
                        spec: serde_json::from_str(&spec)
                            .map_err(|e| Error::Internal(format!("stored spec: {e}")))?,
                        previous_worker: prev,
                    })
                },
            )
            .collect()
    }

    async fn clocks(&mut self) -> Result<Vec<ShareRow>> {
        let classes: Vec<(String, i64, f64)> = sqlx::query_as(sql::CLASS_CLOCKS)
            .fetch_all(&mut *self.tx)
            .await?;
        let tenants: Vec<(String, i64, String, f64)> = sqlx::query_as(sql::TENANT_CLOCKS)
            .fetch_all(&mut *self.tx)
            .await?;
        share_rows(classes, tenants)
    }

    async fn save_clocks(&mut self, rows: &[ShareRow]) -> Result<()> {
        for r in rows {
            let q = match &r.tenant {
                None => sqlx::query(sql::SAVE_CLASS_CLOCK)
                    .bind(r.kind.as_str())
                    .bind(i64::from(r.class.rank()))
                    .bind(r.vtime),
                Some(t) => sqlx::query(sql::SAVE_TENANT_CLOCK)
                    .bind(r.kind.as_str())
                    .bind(i64::from(r.class.rank()))
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
        let job = task.job_id.to_string();
        // When the task came due comes back with the update, for the metric.
        let due: Option<(i64,)> = sqlx::query_as(
            "UPDATE tasks SET state = 'dispatched', dispatched_at = $5, heartbeat_at = $5, \
               worker = NULL, routed_to = $4 \
             WHERE job_id = $1 AND chunk = $2 AND attempt = $3 AND state = 'pending' \
             RETURNING MAX(not_before, created_at)",
        )
        .bind(&job)
        .bind(i64::from(task.chunk))
        .bind(i64::from(task.attempt))
        .bind(routed_to)
        .bind(self.now)
        .fetch_optional(&mut *self.tx)
        .await?;
        let Some((due,)) = due else {
            return Ok(false);
        };
        sqlx::query(
            "UPDATE jobs SET attempts = attempts + 1, stage = $2, \
               state = CASE WHEN state = 'queued' THEN 'running' ELSE state END, \
               started_at = COALESCE(started_at, $3) \
             WHERE id = $1",
        )
        .bind(&job)
        .bind(task.kind.as_str())
        .bind(self.now)
        .execute(&mut *self.tx)
        .await?;
        let ev = JobEvent::Dispatched {
            task,
            routed_to,
            waited: (now_us() - due) as f64 / 1e6,
        };
        let (chunk, attempt) = (Some(task.chunk), Some(task.attempt));
        event(&mut self.tx, task.job_id, chunk, attempt, &ev).await?;
        if let Some(change) = ev.notice() {
            self.notes.job(task.job_id, change);
        }
        Ok(true)
    }

    async fn mark_preempted(&mut self, task: &PendingTask) -> Result<()> {
        let marked = sqlx::query(sql::MARK_PREEMPTED)
            .bind(task.job_id.to_string())
            .bind(i64::from(task.chunk))
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
        let SqliteRound {
            writer,
            tx,
            notes,
            notifier,
            ..
        } = *self;
        tx.commit().await?;
        drop(writer);
        notes.send(notifier);
        Ok(())
    }
}

pub(super) async fn heartbeat(store: &SqliteStore, hb: &Heartbeat<'_>) -> Result<()> {
    let (w, mut tx) = store.begin_write().await?;
    let before: Option<(i64, i64, i64, bool)> = sqlx::query_as(
        "SELECT denoise_slots, vocode_slots, express_slots, draining FROM workers \
         WHERE worker = $1",
    )
    .bind(hb.worker)
    .fetch_optional(&mut *tx)
    .await?;
    let holds = serde_json::to_string(hb.holds)
        .map_err(|e| Error::Internal(format!("encoding holds: {e}")))?;
    let models = serde_json::to_string(hb.models)
        .map_err(|e| Error::Internal(format!("encoding models: {e}")))?;
    sqlx::query(
        "INSERT INTO workers (worker, denoise_slots, vocode_slots, holds, draining, last_seen, \
                              express_slots, device, chunks_per_forward, models) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (worker) DO UPDATE SET denoise_slots = excluded.denoise_slots, \
           vocode_slots = excluded.vocode_slots, holds = excluded.holds, \
           draining = excluded.draining, last_seen = excluded.last_seen, \
           express_slots = excluded.express_slots, device = excluded.device, \
           chunks_per_forward = excluded.chunks_per_forward, models = excluded.models",
    )
    .bind(hb.worker)
    .bind(i64::from(hb.denoise_slots))
    .bind(i64::from(hb.vocode_slots))
    .bind(holds)
    .bind(hb.draining)
    .bind(now_us())
    .bind(i64::from(hb.express_slots))
    .bind(hb.device)
    .bind(f64::from(hb.chunks_per_forward))
    .bind(models)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    drop(w);
    let now = (
        i64::from(hb.denoise_slots),
        i64::from(hb.vocode_slots),
        i64::from(hb.express_slots),
        hb.draining,
    );
    if before != Some(now) {
        store.notifier.tasks_changed();
    }
    Ok(())
}
