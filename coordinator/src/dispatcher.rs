//! Dispatch from committed state: pending tasks are read from Postgres with `FOR UPDATE SKIP
//! LOCKED` (so several coordinators can run), published with a confirm, and marked dispatched in
//! the same transaction. A crash between publish and commit re-dispatches the same attempt; the
//! results fence drops the duplicate. RabbitMQ holds at most `max_in_flight` tasks per queue.

use std::collections::HashMap;
use std::time::Duration;

use lapin::types::FieldTable;
use sqlx::postgres::PgListener;
use sqlx::types::Json;
use tokio::sync::watch;
use tutti_shared::job::{JobSpec, TaskKind};
use tutti_shared::messages::TaskMessage;
use tutti_shared::queue::{self, Topology};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::store::{self, Store};

const BATCH: i64 = 32;

#[derive(sqlx::FromRow)]
struct PendingTask {
    job_id: Uuid,
    chunk: i32,
    kind: String,
    from_step: i32,
    to_step: i32,
    attempt: i32,
    tenant: String,
    spec: Json<JobSpec>,
}

pub struct Dispatcher {
    pub store: Store,
    pub amqp_url: String,
    pub topology: Topology,
    pub max_in_flight: u32,
    pub max_attempts: u32,
    pub task_lease: Duration,
}

impl Dispatcher {
    /// Runs until `shutdown` flips to true. Broker and database errors are logged and retried.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut listener = None;
        let mut channel: Option<lapin::Channel> = None;
        let mut conn: Option<lapin::Connection> = None;
        let mut backoff = Duration::from_millis(100);
        let mut last_lease_check = std::time::Instant::now();
        while !*shutdown.borrow() {
            if listener.is_none() {
                match PgListener::connect_with(self.store.pool()).await {
                    Ok(mut l) => {
                        if l.listen(store::TASKS_CHANNEL).await.is_ok() {
                            listener = Some(l);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "dispatcher: listen failed"),
                }
            }
            if channel.as_ref().is_none_or(|c| !c.status().connected()) {
                match self.open_channel().await {
                    Ok((c, ch)) => {
                        conn = Some(c);
                        channel = Some(ch);
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "dispatcher: broker unavailable");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                }
            }
            let Some(ch) = channel.as_ref() else { continue };
            if last_lease_check.elapsed() > Duration::from_secs(1) {
                last_lease_check = std::time::Instant::now();
                if let Err(e) = self.expire_leases().await {
                    tracing::warn!(error = %e, "dispatcher: lease check failed");
                }
            }
            let sent = match self.dispatch_once(ch).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "dispatcher: dispatch failed");
                    channel = None;
                    0
                }
            };
            if sent as i64 >= BATCH {
                continue;
            }
            // Sleep until a task is committed (NOTIFY), a backoff expires, or shutdown.
            let wait = tokio::time::sleep(Duration::from_millis(500));
            match listener.as_mut() {
                Some(l) => {
                    tokio::select! {
                        r = l.recv() => if r.is_err() { listener = None; },
                        _ = wait => {}
                        _ = shutdown.changed() => {}
                    }
                }
                None => {
                    tokio::select! {
                        _ = wait => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
        if let Some(c) = conn {
            let _ = c.close(200, "coordinator shutting down").await;
        }
    }

    async fn open_channel(&self) -> Result<(lapin::Connection, lapin::Channel)> {
        let conn = queue::connect(&self.amqp_url, Duration::from_secs(2)).await?;
        queue::declare_topology(&conn, &self.topology).await?;
        let ch = queue::confirm_channel(&conn).await?;
        Ok((conn, ch))
    }

    /// Publishes up to one batch of due tasks; returns how many were dispatched.
    pub async fn dispatch_once(&self, ch: &lapin::Channel) -> Result<usize> {
        let in_flight: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
            "SELECT kind, count(*) FROM tasks WHERE state = 'dispatched' GROUP BY kind",
        )
        .fetch_all(self.store.pool())
        .await?
        .into_iter()
        .collect();
        let mut room: HashMap<String, i64> = ["denoise", "vocode"]
            .iter()
            .map(|k| {
                let used = in_flight.get(*k).copied().unwrap_or(0);
                (k.to_string(), (self.max_in_flight as i64 - used).max(0))
            })
            .collect();
        if room.values().all(|r| *r == 0) {
            return Ok(0);
        }

        let mut tx = self.store.pool().begin().await?;
        let rows: Vec<PendingTask> = sqlx::query_as(
            "SELECT t.job_id, t.chunk, t.kind, t.from_step, t.to_step, t.attempt, j.tenant, j.spec \
             FROM tasks t JOIN jobs j ON j.id = t.job_id \
             WHERE t.state = 'pending' AND t.not_before <= now() AND j.state IN ('queued', 'running') \
             ORDER BY t.priority, t.created_at \
             LIMIT $1 FOR UPDATE OF t SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let mut sent = 0;
        for row in rows {
            let Some(left) = room.get_mut(&row.kind) else {
                continue;
            };
            if *left == 0 {
                continue;
            }
            let kind: TaskKind = row
                .kind
                .parse()
                .map_err(|e| Error::Internal(format!("task kind: {e}")))?;
            let msg = TaskMessage {
                job_id: row.job_id,
                tenant: row.tenant.clone(),
                chunk: row.chunk as u32,
                attempt: row.attempt as u32,
                kind,
                from_step: row.from_step as u32,
                to_step: row.to_step as u32,
                spec: row.spec.0.clone(),
            };
            queue::publish_json(
                ch,
                "",
                &self.topology.task_queue(kind),
                &msg,
                FieldTable::default(),
            )
            .await?;
            sqlx::query(
                "UPDATE tasks SET state = 'dispatched', dispatched_at = now(), heartbeat_at = now() \
                 WHERE job_id = $1 AND chunk = $2",
            )
            .bind(row.job_id)
            .bind(row.chunk)
            .execute(&mut *tx)
            .await?;
            let stage = if kind == TaskKind::Denoise {
                "denoise"
            } else {
                "vocode"
            };
            sqlx::query(
                "UPDATE jobs SET attempts = attempts + 1, stage = $2, \
                   state = CASE WHEN state = 'queued' THEN 'running' ELSE state END, \
                   started_at = COALESCE(started_at, now()) \
                 WHERE id = $1",
            )
            .bind(row.job_id)
            .bind(stage)
            .execute(&mut *tx)
            .await?;
            store::event(
                &mut tx,
                row.job_id,
                "dispatched",
                Some(msg.chunk),
                Some(msg.attempt),
                serde_json::json!({ "kind": kind.as_str(), "from_step": msg.from_step, "to_step": msg.to_step }),
            )
            .await?;
            let what = if msg.chunk == 0 && msg.attempt == 1 {
                "started"
            } else {
                "stage"
            };
            store::notify_job(&mut tx, row.job_id, what).await?;
            *left -= 1;
            sent += 1;
            tracing::info!(job_id = %msg.job_id, chunk = msg.chunk, attempt = msg.attempt, kind = kind.as_str(), "dispatched");
        }
        tx.commit().await?;
        Ok(sent)
    }

    /// Tasks dispatched with no sign of life past the lease go back to the backlog as a new
    /// attempt (or fail their job past the bound). Covers messages lost outside the broker's
    /// redelivery, such as a purge.
    async fn expire_leases(&self) -> Result<()> {
        let mut tx = self.store.pool().begin().await?;
        let expired: Vec<(Uuid, i32, i32)> = sqlx::query_as(
            "SELECT job_id, chunk, attempt FROM tasks \
             WHERE state = 'dispatched' AND heartbeat_at < now() - make_interval(secs => $1) \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(self.task_lease.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        for (job, chunk, attempt) in expired {
            let error = format!("task lease of {:?} expired", self.task_lease);
            crate::results::retry_or_fail(
                &mut tx,
                job,
                chunk,
                attempt as u32,
                self.max_attempts,
                Duration::ZERO,
                "LEASE_EXPIRED",
                &error,
                true,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
